"""Tasks through MCP: real `mailslot serve` processes, real folders, the official client.

Workers claim tasks (`task_claim`), close them with a result, fail them with an error; holders
are SIGKILLed or fall silent and their tasks are handed out again. Every check reads the folder
afterwards: the thread's messages, replayed in seq order, must show one holder at a time and
one result per task, posted by the claimer that won.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import (
    agent,
    call,
    finish,
    params,
    spawn_call,
    start_together,
    until,
    waiting,
)
from mcp import types
from mcp.client import Client
from test_netfs import mounts  # noqa: F401  (the sshfs fixture: two mounts of one export)

from mailslot import Mailbox
from mailslot.agent.offers import rank
from mailslot.store.files import HOST
from mailslot.store.format import Message

# ---------------------------------------------------------------- helpers


async def refused(c: Client, tool: str, **args: Any) -> str:
    """Call tool; assert the server answered with a tool error; return its text."""
    result = await c.call_tool(tool, args)
    assert isinstance(result.content[0], types.TextContent)
    assert result.is_error, f"{tool}({args}) should have failed: {result.content[0].text}"
    return result.content[0].text


def event(m: Message) -> str | None:
    """Return the task event m records (claim, release, reopen, dead), or None."""
    ev = m.meta.get("task") if m.type == "status" else None
    return ev.get("event") if isinstance(ev, dict) else None


def replies(root: Path, thread: str, seq: int) -> list[Message]:
    """Return the messages of thread that reply to seq, in seq order."""
    return [m for m in Mailbox(root).messages(thread) if m.reply_to == seq]


def of(ms: list[Message], what: str) -> list[Message]:
    """Return the task events named what ('claim', ...) or the messages of type what."""
    return [m for m in ms if event(m) == what or (event(m) is None and m.type == what)]


def replay(messages: list[Message]) -> dict[int, list[tuple[str, int, int | None]]]:
    """Replay a thread's messages in seq order, independently of mailslot's own fold; return
    each task's holding intervals: (holder, seq of its winning claim, seq that ended it).

    A claim wins only while nobody holds the task (a later one by another is void); a result
    ends the task; the holder's error, its release, or a reopen/dead event naming its claim
    ends the holding. The maximum of attempts is not modelled (for threads where no task
    dies). Tests compare these intervals with what each worker was told it won."""
    holding: dict[int, tuple[str, int] | None] = {}
    done: set[int] = set()
    out: dict[int, list[tuple[str, int, int | None]]] = defaultdict(list)
    for m in messages:
        if m.type == "task":
            holding[m.seq] = None
            continue
        task = m.reply_to
        if task not in holding or task in done:
            continue
        held = holding[task]
        ev = event(m)
        end = (
            m.type == "result"
            or (m.type == "error" and (held is None or held[0] == m.sender))
            or (ev == "release" and held is not None and held[0] == m.sender)
            or (
                ev in ("reopen", "dead") and held is not None and m.meta["task"]["claim"] == held[1]
            )
        )
        if held is not None and end:
            out[task].append((held[0], held[1], m.seq))
            holding[task] = None
        if m.type == "result":
            done.add(task)
        elif ev == "claim" and held is None:
            holding[task] = (m.sender, m.seq)
    for task, held in holding.items():
        if held is not None:
            out[task].append((held[0], held[1], None))
    return out


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Worker processes a test starts; each is killed and reaped at the end, whatever happens."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.communicate()


def hold(procs: list[subprocess.Popen[str]], root: Path, name: str, topic: str, seq: int) -> int:
    """Start a worker process whose own serve claims task seq as name; return the serve's pid
    (from the claim message's meta, the holder the fold knows)."""
    p = spawn_call("task_holder", str(root), name, topic, str(seq))
    procs.append(p)
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line, f"the holder died: {p.stderr.read() if p.stderr else ''}"
    answer = json.loads(line)
    assert answer["claimed"] is True and answer["attempt"] >= 1, answer
    (claim,) = [m for m in of(replies(root, topic, seq), "claim") if m.sender == name]
    pid = claim.meta["task"]["pid"]
    assert claim.meta["task"]["host"] == HOST
    assert pid != p.pid, "the claim names the serve process, not the client"
    os.kill(pid, 0)  # it lives
    return int(pid)


# ---------------------------------------------------------------- 1. a drain


def test_eight_workers_drain_500_tasks_each_once(
    root: Path, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    total, n = 500, 8
    box = Mailbox(root)
    box.create_thread("drain", creator="boss")
    go, stop = tmp_path / "go", tmp_path / "stop"
    names = [f"w{i}" for i in range(n)]
    procs += [
        spawn_call("task_worker", str(root), w, "drain", str(total), str(stop), str(go))
        for w in names
    ]
    started = time.monotonic()
    start_together(procs, go)  # each joined the thread and took its inbox's first look
    posted = {box.post("drain", f"job {i}", sender="boss", type="task") for i in range(total)}
    post_s = time.monotonic() - started
    outs = {doc["worker"]: doc for doc in map(json.loads, finish(procs, timeout=300))}
    drain_s = time.monotonic() - started
    print(f"\n{total} tasks, {n} workers: posted in {post_s:.1f} s, drained in {drain_s:.1f} s")

    messages = list(box.messages("drain"))
    tasks = {m.seq for m in messages if m.type == "task"}
    assert tasks == posted and len(tasks) == total

    # What the workers were told: each task won by exactly one of them.
    told: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for w, doc in outs.items():
        for seq, result in doc["won"].items():
            told[int(seq)].append((w, result))
    doubled = {s: ws for s, ws in told.items() if len(ws) != 1}
    assert not doubled, f"tasks won by more than one worker: {doubled}"
    assert set(told) == tasks, f"tasks nobody won: {sorted(tasks - set(told))[:10]}"

    # What the folder says: per task one claim (a loser writes nothing on one machine), then
    # one result, by the claimer; nothing else.
    by_task: dict[int, list[Message]] = defaultdict(list)
    for m in messages:
        if m.reply_to is not None:
            assert m.reply_to in tasks, f"a reply to a non-task: {m}"
            by_task[m.reply_to].append(m)
    pids: dict[str, set[int]] = defaultdict(set)
    claim_of: dict[int, int] = {}
    for seq in sorted(tasks):
        rs = by_task[seq]
        claims, results = of(rs, "claim"), of(rs, "result")
        assert len(claims) == 1 and len(results) == 1 and len(rs) == 2, (seq, rs)
        (claim,), (result,) = claims, results
        ((worker, result_seq),) = told[seq]
        assert claim.sender == result.sender == worker, (seq, claim, result)
        assert claim.seq < result.seq == result_seq
        assert result.content == f"{worker} did {seq}"
        pids[worker].add(claim.meta["task"]["pid"])
        claim_of[seq] = claim.seq
    assert all(len(p) == 1 for p in pids.values()), f"one serve per worker: {pids}"
    assert len({p for ps in pids.values() for p in ps}) == len(pids)

    # The independent replay: one holding per task, ended by the holder's own result.
    intervals = replay(messages)
    for seq in tasks:
        assert intervals[seq] == [(told[seq][0][0], claim_of[seq], told[seq][0][1])]

    # mailslot's own fold agrees.
    board = Mailbox(root).tasks.board("drain")
    assert sorted(board.tasks) == sorted(tasks)
    for seq, t in board.tasks.items():
        assert (t.status, t.attempts, t.failures) == ("done", 1, 0), t
        assert (t.done_by, t.closed_by) == told[seq][0]

    # A late claim was refused as done, naming the result; no task was shown twice.
    for w, doc in outs.items():
        for seq, text in doc["refused"]:
            winner, result_seq = told[seq][0]
            assert (
                f"task {seq} of 'drain' is done: {winner} posted its result at seq "
                f"{result_seq}" in text
            ), text
        shown = Counter(doc["shown"])
        assert not [s for s, k in shown.items() if k > 1], f"{w} was shown a task twice"
    spread = {w: len(doc["won"]) for w, doc in outs.items()}
    claims = sum(len(doc["won"]) + len(doc["lost"]) + len(doc["refused"]) for doc in outs.values())
    print(f"won per worker: {spread}; task_claim calls: {claims}")
    assert sum(spread.values()) == total

    # A loser was told who holds the task (claimed: false, holder: the winner).
    wrong = [
        (w, seq, answer)
        for w, doc in outs.items()
        for seq, answer in doc["lost"]
        if answer["holder"] != told[seq][0][0]
    ]
    lost = sum(len(doc["lost"]) for doc in outs.values())
    assert not wrong, (
        f"{len(wrong)} of {lost} losing claims were not told the winner; the first: "
        + json.dumps(wrong[0])
    )


# ---------------------------------------------------------------- 2. SIGKILL on one machine


async def wait_for_task(c: Client, thread: str, seq: int, within: float) -> tuple[float, dict]:
    """Block in the inbox wait until it returns task seq; return when, and its view."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        got = await call(c, "msg_wait", timeout_s=max(0.1, deadline - time.monotonic()))
        for m in got["messages"]:
            if (m["thread"], m["seq"]) == (thread, seq):
                return time.monotonic(), m
        assert not got["messages"], f"the inbox returned something else: {got['messages']}"
    raise AssertionError(f"the inbox did not return task {seq} within {within} s")


async def handoff(
    roots: dict[str, Path], thread: str, seq: int, pid: int, within: float,
    others_may_win: bool = False,
) -> tuple[dict[str, float], dict[str, dict], dict[str, dict]]:  # fmt: skip
    """With agents (name -> root) joined to thread and blocked in their inbox waits, SIGKILL
    the holder's serve (pid); return how long after the kill each wait returned the task, its
    view, and what each one's task_claim answered (all claim at once, as real workers do).
    others_may_win: a wait that never saw the task open (another claimed it first) is no
    failure (agents on two mounts of one folder, which no lock excludes across)."""
    async with agent(roots["bravo"], "bravo") as b, agent(roots["charlie"], "charlie") as c:
        clients = {"bravo": b, "charlie": c}
        for x in clients.values():
            joined = await call(x, "thread_create", topic=thread)
            assert "open_tasks" not in joined, "the task is held: nothing open"
            first = await call(x, "msg_wait", timeout_s=0.1)
            assert first["messages"] == [], "a held task is not handed out"
        returned: dict[str, float] = {}
        views: dict[str, dict] = {}
        claims: dict[str, dict] = {}
        killed: list[float] = []

        async def work(name: str) -> None:
            try:
                at, views[name] = await wait_for_task(clients[name], thread, seq, within)
            except AssertionError:
                if not others_may_win:
                    raise
                return  # another claimed it before this wait saw it open: not offered
            returned[name] = at - killed[0]
            result = await clients[name].call_tool("task_claim", {"thread": thread, "seq": seq})
            text = result.content[0].text  # type: ignore[union-attr]
            claims[name] = {"error": text} if result.is_error else json.loads(text)
            if claims[name].get("claimed"):
                await call(clients[name], "msg_post", thread=thread, type="result",
                           reply_to=seq, content=f"{name} finished it")  # fmt: skip

        async with anyio.create_task_group() as tg:
            for name in clients:
                tg.start_soon(work, name)
            # A wait says 'waiting' in its presence file only after a round that looked at
            # the holders of the tasks it could take (each round looks first): once both say
            # so, both have seen the holder alive.
            for name in clients:
                await anyio.to_thread.run_sync(
                    until, f"{name} waiting", lambda n=name: waiting(roots[n], n)
                )
            assert not returned, "a wait returned the task while its holder lived"
            killed.append(time.monotonic())
            kill(pid)
        return returned, views, claims


def check_handoff(
    root: Path, thread: str, seq: int, holder: str, claims: dict[str, dict], views: dict[str, dict]
) -> None:
    """One reopen (for the dead holder's claim), one new winner, one result by it."""
    rs = replies(root, thread, seq)
    first = [m for m in of(rs, "claim") if m.sender == holder]
    assert len(first) == 1
    reopens = of(rs, "reopen")
    winners = [n for n, c in claims.items() if c.get("claimed")]
    assert len(winners) == 1, f"one winner, not {claims}"
    (winner,) = winners
    assert claims[winner]["attempt"] == 2 and claims[winner]["failed_before"] == 1
    results = of(rs, "result")
    for name, c in claims.items():
        if name != winner:  # told who holds it, or (claiming after the result) that it is done
            assert c.get("holder") == winner or (
                f"is done: {winner} posted its result at seq {results[0].seq}" in c.get("error", "")
            ), f"{name} was told {c}; the thread: " + "; ".join(
                f"{m.seq} {m.sender} {event(m) or m.type}" for m in rs
            )
    effective = [m for m in reopens if m.meta["task"]["claim"] == first[0].seq]
    assert effective and effective[0].sender == "mailslot"
    ev = effective[0].meta["task"]
    assert ev["holder"] == holder and "ended" in ev["reason"], ev
    assert ev["noticed_by"] in claims
    for name, v in views.items():
        # Open when its wait returned it; a loser's view may already say claimed, when the
        # winner (on another mount, no lock between them) claimed it before that view was made.
        status = v["task"]["status"]
        assert status == "open" or (status == "claimed" and name != winner), (name, v)
        assert v["task"]["reopened"] == effective[0].seq, (name, v)
        assert v["task"]["failed"] == 1 and v["type"] == "task" and v["seq"] == seq
    assert [r.sender for r in results] == [winner]
    board = Mailbox(root).tasks.board(thread)
    t = board.tasks[seq]
    assert (t.status, t.attempts, t.failures, t.done_by, t.closed_by) == (
        "done", 2, 1, winner, results[0].seq,
    )  # fmt: skip
    intervals = replay(list(Mailbox(root).messages(thread)))[seq]
    assert [(h, e) for h, _, e in intervals] == [
        (holder, effective[0].seq),
        (winner, results[0].seq),
    ], intervals


def test_sigkilled_holder_hands_its_task_to_a_waiting_worker_at_once(
    root: Path, procs: list[subprocess.Popen[str]]
) -> None:
    box = Mailbox(root)
    box.create_thread("jobs", creator="boss")
    times = []
    for round_ in range(3):  # several rounds: the two waiters race to write the reopen
        seq = box.post("jobs", f"job {round_}", sender="boss", type="task")
        holder = f"alpha{round_}"
        pid = hold(procs, root, holder, "jobs", seq)
        returned, views, claims = anyio.run(
            handoff, {"bravo": root, "charlie": root}, "jobs", seq, pid, 20.0
        )
        print(f"\nround {round_}: the waits returned the task "
              + ", ".join(f"{n} {s:.2f} s" for n, s in sorted(returned.items()))
              + " after the SIGKILL")  # fmt: skip
        assert set(returned) == {"bravo", "charlie"}
        assert max(returned.values()) < 2.0, returned
        times += returned.values()
        check_handoff(root, "jobs", seq, holder, claims, views)
        reopens = of(replies(root, "jobs", seq), "reopen")
        assert len(reopens) == 1, f"one reopen event on one machine, not {reopens}"
        assert not of(replies(root, "jobs", seq), "dead")
        assert len(of(replies(root, "jobs", seq), "claim")) == 2, "a losing claim wrote nothing"
    print(f"kill -> task returned: max {max(times):.2f} s over {len(times)} waits")


# ---------------------------------------------------------------- 3. the same over sshfs


@pytest.mark.parametrize("charlie_on", ["b", "a"])
def test_sigkilled_holder_on_another_mount_is_replaced_once(
    mounts: tuple[Path, Path],  # noqa: F811
    procs: list[subprocess.Popen[str]],
    charlie_on: str,
) -> None:
    """alpha's serve works through mount a, bravo's through mount b; charlie's through b too
    (its lock excludes bravo's there), or through a (no lock excludes across mounts: the order
    of the thread decides between their reopen events and claims)."""
    a, b = mounts
    name = f"handoff-{charlie_on}"
    box = Mailbox.init(a / name)
    box.create_thread("jobs", creator="boss")
    seq = box.post("jobs", "job over the network", sender="boss", type="task")
    pid = hold(procs, a / name, "alpha", "jobs", seq)
    roots = {"bravo": b / name, "charlie": (a if charlie_on == "a" else b) / name}
    apart = charlie_on == "a"
    returned, views, claims = anyio.run(handoff, roots, "jobs", seq, pid, 30.0, apart)
    print("\nover sshfs the waits returned the task "
          + ", ".join(f"{n} {s:.2f} s" for n, s in sorted(returned.items()))
          + " after the SIGKILL")  # fmt: skip
    # On two mounts the first to see the reopen may claim before the other's wait sees it
    # open (polled, a tick later): that one is then not offered a task someone holds.
    winners = {n for n, c in claims.items() if c.get("claimed")}
    assert set(returned) == {"bravo", "charlie"} or (apart and set(returned) == winners)
    assert max(returned.values()) < 30.0, "within the heartbeat timeout"
    rs = replies(a / name, "jobs", seq)
    print(f"reopen events: {len(of(rs, 'reopen'))}, claims: {len(of(rs, 'claim'))}")
    check_handoff(a / name, "jobs", seq, "alpha", claims, views)


# ---------------------------------------------------------------- 4. a live, silent holder


def test_a_silent_holder_loses_its_task_after_its_lease_and_its_late_result_counts_once(
    root: Path,
) -> None:
    box = Mailbox(root)
    box.create_thread("jobs", creator="boss")
    seq = box.post("jobs", "slow job", sender="boss", type="task")

    async def main() -> None:
        async with agent(root, "alpha") as a, agent(root, "bravo") as b:
            await call(b, "thread_create", topic="jobs")
            got = await call(a, "task_claim", thread="jobs", seq=seq, lease_s=2)
            assert (got["claimed"], got["attempt"]) == (True, 1), got
            (claim,) = of(replies(root, "jobs", seq), "claim")
            assert claim.meta["task"]["lease_s"] == 2
            claimed = time.monotonic()
            # alpha stays connected (its serve lives, heartbeats) but makes no call.
            at, view = await wait_for_task(b, "jobs", seq, 15)
            print(f"\nthe lease of 2 s ran out; bravo got the task {at - claimed:.2f} s after")
            assert 1.0 <= at - claimed < 5.0
            assert view["task"]["status"] == "open" and view["task"]["failed"] == 1
            (reopen,) = of(replies(root, "jobs", seq), "reopen")
            assert reopen.meta["task"]["holder"] == "alpha"
            assert "lease" in reopen.meta["task"]["reason"], reopen.meta
            assert view["task"]["reopened"] == reopen.seq
            got = await call(b, "task_claim", thread="jobs", seq=seq)
            assert got["claimed"] is True and got["attempt"] == 2 and got["failed_before"] == 1
            # alpha wakes up and posts its late result: it is recorded, and closes the task.
            late = await call(a, "msg_post", thread="jobs", type="result", reply_to=seq,
                              content="alpha, late")  # fmt: skip
            listed = await call(a, "task_list", thread="jobs", status="all")
            (t,) = listed["tasks"]
            assert (t["status"], t["result"], t["attempts"], t["failed"]) == (
                "done", late["seq"], 2, 1,
            )  # fmt: skip
            # bravo's result afterwards changes nothing.
            second = await call(b, "msg_post", thread="jobs", type="result", reply_to=seq,
                                content="bravo, too")  # fmt: skip
            assert second["seq"] > late["seq"]
            text = await refused(b, "task_claim", thread="jobs", seq=seq)
            assert f"is done: alpha posted its result at seq {late['seq']}" in text
            listed = await call(b, "task_list", thread="jobs", status="all")
            assert listed["counts"] == {"open": 0, "claimed": 0, "done": 1, "dead": 0}
            assert listed["tasks"][0]["result"] == late["seq"]

    anyio.run(main)
    rs = replies(root, "jobs", seq)
    assert len(of(rs, "reopen")) == 1 and not of(rs, "dead") and not of(rs, "release")
    assert [m.sender for m in of(rs, "result")] == ["alpha", "bravo"]
    t = Mailbox(root).tasks.board("jobs").tasks[seq]
    first = of(rs, "result")[0]
    assert (t.status, t.closed_by, t.done_by, t.attempts, t.failures) == (
        "done", first.seq, "alpha", 2, 1,
    )  # fmt: skip


# ---------------------------------------------------------------- 5. max attempts -> dead


@pytest.mark.parametrize("how", ["settings", "meta"])
def test_a_task_failed_max_attempts_times_is_dead_and_its_sender_is_told(
    root: Path, how: str
) -> None:
    cfg = root / "mailslot.json"
    if how == "settings":
        cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "task_max_attempts": 2}))
    meta = {"max_attempts": 2} if how == "meta" else None
    Mailbox(root).create_thread("jobs", creator="boss")

    async def main() -> None:
        async with agent(root, "boss") as boss, agent(root, "worker") as w:
            assert (await call(boss, "msg_wait", timeout_s=0.1))["messages"] == []
            args = {"meta": meta} if meta else {}
            seq = (await call(boss, "msg_post", thread="jobs", type="task",
                              content="flaky job", **args))["seq"]  # fmt: skip
            await call(w, "thread_create", topic="jobs")
            errors = []
            for attempt in (1, 2):
                got = await call(w, "task_claim", thread="jobs", seq=seq)
                assert got["claimed"] is True and got["attempt"] == attempt, got
                posted = await call(w, "msg_post", thread="jobs", type="error", reply_to=seq,
                                    content=f"failed #{attempt}")  # fmt: skip
                errors.append(posted["seq"])
            dead = await call(w, "task_list", status="dead")
            assert [(t["seq"], t["status"], t["attempts"], t["failed"]) for t in dead["tasks"]] == [
                (seq, "dead", 2, 2)
            ]
            assert dead["counts"] == {"open": 0, "claimed": 0, "done": 0, "dead": 1}
            rs = replies(root, "jobs", seq)
            (notice,) = of(rs, "dead")
            assert notice.sender == "mailslot" and notice.to == ["boss"], notice
            assert notice.seq > errors[-1] and notice.priority == "high"
            assert f"seq {errors[-1]}" in notice.content and "post it again" in notice.content
            assert not of(rs, "reopen")
            got = await call(boss, "msg_wait", timeout_s=5)
            assert [(m["seq"], m["from"]) for m in got["messages"]] == [(notice.seq, "mailslot")]
            assert (await call(boss, "msg_wait", timeout_s=0.2))["messages"] == []
            text = await refused(w, "task_claim", thread="jobs", seq=seq)
            assert f"task {seq} of 'jobs' is dead after 2 failed attempts" in text, text
            assert "post it again as a new task" in text
            assert len(of(replies(root, "jobs", seq), "dead")) == 1, "told once"

    anyio.run(main)


