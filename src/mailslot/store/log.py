"""Reading a thread's log: finding its head and its messages, in seq order, whatever wrote it.

mailslot's own writers publish whole files onto contiguous seqs. git, rsync, sync tools and
people do not: a file may appear empty and be filled afterwards, and seqs may arrive out of
order or go missing while later ones exist. ``ThreadLog`` is the one reader every part of
mailslot uses (reads, waits, the thread index); it never passes a message that may still be
arriving (``Pending``), and reports what it steps over (``Damage``). Beside it:

- ``Listings``: each thread folder's listing, kept per process and refreshed only when the
  folder changed, so "is there anything beyond this missing seq?" costs a ``stat`` of the
  folder in the common case instead of a listing.
- ``Ages``: how long a file has looked the way it does, from its times on disk and from when
  this process first saw it (clocks of other machines may be ahead of ours).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from array import array
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mailslot.store.errors import Damaged, InvalidMessage, NoSuchMessage
from mailslot.store.files import CLOEXEC, NOFOLLOW, Files, exists, read_all
from mailslot.store.format import (
    Damage,
    Message,
    Page,
    Pending,
    max_message_file_bytes,
    message_name,
    parse_message,
)
from mailslot.store.watch import filesystem_type, is_network_fs

log = logging.getLogger("mailslot")

MAX_PAGE = 1000
CONFLICT_TEXT = (
    "holds a git merge conflict: two clones both wrote seq {seq}. Readers stop here until it is "
    "resolved; run `mailslot doctor --fix` (it keeps both messages), then commit the result"
)
LOOKAHEAD = 4  # seqs stat-ed past a missing one before a listing is considered
FRESH_LOOKAHEAD = 16  # the same for a writer about to claim (~25 µs of stats)
RESCAN_EVERY_S = 1.0  # a changed folder is listed again at most this often per process
RACY_S = 1.0  # a listing taken this soon after the folder's mtime may miss a same-tick change
# A reader that just looked past a missing seq and found nothing does not look again for the
# same seq this soon (a busy thread is folded several times a call): a file beyond a gap, which
# only a foreign writer leaves, is seen this much later. Writers about to claim always look.
QUIET_S = 0.05


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
    """Return the sorted seqs of the message files in tdir (one listing, no stat)."""
    try:
        names = os.listdir(tdir)
    except OSError:
        return array("q")
    seqs = []
    for name in names:
        # A canonical message name: six digits, or more without a leading zero.
        stem = name[:-5]
        if (
            name.endswith(".json")
            and stem.isdigit()
            and stem.isascii()
            and (len(stem) == 6 or (len(stem) > 6 and stem[0] != "0"))
        ):
            seqs.append(int(stem))
    seqs.sort()
    return array("q", seqs)


class Listings:
    """Per-process memory of thread folders' listings, for seeing past gaps cheaply."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._by_thread: dict[str, _Listing] = {}
        #: thread -> (missing, when): a reader's last look past missing found nothing.
        self._quiet: dict[str, tuple[int, float]] = {}

    def forget(self, thread: str) -> None:
        """Drop what is remembered of thread (its folder was removed or replaced)."""
        with self._lock:
            self._by_thread.pop(thread, None)
            self._quiet.pop(thread, None)

    def beyond(
        self, thread: str, tdir: Path, missing: int, *, listing: bool = True, fresh: bool = False
    ) -> int | None:
        """Return the lowest seq above missing that has a file, or None; missing has none.

        Costs one ``stat`` of the folder while it is unchanged since a complete listing; a few
        ``stat`` calls of the next names and, at most once a second per thread, a listing when
        it changed. A file created less than a second ago beyond a gap wider than the
        look-ahead may be seen a second late; nothing is ever reported missing because of that.
        With listing=False only the look-ahead and a listing already made are used (an answer
        for people that must be cheap; writers and readers always see past gaps). fresh=True
        (a writer about to claim a seq) looks FRESH_LOOKAHEAD names ahead: a claim must not land
        in a gap a sync tool opened within the last second (wider ones are seen by the listing).
        """
        if fresh:
            return self._beyond(thread, tdir, missing, listing=listing, fresh=True)
        now = time.monotonic()
        with self._lock:
            quiet = self._quiet.get(thread)
        if quiet is not None and quiet[0] == missing and now - quiet[1] < QUIET_S:
            return None  # looked a moment ago, for the same seq: a gap is no news that fast
        found = self._beyond(thread, tdir, missing, listing=listing, fresh=False)
        if found is None:
            with self._lock:
                self._quiet[thread] = (missing, now)
        return found

    def _beyond(
        self, thread: str, tdir: Path, missing: int, *, listing: bool, fresh: bool
    ) -> int | None:
        key = _folder_key(tdir)
        if key is None:
            return None
        with self._lock:
            known = self._by_thread.get(thread)
        if known is None or known.key != key or not known.trusted:
            base = f"{os.fspath(tdir)}/"  # plain strings: this runs on every post
            for seq in range(missing + 1, missing + 1 + (FRESH_LOOKAHEAD if fresh else LOOKAHEAD)):
                if os.path.lexists(f"{base}{seq:06d}.json"):
                    return seq
            now = time.monotonic()
            if not listing and (known is None or known.key[:2] != key[:2]):
                return None
            if known is None or now - known.at_mono >= RESCAN_EVERY_S:
                known = _Listing(key, _list_seqs(tdir), self.clock.now(), now)
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


