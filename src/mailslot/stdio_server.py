"""`mailslot serve`: the tools of mailslot.tools over MCP on stdio, one process per agent.

This is the single place where library errors become what the model reads (ToolError text),
and where MCP specifics live: progress during waits, resources and their `resources/updated`
notifications for both protocol eras, prompts, and the presence heartbeat.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import json
import logging
import re
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata, func_metadata
from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp.shared.subscriptions import ResourcesListChanged, ResourceUpdated, ServerEvent
from mcp.types import (
    CONNECTION_CLOSED,
    INVALID_PARAMS,
    CallToolRequestParams,
    CallToolResult,
    EmptyResult,
    JSONRPCNotification,
    ListToolsResult,
    PaginatedRequestParams,
    SubscribeRequestParams,
    TextContent,
    ToolAnnotations,
    UnsubscribeRequestParams,
)
from mcp.types import Tool as MCPTool
from pydantic import ValidationError

from mailslot import __version__
from mailslot.coordination.notices import Notices, reportable
from mailslot.coordination.reservations import held_view
from mailslot.mailbox import Mailbox
from mailslot.server.transport import on_event_loop, stdio
from mailslot.store.errors import (
    InvalidName,
    MailslotError,
    NameTaken,
    NoSuchAgent,
    NoSuchMessage,
    NoSuchThread,
    TaskError,
)
from mailslot.store.format import Message
from mailslot.tools import PROGRESS, TOOL_NAMES, Session, thread_view, transcript_markdown

log = logging.getLogger("mailslot.serve")

# A busy conversation writes each agent's read positions once a second, not after each wait
# (a file replaced per message is a fifth of what a wake costs); a server killed in that
# second shows those messages again after its restart: at least once, never skipped.
POSITIONS_EVERY_S = 1.0

READ_ONLY = {
    "thread_list", "thread_get", "msg_list", "msg_wait", "msg_search", "task_list",
    "agent_list", "bus_get_config",
}  # fmt: skip
# Names models reach for that a tool calls otherwise, tried in order (the first the tool has);
# difflib finds the rest (after_sq, tread, ...).
SYNONYMS = {
    "to": ("recipients", "recipient", "addressees", "agents", "for", "cc", "mention", "mentions"),
    "reply_to": ("in_reply_to", "reply", "parent", "reply_seq", "replying_to", "respond_to"),
    "after_seq": ("after", "since_seq", "from_seq", "last_seq", "next_after_seq", "cursor"),
    "content": ("body", "text", "message", "msg", "markdown", "contents"),
    "query": ("q", "text", "search", "terms", "keywords"),
    "timeout_s": ("timeout", "timeout_seconds", "wait_s", "seconds", "wait", "timeout_ms"),
    "thread": ("thread_id", "topic", "channel", "room", "thread_name", "conversation"),
    "topic": ("title", "subject", "name", "thread"),
    "type": ("kind", "message_type", "msg_type"),
    "idempotency_key": ("key", "dedupe_key", "idempotency", "request_id"),
    "sender": ("from", "author", "agent"),
    "seq": ("task", "task_seq", "task_id", "id", "message_seq"),
    "paths": ("path", "files", "file", "globs", "patterns"),
    "state": ("status",),
    "status": ("state",),
    "lease_s": ("lease", "lease_seconds", "ttl", "ttl_s"),
    "ttl_s": ("ttl", "lease_s", "lease", "expires_s"),
    "limit": ("max", "count", "n", "page_size", "max_results", "top_k"),
    "name": ("agent", "agent_name", "agent_id"),
}


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
    return str(e)


class _CountingBus:
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
class _State:
    """What lives for one client connection (one stdio process serves one client)."""

    session: Session
    bus: _CountingBus
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


def _client_name(ctx: Any) -> str | None:
    try:
        params = ctx.session.client_params
    except (AttributeError, RuntimeError):
        return None
    info = getattr(params, "client_info", None)
    return getattr(info, "name", None)


def _describe(name: str, args: FuncMetadata) -> MCPTool:
    """Return the tool for Session.<name> as tools/list shows it."""
    method = getattr(Session, name)
    return MCPTool(
        name=name,
        # What the model reads, without what it does not need: pydantic's titles repeat each
        # property's name, and docstrings carry their source indentation.
        description=" ".join((method.__doc__ or "").split()),
        input_schema=_untitled(args.arg_model.model_json_schema(by_alias=True)),
        # Only the hint that differs from the protocol's default (not read-only) is sent.
        annotations=ToolAnnotations(read_only_hint=True) if name in READ_ONLY else None,
    )


def _arguments(name: str) -> FuncMetadata:
    """Return the SDK's argument model of Session.<name>, with its JSON pre-parsing."""
    return func_metadata(getattr(Session, name), skip_names=["self"], structured_output=False)