def test_an_error_reply_hands_the_task_to_a_waiting_worker(root: Path) -> None:
    """A failed attempt leaves the task open: a worker blocked in its inbox wait must get it
    again, as after a reopen or a release (otherwise it stays open with every worker idle)."""
    Mailbox(root).create_thread("jobs", creator="boss")
    seq = Mailbox(root).post("jobs", "flaky job", sender="boss", type="task")

    async def main() -> None:
        async with agent(root, "alpha") as a, agent(root, "bravo") as b:
            assert (await call(a, "task_claim", thread="jobs", seq=seq))["claimed"] is True
            await call(b, "thread_create", topic="jobs")
            assert (await call(b, "msg_wait", timeout_s=0.1))["messages"] == []
            await call(a, "msg_post", thread="jobs", type="error", reply_to=seq, content="oops")
            listed = await call(b, "task_list", thread="jobs")
            assert [(t["seq"], t["status"], t["failed"]) for t in listed["tasks"]] == [
                (seq, "open", 1)
            ]
            got = await call(b, "msg_wait", timeout_s=3)
            assert [m["seq"] for m in got["messages"] if "task" in m] == [seq], got

    anyio.run(main)


def test_a_released_task_goes_to_a_waiting_worker(root: Path) -> None:
    Mailbox(root).create_thread("jobs", creator="boss")
    seq = Mailbox(root).post("jobs", "job", sender="boss", type="task")

    async def main() -> None:
        async with agent(root, "alpha") as a, agent(root, "bravo") as b:
            assert (await call(a, "task_claim", thread="jobs", seq=seq))["claimed"] is True
            await call(b, "thread_create", topic="jobs")
            assert (await call(b, "msg_wait", timeout_s=0.1))["messages"] == []
            gave = await call(a, "task_claim", thread="jobs", seq=seq, release=True)
            assert gave["released"] is True
            _, view = await wait_for_task(b, "jobs", seq, 3)
            assert view["task"] == view["task"] | {"status": "open", "reopened": gave["event_seq"]}
            got = await call(b, "task_claim", thread="jobs", seq=seq)
            assert got["claimed"] is True and got["attempt"] == 2 and "failed_before" not in got

    anyio.run(main)


