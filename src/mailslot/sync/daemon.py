"""``mailslot sync`` running: rounds when posts happen here, looks at the remote on a clock.

- A watcher on ``threads/`` and ``agents/`` names the threads that changed here; a change
  after a quiet spell starts a round at once, and one within ``push_delay_s`` of the last
  round waits that long, gathering a burst into one commit. On a
  network folder, where file events are blind, every round looks at the folders' mtimes.
- The remote is looked at every ``look_s`` while anything happened in the last minute, then
  twice as seldom each quiet look, up to ``max_look_s``; a change either way brings it back.
  After an error (the remote down, a push refused) it tries again on the same growing clock.
- One sync runs per machine and root: ``.state/sync/daemon.lock`` decides. Servers started with
  sync hold ``.state/sync/users.lock`` shared for as long as they run; a sync they started
  (``served``) ends after the round in which it finds none left.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from mailslot.store.watch import filesystem_type, is_network_fs
from mailslot.sync.engine import Rejected, Sync
from mailslot.sync.git import GitError

log = logging.getLogger("mailslot.sync")

#: Seconds without any change after which looks at the remote slow down.
QUIET_AFTER_S = 60.0
#: Every folder's mtime is compared at least this often, even with a watcher.
RESCAN_S = 60.0


def try_lock(path: Path, mode: int = fcntl.LOCK_EX) -> int | None:
    """Return an fd holding a non-blocking flock on path, or None if another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def servers_left(state: Path) -> bool:
    """Return True if a server that asked for sync still runs on this root."""
    fd = try_lock(state / "users.lock")
    if fd is None:
        return True
    os.close(fd)
    return False


class _Changes:
    """The threads the watcher saw change, and an event that wakes the loop."""

    def __init__(self) -> None:
        self.dirty: set[str] = set()
        self.cards = False
        self.wake = threading.Event()
        self.lock = threading.Lock()

    def saw(self, path: str, root: str) -> None:
        rel = os.path.relpath(path, root).split(os.sep)
        with self.lock:
            if rel[0] == "threads" and len(rel) >= 2:
                self.dirty.add(rel[1])
            elif rel[0] == "agents":
                self.cards = True
            else:
                return
        self.wake.set()

    def take(self) -> set[str]:
        with self.lock:
            out, self.dirty, self.cards = self.dirty, set(), False
            self.wake.clear()
            return out


class Daemon:
    """The loop of a running sync."""

    def __init__(self, sync: Sync, *, served: bool = False) -> None:
        self.sync = sync
        self.config = sync.config
        self.served = served
        self.changes = _Changes()
        self.stop = threading.Event()
        self._observer: Any = None

    def _watch(self) -> bool:
        """Start the watcher; return False where file events are blind (network folders)."""
        root = self.sync.root
        if is_network_fs(filesystem_type(root)):
            return False
        try:
            from watchdog.events import FileSystemEvent, FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            return False
        changes, top = self.changes, str(root)

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return  # a reader (or this sync itself) read a file: nothing changed
                changes.saw(str(event.src_path), top)
                if getattr(event, "dest_path", ""):
                    changes.saw(str(event.dest_path), top)

        observer = Observer()
        try:
            for sub in ("threads", "agents"):
                (root / sub).mkdir(exist_ok=True)
                observer.schedule(Handler(), str(root / sub), recursive=True)
            observer.start()
        except OSError as e:
            log.warning("no file events (%s): sync compares folder times every round", e)
            return False
        self._observer = observer
        return True

    def run(self) -> int:
        """Run rounds until stopped (or, served, until no server is left); return 0."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):
                signal.signal(sig, self._stopping)
        watching = self._watch()
        self.sync.status.set(pid=os.getpid(), running=True)
        interval, last_change, last_scan, errors = self.config.look_s, time.time(), 0.0, 0
        ended = 0.0  # when the last round ended
        try:
            while not self.stop.is_set():
                woke = self.changes.wake.wait(interval)
                if self.stop.is_set():
                    break
                if woke and time.monotonic() - ended < self.config.push_delay_s:
                    # A post right after a round: gather the burst it may be part of. A post
                    # after a quiet spell goes at once.
                    self.stop.wait(self.config.push_delay_s)
                dirty = self.changes.take()
                now = time.time()
                full = not watching or now - last_scan > RESCAN_S
                try:
                    moved = self.sync.round(None if full else dirty)
                    errors = 0
                except (GitError, Rejected) as e:
                    log.warning("sync: %s", e)
                    errors += 1
                    interval = min(self.config.max_look_s, self.config.look_s * 2**errors)
                    last_scan = 0.0  # what changed here was not pushed: look at all next time
                    moved = False
                else:
                    if full:
                        last_scan = now
                    if moved or woke:
                        last_change, interval = now, self.config.look_s
                    elif now - last_change > QUIET_AFTER_S:
                        interval = min(self.config.max_look_s, interval * 2)
                ended = time.monotonic()
                if self.served and not servers_left(self.sync.dir):
                    break
        finally:
            if self._observer is not None:
                self._observer.stop()
            self.sync.status.set(running=False)
        return 0

    def _stopping(self, signum: int, frame: FrameType | None) -> None:
        self.stop.set()
        self.changes.wake.set()
