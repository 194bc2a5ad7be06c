"""Presence: which agent names are held by live processes, and what they are doing.

A live process holds its name with an exclusive ``flock`` on ``.state/presence/<name>.lock``
for as long as it runs; the kernel drops the lock when the process dies, however it dies, so
a name is never stuck on this machine. Its presence file ``.state/presence/<name>.json`` says
what it is doing and is refreshed by a heartbeat; a file not refreshed within ``stale_after``
seconds reads as offline, which is what covers other machines, where locks may not reach.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any

import portalocker

PRESENCE_STATUSES = ("online", "waiting", "offline")
DEFAULT_STALE_AFTER = 30.0
IDLE_AFTER = 300.0  # online but no tool call for this long reads as "idle"


@dataclass(frozen=True, slots=True)
class Presence:
    """What an agent's presence file says, with the status as seen now.

    status is "online" (its process lives), "waiting" (blocked in a wait: reachable now),
    "idle" (alive, but no tool call for IDLE_AFTER seconds) or "offline".
    """

    agent: str
    status: str
    client: str | None = None
    pid: int | None = None
    host: str | None = None
    started: str | None = None
    last_seen: str | None = None
    waiting_on: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the presence as a JSON-able dict."""
        return {
            "agent": self.agent,
            "status": self.status,
            "client": self.client,
            "pid": self.pid,
            "host": self.host,
            "started": self.started,
            "last_seen": self.last_seen,
            "waiting_on": self.waiting_on,
        }


def effective(doc: dict[str, Any], agent: str, host: str, stale_after: float) -> Presence:
    """Return the presence a file's document describes, offline if its process is gone."""
    status = str(doc.get("status")) if doc.get("status") in PRESENCE_STATUSES else "offline"
    pid = doc.get("pid") if type(doc.get("pid")) is int else None
    seen = doc.get("last_seen_epoch")
    if not isinstance(seen, int | float) or time.time() - seen > stale_after:
        status = "offline"
    elif doc.get("host") == host and pid is not None and not pid_alive(pid):
        status = "offline"  # killed on this machine: no need to wait for the heartbeat
    else:
        active = doc.get("last_active_epoch")
        if (
            status == "online"
            and isinstance(active, int | float)
            and time.time() - active > IDLE_AFTER
        ):
            status = "idle"
    return Presence(
        agent=agent,
        status=status,
        client=doc.get("client") if isinstance(doc.get("client"), str) else None,
        pid=pid,
        host=doc.get("host") if isinstance(doc.get("host"), str) else None,
        started=doc.get("started") if isinstance(doc.get("started"), str) else None,
        last_seen=doc.get("last_seen") if isinstance(doc.get("last_seen"), str) else None,
        waiting_on=doc.get("waiting_on") if status == "waiting" else None,
    )


def pid_alive(pid: int) -> bool:
    """Return True if a process with pid exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class NameHold:
    """A name held by this process: the open, flocked lock file. Release it or exit."""

    def __init__(self, name: str, fd: int) -> None:
        self.name = name
        self._fd: int | None = fd

    @classmethod
    def try_take(cls, name: str, lock_path: os.PathLike[str] | str) -> NameHold | None:
        """Return a hold on name, or None if another live process holds it."""
        # Lock files are never deleted: deleting one while another process waits on it would
        # let two processes hold the same name.
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            portalocker.lock(
                fd, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING
            )
        except portalocker.AlreadyLocked:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return cls(name, fd)

    @property
    def held(self) -> bool:
        """Return True until released."""
        return self._fd is not None

    def release(self) -> None:
        """Let the name go; safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                portalocker.unlock(fd)
            os.close(fd)