def test_a_task_taken_by_a_gone_process_between_two_waits_goes_to_the_next_wait(
    root: Path,
) -> None:
    """bob's inbox looked at jobs while nothing was held there; then a task was posted and
    claimed by a process that then died holding it. bob's next wait reads the board of the
    thread that moved, notices the dead holder and hands the task out."""
    Mailbox(root).create_thread("jobs", creator="boss")

    async def main() -> None:
        async with agent(root, "bob") as b:
            assert (await call(b, "msg_wait", timeout_s=0.1))["messages"] == []
            seq = Mailbox(root).post("jobs", "job", sender="boss", type="task")
            claim = (  # carol's process claims the task and ends without giving it back
                "import os, sys; from mailslot import Mailbox; "
                "assert Mailbox(sys.argv[1]).tasks.claim('jobs', int(sys.argv[2]), "
                "agent='carol', pid=os.getpid()).won"
            )
            claimed = subprocess.run([sys.executable, "-c", claim, str(root), str(seq)],
                                     capture_output=True, text=True, timeout=60)  # fmt: skip
            assert claimed.returncode == 0, claimed.stderr
            _, view = await wait_for_task(b, "jobs", seq, 30)
            assert view["task"]["status"] == "open", view

    anyio.run(main)


# ---------------------------------------------------------------- 6. bad input


