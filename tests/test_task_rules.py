"""Task rules a model meets through real `mailslot serve` processes and the official client:
a clean exit gives a task back without failing it, a result must reply to the task it closes
(from its holder while someone holds it), and a task for anyone reaches every waiting agent.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import anyio
from helpers import agent, answer, call, raw_serve, until
from mcp import types
from mcp.client import Client

from mailslot import Mailbox


async def refused(c: Client, tool: str, **args: Any) -> str:
    """Call tool; assert the server answered with a tool error; return its text."""
    result = await c.call_tool(tool, args)
    assert isinstance(result.content[0], types.TextContent)
    assert result.is_error, f"{tool}({args}) should have failed: {result.content[0].text}"
    return result.content[0].text


def events(root: Path, thread: str, seq: int) -> list[str]:
    """Return the task events (claim, release, reopen, dead) replying to task seq, in order."""
    out = []
    for m in Mailbox(root).messages(thread):
        ev = m.meta.get("task") if m.type == "status" and m.reply_to == seq else None
        if isinstance(ev, dict):
            out.append(str(ev.get("event")))
    return out


def a_task(root: Path, thread: str = "jobs", to: list[str] | None = None) -> int:
    """Post a task for anyone (or for to) in thread as the person 'lead'; return its seq."""
    with Mailbox(root) as box:
        box.create_thread(thread, creator="lead")
        return box.publish(thread, "Build it", sender="lead", type="task", to=to or []).seq


def offline(root: Path, name: str) -> bool:
    """Return True once name's serve has marked itself offline (its clean exit)."""
    try:
        doc = json.loads((root / ".state" / "presence" / f"{name}.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(doc.get("status") == "offline")


# ---------------------------------------------------------------- a clean exit


def _held_by_a_raw_serve(root: Path, seq: int) -> subprocess.Popen[bytes]:
    proc = raw_serve(root, "bob")
    assert proc.stdin is not None
    ask = {"name": "task_claim", "arguments": {"thread": "jobs", "seq": seq}}
    line = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": ask}
    proc.stdin.write((json.dumps(line) + "\n").encode())
    got = answer(proc, 2)
    assert json.loads(got["result"]["content"][0]["text"])["claimed"] is True, got
    return proc


def _given_back_without_a_failure(root: Path, seq: int) -> None:
    """Another agent looks at the holders (task_list settles, as an inbox wait does): the task
    is open, no attempt failed, and the holder's own release says so; no reopen."""

    async def look() -> dict[str, Any]:
        async with agent(root, "carol") as c:
            listed = await call(c, "task_list", thread="jobs", status="all")
            return dict(listed["tasks"][0])

    task = anyio.run(look)
    assert events(root, "jobs", seq) == ["claim", "release"], events(root, "jobs", seq)
    assert task["status"] == "open" and not task.get("failed"), task
    board = Mailbox(root).board("jobs").tasks[seq]
    assert (board.status, board.failures, board.attempts) == ("open", 0, 1)


def test_a_holder_stopped_by_sigterm_gives_its_task_back_without_a_failure(root: Path) -> None:
    seq = a_task(root)
    proc = _held_by_a_raw_serve(root, seq)
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert offline(root, "bob"), "the serve did not end cleanly"
    _given_back_without_a_failure(root, seq)


def test_a_holder_whose_client_closes_stdin_gives_its_task_back(root: Path) -> None:
    seq = a_task(root)

    async def hold_then_leave() -> None:
        async with agent(root, "bob") as b:  # leaving closes the server's stdin
            claimed = await call(b, "task_claim", thread="jobs", seq=seq)
            assert claimed["claimed"] is True

    anyio.run(hold_then_leave)
    until("bob's serve ended", lambda: offline(root, "bob"))
    _given_back_without_a_failure(root, seq)


def test_three_restarts_of_a_holder_leave_its_task_alive(root: Path) -> None:
    """The everyday case: an IDE restarted three times (max attempts 3) while holding a task."""
    seq = a_task(root)

    async def restart() -> None:
        async with agent(root, "bob") as b:
            assert (await call(b, "task_claim", thread="jobs", seq=seq))["claimed"] is True

    for _ in range(3):
        anyio.run(restart)
    board = Mailbox(root).board("jobs").tasks[seq]
    assert (board.status, board.failures, board.attempts) == ("open", 0, 3)


def test_a_sigkilled_holder_still_counts_a_failed_attempt(root: Path) -> None:
    """A crash is no clean exit: its task is handed out again as a failed attempt."""
    seq = a_task(root)
    proc = _held_by_a_raw_serve(root, seq)
    try:
        proc.kill()
        proc.wait(timeout=60)
    finally:
        proc.communicate()
    with Mailbox(root) as box:
        box.settle_tasks(["jobs"], noticed_by="carol")
        task = box.board("jobs").tasks[seq]
    assert (task.status, task.failures) == ("open", 1)
    assert events(root, "jobs", seq) == ["claim", "reopen"]
