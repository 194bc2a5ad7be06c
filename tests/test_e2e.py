"""End to end: real `mailslot serve` subprocesses over stdio, driven by the official MCP client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import anyio
from helpers import SERVE, agent, answer, call, raw_serve, until, until_async

from mailslot import Mailbox


def status_of(root: Path, name: str) -> str:
    return Mailbox(root).agents.presence(name).status


def _status(root: Path, name: str, status: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return status_of(root, name) == status

    return check


def test_three_agents_collaborate(root: Path) -> None:
    async def main() -> None:
        async with (
            agent(root, "planner", "legacy") as planner,
            agent(root, "coder", "auto") as coder,
            agent(root, "reviewer", "legacy") as reviewer,
        ):
            for c, what in ((planner, "plans"), (coder, "writes code"), (reviewer, "reviews")):
                await call(c, "agent_register", description=what)
            listed = await call(planner, "agent_list")
            assert {a["agent"]: a["status"] for a in listed["agents"]} == {
                "coder": "online",
                "planner": "online",
                "reviewer": "online",
            }
            thread = (await call(planner, "thread_create", topic="Feature X"))["thread"]
            assert (await call(reviewer, "thread_create", topic="feature x"))["thread"] == thread

            results: dict[str, Any] = {}

            async def coder_works() -> None:
                task = await call(coder, "msg_wait")  # its inbox
                assert task["status"] == "messages"
                seq = task["messages"][0]["seq"]
                await call(
                    coder,
                    "msg_post",
                    thread=thread,
                    content="Done: see PR 9",
                    type="result",
                    reply_to=seq,
                )

            async def planner_waits() -> None:
                results["planner"] = await call(planner, "msg_wait", thread=thread, after_seq=1)

            async def coder_waits_on_its_inbox() -> bool:
                busy = await call(reviewer, "agent_list")
                return {a["agent"]: a.get("waiting_on") for a in busy["agents"]}["coder"] == "inbox"

            async with anyio.create_task_group() as tg:
                tg.start_soon(coder_works)
                await until_async("agent_list shows the coder waiting", coder_waits_on_its_inbox)
                await call(
                    planner,
                    "msg_post",
                    thread=thread,
                    content="Please build X",
                    type="task",
                    to=["coder"],
                )
                tg.start_soon(planner_waits)

            got = results["planner"]
            assert [m["content"] for m in got["messages"]] == ["Done: see PR 9"]
            assert got["messages"][0]["from"] == "coder" and got["messages"][0]["reply_to"] == 1
            await call(reviewer, "thread_set_state", thread=thread, state="review")
            await call(
                reviewer,
                "thread_set_state",
                thread=thread,
                state="closed",
                summary="X shipped in PR 9",
            )
            final = await call(planner, "thread_get", thread=thread)
            assert (final["state"], final["summary"]) == ("closed", "X shipped in PR 9")
            assert final["participants"] == ["planner", "coder", "reviewer"]

    anyio.run(main)
    for name in ("planner", "coder", "reviewer"):
        assert status_of(root, name) == "offline", "a server marks itself gone when stdin closes"


def test_cancelled_wait_stops_and_the_server_goes_on(root: Path) -> None:
    async def main() -> None:
        async with agent(root, "patient") as c:
            await call(c, "thread_create", topic="t")
            async with anyio.create_task_group() as tg:

                async def wait() -> None:
                    await c.call_tool("msg_wait", {"thread": "t", "timeout_s": 60})
                    raise AssertionError("the wait ended by itself")

                tg.start_soon(wait)
                await until_async("the server waiting", _status(root, "patient", "waiting"))
                tg.cancel_scope.cancel()
            # The cancelled wait left 'waiting' (at once, not after its 60 s).
            await until_async("the server online again", _status(root, "patient", "online"))
            posted = await call(c, "msg_post", thread="t", content="still here")
            assert posted["seq"] == 1

    anyio.run(main)


def test_killed_server_reads_offline(root: Path) -> None:
    async def main() -> None:
        async with agent(root, "observer") as watcher:

            async def victim_offline() -> bool:
                listed = await call(watcher, "agent_list")
                return {a["agent"]: a["status"] for a in listed["agents"]}["victim"] == "offline"

            victim_client = agent(root, "victim")
            victim = await victim_client.__aenter__()
            try:
                await call(victim, "thread_create", topic="t")
                pid = Mailbox(root).agents.presence("victim").pid
                assert pid and status_of(root, "victim") == "online"
                assert not await victim_offline()
                os.kill(pid, signal.SIGKILL)
                # Offline on this machine as soon as the process is gone (reaped), not after
                # the 30 s heartbeat timeout.
                await until_async("agent_list shows the killed server offline", victim_offline, 15)
            finally:
                # Closing a client whose server died may raise; only that is ignored.
                with suppress(Exception):
                    await victim_client.__aexit__(None, None, None)
            # The name is free again: a new process takes it over.
            async with agent(root, "victim") as again:
                assert (await call(again, "bus_get_config"))["agent"] == "victim"

    anyio.run(main)


def test_a_live_name_cannot_be_taken_twice(root: Path) -> None:
    async def main() -> None:
        async with agent(root, "solo"):
            result = subprocess.run(
                [*SERVE, "--root", str(root), "--agent", "solo", "--strict-name"],
                capture_output=True,
                text=True,
                timeout=30,
                stdin=subprocess.DEVNULL,
            )
            assert result.returncode == 1
            assert "agent name 'solo' is in use by a live process" in result.stderr

    anyio.run(main)


def test_stdout_is_protocol_only_and_stdin_close_exits_during_a_wait(root: Path) -> None:
    Mailbox(root).create_thread("t", creator="x")
    proc = raw_serve(root, "raw")
    assert proc.stdin is not None
    first = answer(proc, 1)
    assert first["result"]["serverInfo"]["name"] == "mailslot"
    wait = {"name": "msg_wait", "arguments": {"thread": "t", "timeout_s": 600}}
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": wait}
    proc.stdin.write((json.dumps(call) + "\n").encode())
    proc.stdin.flush()
    until("the server waiting", lambda: status_of(root, "raw") == "waiting")
    try:
        # Closes stdin, as a client that quits does: the server exits mid-wait, long before
        # its 600 s wait would end (TimeoutExpired otherwise).
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    for line in out.splitlines():
        assert json.loads(line)["jsonrpc"] == "2.0", "stdout carries nothing but the protocol"
    assert status_of(root, "raw") == "offline"


def test_serve_without_a_mailbox_says_what_to_do(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MAILSLOT_ROOT"}
    result = subprocess.run(
        [*SERVE],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    assert "mailslot init" in result.stderr and result.stdout == ""
