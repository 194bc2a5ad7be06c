"""Presence: which agent names are held by live processes, and what they are doing.

A live process holds its name with an exclusive ``flock`` on ``.state/presence/<name>.lock``
for as long as it runs; the kernel drops the lock when the process dies, however it dies, so
a name is never stuck on this machine. Because ``.state/`` may be deleted under running
processes (``git clean -fdX`` does), on Linux the hold is also an abstract unix socket named
after the root's folder identity and the agent name: it lives outside the folder, the kernel
lets only one process bind it, and it goes away with the process. Its presence file
``.state/presence/<name>.json`` says what it is doing and is refreshed by a heartbeat; a file
not refreshed within ``stale_after`` seconds reads as offline, which is what covers other
machines, where locks may not reach.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

from mailslot.store import flock as _flock
from mailslot.store import modes

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
    #: When it began waiting on waiting_on, its waits there following each other (epoch s).
    waiting_since: float | None = None

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
    since = doc.get("waiting_since_epoch")
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
        waiting_since=since if status == "waiting" and isinstance(since, int | float) else None,
    )


def pid_alive(pid: int) -> bool:
    """Return True if a process with pid runs on this machine (a zombie does not: it died,
    and only waits for its parent to collect its exit status)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read(512)
    except OSError:
        return True  # no /proc here (macOS), or it went meanwhile: kill() said it was there
    # "pid (comm) S ...": the state follows the last ")" (comm may hold parentheses).
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] not in (b"Z", b"X")


class NameHold:
    """A name held by this process: the open, flocked lock file. Release it or exit."""

    def __init__(self, name: str, fd: int, sock: int | None = None) -> None:
        self.name = name
        self._fd: int | None = fd
        self._sock = sock  # a bound socket's descriptor, held like the lock's for the lifetime

    @classmethod
    def try_take(
        cls,
        name: str,
        lock_path: os.PathLike[str] | str,
        root_id: str = "",
        *,
        shared: bool = False,
    ) -> NameHold | None:
        """Return a hold on name, or None if another live process holds it.

        root_id identifies the mailbox folder on this machine (device and inode); with it, the
        hold also binds an abstract socket on Linux, which deleting .state/ cannot undo.
        shared: the mailbox is shared by a group, so the lock file is made group-writable.
        """
        free, sock = _bind_name(root_id, name) if root_id else (True, None)
        if not free:
            return None
        # Lock files are never deleted: deleting one while another process waits on it would
        # let two processes hold the same name.
        try:
            flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            fd = os.open(lock_path, flags, modes.FILE_MODE)
            if shared:
                modes.share_fd(fd, lock_path)
        except BaseException:
            if sock is not None:
                os.close(sock)
            raise
        try:
            free = _flock.try_lock(fd)
        except BaseException:
            os.close(fd)
            if sock is not None:
                os.close(sock)
            raise
        if not free:
            os.close(fd)
            if sock is not None:
                os.close(sock)
            return None
        return cls(name, fd, sock)

    @property
    def held(self) -> bool:
        """Return True until released."""
        return self._fd is not None

    def release(self) -> None:
        """Let the name go; safe to call twice."""
        fd, self._fd = self._fd, None
        sock, self._sock = self._sock, None
        if sock is not None:
            os.close(sock)
        if fd is not None:
            with contextlib.suppress(OSError):
                _flock.unlock(fd)
            os.close(fd)


def _bind_name(root_id: str, name: str) -> tuple[bool, int | None]:
    """Bind the abstract socket that says "this process holds name in this root" (Linux).

    Return (False, None) if another process holds it, else (True, the bound socket), or
    (True, None) where abstract sockets do not exist (the lock file alone decides there). The
    socket is returned as a bare descriptor, held and closed like the lock file's.
    """
    if not sys.platform.startswith("linux"):
        return True, None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(f"\0mailslot/{root_id}/{name}"[:107])
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            return False, None
        return True, None  # not allowed here (a sandbox): fall back to the lock file
    return True, sock.detach()
