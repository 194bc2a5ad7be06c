"""The server's own cost, beside the smallest server on the same SDK (bench/minimal_server.py)
and beside mailslot as it was before this work (commit BEFORE, taken from git).

All run as real stdio subprocesses driven by the official client, at the same time, their
calls interleaved in rounds so that a noisy neighbour hits each alike:

- CPU per call: the server process's user+system time (all its threads, from /proc) over many
  `msg_post` calls (fsync on, the default, and off), and over calls of `bus_get_config` (a tool
  that touches no file), beside as many calls of the minimal server's `echo`, same payload.
- CPU of a waiting server per wake: `msg_wait` returning a message another process posted.
- Round trip p50 of each, and the library's own `Mailbox.post` in this process, so that what
  the MCP layer adds to a post can be read off: msg_post - echo - library post.
- Cold start to the first tools/list, alternating the servers.
- Resident memory once idle after calls.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
from mcp import StdioServerParameters, types
from mcp.client import Client

from bench._util import SCRATCH, percentile, table
from mailslot import Mailbox

MODE = "legacy"
CONTENT = "x" * 400
HERE = Path(__file__).resolve().parent.parent
BEFORE = "cd6371f"  # the last commit before the work on the server's own cost (issue 21)


def _mailslot(root: Path, agent: str, src: Path | None = None) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "mailslot", "serve", "--root", str(root), "--agent", agent],
        env={"PYTHONPATH": str(src)} if src else None,
    )


def _minimal() -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "bench.minimal_server"], cwd=str(HERE)
    )


def before_tree(into: Path) -> Path | str:
    """Return the src folder of mailslot at BEFORE, extracted from git; or why it cannot be."""
    if importlib.util.find_spec("portalocker") is None:
        return f"{BEFORE} needs portalocker: pip install -e '.[bench]'"
    try:
        tar = subprocess.run(["git", "-C", str(HERE), "archive", BEFORE, "src"],  # noqa: S607
                             capture_output=True, check=True, timeout=60).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError) as e:
        return f"cannot take {BEFORE} from git ({e})"
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(into, filter="data")
    return into / "src"


def _children() -> dict[int, str]:
    """Return this process's children: pid -> command line."""
    me, out = os.getpid(), {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:
            out[int(entry.name)] = cmd
    return out


def _cpu(pid: int) -> float:
    """Return the user+system CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


async def _call(c: Client, tool: str, **args: Any) -> str:
    result = await c.call_tool(tool, args)
    assert isinstance(result.content[0], types.TextContent) and not result.is_error, result
    return result.content[0].text


async def _open(stack: AsyncExitStack, params: StdioServerParameters) -> tuple[Client, int]:
    """Start a server; return its client and its pid."""
    known = set(_children())
    client = await stack.enter_async_context(Client(params, mode=MODE, cache=None))
    (pid,) = set(_children()) - known
    return client, pid


async def _calls(
    roots: dict[bool, Path], src: Path | None, rounds: int, per_round: int
) -> dict[str, float]:
    """Return CPU per call, round-trip p50 and idle memory of each server and call."""
    trees = {"now": None, "before": src} if src else {"now": None}
    boxes = {fsync: Mailbox(root) for fsync, root in roots.items()}
    for box in boxes.values():
        box.create_thread("lib", creator="bench")
        box.create_thread("wake", creator="bench")
    cpu: dict[str, float] = {}
    lat: dict[str, list[float]] = {}
    pids: dict[str, int] = {}
    calls: dict[str, Callable[[], Awaitable[Any]]] = {}
    async with AsyncExitStack() as stack:
        ref, pids["echo"] = await _open(stack, _minimal())
        calls["echo"] = lambda: _call(ref, "echo", text=CONTENT)
        for tree, path in trees.items():
            for fsync, root in roots.items():
                c, pid = await _open(stack, _mailslot(root, f"{tree}-{str(fsync).lower()}", path))
                await _call(c, "thread_create", topic="cost")
                key = f"{tree}_post" + ("" if fsync else "_nofsync")
                pids[key] = pid
                calls[key] = lambda c=c: _call(c, "msg_post", thread="cost", content=CONTENT)
                if fsync:
                    pids[f"{tree}_noop"] = pid
                    calls[f"{tree}_noop"] = lambda c=c: _call(c, "bus_get_config")
                    pids[f"{tree}_wake"] = pid
                    calls[f"{tree}_wake"] = _waker(c, boxes[True])
        for call in calls.values():  # warm up each
            for _ in range(20):
                await call()
        box = boxes[True]
        for _ in range(rounds):
            for name, call in calls.items():
                c0 = _cpu(pids[name])
                for _ in range(per_round // (4 if name.endswith("wake") else 1)):
                    t0 = time.perf_counter()
                    await call()
                    lat.setdefault(name, []).append(time.perf_counter() - t0)
                cpu[name] = cpu.get(name, 0.0) + _cpu(pids[name]) - c0
            for _ in range(per_round):
                t0 = time.perf_counter()
                box.post("lib", CONTENT, sender="bench")
                lat.setdefault("lib", []).append(time.perf_counter() - t0)
        await anyio.sleep(1.0)
        rss = {name: _rss_mb(pid) for name, pid in pids.items()}
    for b in boxes.values():
        b.close()
    out = {f"cpu_{k}": v / len(lat[k]) for k, v in cpu.items()}
    out |= {f"p50_{k}": percentile(v, 50) for k, v in lat.items()}
    out |= {f"rss_{k}": v for k, v in rss.items() if not k.endswith(("_noop", "_wake"))}
    return out


def _waker(c: Client, box: Mailbox) -> Callable[[], Awaitable[None]]:
    """Return a call that blocks c in msg_wait until this process posts, 2 ms later."""
    head = {"seq": box.head("wake")}
    me = f"w{id(c)}"

    async def wake() -> None:
        async with anyio.create_task_group() as tg:

            async def post() -> None:
                await anyio.sleep(0.002)
                box.post("wake", me, sender="bench")

            tg.start_soon(post)
            while True:
                got = await _call(c, "msg_wait", thread="wake", after_seq=head["seq"],
                                  timeout_s=30)  # fmt: skip
                head["seq"] = int(json.loads(got)["next_after_seq"])
                if me in got:
                    break

    return wake


async def _cold(params: StdioServerParameters) -> tuple[float, float]:
    """Return the seconds from spawning a server to its first tools/list answered, and the
    CPU seconds the server spent by then (less disturbed by a busy neighbour)."""
    known = set(_children())
    t0 = time.perf_counter()
    async with Client(params, mode=MODE, cache=None) as c:
        await c.list_tools()
        wall = time.perf_counter() - t0
        (pid,) = set(_children()) - known
        return wall, _cpu(pid)


def measure(quick: bool) -> tuple[dict[str, float], str]:
    """Return the figures (seconds, MB) and what the before column is (or why it is missing)."""
    with tempfile.TemporaryDirectory(dir=SCRATCH) as d:
        found = before_tree(Path(d) / "before")
        src = found if isinstance(found, Path) else None
        roots = {fsync: Path(d) / f"box-{fsync}" for fsync in (True, False)}
        for fsync, root in roots.items():
            Mailbox.init(root, fsync=fsync)
        out = anyio.run(_calls, roots, src, 4 if quick else 10, 100 if quick else 200)
        servers = {"echo": _minimal(), "now": _mailslot(roots[True], "cold")}
        if src:
            servers["before"] = _mailslot(roots[True], "cold-before", src)
        cold: dict[str, list[tuple[float, float]]] = {k: [] for k in servers}
        for _ in range(5 if quick else 21):
            for name, params in servers.items():
                cold[name].append(anyio.run(_cold, params))
    out |= {f"cold_{k}": statistics.median(w for w, _ in v) for k, v in cold.items()}
    out |= {f"coldcpu_{k}": statistics.median(c for _, c in v) for k, v in cold.items()}
    return out, (f"before = commit {BEFORE}" if src else f"no before column: {found}")


def render(v: dict[str, float], about: str) -> str:
    """Return the figures and the targets of issue 21 as a table."""
    ms = lambda x: f"{x * 1e3:.2f} ms"  # noqa: E731 - a local formatter
    ok = lambda good: "met" if good else "MISSED"  # noqa: E731
    has = "cpu_before_post" in v
    old = lambda key, f=ms: f(v[key]) if has else "n/a"  # noqa: E731
    cpu_ratio = v["cpu_now_post"] / v["cpu_echo"]
    cpu_ratio_off = v["cpu_now_post_nofsync"] / v["cpu_echo"]
    budget = v["p50_echo"] + v["p50_lib"] + 0.3e-3
    cold_ratio = v["cold_now"] / v["cold_echo"]
    mb = lambda x: f"{x:.0f} MB"  # noqa: E731
    rows = [
        ["server CPU per msg_post (fsync on)", ms(v["cpu_now_post"]), old("cpu_before_post"),
         ms(v["cpu_echo"]), f"{cpu_ratio:.2f}× echo (≤ 1.3×: {ok(cpu_ratio <= 1.3)})"],
        ["server CPU per msg_post (fsync off)", ms(v["cpu_now_post_nofsync"]),
         old("cpu_before_post_nofsync"), ms(v["cpu_echo"]), f"{cpu_ratio_off:.2f}× echo"],
        ["server CPU per call of a tool that touches no file", ms(v["cpu_now_noop"]),
         old("cpu_before_noop"), ms(v["cpu_echo"]), f"{v['cpu_now_noop'] / v['cpu_echo']:.2f}×"],
        ["waiting server's CPU per msg_wait woken by a post", ms(v["cpu_now_wake"]),
         old("cpu_before_wake"), "", ""],
        ["msg_post round trip p50 (fsync on)", ms(v["p50_now_post"]), old("p50_before_post"),
         ms(v["p50_echo"]),
         f"≤ echo + library post ({ms(v['p50_lib'])}) + 0.3 ms = {ms(budget)}: "
         f"{ok(v['p50_now_post'] <= budget)}"],
        ["cold start → first tools/list (median)", ms(v["cold_now"]), old("cold_before"),
         ms(v["cold_echo"]), f"{cold_ratio:.2f}× (≤ 1.1×: {ok(cold_ratio <= 1.1)})"],
        ["CPU of the server by its first tools/list (median)", ms(v["coldcpu_now"]),
         old("coldcpu_before"), ms(v["coldcpu_echo"]),
         f"{v['coldcpu_now'] / v['coldcpu_echo']:.2f}×"],
        ["resident memory, idle after calls", mb(v["rss_now_post"]),
         old("rss_before_post", mb), mb(v["rss_echo"]),
         f"+{v['rss_now_post'] - v['rss_echo']:.0f} MB over echo"],
    ]  # fmt: skip
    head = ["", "mailslot serve now", "before", "minimal SDK server: echo", "target"]
    return table(head, rows) + f"\n\n{about}; both servers and the minimal one ran in this run."


def run(quick: bool) -> str:
    """Return the table of figures measured now."""
    return render(*measure(quick))


if __name__ == "__main__":
    SCRATCH.mkdir(parents=True, exist_ok=True)
    print(run("--quick" in sys.argv))
