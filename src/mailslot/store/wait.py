"""Waiting: block until messages newer than a cursor exist, in one thread, several, or all.

A wait checks first; only a wait that must block subscribes to the process's watcher (watch),
checks again, then sleeps: no wake-up is lost between checking and sleeping, and a process
whose waits always find something (a worker taking task after task) never pays for file
events. The watcher starts with the first wait that blocks and lives as long as the mailbox;
until then every look still sees what mailslot's writers told in ``.state/news``, and the look
of the wait that started it covers every thread the wait is on (files other writers, such as
git, made before the watch began). Events are hints; every check re-reads the folder from the
cursor through the thread log, so a lost or late event costs latency, never a message. Waiters
also re-check on a timer: every ``poll_interval`` where native events cannot see other
machines' writes, every ``PENDING_RECHECK_S`` while a message is still arriving, and every
``SAFETY_RECHECK_S`` otherwise. A wait never holds a lock.

What a look costs follows what changed, not how many threads there are: file events name their
thread, and the process keeps them in a ``Feed``; a wait's first look covers every thread it
waits on, and each look after only the threads named since (plus, on a timer tick, the busy
threads and a slice of the others in turn). A wait kept across calls (``Mailbox.wait_plan``:
an agent's inbox) carries its cursor and its place in the feed from one call to the next, so
even the first look of a new call looks only where something changed. Every look first reads
what mailslot's writers told in ``.state/news`` since the last (see news): a message stored
before a look began is seen by it, even while its file event is still on its way.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from mailslot.store.errors import InvalidMessage
from mailslot.store.feed import Feed, ThreadFolders
from mailslot.store.files import Files
from mailslot.store.format import Message
from mailslot.store.log import MAX_PAGE, ThreadLog
from mailslot.store.names import check_name
from mailslot.store.news import NewsReader
from mailslot.store.plan import (
    HOT_S,
    POLL_SLICE,
    SWEEP_TICK_S,
    Arrivals,
    WaitPlan,
    sweep_size,
)
from mailslot.store.watch import Watcher, filesystem_type, is_network_fs

__all__ = ["POLL_SLICE", "Arrivals", "WaitPlan", "Waiting", "sweep_size"]

log = logging.getLogger("mailslot")

SAFETY_RECHECK_S = 5.0
PENDING_RECHECK_S = 0.1


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
        self._unfeed: Callable[[], None] = lambda: None  # ends the feed's subscription
        self.folders = ThreadFolders(files, self.feed)
        #: What mailslot's writers told in .state/news (see news): read at every look.
        self.news = NewsReader(files.root)
        self._news_lock = threading.Lock()
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

    def subscribe(self, signal: Callable[[], None]) -> tuple[Callable[[], None], bool]:
        """Have file events call signal (after the feed noted them).

        The first subscription starts the process's watcher, and the feed hears every event
        from then on until close(), between waits too (subscribed first, it is told first).
        Return the unsubscriber and whether this call started the watcher (what changed
        before it began is unknown to the feed: the caller looks at every thread once)."""
        if self.wait_mode == "poll":
            return lambda: None, False
        began = False
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
                    return lambda: None, False
                self._unfeed = watcher.subscribe(self.feed.note)
                self.watcher, began = watcher, True
            watcher = self.watcher
        return watcher.subscribe(lambda thread: signal()), began

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
        plan.every = self._tick(plan)
        return plan.every

    def _tick(self, plan: WaitPlan) -> float:
        if any(not p.blocked for p in plan.pending.values()):
            # Something is still arriving: look again soon, both to read it once it is whole
            # and to step past it once its grace period is over.
            return min(PENDING_RECHECK_S, self.files.settings.poll_interval)
        if self.wait_mode != "native":
            interval = self.files.settings.poll_interval
            now = time.monotonic()
            if any(until > now and t in plan.scope for t, until in self.hot.items()):
                return interval  # a busy thread: looked at every interval
            return max(interval, SWEEP_TICK_S)  # only the sweep: in bigger steps, as often
        # Right after a new thread appears, re-check often: its first message may land before
        # the observer has added a watch for its folder.
        return 0.05 if self.fresh_until > time.monotonic() else SAFETY_RECHECK_S

    def look(self, plan: WaitPlan, *, tick: bool = False) -> bool:
        """Look once where plan needs to (see WaitPlan.check); return True if it found
        messages to return."""
        with self._news_lock:  # what writers told before this look: seen by it
            self.feed.note_all(self.news.read())
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
        unsubscribe: Callable[[], None] | None = None
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
                if unsubscribe is None:  # it must block: events wake it from now on
                    unsubscribe, began = self.subscribe(flag.set)
                    if began:
                        plan.mark = None  # files made before the watch began: all looked at
                    continue  # and what came during that look is looked at now
                every = self.tick(plan)
                tick = not flag.wait(min(remaining, every)) and remaining >= every
        finally:
            if unsubscribe is not None:
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
        rang = False

        def signal() -> None:  # runs on the observer thread: only hand over to the loop
            loop.call_soon_threadsafe(woken.set)

        def ring() -> None:  # the timer (a plain callback: cheaper than a task per tick)
            nonlocal rang
            rang = True
            woken.set()

        unsubscribe: Callable[[], None] | None = None
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
                if unsubscribe is None:  # as in wait()
                    unsubscribe, began = self.subscribe(signal)
                    if began:
                        plan.mark = None
                    continue
                every = self.tick(plan)
                rang = False
                timer = loop.call_later(min(remaining, every), ring)
                try:
                    await woken.wait()
                finally:
                    timer.cancel()
                tick = rang and remaining >= every  # a tick, not the end of the wait
        finally:
            if unsubscribe is not None:
                unsubscribe()

    def close(self) -> None:
        """Stop watching (the process's observer stops with its last user); safe to repeat."""
        with self._watch_lock:
            watcher, self.watcher = self.watcher, None
            self._unfeed()  # the watcher may live on for other mailboxes of the process
            self._unfeed = lambda: None
        with self._news_lock:
            self.news.close()
        if watcher is not None:
            watcher.release()
