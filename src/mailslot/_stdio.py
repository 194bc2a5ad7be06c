"""MCP over the process's stdin and stdout without a thread per read and write.

The SDK's `stdio_server` reads each line and writes each reply through anyio's worker threads
(three thread hand-offs per call) and two memory streams. When stdin and stdout are pipes or
sockets, as every MCP client makes them, this transport reads and writes them on the event
loop instead: a line becomes a message in the task that asked for it, and a reply is written
by the task that sends it. Otherwise (a terminal, a file) the SDK's transport serves.

Like the SDK's, it claims fds 0 and 1 while serving: the wire moves to private duplicates, fd 0
reads the null device and fd 1 writes to stderr, so a child process or a stray print cannot
corrupt the protocol; both are restored on exit.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from types import TracebackType
from typing import Any, Self

import anyio
import mcp_types as types
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage

CHUNK = 1 << 16


def _kind(fd: int) -> str:
    """Return "stream" (a pipe or socket), "file" (a regular file) or "other" (a terminal)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return "other"
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return "stream"
    return "file" if stat.S_ISREG(mode) else "other"


class _Reader:
    """The read side: each receive() parses the next line of stdin into a message."""

    def __init__(self, read: Callable[[], Awaitable[bytes]]) -> None:
        self._read = read
        self._lines: list[bytes] = []
        self._partial = b""
        self._eof = False

    async def receive(self) -> SessionMessage | Exception:
        while True:
            while self._lines:
                line = self._lines.pop()
                if not line.strip():
                    continue
                try:
                    text = line.decode("utf-8", errors="replace")
                    message = types.jsonrpc_message_adapter.validate_json(text, by_name=False)
                except Exception as exc:  # the SDK hands a bad line to the session as is
                    return exc
                return SessionMessage(message)
            if self._eof:
                raise anyio.EndOfStream
            chunk = await self._read()
            if not chunk:
                self._eof = True
                lines = [self._partial] if self._partial else []
                self._partial = b""
            else:
                *lines, self._partial = (self._partial + chunk).split(b"\n")
            self._lines = lines[::-1]

    async def aclose(self) -> None:
        self._eof = True
        self._lines = []

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class _Flow(asyncio.Protocol):
    """Write-side protocol: lets senders wait while the pipe's buffer is full."""

    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()
        self.lost = False

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.writable.set()


class _Writer:
    """The write side: each send() writes one message as a line of stdout."""

    def __init__(self, write: Callable[[bytes], Awaitable[None]]) -> None:
        self._write = write

    async def send(self, item: SessionMessage, /) -> None:
        data = item.message.model_dump_json(by_alias=True, exclude_unset=True)
        await self._write(data.encode() + b"\n")

    async def aclose(self) -> None:
        pass  # the wire is handed back when serving ends

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def _divert(fd: int, to: int) -> int:
    """Move the wire on fd to a private duplicate and point fd at to; return the duplicate."""
    private = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.dup2(to, fd)
    return private


@asynccontextmanager
async def stdio() -> AsyncIterator[tuple[Any, Any]]:
    """Yield (read, write) streams of MCP messages over this process's stdin and stdout."""
    kinds = (_kind(0), _kind(1))
    if "other" in kinds:  # a terminal: the SDK's threads, which never make it non-blocking
        async with stdio_server() as streams:
            yield streams
        return
    loop = asyncio.get_running_loop()
    null = os.open(os.devnull, os.O_RDONLY)
    wire_in = _divert(0, null)
    os.close(null)
    wire_out = _divert(1, 2)
    transports: list[asyncio.BaseTransport] = []
    flow = _Flow()
    try:
        if kinds[0] == "stream":
            reader = asyncio.StreamReader(limit=CHUNK)
            protocol = asyncio.StreamReaderProtocol(reader)
            pipe = os.fdopen(wire_in, "rb", buffering=0, closefd=False)
            transports.append((await loop.connect_read_pipe(lambda: protocol, pipe))[0])
            read: Callable[[], Awaitable[bytes]] = lambda: reader.read(CHUNK)  # noqa: E731
        else:  # a file of requests: reading it never blocks for long

            async def read() -> bytes:
                return os.read(wire_in, CHUNK)

        if kinds[1] == "stream":
            out = os.fdopen(wire_out, "wb", buffering=0, closefd=False)
            transport, _ = await loop.connect_write_pipe(lambda: flow, out)
            transports.append(transport)

            async def write(data: bytes) -> None:
                if flow.lost or transport.is_closing():
                    raise anyio.BrokenResourceError
                transport.write(data)
                await flow.writable.wait()  # while the client does not read, senders wait

        else:

            async def write(data: bytes) -> None:
                view = memoryview(data)
                while view:
                    view = view[os.write(wire_out, view) :]

        yield _Reader(read), _Writer(write)
        # What is still buffered goes out before the wire is handed back.
        for _ in range(500):
            if flow.lost or not any(
                isinstance(t, asyncio.WriteTransport) and t.get_write_buffer_size()
                for t in transports
            ):
                break
            await asyncio.sleep(0.01)
    finally:
        for t in transports:
            if isinstance(t, asyncio.WriteTransport):
                t.abort()  # flushed above, or the client stopped reading
            else:
                t.close()
        for fd, wire in ((0, wire_in), (1, wire_out)):
            with suppress(OSError):
                os.dup2(wire, fd)
                os.set_blocking(fd, True)
            with suppress(OSError):
                os.close(wire)
