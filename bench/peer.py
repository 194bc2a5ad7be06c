"""The peer, measured in the same run: AgentChatBus 0.2.2, an MCP bus on SQLite.

It needs `mcp<2`, so it gets its own virtual environment (created on first use under the
scratch folder). It is driven through its stdio server by the same client code that drives
`mailslot serve` (the official mcp 2.x client, handshake era). Settings changed, and why:
- AGENTCHATBUS_RATE_LIMIT=0: its default of 30 messages per minute per author would throttle
  every benchmark after the 30th post;
- AGENTCHATBUS_DB: a fresh SQLite file per run in the scratch folder (the default is in the
  home directory), and the working directory is scratch too (it writes msg_wait.log there).
Everything else is its default, as a user gets it (AGENTCHATBUS_RELOAD=1 included).
Its strict sync means each post needs a fresh reply token, taken with
msg_wait(after_seq=head-1), the cheapest legal way; only the msg_post call itself is timed.
Its stdio server does not exit when stdin closes, so the client kills it after 2 s.
"""

from __future__ import annotations

import json
import random
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

VENV = SCRATCH / "venv-acb"
STDIO = VENV / "bin" / "agentchatbus-stdio"
PACKAGES = ["agentchatbus==0.2.2", "mcp<2"]


def ensure() -> str | None:
    """Install the peer if needed; return None when ready, else why it cannot run."""
    if STDIO.exists():
        return None
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True)
        subprocess.run(
            [str(VENV / "bin" / "pip"), "install", "-q", *PACKAGES],
            check=True,
            capture_output=True,
            timeout=600,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        detail = getattr(e, "stderr", b"") or b""
        return (
            f"could not install {' '.join(PACKAGES)}: {detail.decode(errors='replace')[-300:] or e}"
        )
    return None if STDIO.exists() else "installed, but agentchatbus-stdio is missing"


def _params(store: Path) -> StdioServerParameters:
    env = {"AGENTCHATBUS_DB": str(store / "bus.db"), "AGENTCHATBUS_RATE_LIMIT": "0"}
    return StdioServerParameters(command=str(STDIO), args=[], env=env, cwd=str(store))


async def _call(c: Client, tool: str, **args: Any) -> dict[str, Any]:
    result = await c.call_tool(tool, args)
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return dict(json.loads(block.text))


class _Agent:
    """One AgentChatBus agent on one stdio server: registered, in one thread."""

    def __init__(self, client: Client) -> None:
        self.c = client
        self.agent: dict[str, Any] = {}
        self.thread = ""
        self.head = 0

    async def join(self, thread: str | None) -> None:
        self.agent = await _call(self.c, "agent_register", ide="bench", model="none")
        if thread is None:
            made = await _call(
                self.c,
                "thread_create",
                topic="bench",
                agent_id=self.agent["agent_id"],
                token=self.agent["token"],
            )
            thread = made["thread_id"]
        self.thread = thread

    async def token(self) -> str:
        got = await _call(
            self.c,
            "msg_wait",
            thread_id=self.thread,
            after_seq=max(self.head - 1, 0),
            agent_id=self.agent["agent_id"],
            token=self.agent["token"],
            timeout_ms=1000,
            return_format="json",
        )
        self.head = got["current_seq"]
        return str(got["reply_token"])

    async def post(self, content: str, token: str) -> dict[str, Any]:
        return await _call(
            self.c,
            "msg_post",
            thread_id=self.thread,
            author=self.agent["agent_id"],
            content=content,
            expected_last_seq=self.head,
            reply_token=token,
        )


async def _post_latency(store: Path, n: int) -> list[float]:
    async with Client(_params(store), mode="legacy", cache=None) as c:
        a = _Agent(c)
        await a.join(None)
        out = []
        for i in range(n + 5):
            token = await a.token()
            t0 = time.perf_counter()
            done = await a.post("x" * 400, token)
            if i >= 5:  # the first few warm up
                out.append(time.perf_counter() - t0)
            assert "seq" in done, done
        return out


async def _wake_latency(store: Path, n: int) -> list[float]:
    async with (
        Client(_params(store), mode="legacy", cache=None) as sc,
        Client(_params(store), mode="legacy", cache=None) as wc,
    ):
        sender, waiter = _Agent(sc), _Agent(wc)
        await sender.join(None)
        await waiter.join(sender.thread)
        out: list[float] = []
        for _ in range(n):
            head = (
                await _call(
                    wc,
                    "msg_wait",
                    thread_id=waiter.thread,
                    after_seq=0,
                    agent_id=waiter.agent["agent_id"],
                    token=waiter.agent["token"],
                    timeout_ms=1,
                    return_format="json",
                )
            )["current_seq"]
            sent: list[float] = []
            async with anyio.create_task_group() as tg:

                async def send() -> None:
                    token = await sender.token()
                    await anyio.sleep(random.uniform(0.005, 1.0))  # random phase of its 1 s poll
                    sent.append(time.perf_counter())
                    await sender.post("ping", token)

                tg.start_soon(send)
                await _call(
                    wc,
                    "msg_wait",
                    thread_id=waiter.thread,
                    after_seq=head,
                    agent_id=waiter.agent["agent_id"],
                    token=waiter.agent["token"],
                    timeout_ms=30000,
                    return_format="json",
                )
                out.append(time.perf_counter() - sent[0])
        return out


def _writer(store: str, thread: str, seconds: float) -> None:
    async def main() -> None:
        async with Client(_params(Path(store)), mode="legacy", cache=None) as c:
            a = _Agent(c)
            await a.join(thread)
            print("ready", flush=True)
            sys.stdin.readline()
            accepted = rejected = 0
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                done = await a.post("x" * 400, await a.token())
                if "seq" in done:
                    accepted += 1
                else:
                    rejected += 1  # strict sync: someone posted since our token; retry
            print(json.dumps({"accepted": accepted, "rejected": rejected}), flush=True)

    anyio.run(main)


async def _make_thread(store: Path) -> str:
    async with Client(_params(store), mode="legacy", cache=None) as c:
        a = _Agent(c)
        await a.join(None)
        return a.thread


def _throughput(store: Path, seconds: float) -> tuple[float, float]:
    thread = anyio.run(_make_thread, store)
    argvs = [["writer", str(store), thread, str(seconds)] for _ in range(4)]
    outs, elapsed = run_writers("bench.peer", argvs)
    results = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    accepted = sum(r["accepted"] for r in results)
    attempts = accepted + sum(r["rejected"] for r in results)
    return accepted / elapsed, (attempts - accepted) / max(attempts, 1)


async def _cold_start(store: Path) -> float:
    t0 = time.perf_counter()
    async with Client(_params(store), mode="legacy", cache=None) as c:
        await c.list_tools()
        return time.perf_counter() - t0


def measure(quick: bool) -> dict[str, float]:
    """Return the peer's figures, in the units of bench.mcp.measure."""
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=SCRATCH) as d:
        store = Path(d)
        lat = anyio.run(_post_latency, store, 30 if quick else 200)
        out["post_p50"], out["post_p99"] = percentile(lat, 50), percentile(lat, 99)
        lat = anyio.run(_wake_latency, store, 10 if quick else 60)
        out["wake_p50"], out["wake_p99"] = percentile(lat, 50), percentile(lat, 99)
        out["writers4"], out["rejected_share"] = _throughput(store, 3.0 if quick else 10.0)
        cold = [anyio.run(_cold_start, store) for _ in range(2 if quick else 5)]
        out["cold_p50"] = statistics.median(cold)
    return out


