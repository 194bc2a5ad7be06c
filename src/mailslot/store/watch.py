"""Watching a root for waiters: one watchdog observer per root per process, and which
filesystems native events cannot see (network mounts, where waiters poll by name instead).

Watch events are hints, files are facts (design.md §4): the observer thread only signals
subscribers, thread-safely, and every waiter re-reads the folder from its own cursor (see
_wait). A lost, late or coalesced event costs latency, never a message.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # watchdog is loaded by the first wait, not by every start of a process
    from watchdog.events import FileSystemEvent
    from watchdog.observers.api import BaseObserver, ObservedWatch

log = logging.getLogger("mailslot")

# Filesystems whose writes from other machines never reach this machine's inotify/FSEvents.
_NETWORK_FS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "afs", "lustre",
        "davfs", "ncpfs", "coda", "gpfs", "beegfs", "virtiofs", "vboxsf", "prl_fs", "orangefs",
    }
)  # fmt: skip


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


# How often the keeper stats threads/ to notice that it was removed or replaced (git checkout,
# rm -rf and `mailslot init`): one stat per interval, never a listing.
KEEP_INTERVAL_S = 0.5
# A thread folder still without a watch this long after it was first seen so is tried with a
# watch of our own: watchdog adds a new folder's watch a moment (a busy process: longer) after
# the folder appears, and only the kernel's answer to a real attempt tells a limit from a lag.
_CONFIRM_S = 0.2


# What wakes waiters: a name appearing (create, link, rename), and a file that a foreign writer
# (git, rsync, an editor) created first and fills later being written and closed. Deleting a
# folder is watched only to learn that threads/ itself is gone.
def _events() -> list[type[FileSystemEvent]]:
    from watchdog import events as e

    return [
        e.FileCreatedEvent,
        e.FileMovedEvent,
        e.FileModifiedEvent,
        e.FileClosedEvent,
        e.DirCreatedEvent,
        e.DirMovedEvent,
        e.DirDeletedEvent,
    ]


# The limit behind each errno inotify gives when one is reached, and a value that is enough.
_LIMITS = {
    errno.ENOSPC: ("watch", "fs.inotify.max_user_watches", 524288),
    errno.EMFILE: ("instance", "fs.inotify.max_user_instances", 1024),
}


def _why(error: OSError) -> str:
    """Return what the kernel refused, naming the limit that was reached."""
    if error.errno in _LIMITS:
        kind, name, _ = _LIMITS[error.errno]
        return f"the inotify {kind} limit is reached ({name})"
    return f"inotify failed: {error}"


def _fix(error: OSError) -> str:
    """Return what a person does about error: raise the limit it names (or both)."""
    limits = [_LIMITS[error.errno]] if error.errno in _LIMITS else list(_LIMITS.values())
    settings = " ".join(f"{name}={value}" for _, name, value in limits)
    return (
        f"raise the limit, e.g. `sudo sysctl -w {settings}` (add it to /etc/sysctl.d/ to keep "
        "it), then restart mailslot"
    )


def _kernel_watches() -> set[int] | None:
    """Return the inode of every inotify watch this process holds, from /proc/self/fdinfo.

    None where the kernel does not say (no /proc, not Linux, or no watch listed at all).
    Inodes alone, not devices: the kernel lists the superblock's device, which differs from
    stat's st_dev on btrfs subvolumes; a collision only makes a missing watch go unnoticed.
    """
    try:
        fds = os.listdir("/proc/self/fdinfo")
    except OSError:
        return None
    inodes = set()
    for fd in fds:
        try:
            with open(f"/proc/self/fdinfo/{fd}", encoding="ascii", errors="replace") as f:
                text = f.read()
        except OSError:
            continue  # closed meanwhile
        for line in text.splitlines():
            if line.startswith("inotify wd:"):
                for item in line.split():
                    if item.startswith("ino:"):
                        with contextlib.suppress(ValueError):
                            inodes.add(int(item[4:], 16))
    return inodes or None


def _try_watch(path: str) -> int:
    """Return 0 if a fresh inotify instance may watch path now, else the kernel's errno."""
    # Imported here: the module exists only where inotify does (Linux), and so do we here.
    import ctypes

    from watchdog.observers.inotify_c import InotifyConstants, inotify_add_watch, inotify_init

    fd = inotify_init()
    if fd < 0:
        return ctypes.get_errno()
    try:
        mask = InotifyConstants.IN_CREATE | InotifyConstants.IN_DONT_FOLLOW
        return 0 if inotify_add_watch(fd, os.fsencode(path), mask) >= 0 else ctypes.get_errno()
    finally:
        os.close(fd)  # and with it the watch


