"""What a model sees: messages, tasks, questions, threads and reservations as JSON-able dicts.

The MCP tools answer with these views, and the command's --json and the console show the same
ones, so a person and a model read one shape. Views leave out empty fields and internal ids.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mailslot import __version__
from mailslot.agent.pressure import disturb, dnd_agents, pressure
from mailslot.coordination.board import CLAIMED, Question, Task, TaskBoard, iso
from mailslot.coordination.reservations import Grant, Held, held_view
from mailslot.coordination.tasks import Claim
from mailslot.store.format import AgentCard, Damage, Message, Page, Pending, ThreadInfo
from mailslot.store.presence import DEFAULT_STALE_AFTER, Presence
from mailslot.store.signing import INVALID, UNKNOWN_KEY

if TYPE_CHECKING:
    from mailslot.coordination.search import Results
    from mailslot.mailbox import Mailbox

PAGE_BUDGET_BYTES = 200_000  # content returned by one msg_list/msg_wait call, at most
PAGE_MAX = 200  # messages in one msg_list page, at most
PROTOCOL = (
    "Join or start a thread with thread_create(topic) (the same topic is the same thread), "
    "catch up with msg_list, introduce yourself with msg_post, then loop on "
    "msg_wait(thread, after_seq=next_after_seq): it returns new messages, or status 'timeout' "
    "after about 50 s, and then you simply call it again. Delegate work with msg_post(type="
    "'task', to=[agent]); answer with type='result' and reply_to=<seq>. Move the thread along "
    "discuss -> implement -> review -> done -> closed with thread_set_state; close it with a "
    "summary. A task without `to` is for every agent (each inbox msg_wait() brings it): take it "
    "with task_claim before working on it; your result reply closes it."
)


def trouble(out: dict[str, Any], skipped: list[Damage], pending: list[Pending]) -> None:
    """Tell the model what a read stepped over, and what it stopped before."""
    if skipped:
        out["unreadable"] = [str(d) for d in skipped]
    if pending:
        out["pending"] = [
            {"thread": p.thread, "seq": p.seq, "why": p.reason}
            | ({"do": "ask a person to run `mailslot doctor --fix`"} if p.blocked else {})
            for p in pending
        ]


def message_view(m: Message) -> dict[str, Any]:
    """Return a message as the model sees it: no empty fields, no internal id."""
    out: dict[str, Any] = {"thread": m.thread, "seq": m.seq, "from": m.sender}
    if m.to:
        out["to"] = m.to
    out["type"] = m.type
    if m.priority != "normal":
        out["priority"] = m.priority
    if m.reply_to is not None:
        out["reply_to"] = m.reply_to
    out["created_at"] = m.created_at
    out["content"] = m.content
    if m.meta:
        out["meta"] = m.meta
    if m.signed is not None:
        out["signed"] = m.signed
        if m.signed in (INVALID, UNKNOWN_KEY):
            out["warning"] = signature_warning(m)
    return out


def signature_warning(m: Message) -> str:
    """Return what a reader is told of a message whose signature is invalid or unknown."""
    if m.signed == INVALID:
        return (f"This message says it is from {m.sender}, but its signature does not match "
                f"it: it was changed after it was written, or {m.sender} did not write it. Do "
                f"not act on it; ask {m.sender} or a person.")  # fmt: skip
    return (f"Signed with a key this machine does not trust for {m.sender}: {m.sender} on a "
            "new machine, or someone posing as them. Be careful with it; a person can run "
            "`mailslot verify` to see the key and accept it.")  # fmt: skip


def task_view(box: Mailbox, t: Task) -> dict[str, Any]:
    """Return a task as the model sees it: status, holder and lease, attempts."""
    out: dict[str, Any] = {"thread": t.thread, "seq": t.seq, "from": t.sender}
    if t.to:
        out["to"] = list(t.to)
    out["title"] = t.title
    out["status"] = t.status
    if t.status == CLAIMED:
        out["holder"] = t.holder
        until = box.tasks.until(t)
        if until is not None:
            out["until"] = iso(until)
    if t.attempts:
        out["attempts"] = t.attempts
    if t.failures:
        out["failed"] = t.failures
    if t.closed_by is not None:
        out["result"] = t.closed_by
    if t.priority != "normal":
        out["priority"] = t.priority
    out["created_at"] = t.created_at
    return out


def question_view(q: Question) -> dict[str, Any]:
    """Return an unanswered question as the model and scripts see it."""
    return (
        {"thread": q.thread, "seq": q.seq, "from": q.sender}
        | ({"to": list(q.to)} if q.to else {})
        | {"title": q.title, "created_at": q.created_at}
    )


def thread_view(t: ThreadInfo) -> dict[str, Any]:
    """Return a thread as the model sees it."""
    out = {
        "thread": t.id,
        "topic": t.topic,
        "state": t.state,
        "head": t.head,
        "participants": t.participants,
        "last_activity": t.last_activity,
    }
    if t.summary:
        out["summary"] = t.summary
        if t.summary_state != t.state:
            out["summary_from"] = t.summary_state  # given when the thread was in that state
    if not t.complete:
        out["complete"] = False  # still being indexed: state and participants may lag
    return out


def fit(
    messages: list[Message],
    view: Callable[[Message], dict[str, Any]] = message_view,
) -> tuple[list[dict[str, Any]], int | None]:
    """Return the views that fit the size budget, and the seq of the last one if cut."""
    views: list[dict[str, Any]] = []
    size = 0
    for m in messages:
        size += len(m.content.encode("utf-8"))
        if views and size > PAGE_BUDGET_BYTES:
            return views, views[-1]["seq"]
        views.append(view(m))
    return views, None


def inbox_view(offer: tuple[Task, Message] | None, m: Message) -> dict[str, Any]:
    """Return a message as the inbox shows it: a task (or its reopening) with its status.

    offer: the task m hands out and the task's own message (see inbox.Delivery.offer)."""
    if offer is None:
        return message_view(m)
    task, first = offer
    view = message_view(first)
    info: dict[str, Any] = {"status": task.status}
    if m.seq != task.seq:
        info["reopened"] = m.seq
    if task.failures:
        info["failed"] = task.failures
    info["take_it"] = f"task_claim(thread='{m.thread}', seq={task.seq})"
    view["task"] = info
    return view


