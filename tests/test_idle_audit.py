"""What the idle-is-flat work (issue 30) must not lose: found by a mutation audit of it.

A served inbox keeps its wait from call to call and looks only where the feed says something
changed; timer ticks sweep the quiet threads a slice at a time; an inbox wait offers one task
for anyone and holds the others back. Each test here failed on a small bug in that code that
the rest of the suite let through: a thread made again that the feed never names, a sweep that
does not wrap round or never looks past a gap, a held-back task offered again after a thread
read showed it, tasks held back past the ones a wait chooses among dropped.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import uuid
from pathlib import Path

import anyio
from helpers import agent, call

from mailslot import Mailbox
from mailslot.agent import offers
from mailslot.store import plan as _plan


def _poll(root: Path) -> None:
    config = root / "mailslot.json"
    doc = json.loads(config.read_text())
    doc.update(wait_mode="poll", poll_interval=0.1)
    config.write_text(json.dumps(doc))


def _remade(root: Path, away: Path | None) -> list[str]:
    """Serve idler in poll mode over thread t (three messages it was shown), delete t (moved
    to away, or removed), make it again under its id with a message to idler, and return what
    idler's inbox waits return then (a few calls, each looking again)."""
    with Mailbox.init(root, fsync=False) as box:
        box.agents.register("alice")
        box.agents.register("idler")
        box.create_thread("t", creator="alice")
        for i in range(3):
            box.post("t", f"old {i}", sender="alice", to=["idler"])
    _poll(root)

    async def main() -> list[str]:
        async with agent(root, "idler") as c:
            first = await call(c, "msg_wait", timeout_s=5)
            assert [m["content"] for m in first["messages"]] == ["old 0", "old 1", "old 2"]
            idle = await call(c, "msg_wait", timeout_s=0.5)
            assert idle["status"] == "timeout", idle
            if away is None:
                shutil.rmtree(root / "threads" / "t")
            else:
                (root / "threads" / "t").rename(away)
            with Mailbox(root) as other:
                other.create_thread("t", creator="alice")
                other.post("t", "in the new thread", sender="alice", to=["idler"])
            got: list[str] = []
            for _ in range(5):  # each call looks again; one or two are enough
                answer = await call(c, "msg_wait", timeout_s=2)
                got += [m["content"] for m in answer["messages"]]
                if got:
                    break
            return got

    return anyio.run(main)


def test_a_thread_made_again_under_its_id_is_read_from_its_start_by_a_kept_inbox(
    tmp_path: Path,
) -> None:
    """Poll mode: no file event names the thread; only the listing of threads/ sees that its
    folder was made again, and the inbox must go back to its start there. (The old folder is
    moved away, so the new one cannot have its inode: see the xfail below.)"""
    assert _remade(tmp_path / "box", tmp_path / "old-t") == ["in the new thread"]


def test_a_thread_removed_and_made_again_is_read_from_its_start_by_a_kept_inbox(
    tmp_path: Path,
) -> None:
    assert _remade(tmp_path / "box", None) == ["in the new thread"]


