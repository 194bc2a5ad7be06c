"""Task rules a model meets through real `mailslot serve` processes and the official client:
a clean exit gives a task back without failing it, a result must reply to the task it closes
(from its holder while someone holds it), and a task for anyone reaches every waiting agent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
from helpers import agent, answer, call, raw_serve, until, waiting
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
        for name in to or []:
            box.agents.register(name)
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
    board = Mailbox(root).tasks.board("jobs").tasks[seq]
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
    board = Mailbox(root).tasks.board("jobs").tasks[seq]
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
        box.tasks.settle(["jobs"], noticed_by="carol")
        task = box.tasks.board("jobs").tasks[seq]
    assert (task.status, task.failures) == ("open", 1)
    assert events(root, "jobs", seq) == ["claim", "reopen"]


# ---------------------------------------------------------------- a task for anyone


def test_a_task_for_anyone_reaches_every_waiting_agent_joined_or_not(root: Path) -> None:
    """Two agents wait in their inboxes; only alice created the thread. A task with no `to`
    reaches both, and so does one in a thread created during the wait; both can take it."""
    with Mailbox(root) as box:
        box.create_thread("jobs", creator="lead")

    async def inbox_of_both(post: Any) -> dict[str, list[tuple[str, int]]]:
        got: dict[str, list[tuple[str, int]]] = {}
        async with agent(root, "alice") as a, agent(root, "bob") as b:
            await call(a, "thread_create", topic="jobs")
            await call(b, "msg_wait", timeout_s=0.1)  # bob's inbox looks, joining nothing

            async def wait(name: str, c: Client) -> None:
                out = await call(c, "msg_wait", timeout_s=60)
                got[name] = [(m["thread"], m["seq"]) for m in out["messages"]]
                for m in out["messages"]:
                    assert m["task"]["take_it"] == (
                        f"task_claim(thread='{m['thread']}', seq={m['seq']})"
                    )

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait, "alice", a)
                tg.start_soon(wait, "bob", b)
                for name in ("alice", "bob"):
                    await anyio.to_thread.run_sync(
                        until, f"{name} waiting", lambda n=name: waiting(root, n)
                    )
                await anyio.to_thread.run_sync(post)
        return got

    def in_jobs() -> None:
        with Mailbox(root) as box:
            box.publish("jobs", "Build it", sender="lead", type="task")

    got = anyio.run(inbox_of_both, in_jobs)
    assert got == {"alice": [("jobs", 1)], "bob": [("jobs", 1)]}, got

    def in_a_new_thread() -> None:
        with Mailbox(root) as box:
            box.create_thread("later", creator="lead")
            box.publish("later", "Tag it", sender="lead", type="task")

    got = anyio.run(inbox_of_both, in_a_new_thread)
    assert got == {"alice": [("later", 1)], "bob": [("later", 1)]}, got


def test_an_inbox_wait_returns_a_new_threads_task_with_everything_else_waiting(root: Path) -> None:
    """A task for anyone in a thread the inbox never looked at was returned alone, at once:
    a message to the agent posted as well (say, "stop, not that way") waited for its next
    msg_wait, maybe an hour of work later. One wait returns both."""
    with Mailbox(root) as box:
        box.create_thread("talk", creator="lead")
        box.agents.register("lead")

    async def main() -> list[tuple[str, int]]:
        async with agent(root, "bob") as b:
            await call(b, "msg_wait", timeout_s=0.1)  # bob's inbox has looked at 'talk'
            with Mailbox(root) as box:
                box.create_thread("later", creator="lead")
                box.publish("later", "Tag it", sender="lead", type="task")
                box.publish("talk", "not that way", sender="lead", to=["bob"], priority="urgent")
            out = await call(b, "msg_wait", timeout_s=60)
            return [(m["thread"], m["seq"]) for m in out["messages"]]

    got = anyio.run(main)
    assert sorted(got) == [("later", 1), ("talk", 1)], got


# ---------------------------------------------------------------- a result closes its task


def heads(root: Path, thread: str) -> list[tuple[int, str, str]]:
    """Return (seq, sender, type) of every message of thread."""
    return [(m.seq, m.sender, m.type) for m in Mailbox(root).messages(thread)]


def test_task_mistakes_are_refused_with_the_fix_and_nothing_is_stored(root: Path) -> None:
    seq = a_task(root)  # 1

    async def main() -> None:
        async with agent(root, "bob") as b:
            claim = await call(b, "task_claim", thread="jobs", seq=seq)
            assert claim["claimed"] is True
            await call(b, "msg_post", thread="jobs", content="on it", reply_to=seq)  # 3
            before = heads(root, "jobs")  # the task, bob's claim (seq 2) and his note
            for kind in ("result", "error"):
                text = await refused(b, "msg_post", thread="jobs", content="done", type=kind)
                assert f"reply_to={seq} for task {seq} (Build it)" in text, text
                assert "type='message'" in text, text
                text = await refused(
                    b, "msg_post", thread="jobs", content="done", type=kind, reply_to=2
                )
                assert "message 2 of 'jobs' is a status message (claim of task 1)" in text, text
                assert f"not the task; {'an' if kind == 'error' else 'a'} {kind} " in text, text
                assert f"reply_to={seq}" in text, text
                text = await refused(
                    b, "msg_post", thread="jobs", content="done", type=kind, reply_to=3
                )
                assert "message 3 of 'jobs' is a message, not the task" in text, text
                assert f"reply_to={seq}" in text, text
            assert heads(root, "jobs") == before, "a refused post stored something"
            task = Mailbox(root).tasks.board("jobs").tasks[seq]
            assert (task.status, task.holder) == ("claimed", "bob")
            # Told what to do, bob does it.
            done = await call(b, "msg_post", thread="jobs", content="done", type="result",
                              reply_to=seq)  # fmt: skip
            assert "note" not in done
            assert Mailbox(root).tasks.board("jobs").tasks[seq].status == "done"
            # No unfinished task left: a result about no task is an ordinary message.
            await call(b, "msg_post", thread="jobs", content="summary", type="result")

    anyio.run(main)


def test_a_result_without_reply_to_is_pointed_at_the_task_its_sender_means(root: Path) -> None:
    """Of several unfinished tasks, the refusal names the one the sender holds, else the first
    it may take (not one addressed to others)."""
    a_task(root, to=["zed"])  # 1: zed's alone
    with Mailbox(root) as box:
        box.publish("jobs", "Ship it", sender="lead", type="task")  # 2
        box.publish("jobs", "Tag it", sender="lead", type="task")  # 3

    async def main() -> tuple[str, str]:
        async with agent(root, "bob") as b, agent(root, "carol") as c:
            assert (await call(b, "task_claim", thread="jobs", seq=3))["claimed"] is True
            bob = await refused(b, "msg_post", thread="jobs", content="done", type="result")
            carol = await refused(c, "msg_post", thread="jobs", content="done", type="result")
            return bob, carol

    bob, carol = anyio.run(main)
    assert "'jobs' has 3 unfinished" in bob and "reply_to=3 for task 3 (Tag it)" in bob, bob
    assert "reply_to=2 for task 2 (Ship it)" in carol, carol


def test_a_result_to_a_reply_of_no_task_is_an_ordinary_message(root: Path) -> None:
    seq = a_task(root)
    with Mailbox(root) as box:
        asked = box.publish("jobs", "Can you look at the logs?", sender="lead").seq
        answer_ = box.publish("jobs", "which ones?", sender="carol", reply_to=asked).seq

    async def main() -> None:
        async with agent(root, "bob") as b:
            for target in (asked, answer_):
                await call(b, "msg_post", thread="jobs", content="found it", type="result",
                           reply_to=target)  # fmt: skip

    anyio.run(main)
    assert Mailbox(root).tasks.board("jobs").tasks[seq].status == "open"


def test_a_result_from_another_agent_closes_a_held_task_and_tells_its_holder(root: Path) -> None:
    seq = a_task(root)

    async def main() -> None:
        async with agent(root, "bob") as b, agent(root, "carol") as c:
            assert (await call(b, "task_claim", thread="jobs", seq=seq))["claimed"] is True
            await call(b, "msg_wait", timeout_s=0.1)  # bob's inbox has looked
            posted = await call(c, "msg_post", thread="jobs", content="did it myself",
                                type="result", reply_to=seq)  # fmt: skip
            assert posted["note"].startswith(f"bob held task {seq}: your result closes it"), posted
            stored = Mailbox(root).get("jobs", posted["seq"])
            assert list(stored.to) == ["bob"], stored
            told = await call(b, "msg_wait", timeout_s=60)
            assert [(m["seq"], m["from"]) for m in told["messages"]] == [(posted["seq"], "carol")]

    anyio.run(main)
    task = Mailbox(root).tasks.board("jobs").tasks[seq]
    assert (task.status, task.done_by) == ("done", "carol")


def test_an_error_from_another_agent_while_held_is_a_remark_for_the_thread(root: Path) -> None:
    """Only a result closes a task under its holder (and is addressed to it); carol's error
    while bob holds it fails no attempt and is not turned into a message to bob."""
    seq = a_task(root)

    async def main() -> dict:
        async with agent(root, "bob") as b, agent(root, "carol") as c:
            assert (await call(b, "task_claim", thread="jobs", seq=seq))["claimed"] is True
            posted = await call(c, "msg_post", thread="jobs", content="it fails for me too",
                                type="error", reply_to=seq)  # fmt: skip
            task = Mailbox(root).tasks.board("jobs").tasks[seq]  # while bob's serve runs
            assert (task.status, task.holder, task.failures) == ("claimed", "bob", 0)
            return posted

    posted = anyio.run(main)
    assert "note" not in posted, posted
    assert list(Mailbox(root).get("jobs", posted["seq"]).to) == []


def test_a_task_for_others_is_closed_only_by_them_or_its_sender(root: Path) -> None:
    seq = a_task(root, to=["bob"])

    async def main() -> None:
        async with agent(root, "carol") as c, agent(root, "lead") as lead:
            text = await refused(c, "msg_post", thread="jobs", content="done", type="result",
                                 reply_to=seq)  # fmt: skip
            assert f"task {seq} of 'jobs' is for bob, not for carol" in text, text
            assert heads(root, "jobs") == [(1, "lead", "task")]
            await call(lead, "msg_post", thread="jobs", content="not needed", type="result",
                       reply_to=seq)  # fmt: skip

    anyio.run(main)
    assert Mailbox(root).tasks.board("jobs").tasks[seq].status == "done"


def test_the_command_follows_the_same_rules(root: Path) -> None:
    seq = a_task(root)
    env = {**os.environ, "MAILSLOT_AGENT": "bob"}

    def post(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mailslot", "post", "--root", str(root), "jobs", *args],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip

    claimed = subprocess.run(
        [sys.executable, "-m", "mailslot", "claim", "--root", str(root), "jobs", str(seq)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert claimed.returncode == 0, claimed.stderr
    for args in (["done", "--type", "result"], ["done", "--type", "result", "--reply-to", "2"]):
        got = post(*args)
        assert got.returncode == 1 and f"reply_to={seq}" in got.stderr, (args, got)
        assert "Traceback" not in got.stderr
    assert [s for s, _, _ in heads(root, "jobs")] == [1, 2]
    got = post("done", "--type", "result", "--reply-to", str(seq))
    assert got.returncode == 0, got.stderr
    assert Mailbox(root).tasks.board("jobs").tasks[seq].status == "done"
