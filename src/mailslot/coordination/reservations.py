"""File reservations: the paths an agent will edit, held by it alone (or shared for reading).

Every reservation, release and expiry is a message of one thread, ``file-reservations``
(created on first use), so who held what, when and why is in the transcript, readable with
``cat`` and reviewed in git. Its state is a fold of those messages in seq order (``Ledger``):

- a ``status`` message with ``meta.reserve`` (``{"paths": [...], "exclusive": true,
  "ttl_s": 3600, "pid": 4242, "host": "box", "reason": "..."}``) asks for patterns; it is
  granted, all of it or none, if no other agent holds an overlapping exclusive reservation
  (or, for an exclusive request, any overlapping one) at that point of the thread;
- ``meta.release`` (``{"paths": [...]}``, or ``null`` for all) gives the holder's back;
  with ``"holder": "bob"`` in it, a person frees bob's reservations (``paths`` ``null`` or
  absent: all of them) as themselves: the message is theirs, addressed to bob, who is named;
- ``meta.expire`` (signed ``mailslot``) ends the reservations of a request whose holder died,
  exited or showed no sign of work for its TTL.

As with task claims (``tasks``), a request is decided under the thread's lock on one machine
(expire what is owed, fold to the head, then append), so a refused request writes nothing;
across machines, where locks do not exclude, the thread's order decides and a request that
lost is refused after it landed. Overlap is decided on the patterns (``globs``), not on the
files that exist today.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mailslot.coordination import leases
from mailslot.coordination.board import SYSTEM, _epoch, folded_through, iso
from mailslot.coordination.globs import covers_whole_repo, normalize, overlaps
from mailslot.coordination.leases import Lease
from mailslot.store.agents import Agents
from mailslot.store.errors import InvalidMessage, MailslotError, NoSuchThread, TaskError
from mailslot.store.files import HOST, Files
from mailslot.store.format import Message
from mailslot.store.log import ThreadLog
from mailslot.store.presence import DEFAULT_STALE_AFTER
from mailslot.store.publish import Writer
from mailslot.store.threads import RESERVATIONS

log = logging.getLogger("mailslot")

THREAD = RESERVATIONS
TOPIC = "File reservations"
MAX_PATHS = 100
MAX_REASON = 500


@dataclass(frozen=True, slots=True)
class Held:
    """One pattern held by one agent, from the request at seq."""

    seq: int
    holder: str
    pattern: str
    exclusive: bool
    since: float  # epoch seconds of the request (or of its last renewal)
    ttl_s: float
    pid: int | None
    host: str | None
    reason: str

    def lease(self) -> Lease:
        """Return the lease this reservation lives by."""
        return Lease(self.holder, self.pid, self.host, self.since, self.ttl_s)


@dataclass(slots=True)
class Ledger:
    """Who holds what, folded from the reservations thread up to seq."""

    seq: int = 0
    incarnation: str = ""
    held: list[Held] = field(default_factory=list)
    #: seq of a request that was refused -> the reservations it met.
    refused: dict[int, list[Held]] = field(default_factory=dict)
    last_post: dict[str, float] = field(default_factory=dict)

    def conflicts(self, agent: str, patterns: Sequence[str], exclusive: bool) -> list[Held]:
        """Return the reservations of others that a request of patterns would overlap."""
        return [
            h
            for h in self.held
            if h.holder != agent
            and (exclusive or h.exclusive)
            and any(overlaps(h.pattern, p) for p in patterns)
        ]

    def add(self, m: Message) -> None:
        """Take what message m says into the ledger (messages come in seq order)."""
        at = _epoch(m.created_at)
        self.last_post[m.sender] = max(self.last_post.get(m.sender, 0.0), at)
        if m.type != "status":
            return
        ask, back, end = m.meta.get("reserve"), m.meta.get("release", False), m.meta.get("expire")
        if isinstance(ask, dict):
            self._reserve(m, ask, at)
        elif back is None or isinstance(back, dict):
            paths = back.get("paths") if isinstance(back, dict) else None
            gone = set(paths) if isinstance(paths, list) else None
            named = back.get("holder") if isinstance(back, dict) else None
            holder = named if isinstance(named, str) else m.sender  # freed by a person, or own
            self.held = [
                h
                for h in self.held
                if not (h.holder == holder and (gone is None or h.pattern in gone))
            ]
        elif isinstance(end, dict) and m.sender == SYSTEM:
            self.held = [
                h
                for h in self.held
                if not (h.seq == end.get("reservation") and h.holder == end.get("holder"))
            ]

    def _reserve(self, m: Message, ask: dict[str, Any], at: float) -> None:
        try:
            patterns = [normalize(p) for p in ask["paths"]]
        except (KeyError, TypeError, MailslotError):
            return  # not a request mailslot wrote: nothing is held by it
        exclusive = ask.get("exclusive") is not False
        met = self.conflicts(m.sender, patterns, exclusive)
        if met:
            self.refused[m.seq] = met
            return
        ttl = _positive(ask.get("ttl_s"))
        pid = ask.get("pid")
        host = ask.get("host")
        reason = ask.get("reason")
        renewed = set(patterns)
        self.held = [h for h in self.held if not (h.holder == m.sender and h.pattern in renewed)]
        for p in dict.fromkeys(patterns):
            held = Held(
                seq=m.seq, holder=m.sender, pattern=p, exclusive=exclusive, since=at,
                ttl_s=ttl or 3600.0, pid=pid if type(pid) is int else None,
                host=host if isinstance(host, str) else None,
                reason=reason if isinstance(reason, str) else "",
            )  # fmt: skip
            self.held.append(held)


def _positive(value: object) -> float | None:
    if type(value) in (int, float) and value > 0:  # type: ignore[operator]
        return float(value)  # type: ignore[arg-type]
    return None


@dataclass(frozen=True, slots=True)
class Grant:
    """The answer to a request: granted (with what is now held), or refused with whom it met."""

    granted: bool
    held: list[Held]
    conflicts: list[Held]
    seq: int | None = None  # the request written, if one was
    whole_repo: bool = False


class _Refused(Exception):
    """Raised by a request's guard: it would overlap a live reservation (nothing written)."""