def test_bad_task_claims_are_tool_errors_that_say_what_to_do(root: Path) -> None:
    box = Mailbox(root)
    box.create_thread("jobs", creator="boss")
    note = box.post("jobs", "just a note", sender="boss")
    task = box.post("jobs", "a job", sender="boss", type="task")
    done = box.post("jobs", "a done job", sender="boss", type="task")
    result = box.post("jobs", "did it", sender="carol", type="result", reply_to=done)
    mine = box.post("jobs", "for carol", sender="boss", type="task", to=["carol"])
    box.create_thread("doomed", creator="boss")
    doomed = box.post("doomed", "a job soon gone", sender="boss", type="task")
    assert Mailbox(root).tasks.board("doomed").tasks[doomed].status == "open"

    async def main() -> None:
        async with agent(root, "alpha") as a, agent(root, "bravo") as b:
            await call(a, "task_list")  # alpha's serve has read both threads
            text = await refused(a, "task_claim", thread="jobs", seq=note)
            assert f"message {note} of 'jobs' is a 'message', not a task" in text
            assert "task_list" in text

            text = await refused(a, "task_claim", thread="jobs", seq=99)
            assert "no message 99 in thread 'jobs'" in text and "msg_list" in text

            text = await refused(a, "task_claim", thread="jobs", seq=done)
            assert f"is done: carol posted its result at seq {result}" in text
            assert "task_list" in text

            text = await refused(a, "task_claim", thread="jobs", seq=mine)
            assert "is for carol, not for alpha" in text and "task_list" in text

            text = await refused(a, "task_claim", thread="nowhere", seq=1)
            assert "no thread 'nowhere'" in text
            assert "thread_list" in text and "thread_create" in text

            shutil.rmtree(root / "threads" / "doomed")
            text = await refused(a, "task_claim", thread="doomed", seq=doomed)
            assert "no thread 'doomed'" in text and "thread_list" in text, text

            assert (await call(b, "task_claim", thread="jobs", seq=task))["claimed"] is True
            text = await refused(a, "task_claim", thread="jobs", seq=task, release=True)
            assert f"you do not hold task {task} of 'jobs' (bravo holds it)" in text
            assert "task_list" in text
            text = await refused(a, "task_claim", thread="jobs", seq=note, release=True)
            assert "not a task" in text

            for bad in (0, -5, 86401):
                text = await refused(a, "task_claim", thread="jobs", seq=task, lease_s=bad)
                assert "lease_s" in text and ">= 1" in text and "<= 86400" in text, text
                assert "Call task_claim(" in text, text
            text = await refused(a, "task_claim", thread="jobs", seq=0)
            assert "'seq'" in text and ">= 1" in text

            # Nothing above wrote anything, and bravo still holds its task.
            (claim,) = of(replies(root, "jobs", task), "claim")
            assert claim.sender == "bravo"
            assert Mailbox(root).tasks.board("jobs").tasks[task].holder == "bravo"

    anyio.run(main)
    assert not (root / "threads" / "doomed").exists(), "a claim does not bring a thread back"
    # bravo's claim, and its release when its server ended (a clean exit gives tasks back).
    assert Mailbox(root).head("jobs") == mine + 2
    assert event(Mailbox(root).get("jobs", mine + 2)) == "release"


