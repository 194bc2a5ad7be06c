"""Waiting: block until messages newer than a cursor exist, in one thread, several, or all.

A wait subscribes to the process's watcher (watch), then checks, then sleeps: no wake-up is
lost between checking and sleeping. Events are hints; every check re-reads the folder from the
cursor through the thread log, so a lost or late event costs latency, never a message. Waiters
also re-check on a timer: every ``poll_interval`` where native events cannot see other
machines' writes, every ``PENDING_RECHECK_S`` while a message is still arriving, and every
``SAFETY_RECHECK_S`` otherwise. A wait never holds a lock.

What a look costs follows what changed, not how many threads there are: file events name their
thread, and the process keeps them in a ``Feed``; a wait's first look covers every thread it
waits on, and each look after only the threads named since (plus, on a timer tick, the busy
threads and a slice of the others in turn). A wait kept across calls (``Mailbox.wait_plan``:
an agent's inbox) carries its cursor and its place in the feed from one call to the next, so
even the first look of a new call looks only where something changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from mailslot.store.errors import InvalidMessage, NotFound, RootError
from mailslot.store.feed import Feed, ThreadFolders
from mailslot.store.files import Files, exists
from mailslot.store.format import Damage, Message, Pending
from mailslot.store.log import MAX_PAGE, ThreadLog
from mailslot.store.names import check_name
from mailslot.store.watch import Watcher, filesystem_type, is_network_fs

log = logging.getLogger("mailslot")

SAFETY_RECHECK_S = 5.0
PENDING_RECHECK_S = 0.1
# Timer ticks over many threads: up to POLL_ALL_UPTO threads are all looked at on every tick;
# past that, a tick looks at the threads active in the last HOT_S seconds, and sweeps a slice
# of the others in turn with one lstat each of its next file name (sweep_size), so an idle
# waiter's cost does not grow with idle threads: a write from another machine into a
# long-quiet thread is seen within a sweep (SWEEP_S up to SWEEP_PER_S * SWEEP_S threads, then
# threads / SWEEP_PER_S seconds); local writes wake at once through file events, which name
# their thread.
POLL_ALL_UPTO = 256
POLL_SLICE = 64
SWEEP_S = 5.0  # a sweep of the quiet threads aims to come round in this time...
SWEEP_PER_S = 640  # ...looking at no more than this many threads a second
HOT_S = 60.0


def sweep_size(threads: int, interval: float) -> int:
    """Return how many quiet threads a timer tick every interval seconds sweeps (one lstat of
    each one's next file name): all of them every SWEEP_S, within SWEEP_PER_S a second, and
    never fewer than POLL_SLICE."""
    aim = math.ceil(threads * interval / SWEEP_S)
    return max(POLL_SLICE, min(aim, math.ceil(SWEEP_PER_S * interval)))


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
    """The waits of one root in this process, sharing one watcher and one feed."""

    def __init__(self, files: Files, log: ThreadLog) -> None:
        self.files = files
        self.log = log
        self.watcher: Watcher | None = None
        #: What file events named since the watch began (kept while this object lives).
        self.feed = Feed()
        self._mode: str | None = None
        self._watch_lock = threading.Lock()
        self._signals: dict[int, Callable[[], None]] = {}
        self._next_signal = 0
        self.folders = ThreadFolders(files, self.feed)
        #: Threads that got news or came lately: looked at on every timer tick until then.
        self.hot: dict[str, float] = {}
        #: Until when timer ticks come fast: a thread came, and its first message may land
        #: before the observer has added a watch for its folder.
        self.fresh_until = 0.0

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
        """Have file events call signal (after the feed noted them); return the unsubscriber.

        The first subscription starts the process's watcher, and the feed hears every event
        from then on until close(), between waits too."""
        if self.wait_mode == "poll":
            return lambda: None
        with self._watch_lock:
            if self.watcher is None:
                try:
                    # Not created here: a wait never writes, and the watcher waits for threads/
                    # to appear (and follows it when git or `mailslot init` replaces it).
                    watcher = Watcher.acquire(self.files.dir("threads", create=False))
                except OSError as e:  # no file events at all (limits are the watcher's to report)
                    log.warning(
                        "file events unavailable (%s); polling %s as well", e, self.files.root
                    )
                    self._mode = "hybrid"
                    return lambda: None
                watcher.subscribe(self._heard)
                self.watcher = watcher
            key = self._next_signal
            self._next_signal += 1
            self._signals[key] = signal

        def unsubscribe() -> None:
            with self._watch_lock:
                self._signals.pop(key, None)

        return unsubscribe

    def _heard(self, thread: str | None) -> None:
        """Note a file event in the feed and wake the waits (on the observer or keeper thread)."""
        self.feed.note(thread)
        with self._watch_lock:
            signals = list(self._signals.values())
        for signal in signals:
            # RuntimeError: the waiter's event loop closed while we were signalling.
            with contextlib.suppress(RuntimeError):
                signal()

    def names(self) -> list[str]:
        """Return the ids of the threads there are, sorted, listing threads/ only when it
        changed (see ThreadFolders); the threads that came, went or were made again since
        are noted in the feed, and the new ones are busy for a while."""
        order, came = self.folders.names(throttled=self.wait_mode != "native")
        if came:  # their first messages may come fast
            now = time.monotonic()
            for thread in came:
                self.hot[thread] = now + HOT_S
            self.fresh_until = now + 1.0
        return order

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
    ) -> WaitPlan:
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
        return WaitPlan(self, names, cursor, match, limit)

    def tick(self, plan: WaitPlan) -> float:
        if any(not p.blocked for p in plan.pending.values()):
            # Something is still arriving: look again soon, both to read it once it is whole
            # and to step past it once its grace period is over.
            return min(PENDING_RECHECK_S, self.files.settings.poll_interval)
        if self.wait_mode != "native":
            return self.files.settings.poll_interval
        # Right after a new thread appears, re-check often: its first message may land before
        # the observer has added a watch for its folder.
        return 0.05 if self.fresh_until > time.monotonic() else SAFETY_RECHECK_S

    def look(self, plan: WaitPlan, *, tick: bool = False) -> bool:
        """Look once where plan needs to (see WaitPlan.check); return True if it found
        messages to return."""
        mark = self.feed.mark()  # before asking: what is named from here on is looked at next
        only = None if plan.mark is None else self.feed.since(plan.mark)
        found = plan.check(only, tick=tick)
        if not plan.cut:
            plan.mark = mark
        return found

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
            tick = False
            while True:
                flag.clear()  # before looking: an event during the look is not lost
                if self.look(plan, tick=tick):
                    return plan.take(timed_out=False)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return plan.take(timed_out=True)
                tick = not flag.wait(min(remaining, self.tick(plan)))
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
        return await self.run_async(plan, timeout)

    async def run_async(self, plan: WaitPlan, timeout: float) -> Arrivals:
        """Await plan's messages for up to timeout seconds; return them (and take them from
        plan, which goes on from there if run again)."""
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()

        def signal() -> None:  # runs on the observer thread: only hand over to the loop
            loop.call_soon_threadsafe(woken.set)

        unsubscribe = self.subscribe(signal)
        try:
            deadline = time.monotonic() + timeout
            tick = False
            while True:
                woken.clear()
                if self.look(plan, tick=tick):
                    return plan.take(timed_out=False)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return plan.take(timed_out=True)
                tick = False
                try:
                    await asyncio.wait_for(woken.wait(), min(remaining, self.tick(plan)))
                except TimeoutError:
                    tick = True
        finally:
            unsubscribe()

    def close(self) -> None:
        """Stop watching (the process's observer stops with its last user); safe to repeat."""
        with self._watch_lock:
            watcher, self.watcher = self.watcher, None
            self._signals.clear()
        if watcher is not None:
            watcher.release()


class WaitPlan:
    """The state of one wait: which threads, the cursor, and what was found so far.

    A plan kept by its caller (Mailbox.wait_plan) is run again and again; ``mark`` is where in
    the feed its cursor was last known to be complete (None: never: its next look covers all).
    """

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
        self.scope: set[str] = set(cursor)  # the threads this plan knows of
        self.mark: int | None = None
        self.cut = False  # the last look stopped at limit before it looked everywhere due
        self.looked = False  # the first look (which covers every thread) is done
        self.turn = 0  # where the round over the other threads goes on
        self.listed = -1  # the listing of threads/ whose threads scope holds
        self.again: set[str] = set()  # threads whose cursor was moved from outside
        #: Threads whose cursor moved since the last take(): what a run read past.
        self.moved: set[str] = set()

    def move(self, thread: str, seq: int) -> None:
        """Set where the plan goes on in thread (looked at on the next look)."""
        if self.cursor.get(thread) != seq:
            self.cursor[thread] = seq
            self.scope.add(thread)
            self.again.add(thread)

    def drop(self, thread: str) -> None:
        """Forget thread (it is gone)."""
        self.cursor.pop(thread, None)
        self.scope.discard(thread)
        self.pending.pop(thread, None)

    def _names(self) -> list[str]:
        if self.threads is not None:
            return self.threads
        names = self.waiting.names()
        if self.listed != self.waiting.folders.listings:
            self.listed = self.waiting.folders.listings
            for thread in names:
                if thread not in self.scope:  # came since: read it from its start
                    self.scope.add(thread)
                    self.cursor.setdefault(thread, 0)
                    self.again.add(thread)
        return names

    def _due(
        self, names: list[str], only: set[str] | None, tick: bool
    ) -> tuple[list[str], list[str]]:
        """Return the threads to look at now, and those to sweep (look closer only if their
        next file is there): all of them on a first look (or when the feed cannot say what
        changed), else those the feed named, those moved from outside and, on a timer tick,
        the busy ones, plus a sweep of the next slice of the rest (a bounded cost)."""
        if only is None or (tick and len(names) <= POLL_ALL_UPTO):
            return names, []
        picked = [t for t in sorted(only) if t in self.scope]
        picked += sorted(self.again)
        picked += self.pending
        swept: list[str] = []
        if tick:
            now = time.monotonic()
            hot = self.waiting.hot
            for thread, until in list(hot.items()):
                if until < now and thread not in self.pending:
                    hot.pop(thread, None)
            picked += [t for t in hot if t in self.scope]
            if names:
                native = self.waiting.wait_mode == "native"  # the tick: its safety re-check
                every = SAFETY_RECHECK_S if native else self.waiting.files.settings.poll_interval
                size = sweep_size(len(names), every)
                start = self.turn % len(names)
                self.turn = (start + size) % len(names)
                swept = names[start : start + size]  # wraps round: every thread in turn
                swept += names[: max(0, start + size - len(names))]
        due = list(dict.fromkeys(picked))
        return due, swept

    def check(self, only: set[str] | None = None, *, tick: bool = False) -> bool:
        """Read whatever is new past the cursor where it may be (see _due); return True if it
        found messages to return."""
        files = self.waiting.files
        due, swept = self._due(self._names(), only, tick)
        self.again.clear()
        self.cut = False
        if swept:
            base = f"{os.fspath(files.root)}/threads/"  # plain strings: one lstat per thread
            chosen = set(due)
            due += [
                t
                for t in swept
                if t not in chosen and exists(f"{base}{t}", self.cursor.get(t, 0) + 1)
            ]
        for i, thread in enumerate(due):
            if len(self.messages) >= self.limit:
                self.cut = True
                self.again.update(due[i:])  # looked at first next time
                break
            self._look_at(thread)
        self.looked = True
        return bool(self.messages)

    def _look_at(self, thread: str) -> None:
        """Read what is new in thread past the cursor, up to the limit."""
        files, log = self.waiting.files, self.waiting.log
        tdir = files.root / "threads" / thread
        seq = self.cursor.get(thread, 0)
        # The common case costs a stat of the next name and one of the folder.
        if not exists(tdir, seq + 1) and log.listings.beyond(thread, tdir, seq + 1) is None:
            self.pending.pop(thread, None)
            return
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
            return
        if self.cursor.get(thread) != seq:
            self.cursor[thread] = seq
            self.moved.add(thread)
        if self.looked:
            self.waiting.hot[thread] = time.monotonic() + HOT_S

    def take(self, *, timed_out: bool) -> Arrivals:
        """Return what was found, and start finding anew from where it ended."""
        got = Arrivals(
            self.messages,
            dict(self.cursor),
            timed_out,
            self.skipped,
            list(self.pending.values()),
        )
        self.messages, self.skipped = [], []
        return got
