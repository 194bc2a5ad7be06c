"""Through the real protocol: `mailslot serve` subprocesses driven by the official MCP client.

Measures msg_post round trips, post→wake between two serve processes (msg_post in one,
msg_wait in the other), aggregate msg_post throughput of 4 client processes, cold start to the
first tools/list, and how long a server takes to exit once its stdin closes.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import StdioServerParameters, types
from mcp.client import Client

from bench._util import SCRATCH, percentile, run_writers, table
from mailslot import Mailbox

# The handshake era: what most clients speak today, and what the peer (mcp 1.x) speaks too.
MODE = "legacy"


def _params(root: Path, agent: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "mailslot", "serve", "--root", str(root), "--agent", agent],
    )


async def _call(c: Client, tool: str, **args: Any) -> dict[str, Any]:
    result = await c.call_tool(tool, args)
    assert isinstance(result.content[0], types.TextContent) and not result.is_error
    return dict(json.loads(result.content[0].text))


async def _post_latency(root: Path, n: int) -> list[float]:
    async with Client(_params(root, "poster"), mode=MODE, cache=None) as c:
        await _call(c, "thread_create", topic="lat")
        for _ in range(10):  # warm up
            await _call(c, "msg_post", thread="lat", content="warm")
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            await _call(c, "msg_post", thread="lat", content="x" * 400)
            out.append(time.perf_counter() - t0)
        return out


async def _noop_latency(root: Path, n: int) -> list[float]:
    """Round trips of bus_get_config, which touches no file: the SDK's own cost per call."""
    async with Client(_params(root, "noop"), mode=MODE, cache=None) as c:
        for _ in range(10):
            await _call(c, "bus_get_config")
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            await _call(c, "bus_get_config")
            out.append(time.perf_counter() - t0)
        return out


def _import_time(module: str, repeats: int) -> float:
    """Return the median wall time of a fresh interpreter importing module."""
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


async def _wake_latency(root: Path, n: int) -> list[float]:
    async with (
        Client(_params(root, "waiter"), mode=MODE, cache=None) as waiter,
        Client(_params(root, "sender"), mode=MODE, cache=None) as sender,
    ):
        head = (await _call(waiter, "thread_create", topic="wake"))["head"]
        await _call(sender, "thread_create", topic="wake")
        out: list[float] = []
        for _ in range(n):
            sent: list[float] = []
            async with anyio.create_task_group() as tg:

                async def post() -> None:
                    await anyio.sleep(0.005)
                    sent.append(time.perf_counter())
                    await _call(sender, "msg_post", thread="wake", content="ping")

                tg.start_soon(post)
                got = await _call(waiter, "msg_wait", thread="wake", after_seq=head, timeout_s=30)
                out.append(time.perf_counter() - sent[0])
            head = got["next_after_seq"]
        return out


def _writer(root: str, name: str, count: int) -> None:
    async def main() -> None:
        async with Client(_params(Path(root), name), mode=MODE, cache=None) as c:
            await _call(c, "thread_create", topic="load")
            print("ready", flush=True)
            sys.stdin.readline()
            t0 = time.perf_counter()
            for _ in range(count):
                await _call(c, "msg_post", thread="load", content="x" * 400)
            print(time.perf_counter() - t0, flush=True)

    anyio.run(main)


def _throughput(root: Path, procs: int, count: int) -> float:
    argvs = [["writer", str(root), f"w{i}", str(count)] for i in range(procs)]
    _, elapsed = run_writers("bench.mcp", argvs)
    assert Mailbox(root).head("load") == procs * count, "lost or doubled messages"
    return procs * count / elapsed


async def _cold_start(root: Path) -> float:
    t0 = time.perf_counter()
    async with Client(_params(root, "cold"), mode=MODE, cache=None) as c:
        await c.list_tools()
        return time.perf_counter() - t0


