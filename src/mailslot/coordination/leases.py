"""Leases: how long something taken by an agent's process stays taken.

A task claim and a file reservation are both held by one process of an agent (its pid and
host are recorded with them) or by a person or a script (no process). A hold ends when its
process dies (seen at once on its own machine, from the pid; after the heartbeat timeout
elsewhere, from its presence file) or exits, or when it shows no sign of work for its lease:
a tool call (the presence file's ``last_active_epoch``), a ``msg_wait`` for as long as it is
blocked (an agent waiting for a reply to its work is at work), or a message of its own.

Other processes, on this machine or another, learn of a holder's tool calls only from its
presence file. The heartbeat writes it every heartbeat timeout / 3 (10 s), too seldom for a
lease of a few seconds, and a write per call would cost a file replace per call. So a process
remembers the holds it took (``Activity``), and a tool call writes the presence file only when
the activity recorded there is older than a quarter of the shortest of them (and never more
often than every half second): holding nothing, or only holds long enough for the heartbeat,
costs no write beyond the heartbeat's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from mailslot.store.agents import Agents
from mailslot.store.files import HOST
from mailslot.store.presence import DEFAULT_STALE_AFTER, pid_alive


@dataclass(frozen=True, slots=True)
class Lease:
    """What is known of one hold: whose, which process, since when, for how long idle."""

    holder: str
    pid: int | None  # None: a person or a script, held for the lease alone
    host: str | None
    since: float  # epoch seconds it was taken or last renewed
    lease_s: float


#: A tool call writes its activity when the presence file's is older than this share of the
#: shortest hold the process has (a sign of work then reaches others with 3/4 of it to spare),
ACTIVITY_SHARE = 0.25
#: and never more often than this (seconds).
ACTIVITY_MIN_EVERY_S = 0.5


#: What a process holds: ("task", thread, seq) or ("files", pattern, 0).
HoldKey = tuple[str, str, int]


class Activity:
    """The holds of this process (task claims, reservations) and when a tool call must write
    its activity into the presence file so that they hold; see the module docstring."""

    def __init__(self) -> None:
        self.holds: dict[HoldKey, float] = {}  # what is held -> its lease in seconds
        self.written = 0.0  # the activity (epoch seconds) the presence file has from us

    def hold(self, key: HoldKey, lease_s: float) -> None:
        """Remember that this process holds key for lease_s seconds without a sign of work."""
        self.holds[key] = lease_s

    def drop(self, key: HoldKey) -> None:
        """Forget key (given back, closed, or lost); safe if it was not held."""
        self.holds.pop(key, None)

    def every(self) -> float | None:
        """Return how often activity must reach the presence file (None: holding nothing)."""
        if not self.holds:
            return None
        return max(ACTIVITY_MIN_EVERY_S, min(self.holds.values()) * ACTIVITY_SHARE)

    def due(self, active: float) -> bool:
        """Return True if activity at active (epoch seconds) must be written now."""
        every = self.every()
        return every is not None and active - self.written >= every


def until(agents: Agents, lease: Lease, last_sign: float = 0.0) -> float:
    """Return when lease runs out without a new sign of work (epoch seconds)."""
    active = max(lease.since, last_sign)
    doc = agents.presence_doc(lease.holder) if lease.pid is not None else None
    if doc is not None and doc.get("pid") == lease.pid and doc.get("host") == lease.host:
        seen = doc.get("last_active_epoch")
        if isinstance(seen, int | float):
            active = max(active, float(seen))
    return active + lease.lease_s


def gone(
    agents: Agents,
    lease: Lease,
    last_sign: float = 0.0,
    *,
    stale_after: float = DEFAULT_STALE_AFTER,
) -> str | None:
    """Return why lease's holder has lost the hold (its process ended, exited, sent no
    heartbeat, or showed no sign of work for the lease), or None while it holds."""
    now = time.time()
    if lease.pid is not None:
        doc = agents.presence_doc(lease.holder)
        same = doc is not None and doc.get("pid") == lease.pid and doc.get("host") == lease.host
        where = f"pid {lease.pid} on {lease.host}"
        if lease.host == HOST:
            if not pid_alive(lease.pid):
                return f"its process ({where}) ended"
            seen = doc.get("last_seen_epoch") if doc is not None else None
            fresh = isinstance(seen, int | float) and now - seen <= stale_after
            if doc is not None and not same and fresh and doc.get("status") != "offline":
                return f"its process ({where}) ended; the name is used by another one"
            if same and not fresh:  # its pid lives on in another process: it was reused
                return f"no heartbeat from its process ({where}) for {stale_after:.0f} s"
        elif doc is None or not same:
            if now - lease.since > stale_after:
                return f"its process ({where}) is gone: no presence for it"
        else:
            seen = doc.get("last_seen_epoch")
            if not isinstance(seen, int | float) or now - seen > stale_after:
                return f"no heartbeat from its process ({where}) for {stale_after:.0f} s"
        if same and doc is not None and doc.get("status") == "offline":
            return f"its process ({where}) exited"
    if now > until(agents, lease, last_sign):
        return f"it showed no sign of work for {lease.lease_s:.0f} s (its lease)"
    return None
