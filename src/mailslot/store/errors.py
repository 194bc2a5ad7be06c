"""The one error hierarchy of mailslot; every message says what to do next."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class MailslotError(Exception):
    """Base of every error mailslot raises on purpose."""


class InvalidName(MailslotError, ValueError):
    """A thread id, topic, agent name or key that cannot be used."""

    def __init__(self, kind: str, name: object, reason: str) -> None:
        self.kind = kind
        self.name = name
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
        super().__init__(f"invalid {kind} {shown}: {reason}")


class InvalidMessage(MailslotError, ValueError):
    """Message content, meta or fields that cannot be stored; nothing was stored."""


class InvalidState(MailslotError, ValueError):
    """A thread state change that is not allowed."""


class NotFound(MailslotError, KeyError):
    """Something looked up by name or number does not exist."""

    def __str__(self) -> str:
        # KeyError.__str__ shows repr(args[0]); we want the readable sentence.
        return str(self.args[0]) if self.args else ""


class NoSuchThread(NotFound):
    """No thread with this id."""

    def __init__(self, thread: str, known: list[str]) -> None:
        self.thread = thread
        self.suggestions = known
        hint = f"; did you mean {', '.join(repr(k) for k in known)}?" if known else ""
        super().__init__(f"no thread {thread!r}{hint} (list threads to see them all)")


class NoSuchMessage(NotFound):
    """No message with this seq in the thread."""

    def __init__(self, thread: str, seq: int, head: int) -> None:
        self.thread = thread
        self.seq = seq
        super().__init__(
            f"no message {seq} in thread {thread!r}: its messages are 1..{head}"
            if head
            else f"no message {seq} in thread {thread!r}: it has no messages yet"
        )


class NoSuchAgent(NotFound):
    """No agent card with this name."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.agent = name
        self.known = known
        names = ", ".join(known) if known else "none registered yet"
        super().__init__(f"no agent {name!r} (known agents: {names}); register it first")


class NameTaken(MailslotError):
    """An agent name held by another live process."""

    def __init__(self, name: str, holder: str) -> None:
        self.agent = name
        super().__init__(
            f"agent name {name!r} is in use by a live process ({holder}); choose another name"
        )


class RootError(MailslotError):
    """The mailbox root is missing, damaged, unsafe or of an unknown format."""

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = Path(path)
        super().__init__(message)


class StorageError(MailslotError, OSError):
    """The filesystem refused a write (read-only, full, no hard links); nothing was stored."""

    def __init__(self, path: Path | str, message: str, errno_: int | None = None) -> None:
        self.path = Path(path)
        super().__init__(message)
        self.errno = errno_


class Unreadable(Protocol):
    """A file and why it cannot be read (store.format.Damage is one): what Damaged reports."""

    @property
    def path(self) -> str: ...

    @property
    def reason(self) -> str: ...


class Damaged(MailslotError):
    """A file of the mailbox exists but cannot be read as what it should be."""

    def __init__(self, damage: Unreadable) -> None:
        self.path = Path(damage.path)
        self.reason = damage.reason
        super().__init__(f"{damage.path}: {damage.reason} (inspect it, or restore it from git)")


class TaskError(MailslotError):
    """A task operation that cannot be done: not a task, done, dead, or held by another."""


class LoopRefused(MailslotError):
    """A post the loop guard refused (coordination/loops.py); nothing was stored.

    rule is "exchanges", "messages" or "repeats", the key of "loop_guard" in mailslot.json
    that raises or turns off the limit; agents are the agents it counted.
    """

    def __init__(self, message: str, *, thread: str, rule: str, agents: list[str]) -> None:
        self.thread = thread
        self.rule = rule
        self.agents = agents
        super().__init__(message)
