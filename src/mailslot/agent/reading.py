"""One agent's reading of a mailbox: its position in each thread, and what its inbox owes it.

A ``Session`` keeps one ``Reading``. Positions (``store.positions.Position``) are loaded once per
thread from ``.state/cursors/`` and saved when they changed. The first time the agent's inbox
looks at a thread, what is addressed to the agent there and not answered by it becomes owed:
those messages are returned by the next inbox wait, even though they arrived before it began.
An inbox wait that holds back tasks for anyone (it shows one at a time) leaves the position
before the first of them; ``Ahead`` remembers how far it read past that, and which it held back.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailslot.store.errors import MailslotError, NotFound
from mailslot.store.format import Message, loads
from mailslot.store.positions import Position, rewinds

if TYPE_CHECKING:
    from mailslot.mailbox import Mailbox


@dataclass(slots=True)
class Ahead:
    """How far the inbox read a thread past its position, and the tasks it held back there.

    ``offers`` are (seq of the message, seq of the task it offers), in seq order; the position
    stays before the first. Valid while the position is the one it was made for (``key``).
    """

    key: tuple[str, str, int]  # incarnation, rewind and inbox_seen of the position then
    scanned: int  # the inbox read the thread up to here
    offers: list[tuple[int, int]]


def _key(pos: Position) -> tuple[str, str, int]:
    return pos.incarnation, pos.rewound, pos.inbox_seen


class Tokens(dict[str, str]):
    """Reading.tokens: the rewind each loaded position of threads had gone through; those
    not listed had gone through none ("")."""

    def __init__(
        self, known: dict[str, str], threads: Container[str], positions: dict[str, Position]
    ) -> None:
        super().__init__(known)
        self.threads = threads
        self.positions = positions

    def __contains__(self, thread: object) -> bool:
        return super().__contains__(thread) or (thread in self.threads and thread in self.positions)

    def __missing__(self, thread: str) -> str:
        if thread in self:
            return ""
        raise KeyError(thread)

    def get(self, thread: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return self[thread] if thread in self else default  # noqa: SIM401 - this is get


class Reading:
    """What one agent was shown of each thread of box, and the inbox messages owed to it."""

    def __init__(self, box: Mailbox, *, save_every: float = 0.0) -> None:
        self.box = box
        #: Positions moved by reads and waits are written at most this often (0: at once);
        #: on_due is called when a write is left for flush().
        self.save_every = save_every
        self.on_due: Callable[[], None] = lambda: None
        self._saved_at = -save_every  # monotonic time of the last write of positions
        self._due = False  # moved positions wait for their write (see save_every)
        self._positions: dict[str, Position] = {}  # thread -> what this agent was shown
        self._backlog: list[tuple[str, int]] = []  # inbox messages due from before its first look
        self._rewound: dict[str, int] = {}  # thread -> the rewind mark last looked at (mtime)
        self._tokened: set[str] = set()  # threads whose position went through a rewind
        self._touched: set[str] = set()  # threads whose position was handed out since a save
        self._planned: dict[str, str] = {}  # thread -> its incarnation when the inbox wait began
        self._ahead: dict[str, Ahead] = {}  # thread -> what the inbox read past its position
        # Tasks for anyone owed from before a first look or a join: thread -> seqs, in order.
        # Kept apart from _backlog: the inbox shows one a wait and reads only that one.
        self._owed_tasks: dict[str, list[int]] = {}

    @property
    def owes(self) -> bool:
        """Return True while inbox messages from before a first look are still owed."""
        return bool(self._backlog or self._owed_tasks)

    def owes_in(self, thread: str) -> bool:
        """Return True while inbox messages of thread from before a first look are owed."""
        return thread in self._owed_tasks or any(t == thread for t, _ in self._backlog)

    def forget(self) -> None:
        """Drop every position and what is owed (the agent took another name)."""
        self._positions.clear()
        self._backlog.clear()
        self._rewound.clear()  # the next name's positions have rewinds of their own to go through
        self._tokened.clear()
        self._ahead.clear()
        self._owed_tasks.clear()

    def position(self, thread: str, agent: str | None) -> Position:
        """Return what agent was shown of thread (this incarnation of it), loading it once.

        Raise NoSuchThread.
        """
        incarnation = self.box.incarnation(thread)
        self._touched.add(thread)
        pos = self._positions.get(thread)
        if pos is not None and not pos.incarnation and incarnation:
            pos.incarnation = incarnation  # its thread.json arrived after its messages
            pos.dirty = True
        if pos is None or pos.incarnation != incarnation:
            if pos is not None:  # deleted and created again while we ran
                pos = Position.reborn(incarnation)
            else:
                stored = self.box.load_cursor(agent, thread) if agent else None
                pos = Position.from_json(stored, incarnation)
            self._backlog = [(t, s) for t, s in self._backlog if t != thread]
            self._owed_tasks.pop(thread, None)
            self._positions[thread] = pos
            if pos.rewound:
                self._tokened.add(thread)
        head = self.box.head(thread)
        if max(pos.read or 0, pos.inbox or 0) > head:
            pos.clamp(self.box.head(thread, exact=True))  # beyond the cheap head: look closely
        self._rewind(thread, pos)
        return pos

    def _rewind(self, thread: str, pos: Position) -> None:
        """Go back to where a writer rewrote seqs (doctor after a git merge conflict, a sync).

        It leaves .state/rewound/<thread>.json (store.positions.rewinds reads it); a position
        past its first rewritten seq goes back before it, once per rewind, so the messages
        that took those seqs are shown, and a message it had been shown at a seq the mark
        says it moved from is not shown again at its new one. The inbox owes nothing from
        there on: what it owed is returned once by its next wait, wherever it now stands.
        """
        path = self.box.root / ".state" / "rewound" / f"{thread}.json"
        try:
            stamp = os.stat(path).st_mtime_ns
        except OSError:
            return
        if self._rewound.get(thread) == stamp:
            return
        self._rewound[thread] = stamp
        try:
            marks = rewinds(loads(path.read_bytes()))
        except (OSError, ValueError):
            return
        tokens = [r.token for r in marks]
        if pos.rewound in tokens:  # went through those up to its own, not the later ones
            marks = marks[tokens.index(pos.rewound) + 1 :]
        for rewind in marks:
            owed = {s for t, s in self._backlog if t == thread}
            owed.update(self._owed_tasks.get(thread, ()))
            if pos.rewind(rewind, owed):
                self._tokened.add(thread)
                self._backlog = [(t, s) for t, s in self._backlog
                                 if t != thread or s < rewind.start]  # fmt: skip
                self._owe_tasks(thread, [], upto=rewind.start)

    def tokens(self, threads: Container[str]) -> dict[str, str]:
        """Return the last rewind the loaded position of each of threads went through (""
        for none): a view that costs the threads that ever went through one, not all."""
        known = {t: p.rewound for t in self._tokened if t in threads
                 and (p := self._positions.get(t)) is not None}  # fmt: skip
        return Tokens(known, threads, self._positions)

    def went_back(self, me: str, tokens: dict[str, str]) -> dict[str, Position]:
        """Return the positions of the threads of tokens (from tokens()) that went through a
        rewind since, going through a new one now: a writer rewrote seqs that a wait begun
        before may have passed. tokens is brought up to date. Costs a listing of the marks'
        folder (.state/rewound/, empty unless seqs were ever rewritten)."""
        try:
            with os.scandir(self.box.root / ".state" / "rewound") as found:
                marks = [(e.name.removesuffix(".json"), e) for e in found]
        except OSError:
            return {}
        out: dict[str, Position] = {}
        for thread, entry in marks:
            if thread not in tokens:
                continue
            with contextlib.suppress(OSError, MailslotError):
                if entry.stat().st_mtime_ns != self._rewound.get(thread):
                    self.position(thread, me)  # a mark not looked at yet: go through it now
            pos = self._positions.get(thread)
            if pos is not None and pos.rewound != tokens[thread]:
                tokens[thread] = pos.rewound
                out[thread] = pos
        return out

    def receipts(self, me: str, messages: Iterable[Message]) -> None:
        """Record that messages were shown to me (a wait or read returned them): a receipt of
        each addressed to me, written with its position (coordination/receipts reads them)."""
        at = time.time()
        for m in messages:
            if me in m.to:
                with contextlib.suppress(MailslotError):
                    self.position(m.thread, me).receipt(m.id, at)

    def save(self, agent: str, *, now: bool = True) -> None:
        """Write the positions changed since the last save to .state/cursors/ (best effort).

        now=False (after a read or a wait) may leave the write to flush(), within save_every:
        a busy conversation writes them once a second, not once per message.
        """
        at = time.monotonic()
        if not now and at - self._saved_at < self.save_every:
            if not self._due:
                self._due = True
                self.on_due()
            return
        self._saved_at = at
        self._due = False
        owed = {t for t, _ in self._backlog} | set(self._owed_tasks)
        # .state/ deleted (git clean -fdX): write every position again, not only changed ones.
        lost = not (self.box.root / ".state" / "cursors" / agent).is_dir()
        touched, self._touched = self._touched, set()  # a position changes only once handed out
        for thread in sorted(self._positions if lost else touched & self._positions.keys()):
            pos = self._positions[thread]
            if pos.dirty or lost:
                # While inbox messages from before the first look are still owed, the saved
                # inbox position stays unknown, so a restart derives them again.
                self.box.save_cursor(agent, thread, pos.to_json(owed=thread in owed))
                pos.dirty = False

    def flush(self, agent: str) -> None:
        """Write the positions whose write save(now=False) left for later."""
        if self._due:
            self.save(agent)

    def inbox_cursor(self, me: str) -> dict[str, int]:
        """Return where me's inbox continues in each thread, taking a first look where needed."""
        return self.inbox_at(me, self.box.thread_names())[0]

    def inbox_at(self, me: str, threads: Iterable[str]) -> tuple[dict[str, int], set[str]]:
        """Return where me's inbox continues in each of threads (taking a first look where
        needed), and those of them that are gone."""
        cursor: dict[str, int] = {}
        gone: set[str] = set()
        for thread in sorted(threads):
            try:
                pos = self.position(thread, me)
                if pos.inbox is None:
                    self._first_look(me, thread, pos)
            except NotFound:
                gone.add(thread)
                continue
            except MailslotError:
                continue  # unreadable: the wait reports what it meets
            cursor[thread] = pos.inbox_seen
            self._planned[thread] = pos.incarnation
        return cursor, gone

    def _first_look(self, me: str, thread: str, pos: Position) -> None:
        """Start the inbox position of a thread this agent's inbox never looked at.

        What is addressed to the agent and not yet answered (no reply_to from it) is owed to
        it: tasks and questions sent before it started. Read from the thread index, so this
        costs one look per thread, not a read of every message.
        """
        seqs, upto = self.box.unanswered(thread, me)
        self._backlog += [(thread, s) for s in seqs if not pos.was_shown(s)]
        self._owe_open_tasks(thread, me, pos)  # a task for anyone is for this agent too
        pos.inbox_shown(upto)

    def join(self, thread: str, me: str) -> bool:
        """Record that me takes part in thread; return True if it had not before.

        Joining makes the thread's tasks for anyone due to me's inbox: those open now and not
        shown to it yet are owed at once (the inbox sees the ones posted later as they come;
        tasks addressed to me come to it as any message addressed to it).
        """
        pos = self.position(thread, me)
        if pos.joined:
            return False
        pos.joined = pos.dirty = True
        self._owe_open_tasks(thread, me, pos)
        return True

    def _owe_open_tasks(self, thread: str, me: str, pos: Position) -> None:
        board = self.box.tasks.board(thread)
        seqs = [
            t.seq
            for t in board.tasks.values()
            if t.status == "open"
            and not t.to
            and t.sender != me
            and not pos.was_shown(t.seq, inbox=True)  # an inbox wait showed it ahead
        ]
        self._owe_tasks(thread, seqs)

    def _owe_tasks(self, thread: str, seqs: Iterable[int], upto: int | None = None) -> None:
        """Owe me the tasks for anyone of thread at seqs, besides those owed (upto: drop the
        owed ones from there on)."""
        owed = {s for s in self._owed_tasks.get(thread, ()) if upto is None or s < upto}
        owed.update(seqs)
        if owed:
            self._owed_tasks[thread] = sorted(owed)
        else:
            self._owed_tasks.pop(thread, None)

    def owed_tasks(self) -> dict[str, list[int]]:
        """Return the tasks for anyone owed from before a first look or a join: thread ->
        seqs in order, not read (the inbox reads the one it shows; see agent/offers)."""
        return self._owed_tasks

    def owed(self, me: str) -> list[Message]:
        """Return the owed inbox messages that can still be read (dropping the others); the
        tasks for anyone owed are apart (owed_tasks)."""
        out: list[Message] = []
        keep: list[tuple[str, int]] = []
        for thread in {t for t, _ in self._backlog}:  # a rewind not gone through drops some
            with contextlib.suppress(MailslotError):
                self.position(thread, me)
        for thread, seq in sorted(set(self._backlog)):
            try:
                if self.position(thread, me).was_shown(seq):
                    continue  # a thread wait returned it meanwhile
                m = self.box.get(thread, seq)
            except MailslotError:
                continue  # gone or unreadable since the index saw it
            if m.sender != me:
                out.append(m)
                keep.append((thread, seq))
        self._backlog = keep
        return out

    def resume(self, threads: Container[str]) -> dict[str, Ahead]:
        """Return, by thread (of threads), how far earlier inbox waits read past its inbox
        position, and the tasks they held back there: the inbox goes on from there. A
        position that changed otherwise (a thread read, a rewind) drops what was read."""
        out: dict[str, Ahead] = {}
        for thread, ahead in list(self._ahead.items()):  # threads: not copied (all of them)
            pos = self._positions.get(thread)
            try:  # the folder went back in time (see Position.clamp): read it again
                behind = pos is not None and self.box.head(thread) < ahead.scanned
            except MailslotError:
                behind = True
            if pos is None or thread not in threads or _key(pos) != ahead.key or behind:
                del self._ahead[thread]
                continue
            out[thread] = ahead
        return out

    def inbox_shown(
        self,
        messages: list[Message],
        shown: set[tuple[str, int]],
        cursor: dict[str, int],
        agent: str | None,
        tokens: dict[str, str] | None = None,
        offers: dict[str, list[tuple[int, int]]] | None = None,
    ) -> None:
        """Record that an inbox wait returned shown of messages, and got as far as cursor
        (tokens: the rewinds its positions had been through, from tokens(): a thread rewound
        since keeps its position, which the cursor ran ahead of; offers: the tasks for anyone
        it held back in each thread, as Ahead.offers, which the position stays before)."""
        self._backlog = [item for item in self._backlog if item not in shown]
        for thread in {t for t, _ in shown if t in self._owed_tasks}:
            left = [s for s in self._owed_tasks[thread] if (thread, s) not in shown]
            if left:
                self._owed_tasks[thread] = left
            else:
                del self._owed_tasks[thread]
        # A cut page never moves a position past what was returned: each thread's inbox
        # position stops before its first message that did not fit, and before the first
        # task for anyone held back (the next wait reads on from cursor, and offers those).
        held: dict[str, int] = {}
        cut: set[str] = set()
        for m in messages:
            owed = (m.thread, m.seq) in self._backlog or m.seq in self._owed_tasks.get(m.thread, ())
            if (m.thread, m.seq) not in shown and not owed:
                held[m.thread] = min(held.get(m.thread, m.seq), m.seq - 1)
                cut.add(m.thread)
        for thread, its in (offers or {}).items():
            if its:
                held[thread] = min(held.get(thread, its[0][0]), its[0][0] - 1)
        ahead: dict[str, list[int]] = {}
        for thread, seq in shown:
            ahead.setdefault(thread, []).append(seq)
        for thread, seq in cursor.items():
            self._ahead.pop(thread, None)
            with contextlib.suppress(MailslotError):
                pos = self.position(thread, agent)
                if pos.incarnation != self._planned.get(thread, pos.incarnation):
                    continue  # created again during the wait: the cursor was the old thread's
                if tokens is not None and pos.rewound != tokens.get(thread, pos.rewound):
                    continue  # rewritten since the wait looked: the cursor was the old seqs'
                upto = min(held.get(thread, seq), seq)
                pos.inbox_shown(upto, ahead.get(thread, ()))
                back = (offers or {}).get(thread)
                if back and thread not in cut and upto < seq:
                    self._ahead[thread] = Ahead(_key(pos), seq, back)