def test_a_sweep_comes_round_to_every_thread_within_one_pass_wherever_it_stands(
    tmp_path: Path,
) -> None:
    """A timer tick sweeps a slice of the quiet threads in turn; the slice that runs off
    the end goes on at the start, so a write anywhere is seen within one pass of ticks."""
    root = tmp_path / "box"
    count = 300
    with Mailbox.init(root, fsync=False) as box:
        box.agents.register("alice")
        threads = [box.create_thread(f"quiet {i}", creator="alice").id for i in range(count)]
    box = Mailbox(root, wait_mode="poll", poll_interval=0.1)
    try:
        plan = box.wait_plan(None, box.cursor())
        assert not plan.check(None)  # the first look: every thread, nothing new
        size = _plan.sweep_size(count, plan.every)
        ticks = math.ceil(count / size)  # one pass
        names = sorted(threads)
        for _ in range(count // size):  # the sweep now stands near the end of the list
            assert not plan.check(set(), tick=True)
        with Mailbox(root) as other:
            other.post(names[3], "at the start of the list", sender="alice")
        found = []
        for _ in range(ticks):
            if plan.check(set(), tick=True):
                found = [m.content for m in plan.take(timed_out=False).messages]
                break
        assert found == ["at the start of the list"], f"not seen within {ticks} ticks"
    finally:
        box.close()


def test_a_sweep_sees_past_a_gap_before_the_next_file_every_few_rounds(tmp_path: Path) -> None:
    """A sweep looks for each thread's next file name only; every DEEP_EVERY rounds it looks
    as closely as at a named thread, so a message past a gap (a file a foreign writer left
    out) is still found, and the gap stepped over once its grace is over."""
    root = tmp_path / "box"
    with Mailbox.init(root, fsync=False) as box:
        box.agents.register("alice")
        threads = [box.create_thread(f"quiet {i}", creator="alice").id for i in range(3)]
        for thread in threads:
            box.post(thread, "first", sender="alice")
    box = Mailbox(root, wait_mode="poll", poll_interval=0.05, grace_s=0.1)
    try:
        plan = box.wait_plan(None, box.cursor())
        assert not plan.check(None)  # the first look: every thread, nothing new
        folder = root / "threads" / threads[1]
        doc = json.loads((folder / "000001.json").read_text())
        doc.update(id=uuid.uuid4().hex, content="past a gap")
        (folder / "000003.json").write_text(json.dumps(doc))  # 000002 never comes
        found: list[str] = []
        for _ in range(4 * _plan.DEEP_EVERY):
            if plan.check(set(), tick=True):
                found = [m.content for m in plan.take(timed_out=False).messages]
                break
            time.sleep(0.05)  # (the gap is stepped over once grace_s is past)
        assert found == ["past a gap"], f"not found in {4 * _plan.DEEP_EVERY} ticks"
    finally:
        box.close()


def test_a_task_owed_and_held_back_then_shown_by_a_thread_read_is_not_offered_again(
    tmp_path: Path,
) -> None:
    """An inbox wait shows one task for anyone and holds the others back (here owed from
    before its first look); once a thread read has shown the agent those too, no later inbox
    wait offers them again."""
    root = tmp_path / "box"
    with Mailbox.init(root, fsync=False) as box:
        box.agents.register("boss")
        box.agents.register("worker")
        box.create_thread("jobs", creator="boss")
        for name in ("one", "two", "three"):
            box.post("jobs", f"task {name}", sender="boss", type="task")

    async def main() -> tuple[list[str], list[str], list[str]]:
        async with agent(root, "worker") as c:
            offered = await call(c, "msg_wait", timeout_s=5)
            listed = await call(c, "msg_list", thread="jobs")
            later = await call(c, "msg_wait", timeout_s=1)
            contents = [[m["content"] for m in a["messages"]] for a in (offered, listed, later)]
            return contents[0], contents[1], contents[2]

    offered, listed, later = anyio.run(main)
    assert len(offered) == 1, "one task for anyone per inbox wait"
    assert listed == ["task one", "task two", "task three"]
    assert later == [], f"offered again after a thread read showed it: {later}"


def test_more_tasks_held_back_than_a_wait_chooses_among_are_all_offered_once(
    tmp_path: Path,
) -> None:
    """A wait chooses among the oldest PICK open tasks held back; the ones past those, not
    looked at yet, stay held back too: inbox waits one after the other offer every task once."""
    root = tmp_path / "box"
    count = offers.PICK + 4
    with Mailbox.init(root, fsync=False) as box:
        box.agents.register("boss")
        box.agents.register("worker")
        box.create_thread("jobs", creator="boss")

    async def main() -> list[str]:
        async with agent(root, "worker") as c:
            assert (await call(c, "msg_wait", timeout_s=0.2))["status"] == "timeout"
            with Mailbox(root) as boss:
                for i in range(count):
                    boss.post("jobs", f"task {i}", sender="boss", type="task")
            got: list[str] = []
            for _ in range(count + 3):
                answer = await call(c, "msg_wait", timeout_s=1)
                if answer["status"] == "timeout":
                    break
                got += [m["content"] for m in answer["messages"]]
            return got

    got = anyio.run(main)
    assert sorted(got) == sorted(f"task {i}" for i in range(count)), got
