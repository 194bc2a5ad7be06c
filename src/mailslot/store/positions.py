"""What an agent has been shown: one position per agent and thread, with one meaning.

``read`` is "every message of the thread up to here has been shown to the agent" (by a thread
wait or a list that returned them); ``inbox`` is "every message *addressed to the agent* up to
here has been shown" (by an inbox wait), so it is never behind ``read``. Posting moves neither,
and a page cut at the size budget moves them only as far as what was returned; an inbox wait
that shows one task for anyone and holds others back stops before the first held back, and
remembers what it showed past that (``moved_inbox``).

A position belongs to one incarnation of a thread (a token of its immutable ``thread.json``):
after a thread is deleted and created again under the same id, what was read of the old one
is forgotten. Positions are kept per machine in ``.state/cursors/<agent>/<thread>.json``; when
that is lost, the inbox is derived again from the thread log (what is addressed to the agent
and not answered by it), and thread waits start from now.

A writer that rewrites published seqs (``mailslot doctor --fix`` after a git merge conflict, a
sync) leaves a rewind mark in ``.state/rewound/<thread>.json`` (``rewinds`` reads it): positions
past its first rewritten seq go back before it, once per mark, so what now stands there is
shown; a message the agent was shown at a seq the mark says it moved from is remembered at its
new seq, and not shown again there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mailslot.store.errors import MailslotError
from mailslot.store.files import Files
from mailslot.store.format import loads
from mailslot.store.names import check_name

#: At most this many moved seqs are remembered per position and kind (the lowest, passed
#: first): a rewind that moved more shows the others again rather than lose anything.
MAX_MOVED = 4096
#: Rewinds a thread's mark keeps, for positions not loaded while the later ones were written.
MAX_REWINDS = 16
#: Receipts kept per position: the messages to the agent it was shown last (by id, with when).
MAX_RECEIPTS = 256


def _seq(value: object) -> int | None:
    return value if type(value) is int and value >= 0 else None


def _lowest(seqs: set[int]) -> set[int]:
    """Return the lowest MAX_MOVED of seqs."""
    return seqs if len(seqs) <= MAX_MOVED else set(sorted(seqs)[:MAX_MOVED])


def receipts_of(value: object) -> dict[str, float]:
    """Return the stored receipts (message id -> when shown) that can be read, newest kept."""
    if not isinstance(value, dict):
        return {}
    kept = {k: float(v) for k, v in value.items()
            if isinstance(k, str) and type(v) in (int, float)}  # fmt: skip
    return dict(sorted(kept.items(), key=lambda kv: kv[1])[-MAX_RECEIPTS:])


def _seqs(value: object) -> set[int]:
    """Return the seqs in a stored list (what is not a seq is left out), at most MAX_MOVED."""
    return _lowest({s for s in value if _seq(s)} if isinstance(value, list) else set())


@dataclass(frozen=True, slots=True)
class Rewind:
    """One rewrite of a thread's seqs from ``start`` on, as its writer marked it.

    ``moved`` maps the old seq of each message of this machine at ``start`` or later to the
    seq it stands at now (the same seq if it stayed); seqs from ``start`` on that it does not
    name hold what the agent has not been shown.
    """

    start: int
    token: str
    moved: dict[int, int]


def _rewind_of(doc: object) -> Rewind | None:
    if not isinstance(doc, dict) or not isinstance(doc.get("token"), str):
        return None
    start = _seq(doc.get("from"))
    if not start:
        return None
    moved: dict[int, int] = {}
    if isinstance(doc.get("moved"), dict):
        for old, new in doc["moved"].items():
            if isinstance(old, str) and old.isascii() and old.isdigit() and _seq(new):
                moved[int(old)] = new
    return Rewind(start, doc["token"], moved)


def rewinds(doc: object) -> list[Rewind]:
    """Return the rewinds of a thread's mark, oldest first (none if it is not one).

    A mark is ``{"from": seq, "token": str, "moved": {"<old seq>": new seq, ...},
    "earlier": [older marks, oldest first]}``; without ``moved`` (an older doctor), nothing
    counts as moved: the agent is shown everything from ``from`` on again.
    """
    if not isinstance(doc, dict):
        return []
    earlier = doc.get("earlier")
    found = [_rewind_of(d) for d in [*(earlier if isinstance(earlier, list) else []), doc]]
    return [r for r in found if r is not None]


def rewind_mark(start: int, token: str, moved: dict[int, int], before: object) -> dict[str, Any]:
    """Return the mark of a rewind from start (see rewinds), keeping the latest rewinds of
    the mark before (the one it replaces), so a position that missed some goes through each."""

    def doc(r: Rewind) -> dict[str, Any]:
        return {"from": r.start, "token": r.token, "moved": {str(o): n for o, n in r.moved.items()}}

    kept = [doc(r) for r in rewinds(before)][-(MAX_REWINDS - 1) :]
    return {**doc(Rewind(start, token, dict(sorted(moved.items())))), "earlier": kept}


@dataclass(slots=True)
class Position:
    """One agent's position in one thread: see the module docstring for the meaning."""

    incarnation: str
    read: int | None = None
    inbox: int | None = None
    dirty: bool = False
    #: Where the shown range begins: messages up to here were never shown by thread reads
    #: (a first read that started past them, such as a wait "from now").
    start: int = 0
    #: The last rewind by `mailslot doctor --fix` this position went through (its token).
    rewound: str = ""
    #: The agent takes part in the thread (joined, read or wrote it): joining owes its inbox
    #: the thread's open tasks for anyone at once (every inbox gets new ones as they come).
    joined: bool = False
    #: Seqs past ``read`` that a rewind moved messages to which thread reads had shown at their
    #: old seqs (not shown again); each is dropped once ``read`` passes it.
    moved_read: set[int] = field(default_factory=set)
    #: The same for what the inbox had passed (dropped once ``inbox`` passes it), and the seqs
    #: past ``inbox`` of tasks for anyone an inbox wait showed while it held back others
    #: before them (see ``inbox_shown``).
    moved_inbox: set[int] = field(default_factory=set)
    #: The messages addressed to the agent that a wait or read returned to it: message id ->
    #: when (epoch seconds, this machine's clock); ids survive a rewind that moves seqs. The
    #: last MAX_RECEIPTS are kept. What others read as receipts (coordination/receipts).
    receipts: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_json(cls, doc: object, incarnation: str) -> Position:
        """Return the position stored in doc for this incarnation of its thread.

        Nothing stored: unknown (thread waits start from now, the inbox is derived). Stored
        for an earlier incarnation: the thread was deleted and created again since, so all of
        it is new to the agent (position 0).
        """
        if not isinstance(doc, dict) or not incarnation:
            return cls(incarnation)
        if doc.get("incarnation") not in (incarnation, ""):
            return cls.reborn(incarnation)
        dirty = doc.get("incarnation") != incarnation  # stored before thread.json arrived
        start = _seq(doc.get("start")) or 0
        rewound = str(doc["rewound"]) if isinstance(doc.get("rewound"), str) else ""
        joined = doc.get("joined") is True
        return cls(
            incarnation, _seq(doc.get("read")), _seq(doc.get("inbox")), dirty, start, rewound,
            joined, _seqs(doc.get("moved_read")), _seqs(doc.get("moved_inbox")),
            receipts_of(doc.get("shown_at")),
        )  # fmt: skip

    @classmethod
    def reborn(cls, incarnation: str) -> Position:
        """Return the position in a thread created again under an id the agent had read."""
        return cls(incarnation, 0, 0, dirty=True)

    def to_json(self, *, owed: bool = False) -> dict[str, Any]:
        """Return the position as stored; owed leaves the inbox unknown (derive it again)."""
        return {
            "incarnation": self.incarnation,
            "read": self.read,
            "inbox": None if owed else self.inbox,
            "start": self.start,
            "rewound": self.rewound,
            "joined": self.joined,
            "moved_read": sorted(self.moved_read),
            "moved_inbox": sorted(self.moved_inbox),
            "shown_at": self.receipts,
        }

    def receipt(self, message_id: str, at: float) -> None:
        """Record that the message (addressed to the agent) was shown to it at time at."""
        if message_id not in self.receipts:
            self.receipts[message_id] = round(at, 3)
            if len(self.receipts) > MAX_RECEIPTS:
                del self.receipts[min(self.receipts, key=self.receipts.__getitem__)]
            self.dirty = True

    @property
    def inbox_seen(self) -> int:
        """Return the seq up to which every message to the agent has been shown: a thread
        read counts only where it joins the inbox's mark (one from now skipped what is before
        it; the inbox still owes those)."""
        inbox = self.inbox or 0
        return max(inbox, self.read) if self.read is not None and self.start <= inbox else inbox

    def shown(self, start: int, upto: int) -> None:
        """Record that the messages after start up to upto were shown, in one piece.

        The position moves only if that piece joins what was shown before (start at or before
        it), so a read further ahead never marks the messages in between as shown.
        """
        if self.read is None:
            self.read, self.start = upto, start
            self.dirty = True
        elif start <= self.read < upto:
            self.read = upto
            self.dirty = True
        else:
            return
        self.moved_read = {s for s in self.moved_read if s > upto}

    def was_shown(self, seq: int, *, inbox: bool = False) -> bool:
        """Return True if message seq was shown to the agent by a thread read.

        inbox (for what the inbox returns: addressed to the agent, or a task for anyone): or
        by the inbox past its position (at the seq a rewind moved it from, or a task shown
        while others before it were held back); what else the inbox showed is behind it.
        """
        in_range = self.read is not None and self.start < seq <= self.read
        return in_range or seq in self.moved_read or (inbox and seq in self.moved_inbox)

    def rewind(self, rewind: Rewind, owed: set[int] | frozenset[int] = frozenset()) -> bool:
        """Go back before rewind.start (once per token): later seqs were rewritten.

        What the agent was shown at an old seq of rewind.moved is remembered at its new seq
        (by thread reads, or by the inbox if it had passed it; owed: seqs the inbox passed
        but still owes). Return False if this position went through that rewind already.
        """
        if rewind.token == self.rewound:
            return False
        self.rewound = rewind.token
        before = rewind.start - 1
        inbox = self.inbox_seen
        moved = rewind.moved.items()
        read = {new for old, new in moved if self.was_shown(old)}
        passed = {old for old, _ in moved if old <= inbox and old not in owed} | self.moved_inbox
        passed = {new for old, new in moved if old in passed}
        # What was remembered past before stood at seqs rewritten now: moved names it again.
        self.moved_read = _lowest({s for s in self.moved_read if s <= before} | read)
        self.moved_inbox = _lowest({s for s in self.moved_inbox if s <= before} | passed)
        for name in ("read", "inbox"):
            value = getattr(self, name)
            if value is not None and value > before:
                setattr(self, name, before)
        self.start = min(self.start, before)
        self.dirty = True
        return True

    def clamp(self, head: int) -> None:
        """Bring positions past the thread's newest message back to it.

        The folder went back in time (its newest files deleted, or an older git branch): a
        message posted there again takes those seqs, and must not be waited past.
        """
        for name in ("read", "inbox"):
            value = getattr(self, name)
            if value is not None and value > head:
                setattr(self, name, head)
                self.dirty = True
        self.start = min(self.start, head)
        self.moved_read = {s for s in self.moved_read if s <= head}
        self.moved_inbox = {s for s in self.moved_inbox if s <= head}

    def inbox_shown(self, upto: int, ahead: Iterable[int] = ()) -> None:
        """Record that every message to the agent up to upto was shown, and the messages at
        the seqs of ahead past it (a task for anyone chosen over others held back before it:
        the position stops before those, and what it showed beyond is not shown again)."""
        if self.inbox is None or upto > self.inbox:
            self.inbox = upto
            self.dirty = True
            self.moved_inbox = {s for s in self.moved_inbox if s > upto}
        past = {s for s in ahead if s > self.inbox_seen} - self.moved_inbox
        if past:
            self.moved_inbox = _lowest(self.moved_inbox | past)
            self.dirty = True


def load(files: Files, agent: str, key: str) -> Any:
    """Return what save() stored for agent under key (a thread id), or None."""
    check_name(agent, "agent name")
    try:
        return loads((files.root / ".state" / "cursors" / agent / f"{key}.json").read_bytes())
    except (OSError, ValueError):
        return None


def save(files: Files, agent: str, key: str, value: Any) -> None:
    """Remember a read position of agent under key (a thread id), best effort."""
    check_name(agent, "agent name")
    with contextlib.suppress(MailslotError):  # a position is re-derived if lost, never a failure
        files.write_state_file(files.dir(f".state/cursors/{agent}") / f"{key}.json", value)
