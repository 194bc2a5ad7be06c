"""The resources `mailslot serve` offers (threads, agents, reservations, settings, a thread's
transcript and state) and the handshake-era resources/subscribe to their updates."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError
from mcp.types import EmptyResult, SubscribeRequestParams, UnsubscribeRequestParams

from mailslot.coordination.reservations import held_view
from mailslot.server.connection import Connection
from mailslot.store.errors import MailslotError
from mailslot.tools import Session
from mailslot.views.model import thread_view
from mailslot.views.transcript import transcript_markdown


def add_resources(
    server: MCPServer[Connection],
    current: Callable[[], Connection],
    model_text: Callable[[MailslotError], str],
) -> None:
    """Offer the resources on server; a library error reads as model_text says."""

    def read(fn: Callable[[Session], Any]) -> str:
        try:
            value = fn(current().session)
        except MailslotError as e:
            raise ResourceError(model_text(e)) from None
        return value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)

    @server.resource("mailslot://threads", mime_type="application/json",
                     description="Threads, most recently active first")  # fmt: skip
    def threads() -> str:
        return read(lambda s: s.thread_list(limit=200))

    @server.resource("mailslot://agents", mime_type="application/json",
                     description="Agents and their presence")  # fmt: skip
    def agents() -> str:
        return read(lambda s: s.agent_list())

    @server.resource("mailslot://reservations", mime_type="application/json",
                     description="Who holds which paths, until when, and why")  # fmt: skip
    def reservations() -> str:
        def held(s: Session) -> list[dict[str, Any]]:
            return [held_view(h, s.box.reservations.until(h)) for h in s.box.reservations.live()]

        return read(held)

    @server.resource("mailslot://config", mime_type="application/json",
                     description="This bus's settings")  # fmt: skip
    def config() -> str:
        return read(lambda s: s.bus_get_config())

    @server.resource("mailslot://threads/{thread}/transcript", mime_type="text/markdown",
                     description="A thread as Markdown, every message in seq order")  # fmt: skip
    def transcript(thread: str) -> str:
        return read(lambda s: transcript_markdown(s.box, thread))

    @server.resource("mailslot://threads/{thread}/state", mime_type="application/json",
                     description="A thread's state, head, participants, summary")  # fmt: skip
    def thread_state(thread: str) -> str:
        return read(lambda s: thread_view(s.box.thread(thread)))


def add_subscriptions(server: MCPServer[Connection], current: Callable[[], Connection]) -> None:
    """Handle resources/subscribe of handshake-era clients (2026-era ones use the bus)."""

    async def on_subscribe(ctx: Any, params: SubscribeRequestParams) -> EmptyResult:
        state = current()
        state.subscribed.add(str(params.uri))
        state.legacy_session = ctx.session
        state.update_watch()
        return EmptyResult()

    async def on_unsubscribe(ctx: Any, params: UnsubscribeRequestParams) -> EmptyResult:
        current().subscribed.discard(str(params.uri))
        current().update_watch()
        return EmptyResult()

    low = server._lowlevel_server
    low.add_request_handler("resources/subscribe", SubscribeRequestParams, on_subscribe)
    low.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, on_unsubscribe)
