"""MCP over the process's stdin and stdout without a thread per read and write.

The SDK's `stdio_server` reads each line and writes each reply through anyio's worker threads
(three thread hand-offs per call) and two memory streams. When stdin and stdout are pipes or
sockets, as every MCP client makes them, this transport reads and writes them on the event
loop instead: a line becomes a message in the task that asked for it, and a reply is written
by the task that sends it. Otherwise (a terminal, a file) the SDK's transport serves.

Like the SDK's, it claims fds 0 and 1 while serving: the wire moves to private duplicates, fd 0
reads the null device and fd 1 writes to stderr, so a child process or a stray print cannot
corrupt the protocol; both are restored on exit.

Every request read is answered (but one the client cancels, which MCP leaves unanswered).
When stdin ends, the server drains: the requests read are finished and their replies written,
however slowly the client reads them, before the SDK is told of the end (which would cancel
what is still in flight); waits are ended at once (on_eof), so that a client closing stdin
still sees the server exit within a moment. (A handler awaiting the client would hold the
drain up: mailslot sends the client no requests.) A line that is not
a JSON-RPC message (not JSON, nested deeper than the SDK's parser reads) is answered with a
JSON-RPC error saying what to change, under its request's id when it can be found.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import re
import stat
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from types import TracebackType
from typing import Any, Self

import anyio
import mcp_types as types
from mcp.server.stdio import stdio_server
from mcp.shared.dispatcher import coerce_request_id
from mcp.shared.jsonrpc_dispatcher import cancelled_request_id_from_params
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from mailslot.store.format import MAX_META_DEPTH

log = logging.getLogger("mailslot.serve")

CHUNK = 1 << 16
PARSER_DEPTH = 200  # about how deep pydantic's JSON parser nests arrays and objects


def _kinds() -> tuple[str, str]:
    """Return what stdin and stdout are: "stream" (a pipe or socket), "file" (a regular file)
    or "other" (a terminal, or one socket serving as both, which the pipe transports of
    asyncio cannot share: the writer would take an incoming request for the peer closing)."""
    try:
        st = (os.fstat(0), os.fstat(1))
    except OSError:
        return ("other", "other")
    if stat.S_ISSOCK(st[0].st_mode) and (st[0].st_dev, st[0].st_ino) == (
        st[1].st_dev,
        st[1].st_ino,
    ):
        return ("other", "other")
    kinds = []
    for one in st:
        if stat.S_ISFIFO(one.st_mode) or stat.S_ISSOCK(one.st_mode):
            kinds.append("stream")
        else:
            kinds.append("file" if stat.S_ISREG(one.st_mode) else "other")
    return (kinds[0], kinds[1])


class _Stream(ABC):
    """What the SDK's streams are used as: async context managers that close on exit."""

    @abstractmethod
    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class _Drain:
    """The requests read and not answered yet, which the end of stdin waits for."""

    def __init__(self) -> None:
        self._open: Counter[types.RequestId] = Counter()
        self._settled = asyncio.Event()
        self._settled.set()

    def read(self, message: types.JSONRPCMessage) -> None:
        """Count a request in; a request the client cancels is never answered: count it out."""
        if isinstance(message, types.JSONRPCRequest):
            self._open[coerce_request_id(message.id)] += 1
            self._settled.clear()
        elif (
            isinstance(message, types.JSONRPCNotification)
            and message.method == "notifications/cancelled"
        ):
            cancelled = cancelled_request_id_from_params(message.params)
            if cancelled is not None:
                self._close(cancelled)

    def written(self, message: types.JSONRPCMessage) -> None:
        """Count out the request a reply (or a failed attempt to write one) answers."""
        if (
            isinstance(message, types.JSONRPCResponse | types.JSONRPCError)
            and message.id is not None
        ):
            self._close(message.id)

    def _close(self, request: types.RequestId) -> None:
        key = coerce_request_id(request)
        if key not in self._open:
            return  # answered already (a reply and a cancel crossed), or never read
        self._open[key] -= 1
        if self._open[key] <= 0:
            del self._open[key]
        if not self._open:
            self._settled.set()

    async def settled(self) -> None:
        """Return once every request read has been answered (or cancelled by the client)."""
        await self._settled.wait()