# ---------------------------------------------------------------- 7. activity keeps short holds


def presence_doc(root: Path, name: str) -> dict[str, Any]:
    """Return agent name's presence file as its serve last wrote it."""
    doc = json.loads((root / ".state" / "presence" / f"{name}.json").read_text())
    assert isinstance(doc, dict)
    return doc


async def rival_wins(b: Client, seq: int, within: float = 30) -> tuple[dict, dict]:
    """As bravo, claim task seq of 'jobs' and reserve src/x.py until both are granted; return
    the two answers."""
    deadline = time.monotonic() + within
    claim: dict[str, Any] = {}
    grant: dict[str, Any] = {}
    while not (claim.get("claimed") and grant.get("granted")):
        assert time.monotonic() < deadline, f"bravo won nothing within {within} s: {claim} {grant}"
        if not claim.get("claimed"):
            claim = await call(b, "task_claim", thread="jobs", seq=seq)
        if not grant.get("granted"):
            grant = await call(b, "files_reserve", paths=["src/x.py"], ttl_s=3)
        await anyio.sleep(0.1)
    return claim, grant


def test_a_short_lease_and_ttl_hold_while_their_holder_keeps_calling(root: Path) -> None:
    """alpha claims with lease_s=3 and reserves with ttl_s=3, then calls a cheap tool every
    0.5 s for 8 s: bravo, in its own serve, is refused all along (the activity reaches the
    presence file in time). Then alpha stays connected but calls nothing: bravo wins both."""
    box = Mailbox(root)
    box.create_thread("jobs", creator="boss")
    seq = box.post("jobs", "a short job", sender="boss", type="task")

    async def main() -> None:
        async with agent(root, "alpha") as a, agent(root, "bravo") as b:
            got = await call(a, "task_claim", thread="jobs", seq=seq, lease_s=3)
            assert got["claimed"] is True, got
            mine = await call(a, "files_reserve", paths=["src/**"], ttl_s=3)
            assert mine["granted"] is True, mine
            begun = time.monotonic()
            stop = anyio.Event()

            async def work() -> None:
                while not stop.is_set():
                    await call(a, "thread_list")
                    with anyio.move_on_after(0.5):
                        await stop.wait()

            tries = 0
            async with anyio.create_task_group() as tg:
                tg.start_soon(work)
                while time.monotonic() - begun < 8:
                    lost = await call(b, "task_claim", thread="jobs", seq=seq)
                    assert (lost["claimed"], lost.get("holder")) == (False, "alpha"), (
                        f"bravo took alpha's task {time.monotonic() - begun:.1f} s into alpha's "
                        f"work: {lost}"
                    )
                    refused = await call(b, "files_reserve", paths=["src/x.py"], ttl_s=3)
                    assert refused["granted"] is False, (
                        f"bravo took alpha's reservation {time.monotonic() - begun:.1f} s into "
                        f"alpha's work: {refused}"
                    )
                    tries += 1
                    await anyio.sleep(0.2)
                stop.set()
            assert tries >= 5
            last_call = time.time()
            claim, grant = await rival_wins(b, seq)
            assert claim["attempt"] == 2 and claim["failed_before"] == 1, claim
            assert [r["path"] for r in grant["reserved"]] == ["src/x.py"]
            doc = presence_doc(root, "alpha")
            assert doc["status"] != "offline" and doc["last_active_epoch"] <= last_call

    anyio.run(main)
    (reopen,) = of(replies(root, "jobs", seq), "reopen")
    assert reopen.meta["task"]["holder"] == "alpha"
    assert "no sign of work for 3 s" in reopen.meta["task"]["reason"], reopen.meta
    expired = [m for m in Mailbox(root).messages("file-reservations") if "expire" in m.meta]
    assert [m.meta["expire"]["holder"] for m in expired] == ["alpha"]
    assert "no sign of work for 3 s" in expired[0].meta["expire"]["reason"]


def test_a_short_lease_holds_while_its_holder_is_blocked_in_a_wait(root: Path) -> None:
    """alpha claims with lease_s=3 and reserves with ttl_s=3, then blocks in one msg_wait of
    8 s on a quiet thread (waiting for a reply to its work is work): bravo is refused all along.
    Once the wait has returned and alpha calls nothing more, bravo wins both."""
    box = Mailbox(root)
    box.create_thread("jobs", creator="boss")
    box.create_thread("quiet", creator="boss")
    seq = box.post("jobs", "a short job", sender="boss", type="task")

    async def main() -> None:
        async with agent(root, "alpha") as a, agent(root, "bravo") as b:
            assert (await call(a, "task_claim", thread="jobs", seq=seq, lease_s=3))["claimed"]
            assert (await call(a, "files_reserve", paths=["src/**"], ttl_s=3))["granted"]
            tries = 0
            async with anyio.create_task_group() as tg:
                waited: dict[str, Any] = {}

                async def wait() -> None:
                    waited.update(await call(a, "msg_wait", thread="quiet", timeout_s=8))

                tg.start_soon(wait)
                while not waited:
                    lost = await call(b, "task_claim", thread="jobs", seq=seq)
                    assert (lost["claimed"], lost.get("holder")) == (False, "alpha"), lost
                    refused = await call(b, "files_reserve", paths=["src/x.py"], ttl_s=3)
                    assert refused["granted"] is False, refused
                    tries += 1
                    await anyio.sleep(0.2)
            assert waited["status"] == "timeout" and tries >= 5, (waited, tries)
            claim, grant = await rival_wins(b, seq)
            assert claim["claimed"] and grant["granted"]

    anyio.run(main)
    (reopen,) = of(replies(root, "jobs", seq), "reopen")
    assert "no sign of work for 3 s" in reopen.meta["task"]["reason"], reopen.meta


@pytest.mark.parametrize("hold", ["task", "files"])
def test_calls_spaced_under_the_lease_keep_it_each_one_written(root: Path, hold: str) -> None:
    """alpha holds one thing for 3 s (a claim with lease_s=3, or a reservation with ttl_s=3)
    and calls a cheap tool every 1.4 s: more than a quarter of the hold apart, so each call
    writes its activity, and bravo is refused all along. (A call that wrote only when the
    written activity was a whole hold old would leave bravo a second-long opening.)"""
    box = Mailbox(root)
    box.create_thread("jobs", creator="boss")
    seq = box.post("jobs", "a short job", sender="boss", type="task")

    async def main() -> None:
        async with agent(root, "alpha") as a, agent(root, "bravo") as b:
            if hold == "task":
                assert (await call(a, "task_claim", thread="jobs", seq=seq, lease_s=3))["claimed"]
            else:
                assert (await call(a, "files_reserve", paths=["src/**"], ttl_s=3))["granted"]
            stop = anyio.Event()
            calls = 0

            async def work() -> None:
                nonlocal calls
                while not stop.is_set():
                    await call(a, "thread_list")
                    calls += 1
                    with anyio.move_on_after(1.4):
                        await stop.wait()

            async with anyio.create_task_group() as tg:
                tg.start_soon(work)
                while calls < 8:
                    if hold == "task":
                        lost = await call(b, "task_claim", thread="jobs", seq=seq)
                        assert (lost["claimed"], lost.get("holder")) == (False, "alpha"), lost
                    else:
                        refused = await call(b, "files_reserve", paths=["src/x.py"], ttl_s=3)
                        assert refused["granted"] is False, refused
                    await anyio.sleep(0.1)
                stop.set()

    anyio.run(main)


