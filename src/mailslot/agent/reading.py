"""One agent's reading of a mailbox: its position in each thread, and what its inbox owes it.

A ``Session`` keeps one ``Reading``. Positions (``store.positions.Position``) are loaded once per
thread from ``.state/cursors/`` and saved when they changed. The first time the agent's inbox
looks at a thread, what is addressed to the agent there and not answered by it becomes owed:
those messages are returned by the next inbox wait, even though they arrived before it began.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from mailslot.store.errors import MailslotError
from mailslot.store.format import Message, loads
from mailslot.store.positions import Position, rewinds

if TYPE_CHECKING:
    from mailslot.mailbox import Mailbox


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
        self._planned: dict[str, str] = {}  # thread -> its incarnation when the inbox wait began

    @property
    def owes(self) -> bool:
        """Return True while inbox messages from before a first look are still owed."""
        return bool(self._backlog)

    def owes_in(self, thread: str) -> bool:
        """Return True while inbox messages of thread from before a first look are owed."""
        return any(t == thread for t, _ in self._backlog)

    def forget(self) -> None:
        """Drop every position and what is owed (the agent took another name)."""
        self._positions.clear()
        self._backlog.clear()
        self._rewound.clear()  # the next name's positions have rewinds of their own to go through

    def position(self, thread: str, agent: str | None) -> Position:
        """Return what agent was shown of thread (this incarnation of it), loading it once.

        Raise NoSuchThread.
        """
        incarnation = self.box.incarnation(thread)
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
            self._positions[thread] = pos
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
            if pos.rewind(rewind, owed):
                self._backlog = [(t, s) for t, s in self._backlog
                                 if t != thread or s < rewind.start]  # fmt: skip

    def tokens(self, threads: Iterable[str]) -> dict[str, str]:
        """Return the last rewind the loaded position of each of threads went through."""
        return {t: p.rewound for t in threads if (p := self._positions.get(t)) is not None}

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
        owed = {t for t, _ in self._backlog}
        # .state/ deleted (git clean -fdX): write every position again, not only changed ones.
        lost = not (self.box.root / ".state" / "cursors" / agent).is_dir()
        for thread, pos in sorted(self._positions.items()):
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
        cursor: dict[str, int] = {}
        for thread in list(self.box):
            try:
                pos = self.position(thread, me)
                if pos.inbox is None:
                    self._first_look(me, thread, pos)
            except MailslotError:
                continue  # removed, or unreadable: the wait reports what it meets
            cursor[thread] = pos.inbox_seen
            self._planned[thread] = pos.incarnation
        return cursor

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
        self._backlog += [
            (thread, t.seq)
            for t in board.tasks.values()
            if t.status == "open" and not t.to and t.sender != me and not pos.was_shown(t.seq)
        ]

    def owed(self, me: str) -> list[Message]:
        """Return the owed inbox messages that can still be read (dropping the others)."""
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

    def inbox_shown(
        self,
        messages: list[Message],
        shown: set[tuple[str, int]],
        cursor: dict[str, int],
        agent: str | None,
        tokens: dict[str, str] | None = None,
    ) -> None:
        """Record that an inbox wait returned shown of messages, and got as far as cursor
        (tokens: the rewinds its positions had been through, from tokens(): a thread rewound
        since keeps its position, which the cursor ran ahead of)."""
        self._backlog = [item for item in self._backlog if item not in shown]
        # A cut page never moves a position past what was returned: each thread's inbox
        # position stops before its first message that did not fit.
        held: dict[str, int] = {}
        for m in messages:
            if (m.thread, m.seq) not in shown and (m.thread, m.seq) not in self._backlog:
                held.setdefault(m.thread, m.seq - 1)
        for thread, seq in cursor.items():
            with contextlib.suppress(MailslotError):
                pos = self.position(thread, agent)
                if pos.incarnation != self._planned.get(thread, pos.incarnation):
                    continue  # created again during the wait: the cursor was the old thread's
                if tokens is not None and pos.rewound != tokens.get(thread, pos.rewound):
                    continue  # rewritten since the wait looked: the cursor was the old seqs'
                pos.inbox_shown(held.get(thread, seq))
