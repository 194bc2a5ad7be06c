"""A seat: one process acting as one agent, from taking its name to leaving.

The seat holds the agent's name (a presence lock: one live process per name), keeps its presence
file saying online or waiting, and remembers the tasks and file reservations this process holds,
so that a sign of work reaches the presence file before a short lease or TTL runs out
(``leases.Activity``) and so that a clean exit gives them back. A crash gives nothing back: its
holds end when the process is seen dead, and a task's failed attempt is counted then.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

from mailslot.coordination.leases import Activity
from mailslot.coordination.reservations import Held
from mailslot.store.errors import MailslotError, NameTaken, NoSuchAgent, NotFound
from mailslot.store.files import HOST
from mailslot.store.format import Message
from mailslot.store.presence import NameHold

if TYPE_CHECKING:
    from mailslot.mailbox import Mailbox

log = logging.getLogger("mailslot")

# A wait still blocked after this long says so in the agent's presence file; one that returns
# sooner writes nothing there (two file writes saved per message in a busy conversation).
MARK_WAITING_S = 0.5
# Waits on one thread (or the inbox) each begun within this long of the last one's end are one
# stretch of waiting: its start is what the presence file says it waits since.
AGAIN_WITHIN_S = 10.0


def client_slug(client: str | None) -> str:
    """Return a readable agent name made from a client's name ('Claude Code' -> 'claude-code')."""
    slug = re.sub(r"[^a-z0-9]+", "-", (client or "").lower()).strip("-")
    slug = re.sub(r"-(mcp-client|client|mcp)$", "", slug)
    return slug[:40].strip("-") or "agent"


