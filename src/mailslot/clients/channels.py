"""Claude Code channels: `mailslot serve --channel` pushes what is new for an idle agent.

What is news (and what hooks or pushes reported already) is decided in
`mailslot.agent.notices`; this module decides when to look, and what a push says.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from mcp.shared.message import SessionMessage
from mcp.types import JSONRPCNotification

from mailslot.agent.notices import News, Notices, reportable
from mailslot.agent.pressure import dnd_of
from mailslot.store.errors import MailslotError
from mailslot.store.format import Message

if TYPE_CHECKING:
    from mailslot.mailbox import Mailbox
    from mailslot.tools import Session

log = logging.getLogger("mailslot.serve")

CHANNEL = "claude/channel"
PUSH_GATHER_S = 0.2  # a burst that lands within this is pushed together
PUSH_MAX_LINES = 50  # messages one push names at most (the next push names the rest)


def _for(me: str) -> Callable[[Message], bool]:
    """Return what wakes a push loop: a message from someone else, to me or to anyone."""
    return lambda m: m.sender != me and (me in m.to or not m.to)


class Held:
    """The threads whose news the agent's do not disturb held back (None: any thread)."""

    def __init__(self) -> None:
        self.threads: set[str] | None = set()

    def __bool__(self) -> bool:
        return self.threads != set()

    def sift(self, box: Mailbox, me: str, threads: set[str] | None) -> tuple[bool, set[str] | None]:
        """Return (True, threads) while me's do not disturb is on, holding threads; once it is
        lifted (False, threads and those held): what was held is news again, pushed once."""
        if dnd_of(box, me) is not None:
            held = self.threads
            self.threads = None if held is None or threads is None else held | threads
            return True, threads
        held, self.threads = self.threads, set()
        return False, None if held is None or threads is None else threads | held


async def push_news(
    session: Session, write: Any, ready: anyio.Event, *, check_every: float = 5.0
) -> None:
    """Push what is new for the agent to its client as Claude Code channel notifications.

    Each message addressed to the agent (and each open task it may take) is pushed once,
    urgent first, a burst together; not while the agent is blocked in a wait that returns it;
    nothing while the agent's do not disturb is on (what it held is pushed once it is lifted);
    only from senders with an agent card (a push goes into the model's prompt: a person or a
    script that never registered cannot put words there). A push is a hint: it moves no read
    position, and the shared record in .state/notified/ keeps hooks from repeating it.
    """
    await ready.wait()
    box = session.box
    while session.agent is None:  # named on first use when no --agent was given
        await anyio.sleep(0.5)
    # Arrivals after this cursor wake the loop; what came before it, the first look finds.
    # The wait is kept from round to round, so a round looks only where something changed.
    plan = box.wait_plan(None, box.cursor(), limit=1000, match=_for(session.agent or ""))
    planned_for = session.agent
    look: set[str] = set()  # threads whose news was held back while the agent waited
    held = Held()
    now = True  # look before waiting: news from before the start, or left out of the last look
    while True:
        me = session.agent
        if me is None:
            await anyio.sleep(0.5)
            continue
        if me != planned_for:  # the agent took another name: what wakes the loop changed
            plan = box.wait_plan(None, box.cursor(), limit=1000, match=_for(me))
            planned_for, now = me, True
        threads: set[str] | None = None  # where to look for news (None: every thread)
        if not now:
            got = await box.run_wait(plan, check_every)
            if not got.messages and not look and not held:
                continue  # nothing arrived: nothing new to look for
            threads = {m.thread for m in got.messages} | look
            if got.messages:
                await anyio.sleep(PUSH_GATHER_S)  # let the rest of a burst land
                threads |= {m.thread for m in (await box.run_wait(plan, 0)).messages}
        hold, threads = held.sift(box, me, threads)
        if hold:
            now = False
            continue
        # The session's own positions: what its waits and reads returned a moment ago may not
        # be on disk yet (they are written once a second), and must not be pushed again.
        notices = Notices(box, me, session.reading)
        try:
            cards = {c.name for c in box.agents.cards()}
            found = notices.new(senders=cards, threads=threads)
        except MailslotError as e:
            log.warning("could not look for news to push: %s", e)
            now = False
            continue
        news = [n for n in found if not session.waiting_for(n.message)]
        look = {n.message.thread for n in found if session.waiting_for(n.message)}
        marked = await _push(write, me, news, notices)
        # Left out of this look (too many at once): look again now, if this one got anywhere.
        now = notices.more and not look and bool(marked)


async def _push(write: Any, me: str, news: list[News], notices: Notices) -> list[News]:
    """Push news in notes of PUSH_MAX_LINES, each marked reported once sent; return what the
    last mark covered (nothing: nothing was pushed)."""
    every, pushed, marked = news, [], []
    while news:
        batch, news = news[:PUSH_MAX_LINES], news[PUSH_MAX_LINES:]
        await write.send(SessionMessage(_note(me, batch, len(news))))
        pushed += batch
        marked = reportable(every, pushed)
        notices.mark(marked)  # stopped here, the rest comes next time
    return marked


def _note(me: str, batch: list[News], left: int) -> JSONRPCNotification:
    """Return the channel notification that names batch (left: how many the next one names)."""
    first = batch[0].message
    lines = [n.line() for n in batch]
    more = f" and {left} more" if left else ""
    text = (
        f"mailslot: {len(batch)} new for you (agent {me}){more}:\n"
        + "\n".join(lines)
        + "\nmsg_wait() returns them; reply with msg_post(reply_to=seq)."
    )
    meta = {
        "thread": first.thread, "seq": str(first.seq), "sender": first.sender,
        "type": first.type, "priority": first.priority, "count": str(len(batch)),
    }  # fmt: skip
    return JSONRPCNotification(
        jsonrpc="2.0", method=f"notifications/{CHANNEL}",
        params={"content": text, "meta": meta},
    )  # fmt: skip