def test_a_heartbeat_without_work_does_not_keep_a_lease(root: Path) -> None:
    """alpha's serve heartbeats every second (--heartbeat-timeout 3) but is asked nothing after
    its claim and reservation: its presence stays fresh, its lease and TTL run out."""
    box = Mailbox(root)
    box.create_thread("jobs", creator="boss")
    seq = box.post("jobs", "a short job", sender="boss", type="task")

    async def main() -> None:
        fast = params(root, "--agent", "alpha", "--heartbeat-timeout", "3")
        async with Client(fast, mode="auto", cache=None) as a, agent(root, "bravo") as b:
            assert (await call(a, "task_claim", thread="jobs", seq=seq, lease_s=3))["claimed"]
            assert (await call(a, "files_reserve", paths=["src/**"], ttl_s=3))["granted"]
            last_call = time.time()
            claim, grant = await rival_wins(b, seq)
            assert claim["claimed"] is True and grant["granted"] is True
            await anyio.to_thread.run_sync(
                until, "alpha's heartbeat past its lease",
                lambda: presence_doc(root, "alpha")["last_seen_epoch"] > last_call + 4,
            )  # fmt: skip
            doc = presence_doc(root, "alpha")
            assert doc["last_active_epoch"] <= last_call, "a heartbeat is no sign of work"
            assert doc["status"] == "online"

    anyio.run(main)
    (reopen,) = of(replies(root, "jobs", seq), "reopen")
    assert "no sign of work for 3 s" in reopen.meta["task"]["reason"], reopen.meta


async def presence_writes(root: Path, a: Client) -> tuple[int, int, float]:
    """As alpha, call a cheap tool 30 times over ~3 s; return how many calls, how many presence
    writes were seen (its last_seen_epoch changed), and how long it took."""
    seen = presence_doc(root, "alpha")["last_seen_epoch"]
    writes, begun = 0, time.monotonic()
    for _ in range(30):
        await call(a, "thread_list")
        now = presence_doc(root, "alpha")["last_seen_epoch"]
        writes += now != seen
        seen = now
        await anyio.sleep(0.1)
    return 30, writes, time.monotonic() - begun


def test_activity_is_written_only_as_often_as_the_shortest_hold_needs(root: Path) -> None:
    """Calls made while holding nothing, a long lease, or holds already closed or given back
    write no presence beyond the heartbeat's; a short hold's writes are spaced out."""
    box = Mailbox(root)
    box.create_thread("jobs", creator="boss")
    long_job = box.post("jobs", "a long job", sender="boss", type="task")
    short_job = box.post("jobs", "a short job", sender="boss", type="task")
    failing_job = box.post("jobs", "a job that fails", sender="boss", type="task")

    def beats(elapsed: float) -> int:
        """Return how many heartbeats (every 30/3 s) can fall into elapsed seconds."""
        return int(elapsed / 10) + 1

    async def main() -> None:
        async with agent(root, "alpha") as a:
            # holding nothing
            calls, writes, took = await presence_writes(root, a)
            assert writes <= beats(took), f"{writes} presence writes for {calls} calls"

            got = await call(a, "task_claim", thread="jobs", seq=long_job, lease_s=300)
            assert got["claimed"] is True
            # a lease of 300 s: the heartbeat suffices
            calls, writes, took = await presence_writes(root, a)
            assert writes <= beats(took), f"{writes} presence writes for {calls} calls"

            assert (await call(a, "files_reserve", paths=["docs/**"], ttl_s=4))["granted"]
            # a TTL of 4 s: a write a second at most
            calls, writes, took = await presence_writes(root, a)
            assert 1 <= writes <= took / 1 + beats(took) + 1, f"{writes} writes in {took:.1f} s"

            assert (await call(a, "files_reserve", paths=["notes/**"], ttl_s=1))["granted"]
            # 1 s: two writes a second, no more
            calls, writes, took = await presence_writes(root, a)
            assert writes <= took / 0.5 + beats(took) + 1, f"{writes} writes in {took:.1f} s"

            await call(a, "files_release")
            got = await call(a, "task_claim", thread="jobs", seq=short_job, lease_s=3)
            assert got["claimed"] is True
            await call(a, "msg_post", thread="jobs", type="result", reply_to=short_job,
                       content="done")  # fmt: skip
            got = await call(a, "task_claim", thread="jobs", seq=failing_job, lease_s=3)
            assert got["claimed"] is True
            # a failed attempt holds it no more
            await call(a, "msg_post", thread="jobs", type="error", reply_to=failing_job,
                       content="it failed")  # fmt: skip
            # what is given back or closed needs nothing
            calls, writes, took = await presence_writes(root, a)
            assert writes <= beats(took), f"{writes} presence writes for {calls} calls"

    anyio.run(main)


# ---------------------------------------------------------------- 8. keyed retries


KEYED = """
import json, sys, time
from pathlib import Path
from mailslot import Mailbox
root, go = sys.argv[1:]
box = Mailbox(root)
print("ready", flush=True)
while not Path(go).exists():
    time.sleep(0.001)
m = box.publish("jobs", "deploy 42", sender="alpha", idempotency_key="deploy-42")
print(json.dumps([m.seq, m.id]), flush=True)
"""


def test_a_keyed_retry_from_another_process_returns_the_first_message(
    root: Path, tmp_path: Path
) -> None:
    """A client whose server died after storing a post (its answer lost) retries through a
    new `mailslot serve`: the retry returns the first message. Processes that post with one
    key at the same moment store it once, and all are told its seq."""
    box = Mailbox(root)
    box.create_thread("jobs", creator="boss")

    async def post(key: str, sender: str = "alpha") -> dict[str, Any]:
        async with agent(root, sender) as c:
            return dict(await call(c, "msg_post", thread="jobs", content="ship it",
                                   idempotency_key=key))  # fmt: skip

    first = anyio.run(post, "ship-1")
    box.post("jobs", "meanwhile", sender="boss")
    again = anyio.run(post, "ship-1")  # another serve process, another client
    assert again == first
    other = anyio.run(post, "ship-1", "bravo")  # a key is its sender's: bravo's is new
    assert other["seq"] > first["seq"] and other["id"] != first["id"]
    ships = [(m.seq, m.sender) for m in Mailbox(root).messages("jobs") if m.content == "ship it"]
    assert ships == [(first["seq"], "alpha"), (other["seq"], "bravo")]

    go = tmp_path / "go"
    command = [sys.executable, "-c", KEYED, str(root), str(go)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(6)]
    start_together(procs, go)
    told = {tuple(json.loads(out)) for out in finish(procs, timeout=120)}
    deploys = [(m.seq, m.id) for m in Mailbox(root).messages("jobs") if m.content == "deploy 42"]
    assert len(deploys) == 1 and told == set(deploys), (told, deploys)