def _tool_list() -> list[MCPTool]:
    """Return the tools as tools/list shows them, from a cache this very code wrote if any.

    Making them builds an argument model and a schema per tool, a third of what mailslot adds
    to the server's start; the cache (in $XDG_CACHE_HOME/mailslot/) is keyed by the source of
    the tools and of this module and by pydantic's version, so a change to any is never
    served stale. A cache that cannot be read or written is made anew, silently.
    """
    import hashlib
    import os

    import pydantic

    from mailslot import tools

    digest = hashlib.sha256(pydantic.VERSION.encode())
    for source in (tools.__file__, __file__):
        with open(source, "rb") as f:
            digest.update(f.read())
    home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    path = os.path.join(home, "mailslot", f"tools-{digest.hexdigest()[:20]}.json")
    try:
        with open(path, "rb") as f:
            docs = json.loads(f.read())
        listed = [MCPTool.model_validate(doc) for doc in docs] if isinstance(docs, list) else []
        if [t.name for t in listed] == list(TOOL_NAMES):
            return listed
    except (OSError, ValueError, RecursionError):
        pass  # made anew below
    listed = [_describe(name, _arguments(name)) for name in TOOL_NAMES]
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        docs = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in listed]
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(docs, f)
        os.replace(tmp, path)
    except OSError as e:
        log.debug("tool list not cached: %s", e)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return listed


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

    def __init__(self, current: Callable[[], _State], waits: _Waits) -> None:
        self.current = current
        self.waits = waits
        self.listed = ListToolsResult(tools=_tool_list())
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
            args = self.arguments[name] = _arguments(name)
        props = self.schemas[name].get("properties", {})
        unknown = [a for a in arguments if a not in props]
        if unknown:  # the SDK's argument model would drop them: a recipient lost, say
            raise ToolError(unknown_text(name, unknown, self.schemas[name]))
        flags = [a for a, v in arguments.items() if isinstance(v, bool) and _numeric(props[a])]
        if flags:  # pydantic reads true as 1: task_claim(seq=true) would claim task 1
            wrong = [f"'{a}' must be a number, not {str(arguments[a]).lower()}" for a in flags]
            raise ToolError(f"{'; '.join(wrong)}. {_usage(name, self.schemas[name])}")
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


def unknown_tool_text(name: str) -> str:
    """Return what the model reads for a tool that does not exist: the nearest, and all."""
    near = difflib.get_close_matches(name, TOOL_NAMES, n=1, cutoff=0.5)
    guess = f"; did you mean {near[0]}?" if near else "."
    return f"Unknown tool: {name}{guess} The tools are: {', '.join(TOOL_NAMES)}"


def unknown_text(tool: str, unknown: list[str], schema: dict[str, Any]) -> str:
    """Return what the model reads for arguments a tool does not take: the closest real name
    of each, and that nothing was done."""
    props = list(schema.get("properties", {}))
    problems = []
    for arg in unknown:
        near = _closest(arg, props)
        problems.append(f"unknown argument '{arg}'" + (f": did you mean '{near}'?" if near else ""))
    return f"{'; '.join(problems)} Nothing was done. {_usage(tool, schema)}"


def _closest(arg: str, props: list[str]) -> str | None:
    """Return the property of props that arg most likely meant, or None."""
    # afterSeq and reply-to read as after_seq and reply_to (difflib then finds them).
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", arg).replace("-", "_").lower().strip()
    for prop, names in SYNONYMS.items():
        if prop in props and snake in names:
            return prop
    near = difflib.get_close_matches(snake, props, n=1, cutoff=0.6)
    return near[0] if near else None


def _usage(tool: str, schema: dict[str, Any]) -> str:
    props: dict[str, Any] = schema.get("properties", {})
    if not props:
        return f"{tool} takes no arguments: call {tool}() again"
    required = [p for p in schema.get("required", [])]
    usage = ", ".join([*required, *(f"{p}?" for p in props if p not in required)])
    return f"Call {tool}({usage}) again with that fixed"


def _numeric(spec: dict[str, Any]) -> bool:
    """Return True if a parameter's schema takes a number (alone or beside null)."""
    kinds = [spec.get("type"), *(o.get("type") for o in spec.get("anyOf", []))]
    return "integer" in kinds or "number" in kinds