class Clock:
    """The time of the filesystem's clock, which stamps the files we judge by their age.

    On a network mount the server sets file times; its clock may be minutes off ours, which
    would make a file still being written look old (and be stepped over). There the offset is
    measured by creating a file in ``.state/tmp`` and reading the time the server gave it,
    again every CLOCK_EVERY_S. On a local disk it is our own clock.
    """

    CLOCK_EVERY_S = 30.0

    def __init__(self, tmp: Path | None) -> None:
        self._tmp = tmp  # None: a local disk
        self._offset = 0.0
        self._measured = -self.CLOCK_EVERY_S

    def now(self) -> float:
        """Return the current time as the filesystem's clock tells it (epoch seconds)."""
        if self._tmp is not None and time.monotonic() - self._measured >= self.CLOCK_EVERY_S:
            self._measured = time.monotonic()
            probe = self._tmp / f".clock.{os.getpid()}.{threading.get_ident()}"
            try:
                before = time.time()
                fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
                try:
                    os.write(fd, b"t")
                    stamped = os.fstat(fd).st_mtime
                finally:
                    os.close(fd)
                    os.unlink(probe)
                self._offset = stamped - (before + time.time()) / 2
            except OSError:
                pass  # a read-only folder: keep the last offset (our own clock at first)
        return time.time() + self._offset


class Ages:
    """How long files have looked as they do, from their times on disk.

    A file's content counts from its mtime: whoever is still writing it keeps that fresh. A
    file's *arrival* (the later file that reveals a gap) counts from the newer of mtime and
    ctime: ctime is set by the machine where the file appeared, so a sync tool that keeps the
    sender's old mtime cannot make a just-arrived file look old. A time in the future (another
    machine's clock ahead of ours) counts from when this process first saw the file instead.
    """

    MAX_TRACKED = 4096

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._first_seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def since(self, path: str, st: os.stat_result, *, arrival: bool = False) -> float:
        """Return since when the file at path (whose stat is st) has looked this way."""
        changed = max(st.st_mtime, st.st_ctime) if arrival else st.st_mtime
        now = self.clock.now()
        if changed <= now:
            return changed
        with self._lock:
            if len(self._first_seen) >= self.MAX_TRACKED:
                self._first_seen.clear()
            return self._first_seen.setdefault(path, now)