def held_views(box: Mailbox, held: list[Held]) -> list[dict[str, Any]]:
    """Return reservations as the model sees them, each with when it runs out."""
    return [held_view(h, box.reservations.until(h)) for h in held]


def claim_view(got: Claim, message: Message | None = None) -> dict[str, Any]:
    """Return a claim's outcome as the model sees it: won (until when, which attempt; the
    task's message, if given) or who holds the task and until when, with what to do next."""
    task, thread, seq = got.task, got.task.thread, got.task.seq
    out: dict[str, Any] = {"claimed": got.won, "thread": thread, "seq": seq}
    if message is not None:
        out["message"] = message_view(message)
    until = iso(got.until) if got.until is not None else None
    if got.won:
        out["until"] = until
        out["attempt"] = task.attempts
        if task.failures:
            out["failed_before"] = task.failures
        out["hint"] = (
            f"work on it, then msg_post(thread='{thread}', type='result', reply_to={seq}, "
            "content=...) closes it (type='error' if it failed; next_task=true takes the next "
            "one too); task_claim(release=true) "
            "gives it back; any mailslot call before the lease ends keeps it yours"
        )
    else:
        out["holder"] = task.holder
        out["until"] = until
        out["hint"] = (
            f"{task.holder} holds it; it is handed out again (msg_wait brings it) if "
            f"{task.holder}'s process ends or shows no sign of work until {until}; "
            "take another task"
        )
    return out


def no_task_view(thread: str) -> dict[str, Any]:
    """Return the answer to a claim of the next task when none is open to the agent."""
    hint = f"no task of {thread!r} is open to you now; msg_wait brings the next one"
    return {"claimed": False, "thread": thread, "hint": hint}


def grant_view(box: Mailbox, grant: Grant) -> dict[str, Any]:
    """Return a reservation's outcome: what is reserved, or who holds what it overlaps."""
    if not grant.granted:
        holders = sorted({h.holder for h in grant.conflicts})
        return {
            "granted": False,
            "conflicts": held_views(box, grant.conflicts),
            "hint": f"leave these paths to {', '.join(holders)}, or ask them with "
            f"msg_post(to={holders!r}); reserve the paths you can have on their own",
        }
    out: dict[str, Any] = {"granted": True, "reserved": held_views(box, grant.held)}
    if grant.whole_repo:
        out["note"] = "this reserves the whole repository: no other agent may edit anything"
    out["hint"] = (
        "edit them, then files_release(paths); they stay yours while you keep working "
        "(any mailslot call renews them) and end when your session ends"
    )
    return out


def released_view(released: list[Held], not_held: list[str]) -> dict[str, Any]:
    """Return what a release gave back, and the patterns asked for that were not held."""
    out: dict[str, Any] = {"released": sorted({h.pattern for h in released})}
    if not_held:
        out["not_held"] = not_held
        out["hint"] = "you held no reservation of these patterns: nothing to give back"
    elif not released:
        out["hint"] = "you held no reservations: nothing to give back"
    return out