def _proc_stat(pid: int) -> tuple[float, float]:
    """Return (resident MB, CPU seconds) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20, cpu


def _footprint(root: Path, seconds: float) -> dict[str, float]:
    """Return the resident memory of an idle and a waiting server, and its CPU while waiting."""

    async def main() -> dict[str, float]:
        async with Client(_params(root, "footprint"), mode=MODE, cache=None) as c:
            await _call(c, "thread_create", topic="quiet")
            pid = Mailbox(root).agents.presence("footprint").pid
            assert pid is not None
            await anyio.sleep(0.5)
            idle, _ = _proc_stat(pid)
            out: dict[str, float] = {"rss_idle_mb": idle}
            async with anyio.create_task_group() as tg:
                wait = {"thread": "quiet", "timeout_s": seconds + 3}
                tg.start_soon(lambda: c.call_tool("msg_wait", wait))
                await anyio.sleep(1.0)
                _, cpu0 = _proc_stat(pid)
                t0 = time.monotonic()
                await anyio.sleep(seconds)
                rss, cpu1 = _proc_stat(pid)
                out["rss_waiting_mb"] = rss
                out["cpu_waiting_pct"] = (cpu1 - cpu0) / (time.monotonic() - t0) * 100
                tg.cancel_scope.cancel()
            return out

    return anyio.run(main)


def _shutdown(root: Path) -> float:
    """Return seconds from closing stdin to exit, with a msg_wait in flight."""
    Mailbox(root).create_thread("bye", creator="bench")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailslot", "serve", "--root", str(root), "--agent", "leaver"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None and proc.stdout is not None
    for line in (
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "bench", "version": "1"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "msg_wait", "arguments": {"thread": "bye", "timeout_s": 60}},
        },
    ):
        proc.stdin.write((json.dumps(line) + "\n").encode())
    proc.stdin.flush()
    proc.stdout.readline()
    time.sleep(0.5)
    t0 = time.perf_counter()
    proc.communicate(timeout=30)
    return time.perf_counter() - t0


def measure(quick: bool) -> dict[str, float]:
    """Return the figures: latencies in seconds, throughput in messages per second."""
    n = 60 if quick else 500
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=SCRATCH) as d:
        for fsync in (True, False):
            root = Path(d) / f"post-{fsync}"
            Mailbox.init(root, fsync=fsync)
            lat = anyio.run(_post_latency, root, n)
            key = "post" if fsync else "post_nofsync"
            out[key + "_p50"], out[key + "_p99"] = percentile(lat, 50), percentile(lat, 99)
        root = Path(d) / "wake"
        Mailbox.init(root)
        lat = anyio.run(_wake_latency, root, n // 2)
        out["wake_p50"], out["wake_p99"] = percentile(lat, 50), percentile(lat, 99)
        root = Path(d) / "load"
        Mailbox.init(root)
        out["writers4"] = _throughput(root, 4, 100 if quick else 500)
        cold = [anyio.run(_cold_start, Path(d) / "load") for _ in range(3 if quick else 7)]
        out["cold_p50"], out["cold_max"] = statistics.median(cold), max(cold)
        exits = []
        for i in range(3):
            Mailbox.init(Path(d) / f"bye{i}")
            exits.append(_shutdown(Path(d) / f"bye{i}"))
        out["exit_p50"], out["exit_max"] = statistics.median(exits), max(exits)
        out |= _footprint(Path(d) / "load", 2.0 if quick else 5.0)
        lat = anyio.run(_noop_latency, Path(d) / "load", n)
        out["noop_p50"] = percentile(lat, 50)
        repeats = 1 if quick else 3
        out["import_python"] = _import_time("sys", repeats)
        out["import_mcp"] = _import_time("mcp.server.mcpserver", repeats)
        out["import_mailslot"] = _import_time("mailslot", repeats)
    return out


def render(v: dict[str, float]) -> str:
    """Return the figures as a table."""
    ms = lambda x: f"{x * 1e3:.2f} ms"  # noqa: E731 - a local formatter
    rows = [
        ["msg_post round trip, fsync on", ms(v["post_p50"]), ms(v["post_p99"])],
        ["msg_post round trip, fsync off", ms(v["post_nofsync_p50"]), ms(v["post_nofsync_p99"])],
        ["post→wake, two serve processes", ms(v["wake_p50"]), ms(v["wake_p99"])],
        ["msg_post, 4 client processes on one thread", f"{v['writers4']:,.0f} msg/s", ""],
        [
            "cold start → first tools/list",
            f"{v['cold_p50'] * 1e3:.0f} ms",
            f"max {v['cold_max'] * 1e3:.0f} ms",
        ],
        [
            "exit after stdin closes (during msg_wait)",
            f"{v['exit_p50'] * 1e3:.0f} ms",
            f"max {v['exit_max'] * 1e3:.0f} ms",
        ],
        [
            "resident memory: idle / blocked in msg_wait",
            f"{v['rss_idle_mb']:.0f} MB",
            f"{v['rss_waiting_mb']:.0f} MB",
        ],
        [
            "SDK share: round trip of a tool that touches no file (bus_get_config)",
            ms(v["noop_p50"]),
            "",
        ],
        [
            "SDK share: fresh interpreter importing mcp / mailslot / nothing",
            f"{v['import_mcp'] * 1e3:.0f} / {v['import_mailslot'] * 1e3:.0f} ms",
            f"{v['import_python'] * 1e3:.0f} ms",
        ],
        [
            "CPU of a server blocked in msg_wait",
            f"{v['cpu_waiting_pct']:.2f} % of a core",
            "",
        ],
    ]
    return table(["through MCP over stdio", "p50 / value", "p99 / worst"], rows)


def run(quick: bool) -> str:
    """Return the table of figures measured now."""
    return render(measure(quick))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "writer":
        _writer(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        SCRATCH.mkdir(parents=True, exist_ok=True)
        print(run("--quick" in sys.argv))
