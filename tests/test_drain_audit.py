"""What issue 30's drain changes must not lose: found by mutation audits of 62f28ed..80a39ce.

Each test here failed on a small bug in that code that the rest of the suite let through: a
wait that started the watch and then slept without looking again, or looked again only where
the feed said (a file git put in place as the watch began waited for a timer tick); a wait of
no time that started the watch all the same; a kept wait in poll mode that looked at every
thread again on each call that blocked; a read that stopped at the size fstat gave before the
file grew; a presence file read through a symlink; a thread id refused once, then let through
from the cache of thread folders; open tasks read lazily that broke on a fold meanwhile, or
closed tasks never leaving the board's list of open ones. A second audit (of ..80a39ce) found a
real bug: a task given back while the open tasks were being read, after the read passed it as
claimed, was left out of them for good (a claim without a seq never took it again).

Real files, real processes where another writer matters; the library where the wait itself is
what is held (as in test_wait.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import agent, call, until
from test_foreign import message_bytes

from mailslot import InvalidName, Mailbox
from mailslot.store import plan as _plan
from mailslot.store import wait as _wait
from mailslot.store.files import read_all, read_file
from mailslot.store.plan import Arrivals
from mailslot.store.wait import Waiting

# ---------------------------------------------------------------- msg_post(next_task) retried


def _jobs(root: Path, n: int) -> list[int]:
    box = Mailbox(root)
    box.create_thread("jobs", creator="boss")
    return [box.post("jobs", f"job {i + 1}", sender="boss", type="task") for i in range(n)]


def _result(task: int, key: str) -> dict[str, Any]:
    return {"thread": "jobs", "content": f"did {task}", "type": "result", "reply_to": task,
            "next_task": True, "idempotency_key": key}  # fmt: skip


def test_a_retried_result_answers_with_its_task_after_the_agent_claimed_a_newer_one(
    root: Path,
) -> None:
    """docs/tools.md (msg_post): a retry with the same idempotency_key "returns the task the
    first call took". bob's result took task 2, the only one open; bob then claimed task 3
    by its seq; the retry of the result still answers with task 2, not the newer claim."""
    first, second = _jobs(root, 2)

    async def main() -> tuple[dict[str, Any], dict[str, Any], int]:
        async with agent(root, "bob") as b:
            assert (await call(b, "task_claim", thread="jobs", seq=first))["claimed"] is True
            posted = await call(b, "msg_post", **_result(first, "r1"))
            third = Mailbox(root).post("jobs", "job 3", sender="boss", type="task")
            assert (await call(b, "task_claim", thread="jobs", seq=third))["claimed"] is True
            return posted, await call(b, "msg_post", **_result(first, "r1")), third

    posted, again, third = anyio.run(main)
    assert (posted["next"]["claimed"], posted["next"]["seq"]) == (True, second), posted
    assert again["seq"] == posted["seq"], "the retry stored a second result"
    assert (again["next"]["claimed"], again["next"]["seq"]) == (True, second), (again, third)


def test_a_retried_result_whose_task_is_done_since_is_answered_not_refused(root: Path) -> None:
    """A retry of a result (same idempotency_key) after the task its first call took was done
    meanwhile: the post is not stored again and the answer says so, with no task to hand out
    (the done task is not claimed again, and the retry is no tool error)."""
    first, second = _jobs(root, 2)

    async def main() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        async with agent(root, "bob") as b:
            assert (await call(b, "task_claim", thread="jobs", seq=first))["claimed"] is True
            posted = await call(b, "msg_post", **_result(first, "r1"))
            assert posted["next"]["seq"] == second, posted
            done = await call(b, "msg_post", **_result(second, "r2"))
            return posted, done, await call(b, "msg_post", **_result(first, "r1"))

    posted, done, again = anyio.run(main)
    assert done["next"]["claimed"] is False, done
    assert again["seq"] == posted["seq"], "the retry stored a second result"
    assert again["next"]["claimed"] is False, again


def test_a_retried_result_answers_with_its_task_after_the_agent_claimed_an_older_one(
    root: Path,
) -> None:
    """As above, the other way round: bob's result took task 3 (carol held task 2); carol gave
    task 2 back and bob claimed it by its seq; the retry of the result answers with task 3,
    the task the first call took, not task 2."""
    first, second, third = _jobs(root, 3)
    box = Mailbox(root)
    assert box.tasks.claim("jobs", second, agent="carol").won

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        async with agent(root, "bob") as b:
            assert (await call(b, "task_claim", thread="jobs", seq=first))["claimed"] is True
            posted = await call(b, "msg_post", **_result(first, "r1"))
            box.tasks.release("jobs", second, agent="carol")
            assert (await call(b, "task_claim", thread="jobs", seq=second))["claimed"] is True
            return posted, await call(b, "msg_post", **_result(first, "r1"))

    posted, again = anyio.run(main)
    assert (posted["next"]["claimed"], posted["next"]["seq"]) == (True, third), posted
    assert again["seq"] == posted["seq"], "the retry stored a second result"
    assert (again["next"]["claimed"], again["next"]["seq"]) == (True, third), again


# ---------------------------------------------------------------- the board's open tasks


def test_open_tasks_read_as_far_as_the_caller_reads_outlive_a_fold_meanwhile(
    tmp_path: Path,
) -> None:
    """Board.open_tasks yields the open tasks "as far as the caller reads them", and a fold
    may run meanwhile (the board is folded in place: a task posted since comes into it): the
    tasks read after that fold are the rest of those open when the reading began."""
    box = Mailbox.init(tmp_path / "box", fsync=False)
    seqs = _jobs(box.root, 3)
    board = box.tasks.board("jobs")
    reading = board.open_tasks()
    assert next(reading).seq == seqs[0]
    box.post("jobs", "job 4", sender="boss", type="task")
    assert box.tasks.board("jobs") is board and board.seq == seqs[-1] + 1
    assert [t.seq for t in reading] == seqs[1:]


def test_tasks_found_closed_leave_the_boards_list_of_open_ones(tmp_path: Path) -> None:
    """open_tasks: "those found closed or claimed on the way leave opened", so finding the
    open tasks costs what is open, not every task the thread ever had."""
    box = Mailbox.init(tmp_path / "box", fsync=False)
    seqs = _jobs(box.root, 5)
    for seq in seqs[:3]:
        assert box.tasks.claim("jobs", seq, agent="carol").won
        box.post("jobs", "done", sender="carol", type="result", reply_to=seq)
    assert box.tasks.claim("jobs", seqs[3], agent="carol").won
    board = box.tasks.board("jobs")
    assert [t.seq for t in board.open_tasks()] == seqs[4:]
    assert list(board.opened) == seqs[4:]


def test_a_task_given_back_while_the_open_tasks_are_read_is_open_after(tmp_path: Path) -> None:
    """As above, a fold meanwhile: carol gives task 1 back while the open tasks are being
    read, after the read passed it as claimed. Task 1 is open, and the open tasks read after
    that include it (else a claim without a seq never takes it while this board lives)."""
    box = Mailbox.init(tmp_path / "box", fsync=False)
    first, second = _jobs(box.root, 2)
    assert box.tasks.claim("jobs", first, agent="carol").won
    board = box.tasks.board("jobs")
    reading = board.open_tasks()
    assert next(reading).seq == second
    box.tasks.release("jobs", first, agent="carol")
    assert box.tasks.board("jobs") is board and board.tasks[first].status == "open"
    assert list(reading) == []
    assert [t.seq for t in board.open_tasks()] == [first, second]


# ---------------------------------------------------------------- waits and the watch


def _pull(box: Mailbox, thread: str, seq: int) -> None:
    """Put message seq in place in thread as git or rsync would: no news, and no file event
    where no watch is."""
    pulled = box.root / ".state" / "tmp" / "pulled"
    pulled.write_text(message_bytes(seq))
    os.rename(pulled, box.root / "threads" / thread / f"{seq:06d}.json")


@pytest.mark.parametrize("how", ["wait", "wait_async"])
def test_a_file_put_in_place_as_the_watch_starts_is_found_by_the_look_after(
    box: Mailbox, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """docs/tools.md: the wait that starts the watch looks at every thread it is on once,
    which finds what other writers put there before it. Here git puts a message in place after
    the wait's first look found nothing and before its watch begins (at the call that starts
    it): no file event and no news line names it, yet the look that follows the start of the
    watch returns it, not a timer tick (an hour away here) or the end of the wait (ten
    minutes away)."""
    monkeypatch.setattr(_wait, "SAFETY_RECHECK_S", 3600.0)
    head = box.cursor("t")["t"]
    real = Waiting.subscribe
    calls: list[int] = []

    def subscribe(self: Waiting, signal: Callable[[], None]) -> tuple[Callable[[], None], bool]:
        if not calls:  # between the first look and the start of the watch
            _pull(box, "t", head + 1)
        calls.append(1)
        return real(self, signal)

    monkeypatch.setattr(Waiting, "subscribe", subscribe)
    got: list[Arrivals] = []

    def run() -> None:
        if how == "wait":
            got.append(box.wait("t", head, timeout=600))
        else:
            got.append(asyncio.run(box.wait_async("t", head, timeout=600)))

    waiter = threading.Thread(target=run, daemon=True)
    waiter.start()
    try:
        until("the wait returned the file put in place as its watch began", lambda: bool(got), 60)
    finally:
        if not got:  # end the wait (its watch wakes it) rather than leave it running
            box.post("t", "wake up", sender="alice")
        waiter.join(60)
    assert calls, "the wait never started the watch"
    assert [m.content for m in got[0].messages] == [f"message {head + 1}"], got[0]
    assert not got[0].timed_out


def test_a_wait_with_no_time_to_wait_starts_no_watch(box: Mailbox) -> None:
    """docs/tools.md: only a wait that found nothing and has time left starts the process's
    watch; `mailslot wait --timeout 0`, a look and no more, never does (in a thread, in the
    inbox, awaited)."""
    assert box.wait("t", timeout=0).timed_out
    assert box.wait(None, timeout=0, to="bob").timed_out
    assert asyncio.run(box.wait_async("t", timeout=0)).timed_out
    assert box._watcher is None, "a wait of no time started the watch"
    assert box.wait("t", timeout=0.2).timed_out
    assert box._watcher is not None, "a wait that blocked did not start it"


def test_a_kept_wait_in_poll_mode_looks_at_every_thread_on_its_first_run_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/guarantees.md (Idle is flat, local disks and network mounts): in poll mode no
    watch begins, so no wait is the one that started it: a kept inbox's runs that block look
    where news or a sweep says, never at every thread again (a look at all of them per call is
    what an idle agent at 100,000 threads cannot pay)."""
    threads = 150  # more than a tick sweeps (POLL_SLICE)
    with Mailbox.init(tmp_path / "box", fsync=False) as made:
        ids = [made.create_thread(f"quiet {i}", creator="alice").id for i in range(threads)]
        for thread in ids:
            made.post(thread, "old", sender="alice")
    box = Mailbox(tmp_path / "box", wait_mode="poll", poll_interval=0.05)
    looked: list[str] = []
    real = _plan.exists

    def counting(tdir: Path | str, seq: int) -> bool:
        looked.append(Path(tdir).name)
        return real(tdir, seq)

    monkeypatch.setattr(_plan, "exists", counting)
    plan = box.wait_plan(None, box.cursor(), to="idler")

    async def main() -> None:
        await box.run_wait(plan, 0)
        assert set(looked) == set(ids), "the first run looks at every thread"
        for _ in range(3):  # an agent calls again as soon as a wait times out
            looked.clear()
            got = await box.run_wait(plan, 0.3)
            assert got.timed_out and not got.messages
            assert len(set(looked)) < threads, "a run that blocked looked at every thread"

    try:
        asyncio.run(main())
    finally:
        box.close()