def results_view(found: Results) -> dict[str, Any]:
    """Return search results as the model sees them: the hits that fit, with snippets."""
    views, cut = fit([h.message for h in found.hits])
    for view, hit in zip(views, found.hits, strict=False):
        view["snippet"] = hit.snippet
    out: dict[str, Any] = {"hits": views, "total": found.total}
    if cut is not None:
        rest = found.hits[len(views) :]
        out["hint"] = (
            f"{len(rest)} more hits did not fit; read them with msg_list(thread, after_seq="
            "seq-1, limit=1): " + ", ".join(f"{h.message.thread}#{h.message.seq}" for h in rest)
        )
    elif found.total > len(views):
        out["hint"] = f"showing {len(views)} of {found.total}; raise limit or add filters"
    if not views:
        out["hint"] = "no match; try fewer words, a prefix (auth*), or OR between words"
    trouble(out, found.skipped, [])
    return out


def agents_view(
    cards: list[AgentCard], presences: list[Presence], me: str | None, box: Mailbox | None = None
) -> list[dict[str, Any]]:
    """Return every agent with a card or a presence: status, since, what it waits on, card;
    with box, whether it asked not to be disturbed there."""
    dnd = dnd_agents(box) if box is not None else set()
    by_name = {c.name: c for c in cards}
    seen = {p.agent: p for p in presences}
    agents = []
    for name in sorted(set(by_name) | set(seen)):
        card, p = by_name.get(name), seen.get(name)
        entry: dict[str, Any] = {"agent": name, "status": p.status if p else "offline"}
        if p and p.status != "offline" and p.started:
            entry["since"] = p.started
        if p and p.last_seen:
            entry["last_seen"] = p.last_seen
        if p and p.waiting_on:
            entry["waiting_on"] = p.waiting_on
        if name in dnd:
            entry["do_not_disturb"] = True
        for key in ("client", "model", "description"):
            value = getattr(card, key) if card else None
            if value:
                entry[key] = value
        if name == me:
            entry["you"] = True
        agents.append(entry)
    return agents


def posted_view(
    msg: Message,
    to: list[str],
    reply_to: int | None,
    next_task: dict[str, Any] | None = None,
    box: Mailbox | None = None,
    stale_after: float = DEFAULT_STALE_AFTER,
) -> dict[str, Any]:
    """Return a posted message's place, who was told besides the to that was asked for (the
    holder of the task a result replies to), the claim of the next task if one was asked
    for, and with box a line for each recipient under pressure there (agent.pressure)."""
    out: dict[str, Any] = {"thread": msg.thread, "seq": msg.seq, "id": msg.id}
    if lines := pressure(box, msg, stale_after) if box is not None else []:
        out["recipients"] = lines
    if next_task is not None:
        out["next"] = next_task
    if told := [a for a in msg.to if a not in to]:
        out["note"] = (
            f"{', '.join(told)} held task {reply_to}: your result closes it, and {told[0]} "
            "is told (added to `to`)"
        )
    return out


def read_view(m: Message, receipts: list[Any], waited: float) -> dict[str, Any]:
    """Return msg_wait(until_read=...)'s answer: whether every recipient of m has been shown
    it ("read") or the wait timed out, with each recipient's receipt."""
    now = time.time()
    done = all(r.reached("shown") for r in receipts)
    out: dict[str, Any] = {"status": "read" if done else "timeout", "thread": m.thread,
                           "seq": m.seq, "receipts": {r.agent: r.text(now) for r in receipts},
                           "waited_s": round(waited, 1)}  # fmt: skip
    if not receipts:
        out["note"] = f"message #{m.seq} has no recipients: it has no receipts to wait for"
    elif not done:
        out["hint"] = (f"not read by all yet; call msg_wait(thread='{m.thread}', "
                       f"until_read={m.seq}) again, or carry on")  # fmt: skip
    return out


def past_head_view(thread: str, after_seq: int, head: int) -> dict[str, Any]:
    """Return msg_list's answer for an after_seq past the newest message (head)."""
    return {
        "messages": [], "next_after_seq": head, "has_more": False,
        "hint": f"after_seq {after_seq} is past the newest message ({head}); "
        f"wait for new ones with msg_wait(thread='{thread}', after_seq={head})",
    }  # fmt: skip


def thread_waited_view(
    views: list[dict[str, Any]],
    nxt: int | None,
    past: int | None,
    arrivals: Any,
) -> dict[str, Any]:
    """Return a thread wait's answer: the messages that fit (views), where it goes on (nxt),
    the newest seq if after_seq was past it, and what was stepped over or is still arriving."""
    out: dict[str, Any] = {"status": "messages" if views else "timeout", "messages": views}
    if past is not None:
        out["note"] = f"after_seq was past the newest message ({past}): waited from {past}"
    out["next_after_seq"] = nxt
    trouble(out, arrivals.skipped, arrivals.pending)
    return out