def test_a_hold_lost_to_another_is_forgotten_at_the_next_heartbeat(root: Path) -> None:
    """alpha's short lease runs out and bravo takes the task: from alpha's next heartbeat on,
    alpha's calls write no presence for a hold it no longer has."""
    box = Mailbox(root)
    box.create_thread("jobs", creator="boss")
    seq = box.post("jobs", "a short job", sender="boss", type="task")

    async def main() -> None:
        slow = params(root, "--agent", "alpha", "--heartbeat-timeout", "15")  # a beat every 5 s
        async with Client(slow, mode="auto", cache=None) as a, agent(root, "bravo") as b:
            assert (await call(a, "task_claim", thread="jobs", seq=seq, lease_s=3))["claimed"]
            assert (await call(a, "files_reserve", paths=["src/**"], ttl_s=3))["granted"]
            await rival_wins(b, seq)
            # bravo now holds alpha's very pattern: a hold is alpha's by holder and process,
            # not by its pattern alone
            assert (await call(b, "files_reserve", paths=["src/**"], ttl_s=300))["granted"]
            beat = presence_doc(root, "alpha")["last_seen_epoch"]
            await anyio.to_thread.run_sync(
                until, "alpha's next heartbeat",
                lambda: presence_doc(root, "alpha")["last_seen_epoch"] != beat,
            )  # fmt: skip
            _, writes, took = await presence_writes(root, a)
            beats = int(took / 5) + 1
            assert writes <= beats, f"{writes} presence writes for 30 calls holding nothing"

    anyio.run(main)


# ---------------------------------------------------------------- 9. one task for anyone a wait


def tasks_in(answer: dict[str, Any]) -> list[int]:
    """Return the seqs of the tasks an inbox wait's answer offers."""
    return [m["seq"] for m in answer["messages"] if "task" in m]


def each_done_once(box: Mailbox, outs: list[dict[str, Any]], posted: list[int]) -> None:
    """Assert that offer_worker outputs outs won each task of "drain" in posted once, and
    that the folder holds one claim and one result per task, both by its winner."""
    by_task: dict[int, list[Message]] = defaultdict(list)
    for m in box.messages("drain"):
        if m.reply_to is not None:
            by_task[m.reply_to].append(m)
    won = {int(seq): (doc["worker"], result) for doc in outs for seq, result in doc["won"].items()}
    assert sorted(won) == sorted(posted), "every task won once, by one worker"
    for seq in posted:
        claims, results = of(by_task[seq], "claim"), of(by_task[seq], "result")
        assert len(claims) == len(results) == 1, (seq, by_task[seq])
        assert claims[0].sender == results[0].sender == won[seq][0]
        assert results[0].seq == won[seq][1]