def compare(ours: dict[str, float], peer: dict[str, float]) -> str:
    """Return the side-by-side table: mailslot, AgentChatBus, and how many times better."""
    ms = lambda x: f"{x * 1e3:.1f} ms"  # noqa: E731 - a local formatter
    rows = []
    for label, key, fmt, higher_is_better in (
        ("msg_post round trip p50", "post_p50", ms, False),
        ("msg_post round trip p99", "post_p99", ms, False),
        ("post→wake between two server processes p50", "wake_p50", ms, False),
        ("post→wake between two server processes p99", "wake_p99", ms, False),
        ("4 writer processes, accepted msg/s", "writers4", lambda x: f"{x:,.0f}", True),
        ("cold start → first tools/list p50", "cold_p50", ms, False),
    ):
        a, b = ours[key], peer[key]
        better = a / b if higher_is_better else b / a
        rows.append([label, fmt(a), fmt(b), f"{better:.1f}×"])
    note = (
        f"\n\nAgentChatBus rejected {peer['rejected_share'] * 100:.0f} % of the 4 writers' "
        "attempts (strict sync) and they retried; mailslot rejects none."
    )
    return (
        table(["through MCP over stdio", "mailslot", "AgentChatBus 0.2.2", "mailslot is"], rows)
        + note
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["writer"]:
        _writer(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    else:
        SCRATCH.mkdir(parents=True, exist_ok=True)
        why = ensure()
        print(why or json.dumps(measure("--quick" in sys.argv), indent=2))