class ThreadLog:
    """The messages of a root's threads as readers see them; safe to use from several threads.

    Remembers each thread's head (a hint for probing) and folder listing per process.
    """

    def __init__(self, files: Files) -> None:
        self.files = files
        self.heads: dict[str, int] = {}
        network = is_network_fs(filesystem_type(files.root))
        clock = Clock(files.root / ".state" / "tmp" if network else None)
        self.listings = Listings(clock)
        self._ages = Ages(clock)
        self._conflicts_told: set[str] = set()

    def forget(self, thread: str) -> None:
        """Drop what is remembered of thread (it was created again under the same id)."""
        self.heads.pop(thread, None)
        self.listings.forget(thread)

    def probe_head(
        self, thread: str, tdir: Path, *, listing: bool = True, fresh: bool = False
    ) -> int:
        """Return the highest seq in the thread, probing with stat from the remembered hint.

        Costs O(log new messages) stats from the remembered hint. It sees past gaps (a
        missing seq while later files exist, as git or a sync tool may leave them), so a writer
        never claims a seq inside a gap that readers may already have stepped over, and never
        acknowledges a message where readers cannot reach it. Listing the folder is needed only
        when it changed and the next names are missing (see Listings.beyond).
        """
        hint = self.heads.get(thread, 0)
        if hint and not exists(tdir, hint):
            hint = 0  # the folder went back in time (restored from git): search afresh
        while True:
            # Gallop forward from the hint (1, 2, 4, ... ahead), then bisect: O(log n) stats
            # however far behind the hint is, one stat when nothing is new.
            low, step = hint, 1
            while exists(tdir, low + step):
                low, step = low + step, step * 2
            high = low + step  # invariant: low exists (or is the hint), high does not
            while high - low > 1:
                mid = (low + high) // 2
                if exists(tdir, mid):
                    low = mid
                else:
                    high = mid
            hint = low
            beyond = self.listings.beyond(thread, tdir, hint + 1, listing=listing, fresh=fresh)
            if beyond is None:
                break
            hint = beyond
        self.heads[thread] = hint
        return hint

    def head(self, thread: str, *, exact: bool = False) -> int:
        """Return the seq of the newest message in thread (0 if none); raise NoSuchThread.

        Sees past the gaps within the look-ahead, and past wider ones once this process has
        listed the folder; only with exact does it list the folder itself (readers meet wider
        gaps as they read, and writers always list before they claim).
        """
        return self.probe_head(thread, self.files.thread_dir(thread), listing=exact)

    def load(self, thread: str, tdir: Path, seq: int) -> Message | Damage | Pending | None:
        """Return message seq, why it cannot be read, or None if it is absent.

        An unreadable file that changed less than grace_s ago is Pending (still being written
        by git, a sync tool or an editor), and so is a file holding a git merge conflict (until
        `mailslot doctor --fix` resolves it); only an older one is Damage.
        """
        path = f"{os.fspath(tdir)}/{message_name(seq)}"  # a string: every fold ends here
        try:
            fd = os.open(path, os.O_RDONLY | CLOEXEC | NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:
                return None  # a seq hundreds of digits long: no file can have that name
            if e.errno == errno.ELOOP:
                return self.files.report(Damage(str(path), "is a symlink; messages are real files"))
            return self.files.report(Damage(str(path), f"cannot be opened: {e.strerror}"))
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                return self.files.report(Damage(str(path), "is a folder, not a message"))
            if not stat.S_ISREG(st.st_mode):
                return self.files.report(Damage(str(path), "is not a regular file"))
            size = st.st_size
            limit = max_message_file_bytes(self.files.settings.max_content_bytes)
            if size > limit:
                return self.files.report(
                    Damage(str(path), f"is {size} bytes, too large to be a message")
                )
            data = read_all(fd, size)
        except OSError as e:
            return self.files.report(Damage(str(path), f"cannot be read: {e.strerror}"))
        finally:
            os.close(fd)
        try:
            return parse_message(data, thread, seq)
        except ValueError as e:
            return self._unreadable(thread, seq, path, st, data, str(e))

    def _unreadable(
        self, thread: str, seq: int, path: str, st: os.stat_result, data: bytes, why: str
    ) -> Damage | Pending:
        since = self._ages.since(str(path), st)
        if data.startswith(b"<<<<<<< ") or b"\n<<<<<<< " in data:
            if str(path) not in self._conflicts_told:
                self._conflicts_told.add(str(path))
                log.warning("%s holds a git merge conflict; run `mailslot doctor --fix`", path)
            return Pending(thread, seq, str(path), CONFLICT_TEXT.format(seq=seq), since, True)
        grace = self.files.settings.grace_s
        if self._ages.clock.now() - since < grace:
            what = "is empty" if not data.strip() else f"is incomplete ({why})"
            return Pending(
                thread, seq, str(path),
                f"{what}; it may still be arriving (git, a sync tool, an editor): readers wait "
                f"for it up to {grace:g} s after its last change, then report it and go on",
                since,
            )  # fmt: skip
        return self.files.report(Damage(str(path), why))

    def _gap(self, thread: str, tdir: Path, first: int, nxt: int) -> Damage | Pending:
        """Return what the missing seqs first..nxt-1 (nxt has a file) mean for a reader now."""
        path = tdir / message_name(first)
        span = f"seq {first} is" if nxt == first + 1 else f"seqs {first}-{nxt - 1} are"
        try:
            later = tdir / message_name(nxt)
            since = self._ages.since(str(later), os.lstat(later), arrival=True)
        except OSError:
            since = self._ages.clock.now()  # the later file went away meanwhile: look again
        grace = self.files.settings.grace_s
        if self._ages.clock.now() - since < grace:
            return Pending(
                thread, first, str(path),
                f"{span} missing while seq {nxt} exists; it may still be arriving (git, a sync "
                f"tool): readers wait up to {grace:g} s, then report it and go on",
                since,
            )  # fmt: skip
        return self.files.report(
            Damage(
                str(path),
                f"missing: {span} absent while seq {nxt} exists (deleted, or lost in a sync or a "
                "merge); restore it from git if you can, or run `mailslot doctor --fix` to fill "
                "the gap with a placeholder",
            )
        )

    def walk(self, thread: str, tdir: Path, after: int, limit: int) -> Page:
        """Read up to limit messages past after: the one loop every reader uses.

        Damage and gaps older than grace_s are stepped over and reported in Page.skipped; the
        walk stops before anything Pending and says so in Page.pending, so no reader (nor the
        thread index) ever passes a message that is still arriving.
        """
        messages: list[Message] = []
        skipped: list[Damage] = []
        pending: Pending | None = None
        seq = after
        while len(messages) < limit:
            item = self.load(thread, tdir, seq + 1)
            if item is None:
                nxt = self.listings.beyond(thread, tdir, seq + 1)
                if nxt is None:
                    break
                gap = self._gap(thread, tdir, seq + 1, nxt)
                if isinstance(gap, Pending):
                    pending = gap
                    break
                skipped.append(gap)
                seq = nxt - 1
                continue
            if isinstance(item, Pending):
                pending = item
                break
            seq += 1
            if isinstance(item, Damage):
                skipped.append(item)
            else:
                messages.append(item)
        has_more = (
            pending is None
            and len(messages) == limit
            and (exists(tdir, seq + 1) or self.listings.beyond(thread, tdir, seq + 1) is not None)
        )
        return Page(messages, seq, has_more, skipped, pending)

    def pages(self, thread: str, tdir: Path, after: int, limit: int = MAX_PAGE) -> Iterator[Page]:
        """Yield pages past after, up to the newest message or one still arriving.

        Every fold of a thread (its index, tasks, reservations, search) reads with this, so
        none records past a pending file: it would miss what that file says for good.
        """
        while True:
            page = self.walk(thread, tdir, after, limit)
            yield page
            if page.cursor == after or page.pending is not None or not page.has_more:
                return
            after = page.cursor

    def read(self, thread: str, after: int = 0, limit: int = 100) -> Page:
        """Return up to limit messages with seq > after, in seq order.

        A file that is empty, half-written or missing while later seqs exist is pending for
        grace_s after its last change: the read stops before it and names it in Page.pending.
        After that it is stepped over, reported in Page.skipped and logged; so are files that
        cannot be read. Raise NoSuchThread, or InvalidMessage for a bad after/limit.
        """
        tdir = self.files.thread_dir(thread)
        if type(after) is not int or after < 0:
            raise InvalidMessage(f"after must be a whole number >= 0, not {after!r}")
        if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
            raise InvalidMessage(f"limit must be between 1 and {MAX_PAGE}, not {limit!r}")
        page = self.walk(thread, tdir, after, limit)
        if page.cursor > self.heads.get(thread, 0):
            self.heads[thread] = page.cursor
        return page

    def messages(self, thread: str, after: int = 0) -> Iterator[Message]:
        """Yield every readable message of thread with seq > after, in seq order."""
        while True:
            page = self.read(thread, after, MAX_PAGE)
            yield from page.messages
            if page.cursor == after:
                return
            after = page.cursor

    def get(self, thread: str, seq: int) -> Message:
        """Return message seq of thread; raise NoSuchThread, NoSuchMessage or Damaged."""
        tdir = self.files.thread_dir(thread)
        if type(seq) is not int or seq < 1:
            raise InvalidMessage(f"seq must be a whole number >= 1, not {seq!r}")
        item = self.load(thread, tdir, seq)
        if item is None:
            raise NoSuchMessage(thread, seq, self.probe_head(thread, tdir))
        if isinstance(item, Damage):
            raise Damaged(item)
        if isinstance(item, Pending):
            raise Damaged(Damage(item.path, item.reason))
        return item
