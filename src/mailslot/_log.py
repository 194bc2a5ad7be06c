"""Reading a thread's log when more than mailslot writes the folder.

mailslot's own writers publish whole files onto contiguous seqs. git, rsync, sync tools and
people do not: a file may appear empty and be filled afterwards, and seqs may arrive out of
order or go missing while later ones exist. This module holds what the reader needs for that:

- ``Listings``: each thread folder's listing, kept per process and refreshed only when the
  folder changed, so "is there anything beyond this missing seq?" costs a ``stat`` of the
  folder in the common case instead of a listing.
- ``Ages``: how long a file has looked the way it does, from its times on disk and from when
  this process first saw it (clocks of other machines may be ahead of ours).
"""

from __future__ import annotations

import os
import threading
import time
from array import array
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

from mailslot._format import MESSAGE_NAME_RE, message_name

DEFAULT_GRACE_S = 10.0
LOOKAHEAD = 4  # seqs stat-ed past a missing one before a listing is considered
RESCAN_EVERY_S = 1.0  # a changed folder is listed again at most this often per process
RACY_S = 1.0  # a listing taken this soon after the folder's mtime may miss a same-tick change


@dataclass(slots=True)
class _Listing:
    key: tuple[int, int, int, int]
    seqs: array[int]  # sorted seqs of the message files present
    at_wall: float
    at_mono: float

    @property
    def trusted(self) -> bool:
        # The folder's mtime has a coarse granularity: a file created in the same tick as the
        # listing leaves the mtime unchanged. A listing taken well after the last change is
        # complete for that key.
        return self.at_wall - self.key[2] / 1e9 > RACY_S


def _folder_key(tdir: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(tdir)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _list_seqs(tdir: Path) -> array[int]:
    seqs = array("q")
    try:
        with os.scandir(tdir) as entries:
            for entry in entries:
                m = MESSAGE_NAME_RE.fullmatch(entry.name)
                if m and message_name(int(m.group(1))) == entry.name:
                    seqs.append(int(m.group(1)))
    except OSError:
        return array("q")
    return array("q", sorted(seqs))


class Listings:
    """Per-process memory of thread folders' listings, for seeing past gaps cheaply."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_thread: dict[str, _Listing] = {}

    def forget(self, thread: str) -> None:
        """Drop what is remembered of thread (its folder was removed or replaced)."""
        with self._lock:
            self._by_thread.pop(thread, None)

    def beyond(self, thread: str, tdir: Path, missing: int) -> int | None:
        """Return the lowest seq above missing that has a file, or None; missing has none.

        Costs one ``stat`` of the folder while it is unchanged since a complete listing; a few
        ``stat`` calls of the next names and, at most once a second per thread, a listing when
        it changed. A file created less than a second ago beyond a gap wider than the
        look-ahead may be seen a second late; nothing is ever reported missing because of that.
        """
        key = _folder_key(tdir)
        if key is None:
            return None
        with self._lock:
            known = self._by_thread.get(thread)
        if known is None or known.key != key or not known.trusted:
            for seq in range(missing + 1, missing + 1 + LOOKAHEAD):
                if os.path.lexists(tdir / message_name(seq)):
                    return seq
            now = time.monotonic()
            if known is None or now - known.at_mono >= RESCAN_EVERY_S:
                known = _Listing(key, _list_seqs(tdir), time.time(), now)
                with self._lock:
                    self._by_thread[thread] = known
        seqs = known.seqs
        i = bisect_right(seqs, missing)
        while i < len(seqs):
            seq = seqs[i]
            if os.path.lexists(tdir / message_name(seq)):
                return seq
            i += 1  # removed since the listing: look at the next one
        return None


class Ages:
    """How long files have looked as they do, from their times on disk.

    A file's content counts from its mtime: whoever is still writing it keeps that fresh. A
    file's *arrival* (the later file that reveals a gap) counts from the newer of mtime and
    ctime: ctime is set by the machine where the file appeared, so a sync tool that keeps the
    sender's old mtime cannot make a just-arrived file look old. A time in the future (another
    machine's clock ahead of ours) counts from when this process first saw the file instead.
    """

    MAX_TRACKED = 4096

    def __init__(self) -> None:
        self._first_seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def since(self, path: str, st: os.stat_result, *, arrival: bool = False) -> float:
        """Return since when the file at path (whose stat is st) has looked this way."""
        changed = max(st.st_mtime, st.st_ctime) if arrival else st.st_mtime
        now = time.time()
        if changed <= now:
            return changed
        with self._lock:
            if len(self._first_seen) >= self.MAX_TRACKED:
                self._first_seen.clear()
            return self._first_seen.setdefault(path, now)
