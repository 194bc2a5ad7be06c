"""Waiting: block until messages newer than a cursor exist, in one thread, several, or all.

A wait subscribes to the process's watcher (watch), then checks, then sleeps: no wake-up is
lost between checking and sleeping. Events are hints; every check re-reads the folder from the
cursor through the thread log, so a lost or late event costs latency, never a message. Waiters
also re-check on a timer: every ``poll_interval`` where native events cannot see other
machines' writes, every ``PENDING_RECHECK_S`` while a message is still arriving, and every
``SAFETY_RECHECK_S`` otherwise. A wait never holds a lock.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from mailslot.store.errors import InvalidMessage, NotFound, RootError
from mailslot.store.files import Files, exists
from mailslot.store.format import Damage, Message, Pending
from mailslot.store.log import MAX_PAGE, RACY_S, ThreadLog
from mailslot.store.names import check_name
from mailslot.store.watch import Watcher, filesystem_type, is_network_fs

log = logging.getLogger("mailslot")

SAFETY_RECHECK_S = 5.0
DISCOVERY_INTERVAL_S = 1.0
PENDING_RECHECK_S = 0.1
# Polling many threads: up to POLL_ALL_UPTO threads are all looked at on every tick; past
# that, a tick looks at the threads active in the last HOT_S seconds plus POLL_SLICE others in
# turn, so an idle waiter's cost does not grow with idle threads (a write from another
# machine into a long-quiet thread is seen within threads / POLL_SLICE ticks; local writes
# wake at once through file events, which look at every thread).
POLL_ALL_UPTO = 256
POLL_SLICE = 64
HOT_S = 60.0


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
    #: Messages the wait stopped before in their threads because they are still arriving.
    pending: list[Pending] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """Return the arrivals as a JSON-able dict."""
        return {
            "messages": [m.to_dict() for m in self.messages],
            "cursor": dict(self.cursor),
            "timed_out": self.timed_out,
            "skipped": [{"path": d.path, "reason": d.reason} for d in self.skipped],
            "pending": [p.to_dict() for p in self.pending],
        }


class Waiting:
    """The waits of one root in this process, sharing one watcher."""

    def __init__(self, files: Files, log: ThreadLog) -> None:
        self.files = files
        self.log = log
        self.watcher: Watcher | None = None
        self._mode: str | None = None
        self._watch_lock = threading.Lock()

    @property
    def wait_mode(self) -> str:
        """Return how waits wake here: 'native' (file events), 'poll', or 'hybrid' (both).

        'auto' (the default setting) means native on a local disk and hybrid on a network
        mount (NFS, SMB/CIFS, sshfs and other FUSE or remote filesystems), where file events
        never report other machines' writes and only polling sees them. Native turns hybrid
        when the watch cannot be trusted (inotify limits reached); the watcher warns once.
        """
        if self._mode is None:
            mode = self.files.settings.wait_mode
            if mode == "auto":
                mode = "hybrid" if is_network_fs(filesystem_type(self.files.root)) else "native"
            self._mode = mode
        watcher = self.watcher
        if self._mode == "native" and watcher is not None and watcher.failure is not None:
            self._mode = "hybrid"  # events still wake where they work; polling covers the rest
        return self._mode

    def subscribe(self, signal: Callable[[], None]) -> Callable[[], None]:
        """Have the process's watcher call signal on file events; return the unsubscriber."""
        if self.wait_mode == "poll":
            return lambda: None
        with self._watch_lock:
            if self.watcher is None:
                try:
                    # Not created here: a wait never writes, and the watcher waits for threads/
                    # to appear (and follows it when git or `mailslot init` replaces it).
                    self.watcher = Watcher.acquire(self.files.dir("threads", create=False))
                except OSError as e:  # no file events at all (limits are the watcher's to report)
                    log.warning(
                        "file events unavailable (%s); polling %s as well", e, self.files.root
                    )
                    self._mode = "hybrid"
                    return lambda: None
            return self.watcher.subscribe(signal)

    def cursor(self, threads: str | Iterable[str] | None = None) -> dict[str, int]:
        """Return the head seq of each thread (default: all): a cursor that means "from now"."""
        if threads is None:
            names = self.files.thread_ids()
        else:
            names = [threads] if isinstance(threads, str) else list(threads)
        return {t: self.log.head(t, exact=True) for t in names}  # "now" is past every gap

    def plan(
        self,
        threads: str | Iterable[str] | None,
        after: int | Mapping[str, int] | None,
        to: str | None,
        timeout: float,
        limit: int,
        match: Callable[[Message], bool] | None = None,
    ) -> _WaitPlan:
        if to is not None:
            check_name(to, "agent name")
        if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
            raise InvalidMessage(f"limit must be between 1 and {MAX_PAGE}, not {limit!r}")
        if not isinstance(timeout, int | float) or timeout < 0 or timeout != timeout:
            raise InvalidMessage(f"timeout must be a number of seconds >= 0, not {timeout!r}")
        names = (
            None if threads is None else ([threads] if isinstance(threads, str) else list(threads))
        )
        for name in names or ():
            self.files.thread_dir(name)
        if after is None:
            cursor = self.cursor(names)
        elif isinstance(after, Mapping):
            cursor = {}
            for name, seq in after.items():
                check_name(name, "thread id")
                if type(seq) is not int or seq < 0:
                    raise InvalidMessage(f"cursor of {name!r} must be a seq >= 0, not {seq!r}")
                cursor[name] = seq
        else:
            if names is None or len(names) != 1:
                raise InvalidMessage(
                    "after=<seq> needs exactly one thread; pass a dict for several"
                )
            if type(after) is not int or after < 0:
                raise InvalidMessage(f"after must be a whole number >= 0, not {after!r}")
            cursor = {names[0]: after}
        for name in names or ():
            cursor.setdefault(name, 0)
        if match is None:
            match = (lambda m: True) if to is None else (lambda m: to in m.to)
        return _WaitPlan(self, names, cursor, match, limit)

    def tick(self, plan: _WaitPlan) -> float:
        if any(not p.blocked for p in plan.pending.values()):
            # Something is still arriving: look again soon, both to read it once it is whole
            # and to step past it once its grace period is over.
            return min(PENDING_RECHECK_S, self.files.settings.poll_interval)
        if self.wait_mode != "native":
            return self.files.settings.poll_interval
        # Right after a new thread appears, re-check often: its first message may land before
        # the observer has added a watch for its folder.
        return 0.05 if plan.fresh_until > time.monotonic() else SAFETY_RECHECK_S

    def wait(
        self,
        threads: str | Iterable[str] | None = None,
        after: int | Mapping[str, int] | None = None,
        *,
        to: str | None = None,
        timeout: float = 50.0,
        limit: int = 100,
    ) -> Arrivals:
        """Block until messages newer than the cursor exist, or timeout seconds pass (the
        contract is Mailbox.wait's)."""
        plan = self.plan(threads, after, to, timeout, limit)
        flag = threading.Event()
        unsubscribe = self.subscribe(flag.set)
        try:
            deadline = time.monotonic() + timeout
            full = True  # the first look, and looks after a file event, cover every thread
            while True:
                flag.clear()  # before checking: an event during the check is not lost
                if plan.check(full=full):
                    return plan.result(timed_out=False)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return plan.result(timed_out=True)
                full = flag.wait(min(remaining, self.tick(plan))) or self.wait_mode == "native"
        finally:
            unsubscribe()

    async def wait_async(
        self,
        threads: str | Iterable[str] | None = None,
        after: int | Mapping[str, int] | None = None,
        *,
        to: str | None = None,
        timeout: float = 50.0,
        limit: int = 100,
        match: Callable[[Message], bool] | None = None,
    ) -> Arrivals:
        """Await what wait() returns, without blocking the event loop (the contract is
        Mailbox.wait_async's)."""
        plan = self.plan(threads, after, to, timeout, limit, match)
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()

        def signal() -> None:  # runs on the observer thread: only hand over to the loop
            loop.call_soon_threadsafe(woken.set)

        unsubscribe = self.subscribe(signal)
        try:
            deadline = time.monotonic() + timeout
            full = True  # the first look, and looks after a file event, cover every thread
            while True:
                woken.clear()
                if plan.check(full=full):
                    return plan.result(timed_out=False)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return plan.result(timed_out=True)
                full = True
                try:
                    await asyncio.wait_for(woken.wait(), min(remaining, self.tick(plan)))
                except TimeoutError:
                    full = self.wait_mode == "native"
        finally:
            unsubscribe()

    def close(self) -> None:
        """Stop watching (the process's observer stops with its last user); safe to repeat."""
        with self._watch_lock:
            watcher, self.watcher = self.watcher, None
        if watcher is not None:
            watcher.release()