def argument_text(tool: str, error: ValidationError, schema: dict[str, Any]) -> str:
    """Return what the model reads for arguments that do not fit: what, what is allowed, next."""
    props: dict[str, Any] = schema.get("properties", {})
    problems = []
    for item in error.errors():
        param = str(item["loc"][0]) if item["loc"] else "arguments"
        spec = props.get(param, {})
        problems.append(f"'{param}' {_what_is_wrong(item, spec, param)}")
    return f"{'; '.join(problems)}. {_usage(tool, schema)}"


def _what_is_wrong(item: Any, spec: dict[str, Any], param: str) -> str:
    kind, got = item["type"], item.get("input")
    about = f" ({spec['description']})" if spec.get("description") else ""
    choices = _choices(spec)
    if kind == "missing":
        return f"is required{about}"
    if choices:
        return f"must be one of {', '.join(map(str, choices))}, not {_shown(got)}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return f"must be {_bounds(spec)}, not {_shown(got)}"
    example = {"to": '["bob"]', "paths": '["src/app/**"]'}.get(param, "[...]")
    if kind == "list_type":
        return f"must be a list, e.g. {example}, not {_shown(got)}"
    if kind == "too_short":
        least = item.get("ctx", {}).get("min_length", 1)
        return f"needs at least {least} item{'s' * (least != 1)}{about}, e.g. {example}"
    if kind == "too_long":
        most = item.get("ctx", {}).get("max_length")
        return f"takes at most {most} items, not {len(got)}; pass fewer (a folder or a glob)"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"must be a whole number, not {_shown(got)}"
    if kind in ("float_parsing", "float_type"):
        return f"must be a number, not {_shown(got)}"
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false, not {_shown(got)}"
    if kind in ("string_type",):
        return f"must be text, not {_shown(got)}"
    if kind in ("dict_type", "model_type"):
        return f"must be a JSON object, not {_shown(got)}"
    return f"is not valid: {item['msg'].lower()} (got {_shown(got)})"


def _shown(value: Any, most: int = 80) -> str:
    """Return value as the model sent it, cut to most characters: an error that repeats a
    100 KB argument back would fill the model's context with its own mistake."""
    text = repr(value)
    return text if len(text) <= most else f"{text[: most - 20]}... ({len(text)} characters)"


def _choices(spec: dict[str, Any]) -> list[Any]:
    if "enum" in spec:
        return list(spec["enum"])
    for option in spec.get("anyOf", []):
        if "enum" in option:
            return list(option["enum"])
    return []


def _bounds(spec: dict[str, Any]) -> str:
    for option in [spec, *spec.get("anyOf", [])]:
        parts = []
        if "minimum" in option:
            parts.append(f">= {option['minimum']}")
        if "exclusiveMinimum" in option:
            parts.append(f"> {option['exclusiveMinimum']}")
        if "maximum" in option:
            parts.append(f"<= {option['maximum']}")
        if parts:
            return " and ".join(parts)
    return "within its bounds"


def instructions(
    agent: str | None, lang: str | None, was: str | None = None, *, channel: bool = False
) -> str:
    """Return the server's instructions: a few lines on how to collaborate through mailslot."""
    who = (f"You are agent '{agent}'." if agent else
           "You get a name from your client's name on first use; agent_register(name=...) "
           "picks a stable one.")  # fmt: skip
    if was and agent:
        who = f"You are agent '{agent}' ('{was}' is another live session of your client)."
    text = (
        f"mailslot is a mailbox shared with other agents. {who} "
        "Join or start a thread with thread_create(topic), catch up with msg_list, introduce "
        "yourself with msg_post, then keep calling msg_wait(thread, after_seq=next_after_seq): "
        "it returns new messages, or status 'timeout' after about 50 s; then call it again. "
        "Delegate with msg_post(type='task', to=[agent]); answer a task with type='result' "
        "(or 'error') and reply_to=<the task's seq>. A task without `to` is for every agent: "
        "your inbox msg_wait() brings it, whatever threads you joined; take it with task_claim "
        "before working on it; your result reply closes it. Before editing files others may edit, "
        "files_reserve(paths); files_release when done. "
        "Move the thread with thread_set_state and close it with a summary."
    )
    if channel:
        text += (
            ' New messages for you may arrive as <channel source="mailslot"> notes while you '
            "are idle: each line names a message and the call that reads it; act on them with "
            "msg_wait() and reply with msg_post."
        )
    if lang:
        text += f" Write your messages in {lang}."
    return text


