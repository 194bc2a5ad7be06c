"""A wait's plan: which threads it looks at, its cursor, and what it found.

A plan is looked at by ``Waiting`` (wait.py) on each wake: its first look covers every thread
it waits on; each look after, the threads the feed named since, those moved from outside, and,
on a timer tick, the busy threads plus a sweep of a slice of the quiet ones in turn (one lstat
each of the next file name). A plan kept by its caller (``Mailbox.wait_plan``) carries all of
that from one run to the next.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mailslot.store.errors import NotFound, RootError
from mailslot.store.files import exists
from mailslot.store.format import Damage, Message, Pending

if TYPE_CHECKING:
    from mailslot.store.wait import Waiting

# Timer ticks: a tick looks at the threads active in the last HOT_S seconds and at those
# mailslot's writers told in .state/news, and sweeps the others with one lstat each of the next
# file name (every DEEP_EVERY rounds, as closely as a named thread: a gap before the next file
# is seen too), a slice in turn (sweep_size), so an idle waiter's cost does not grow with idle
# threads. A foreign write (git, rsync) from another machine into a long-quiet thread is seen
# within a sweep (SWEEP_S up to SWEEP_PER_S * SWEEP_S threads, then threads / SWEEP_PER_S
# seconds); local writes wake at once through file events, which name their thread.
POLL_SLICE = 64
SWEEP_S = 5.0  # a sweep of the quiet threads aims to come round in this time...
SWEEP_PER_S = 640  # ...looking at no more than this many threads a second...
SWEEP_TICK_S = 0.5  # ...in ticks this far apart while no thread is busy (fewer wake-ups)
DEEP_EVERY = 16  # each this many rounds, a sweep looks as closely as at a thread named
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
        self.rounds = 1  # rounds the sweep made over all the threads
        self.listed = -1  # the listing of threads/ whose threads scope holds
        self.every = waiting.files.settings.poll_interval  # the timer tick (Waiting.tick)
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
        """Return the threads to look at now, and those to sweep (looked at closer only if
        their next file is there): all of them on a first look (or when the feed cannot say
        what changed), else those the feed named, those moved from outside and, on a timer
        tick, the busy ones, plus a sweep of the next slice of the rest: a bounded cost."""
        if only is None:
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
                size = sweep_size(len(names), self.every)
                start = self.turn % len(names)
                self.turn = (start + size) % len(names)
                swept = names[start : start + size]  # wraps round: every thread in turn
                swept += names[: max(0, start + size - len(names))]
                self.rounds += start + size >= len(names)
        return list(dict.fromkeys(picked)), swept

    def check(self, only: set[str] | None = None, *, tick: bool = False) -> bool:
        """Read whatever is new past the cursor where it may be (see _due); return True if it
        found messages to return."""
        files = self.waiting.files
        due, swept = self._due(self._names(), only, tick)
        self.again.clear()
        self.cut = False
        if swept:
            chosen = set(due)
            if self.rounds % DEEP_EVERY == 0:  # a gap before the next file: see past it too
                due += [t for t in swept if t not in chosen]
            else:
                base = f"{os.fspath(files.root)}/threads/"  # plain strings: one lstat each
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
        """Return what was found, and start finding anew from where it ended. The arrivals'
        cursor is the plan's own (not a copy, which would cost every thread): it moves on
        with the next run."""
        got = Arrivals(
            self.messages,
            self.cursor,
            timed_out,
            self.skipped,
            list(self.pending.values()),
        )
        self.messages, self.skipped = [], []
        return got