class _Reader(_Stream):
    """The read side: each receive() parses the next line of stdin into a message.

    A line that is no message is answered here (the SDK would drop it, unanswered); at the
    end of stdin, on_eof() runs and the end is told once every request read is answered.
    """

    def __init__(
        self,
        read: Callable[[], Awaitable[bytes]],
        drain: _Drain,
        answer: Callable[[SessionMessage], Awaitable[None]],
        on_eof: Callable[[], None],
    ) -> None:
        self._read = read
        self._drain = drain
        self._answer = answer
        self._on_eof = on_eof
        self._lines: list[bytes] = []
        self._partial: list[bytes] = []  # the pieces of a line still arriving
        self._eof = False
        self._closed = False

    async def receive(self) -> SessionMessage | Exception:
        while True:
            while self._lines:
                line = self._lines.pop()
                if not line.strip():
                    continue
                text = line.decode("utf-8", errors="replace")
                try:
                    message = types.jsonrpc_message_adapter.validate_json(text, by_name=False)
                except ValidationError as exc:
                    await self._refuse(text, exc)
                    continue
                self._drain.read(message)
                return SessionMessage(message)
            if self._closed:
                raise anyio.EndOfStream
            if self._eof:
                self._on_eof()
                await self._drain.settled()
                self._closed = True
                raise anyio.EndOfStream
            chunk = await self._read()
            if not chunk:
                self._eof = True
                self._lines = [b"".join(self._partial)]
                self._partial = []
            elif b"\n" not in chunk:
                self._partial.append(chunk)  # a long line: joined once, when it ends
            else:
                first, *lines, rest = chunk.split(b"\n")
                lines.insert(0, b"".join([*self._partial, first]))
                self._partial = [rest] if rest else []
                self._lines = lines[::-1]

    async def _refuse(self, text: str, exc: ValidationError) -> None:
        """Answer a line that is no JSON-RPC message: under its request's id if it has one."""
        code, why = _refusal(text, exc)
        log.warning("refused a line of %d characters: %s", len(text), why)
        top = _shape(text)[2]
        asked = top.get("id") if "method" in top else None
        if isinstance(asked, bool) or not isinstance(asked, int | str):
            asked = None  # JSON-RPC's answer when the request's id cannot be read
        error = types.JSONRPCError(
            jsonrpc="2.0", id=asked, error=types.ErrorData(code=code, message=why)
        )
        with suppress(anyio.BrokenResourceError):  # the client is gone: nobody to tell
            await self._answer(SessionMessage(error))

    async def aclose(self) -> None:
        self._closed = True
        self._lines = []

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None


_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_SPACE = " \t\r\n,"


def _shape(text: str) -> tuple[int, list[str], dict[str, Any]]:
    """Return how deep text nests arrays and objects, the keys on the way to where it is
    deepest, and the scalar members of its outer object and of that object's "params" (as
    "id", "params.name"): as far as text reads as JSON, and without recursion."""
    depth = deepest = 0
    keys: list[str | None] = []  # per open container: the member being read; None: an array
    where: list[str | None] = []
    scalars: dict[str, Any] = {}
    value = False  # after a colon: what comes is a member's value
    i, end = 0, len(text)
    decoder = json.JSONDecoder()
    while i < end:
        c = text[i]
        if c in _SPACE:
            i += 1
        elif c == ":":
            value, i = True, i + 1
        elif c in "[{":
            depth += 1
            if depth > deepest:
                deepest, where = depth, keys[:3]
            keys.append("" if c == "{" else None)
            value, i = False, i + 1
        elif c in "]}":
            if not keys:
                break
            keys.pop()
            depth -= 1
            value, i = False, i + 1
        else:
            if c == '"':
                match = _STRING.match(text, i)
                if match is None:
                    break
                try:
                    item, i = json.loads(match.group()), match.end()
                except ValueError:
                    break
            else:
                try:
                    item, i = decoder.raw_decode(text, i)
                except ValueError:
                    break
            if value and keys and isinstance(keys[-1], str):
                path = [k for k in keys if k is not None]
                if len(path) == depth and (depth == 1 or (depth == 2 and path[0] == "params")):
                    scalars[".".join(path)] = item
            elif keys and isinstance(keys[-1], str) and isinstance(item, str):
                keys[-1] = item  # a member's name
                if depth == 1:
                    scalars.setdefault(item, None)
            value = False
    path = []
    for key in where:
        if key is None:
            break
        path.append(key)
    return deepest, path, scalars