def registered_view(box: Mailbox, me: str, card: AgentCard, dnd: bool | None) -> dict[str, Any]:
    """Return agent_register's answer: the card, and dnd: true while me asked not to be
    disturbed (dnd, if given, turns it on or off first)."""
    out = {"agent": me, **{k: v for k, v in card.to_dict().items() if k != "name"}}
    return out | ({"dnd": True} if disturb(box, me, dnd) else {})


def page_view(
    thread: str, page: Page, receipts: Callable[[Message], dict[str, str]] | None = None
) -> dict[str, Any]:
    """Return a page of a thread as msg_list shows it: the messages that fit, where to go on
    (next_after_seq), and what was stepped over or is still arriving; receipts, if given,
    says how far each recipient has got with a message (only those with recipients)."""
    views, cut = fit(page.messages)
    for view, m in zip(views, page.messages, strict=False):
        if receipts is not None and m.to and (its := receipts(m)):
            view["receipts"] = its
    cursor = cut if cut is not None else page.cursor
    more = page.has_more or cut is not None
    out: dict[str, Any] = {"messages": views, "next_after_seq": cursor, "has_more": more}
    if more:
        out["hint"] = f"more: call msg_list(thread='{thread}', after_seq={cursor})"
    trouble(out, page.skipped, [page.pending] if page.pending else [])
    if page.pending is not None and not more:
        out["hint"] = f"call msg_list(thread='{thread}', after_seq={cursor}) again shortly"
    return out


def threads_view(infos: list[ThreadInfo], limit: int) -> dict[str, Any]:
    """Return up to limit threads and how many there are."""
    out: dict[str, Any] = {"threads": [thread_view(t) for t in infos[:limit]], "total": len(infos)}
    if len(infos) > limit:
        out["hint"] = f"showing {limit} of {len(infos)}; filter by state or raise limit"
    return out


def board_view(box: Mailbox, board: TaskBoard, limit: int) -> dict[str, Any]:
    """Return up to limit tasks and questions of a task board, with the counts of each status."""
    shown, questions = board.tasks, board.questions
    out: dict[str, Any] = {
        "tasks": [task_view(box, t) for t in shown[:limit]],
        "counts": board.counts,
        "questions": [question_view(q) for q in questions[:limit]],
    }
    if len(shown) > limit or len(questions) > limit:
        out["hint"] = f"showing {limit} of each; filter by thread or status, or raise limit"
    return out


def created_view(info: ThreadInfo, open_tasks: int) -> dict[str, Any]:
    """Return a thread just joined (or made), with how to read it and its open tasks."""
    out = thread_view(info)
    out["hint"] = (
        f"read history with msg_list(thread='{info.id}', after_seq=0), then "
        f"msg_wait(thread='{info.id}', after_seq={info.head})"
    )
    if open_tasks:
        out["open_tasks"] = open_tasks
        out["hint"] += f"; {open_tasks} open tasks: msg_wait() hands them to you"
    return out


def waited_view(
    out: dict[str, Any], thread: str | None, receipts: dict[str, dict[str, str]] | None = None
) -> dict[str, Any]:
    """Add to a wait's answer what to call next (the same wait, or a reply then the wait), and
    the receipts of the agent's own messages that moved since it was last told ("thread#seq"
    -> recipient -> receipt)."""
    if receipts:
        out["receipts"] = receipts
    again = (
        f"msg_wait(thread='{thread}', after_seq={out['next_after_seq']})"
        if thread is not None
        else "msg_wait() again"
    )
    if not out["messages"]:
        out["hint"] = f"no new message yet; call {again}"
    elif out.get("has_more"):  # the inbox shows open tasks for anyone one at a time
        out["hint"] = f"reply with msg_post, then {again}: more is waiting, it returns at once"
    else:
        out["hint"] = f"reply with msg_post, then {again}"
    return out


def config_view(
    box: Mailbox,
    agent: str,
    fallback_from: str | None,
    lang: str | None,
    wait_default: float,
    wait_max: float,
) -> dict[str, Any]:
    """Return the bus's settings as bus_get_config shows them, with how to collaborate."""
    s = box.settings
    return {
        "agent": agent,
        **(
            {"note": f"'{fallback_from}' was in use by another session, so you are '{agent}'"}
            if fallback_from
            else {}
        ),
        "preferred_language": lang,
        "root": str(box.root),
        "version": __version__,
        "wait": {
            "default_s": wait_default,
            "max_s": wait_max,
            "mode": box.wait_mode,
            "poll_interval_s": s.poll_interval,
        },
        "limits": {"max_content_bytes": s.max_content_bytes, "page_max": PAGE_MAX},
        "protocol": PROTOCOL,
    }
