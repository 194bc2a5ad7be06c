"""`mailslot serve`: the tools of mailslot.tools over MCP on stdio, one process per agent.

This is the single place where library errors become what the model reads (ToolError text),
and where the server is put together: tools/list and tools/call with progress during waits,
the resources and prompts (`mailslot.server`), Claude Code channel pushes
(`mailslot.clients.channels`), and the stdio transport, until the client leaves or a signal.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp.types import (
    CONNECTION_CLOSED,
    CallToolRequestParams,
    CallToolResult,
    ListToolsResult,
    PaginatedRequestParams,
    TextContent,
)
from pydantic import ValidationError

from mailslot import __version__
from mailslot.clients.channels import CHANNEL, push_news
from mailslot.mailbox import Mailbox
from mailslot.server.arguments import (
    argument_text,
    numeric,
    unknown_text,
    unknown_tool_text,
    usage,
)
from mailslot.server.connection import Connection, CountingBus, connection_lifespan
from mailslot.server.instructions import instructions
from mailslot.server.prompts import add_prompts
from mailslot.server.resources import add_resources, add_subscriptions
from mailslot.server.tool_list import argument_model, tool_list
from mailslot.server.transport import on_event_loop, stdio
from mailslot.store.errors import (
    InvalidName,
    LoopRefused,
    MailslotError,
    NameTaken,
    NoSuchAgent,
    NoSuchMessage,
    NoSuchThread,
    TaskError,
)
from mailslot.tools import PROGRESS, TOOL_NAMES, Session

log = logging.getLogger("mailslot.serve")


# A busy conversation writes each agent's read positions once a second, not after each wait
# (a file replaced per message is a fifth of what a wake costs); a server killed in that
# second shows those messages again after its restart: at least once, never skipped.
POSITIONS_EVERY_S = 1.0


def model_text(e: MailslotError) -> str:
    """Return what the model reads for a library error: what went wrong and its next call."""
    if isinstance(e, NoSuchThread):
        near = f"; threads with similar names: {', '.join(e.suggestions)}" if e.suggestions else ""
        return (f"no thread {e.thread!r}{near}; call thread_list to see the threads, or "
                "thread_create(topic) to start one")  # fmt: skip
    if isinstance(e, NoSuchAgent):
        known = ", ".join(e.known) if e.known else "none yet"
        return f"no agent {e.agent!r} (known agents: {known}); call agent_list to see who is here"
    if isinstance(e, NoSuchMessage):
        return f"{e}; call msg_list to see the thread's messages"
    if isinstance(e, NameTaken):
        return f"{e} with agent_register(name=...)"
    if isinstance(e, TaskError):
        return f"{e}; task_list shows the tasks and their status"
    if isinstance(e, InvalidName) and e.kind == "thread id":
        return (f"{e}; pass a thread id (see thread_list) or the topic of an existing thread, "
                "or start one with thread_create(topic)")  # fmt: skip
    if isinstance(e, LoopRefused):
        return (f"{e}. With the tools: a summary for the person goes in "
                "msg_post(type='status') (status posts are never refused), then msg_wait for a "
                "person's answer")  # fmt: skip
    return str(e)


def _client_name(ctx: Any) -> str | None:
    try:
        params = ctx.session.client_params
    except (AttributeError, RuntimeError):
        return None
    info = getattr(params, "client_info", None)
    return getattr(info, "name", None)


class _Waits:
    """The waits in flight, ended when the client closes stdin (end): every other request
    read is finished and answered before the server exits, but a wait of minutes must not
    hold that up."""

    def __init__(self) -> None:
        self.scopes: set[anyio.CancelScope] = set()
        self.ended = False

    def end(self) -> None:
        self.ended = True
        for scope in self.scopes:
            scope.cancel()

    @contextlib.contextmanager
    def scope(self) -> Iterator[anyio.CancelScope]:
        """Return a scope that end() cancels (at once if it has run)."""
        with anyio.CancelScope() as scope:
            if self.ended:
                scope.cancel()
            self.scopes.add(scope)
            try:
                yield scope
            finally:
                self.scopes.discard(scope)


class _Tools:
    """tools/list and tools/call, served straight from the low-level server.

    The high-level server's tool machinery (a context object, resolvers, result conversion)
    cost a third of the server's CPU per call; this keeps what clients see: the same tool
    list, argument errors as readable text (argument_text), library errors as the model's
    next step (model_text), progress during waits, and cancellation (the SDK's, per request).
    """

    def __init__(self, current: Callable[[], Connection], waits: _Waits) -> None:
        self.current = current
        self.waits = waits
        self.listed = ListToolsResult(tools=tool_list())
        self.schemas = {t.name: t.input_schema for t in self.listed.tools}
        self.is_async = {n: inspect.iscoroutinefunction(getattr(Session, n)) for n in TOOL_NAMES}
        self.arguments: dict[str, FuncMetadata] = {}  # made at each tool's first call

    async def list(self, ctx: Any, params: PaginatedRequestParams | None) -> ListToolsResult:
        return self.listed

    async def call(self, ctx: Any, params: CallToolRequestParams) -> CallToolResult:
        name = params.name
        if name not in self.schemas:
            return _failed(unknown_tool_text(name))
        try:
            text = await self.run(name, ctx, params.arguments or {})
        except ToolError as e:
            # What the SDK's tools say: the model knows where the words come from.
            return _failed(f"Error executing tool {name}: {e}")
        except MCPError:
            raise
        except Exception:  # a crash: its text stays in the log, not in the model's context
            log.exception("tool %s failed", name)
            return _failed(f"Error executing tool {name}")
        return CallToolResult(content=[TextContent(type="text", text=text)])

    async def run(self, name: str, ctx: Any, arguments: dict[str, Any]) -> str:
        """Return what the tool answers, as compact JSON; raise ToolError for the model."""
        args = self.arguments.get(name)
        if args is None:
            args = self.arguments[name] = argument_model(name)
        props = self.schemas[name].get("properties", {})
        unknown = [a for a in arguments if a not in props]
        if unknown:  # the SDK's argument model would drop them: a recipient lost, say
            raise ToolError(unknown_text(name, unknown, self.schemas[name]))
        flags = [a for a, v in arguments.items() if isinstance(v, bool) and numeric(props[a])]
        if flags:  # pydantic reads true as 1: task_claim(seq=true) would claim task 1
            wrong = [f"'{a}' must be a number, not {str(arguments[a]).lower()}" for a in flags]
            raise ToolError(f"{'; '.join(wrong)}. {usage(name, self.schemas[name])}")
        try:
            kwargs = args.validate_arguments(arguments)
        except ValidationError as e:
            raise ToolError(argument_text(name, e, self.schemas[name])) from None
        session = self.current().session
        session.touch()  # a sign of work; written for others when a short hold needs it
        if session.client is None:
            session.client = _client_name(ctx)

        async def progress(done: float, message: str) -> None:
            await ctx.session.report_progress(done, None, message)

        token = PROGRESS.set(progress)
        try:
            result = getattr(session, name)(**kwargs)
            if self.is_async[name]:
                with self.waits.scope() as ended:
                    result = await result
                if ended.cancelled_caught:
                    raise MCPError(CONNECTION_CLOSED, f"{name} ended: the client closed stdin")
            # Compact JSON: the model reads it as well as indented JSON, for fewer tokens.
            return json.dumps(result, ensure_ascii=False, separators=(",", ":"))
        except MailslotError as e:
            raise ToolError(model_text(e)) from None
        finally:
            PROGRESS.reset(token)


def _failed(text: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


def create_server(
    make_session: Callable[[], Session],
    *,
    agent: str | None = None,
    lang: str | None = None,
    was: str | None = None,
    channel: bool = False,
    waits: _Waits | None = None,
) -> MCPServer[Connection]:
    """Return the MCP server whose connection lifespan runs the session make_session returns.

    waits: where its waits in flight are ended (when the client closes stdin).
    """
    holder: list[Connection] = []  # the state of the one connection this process serves

    def current() -> Connection:
        if not holder:
            raise ResourceError("the server is not connected yet")
        return holder[-1]

    bus = CountingBus()
    server: MCPServer[Connection] = MCPServer(
        "mailslot",
        version=__version__,
        instructions=instructions(agent, lang, was, channel=channel),
        lifespan=connection_lifespan(make_session, bus, holder),
        subscriptions=bus,
    )
    tools = _Tools(current, waits or _Waits())
    low = server._lowlevel_server
    low.add_request_handler("tools/list", PaginatedRequestParams, tools.list)
    low.add_request_handler("tools/call", CallToolRequestParams, tools.call)
    add_resources(server, current, model_text)
    add_prompts(server, current, model_text)
    add_subscriptions(server, current)
    return server


def serve(
    root: str,
    *,
    agent: str | None = None,
    lang: str | None = None,
    wait_default: float = 50.0,
    wait_max: float = 600.0,
    stale_after: float = 30.0,
    wait_mode: str | None = None,
    strict_name: bool = False,
    channel: bool = False,
) -> None:
    """Serve MCP over stdio for one agent until the client closes stdin.

    channel: declare Claude Code's channel capability and push what is new for the agent
    while it is not waiting (see mailslot.clients.channels).
    """
    box = Mailbox(root, wait_mode=wait_mode)
    session = Session(
        box, agent=agent, lang=lang, wait_default=wait_default, wait_max=wait_max,
        stale_after=stale_after, strict_name=strict_name, save_every=POSITIONS_EVERY_S,
    )  # fmt: skip
    if session.fallback_from:
        log.warning(
            "agent name %r is in use by another live session; serving as %r "
            "(serve --strict-name refuses instead)",
            session.fallback_from,
            session.agent,
        )
    waits = _Waits()
    server = create_server(
        lambda: session, agent=session.agent, lang=lang, was=session.fallback_from,
        channel=channel, waits=waits,
    )  # fmt: skip
    try:
        anyio.run(_until_stopped, lambda: _run(server, session, waits, channel=channel))
    finally:
        session.close()
        box.close()


async def _run(
    server: MCPServer[Connection], session: Session, waits: _Waits, *, channel: bool
) -> None:
    """Serve server on stdin and stdout until the client closes stdin (waits end at once)."""
    low = server._lowlevel_server
    async with stdio(on_eof=waits.end) as (read, write):
        options = low.create_initialization_options(
            NotificationOptions(resources_changed=True),
            experimental_capabilities={CHANNEL: {}} if channel else None,
        )
        if not channel:
            await low.run(read, write, options)
            return
        # The client may be sent pushes once it says the handshake is done; a 2026-era
        # client (no handshake) never does, and that era has no way to carry them.
        inner, relayed = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        ready = anyio.Event()

        async def relay() -> None:
            async with inner:
                async for item in read:
                    if (
                        isinstance(item, SessionMessage)
                        and getattr(item.message, "method", None) == "notifications/initialized"
                    ):
                        ready.set()
                    await inner.send(item)

        async with anyio.create_task_group() as tg:
            tg.start_soon(relay)
            tg.start_soon(push_news, session, write, ready)
            await low.run(relayed, write, options)
            tg.cancel_scope.cancel()


async def _until_stopped(run: Callable[[], Awaitable[None]]) -> None:
    """Await run(), or stop it at SIGTERM or SIGHUP.

    Those signals (how many clients stop a server) end serving as stdin closing does: the
    lifespan closes the session, which writes what positions are due. (On a terminal the
    SDK's reader thread could not be interrupted: the signals stay fatal.)
    """
    if not on_event_loop():
        await run()
        return
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()

        tg.start_soon(stop_on_signal)
        await run()
        tg.cancel_scope.cancel()
