"""The server's instructions: what a client shows the model about mailslot before any call."""

from __future__ import annotations


def instructions(
    agent: str | None, lang: str | None, was: str | None = None, *, channel: bool = False
) -> str:
    """Return the server's instructions: a few lines on how to collaborate through mailslot."""
    who = (f"You are agent '{agent}'." if agent else
           "You get a name from your client's name on first use; agent_register(name=...) "
           "picks a stable one.")  # fmt: skip
    if was and agent:
        who = f"You are agent '{agent}' ('{was}' is another live session of your client)."
    text = (
        f"mailslot is a mailbox shared with other agents. {who} "
        "Join or start a thread with thread_create(topic), catch up with msg_list, introduce "
        "yourself with msg_post, then keep calling msg_wait(thread, after_seq=next_after_seq): "
        "it returns new messages, or status 'timeout' after about 50 s; then call it again. "
        "Delegate with msg_post(type='task', to=[agent]); answer a task with type='result' "
        "(or 'error') and reply_to=<the task's seq>. A task without `to` is for every agent: "
        "your inbox msg_wait() brings such tasks one per call, whatever threads you joined; take "
        "one with task_claim before working on it; your result reply closes it, and with "
        "next_task=true it also takes the next one open to you (so does task_claim(thread) "
        "without a seq). Before editing "
        "files others may edit, files_reserve(paths); files_release when done. "
        "Move the thread with thread_set_state and close it with a summary."
    )
    if channel:
        text += (
            ' New messages for you may arrive as <channel source="mailslot"> notes while you '
            "are idle: each line names a message and the call that reads it; act on them with "
            "msg_wait() and reply with msg_post."
        )
    if lang:
        text += f" Write your messages in {lang}."
    return text