def test_four_workers_offered_one_task_a_wait_drain_them_each_once_with_few_lost_claims(
    root: Path, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    """Workers join the thread; half the tasks come before their first msg_wait (the inbox
    owes those), half while they work. Each answer offers one task at most, and says
    has_more while others wait; workers rarely claim a task another took."""
    total, n = 160, 4
    box = Mailbox(root)
    box.create_thread("drain", creator="boss")
    go = tmp_path / "go"
    procs += [spawn_call("offer_worker", str(root), f"w{i}", "drain", str(total), str(go))
              for i in range(n)]  # fmt: skip
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", (
            p.stderr.read() if p.stderr else ""
        )
    posted = [box.post("drain", f"job {i}", sender="boss", type="task") for i in range(total // 2)]
    go.touch()
    posted += [box.post("drain", f"job {i}", sender="boss", type="task")
               for i in range(total // 2, total)]  # fmt: skip
    outs = [json.loads(out) for out in finish(procs, timeout=300)]
    each_done_once(box, outs, posted)
    calls = sum(doc["claims"] for doc in outs)
    print(f"\n{total} tasks, {n} workers: {calls / total:.2f} task_claim calls per task; won "
          + "/".join(str(len(doc["won"])) for doc in outs))  # fmt: skip
    assert max(doc["most"] for doc in outs) == 1, "an answer offered more than one task"
    assert calls / total < 1.5, f"{calls} task_claim calls for {total} tasks"
    assert sum(doc["more"] for doc in outs) > 0, "no answer said that more tasks wait"


@pytest.mark.parametrize("how", ["1", "post"])
def test_four_workers_taking_the_next_task_drain_them_each_once_and_rarely_collide(
    root: Path, tmp_path: Path, procs: list[subprocess.Popen[str]], how: str
) -> None:
    """After each result a worker claims the next task open to it until none is, by
    task_claim without a seq ("1") or by the result's msg_post(next_task=true) ("post"): each
    such claim is decided under the thread's lock and tries the open tasks in the worker's
    own order, so every task is done once, each one that won returned its task's message,
    and lost claims stay rare."""
    total, n = 160, 4
    box = Mailbox(root)
    box.create_thread("drain", creator="boss")
    go = tmp_path / "go"
    procs += [spawn_call("offer_worker", str(root), f"w{i}", "drain", str(total), str(go), how)
              for i in range(n)]  # fmt: skip
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", (
            p.stderr.read() if p.stderr else ""
        )
    jobs = {box.post("drain", f"job {i}", sender="boss", type="task"): f"job {i}"
            for i in range(total)}  # fmt: skip
    go.touch()
    outs = [json.loads(out) for out in finish(procs, timeout=300)]
    each_done_once(box, outs, list(jobs))
    taken = {int(seq): text for doc in outs for seq, text in doc["next"].items()}
    assert taken and all(jobs[seq] == text for seq, text in taken.items()), taken
    assert len(taken) > total // 2, f"only {len(taken)} tasks were taken as the next one"
    calls = sum(doc["claims"] - doc["empty"] for doc in outs)
    print(f"\n{total} tasks, {n} workers: {calls / total:.2f} claims per task")
    assert calls / total < 1.2, f"{calls} task_claim calls for {total} tasks"


def test_a_claim_without_a_seq_takes_only_a_task_open_to_the_agent(root: Path) -> None:
    """The next task for bob skips tasks for others and closed ones, and takes one for bob by
    name; with none open it says so, and what to do; release needs a seq."""
    box = Mailbox(root)
    box.agents.register("carol")
    box.agents.register("bob")
    box.create_thread("jobs", creator="boss")
    for_carol = box.post("jobs", "for carol", sender="boss", type="task", to=["carol"])
    done = box.post("jobs", "done already", sender="boss", type="task")
    box.tasks.claim("jobs", done, agent="dave")
    box.post("jobs", "did it", sender="dave", type="result", reply_to=done)
    for_bob = box.post("jobs", "for bob", sender="boss", type="task", to=["bob"])

    async def main() -> tuple[dict[str, Any], dict[str, Any], str]:
        async with agent(root, "bob") as b:
            first = await call(b, "task_claim", thread="jobs")
            second = await call(b, "task_claim", thread="jobs")
            bad = await refused(b, "task_claim", thread="jobs", release=True)
            return first, second, bad

    first, second, bad = anyio.run(main)
    assert (first["claimed"], first["seq"], first["message"]["content"]) == (
        True,
        for_bob,
        "for bob",
    )
    assert second["claimed"] is False and "msg_wait" in second["hint"], second
    assert "release needs the seq" in bad
    assert box.tasks.task("jobs", for_carol).status == "open"


def test_a_result_that_takes_the_next_task_retried_with_its_key_gets_the_same_task(
    root: Path,
) -> None:
    """msg_post(next_task=true) posts the result and claims the next task open to the agent;
    a retry of that call with the same idempotency key (the answer was lost) stores nothing
    new and answers with the task the first call took, not a second one, even when the agent
    claimed an older task in between."""
    box = Mailbox(root)
    box.create_thread("jobs", creator="boss")
    first = box.post("jobs", "job 1", sender="boss", type="task")
    jobs = [box.post("jobs", f"job {i}", sender="boss", type="task") for i in (2, 3, 4)]
    # The worker whose own order takes a job that is not the oldest left (see offers.rank).
    me = next(f"w{i}" for i in range(100) if min(jobs, key=lambda s: rank(f"w{i}", "jobs", s))
              != jobs[0])  # fmt: skip
    took = min(jobs, key=lambda s: rank(me, "jobs", s))

    async def main() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        async with agent(root, me) as b:
            won = await call(b, "task_claim", thread="jobs", seq=first)
            assert won["claimed"] is True, won
            args = {"thread": "jobs", "content": "did job 1", "type": "result",
                    "reply_to": first, "next_task": True, "idempotency_key": "r1"}  # fmt: skip
            posted = await call(b, "msg_post", **args)
            # Meanwhile it claims the oldest task, older than the one the first call took.
            assert (await call(b, "task_claim", thread="jobs", seq=jobs[0]))["claimed"] is True
            again = await call(b, "msg_post", **args)
            held.extend(t.seq for t in box.tasks.board("jobs").tasks.values()
                        if t.holder == me and t.status == "claimed")  # fmt: skip
            plain = await call(b, "msg_post", **{**args, "idempotency_key": None})
            return posted, again, plain

    held: list[int] = []  # while the session lives (its end gives back what it holds)
    posted, again, plain = anyio.run(main)
    assert (posted["next"]["claimed"], posted["next"]["seq"]) == (True, took), posted
    assert again["seq"] == posted["seq"], "the retry stored a second result"
    assert (again["next"]["claimed"], again["next"]["seq"]) == (True, took), again
    assert again["next"]["message"]["content"] == posted["next"]["message"]["content"]
    assert sorted(held) == sorted([jobs[0], took]), "the retry took another task"
    # Without the key, a second result is a new post, and takes the task left.
    left = set(jobs) - {jobs[0], took}
    assert plain["seq"] != posted["seq"] and {plain["next"]["seq"]} == left, plain


@pytest.mark.parametrize("posted", ["before joining", "while waiting"])
def test_a_worker_whose_offer_another_took_is_offered_the_next_task_at_once(
    root: Path, posted: str
) -> None:
    """Tasks owed from before the first wait, or read by the waits: the same."""
    box = Mailbox(root)
    box.create_thread("jobs", creator="boss")
    seqs: list[int] = []
    if posted == "before joining":
        seqs += [box.post("jobs", f"job {i}", sender="boss", type="task") for i in range(3)]

    async def main() -> None:
        async with agent(root, "alpha") as a, agent(root, "bravo") as b:
            await call(a, "thread_create", topic="jobs")
            if not seqs:
                assert (await call(a, "msg_wait", timeout_s=0.5))["messages"] == []
                seqs.extend(box.post("jobs", f"job {i}", sender="boss", type="task")
                            for i in range(3))  # fmt: skip
            first = await call(a, "msg_wait", timeout_s=5)
            (mine,) = tasks_in(first)
            assert first["has_more"] is True and "more is waiting" in first["hint"], first
            # bravo takes it between alpha's wait and alpha's claim
            assert (await call(b, "task_claim", thread="jobs", seq=mine))["claimed"] is True
            lost = await call(a, "task_claim", thread="jobs", seq=mine)
            assert (lost["claimed"], lost["holder"]) == (False, "bravo"), lost
            offered = [mine]
            for more in (True, False):  # the other two, one a wait, each at once
                got = await call(a, "msg_wait", timeout_s=30)
                (seq,) = tasks_in(got)
                assert got["waited_s"] < 5 and got.get("has_more", False) is more, got
                assert seq not in offered and got["messages"][0]["task"]["status"] == "open"
                offered.append(seq)
            assert sorted(offered) == seqs
            assert (await call(a, "task_claim", thread="jobs", seq=seq))["claimed"] is True
            assert (await call(a, "msg_wait", timeout_s=0.5))["messages"] == []

    anyio.run(main)


def test_a_killed_holders_task_goes_to_a_worker_whose_inbox_holds_tasks_back(
    root: Path, procs: list[subprocess.Popen[str]]
) -> None:
    """bravo was offered one of two tasks and left it; carol took the other, which bravo's
    inbox held back. bravo's next wait blocks (nothing it was not shown is open) and hands
    out the dead holder's task at once."""
    box = Mailbox(root)
    box.create_thread("jobs", creator="boss")
    held = box.post("jobs", "held job", sender="boss", type="task")
    pid = hold(procs, root, "alpha", "jobs", held)

    async def main() -> None:
        async with agent(root, "bravo") as b:
            await call(b, "thread_create", topic="jobs")
            assert (await call(b, "msg_wait", timeout_s=0.5))["messages"] == []  # held
            two = [box.post("jobs", f"job {i}", sender="boss", type="task") for i in range(2)]
            first = await call(b, "msg_wait", timeout_s=5)
            (left,) = tasks_in(first)
            assert first["has_more"] is True, first
            (other,) = set(two) - {left}
            assert box.tasks.claim("jobs", other, agent="carol").won  # a lease, no process
            returned: list[dict[str, Any]] = []

            async def wait() -> None:
                returned.append(await call(b, "msg_wait", timeout_s=60))

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                await anyio.to_thread.run_sync(
                    until, "bravo waiting", lambda: waiting(root, "bravo")
                )
                assert not returned, f"the wait returned while the holder lived: {returned}"
                killed = time.monotonic()
                kill(pid)
            (got,) = returned
            assert tasks_in(got) == [held], got
            assert got["messages"][0]["task"]["reopened"] > max(two)
            assert time.monotonic() - killed < 10
            assert (await call(b, "task_claim", thread="jobs", seq=held))["claimed"] is True

    anyio.run(main)


def test_messages_to_an_agent_all_come_while_its_inbox_holds_tasks_back(root: Path) -> None:
    """Only tasks for anyone come one at a time: what is addressed to the agent (a task for it
    included) comes with the first wait, and what arrives while tasks are held back comes at
    once, beside a task (not after them: 20 are left)."""
    box = Mailbox(root)
    box.agents.register("carol")
    box.create_thread("jobs", creator="boss")
    box.create_thread("other", creator="boss")
    anyone = [box.post("jobs", f"job {i}", sender="boss", type="task") for i in range(20)]
    note = box.post("jobs", "carol: look at this first", sender="boss", to=["carol"])
    mine = box.post("other", "a job for carol", sender="boss", type="task", to=["carol"])
    anyone.append(box.post("jobs", "one more job", sender="boss", type="task"))

    async def main() -> None:
        async with agent(root, "carol") as c:
            await call(c, "thread_create", topic="jobs")
            got = await call(c, "msg_wait", timeout_s=5)
            to_her = [
                (m["thread"], m["seq"]) for m in got["messages"] if "carol" in m.get("to", [])
            ]
            assert sorted(to_her) == [("jobs", note), ("other", mine)], got
            offered = [
                (m["thread"], m["seq"]) for m in got["messages"] if "carol" not in m.get("to", [])
            ]
            assert len(offered) == 1 and offered[0][1] in anyone and got["has_more"] is True
            later = box.post("other", "carol: and this", sender="boss", to=["carol"])
            came: list[int] = []
            for _ in range(10):  # the next answer, or the one after when it looked just
                got = await call(c, "msg_wait", timeout_s=5)  # before the file event came
                assert len(tasks_in(got)) == 1 and got["has_more"] is True, got
                came += [m["seq"] for m in got["messages"] if m["thread"] == "other"]
                if came:
                    break
            assert came == [later]

    anyio.run(main)
