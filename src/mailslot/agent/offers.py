"""Offers: the one task for anyone an inbox wait shows, and the ones it holds back.

Every agent's inbox may take every open task for anyone, so shown all of them at once, several
workers race for the same task and all but one lose. An inbox wait shows one instead (messages
addressed to the agent all still come): the first in the agent's own order (a stable hash of
its name, the thread and the task's seq) of the oldest ``PICK`` open ones, so that workers
waiting side by side take different tasks. The others are held back, not passed: the inbox
position stays before the first of them (``Reading.inbox_shown``), and the next wait offers
them again at once while they are open.

Candidates come from three places: what this wait read, what earlier waits read and held back
(``Reading.resume``), and the tasks the inbox owes from before its first look or a join
(``Reading.owed_tasks``). Only the chosen one is read; the others are judged from their
thread's board, the oldest first, and only until ``PICK`` open ones are found.
"""

from __future__ import annotations

import heapq
import os
import zlib
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING

from mailslot.coordination.board import CLAIMED, Board, Task, offer_of
from mailslot.store.errors import MailslotError, TaskError
from mailslot.store.format import Message

if TYPE_CHECKING:
    from mailslot.coordination.tasks import Claim
    from mailslot.mailbox import Mailbox

PICK = 16  # an inbox wait chooses the task it shows among this many open ones, oldest first

#: A candidate: thread, seq of the message offering the task, the task's seq, and whether it
#: is owed (behind the inbox position: Reading.owed_tasks) rather than held back before it.
Item = tuple[str, int, int, bool]


def rank(me: str, thread: str, task: int) -> int:
    """Return where task comes in me's own order (the same in every process and run)."""
    return zlib.crc32(f"{me}\n{thread}\n{task}".encode())


def claim_task(
    box: Mailbox,
    thread: str,
    me: str,
    seq: int | None,
    lease_s: float | None,
    stale_after: float,
    after: int = 0,
) -> Claim | None:
    """Claim task seq of thread for me, held by this process, or with seq None the next task
    open to me there (take_next); return the claim, or None if no next task was left to win.

    after: the seq of a post retried with its idempotency key (0: none); a task me claimed
    after it is the one the first call took, and is returned again instead of a new one."""
    claim = partial(box.tasks.claim, thread, agent=me, pid=os.getpid(), lease_s=lease_s,
                    stale_after=stale_after)  # fmt: skip
    if seq is None and after:  # the first claim me made after the post: the first call's
        took = [(t.claim, t.seq) for t in box.tasks.board(thread).tasks.values()
                if t.status == CLAIMED and t.holder == me and (t.claim or 0) > after]  # fmt: skip
        seq = min(took)[1] if took else None
    return claim(seq) if seq else take_next(box, thread, me, claim, stale_after)


def take_next(
    box: Mailbox, thread: str, me: str, claim: Callable[[int], Claim], stale_after: float
) -> Claim | None:
    """Claim (with claim) the next task of thread open to me and return the claim it won,
    or None if none was left to win (task_claim without a seq). With none open, it first
    looks at the holders, as task_list does: a task whose holder died is taken as well."""
    for looked in (False, True):
        for task in next_open(box, thread, me):
            try:
                got = claim(task.seq)
            except TaskError:
                continue  # closed meanwhile
            if got.won:
                return got
        if looked or not box.tasks.settle([thread], noticed_by=me, stale_after=stale_after):
            break
    return None


def next_open(box: Mailbox, thread: str, me: str) -> list[Task]:
    """Return the tasks of thread open to me that task_claim without a seq tries, in turn:
    the oldest PICK, in me's own order (so workers claiming side by side rarely collide)."""
    board = box.tasks.board(thread)
    mine: list[Task] = []
    for task in board.open_tasks():
        if task.may_take(me):
            mine.append(task)
            if len(mine) == PICK:
                break
    return sorted(mine, key=lambda t: rank(me, thread, t.seq))


def for_anyone(m: Message, me: str) -> int | None:
    """Return the seq of the task m offers to anyone (me included), or None: a task without
    `to`, its reopening or release, a failed attempt at it."""
    return offer_of(m, me) if not m.to else None


class Boards:
    """The task boards one inbox wait looks at, each read once (again for a later message)."""

    def __init__(self, box: Mailbox) -> None:
        self.box = box
        self._got: dict[str, Board | None] = {}

    def task(self, thread: str, seq: int, at: int) -> Task | None:
        """Return task seq of thread as its board says once folded through seq at (the
        message that offers it), or None (no such task, or the board cannot be read)."""
        board = self._got.get(thread)
        if board is None or board.seq < at:
            try:
                board = self.box.tasks.board(thread)
            except MailslotError:
                board = None
            self._got[thread] = board
        return board.tasks.get(seq) if board is not None else None