class Seat:
    """One process's seat as an agent of box: its name, its presence, what it holds.

    on_rename is called before a second name replaces the first (what was read so far
    belongs to the old name).
    """

    def __init__(
        self,
        box: Mailbox,
        *,
        client: str | None,
        stale_after: float,
        on_rename: Callable[[], None] = lambda: None,
    ) -> None:
        self.box = box
        self.client = client
        self.stale_after = stale_after
        self.on_rename = on_rename
        self.last_active = time.time()  # when a tool was last called (see touch)
        self.activity = Activity()  # this process's holds: when touch() writes presence
        self._hold: NameHold | None = None
        self._waits = 0
        self._waiting_on: str | None = None
        self._waiting_since = 0.0  # when this stretch of waits on _waiting_on began
        self._last_wait: tuple[str, float] | None = None  # what the last wait was on, its end
        self._status_written = "online"  # the status the presence file has from this seat

    @property
    def name(self) -> str | None:
        """Return the agent name taken, or None before one is."""
        return self._hold.name if self._hold is not None else None

    def take(self, name: str) -> None:
        """Take name (a second name replaces the first); raise NameTaken if a live process
        holds it. The agent's card is written if it has none, or names another client."""
        taken = time.time()
        hold = self.box.agents.hold_name(name, client=self.client, stale_after=self.stale_after)
        self.activity.written = taken  # its presence says active since (at least) then
        if self._hold is not None:
            self.on_rename()
            self.activity.holds.clear()  # the new name holds nothing
            self.box.agents.release_name(self._hold)
        self._hold = hold
        try:
            card = self.box.agents.card(name)
        except NoSuchAgent:
            card = None
        except MailslotError:
            card = None
        if card is None or (self.client and card.client != self.client):
            self.box.agents.register(name, client=self.client)
        try:  # its key: made here once, on its card, trusted here (coordination/trust.py)
            self.box.trust.own(name)
        except MailslotError as e:
            log.warning("%s posts unsigned: %s", name, e)

    def take_free(self, base: str) -> str:
        """Take base, or its first free numbered variant; return the name taken."""
        for n in range(1, 100):
            name = base if n == 1 else f"{base[:60]}-{n}"
            try:
                self.take(name)
            except NameTaken:
                continue
            return name
        raise NameTaken(base, "and 98 numbered variants")

    # ------------------------------------------------------------------ presence

    def heartbeat(self) -> None:
        """Refresh the presence file and forget the holds this process lost."""
        if self._hold is not None:
            self._write_presence()
            self._forget_lost_holds()

    def touch(self) -> None:
        """Note a sign of work, written to the presence file when a short lease or TTL this
        process holds needs it there sooner than the heartbeat (see leases.Activity)."""
        self.last_active = time.time()
        if self._hold is not None and self.activity.due(self.last_active):
            self._write_presence()

    def _write_presence(self) -> None:
        assert self._hold is not None
        status = "waiting" if self._waits else "online"
        active = self.last_active
        self.box.agents.set_presence(
            self._hold.name, status, waiting_on=self._waiting_on, last_active=active,
            waiting_since=self._waiting_since if self._waits else None,
        )  # fmt: skip
        self._status_written = status
        self.activity.written = active

    def show_status(self) -> bool:
        """Bring the presence file's status up to date if it says otherwise (a heartbeat);
        return True if it did."""
        if self._hold is None or self._status_written == ("waiting" if self._waits else "online"):
            return False
        self.heartbeat()
        return True

    @contextlib.contextmanager
    def waiting(self, on: str) -> Iterator[None]:
        """Count a wait on a thread (or "inbox") for as long as the block runs."""
        now = time.time()
        last = self._last_wait
        if not self._waits and (last is None or last[0] != on or now - last[1] > AGAIN_WITHIN_S):
            self._waiting_since = now  # not the same wait called again: a new stretch
        self._waits += 1
        self._waiting_on = on
        try:
            yield
        finally:
            self._waits -= 1
            if not self._waits:
                self._waiting_on = None
                self._last_wait = (on, time.time())

    def waiting_for(self, m: Message) -> bool:
        """Return True if this agent is blocked in a wait that will return m."""
        on = self._waiting_on
        return bool(self._waits) and (on == "inbox" or on == m.thread)

    # ------------------------------------------------------------------ holds

    def _forget_lost_holds(self) -> None:
        """Forget the remembered holds this process no longer has (closed, lost, expired)."""
        me, pid = self.name, os.getpid()
        files: list[Held] | None = None
        for key in list(self.activity.holds):
            try:
                if key[0] == "task":
                    t = self.box.tasks.board(key[1]).tasks.get(key[2])
                    ours = t is not None and t.held_by(me, pid)
                else:
                    if files is None:
                        files = self.box.reservations.live(stale_after=self.stale_after)
                    ours = any(
                        (h.pattern, h.holder, h.pid, h.host) == (key[1], me, pid, HOST)
                        for h in files
                    )
            except NotFound:
                ours = False  # its thread is gone
            except MailslotError:
                continue  # unreadable now: keep it (a write too many costs less than a loss)
            if not ours:
                self.activity.drop(key)

    def leave(self) -> None:
        """Give back this process's tasks and file reservations, mark the agent offline and
        let its name go."""
        if self._hold is None:
            return
        me = self._hold.name
        self._give_back_tasks(me)
        with contextlib.suppress(MailslotError):
            mine = [h for h in self.box.reservations.live() if h.holder == me]
            if any(h.pid == os.getpid() for h in mine):
                self.box.reservations.release(
                    [h.pattern for h in mine if h.pid == os.getpid()], agent=me
                )
        self.box.agents.release_name(self._hold)
        self._hold = None

    def _give_back_tasks(self, me: str) -> None:
        """Release the tasks this process holds: a clean exit (an IDE restart) fails no
        attempt, as task_claim(release=true) would not; a crash still does."""
        for key in [k for k in self.activity.holds if k[0] == "task"]:
            thread, seq = str(key[1]), int(key[2])
            with contextlib.suppress(MailslotError):
                t = self.box.tasks.board(thread).tasks.get(seq)
                if t is not None and t.held_by(me, os.getpid()):
                    self.box.tasks.release(thread, seq, agent=me, reason="its server stopped")
            self.activity.drop(key)


class Pace:
    """A seat's duties while one of its waits blocks (inbox.Pace): a sign of work for short
    holds, the presence file's "waiting" once the wait lasts, and progress to report.

    show_status brings the presence file's status up to date; report, if any, is told every
    progress_every seconds that the wait goes on.
    """

    def __init__(
        self,
        seat: Seat,
        progress_every: float,
        report: Callable[[float, str], Awaitable[None]] | None,
        show_status: Callable[[], None],
    ) -> None:
        self.seat = seat
        self.progress_every = progress_every
        self.report = report
        self.show_status = show_status
        self.reported = 0.0  # seconds into the wait of the last progress report

    def limit(self, waited: float) -> float:
        """Do the seat's duties at waited seconds in; return the longest next step."""
        step = self.progress_every
        if (every := self.seat.activity.every()) is not None:
            self.seat.touch()  # blocked in a call is at work: short holds stay held meanwhile
            step = min(step, every)
        if waited >= MARK_WAITING_S:
            self.show_status()  # still blocked: say "waiting"
        else:
            step = min(step, MARK_WAITING_S - waited)
        return step

    async def progress(self, waited: float, where: str) -> None:
        """Report that the wait on where goes on, if progress_every has passed since the last."""
        if self.report is not None and waited - self.reported >= self.progress_every - 0.01:
            self.reported = waited
            await self.report(waited, f"waiting on {where}: {waited:.0f}s")