class _WaitPlan:
    """The state of one wait: which threads, the cursor, and what was found so far."""

    def __init__(
        self,
        waiting: Waiting,
        threads: list[str] | None,
        cursor: dict[str, int],
        match: Callable[[Message], bool],
        limit: int,
    ) -> None:
        self.waiting = waiting
        self.threads = threads
        self.cursor = cursor
        self.match = match
        self.limit = limit
        self.messages: list[Message] = []
        self.skipped: list[Damage] = []
        self.pending: dict[str, Pending] = {}
        self.known: set[str] = set(cursor)
        self.order: list[str] = sorted(self.known) if threads is None else list(threads)
        self.listed_at = 0.0
        self.listing_key: tuple[int, int] | None = None
        self.fresh_until = 0.0
        # Threads that came or got news during the wait: polled on every tick until then. What
        # the first look finds (the threads there are, the backlog past the cursor) is not news,
        # or a wait from an empty cursor would poll every thread on every tick for HOT_S.
        self.hot: dict[str, float] = {}
        self.looked = False  # the first look (which covers every thread) is done
        self.turn = 0  # where the round over the other threads goes on

    def _names(self) -> list[str]:
        if self.threads is not None:
            return self.order
        now = time.monotonic()
        if self.waiting.wait_mode == "native" or now - self.listed_at >= DISCOVERY_INTERVAL_S:
            self.listed_at = now
            try:  # threads/ changes only when a thread comes or goes: list it only then
                st = os.stat(self.waiting.files.root / "threads")
                key: tuple[int, int] | None = (st.st_ino, st.st_mtime_ns)
            except OSError:
                key = None
            if key is not None and key == self.listing_key:
                return self.order
            if key is not None and time.time() - key[1] / 1e9 > RACY_S:
                self.listing_key = key  # a same-tick change could hide behind a newer mtime
            new = set(self.waiting.files.thread_ids()) - self.known
            if new:
                self.known.update(new)
                self.order = sorted(self.known)
                if self.looked:  # created during the wait: its first messages may come fast
                    self.fresh_until = now + 1.0
                    for thread in new:
                        self.hot[thread] = now + HOT_S
        return self.order

    def _due(self, names: list[str], full: bool) -> list[str]:
        """Return the threads to look at now: all of them, or on a timer tick with many
        threads, the busy ones plus the next slice of the rest (a bounded cost per tick)."""
        if full or len(names) <= POLL_ALL_UPTO:
            return names
        now = time.monotonic()
        for thread, until in list(self.hot.items()):
            if until < now and thread not in self.pending:
                del self.hot[thread]
        start = self.turn % len(names)
        self.turn = (start + POLL_SLICE) % len(names)
        round_ = (names + names)[start : start + POLL_SLICE]  # wraps: every thread in turn
        return list(dict.fromkeys([*self.hot, *self.pending, *round_]))

    def check(self, *, full: bool = True) -> bool:
        """Read whatever is new past the cursor; return True if it found messages to return.

        full=False (a poll tick, not a file event) looks at a bounded number of threads.
        """
        files, log = self.waiting.files, self.waiting.log
        for thread in self._due(self._names(), full):
            if len(self.messages) >= self.limit:
                break
            tdir = files.root / "threads" / thread
            seq = self.cursor.get(thread, 0)
            # The common case costs a stat of the next name and one of the folder.
            if not exists(tdir, seq + 1) and log.listings.beyond(thread, tdir, seq + 1) is None:
                self.pending.pop(thread, None)
                continue
            try:
                while len(self.messages) < self.limit:
                    page = log.read(thread, seq, self.limit - len(self.messages))
                    self.skipped.extend(page.skipped)
                    for m in page.messages:
                        if self.match(m):
                            self.messages.append(m)
                    if page.pending is not None:
                        self.pending[thread] = page.pending
                    else:
                        self.pending.pop(thread, None)
                    if page.cursor == seq or page.pending is not None:
                        seq = page.cursor
                        break
                    seq = page.cursor
            except (NotFound, RootError):
                # Removed or replaced while we read: keep what was read before that.
                self.cursor[thread] = seq
                continue
            self.cursor[thread] = seq
            if self.looked:
                self.hot[thread] = time.monotonic() + HOT_S
        self.looked = True
        return bool(self.messages)

    def result(self, *, timed_out: bool) -> Arrivals:
        return Arrivals(
            list(self.messages),
            dict(self.cursor),
            timed_out,
            list(self.skipped),
            list(self.pending.values()),
        )