class Offers:
    """The tasks for anyone one inbox wait may show: it shows one and holds back the others.

    held: what earlier waits held back, by thread: (seq of the message, seq of the task), in
    order (Ahead.offers); owed: the tasks for anyone owed, by thread, in order; shown(thread,
    seq): True for a message the agent was shown meanwhile (by a thread read).
    """

    def __init__(
        self,
        box: Mailbox,
        me: str,
        boards: Boards,
        held: dict[str, list[tuple[int, int]]],
        owed: dict[str, list[int]],
        shown: Callable[[str, int], bool],
    ) -> None:
        self.box, self.me, self.boards, self._shown = box, me, boards, shown
        self._held = held
        lists = [_held(t, its) for t, its in held.items()]
        lists += [_owed(t, seqs) for t, seqs in owed.items()]
        self._oldest = heapq.merge(*lists)  # every candidate from before, oldest first
        self._lengths = {(t, False): len(its) for t, its in held.items()}
        self._lengths.update({(t, True): len(seqs) for t, seqs in owed.items()})
        self._taken: dict[tuple[str, bool], int] = {}  # how many of each list were looked at
        self._open: list[Item] = []  # the first PICK open tasks of those
        self._found: list[Item] = []  # the offers this wait read
        #: Candidates no longer open, shown otherwise, or unreadable: dropped.
        self.gone: set[tuple[str, int]] = set()
        self.chosen: Message | None = None
        self._covered: set[tuple[str, int]] = set()  # the messages offering the chosen task

    def ready(self) -> bool:
        """Return True if a task held back or owed is open to me now (the wait then returns
        at once); looks at the oldest until PICK open tasks are found."""
        tasks = {(t, task) for t, _, task, _ in self._open}
        while len(tasks) < PICK:
            item = next(self._oldest, None)
            if item is None:
                break
            thread, seq, task_seq, owed = item
            self._taken[(thread, owed)] = self._taken.get((thread, owed), 0) + 1
            task = self.boards.task(thread, task_seq, seq)
            if task is None or not task.open_to(self.me) or self._shown(thread, seq):
                self.gone.add((thread, seq))
                continue
            self._open.append(item)
            tasks.add((thread, task_seq))
        return bool(self._open)

    def choose(self, found: list[Message]) -> list[Message]:
        """Return found with one task for anyone in it at most, last: the first in me's order
        of the oldest PICK open ones (held back, owed, or in found)."""
        rest: list[Message] = []
        read: dict[tuple[str, int], Message] = {}
        for m in found:
            task = for_anyone(m, self.me)
            if task is None:
                rest.append(m)
            else:
                self._found.append((m.thread, m.seq, task, False))
                read[(m.thread, m.seq)] = m
        self.ready()
        while True:
            offers = self._open + self._found
            order = list(dict.fromkeys((t, task) for t, _, task, _ in offers))[:PICK]
            if not order:
                return rest
            thread, task = min(order, key=lambda k: rank(self.me, *k))
            its = [o for o in offers if (o[0], o[2]) == (thread, task)]
            seq = min(s for _, s, _, _ in its)  # its first offer here (a later one repeats it)
            try:
                self.chosen = read.get((thread, seq)) or self.box.get(thread, seq)
            except MailslotError:
                self.gone.update((t, s) for t, s, _, _ in its)
                self._open = [o for o in self._open if o not in its]
                self._found = [o for o in self._found if o not in its]
                continue
            self._covered = {(t, s) for t, s, _, _ in its}
            return [*rest, self.chosen]

    def shown(self, chosen: bool) -> set[tuple[str, int]]:
        """Return the candidates done with (chosen: the chosen task was shown)."""
        return self.gone | (self._covered if chosen else set())

    def held_back(self, chosen: bool) -> dict[str, list[tuple[int, int]]]:
        """Return by thread the candidates the inbox position stays before (Ahead.offers):
        every one held back or read now and not done with, open or not looked at yet."""
        done = self.shown(chosen)
        out: dict[str, list[tuple[int, int]]] = {}
        for thread, its in self._held.items():
            n = self._taken.get((thread, False), 0)
            kept = [o for o in its[:n] if (thread, o[0]) not in done] + its[n:]
            if kept:
                out[thread] = kept
        for thread, seq, task, _ in self._found:
            if (thread, seq) not in done:
                out.setdefault(thread, []).append((seq, task))
        return out

    def more(self, chosen: bool) -> bool:
        """Return True if tasks for anyone are left for a later wait (open, or not looked at)."""
        done = self.shown(chosen)
        if any((t, s) not in done for t, s, _, _ in self._open + self._found):
            return True
        return any(self._taken.get(key, 0) < n for key, n in self._lengths.items())


def _held(thread: str, offers: list[tuple[int, int]]) -> Iterator[Item]:
    for seq, task in offers:
        yield thread, seq, task, False


def _owed(thread: str, seqs: list[int]) -> Iterator[Item]:
    for seq in seqs:
        yield thread, seq, seq, True