def _refusal(text: str, exc: ValidationError) -> tuple[int, str]:
    """Return the JSON-RPC error code and text for a line that failed to parse as a message."""
    first = exc.errors()[0] if exc.errors() else {"type": "", "msg": str(exc)}
    if first["type"] != "json_invalid":
        return types.INVALID_REQUEST, (
            "not a JSON-RPC 2.0 message: send one JSON object per line with "
            '"jsonrpc": "2.0", a "method" (and an "id" for a request)'
        )
    if "recursion limit" not in first["msg"]:
        return types.PARSE_ERROR, (
            f"not JSON ({first['msg'].removeprefix('Invalid JSON: ')}): send one JSON-RPC "
            "message per line, as JSON in UTF-8"
        )
    deepest, path, top = _shape(text)  # path: the first three keys at most
    if path[:2] == ["params", "arguments"] and len(path) > 2:
        name = top.get("params.name")
        tool = f" of {name}" if isinstance(name, str) else ""
        what = f"argument '{path[2]}'{tool}"
        again = f"call {name} again" if isinstance(name, str) else "send it again"
    else:
        what = ".".join(path) or "the message"
        again = "send it again"
    meta = f", meta at most {MAX_META_DEPTH}" if path[2:3] == ["meta"] else ""
    return types.INVALID_PARAMS if path[:1] == ["params"] else types.INVALID_REQUEST, (
        f"{what} is nested {deepest - len(path)} levels deep (arrays and objects inside one "
        f"another), too deep to read: a request nests at most about {PARSER_DEPTH} levels"
        f"{meta}; {again} with that value nested less deeply"
    )


class _Flow(asyncio.Protocol):
    """Write-side protocol: lets senders wait while the pipe's buffer is full."""

    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()
        self.lost = False
        self.closed = asyncio.Event()  # all written and the pipe let go, or the client is gone
        self.turn = asyncio.Lock()  # one sender writes at a time, once the pipe has room

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.writable.set()
        self.closed.set()


class _Writer(_Stream):
    """The write side: each send() writes one message as a line of stdout."""

    def __init__(
        self, write: Callable[[Callable[[], bytes]], Awaitable[None]], drain: _Drain
    ) -> None:
        self._write = write
        self._drain = drain

    async def send(self, item: SessionMessage, /) -> None:
        def line() -> bytes:  # made only once there is room for it
            return item.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"

        try:
            await self._write(line)
        finally:  # written, or it cannot be (the client is gone): either way, not owed
            self._drain.written(item.message)

    async def aclose(self) -> None:
        pass  # the wire is handed back when serving ends


def _divert(fd: int, to: int) -> int:
    """Move the wire on fd to a private duplicate and point fd at to; return the duplicate."""
    private = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.dup2(to, fd)
    return private


def on_event_loop() -> bool:
    """Return True if stdio() serves stdin and stdout on the event loop (False: the SDK's
    threads, whose blocking reads a cancelled server cannot interrupt)."""
    return "other" not in _kinds()


