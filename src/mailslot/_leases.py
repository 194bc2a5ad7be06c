"""Leases: how long something taken by an agent's process stays taken.

A task claim and a file reservation are both held by one process of an agent (its pid and
host are recorded with them) or by a person or a script (no process). A hold ends when its
process dies (seen at once on its own machine, from the pid; after the heartbeat timeout
elsewhere, from its presence file) or exits, or when it shows no sign of work for its lease:
a tool call (the presence file's ``last_active_epoch``) or a message of its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from mailslot._agents import Agents
from mailslot._files import HOST
from mailslot._presence import DEFAULT_STALE_AFTER, pid_alive


@dataclass(frozen=True, slots=True)
class Lease:
    """What is known of one hold: whose, which process, since when, for how long idle."""

    holder: str
    pid: int | None  # None: a person or a script, held for the lease alone
    host: str | None
    since: float  # epoch seconds it was taken or last renewed
    lease_s: float


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
