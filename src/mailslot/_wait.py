"""Waking waiters: one watchdog observer per root per process, and name-polling for network mounts.

Watch events are hints, files are facts (design.md §4): the observer thread only signals
subscribers, thread-safely, and every waiter re-reads the folder from its own cursor. A
lost, late or coalesced event costs latency, never a message, because waiters also re-check on
a timer: every ``poll_interval`` where native events cannot see other machines' writes, and
every ``SAFETY_RECHECK_S`` otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from mailslot._format import Damage, Message

log = logging.getLogger("mailslot")

WAIT_MODES = ("auto", "native", "poll")
SAFETY_RECHECK_S = 5.0
DISCOVERY_INTERVAL_S = 1.0
# Filesystems whose writes from other machines never reach this machine's inotify/FSEvents.
_NETWORK_FS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "afs", "lustre",
        "davfs", "ncpfs", "coda", "gpfs", "beegfs", "virtiofs", "vboxsf", "prl_fs", "orangefs",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Arrivals:
    """What a wait returned: new messages (per thread in seq order) and where to continue.

    ``cursor`` maps each thread to the last seq consumed; pass it back as ``after=`` so the next
    wait starts where this one ended. ``timed_out`` is True when nothing arrived in time, which
    is a normal outcome, not an error.
    """

    messages: list[Message]
    cursor: dict[str, int]
    timed_out: bool
    skipped: list[Damage] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """Return the arrivals as a JSON-able dict."""
        return {
            "messages": [m.to_dict() for m in self.messages],
            "cursor": dict(self.cursor),
            "timed_out": self.timed_out,
            "skipped": [{"path": d.path, "reason": d.reason} for d in self.skipped],
        }


def filesystem_type(path: Path) -> str | None:
    """Return the type of the filesystem holding path, from /proc/self/mountinfo (Linux)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return None
    target = str(path.resolve())
    best, best_type = "", None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mount_point = fields[4].replace("\\040", " ")
        within = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if within and len(mount_point) >= len(best):
            best, best_type = mount_point, right.split()[0]
    return best_type


def is_network_fs(fstype: str | None) -> bool:
    """Return True if native file events cannot see other machines' writes on fstype."""
    if fstype is None:
        return False
    return fstype in _NETWORK_FS or fstype.startswith("fuse.") or fstype == "fuse"


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:  # runs on the observer thread
        self._watcher.notify()


class Watcher:
    """One recursive watch on a root's threads/ folder, shared by every waiter of the process.

    Subscribers are plain callables run on the observer thread; they must only signal
    (``threading.Event.set`` or ``loop.call_soon_threadsafe``), never do the work.
    """

    _registry: dict[Path, Watcher] = {}  # noqa: RUF012 - one shared registry per process
    _registry_lock = threading.Lock()

    def __init__(self, threads_dir: Path) -> None:
        self.threads_dir = threads_dir
        self._users = 0
        self._subscribers: dict[int, Callable[[], None]] = {}
        self._next_id = 0
        self._lock = threading.Lock()
        self._observer = Observer()
        self._observer.schedule(
            _Handler(self),
            str(threads_dir),
            recursive=True,
            event_filter=[FileCreatedEvent, FileMovedEvent, DirCreatedEvent, DirMovedEvent],
        )
        self._observer.start()

    @classmethod
    def acquire(cls, threads_dir: Path) -> Watcher:
        """Return the process's watcher for threads_dir, starting it if needed; raise OSError."""
        with cls._registry_lock:
            watcher = cls._registry.get(threads_dir)
            if watcher is None:
                watcher = cls(threads_dir)
                cls._registry[threads_dir] = watcher
            watcher._users += 1
            return watcher

    def release(self) -> None:
        """Drop one user; the last one stops and joins the observer thread."""
        with self._registry_lock:
            self._users -= 1
            if self._users > 0:
                return
            del self._registry[self.threads_dir]
        self._observer.stop()
        if self._observer.is_alive():
            self._observer.join(timeout=5)

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call callback on every relevant event until the returned function is called."""
        with self._lock:
            key = self._next_id
            self._next_id += 1
            self._subscribers[key] = callback

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers.pop(key, None)

        return unsubscribe

    def notify(self) -> None:
        """Signal every subscriber (called on the observer thread)."""
        with self._lock:
            callbacks = list(self._subscribers.values())
        for callback in callbacks:
            # RuntimeError: the waiter's event loop closed while we were signalling.
            with contextlib.suppress(RuntimeError):
                callback()
