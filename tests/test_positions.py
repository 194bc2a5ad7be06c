"""What an agent has read: one position per agent and thread, so nothing is dropped or repeated.

Each case drives real `mailslot serve` processes with the official MCP client and checks
exactly-once delivery to the agent: every message it should get arrives once, none twice.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import agent, answer, call, params, raw_serve, until_async
from mcp.client import Client

from mailslot import Mailbox, NameTaken
from mailslot.tools import Session


async def drain(c: Client, **args: Any) -> list[tuple[str, int, str]]:
    """Call msg_wait until it times out; return (thread, seq, content) of everything it gave."""
    seen: list[tuple[str, int, str]] = []
    for _ in range(200):
        got = await call(c, "msg_wait", timeout_s=1, **args)
        if not got["messages"]:
            return seen
        seen += [(m["thread"], m["seq"], m["content"]) for m in got["messages"]]
    raise AssertionError("msg_wait never ran dry")


def once(seen: list[tuple[str, int, str]]) -> set[tuple[str, int]]:
    counts = Counter((t, s) for t, s, _ in seen)
    repeated = {k: n for k, n in counts.items() if n > 1}
    assert not repeated, f"delivered more than once: {repeated}"
    return set(counts)


def post_tasks(box: Mailbox, to: str) -> set[tuple[str, int]]:
    """Post 50 tasks of 5 KB and 3 of 120 KB to agent to, over two threads."""
    sent = set()
    for i in range(53):
        thread = "build" if i % 2 else "review"
        body = f"task {i} " + ("x" * 120_000 if i in (10, 30, 50) else "y" * 5_000)
        sent.add((thread, box.post(thread, body, sender="boss", to=[to], type="task")))
    return sent


def setup(root: Path) -> Mailbox:
    box = Mailbox(root)
    for name in ("boss", "worker"):
        box.agents.register(name)
    for topic in ("build", "review"):
        box.create_thread(topic, creator="boss")
    return box


def test_an_inbox_cut_at_the_page_budget_delivers_every_task_once(root: Path) -> None:
    box = setup(root)

    async def main() -> None:
        async with agent(root, "worker") as worker:
            assert await drain(worker) == []  # the inbox looked once: positions exist now
            sent = post_tasks(box, "worker")
            assert once(await drain(worker)) == sent

    anyio.run(main)


def test_a_new_agents_first_inbox_wait_reads_every_task_sent_before_it(root: Path) -> None:
    box = setup(root)
    sent = post_tasks(box, "worker")

    async def main() -> None:
        async with agent(root, "worker") as worker:
            assert once(await drain(worker)) == sent

    anyio.run(main)


def test_the_first_inbox_wait_skips_what_the_agent_already_answered(root: Path) -> None:
    box = setup(root)
    box.post("build", "not for you", sender="boss")
    done = box.post("build", "answered already", sender="boss", to=["worker"], type="task")
    box.post("build", "done", sender="worker", type="result", reply_to=done)
    todo = box.post("build", "still to do", sender="boss", to=["worker"], type="task")

    async def main() -> None:
        async with agent(root, "worker") as worker:
            assert [(t, s) for t, s, _ in await drain(worker)] == [("build", todo)]

    anyio.run(main)


def test_posting_does_not_skip_a_message_posted_just_before(root: Path) -> None:
    box = setup(root)
    box.post("build", "hello", sender="boss")

    async def main() -> None:
        async with agent(root, "worker") as worker:
            first = await call(worker, "msg_list", thread="build", after_seq=0)
            assert [m["seq"] for m in first["messages"]] == [1]
            question = box.post("build", "which branch?", sender="boss", type="question")
            await call(worker, "msg_post", thread="build", content="starting now")
            got = await call(worker, "msg_wait", thread="build", timeout_s=2)
            assert [m["seq"] for m in got["messages"]] == [question]  # not its own post
            again = await call(worker, "msg_wait", thread="build", timeout_s=0.5)
            assert again["messages"] == [] and again["status"] == "timeout"

    anyio.run(main)


def test_thread_waits_and_the_inbox_share_one_position(root: Path) -> None:
    box = setup(root)

    async def main() -> None:
        async with agent(root, "worker") as worker:
            for thread in ("build", "review"):  # a wait with no position starts from now
                await call(worker, "msg_wait", thread=thread, timeout_s=0.2)
            pings = [box.post("build", f"ping {i}", sender="boss", to=["worker"]) for i in range(5)]
            got = once(await drain(worker, thread="build"))
            assert got == {("build", s) for s in pings}
            assert await drain(worker) == []  # the inbox does not hand them out again
            more = [box.post("review", f"pong {i}", sender="boss", to=["worker"]) for i in range(3)]
            box.post("review", "for everyone", sender="boss")
            assert once(await drain(worker)) == {("review", s) for s in more}
            # and a thread wait from the agent's own position does not repeat them either
            rest = await drain(worker, thread="review")
            assert [c for _, _, c in rest] == ["for everyone"]

    anyio.run(main)


def test_a_thread_wait_from_now_leaves_the_inbox_what_came_before_it(root: Path) -> None:
    """The inbox looked at 'build'; then a task for anyone and a question to the worker landed
    there, and the worker's first thread wait started from now, past them. The inbox then took
    them as shown and never handed them out: the task reached everyone but this agent. What
    the thread wait did return is not handed out again."""
    box = setup(root)

    async def main() -> None:
        async with agent(root, "worker") as worker:
            await call(worker, "msg_wait", timeout_s=0.1)  # the inbox's first look
            task = box.post("build", "anyone: tag it", sender="boss", type="task")
            ask = box.post("build", "which tag?", sender="boss", type="question", to=["worker"])
            waited = await call(worker, "msg_wait", thread="build", timeout_s=0.5)  # from now
            assert waited["messages"] == [] and waited["next_after_seq"] == ask
            ping = box.post("build", "ping", sender="boss", to=["worker"])
            got = await drain(worker, thread="build")
            assert [s for _, s, _ in got] == [ping]
            inbox = once(await drain(worker))
            assert inbox == {("build", task), ("build", ask)}, inbox

    anyio.run(main)


def test_a_thread_created_again_starts_fresh(root: Path) -> None:
    box = setup(root)
    for i in range(5):
        box.post("build", f"old {i}", sender="boss")

    async def main() -> None:
        async with agent(root, "worker") as worker:
            old = await call(worker, "msg_list", thread="build", after_seq=0)
            assert old["next_after_seq"] == 5
        shutil.rmtree(root / "threads" / "build")
        box.create_thread("build", creator="someone-else")
        new = [box.post("build", f"new {i}", sender="boss") for i in range(2)]
        async with agent(root, "worker") as worker:
            got = await call(worker, "msg_wait", thread="build", timeout_s=2)
            assert [m["seq"] for m in got["messages"]] == new

    anyio.run(main)


def test_removing_state_under_running_servers_loses_and_repeats_nothing(root: Path) -> None:
    box = setup(root)

    async def main() -> None:
        async with agent(root, "worker") as worker, agent(root, "boss") as boss:
            first = [box.post("build", f"task {i}", sender="boss", to=["worker"], type="task")
                     for i in range(3)]  # fmt: skip
            assert once(await drain(worker)) == {("build", s) for s in first}
            for seq in first:  # the worker answers what it handled (in new words each time)
                await call(worker, "msg_post", thread="build", content=f"done #{seq}", reply_to=seq)
            shutil.rmtree(root / ".state")  # as `git clean -fdX` does
            # A live name still cannot be taken twice.
            with pytest.raises(NameTaken, match="in use by a live process") as taken:
                Mailbox(root).agents.hold_name("worker")
            assert taken.value.agent == "worker"
            second = [
                (await call(boss, "msg_post", thread="review", content=f"task {i}",
                            to=["worker"], type="task"))["seq"]
                for i in range(2)
            ]  # fmt: skip
            assert once(await drain(worker)) == {("review", s) for s in second}
            assert await drain(boss) == []  # boss was never addressed
            for seq in second:
                await call(worker, "msg_post", thread="review", content=f"done #{seq}",
                           reply_to=seq)  # fmt: skip
        shutil.rmtree(root / ".state")
        async with agent(root, "worker") as worker:  # a restart with .state/ gone
            assert await drain(worker) == []  # everything it answered stays handled
            late = box.post("build", "one more", sender="boss", to=["worker"], type="task")
            assert [(t, s) for t, s, _ in await drain(worker)] == [("build", late)]

    anyio.run(main)


def test_a_restarted_agent_continues_from_its_saved_position(root: Path) -> None:
    box = setup(root)
    read = [box.post("build", f"old {i}", sender="boss") for i in range(3)]
    task = box.post("review", "please review", sender="boss", to=["worker"], type="task")

    async def main() -> None:
        async with agent(root, "worker") as worker:
            listed = await call(worker, "msg_list", thread="build", after_seq=0)
            assert [m["seq"] for m in listed["messages"]] == read
            assert once(await drain(worker)) == {("review", task)}  # shown, not answered
        # While it is down: one more message in the thread it read.
        late = box.post("build", "while you were away", sender="boss")
        async with agent(root, "worker") as worker:  # a restart: positions come from .state/
            got = await call(worker, "msg_wait", thread="build", timeout_s=5)
            assert [m["seq"] for m in got["messages"]] == [late], "from where it was, not now"
            assert await drain(worker) == [], "the inbox does not hand the task out again"

    anyio.run(main)


def test_waits_report_what_they_stepped_over(root: Path) -> None:
    box = setup(root)
    box.post("build", "one", sender="boss")
    old = time.time() - 3600  # written long ago: damage, not a file still arriving

    def damage(seq: int) -> None:
        path = root / "threads" / "build" / f"{seq:06d}.json"
        path.write_text("{torn")
        os.utime(path, (old, old))

    async def main() -> None:
        async with agent(root, "worker") as worker:
            assert await drain(worker) == []  # the inbox looked: what follows is new to it
            damage(2)
            box.post("build", "three", sender="boss", to=["worker"])
            inbox = await call(worker, "msg_wait", timeout_s=5)
            assert [(m["thread"], m["seq"]) for m in inbox["messages"]] == [("build", 3)]
            assert len(inbox["unreadable"]) == 1 and "000002.json" in inbox["unreadable"][0]
            got = await call(worker, "msg_wait", thread="build", after_seq=1, timeout_s=5)
            assert [m["seq"] for m in got["messages"]] == [3]
            assert len(got["unreadable"]) == 1 and "000002.json" in got["unreadable"][0]

    anyio.run(main)


def test_a_busy_server_writes_positions_once_a_second_and_on_exit(root: Path) -> None:
    """Positions moved by waits are written within save_every, not once per message; what is
    due is written when the session closes, so a clean restart continues where it was."""
    box = setup(root)
    saved = root / ".state" / "cursors" / "worker" / "build.json"
    session = Session(box, agent="worker", save_every=60.0)
    calls: list[int] = []
    session.reading.on_due = lambda: calls.append(1)

    async def main() -> None:
        seq = 0
        for i in range(5):
            seq = box.post("build", f"m{i}", sender="boss")
            got = await session.msg_wait("build", after_seq=seq - 1, timeout_s=5)
            assert [m["seq"] for m in got["messages"]] == [seq]
        first = saved.read_bytes()  # the first move is written at once
        assert b'"read": 1' in first, first
        assert len(calls) == 1, "one call when writes start to wait, not one per message"
        session.flush_positions()
        assert f'"read": {seq}'.encode() in saved.read_bytes()
        late = box.post("build", "late", sender="boss")
        await session.msg_wait("build", after_seq=late - 1, timeout_s=5)
        assert f'"read": {seq}'.encode() in saved.read_bytes(), "left for the flush"

    anyio.run(main)
    session.close()
    box.close()
    assert b'"read": 6' in saved.read_bytes(), "closing writes what was due"


def test_a_running_server_writes_a_moved_position_within_a_second_or_so(root: Path) -> None:
    box = setup(root)
    saved = root / ".state" / "cursors" / "worker" / "build.json"
    # The heartbeat (every timeout / 3) writes positions too: here it never comes.
    serve = params(root, "--agent", "worker", "--heartbeat-timeout", "36000")

    async def main() -> None:
        async with Client(serve, cache=None) as worker:
            for i in range(3):  # the first write is at once, the next ones wait their second
                seq = box.post("build", f"m{i}", sender="boss")
                got = await call(worker, "msg_wait", thread="build", after_seq=seq - 1)
                assert [m["seq"] for m in got["messages"]] == [seq]
            want = f'"read": {seq}'.encode()
            await until_async("the position written", lambda: _has(saved, want))

    anyio.run(main)


async def _has(path: Path, text: bytes) -> bool:
    return path.exists() and text in path.read_bytes()


def test_a_server_stopped_with_sigterm_keeps_what_it_showed(root: Path) -> None:
    """Clients stop servers with SIGTERM (or SIGHUP): the position of a wait that has just
    returned is written before the process ends, so a restart does not show it again."""
    box = setup(root)
    seq = box.post("build", "ping", sender="boss")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        proc = raw_serve(root, "worker")
        try:
            answer(proc, 1)
            ask = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                   "params": {"name": "msg_wait",
                              "arguments": {"thread": "build", "after_seq": seq - 1}}}  # fmt: skip
            assert proc.stdin is not None
            proc.stdin.write((json.dumps(ask) + "\n").encode())
            proc.stdin.flush()
            assert '"ping"' in answer(proc, 2)["result"]["content"][0]["text"]
            proc.send_signal(sig)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        saved = root / ".state" / "cursors" / "worker" / "build.json"
        assert f'"read": {seq}' in saved.read_text(), sig
        seq = box.post("build", "ping", sender="boss")  # the next round waits for this one


def test_a_cut_page_moves_the_position_only_to_what_it_returned(root: Path) -> None:
    box = setup(root)
    big = "z" * 120_000  # two of these do not fit in one page (tools.PAGE_BUDGET_BYTES)

    async def main() -> None:
        async with agent(root, "worker") as worker:
            listed = [box.post("build", f"list {i} {big}", sender="boss") for i in range(3)]
            page = await call(worker, "msg_list", thread="build", after_seq=0)
            assert [m["seq"] for m in page["messages"]] == listed[:1] and page["has_more"]
            # A thread wait from the agent's own position goes on after what the list returned,
            # and a wait cut at the budget the same way.
            for seq in listed[1:]:
                got = await call(worker, "msg_wait", thread="build", timeout_s=5)
                assert [m["seq"] for m in got["messages"]] == [seq]
            waited = [box.post("build", f"wait {i} {big}", sender="boss") for i in range(3)]
            for seq in waited:
                got = await call(worker, "msg_wait", thread="build", timeout_s=5)
                assert [m["seq"] for m in got["messages"]] == [seq]
        async with agent(root, "worker") as worker:  # and the saved position says the same
            got = await call(worker, "msg_wait", thread="build", timeout_s=0.5)
            assert got["messages"] == []

    anyio.run(main)


def test_a_read_ahead_of_the_position_marks_nothing_in_between_as_read(root: Path) -> None:
    box = setup(root)
    box.post("build", "one", sender="boss")

    async def main() -> None:
        async with agent(root, "worker") as worker:
            await call(worker, "msg_list", thread="build", after_seq=0)  # shown up to 1
            between = [box.post("build", f"between {i}", sender="boss") for i in range(2)]
            ahead = [box.post("build", f"ahead {i}", sender="boss") for i in range(2)]
            listed = await call(worker, "msg_list", thread="build", after_seq=between[-1])
            assert [m["seq"] for m in listed["messages"]] == ahead
            later = box.post("build", "later", sender="boss")
            got = await call(worker, "msg_wait", thread="build", after_seq=ahead[-1], timeout_s=5)
            assert [m["seq"] for m in got["messages"]] == [later]
            # From its own position the agent still gets what it skipped over.
            got = await call(worker, "msg_wait", thread="build", timeout_s=5)
            assert [m["seq"] for m in got["messages"]] == [*between, *ahead, later]

    anyio.run(main)


def test_a_thread_deleted_and_created_again_under_a_running_server(root: Path) -> None:
    box = setup(root)
    for i in range(5):
        box.post("build", f"old {i}", sender="boss", to=["worker"])

    async def main() -> None:
        async with agent(root, "worker") as worker:
            assert len(once(await drain(worker))) == 5  # inbox position 5
            await call(worker, "msg_list", thread="build", after_seq=0)  # read position 5
            shutil.rmtree(root / "threads" / "build")
            box.create_thread("build", creator="someone-else")
            mine = box.post("build", "for you", sender="boss", to=["worker"])
            everyone = box.post("build", "for everyone", sender="boss")
            # Seqs below the old positions: all of the new thread is new to the agent.
            assert [(t, s) for t, s, _ in await drain(worker)] == [("build", mine)]
            got = await call(worker, "msg_wait", thread="build", timeout_s=5)
            assert [m["seq"] for m in got["messages"]] == [everyone]

    anyio.run(main)
