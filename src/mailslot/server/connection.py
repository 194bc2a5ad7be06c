"""A client connection's life: its session, the presence heartbeat, the write of read
positions, and the watch that tells subscribed clients of new messages (`resources/updated`
in both protocol eras)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.shared.subscriptions import ResourcesListChanged, ResourceUpdated, ServerEvent

from mailslot.store.errors import MailslotError
from mailslot.tools import Session

log = logging.getLogger("mailslot.serve")


class CountingBus:
    """The SDK's in-memory subscriptions/listen bus, counting its listeners.

    Lets the server watch the folder for transcript updates only while a 2026-era client
    listens (or a handshake-era client subscribed), instead of waking on every post.
    """

    def __init__(self) -> None:
        self._bus = InMemorySubscriptionBus()
        self.listeners = 0
        self.on_change: Callable[[], None] = lambda: None

    async def publish(self, event: ServerEvent) -> None:
        await self._bus.publish(event)

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        unsubscribe = self._bus.subscribe(listener)
        self.listeners += 1
        self.on_change()
        done = False

        def counted_unsubscribe() -> None:
            nonlocal done
            if not done:
                done = True
                self.listeners -= 1
            unsubscribe()
            self.on_change()

        return counted_unsubscribe


@dataclass
class Connection:
    """What lives for one client connection (one stdio process serves one client)."""

    session: Session
    bus: CountingBus
    subscribed: set[str] = field(default_factory=set)
    legacy_session: Any = None  # the handshake-era session, captured at resources/subscribe
    watch_from: dict[str, int] | None = None  # where the folder watch continues; None: off
    watch_started: anyio.Event = field(default_factory=anyio.Event)

    def update_watch(self) -> None:
        """Start watching from now when the first subscriber comes; stop after the last."""
        active = bool(self.subscribed) or self.bus.listeners > 0
        if active and self.watch_from is None:
            self.watch_from = self.session.box.cursor()
            self.watch_started.set()
        elif not active:
            self.watch_from = None
            self.watch_started = anyio.Event()


async def _heartbeat(state: Connection) -> None:
    """Refresh this agent's presence every stale_after/3 seconds while the connection lives."""
    while True:
        await anyio.sleep(state.session.stale_after / 3)
        try:
            state.session.heartbeat()
        except MailslotError as e:
            log.warning("presence heartbeat failed: %s", e)


async def _flush_positions(session: Session) -> None:
    """Write read positions within save_every of a wait or read that moved them."""
    due = anyio.Event()
    session.reading.on_due = due.set
    while True:
        await due.wait()
        await anyio.sleep(session.reading.save_every)
        due = anyio.Event()
        session.reading.on_due = due.set
        session.flush_positions()


async def _watch_threads(state: Connection) -> None:
    """Tell a subscribed client about new messages in any thread, whoever wrote them."""
    box = state.session.box
    while True:
        cursor = state.watch_from
        if cursor is None:
            # Nobody listens: sleep until someone subscribes (most clients never do).
            await state.watch_started.wait()
            continue
        got = await box.wait_async(None, cursor, timeout=1, limit=1000)
        if state.watch_from is not cursor:
            continue  # unsubscribed (or re-subscribed) meanwhile
        state.watch_from = got.cursor
        for thread in sorted({m.thread for m in got.messages}):
            uri = f"mailslot://threads/{thread}/transcript"
            await state.bus.publish(ResourceUpdated(uri=uri))  # 2026-07-28 era
            if uri in state.subscribed and state.legacy_session is not None:
                await state.legacy_session.send_resource_updated(uri)  # handshake era
        if set(got.cursor) - set(cursor):
            await state.bus.publish(ResourcesListChanged())
            if state.legacy_session is not None:
                await state.legacy_session.send_resource_list_changed()


def connection_lifespan(
    make_session: Callable[[], Session], bus: CountingBus, holder: list[Connection]
) -> Callable[[MCPServer[Connection]], AbstractAsyncContextManager[Connection]]:
    """Return the connection lifespan: a session, its heartbeat and watch, closed at the end."""

    @asynccontextmanager
    async def lifespan(server: MCPServer[Connection]) -> AsyncIterator[Connection]:
        state = Connection(make_session(), bus)
        bus.on_change = state.update_watch
        holder[:] = [state]
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_heartbeat, state)
                tg.start_soon(_flush_positions, state.session)
                tg.start_soon(_watch_threads, state)
                try:
                    yield state
                finally:
                    tg.cancel_scope.cancel()
        finally:
            state.session.close()

    return lifespan