async def _heartbeat(state: _State) -> None:
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
    session.on_positions_due = due.set
    while True:
        await due.wait()
        await anyio.sleep(session.save_every)
        due = anyio.Event()
        session.on_positions_due = due.set
        session.flush_positions()


async def _watch_threads(state: _State) -> None:
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


def _lifespan(
    make_session: Callable[[], Session], bus: _CountingBus, holder: list[_State]
) -> Callable[[MCPServer[_State]], AbstractAsyncContextManager[_State]]:
    """Return the connection lifespan: a session, its heartbeat and watch, closed at the end."""

    @asynccontextmanager
    async def lifespan(server: MCPServer[_State]) -> AsyncIterator[_State]:
        state = _State(make_session(), bus)
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


def create_server(
    make_session: Callable[[], Session],
    *,
    agent: str | None = None,
    lang: str | None = None,
    was: str | None = None,
    channel: bool = False,
    waits: _Waits | None = None,
) -> MCPServer[_State]:
    """Return the MCP server whose connection lifespan runs the session make_session returns.

    waits: where its waits in flight are ended (when the client closes stdin).
    """
    holder: list[_State] = []  # the state of the one connection this process serves

    def current() -> _State:
        if not holder:
            raise ResourceError("the server is not connected yet")
        return holder[-1]

    bus = _CountingBus()
    server: MCPServer[_State] = MCPServer(
        "mailslot",
        version=__version__,
        instructions=instructions(agent, lang, was, channel=channel),
        lifespan=_lifespan(make_session, bus, holder),
        subscriptions=bus,
    )
    tools = _Tools(current, waits or _Waits())
    low = server._lowlevel_server
    low.add_request_handler("tools/list", PaginatedRequestParams, tools.list)
    low.add_request_handler("tools/call", CallToolRequestParams, tools.call)
    _add_resources(server, current)
    _add_prompts(server, current)
    _add_subscriptions(server, current)
    return server


def _untitled(schema: dict[str, Any]) -> dict[str, Any]:
    """Return a tool's input schema without the titles pydantic generates, nor null defaults."""
    out = {k: v for k, v in schema.items() if k != "title"}
    props = out.get("properties")
    if isinstance(props, dict):
        out["properties"] = {  # a null default says nothing a non-required property does not
            name: _not_null(
                {k: v for k, v in spec.items() if k != "title" and (k, v) != ("default", None)}
            )
            for name, spec in props.items()
        }
    return out


def _not_null(spec: dict[str, Any]) -> dict[str, Any]:
    """Return spec without its "or null" (anyOf [X, null] becomes X): a property that is not
    required can be left out, which is what a model does; a null sent anyway is still taken
    (validation is the argument model's, not the schema's). A third of tools/list saved."""
    options = spec.get("anyOf")
    if not isinstance(options, list) or len(options) != 2 or {"type": "null"} not in options:
        return spec
    [other] = [o for o in options if o != {"type": "null"}]
    return {**other, **{k: v for k, v in spec.items() if k != "anyOf"}}


def _add_resources(server: MCPServer[_State], current: Callable[[], _State]) -> None:
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


def _add_prompts(server: MCPServer[_State], current: Callable[[], _State]) -> None:
    @server.prompt(title="Summarize a thread")
    def summarize_thread(thread: str) -> str:
        """Summarize a thread's decisions and open points, ready to close it with."""
        session = current().session
        try:
            transcript = transcript_markdown(session.box, thread)
        except MailslotError as e:
            raise MCPError(INVALID_PARAMS, model_text(e)) from None
        lang = f" Write it in {session.lang}." if session.lang else ""
        return (
            "Summarize the thread below for someone who was not in it: what was decided, what "
            f"is still open, and who does what next, in at most 200 words of Markdown.{lang} "
            f"Then close it with thread_set_state(thread='{thread}', state='closed', "
            "summary=<your summary>).\n\n" + transcript
        )

    @server.prompt(title="Hand off a task to another agent")
    def handoff_to_agent(thread: str, to_agent: str, task: str, context: str = "") -> str:
        """Delegate a task to another agent in a thread, with the context it needs."""
        session = current().session
        try:
            session.box.agents.card(to_agent)
            session.box.thread(thread)
        except MailslotError as e:
            raise MCPError(INVALID_PARAMS, model_text(e)) from None
        return (
            f"Delegate this task to agent '{to_agent}': call msg_post(thread='{thread}', "
            f"type='task', to=['{to_agent}'], content=<the message below>), then wait for the "
            f"result with msg_wait(thread='{thread}', after_seq=<the seq it returns>).\n\n"
            f"**Task for {to_agent}:** {task}\n\n"
            f"**Context:** {context or 'see the thread so far'}\n\n"
            "**Done when:** you answer in this thread with type='result' and reply_to=<this "
            "message's seq>; ask with type='question' if anything is unclear."
        )