@asynccontextmanager
async def stdio(on_eof: Callable[[], None] = lambda: None) -> AsyncIterator[tuple[Any, Any]]:
    """Yield (read, write) streams of MCP messages over this process's stdin and stdout.

    on_eof runs when stdin ends, before the drain waits for the requests in flight: it ends
    those that would not end soon by themselves (waits). Leaving the block writes out every
    reply still buffered, however long the client takes to read it (a signal that cancels
    the block cuts this short).
    """
    kinds = _kinds()
    if "other" in kinds:  # a terminal: the SDK's threads, which never make it non-blocking
        async with stdio_server() as streams:
            yield streams
        return
    blocking = (os.get_blocking(0), os.get_blocking(1))
    wire_in, wire_out = _claim_wire()
    transports: list[asyncio.BaseTransport] = []
    flow = _Flow()
    drain = _Drain()
    try:
        read = await _reading(kinds[0], wire_in, transports)
        writer = _Writer(await _writing(kinds[1], wire_out, flow, transports), drain)
        yield _Reader(read, drain, writer.send, on_eof), writer
        # What is still buffered goes out before the wire is handed back: closing the
        # transport writes its buffer out first, then lets go of the pipe.
        for t in transports:
            if isinstance(t, asyncio.WriteTransport) and not t.is_closing():
                t.close()
                await flow.closed.wait()
    finally:
        try:
            _let_go(transports)
        finally:
            _give_back(((0, wire_in, blocking[0]), (1, wire_out, blocking[1])))


def _claim_wire() -> tuple[int, int]:
    """Move the wire off fds 0 and 1 (which then read the null device and write to stderr);
    return the private duplicates (wire_in, wire_out)."""
    null = os.open(os.devnull, os.O_RDONLY)
    wire_in = _divert(0, null)
    os.close(null)
    return wire_in, _divert(1, 2)


async def _reading(
    kind: str, wire: int, transports: list[asyncio.BaseTransport]
) -> Callable[[], Awaitable[bytes]]:
    """Return what reads the next chunk of the wire; a pipe's transport joins transports."""
    if kind != "stream":  # a file of requests: reading it never blocks for long

        async def read() -> bytes:
            return os.read(wire, CHUNK)

        return read
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=CHUNK)
    protocol = asyncio.StreamReaderProtocol(reader)
    pipe = os.fdopen(wire, "rb", buffering=0, closefd=False)
    transports.append((await loop.connect_read_pipe(lambda: protocol, pipe))[0])
    return lambda: reader.read(CHUNK)


async def _writing(
    kind: str, wire: int, flow: _Flow, transports: list[asyncio.BaseTransport]
) -> Callable[[Callable[[], bytes]], Awaitable[None]]:
    """Return what writes a line to the wire; a pipe's transport joins transports."""
    if kind != "stream":

        async def write_file(line: Callable[[], bytes]) -> None:
            view = memoryview(line())
            while view:
                view = view[os.write(wire, view) :]

        return write_file
    loop = asyncio.get_running_loop()
    out = os.fdopen(wire, "wb", buffering=0, closefd=False)
    transport, _ = await loop.connect_write_pipe(lambda: flow, out)
    transports.append(transport)

    async def write(line: Callable[[], bytes]) -> None:
        # While the client does not read, senders wait their turn: what is buffered
        # stays near the pipe's high-water mark, however many replies are ready.
        async with flow.turn:
            await flow.writable.wait()
            if flow.lost or transport.is_closing():
                raise anyio.BrokenResourceError
            transport.write(line())

    return write


def _let_go(transports: list[asyncio.BaseTransport]) -> None:
    """Close the transports still open: a write side unread yet is cut off (a signal came)."""
    for t in transports:
        if t.is_closing():
            continue  # the client went away: asyncio closed it already
        if isinstance(t, asyncio.WriteTransport):
            t.abort()  # cancelled (a signal) before the client read it all
        else:
            t.close()


def _give_back(wires: tuple[tuple[int, int, bool], ...]) -> None:
    """Point each fd at its wire again, as blocking as it was, and close the duplicate."""
    for fd, wire, was in wires:
        with suppress(OSError):
            os.dup2(wire, fd)
            os.set_blocking(fd, was)
        with suppress(OSError):
            os.close(wire)