class Reservations:
    """The file reservations of a root in this process; safe to use from several threads."""

    def __init__(
        self,
        files: Files,
        log: ThreadLog,
        agents: Agents,
        writer: Writer,
        create: Any,
        incarnation: Any,
    ) -> None:
        self.files = files
        self.log = log
        self.agents = agents
        self.writer = writer
        self.create = create  # (topic, creator) -> ThreadInfo
        self.incarnation = incarnation  # thread -> token
        self._ledger = Ledger()
        self._lock = threading.RLock()
        self._warned: set[int] = set()

    def ledger(self) -> Ledger:
        """Return the ledger brought up to date with the folder (empty if never used)."""
        with self._lock:
            try:
                tdir = self.files.thread_dir(THREAD)
                incarnation = self.incarnation(THREAD)
            except NoSuchThread:
                self._ledger = Ledger()
                return self._ledger
            ledger = self._ledger
            if ledger.incarnation != incarnation:
                ledger = Ledger(incarnation=incarnation)
            for page in self.log.pages(THREAD, tdir, ledger.seq):
                for m in page.messages:
                    ledger.add(m)
                ledger.seq = page.cursor
            self._ledger = ledger
            return ledger

    def until(self, held: Held) -> float:
        """Return when held runs out without a sign of work from its holder (epoch seconds)."""
        sign = self.ledger().last_post.get(held.holder, 0.0)
        return leases.until(self.agents, held.lease(), sign)

    def gone(
        self, h: Held, ledger: Ledger | None = None, *, stale_after: float = DEFAULT_STALE_AFTER
    ) -> str | None:
        """Return why h's holder has lost it, or None while it holds."""
        sign = (ledger or self.ledger()).last_post.get(h.holder, 0.0)
        return leases.gone(self.agents, h.lease(), sign, stale_after=stale_after)

    def live(self, *, stale_after: float = DEFAULT_STALE_AFTER) -> list[Held]:
        """Return the reservations held now, oldest first (those of holders that are gone are
        left out; nothing is written)."""
        ledger = self.ledger()
        return [h for h in ledger.held if self.gone(h, ledger, stale_after=stale_after) is None]

    # ------------------------------------------------------------------ events

    def reserve(
        self,
        paths: list[str] | tuple[str, ...] | str,
        *,
        agent: str,
        exclusive: bool = True,
        ttl_s: float | None = None,
        reason: str | None = None,
        pid: int | None = None,
        stale_after: float = DEFAULT_STALE_AFTER,
    ) -> Grant:
        """Reserve repository-relative paths or globs for agent: all of them, or none.

        Granted unless another agent holds an overlapping exclusive reservation (or, for an
        exclusive request, any overlapping one); otherwise refused with those reservations.
        Decided by the order of the `file-reservations` thread (under its lock on one
        machine), so two agents can never both hold overlapping paths. pid is the holder's
        process: it holds while that process lives and works (a sign of work within ttl_s);
        without one (a person, a script) for ttl_s. Reserving a pattern again renews it.
        Raise InvalidName for a path that leaves the repository, InvalidMessage for bad input.
        """
        patterns = self._patterns(paths)
        ttl = self._ttl(ttl_s, reason)
        try:
            self.files.thread_dir(THREAD)
        except NoSuchThread:
            self.create(TOPIC, creator=agent)
        met = self._conflicts(agent, patterns, exclusive, stale_after)
        if met:
            return Grant(False, [], met)

        def guard() -> None:
            if self.ledger().conflicts(agent, patterns, exclusive):
                raise _Refused

        ask: dict[str, Any] = {"paths": patterns, "exclusive": exclusive, "ttl_s": ttl}
        if pid is not None:
            ask |= {"pid": pid, "host": HOST}
        if reason:
            ask["reason"] = reason
        kind = "exclusive" if exclusive else "shared"
        text = f"reserves {', '.join(patterns)} ({kind}, {ttl:.0f} s)" + (
            f": {reason}" if reason else ""
        )
        try:
            message = self.writer.append(
                THREAD, self.files.thread_dir(THREAD), sender=agent, to=(), type_="status",
                priority="normal", reply_to=None, content=text, meta={"reserve": ask}, key=None,
                guard=guard,
            )  # fmt: skip
        except _Refused:
            return Grant(False, [], self.ledger().conflicts(agent, patterns, exclusive))
        ledger = folded_through(self.ledger, message.seq, self.files.settings.grace_s)
        if message.seq in ledger.refused:  # another machine's request landed first
            return Grant(False, [], ledger.refused[message.seq], message.seq)
        mine = [h for h in ledger.held if h.seq == message.seq]
        whole = any(covers_whole_repo(p) for p in patterns)
        return Grant(True, mine, [], message.seq, whole)

    def _ttl(self, ttl_s: float | None, reason: str | None) -> float:
        """Return a request's TTL in seconds; raise InvalidMessage for a bad ttl_s or reason."""
        if ttl_s is not None and not (type(ttl_s) in (int, float) and 1 <= ttl_s <= 7 * 86400):
            raise InvalidMessage(
                f"ttl_s must be a number of seconds from 1 to 604800, not {ttl_s!r}"
            )
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
            raise InvalidMessage(f"reason must be text of at most {MAX_REASON} characters")
        return float(ttl_s or self.files.settings.reservation_ttl_s)

    def _conflicts(
        self, agent: str, patterns: list[str], exclusive: bool, stale_after: float
    ) -> list[Held]:
        """Return the live reservations a request meets, once those whose holders died or went
        silent have let go (so that they never refuse anyone)."""
        ledger = self.ledger()
        for h in ledger.conflicts(agent, patterns, exclusive):
            why = self.gone(h, ledger, stale_after=stale_after)
            if why is not None:
                self._expire(h, why, agent)
        return self.ledger().conflicts(agent, patterns, exclusive)

    def _patterns(self, paths: object) -> list[str]:
        if isinstance(paths, str):
            paths = [paths]
        if not isinstance(paths, list | tuple) or not paths:
            raise InvalidMessage("paths must be a non-empty list of repository-relative paths")
        if len(paths) > MAX_PATHS:
            raise InvalidMessage(f"at most {MAX_PATHS} paths at once; reserve a folder instead")
        return list(dict.fromkeys(normalize(p) for p in paths))

    def release(
        self,
        paths: list[str] | tuple[str, ...] | str | None = None,
        *,
        agent: str,
        holder: str | None = None,
    ) -> tuple[list[Held], list[str]]:
        """Give back agent's reservations of paths (all of them if None); with holder, free
        holder's reservations as agent (recorded as agent's, naming holder).

        Return (what was released, the paths asked for that the holder did not hold).
        """
        patterns = None if paths is None else self._patterns(paths)
        whose = agent if holder is None else holder
        mine = [h for h in self.ledger().held if h.holder == whose]
        released = mine if patterns is None else [h for h in mine if h.pattern in patterns]
        not_held = (
            [] if patterns is None else [p for p in patterns if p not in {h.pattern for h in mine}]
        )
        if not released:
            return [], not_held
        named = None if patterns is None else sorted({h.pattern for h in released})
        what = ", ".join(named) if named else "all its reservations"
        back: dict[str, Any] | None = None if named is None else {"paths": named}
        to: tuple[str, ...] = ()
        text = f"released {what}"
        if whose != agent:  # a person frees someone's: said as theirs, never in the holder's name
            back, to = {"paths": named, "holder": whose}, (whose,)
            text = (
                f"freed {whose}'s reservation of {what}"
                if named
                else f"freed all of {whose}'s reservations"
            )
        self.writer.append(
            THREAD, self.files.thread_dir(THREAD), sender=agent, to=to, type_="status",
            priority="normal", reply_to=None, content=text, meta={"release": back}, key=None,
        )  # fmt: skip
        return released, not_held

    def _expire(self, h: Held, why: str, noticed_by: str | None) -> Message | None:
        def guard() -> None:
            if not any(x.seq == h.seq and x.holder == h.holder for x in self.ledger().held):
                raise _Refused  # someone else expired it, or its holder released it meanwhile

        end = {"reservation": h.seq, "holder": h.holder, "reason": why}
        if noticed_by:
            end["noticed_by"] = noticed_by
        patterns = [x.pattern for x in self.ledger().held if x.seq == h.seq]
        text = f"the reservation of {', '.join(patterns)} by {h.holder} ended: {why}"
        try:
            return self.writer.append(
                THREAD, self.files.thread_dir(THREAD), sender=SYSTEM, to=(), type_="status",
                priority="normal", reply_to=h.seq, content=text, meta={"expire": end}, key=None,
                guard=guard,
            )  # fmt: skip
        except _Refused:
            return None
        except MailslotError as e:
            if h.seq not in self._warned:
                self._warned.add(h.seq)
                log.warning("could not record that reservation %d of %s ended: %s",
                            h.seq, h.holder, e)  # fmt: skip
            return None

    def settle(
        self, *, noticed_by: str | None = None, stale_after: float = DEFAULT_STALE_AFTER
    ) -> list[Message]:
        """Record the end of each reservation whose holder died or went silent; return the
        events written."""
        out = []
        ledger = self.ledger()
        seen: set[int] = set()
        for h in list(ledger.held):
            if h.seq in seen:
                continue
            why = self.gone(h, ledger, stale_after=stale_after)
            if why is not None:
                seen.add(h.seq)
                with contextlib.suppress(MailslotError):
                    m = self._expire(h, why, noticed_by)
                    if m is not None:
                        out.append(m)
        return out


def held_view(h: Held, until: float | None = None) -> dict[str, Any]:
    """Return a reservation as the model and scripts see it."""
    out: dict[str, Any] = {"path": h.pattern, "holder": h.holder,
                           "exclusive": h.exclusive, "since": iso(h.since)}  # fmt: skip
    if until is not None:
        out["until"] = iso(until)
    if h.reason:
        out["reason"] = h.reason
    return out


__all__ = ["THREAD", "Grant", "Held", "Ledger", "Reservations", "TaskError", "held_view"]
