"""What an agent has been shown: one position per agent and thread, with one meaning.

``read`` is "every message of the thread up to here has been shown to the agent" (by a thread
wait or a list that returned them); ``inbox`` is "every message *addressed to the agent* up to
here has been shown" (by an inbox wait), so it is never behind ``read``. Posting moves neither,
and a page cut at the size budget moves them only as far as what was returned.

A position belongs to one incarnation of a thread (a token of its immutable ``thread.json``):
after a thread is deleted and created again under the same id, what was read of the old one
is forgotten. Positions are kept per machine in ``.state/cursors/<agent>/<thread>.json``; when
that is lost, the inbox is derived again from the thread log (what is addressed to the agent
and not answered by it), and thread waits start from now.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from mailslot.store.errors import MailslotError
from mailslot.store.files import Files
from mailslot.store.format import loads
from mailslot.store.names import check_name


def _seq(value: object) -> int | None:
    return value if type(value) is int and value >= 0 else None


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
            joined,
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
        }

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

    def was_shown(self, seq: int) -> bool:
        """Return True if message seq was shown to the agent by a thread read."""
        return self.read is not None and self.start < seq <= self.read

    def rewind(self, before: int, token: str) -> None:
        """Go back to seq before (once per token): later seqs were rewritten by a repair."""
        if token == self.rewound:
            return
        self.rewound = token
        for name in ("read", "inbox"):
            value = getattr(self, name)
            if value is not None and value > before:
                setattr(self, name, before)
        self.start = min(self.start, before)
        self.dirty = True

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

    def inbox_shown(self, upto: int) -> None:
        """Record that every message to the agent up to upto was shown."""
        if self.inbox is None or upto > self.inbox:
            self.inbox = upto
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