def _add_subscriptions(server: MCPServer[_State], current: Callable[[], _State]) -> None:
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


CHANNEL = "claude/channel"
PUSH_GATHER_S = 0.2  # a burst that lands within this is pushed together
PUSH_MAX_LINES = 50  # messages one push names at most (the next push names the rest)


def _for(me: str) -> Callable[[Message], bool]:
    """Return what wakes a push loop: a message from someone else, to me or to anyone."""
    return lambda m: m.sender != me and (me in m.to or not m.to)


async def _push_news(
    session: Session, write: Any, ready: anyio.Event, *, check_every: float = 5.0
) -> None:
    """Push what is new for the agent to its client as Claude Code channel notifications.

    Each message addressed to the agent (and each open task it may take) is pushed once,
    urgent first, a burst together; not while the agent is blocked in a wait that returns it;
    only from senders with an agent card (a push goes into the model's prompt: a person or a
    script that never registered cannot put words there). A push is a hint: it moves no read
    position, and the shared record in .state/notified/ keeps hooks from repeating it.
    """
    await ready.wait()
    box = session.box
    while session.agent is None:  # named on first use when no --agent was given
        await anyio.sleep(0.5)
    # Arrivals after this cursor wake the loop; what came before it, the first look finds.
    cursor: dict[str, int] | None = box.cursor()
    look = False  # news was held back while the agent waited: look again at the next wake
    now = True  # look before waiting: news from before the start, or left out of the last look
    while True:
        me = session.agent
        if me is None:
            await anyio.sleep(0.5)
            continue
        if not now:
            got = await box.wait_async(
                None, cursor, timeout=check_every, limit=1000, match=_for(me)
            )
            cursor = got.cursor
            if not got.messages and not look:
                continue  # nothing arrived: nothing new to look for (a look reads every thread)
            if got.messages:
                await anyio.sleep(PUSH_GATHER_S)  # let the rest of a burst land
        # The session's own positions: what its waits and reads returned a moment ago may not
        # be on disk yet (they are written once a second), and must not be pushed again.
        notices = Notices(box, me, session.reading)
        try:
            cards = {c.name for c in box.agents.cards()}
            found = notices.new(senders=cards)
        except MailslotError as e:
            log.warning("could not look for news to push: %s", e)
            now = False
            continue
        news = [n for n in found if not session.waiting_for(n.message)]
        look = len(news) < len(found)
        every, pushed, marked = news, [], []
        while news:
            batch, news = news[:PUSH_MAX_LINES], news[PUSH_MAX_LINES:]
            first = batch[0].message
            lines = [n.line() for n in batch]
            more = f" and {len(news)} more" if news else ""
            text = (
                f"mailslot: {len(batch)} new for you (agent {me}){more}:\n"
                + "\n".join(lines)
                + "\nmsg_wait() returns them; reply with msg_post(reply_to=seq)."
            )
            meta = {
                "thread": first.thread, "seq": str(first.seq), "sender": first.sender,
                "type": first.type, "priority": first.priority, "count": str(len(batch)),
            }  # fmt: skip
            note = JSONRPCNotification(
                jsonrpc="2.0", method=f"notifications/{CHANNEL}",
                params={"content": text, "meta": meta},
            )  # fmt: skip
            await write.send(SessionMessage(note))
            pushed += batch
            marked = reportable(every, pushed)
            notices.mark(marked)  # stopped here, the rest comes next time
        # Left out of this look (too many at once): look again now, if this one got anywhere.
        now = notices.more and not look and bool(marked)


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
    while it is not waiting (see _push_news).
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
    low = server._lowlevel_server

    async def run() -> None:
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
                tg.start_soon(_push_news, session, write, ready)
                await low.run(relayed, write, options)
                tg.cancel_scope.cancel()

    async def until_stopped() -> None:
        # SIGTERM and SIGHUP (how many clients stop a server) end serving as stdin closing
        # does: the lifespan closes the session, which writes what positions are due. (On a
        # terminal the SDK's reader thread could not be interrupted: the signals stay fatal.)
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

    try:
        anyio.run(until_stopped)
    finally:
        session.close()
        box.close()
