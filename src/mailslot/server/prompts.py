"""The prompts `mailslot serve` offers: summarize a thread, hand a task off to another agent."""

from __future__ import annotations

from collections.abc import Callable

from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS

from mailslot.server.connection import Connection
from mailslot.store.errors import MailslotError
from mailslot.views.transcript import transcript_markdown


def add_prompts(
    server: MCPServer[Connection],
    current: Callable[[], Connection],
    model_text: Callable[[MailslotError], str],
) -> None:
    """Offer the prompts on server; a library error reads as model_text says."""

    @server.prompt(title="Summarize a thread")
    def summarize_thread(thread: str) -> str:
        """Summarize a thread's decisions and open points, ready to close it with."""
        session = current().session
        try:
            transcript = transcript_markdown(session.box, thread)
        except MailslotError as e:
            raise MCPError(INVALID_PARAMS, model_text(e)) from None
        lang = f" Write it in {session.lang}." if session.lang else ""
        return (
            "Summarize the thread below for someone who was not in it: what was decided, what "
            f"is still open, and who does what next, in at most 200 words of Markdown.{lang} "
            f"Then close it with thread_set_state(thread='{thread}', state='closed', "
            "summary=<your summary>).\n\n" + transcript
        )

    @server.prompt(title="Hand off a task to another agent")
    def handoff_to_agent(thread: str, to_agent: str, task: str, context: str = "") -> str:
        """Delegate a task to another agent in a thread, with the context it needs."""
        session = current().session
        try:
            session.box.agents.card(to_agent)
            session.box.thread(thread)
        except MailslotError as e:
            raise MCPError(INVALID_PARAMS, model_text(e)) from None
        return (
            f"Delegate this task to agent '{to_agent}': call msg_post(thread='{thread}', "
            f"type='task', to=['{to_agent}'], content=<the message below>), then wait for the "
            f"result with msg_wait(thread='{thread}', after_seq=<the seq it returns>).\n\n"
            f"**Task for {to_agent}:** {task}\n\n"
            f"**Context:** {context or 'see the thread so far'}\n\n"
            "**Done when:** you answer in this thread with type='result' and reply_to=<this "
            "message's seq>; ask with type='question' if anything is unclear."
        )