# ---------------------------------------------------------------- reads


def test_a_file_that_grew_after_its_size_was_taken_is_read_to_its_end(tmp_path: Path) -> None:
    """read_all (every message file's read): "read fd from where it stands to its end; size:
    what fstat said it holds". A file another writer (git, an editor) appended to after the
    fstat, by more than one read's worth, is read whole; so is a file whose size fstat does
    not tell (/proc)."""
    path = tmp_path / "growing"
    path.write_bytes(b"a" * 10)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        with path.open("ab") as more:
            more.write(b"b" * 200_000)
        assert read_all(fd, size) == b"a" * 10 + b"b" * 200_000
    finally:
        os.close(fd)
    proc = Path("/proc/self/cmdline")
    if proc.exists():
        assert os.stat(proc).st_size == 0
        assert read_file(str(proc)) == proc.read_bytes() != b""


def test_a_presence_file_that_is_a_symlink_is_not_read(box: Mailbox, tmp_path: Path) -> None:
    """read_file "follows no symlink", and mailslot never follows links inside a root: a
    presence file swapped for a link to a file elsewhere is not read as the holder's presence
    (a claim's lease is judged by it)."""
    doc = {"agent": "bob", "pid": os.getpid(), "status": "online", "last_seen_epoch": 1e12}
    outside = tmp_path / "elsewhere.json"
    outside.write_text(json.dumps(doc))
    folder = box.root / ".state" / "presence"
    folder.mkdir(parents=True, exist_ok=True)
    presence = folder / "bob.json"
    presence.unlink(missing_ok=True)
    presence.symlink_to(outside)
    assert box.agents.presence_doc("bob") is None
    with pytest.raises(OSError):
        read_file(str(presence))


# ---------------------------------------------------------------- thread folders


@pytest.mark.parametrize("name", ["..", "../agents"])
def test_a_thread_id_refused_once_is_refused_on_every_call(box: Mailbox, name: str) -> None:
    """Files.thread_dir keeps the folders of the thread ids it checked: an id it refused, here
    one that names the root itself or a folder beside threads/, is refused again on each
    call, never found in that cache and read or written as a thread."""
    for _ in range(3):
        with pytest.raises(InvalidName):
            box.read(name)
        with pytest.raises(InvalidName):
            box.post(name, "x", sender="alice")
    assert not list(box.root.glob("0*.json")) and not list((box.root / "agents").glob("0*"))
