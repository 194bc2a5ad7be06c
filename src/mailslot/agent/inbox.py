"""Delivery: what an agent's waits return, which tasks it is offered, and when its positions move.

The rule every front door shares: the MCP tools wait through it, and the command and the console
through the tools. A thread wait returns what others posted after the agent's position (or after
a seq it names), leaving out what its inbox already returned. An inbox wait returns what is
addressed to the agent, and the tasks for anyone that it may take now, in any thread; people's
messages (senders with no agent card) come first, then what it owes from before the agent's first
look. While others hold tasks the agent could take, an
inbox wait watches their holders and hands a dead or stalled holder's task out again.

A wait's answer is a ``Delivered``: the front door shows as many of its messages as fit, then
calls ``mark`` with that count, which moves the agent's positions past what it was shown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from mailslot.agent.offers import Boards, Offers
from mailslot.agent.reading import Reading
from mailslot.coordination.board import CLAIMED, Task, offer_of
from mailslot.store.errors import MailslotError
from mailslot.store.format import Message
from mailslot.store.positions import Position
from mailslot.store.wait import Arrivals, WaitPlan

if TYPE_CHECKING:
    from mailslot.mailbox import Mailbox

PAGE = 50  # messages a wait takes from the store per look
SETTLE_EVERY_S = 0.5  # how often a waiting agent looks at the holders of tasks it could take


class Pace(Protocol):
    """What the process that waits does while it waits (presence, progress), and how often."""

    def limit(self, waited: float) -> float:
        """Do the waiter's duties at waited seconds in; return the longest next step."""

    async def progress(self, waited: float, where: str) -> None:
        """Say that the wait goes on (at most as often as limit's steps allow)."""


@dataclass
class Delivered:
    """What a wait found for the agent, before the front door shows it.

    ``messages`` are in the order to show; ``mark(n)`` says the first n were shown and moves
    the agent's positions accordingly; it returns the seq a thread wait continues after.
    """

    arrivals: Arrivals
    messages: list[Message]
    _mark: Callable[[int], int | None] = field(repr=False)
    #: Set by mark: tasks for anyone it held back are left for the next wait (an inbox wait
    #: shows one at a time).
    more: bool = False

    #: Called with the messages mark says were shown (their receipts).
    receipts: Callable[[list[Message]], None] = field(default=lambda _: None, repr=False)

    def mark(self, shown: int) -> int | None:
        """Record that the first shown messages were shown; return where a thread wait goes on."""
        self.receipts(self.messages[:shown])
        return self._mark(shown)


def _read(pos: Position) -> int | None:
    return pos.read


def _inbox(pos: Position) -> int | None:
    return pos.inbox_seen


