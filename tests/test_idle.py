"""Idle is free at any size: what a waiting agent's server looks at does not grow with threads.

An agent spends most of its day blocked in `msg_wait`, calling again as soon as a wait times
out, over a mailbox that keeps every thread it ever had. These tests watch a real `mailslot
serve` under strace while its agent waits on its inbox: after the first look of the session
(which reads every thread once), calls that find nothing touch no thread's files, and a message
posted by another process is found by looking at its thread alone. Speed itself is measured in
`bench/idle.py`, not here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from helpers import call, params, strace
from mcp import StdioServerParameters
from mcp.client import Client

from mailslot import Mailbox
from mailslot.store import plan as _plan

CALLS = "openat,open,stat,lstat,newfstatat,statx,access,faccessat,faccessat2,readlink"
THREADS = 612  # many more than a tick sweeps (POLL_SLICE)


def _traced(root: Path, agent: str, log: Path) -> StdioServerParameters:
    plain = params(root, "--agent", agent)
    return StdioServerParameters(
        command=strace(),
        args=["-f", "-qq", "-e", f"trace={CALLS}", "-o", str(log), plain.command, *plain.args],
        env=plain.env,
    )


def _mailbox(root: Path) -> list[str]:
    box = Mailbox.init(root, fsync=False)
    box.agents.register("alice")
    box.agents.register("idler")
    threads = [box.create_thread(f"quiet {i}", creator="alice").id for i in range(THREADS)]
    for thread in threads:
        box.post(thread, "old news for someone else", sender="alice", to=["alice"])
    return threads


def _touched(log: Path, start: int, threads: list[str]) -> tuple[set[str], int]:
    """Return the threads whose files the lines of log from line start touched (message
    files, folders, positions, indexes), and how many lines there are now."""
    lines = log.read_text(errors="replace").splitlines()
    pattern = re.compile(r"/(?:threads|cursors/[^/]+|index)/([^/\"]+)")
    known = set(threads)
    touched = set()
    for line in lines[start:]:
        for name in pattern.findall(line):
            name = name.removesuffix(".json")
            if name in known:
                touched.add(name)
    return touched, len(lines)


def _lines(log: Path) -> int:
    return len(log.read_text(errors="replace").splitlines())


def test_idle_inbox_calls_touch_no_thread_and_a_post_is_found_in_its_thread_alone(
    tmp_path: Path,
) -> None:
    root = tmp_path / "box"
    threads = _mailbox(root)
    log = tmp_path / "strace.log"
    news = threads[len(threads) // 2]

    async def main() -> tuple[set[str], set[str], set[str], list[str]]:
        async with Client(_traced(root, "idler", log), mode="legacy", cache=None) as c:
            # The session's first look, and the look at every thread of the wait that starts
            # the watch (its first that blocks: a look under strace outlasts a short timeout).
            first = await call(c, "msg_wait", timeout_s=3)
            assert first["status"] == "timeout", first
            looked_first, mark = _touched(log, 0, threads)
            for _ in range(3):  # an agent calls again as soon as a wait times out
                again = await call(c, "msg_wait", timeout_s=1)
                assert again["status"] == "timeout", again
            idle, mark = _touched(log, mark, threads)
            async with anyio.create_task_group() as tg:
                got: list[dict] = []

                async def wait() -> None:
                    got.append(await call(c, "msg_wait", timeout_s=30))

                tg.start_soon(wait)
                await anyio.sleep(1.0)  # blocked by now (a wait that started later finds it)
                _, mark = _touched(log, mark, threads)
                with Mailbox(root) as other:
                    other.post(news, "for the idler", sender="alice", to=["idler"])
            woken, _ = _touched(log, mark, threads)
            return looked_first, idle, woken, [m["content"] for m in got[0]["messages"]]

    looked_first, idle, woken, contents = anyio.run(main)
    assert len(looked_first) == THREADS, "the first look reads every thread once"
    assert contents == ["for the idler"]
    assert idle == set(), f"idle calls touched {len(idle)} of {THREADS} threads"
    assert woken == {news}, f"the wake looked at {len(woken)} threads: {sorted(woken)[:5]}"


@pytest.mark.parametrize("mode", ["native", "poll"])
def test_a_look_after_news_reads_only_where_the_news_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """In the library: a wait kept across runs (as an agent's inbox is) looks at every thread
    on its first run only; later runs look where a file event named a thread (native) or at a
    bounded sweep (poll), never at every thread again."""
    root = tmp_path / "box"
    threads = _mailbox(root)
    looked: list[str] = []
    real = _plan.exists

    def counting(tdir: Path | str, seq: int) -> bool:
        looked.append(Path(tdir).name)
        return real(tdir, seq)

    monkeypatch.setattr(_plan, "exists", counting)
    box = Mailbox(root, wait_mode=mode, poll_interval=0.05)
    plan = box.wait_plan(None, box.cursor(), to="idler")

    async def main() -> list[str]:
        await box.run_wait(plan, 0)
        assert set(looked) == set(threads), "the first run looks at every thread"
        looked.clear()
        got = await box.run_wait(plan, 0)
        assert not got.messages and looked == [], f"a second run looked at {len(looked)}"
        waiting = anyio.Event()
        out: list[str] = []

        async def run() -> None:
            waiting.set()
            got = await box.run_wait(plan, 60)
            out.extend(m.content for m in got.messages)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await waiting.wait()
            await anyio.sleep(0.3)
            looked.clear()
            subprocess.run(
                [sys.executable, "-m", "mailslot", "post", threads[7], "news", "--root",
                 str(root), "--as", "alice", "--to", "idler"],
                check=True, capture_output=True, timeout=60,
            )  # fmt: skip
        return out

    try:
        assert anyio.run(main) == ["news"]
    finally:
        box.close()
    if mode == "native":  # (poll mode sweeps a bounded slice a tick until it comes to it)
        assert set(looked) == {threads[7]}, f"looked at {len(set(looked))} threads"
