"""The feed: which threads changed, as file events and listings of threads/ name them.

A process keeps one ``Feed`` per root (in ``Waiting``): the watcher's observer thread notes
the thread each file event came from, and ``ThreadFolders`` the threads that came, went or
were made again. A wait asks what was named since its last look, so a look costs what changed,
not how many threads there are.
"""

from __future__ import annotations

import os
import threading
import time

from mailslot.store.files import Files
from mailslot.store.log import RACY_S

FEED_KEEP = 65536  # names the feed keeps (a few per post); a reader further behind looks at all
DISCOVERY_INTERVAL_S = 1.0  # how often threads/ is looked at where file events cannot see


class Feed:
    """The threads that file events (and listings of threads/) named, in order.

    ``mark()`` is where the feed stands now; ``since(mark)`` the threads named from there on,
    or None when that is unknown (the feed was cut past it, or an event named no thread: the
    watch moved, threads/ was replaced): then every thread may have changed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._base = 0  # the mark of _names[0]
        self._names: list[str | None] = []

    def note(self, thread: str | None) -> None:
        """Record that thread (None: any thread) may have changed."""
        with self._lock:
            self._names.append(thread)
            self._cut()

    def note_all(self, threads: set[str] | None) -> None:
        """Record that each of threads (None: any thread) may have changed."""
        if threads is None:
            self.note(None)
            return
        with self._lock:
            self._names.extend(threads)
            self._cut()

    def _cut(self) -> None:
        while len(self._names) > 2 * FEED_KEEP:  # a reader further behind looks at all
            del self._names[:FEED_KEEP]
            self._base += FEED_KEEP

    def mark(self) -> int:
        """Return where the feed stands now."""
        with self._lock:
            return self._base + len(self._names)

    def since(self, mark: int) -> set[str] | None:
        """Return the threads named since mark, or None if any thread may have changed."""
        with self._lock:
            if mark < self._base:
                return None
            names = set(self._names[mark - self._base :])
        if None in names:
            return None
        return names  # type: ignore[return-value]  # None was just ruled out


class ThreadFolders:
    """The process's view of threads/: the thread ids, listed again only when it changed."""

    def __init__(self, files: Files, feed: Feed) -> None:
        self.files = files
        self.feed = feed
        self.listings = 0  # how many listings changed the ids there are
        self._folders: dict[str, int] | None = None  # thread -> folder inode, when last listed
        self._order: list[str] = []  # the same ids, sorted
        self._key: tuple[int, int] | None = None  # threads/ as last listed, once settled
        self._listed: tuple[int, int] | None = None  # threads/ as last listed
        self._at = 0.0

    def names(self, *, throttled: bool) -> tuple[list[str], set[str]]:
        """Return the thread ids, sorted, and those that came or were made again since the
        last call (each noted in the feed, as are those gone).

        One stat of threads/ unless it changed (throttled, as on a network mount where
        events cannot tell: at most every DISCOVERY_INTERVAL_S); a listing when it did.
        """
        now = time.monotonic()
        if self._folders is not None and throttled and now - self._at < DISCOVERY_INTERVAL_S:
            return self._order, set()
        self._at = now
        try:  # threads/ changes only when a thread comes or goes: list it only then
            st = os.stat(self.files.root / "threads")
            key: tuple[int, int] | None = (st.st_ino, st.st_mtime_ns)
        except OSError:
            key = None
        if self._folders is not None and key is not None and key == self._key:
            return self._order, set()
        if key is not None and time.time() - key[1] / 1e9 > RACY_S:
            self._key = key  # a same-tick change could hide behind a newer mtime
        folders = self.files.thread_folders()
        before, self._folders = self._folders, folders
        listed, self._listed = self._listed, key
        if before is None:
            self._order = sorted(folders)
            self.listings += 1
            return self._order, set()
        came = {t for t, ino in folders.items() if before.get(t) != ino}
        gone = before.keys() - folders.keys()
        if came or gone:
            self._order = sorted(folders)
            self.listings += 1
            for thread in sorted(came | gone):
                self.feed.note(thread)
        elif throttled and key != listed:
            # threads/ changed, yet every folder is there with its inode: one was removed and
            # made again, and got its old inode back (ext4, tmpfs). Where no file event names
            # it, any thread may be that one.
            self.feed.note(None)
        return self._order, came