def _handler(watcher: Watcher) -> Any:
    """Return the watchdog event handler that tells watcher of each event."""
    from watchdog.events import FileSystemEventHandler

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:  # on the observer thread
            if event.is_directory:
                watcher.folder_event(event)
            for path in {event.src_path, getattr(event, "dest_path", "")} - {""}:
                watcher.notify(watcher.thread_of(os.fsdecode(path)))

    return Handler()


class Watcher:
    """One recursive watch on a root's threads/ folder, shared by every waiter of the process.

    Subscribers are plain callables run on the observer or keeper thread, given the id of the
    thread an event came from (None: any thread may have changed); they must only note it and
    signal (``threading.Event.set`` or ``loop.call_soon_threadsafe``), never do the work.

    The watch follows the folder, not the inode it first saw: a keeper thread stats threads/
    every ``KEEP_INTERVAL_S`` and, when git or ``mailslot init`` removed or replaced it, moves
    the watch to the new folder (waiting while there is none) and signals every subscriber so
    waiters re-check. It also asks the kernel whether every thread folder really has a watch:
    where inotify limits refused one (watchdog carries on without it), ``failure`` says why, one
    warning is logged, and waiters poll as well (hybrid mode).
    """

    _registry: dict[Path, Watcher] = {}  # noqa: RUF012 - one shared registry per process
    _registry_lock = threading.Lock()

    def __init__(self, threads_dir: Path) -> None:
        self.threads_dir = threads_dir
        #: Why file events here cannot be trusted (inotify limits), or None while they can.
        self.failure: str | None = None
        self._users = 0
        self._subscribers: dict[int, Callable[[str | None], None]] = {}
        self._next_id = 0
        self._lock = threading.Lock()
        self._handler = _handler(self)
        self._watch: ObservedWatch | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the watched folder
        self._lost = False  # threads/ itself was deleted: watch it anew even if the inode is reused
        self._folders_changed = False  # a thread folder came or went: check the watches
        self._suspects: dict[int, float] = {}  # inode -> when first seen without a watch
        self._cleared: set[int] = set()  # folders we could watch ourselves: not a limit
        self._stopping = False
        self._look = threading.Event()  # wakes the keeper early
        self._keeper: threading.Thread | None = None
        from watchdog.observers import Observer

        try:
            self._observer: BaseObserver | None = Observer()
        except OSError as e:  # inotify_init: EMFILE at max_user_instances
            self._observer = None
            self._fail("no inotify instance could be made", e)
            return
        self._observer.start()  # with no watch yet, so that schedule() raises here, not there
        try:
            self._follow()
            self._verify()
            if self._suspects:  # maybe a folder made a moment ago: look again before judging
                time.sleep(_CONFIRM_S)
                self._verify()
            self._keeper = threading.Thread(
                target=self._keep, name=f"mailslot-keeper:{threads_dir}", daemon=True
            )
            self._keeper.start()
        except BaseException:
            self._observer.stop()
            self._observer.join(timeout=5)
            raise

    @classmethod
    def acquire(cls, threads_dir: Path) -> Watcher:
        """Return the process's watcher for threads_dir, starting it if needed.

        Inotify limits do not raise: the watcher then reports them in ``failure``.
        """
        with cls._registry_lock:
            watcher = cls._registry.get(threads_dir)
            if watcher is None:
                watcher = cls(threads_dir)
                cls._registry[threads_dir] = watcher
            watcher._users += 1
            return watcher

    def release(self) -> None:
        """Drop one user; the last one stops and joins the keeper and observer threads."""
        with self._registry_lock:
            self._users -= 1
            if self._users > 0:
                return
            del self._registry[self.threads_dir]
        self._stopping = True
        self._look.set()
        if self._keeper is not None:
            self._keeper.join(timeout=5)
        if self._observer is not None:
            self._observer.stop()
            if self._observer.is_alive():
                self._observer.join(timeout=5)

    def subscribe(self, callback: Callable[[str | None], None]) -> Callable[[], None]:
        """Call callback on every relevant event until the returned function is called."""
        with self._lock:
            key = self._next_id
            self._next_id += 1
            self._subscribers[key] = callback

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers.pop(key, None)

        return unsubscribe

    def notify(self, thread: str | None = None) -> None:
        """Signal every subscriber that thread (None: any) may have changed (called on the
        observer or keeper thread)."""
        with self._lock:
            callbacks = list(self._subscribers.values())
        for callback in callbacks:
            # RuntimeError: the waiter's event loop closed while we were signalling.
            with contextlib.suppress(RuntimeError):
                callback(thread)

    def thread_of(self, path: str) -> str | None:
        """Return the id of the thread whose folder path is in (None: threads/ itself, or a
        path outside it)."""
        base = str(self.threads_dir) + os.sep
        if not path.startswith(base):
            return None
        return path[len(base) :].split(os.sep, 1)[0] or None

    def folder_event(self, event: FileSystemEvent) -> None:
        """Note a folder event for the keeper (called on the observer thread).

        A thread folder that came or went is checked at the keeper's next look (a checkout of
        thousands costs one check per interval, not one each); threads/ itself gone wakes it now.
        """
        self._folders_changed = True
        if event.event_type == "deleted" and os.fsdecode(event.src_path) == str(self.threads_dir):
            self._lost = True
            self._look.set()

    # The keeper: runs on its own thread (and once in __init__, before that thread starts).

    def _keep(self) -> None:
        while True:
            self._look.wait(_CONFIRM_S if self._suspects else KEEP_INTERVAL_S)
            self._look.clear()
            if self._stopping:
                return
            failed = self.failure
            moved = self._follow()
            if moved or self._folders_changed or self._suspects:
                self._folders_changed = False
                self._verify()
            if moved or self.failure != failed:
                self.notify()  # waiters re-check now, and poll from now on if events failed

    def _follow(self) -> bool:
        """Move the watch to the folder now at threads_dir; return True if it moved."""
        try:
            st = os.lstat(self.threads_dir)
            identity: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            identity = None  # removed; the watch comes back when the folder does
        if identity == self._identity and not self._lost:
            return False
        assert self._observer is not None
        self._lost = False
        if self._watch is not None:
            self._observer.unschedule(self._watch)
            self._watch = None
        # Identity taken before scheduling: if the folder is replaced in between, the next
        # look sees a different one and moves the watch again.
        self._identity = identity
        self._suspects, self._cleared = {}, set()
        if identity is not None:
            try:
                self._watch = self._observer.schedule(
                    self._handler, str(self.threads_dir), recursive=True, event_filter=_events()
                )
            except FileNotFoundError:
                self._identity = None  # gone again already: try on the next look
            except OSError as e:
                self._fail(f"watching {self.threads_dir} and its thread folders failed", e)
        return True

    def _verify(self) -> None:
        """Fail over to hybrid if the kernel refuses a watch that a thread folder lacks.

        watchdog goes on without a sub-folder it could not watch (at most it logs), so ask the
        kernel which folders have a watch (/proc/self/fdinfo); one still missing after
        _CONFIRM_S is tried with a watch of our own, and ENOSPC or EMFILE there means the
        limits are reached.
        """
        if self._watch is None or self.failure is not None:
            return
        watched = _kernel_watches()
        if watched is None:
            return  # the kernel does not say; trust the watch
        watched |= self._cleared
        now = time.monotonic()
        missing: dict[int, str] = {}
        with contextlib.suppress(OSError), os.scandir(self.threads_dir) as entries:
            for entry in entries:
                ino = entry.inode()
                if entry.is_dir(follow_symlinks=False) and ino not in watched:
                    missing[ino] = entry.path
        self._suspects = {ino: self._suspects.get(ino, now) for ino in missing}
        for ino, since in list(self._suspects.items()):
            if now - since < _CONFIRM_S:
                continue
            err = _try_watch(missing[ino])
            if err in _LIMITS:
                self._fail(
                    f"thread folder {missing[ino]} got no watch",
                    OSError(err, os.strerror(err)),
                )
                return
            # Watchable: watchdog was only late, or failed for a reason that is no limit (the
            # safety re-check covers that folder); either way, stop judging it.
            del self._suspects[ino]
            self._cleared.add(ino)

    def _fail(self, what: str, error: OSError) -> None:
        """Note why file events cannot be trusted and warn once, saying what to do."""
        if self.failure is None:
            self.failure = f"{what}: {_why(error)}"
            log.warning(
                "file events under %s cannot be trusted: %s. Waits there now also poll every "
                "poll_interval (hybrid mode): still correct, but wakes come later and cost CPU. "
                "To fix, %s.",
                self.threads_dir,
                self.failure,
                _fix(error),
            )
