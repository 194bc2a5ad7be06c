"""Tasks: mailslot's claim/result protocol through MCP, beside Redis Streams in the same run.

mailslot: real `mailslot serve` processes driven by the official MCP client. Workers behave as
a model would: join the thread (`thread_create`), wait on their inbox (`msg_wait()`), claim the
task it offers (`task_claim`), close it with a result when the claim wins (`msg_post(type=
"result", reply_to=seq)`), and wait again. An inbox wait offers one open task for anyone at a
time, the first in the worker's own order among the oldest open ones, so workers seldom race
for one; a loser gets `claimed: false`, or a tool error once the task is done. The tasks are
posted after the workers joined and before their first wait (the inbox owes them then).

Redis Streams: a local `redis-server` on a Unix socket with persistence off (`--save ''
--appendonly no`), and once more with `--appendonly yes --appendfsync always` since mailslot
fsyncs every message; redis-py workers use one consumer group: XREADGROUP (count 1), then XADD
a result entry (mirroring mailslot's result post), then XACK. An entry whose consumer died is
taken over with XAUTOCLAIM, polled every 100 ms, once its idle time exceeds min-idle-time.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anyio
from mcp.client import Client

from bench._util import SCRATCH, percentile, table
from bench.mcp import MODE, _call, _params
from mailslot import Mailbox

HERE = Path(__file__).resolve().parent.parent
WORKERS = 4
POLL_S = 0.1  # how often the rescuing consumer calls XAUTOCLAIM
COMMON_IDLE_MS = 30_000  # the min-idle-time most examples and libraries use
MARGIN = 10  # the safe min-idle-time: this many times the longest hold seen in the drain


# --- shared harness ---------------------------------------------------------------------------


def _run_workers(argvs: list[list[str]], before_go: Callable[[], None]) -> tuple[float, list[str]]:
    """Start `python -m bench.tasks *argv` workers, wait until each prints "ready", call
    before_go(), release them all; return the release time (perf_counter, which is
    CLOCK_MONOTONIC and so comparable across processes) and each worker's last output line.

    The workers' stderr (and their servers': a claim of a task already done is a tool error,
    logged there) is kept aside and shown only if a worker fails."""
    with tempfile.TemporaryFile("w+") as err:
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.tasks", *argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                cwd=HERE,
            )
            for argv in argvs
        ]
        t0, outs = 0.0, []
        try:
            if all(p.stdout is not None and p.stdout.readline() == "ready\n" for p in procs):
                before_go()
                t0 = time.perf_counter()
                for p in procs:
                    assert p.stdin is not None
                    p.stdin.write("go\n")
                    p.stdin.flush()
                outs = [p.communicate(timeout=600)[0] for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
        if not outs or any(p.returncode for p in procs):
            err.seek(0)
            raise RuntimeError(f"a worker failed ({argvs!r}); its stderr:\n{err.read()[-3000:]}")
    return t0, [o.strip().splitlines()[-1] for o in outs]


def _ratio(ours: float, theirs: float, verb: str) -> str:
    """Say who wins and by how much, given two times (lower is better)."""
    if not ours or not theirs or ours != ours or theirs != theirs:  # missing or NaN
        return ""
    x = ours / theirs
    who = "Redis" if x >= 1 else "mailslot"
    x = x if x >= 1 else 1 / x
    return f"{who} {x:.1f}× {verb}" if x < 10 else f"{who} {x:.0f}× {verb}"


# --- mailslot through MCP ---------------------------------------------------------------------


async def _try(c: Client, tool: str, **args: Any) -> dict[str, Any] | None:
    """Call a tool; return its JSON, or None when it answered with a tool error."""
    result = await c.call_tool(tool, args)
    block = result.content[0]
    if result.is_error or not hasattr(block, "text"):
        return None
    return dict(json.loads(block.text))


async def _claim_loop(root: Path, n: int) -> tuple[list[float], list[float]]:
    """One poster posts a task, one worker claims it and posts the result; n times.
    Return the msg_post (of the task) and the winning task_claim round trips."""
    async with (
        Client(_params(root, "boss"), mode=MODE, cache=None) as boss,
        Client(_params(root, "solo"), mode=MODE, cache=None) as solo,
    ):
        thread = (await _call(boss, "thread_create", topic="claims"))["thread"]
        await _call(solo, "thread_create", topic="claims")
        posts, claims = [], []
        for i in range(n + 10):  # the first 10 warm up
            t0 = time.perf_counter()
            seq = (await _call(boss, "msg_post", thread=thread, content="job", type="task"))["seq"]
            t1 = time.perf_counter()
            got = await _call(solo, "task_claim", thread=thread, seq=seq)
            t2 = time.perf_counter()
            assert got.get("claimed") is True, got
            await _call(
                solo, "msg_post", thread=thread, content="done", type="result", reply_to=seq
            )
            if i >= 10:
                posts.append(t1 - t0)
                claims.append(t2 - t1)
        return posts, claims


def _mailslot_worker(root: str, name: str) -> None:
    """Join the thread, then drain the inbox until it stays quiet for 2 s: claim each task it
    offers, post the result of each one won, and with it claim the next one open to it in that
    thread (msg_post's next_task) until none is, then wait again. Print the time of the last
    result, how many tasks this worker closed, and how many claims it made (task_claim calls
    and results that asked for the next task)."""

    async def main() -> None:
        async with Client(_params(Path(root), name), mode=MODE, cache=None) as c:
            await _call(c, "thread_create", topic="drain")  # joined: its tasks are owed to it
            print("ready", flush=True)
            sys.stdin.readline()
            last, done, calls = 0.0, 0, 0
            while True:
                got = await _call(c, "msg_wait", timeout_s=2)
                if got["status"] == "timeout" and not got["messages"]:
                    break
                for m in got["messages"]:
                    if "task" not in m:  # an offer: the task, with its status and task_claim
                        continue
                    calls += 1
                    won = await _try(c, "task_claim", thread=m["thread"], seq=m["seq"])
                    while won is not None and won.get("claimed") is True:
                        posted = await _call(
                            c,
                            "msg_post",
                            thread=m["thread"],
                            content="done",
                            type="result",
                            reply_to=won["seq"],
                            next_task=True,  # and take the next task open to it there
                        )
                        last, done = time.perf_counter(), done + 1
                        calls += 1
                        won = posted["next"]
            print(last, done, calls, flush=True)

    anyio.run(main)


def _mailslot_drain(root: Path, n: int) -> dict[str, Any]:
    """WORKERS worker processes drain n tasks posted to anyone in one thread."""
    thread: list[str] = []

    def post_tasks() -> None:
        async def main() -> None:
            async with Client(_params(root, "boss"), mode=MODE, cache=None) as boss:
                thread.append((await _call(boss, "thread_create", topic="drain"))["thread"])
                for i in range(n):
                    await _call(
                        boss, "msg_post", thread=thread[0], content=f"task {i}", type="task"
                    )

        anyio.run(main)

    argvs = [["mworker", str(root), f"worker{i}"] for i in range(WORKERS)]
    t0, outs = _run_workers(argvs, post_tasks)
    lasts, dones, calls = zip(
        *((float(a), int(b), int(c)) for a, b, c in map(str.split, outs)), strict=True
    )
    box = Mailbox(root)
    messages = list(box.messages(thread[0]))
    tasks = {m.seq for m in messages if m.type == "task"}
    results = Counter(m.reply_to for m in messages if m.type == "result")
    once = sum(1 for s in tasks if results[s] == 1)
    twice = sum(1 for s in tasks if results[s] > 1)
    check = f"{once}/{n} done once" + (f", {twice} done more than once" if twice else "")
    if len(tasks) != n:
        check += f" ({len(tasks)} tasks in the thread)"
    return {
        "rate": n / (max(lasts) - t0) if max(lasts) > t0 else 0.0,
        "check": check,
        "claims_per_task": sum(calls) / n,
        "spread": "/".join(str(d) for d in dones),
    }


class _RawServe:
    """A `mailslot serve` spoken to with raw JSON-RPC lines, so that it can be SIGKILLed
    without an MCP client around it noticing."""

    def __init__(self, root: Path, agent: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailslot", "serve", "--root", str(root), "--agent", agent],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.last_id = 0
        hello = {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"},
        }
        self._request("initialize", hello)
        self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        self.proc.stdin.flush()

    def _request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.last_id += 1
        self._send({"jsonrpc": "2.0", "id": self.last_id, "method": method, "params": params})
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            assert line, "the server closed its stdout"
            reply = json.loads(line)
            if reply.get("id") == self.last_id:
                return dict(reply["result"])

    def call(self, tool: str, **args: Any) -> dict[str, Any]:
        result = self._request("tools/call", {"name": tool, "arguments": args})
        assert not result.get("isError"), result
        return dict(json.loads(result["content"][0]["text"]))

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


async def _handoffs(root: Path, repeats: int) -> list[float]:
    """A holder claims a task and its serve process is SIGKILLed while another worker waits on
    its inbox; return the seconds from the kill to that worker's winning task_claim."""
    out: list[float] = []
    async with (
        Client(_params(root, "boss"), mode=MODE, cache=None) as boss,
        Client(_params(root, "heir"), mode=MODE, cache=None) as heir,
    ):
        thread = (await _call(boss, "thread_create", topic="handoff"))["thread"]
        await _call(heir, "thread_create", topic="handoff")
        for i in range(repeats):
            holder = _RawServe(root, f"holder{i}")
            try:
                holder.call("thread_create", topic="handoff")
                seq = (
                    await _call(boss, "msg_post", thread=thread, content=f"job {i}", type="task")
                )["seq"]
                assert holder.call("task_claim", thread=thread, seq=seq).get("claimed") is True
                won: list[float] = []

                async def heir_loop(seq: int = seq, won: list[float] = won) -> None:
                    while True:
                        got = await _call(heir, "msg_wait", timeout_s=60)
                        for m in got["messages"]:
                            if m.get("type") != "task" or (m["thread"], m["seq"]) != (thread, seq):
                                continue
                            claim = await _try(heir, "task_claim", thread=thread, seq=seq)
                            if claim is not None and claim.get("claimed") is True:
                                won.append(time.perf_counter())
                                return

                with anyio.fail_after(60):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(heir_loop)
                        # The heir is waiting; kill at a random moment of its 0.5 s look
                        # at the holders (a fixed delay would always land at the same phase).
                        await anyio.sleep(random.uniform(0.5, 1.0))
                        t_kill = time.perf_counter()
                        holder.kill()
                assert won and won[0] > t_kill, "the heir won before the holder died"
                out.append(won[0] - t_kill)
                await _call(
                    heir, "msg_post", thread=thread, content="done", type="result", reply_to=seq
                )
            finally:
                if holder.proc.poll() is None:
                    holder.kill()
    return out


def measure_mailslot(root: Path, quick: bool) -> dict[str, Any]:
    """Return mailslot's figures: round trips in seconds, the drain, the handoffs."""
    n = 60 if quick else 300
    out: dict[str, Any] = {}
    Mailbox.init(root / "claim")
    posts, claims = anyio.run(_claim_loop, root / "claim", n)
    out["post_p50"] = percentile(posts, 50)
    out["claim_p50"], out["claim_p99"] = percentile(claims, 50), percentile(claims, 99)
    Mailbox.init(root / "drain")
    out["drain"] = _mailslot_drain(root / "drain", 200 if quick else 1000)
    Mailbox.init(root / "handoff")
    out["handoff"] = anyio.run(_handoffs, root / "handoff", 2 if quick else 5)
    return out


# --- Redis Streams ----------------------------------------------------------------------------


def redis_missing() -> str | None:
    """Return why the Redis column cannot run, or None."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (Debian: apt-get install redis-server)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return 'the redis Python package is missing (pip install ".[bench]")'
    return None


def _connect(sock: str) -> Any:
    import redis

    return redis.Redis(unix_socket_path=sock, decode_responses=True)


@contextmanager
def _redis_server(folder: Path, aof: bool) -> Iterator[str]:
    """Run a redis-server on a Unix socket in folder; yield the socket's path."""
    folder.mkdir(parents=True, exist_ok=True)
    sock = str(folder / "redis.sock")
    short = None
    if len(sock) > 100:  # a Unix socket's path has at most 107 bytes
        short = tempfile.mkdtemp(prefix="mailslot-redis-")
        sock = str(Path(short) / "redis.sock")
    persist = ["--appendonly", "yes", "--appendfsync", "always"] if aof else ["--appendonly", "no"]
    argv = [
        shutil.which("redis-server") or "redis-server",
        "--port",
        "0",
        "--unixsocket",
        sock,
        "--unixsocketperm",
        "700",
        "--dir",
        str(folder),
        "--save",
        "",
        *persist,
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if _connect(sock).ping():
                    break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: {' '.join(argv)}") from None
                time.sleep(0.02)
        yield sock
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if short is not None:
            shutil.rmtree(short, ignore_errors=True)


def _redis_claim_loop(sock: str, n: int) -> tuple[list[float], list[float]]:
    """XADD one entry, XREADGROUP it, XADD a result and XACK; n times. Return the XADD and
    XREADGROUP round trips."""
    r = _connect(sock)
    r.xgroup_create("one", "g", id="$", mkstream=True)
    adds, reads = [], []
    for i in range(n + 10):
        t0 = time.perf_counter()
        r.xadd("one", {"content": "job"})
        t1 = time.perf_counter()
        got = r.xreadgroup("g", "solo", {"one": ">"}, count=1)
        t2 = time.perf_counter()
        eid = got[0][1][0][0]
        r.xadd("one-results", {"task": eid, "content": "done"})
        r.xack("one", "g", eid)
        if i >= 10:
            adds.append(t1 - t0)
            reads.append(t2 - t1)
    return adds, reads


def _redis_worker(sock: str, name: str, stream: str) -> None:
    """XREADGROUP one entry at a time until none is left; print the time of the last XACK, how
    many entries this worker acked, and the longest hold (read call to XACK) in seconds."""
    r = _connect(sock)
    print("ready", flush=True)
    sys.stdin.readline()
    last, acked, hold = 0.0, 0, 0.0
    while True:
        t0 = time.perf_counter()
        got = r.xreadgroup("g", name, {stream: ">"}, count=1)
        if not got:
            break
        for eid, _fields in got[0][1]:
            r.xadd(stream + "-results", {"task": eid, "by": name, "content": "done"})
            acked += r.xack(stream, "g", eid)
            last = time.perf_counter()
            hold = max(hold, last - t0)
    print(last, acked, hold, flush=True)


def _redis_drain(sock: str, n: int, stream: str) -> dict[str, Any]:
    r = _connect(sock)

    def add_tasks() -> None:
        r.xgroup_create(stream, "g", id="0", mkstream=True)
        for i in range(n):
            r.xadd(stream, {"content": f"task {i}"})

    argvs = [["rworker", sock, f"c{i}", stream] for i in range(WORKERS)]
    t0, outs = _run_workers(argvs, add_tasks)
    lasts, acks, holds = zip(
        *((float(a), int(b), float(c)) for a, b, c in map(str.split, outs)), strict=True
    )
    tasks = [eid for eid, _ in r.xrange(stream)]
    results = Counter(fields["task"] for _, fields in r.xrange(stream + "-results"))
    once = sum(1 for t in tasks if results[t] == 1)
    pending = r.xpending(stream, "g")["pending"]
    check = (
        f"{once}/{n} acked once"
        if sum(acks) == n and not pending
        else (f"{once}/{n} results once, {sum(acks)} acks, {pending} pending")
    )
    return {
        "rate": n / (max(lasts) - t0) if max(lasts) > t0 else 0.0,
        "check": check,
        "hold_max": max(holds),
        "spread": "/".join(str(a) for a in acks),
    }


def _redis_holder(sock: str, stream: str) -> None:
    """Read one entry and hold it forever (until SIGKILLed)."""
    r = _connect(sock)
    got = r.xreadgroup("g", "doomed", {stream: ">"}, count=1)
    print("held", got[0][1][0][0], flush=True)
    time.sleep(3600)


def _redis_redelivery(sock: str, stream: str, min_idle_ms: int) -> float:
    """A consumer takes an entry and is SIGKILLed; another runs XAUTOCLAIM every POLL_S.
    Return the seconds from the kill to the moment the other consumer owns the entry."""
    r = _connect(sock)
    r.xgroup_create(stream, "g", id="0", mkstream=True)
    eid = r.xadd(stream, {"content": "job"})
    holder = subprocess.Popen(
        [sys.executable, "-m", "bench.tasks", "rholder", sock, stream],
        stdout=subprocess.PIPE,
        text=True,
        cwd=HERE,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().split() == ["held", eid]
    t_kill = time.perf_counter()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
    while True:
        _next, claimed, *_ = r.xautoclaim(stream, "g", "rescuer", min_idle_ms, "0-0", count=1)
        if claimed:
            assert claimed[0][0] == eid
            return time.perf_counter() - t_kill
        time.sleep(POLL_S)


def measure_redis(folder: Path, quick: bool, common: list[float]) -> dict[str, Any]:
    """Measure on a redis-server without persistence, then the claim and drain again with an
    fsync per write. common receives the one redelivery at the common min-idle-time, measured in
    a background thread (it is mostly sleeping) while everything else runs."""
    n = 60 if quick else 300
    out: dict[str, Any] = {}
    with _redis_server(folder / "mem", aof=False) as sock:
        adds, reads = _redis_claim_loop(sock, n)
        out["post_p50"] = percentile(adds, 50)
        out["claim_p50"], out["claim_p99"] = percentile(reads, 50), percentile(reads, 99)
        out["drain"] = _redis_drain(sock, 200 if quick else 1000, "drain")
        hold_ms = out["drain"]["hold_max"] * 1e3
        out["safe_idle_ms"] = max(10, math.ceil(hold_ms * MARGIN / 10) * 10)
        out["redelivery"] = [
            _redis_redelivery(sock, f"safe{i}", out["safe_idle_ms"])
            for i in range(2 if quick else 5)
        ]
        out["waited_common"] = _wait_for(common)
    with _redis_server(folder / "aof", aof=True) as sock:
        adds, reads = _redis_claim_loop(sock, n)
        out["aof_post_p50"] = percentile(adds, 50)
        out["aof_claim_p50"], out["aof_claim_p99"] = percentile(reads, 50), percentile(reads, 99)
        out["aof_drain"] = _redis_drain(sock, 200 if quick else 1000, "drain")
    exe = shutil.which("redis-server") or "redis-server"
    said = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.split()
    server = said[2].removeprefix("v=") if len(said) > 2 else "?"
    out["versions"] = f"redis-server {server}, redis-py {version('redis')}"
    return out


def _wait_for(common: list[float]) -> float:
    """Wait for the background redelivery; return how long that took here."""
    t0 = time.perf_counter()
    while not common:
        time.sleep(0.1)
    return time.perf_counter() - t0


# --- the section ------------------------------------------------------------------------------


def measure(quick: bool) -> tuple[dict[str, Any], dict[str, Any] | None, str | None]:
    """Return mailslot's figures, Redis's (None when skipped), and why Redis was skipped."""
    why = redis_missing()
    with tempfile.TemporaryDirectory(dir=SCRATCH) as d:
        common: list[float] = []
        background: threading.Thread | None = None
        redis_dir = Path(d) / "redis"
        with _redis_server(redis_dir / "common", aof=False) if not why else _nothing() as sock:
            if sock:

                def slow() -> None:
                    try:
                        common.append(_redis_redelivery(sock, "common", COMMON_IDLE_MS))
                    except Exception:
                        common.append(math.nan)
                        raise

                background = threading.Thread(target=slow, daemon=True)
                background.start()
            ours = measure_mailslot(Path(d) / "mailslot", quick)
            theirs = None if why else measure_redis(redis_dir, quick, common)
            if background is not None:
                background.join()
        if theirs is not None:
            theirs["redelivery_common"] = common[0]
    return ours, theirs, why


@contextmanager
def _nothing() -> Iterator[str]:
    yield ""


def _ms(x: float) -> str:
    return f"{x * 1e3:.2f} ms"


def _secs(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} s (max {max(xs):.2f} s)"


def _per(rate: float) -> float:
    return 1 / rate if rate else 0.0


def render(ours: dict[str, Any], theirs: dict[str, Any] | None, why: str | None) -> str:
    """Return the table and what it means."""
    od = ours["drain"]
    handoff = statistics.median(ours["handoff"])
    claim = f"{_ms(ours['claim_p50'])} / {_ms(ours['claim_p99'])}"
    drain = f"{od['rate']:,.0f} tasks/s"
    names = [
        "claim round trip, p50 / p99 (a task_claim that wins; XREADGROUP count 1)",
        "  same, Redis with appendfsync always",
        "post a task, p50, same loop (msg_post type=task; XADD)",
        "  same, Redis with appendfsync always",
        f"drain: {WORKERS} worker processes, one thread / stream",
        "  same, Redis with appendfsync always",
        "  each task closed exactly once",
        "  tasks per worker; claim calls per task",
        "handoff after SIGKILL of the holder (Redis: XAUTOCLAIM, min-idle "
        f"{COMMON_IDLE_MS // 1000} s, the common setting)",
        "  same, Redis at the smallest safe min-idle"
        + (f" ({theirs['safe_idle_ms']} ms)" if theirs else ""),
    ]
    mine = [
        claim,
        claim,
        _ms(ours["post_p50"]),
        _ms(ours["post_p50"]),
        drain,
        drain,
        od["check"],
        f"{od['spread']}; {od['claims_per_task']:.2f} claims",
        _secs(ours["handoff"]),
        _secs(ours["handoff"]),
    ]
    if theirs is None:
        rows = [[n, m, "skipped", ""] for n, m in zip(names, mine, strict=True)]
    else:
        t, td, ad = theirs, theirs["drain"], theirs["aof_drain"]
        cells = [
            (f"{_ms(t['claim_p50'])} / {_ms(t['claim_p99'])}", ours["claim_p50"], t["claim_p50"]),
            (
                f"{_ms(t['aof_claim_p50'])} / {_ms(t['aof_claim_p99'])}",
                ours["claim_p50"],
                t["aof_claim_p50"],
            ),
            (_ms(t["post_p50"]), ours["post_p50"], t["post_p50"]),
            (_ms(t["aof_post_p50"]), ours["post_p50"], t["aof_post_p50"]),
            (f"{td['rate']:,.0f} tasks/s", _per(od["rate"]), _per(td["rate"])),
            (f"{ad['rate']:,.0f} tasks/s", _per(od["rate"]), _per(ad["rate"])),
            (f"{td['check']}; fsync always: {ad['check']}", 0, 0),
            (f"{td['spread']}; 1 XREADGROUP", 0, 0),
            (f"{t['redelivery_common']:.2f} s (once)", handoff, t["redelivery_common"]),
            (_secs(t["redelivery"]), handoff, statistics.median(t["redelivery"])),
        ]
        rows = [
            [n, m, c, _ratio(a, b, "sooner" if i >= 8 else "faster")]
            for i, (n, m, (c, a, b)) in enumerate(zip(names, mine, cells, strict=True))
        ]
    body = table(["measure", "mailslot (MCP, fsync on)", "Redis Streams", "ratio"], rows)
    if theirs is None:
        body += f"\n\nRedis Streams skipped: {why}."
        hold = ""
    else:
        hold = (
            f", {theirs['drain']['hold_max'] * 1e3:.1f} ms (from the XREADGROUP call to XACK's "
            f"return, the worst of the {WORKERS} workers)"
        )
        body += f"\n\nRedis: {theirs['versions']}, on a Unix socket."
    text = [
        "What is compared. Redis is an in-memory server: a write is acknowledged once it is in "
        'memory (in the "appendfsync always" rows, once the append-only file is fsynced too), '
        "and each call is one round trip over a Unix socket. mailslot has no server: every "
        "message is a file fsynced into a folder, and every call here goes through the MCP SDK "
        "over stdio (JSON-RPC, validation) to a `mailslot serve` process, which is most of each "
        "round trip (see the MCP section). An inbox wait offers a worker one open task, the "
        "first in its own order among the oldest open ones, and each result the worker posts "
        "claims the next task open to it (msg_post with next_task, in the same order, decided "
        "under the thread's lock: one call per task), so workers seldom race for one (the claim "
        "calls per task say how often they did); a Redis consumer group hands each entry to "
        "one consumer. A worker that always finds work never blocks in a wait, so its server "
        "never starts watching the folder and pays nothing for the others' file events.",
        "Handoff. mailslot frees a dead holder's task as soon as it is seen dead: a claim "
        "records its holder's process (the `mailslot serve` that made it), and on one machine "
        "the server of a worker waiting on its inbox checks every 0.5 s that held tasks' "
        "holders still live; when one does not, it reopens the task, an event that wakes the "
        "waiting workers. A lease (a sign of work within lease_s) covers a holder that lives "
        "but hangs; it plays no part here. Redis redelivery is time-based only: XAUTOCLAIM "
        f"(polled every {POLL_S * 1e3:.0f} ms here) takes over any entry idle longer than "
        "min-idle-time, whether its consumer is dead or merely slow, at the first poll after "
        "that. Each holder is killed as soon as it has the task, the worst case for Redis (a "
        "consumer that dies later in its work is replaced sooner, by as much). min-idle-time is "
        "safe only if it exceeds the longest time a live consumer may hold an entry before "
        "XACK; below that, a live consumer's entry is stolen and the task is done twice. The "
        f"smallest safe value here is {MARGIN}× the longest hold seen in this run's drain{hold}, "
        "rounded up to 10 ms; it is safe only for these trivial tasks. For work that takes an "
        "agent minutes, min-idle-time must exceed those minutes, which is why 30 s or more is "
        "the common setting.",
    ]
    return body + "\n\n" + "\n\n".join(textwrap.fill(p, 100, break_on_hyphens=False) for p in text)


def run(quick: bool) -> str:
    """Return the section measured now."""
    return render(*measure(quick))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "mworker":
        _mailslot_worker(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "rworker":
        _redis_worker(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) > 1 and sys.argv[1] == "rholder":
        _redis_holder(sys.argv[2], sys.argv[3])
    else:
        SCRATCH.mkdir(parents=True, exist_ok=True)
        print(run("--quick" in sys.argv))