class Delivery:
    """One agent's deliveries from box: its thread and inbox waits, its task offers."""

    def __init__(self, box: Mailbox, reading: Reading, *, stale_after: float) -> None:
        self.box = box
        self.reading = reading
        self.stale_after = stale_after
        # What settle knows of each thread's board: the head it was read at, and whether others
        # held tasks this agent could take there. A board changes only with a message of its
        # thread, so a quiet thread without such a task is not read again.
        self._boards: dict[str, tuple[int, bool]] = {}
        self._held: set[str] = set()  # threads where others hold tasks this agent could take
        self._boards_at: int | None = None  # where in the feed settle last looked
        self._boards_due: set[str] = set()  # threads waits read past since settle looked
        # The inbox wait, kept from call to call for one agent: its cursor, and where in the
        # feed its positions were last brought into it (so a call looks only where something
        # changed, not at every thread).
        self._plan: WaitPlan | None = None
        self._plan_for = ""
        self._plan_at = 0

    def forget(self) -> None:
        """Drop what is known of boards and the inbox (the agent took another name)."""
        self._boards.clear()
        self._held.clear()
        self._boards_at = None
        self._plan = None

    # ------------------------------------------------------------------ waits

    async def thread(
        self, me: str, thread: str, after_seq: int | None, timeout: float, pace: Pace
    ) -> tuple[Delivered, int | None]:
        """Wait on thread for what others posted after after_seq (None: after the agent's
        position, else from now). Return the delivery and, if after_seq was past the newest
        message, that newest seq (the wait went on from there)."""
        # A missing thread fails now, not after the timeout; "from now" is past every gap.
        head = self.box.head(thread, exact=after_seq is None)
        pos = self.reading.position(thread, me)
        if after_seq is not None and after_seq > head:
            head = self.box.head(thread, exact=True)  # see past any gap before saying so
        past = after_seq is not None and after_seq > head
        if past:  # waiting past seqs that do not exist yet would skip them when they come
            after_seq = head
        start = after_seq if after_seq is not None else (pos.read if pos.read is not None else head)
        # From its own position, the wait follows it back if a rewind sends it back meanwhile.
        own = after_seq is None and pos.read is not None
        begun = {thread: start}

        # Skipped: the agent's own messages, and (when continuing from its own position)
        # messages to it that its inbox already returned, and what it was shown before a
        # rewind moved it.
        def keep(m: Message) -> bool:
            to_me = me in m.to
            seen = after_seq is None and (
                (to_me and m.seq <= pos.inbox_seen) or pos.was_shown(m.seq, inbox=to_me)
            )
            return m.sender != me and not seen

        plan = self.box.wait_plan([thread], begun)
        got, messages = await self._waiting(
            me, plan, timeout, keep, pace, back=(_read if own else None), begun=begun
        )

        def mark(shown: int) -> int:
            nxt = messages[shown - 1].seq if shown < len(messages) else got.cursor[thread]
            pos.shown(begun[thread], nxt)
            return nxt

        return Delivered(got, messages, mark, receipts=self._receipts(me)), head if past else None

    async def inbox(self, me: str, timeout: float, pace: Pace) -> Delivered:
        """Wait for what is addressed to me and the tasks for anyone it may take, in any thread;
        what is owed from before its first look is returned at once."""
        plan = self._inbox_plan(me)
        tokens = self.reading.tokens(plan.cursor)  # the rewinds that cursor is after
        held = self.reading.resume(plan.cursor)  # what earlier waits read on and held back
        for thread, ahead in held.items():
            if plan.cursor.get(thread, 0) < ahead.scanned:
                plan.move(thread, ahead.scanned)
        boards = Boards(self.box)

        def keep(m: Message) -> bool:  # of those, what it returns: tasks only while open,
            # nothing a thread wait returned
            try:
                shown = self.reading.position(m.thread, me).was_shown(m.seq, inbox=True)
            except MailslotError:  # removed meanwhile: the wait reports what it meets
                shown = False
            return m.sender != me and not shown and self.offered(me, m, boards)

        positions: dict[str, Position | None] = {}

        def shown(thread: str, seq: int) -> bool:  # by a thread read, since it was held back
            if thread not in positions:
                try:
                    positions[thread] = self.reading.position(thread, me)
                except MailslotError:
                    positions[thread] = None  # removed meanwhile
            pos = positions[thread]
            return pos is None or pos.was_shown(seq, inbox=True)

        owed = self.reading.owed(me)
        gone = {(m.thread, m.seq) for m in owed if not keep(m)}  # claimed or closed meanwhile
        owed = [m for m in owed if (m.thread, m.seq) not in gone]
        offers = Offers(self.box, me, boards, {t: a.offers for t, a in held.items()},
                        self.reading.owed_tasks(), shown)  # fmt: skip
        if owed or offers.ready():  # due from before this agent's first look, or tasks held
            # back: return them at once, with whatever else is there now (a look, no wait)
            got, now = await self._waiting(me, plan, 0, keep, pace, back=_inbox, tokens=tokens)
            due = {(m.thread, m.seq) for m in owed}
            found = owed + [m for m in now if (m.thread, m.seq) not in due]
        else:
            got, found = await self._waiting(
                me, plan, timeout, keep, pace, settle=True, back=_inbox, tokens=tokens
            )
        person = self.box.loops.is_person  # people's messages first, never buried by agents'
        messages = offers.choose(sorted(found, key=lambda m: not person(m.sender)))  # a task last

        def mark(shown: int) -> None:
            chosen = offers.chosen is not None and shown == len(messages)
            delivered.more = offers.more(chosen)
            seen = {(m.thread, m.seq) for m in messages[:shown]} | gone | offers.shown(chosen)
            back = offers.held_back(chosen)
            threads = plan.moved | set(back) | {t for t, _ in seen}
            moved = {t: plan.cursor[t] for t in threads if t in plan.cursor}
            self.reading.inbox_shown(messages, seen, moved, me, tokens, back)
            self._align(me, plan, set(moved))

        delivered = Delivered(got, messages, mark, receipts=self._receipts(me))
        return delivered

    def _receipts(self, me: str) -> Callable[[list[Message]], None]:
        return lambda shown: self.reading.receipts(me, shown)

    def _inbox_plan(self, me: str) -> WaitPlan:
        """Return me's inbox wait, its cursor brought up to date with its positions where they
        may have changed since the last call (all of them on the first call): threads the feed
        named (messages came, a thread came, went or was made again), and threads it read past
        without showing (a call that ended before its messages were shown)."""
        plan = self._plan
        if plan is None or self._plan_for != me:

            def match(m: Message) -> bool:  # what an inbox wait wakes for
                if me in m.to:
                    return True
                if m.to:
                    return False
                return offer_of(m, me) is not None  # a task for anyone, in any thread

            self.box.thread_names()  # the listing the feed goes on from
            self._plan_at = self.box.changes.mark()
            plan = self.box.wait_plan(None, self.reading.inbox_cursor(me), to=me, limit=PAGE,
                                      match=match)  # fmt: skip
            self._plan, self._plan_for = plan, me
            return plan
        self.box.thread_names()  # threads that came or went since: noted in the feed
        at = self.box.changes.mark()
        changed = self.box.changes.since(self._plan_at)
        self._plan_at = at
        self._align(me, plan, set(plan.cursor) if changed is None else changed | plan.moved)
        return plan

    def _align(self, me: str, plan: WaitPlan, threads: set[str]) -> None:
        """Set plan's cursor in threads to where me's inbox position stands (a thread gone is
        dropped); what plan read past there is found again."""
        cursor, gone = self.reading.inbox_at(me, threads)
        for thread, seq in cursor.items():
            plan.move(thread, seq)
        for thread in gone:
            plan.drop(thread)
        plan.moved.clear()

    async def _waiting(
        self,
        me: str,
        plan: WaitPlan,
        timeout: float,
        keep: Callable[[Message], bool],
        pace: Pace,
        *,
        settle: bool = False,
        back: Callable[[Position], int | None] | None = None,
        tokens: dict[str, str] | None = None,
        begun: dict[str, int] | None = None,
    ) -> tuple[Arrivals, list[Message]]:
        """Wait until messages that keep() accepts arrive; return the last arrivals and them.

        settle: while others hold tasks this agent could take in the threads of the plan,
        their holders are looked at every SETTLE_EVERY_S, and a dead or stalled one's task is
        reopened (an event that ends this wait with the task).

        back: where the agent's position says a thread goes on. A thread whose position a
        rewind sent back during the wait (a writer rewrote seqs the wait may have passed; see
        Reading.went_back) starts again from there, what the wait found there dropped; the
        plan's cursor, begun (where each thread began) and tokens follow.
        """
        started = time.monotonic()
        skipped = []
        if back is not None and tokens is None:
            tokens = self.reading.tokens(plan.cursor)
        while True:
            watch = settle and self.settle(me, plan)
            left = timeout - (time.monotonic() - started)
            step = min(left, pace.limit(time.monotonic() - started))
            if watch:
                step = min(step, SETTLE_EVERY_S)
            got = await self.box.run_wait(plan, max(0.0, step))
            self._boards_due |= plan.moved
            skipped += got.skipped
            again: dict[str, int] = {}
            if back is not None and tokens is not None:
                # A rewrite may be under way in a thread the wait found messages in (sync
                # brings it in step under its lock, and leaves the mark last): let it finish,
                # so that its mark is seen before what it wrote is shown.
                for thread in {m.thread for m in got.messages}:
                    await asyncio.to_thread(self.box.settled, thread)
                for thread, pos in self.reading.went_back(me, tokens).items():
                    if (at := back(pos)) is not None:
                        again[thread] = at
                for thread, at in again.items():
                    plan.move(thread, at)
                    if begun is not None:
                        begun[thread] = at
            found = [m for m in got.messages if m.thread not in again]
            messages = [m for m in found if keep(m)]
            if messages or left <= step:
                break
            await pace.progress(time.monotonic() - started, plan.threads[0] if plan.threads
                                else "inbox")  # fmt: skip
        cursor = got.cursor  # the plan's own, which again moved
        return Arrivals(found, cursor, got.timed_out, skipped, got.pending), messages

    # ------------------------------------------------------------------ tasks

    def offer(self, me: str, m: Message) -> tuple[Task, Message] | None:
        """Return the task m hands out to me and the task's own message, or None (not a task
        offer, or unreadable now: then it is shown as any message)."""
        seq = offer_of(m, me)
        if seq is None:
            return None
        try:
            task = self.box.tasks.task(m.thread, seq)
            return task, (m if m.type == "task" else self.box.get(m.thread, seq))
        except MailslotError:
            return None

    def offered(self, me: str, m: Message, boards: Boards | None = None) -> bool:
        """Return False for a task (or the reopening of one) that me cannot take now
        (boards: the boards this wait read, read again only for a message past them)."""
        seq = offer_of(m, me)
        if seq is None:
            return True
        if boards is not None and (task := boards.task(m.thread, seq, m.seq)) is not None:
            return task.open_to(me)
        try:
            task = self.box.tasks.task(m.thread, seq)
        except MailslotError:
            return m.type == "task"  # unreadable now: show the task itself, as any message
        return task.open_to(me)

    def settle(self, me: str, plan: WaitPlan) -> bool:
        """Hand out again the tasks in the threads of plan whose holders died or stalled;
        return True if tasks me could take are held by others (so that their holders are
        watched).

        A board changes only with a message of its thread, so it is read again only where
        the feed named the thread or a wait read past a message there since the last call, or
        where others held tasks (the first call reads every board it has not read yet).
        """
        at = self.box.changes.mark()
        named = None if self._boards_at is None else self.box.changes.since(self._boards_at)
        self._boards_at = at
        heads = plan.cursor
        if named is None:
            threads = set(heads)
        else:
            threads = {t for t in named | self._boards_due if t in heads} | self._held
        self._boards_due = set()
        for thread in sorted(threads):
            at_seq = heads.get(thread)
            known = self._boards.get(thread)
            if at_seq is None or (known is not None and known == (at_seq, False)):
                continue  # gone, or nothing new there and nothing held by others to watch
            try:
                board = self.box.tasks.board(thread)
            except MailslotError:
                self._boards.pop(thread, None)
                self._held.discard(thread)
                continue
            others = any(
                t.status == CLAIMED and t.holder != me and t.may_take(me)
                for t in board.tasks.values()
            )
            self._boards[thread] = (at_seq, others)
            if others:
                self._held.add(thread)
            else:
                self._held.discard(thread)
        held = sorted(self._held)
        if held and self.box.read_only is None:
            self.box.tasks.settle(held, noticed_by=me, stale_after=self.stale_after)
        return bool(held)
