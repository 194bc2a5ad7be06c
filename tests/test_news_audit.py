"""What issue 30's news, next-task claims and caches must not lose: found by a mutation audit.

Each test here failed on a small bug in that code that the rest of the suite let through:
news written over on a network mount, a line told only to a file another writer had started
again, a post told before its file was in place, a replaced message untold, an unreadable
news file warned about on every look or never, news read after the look, a foreign line that
made no look cover every thread, feed marks lost in a cut, a closed mailbox's news left open;
open tasks out of order, a task given back or reopened never the next one again, a cached
board without open tasks, tasks for others hiding the agent's own, every worker trying the
same task first, a claim without a seq that never looks at a dead holder (a real bug, fixed);
caches written at CACHE_FROM the wrong way round, a busy board saved more often than its share.
(A next task's lease is kept by the same path as any claim's: test_tasks_mcp holds it.)

Real files and processes: ``mailslot post`` subprocesses, ``mailslot serve`` via the client.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import agent, call
from test_news import _mailbox, _post
from test_tasks_mcp import hold, kill, procs  # noqa: F401  (procs: the fixture)

from mailslot import Mailbox
from mailslot.agent.offers import PICK, next_open
from mailslot.doctor.repair import put
from mailslot.store import feed as _feed
from mailslot.store import modes
from mailslot.store import news as _news
from mailslot.store import plan as _plan
from mailslot.store.feed import Feed
from mailslot.store.news import NEWS, NewsReader, tell
from mailslot.store.threads import CACHE_FROM

# ---------------------------------------------------------------- writers


def test_a_writer_on_a_network_mount_appends_after_what_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without O_APPEND (a network mount) a writer seeks to the end it finds: each line is
    kept, none written over the one before."""
    root = tmp_path / "box"
    _mailbox(root, 3)
    monkeypatch.setattr(_news, "is_network_fs", lambda fstype: True)  # as on a network mount
    reader = NewsReader(root)
    reader.read()
    tell(root, "t000")
    with open(root / NEWS, "ab") as other:  # another machine's writer, between two of ours
        other.write(b"t001\n")
    tell(root, "t002")
    assert (root / NEWS).read_bytes() == b"t000\nt001\nt002\n"
    assert reader.read() == {"t000", "t001", "t002"}


def test_a_writer_whose_file_was_started_again_meanwhile_tells_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer opens the news; before it writes, another writer removes it (past NEWS_MAX)
    and starts the new one, and a reader moves on to it. The first writer's line goes to the
    old file, which nobody reads any more: it must tell the new one too. (A shared folder's
    writer gives the file to the group between its open and its write: the race goes there.)"""
    root = tmp_path / "box"
    _mailbox(root, 2)
    tell(root, "t001")
    reader = NewsReader(root)
    reader.read()
    seen: set[str] = set()
    raced: list[bool] = []

    def between_open_and_write(fd: int, path: object) -> None:
        if not raced:  # once: the first writer's open, before its write
            raced.append(True)
            os.unlink(root / NEWS)  # as a writer past NEWS_MAX does
            (root / NEWS).write_bytes(b"t001\n")  # the next writer starts the new file
            got = reader.read()  # the reader drains the old file and moves on
            assert got is not None
            seen.update(got)

    monkeypatch.setitem(_news._kind, root, (str(root / NEWS), True, True))
    monkeypatch.setattr(modes, "share_fd", between_open_and_write)
    tell(root, "t000")
    assert raced
    got = reader.read()
    assert got is not None
    assert seen | got == {"t000", "t001"}


def test_a_post_is_told_once_its_file_is_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that reads the news and then looks must find the message: the writer tells
    after the message file is in place, never before (the real tell runs; this only sees
    what the folder holds at that moment)."""
    from mailslot.store import publish

    root = tmp_path / "box"
    _mailbox(root, 1)
    there: list[list[str]] = []

    def tell_and_see(at: Path, thread: str) -> None:
        there.append(sorted(p.name for p in (at / "threads" / thread).glob("0*.json")))
        tell(at, thread)

    monkeypatch.setattr(publish, "tell", tell_and_see)
    reader = NewsReader(root)
    reader.read()
    with Mailbox(root) as box:
        for i in range(2):
            box.post("t000", f"m{i}", sender="lead", to=["bob"])
    assert there == [["000001.json"], ["000001.json", "000002.json"]]
    assert reader.read() == {"t000"}


def test_a_message_doctor_puts_in_place_of_another_is_told(tmp_path: Path) -> None:
    """doctor --fix replaces a message file (the side of a conflict that stays, a
    placeholder for a damaged one) and sync lands over one: that thread is news too."""
    root = tmp_path / "box"
    _mailbox(root, 2)
    with Mailbox(root) as box:
        box.post("t001", "first", sender="lead")
    reader = NewsReader(root)
    reader.read()
    path = root / "threads" / "t001" / "000001.json"
    doc = json.loads(path.read_bytes())
    doc["content"] = "the side that stays"
    assert put(path, json.dumps(doc).encode(), root / ".state" / "tmp", replace=True, fsync=False)
    assert reader.read() == {"t001"}


# ---------------------------------------------------------------- readers


@pytest.mark.parametrize("how", ["a link to itself", "a folder"])
def test_a_news_file_that_cannot_be_read_is_warned_about_once(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Looks go on (by events and sweeps) and never mean "any thread"; the log says so
    once, however many looks fail."""
    root = tmp_path / "box"
    _mailbox(root, 1)
    path = root / NEWS
    reader = NewsReader(root)
    if how == "a link to itself":
        path.symlink_to(path.name)  # every stat fails (ELOOP)
        reader.read()
    else:
        path.mkdir()
        reader.read()
        for i in range(300):  # the folder grows: the reader tries to read what was "added"
            (path / f"{i:04d}-{'x' * 60}").touch()
    with caplog.at_level(logging.WARNING, logger="mailslot"):
        for i in range(5):
            assert reader.read() == set()
            _post(root, "t000", f"still stored ({i})", "bob")  # new words: no loop
    warned = [r for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in caplog.records]
    reader.close()


def test_closing_a_mailbox_closes_its_news(tmp_path: Path) -> None:
    root = tmp_path / "box"
    _mailbox(root, 1)
    news = str(root / NEWS)
    tell(root, "t000")

    def open_on_news() -> int:
        fds = Path("/proc/self/fd")
        n = 0
        for fd in fds.iterdir():
            try:
                n += os.readlink(fd) == news
            except OSError:
                continue
        return n

    assert open_on_news() == 0  # a writer never holds it open
    box = Mailbox(root)
    box.wait(None, {}, to="bob", timeout=0)
    assert open_on_news() == 1  # the reader holds it from its first look
    box.close()
    assert open_on_news() == 0


# ---------------------------------------------------------------- waits


def _kept_wait_after(root: Path, write: Any) -> list[str]:
    """A kept inbox wait over more threads than a tick looks at, sweep stopped: run it once
    (nothing), call write(), then run it for no time at all (one look) and return what that
    look found."""

    async def main() -> list[str]:
        with Mailbox(root) as box:
            plan = box.wait_plan(None, {}, to="bob")
            assert (await box.run_wait(plan, 0.2)).messages == []
            write()
            got = await box.run_wait(plan, 0)
            return [m.content for m in got.messages]

    return anyio.run(main)


def test_a_wait_of_no_time_sees_a_message_told_before_it_began(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The news is read before the look: a message another process stored before the wait
    began is in that wait's one look (docs/tools.md, Writers leave a hint)."""
    root = tmp_path / "box"
    _mailbox(root, 300)
    monkeypatch.setattr(_plan, "sweep_size", lambda threads, interval: 0)
    got = _kept_wait_after(root, lambda: _post(root, "t150", "told", "bob"))
    assert got == ["told"]


@pytest.mark.parametrize("line", [b"not a thread id!\n", b"\x00\x00\x00\n"])
def test_a_line_that_is_not_a_thread_id_makes_the_next_look_cover_every_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: bytes
) -> None:
    """A message written where no writer tells (git, rsync: here a file written by hand)
    into a quiet thread, sweep stopped: a line in the news that names no thread means any
    thread may have changed, and the next look finds it."""
    root = tmp_path / "box"
    _mailbox(root, 300)
    monkeypatch.setattr(_plan, "sweep_size", lambda threads, interval: 0)
    message = {
        "id": "c0ffee", "from": "lead", "to": ["bob"], "type": "message", "priority": "normal",
        "reply_to": None, "created_at": "2026-12-05T00:00:00.000Z", "content": "by hand",
        "meta": {},
    }  # fmt: skip

    def write() -> None:
        (root / "threads" / "t150" / "000001.json").write_text(json.dumps(message))
        with open(root / NEWS, "ab") as f:
            f.write(line)

    assert _kept_wait_after(root, write) == ["by hand"]


def test_the_feed_keeps_its_marks_when_it_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """since(mark) is what was named from mark on, however often the feed was cut; a mark
    the cut went past is "any thread" (None)."""
    monkeypatch.setattr(_feed, "FEED_KEEP", 4)
    feed = Feed()
    feed.note_all({"a", "b", "c"})
    old = feed.mark()
    for i in range(6):
        feed.note(f"x{i}")
    mark = feed.mark()
    feed.note_all({"y", "z"})
    feed.note("w")
    assert feed.since(mark) == {"y", "z", "w"}
    assert feed.since(old) is None
    assert feed.since(feed.mark()) == set()


# ---------------------------------------------------------------- the next task


def _tasks(box: Mailbox, n: int, thread: str = "jobs", **kw: Any) -> list[int]:
    return [box.post(thread, f"job {i}", sender="boss", type="task", **kw) for i in range(n)]


def test_the_next_task_is_among_the_oldest_open_ones_after_a_task_came_back(
    tmp_path: Path,
) -> None:
    """open_tasks() is oldest first and next_open tries the PICK oldest: a task given back
    is the oldest again, not the newest."""
    box = Mailbox.init(tmp_path / "box", fsync=False)
    box.create_thread("jobs", creator="boss")
    seqs = _tasks(box, PICK + 4)
    assert box.tasks.claim("jobs", seqs[0], agent="carol").won
    assert {t.seq for t in next_open(box, "jobs", "bob")} == set(seqs[1 : PICK + 1])
    box.tasks.release("jobs", seqs[0], agent="carol")
    assert [t.seq for t in box.tasks.board("jobs").open_tasks()] == seqs
    assert {t.seq for t in next_open(box, "jobs", "bob")} == set(seqs[:PICK])


def test_workers_try_the_open_tasks_each_in_its_own_order(tmp_path: Path) -> None:
    """next_open: the same PICK oldest tasks for every worker, but not the same first one
    (workers side by side that all tried the oldest first would all race for it)."""
    box = Mailbox.init(tmp_path / "box", fsync=False)
    box.create_thread("jobs", creator="boss")
    seqs = _tasks(box, PICK + 4)
    orders = [[t.seq for t in next_open(box, "jobs", f"w{i}")] for i in range(8)]
    assert all(sorted(order) == seqs[:PICK] for order in orders)
    assert len({order[0] for order in orders}) > 1, orders


def test_a_task_given_back_or_reopened_is_the_next_task_again(
    tmp_path: Path,
    procs: list[subprocess.Popen[str]],  # noqa: F811
) -> None:
    """bob's claim without a seq takes the task carol gave back, then the task whose holder
    died once the death is noticed (a reopen event), though bob's server had seen both
    claimed."""
    root = tmp_path / "box"
    box = Mailbox.init(root, fsync=False)
    box.create_thread("jobs", creator="boss")
    (given,) = _tasks(box, 1)

    async def main() -> None:
        async with agent(root, "bob") as b, agent(root, "carol") as c:
            assert (await call(c, "task_claim", thread="jobs"))["seq"] == given
            assert (await call(b, "task_claim", thread="jobs"))["claimed"] is False
            await call(c, "task_claim", thread="jobs", seq=given, release=True)
            got = await call(b, "task_claim", thread="jobs")
            assert (got["claimed"], got["seq"]) == (True, given), got
            await call(b, "msg_post", thread="jobs", content="done", type="result",
                       reply_to=given)  # fmt: skip
            (dies,) = _tasks(box, 1)
            pid = await anyio.to_thread.run_sync(hold, procs, root, "alpha", "jobs", dies)
            assert (await call(b, "task_claim", thread="jobs"))["claimed"] is False
            kill(pid)
            deadline = time.monotonic() + 60
            while not box.tasks.settle(["jobs"]) and time.monotonic() < deadline:
                await anyio.sleep(0.1)  # until the holder is gone and its task reopened
            assert box.tasks.task("jobs", dies).status == "open"
            got = await call(b, "task_claim", thread="jobs")
            assert (got["claimed"], got["seq"]) == (True, dies), got

    anyio.run(main)


def test_a_server_that_starts_from_a_cached_board_finds_its_open_tasks(
    tmp_path: Path,
) -> None:
    root = tmp_path / "box"
    box = Mailbox.init(root, fsync=False)
    box.create_thread("jobs", creator="boss")
    seqs = _tasks(box, CACHE_FROM + 2)
    for seq in seqs[:-1]:
        assert box.tasks.claim("jobs", seq, agent="carol").won
        box.post("jobs", "done", sender="carol", type="result", reply_to=seq)
    box.tasks.board("jobs")
    assert (root / ".state" / "index" / "jobs.tasks.json").exists()

    async def main() -> dict[str, Any]:
        async with agent(root, "bob") as b:
            result: dict[str, Any] = await call(b, "task_claim", thread="jobs")
            return result

    got = anyio.run(main)
    assert (got["claimed"], got["seq"]) == (True, seqs[-1]), got


def test_tasks_for_others_do_not_hide_the_agents_own(tmp_path: Path) -> None:
    """More than PICK older tasks addressed to carol: bob's next task is still his."""
    root = tmp_path / "box"
    box = Mailbox.init(root, fsync=False)
    for name in ("bob", "carol"):
        box.agents.register(name)
    box.create_thread("jobs", creator="boss")
    _tasks(box, PICK + 2, to=["carol"])
    (mine,) = _tasks(box, 1, to=["bob"])

    async def main() -> dict[str, Any]:
        async with agent(root, "bob") as b:
            result: dict[str, Any] = await call(b, "task_claim", thread="jobs")
            return result

    got = anyio.run(main)
    assert (got["claimed"], got["seq"]) == (True, mine), got


def test_a_claim_without_a_seq_takes_a_task_whose_holder_died(
    tmp_path: Path,
    procs: list[subprocess.Popen[str]],  # noqa: F811
) -> None:
    """docs/coordination.md (Lease): "task_list, task_claim and mailslot tasks look too" at
    the holders. The only task's holder was killed: bob's claim without a seq should notice
    and take it, as task_claim with its seq does."""
    root = tmp_path / "box"
    box = Mailbox.init(root, fsync=False)
    box.create_thread("jobs", creator="boss")
    (seq,) = _tasks(box, 1)
    kill(hold(procs, root, "alpha", "jobs", seq))

    async def main() -> dict[str, Any]:
        async with agent(root, "bob") as b:
            result: dict[str, Any] = await call(b, "task_claim", thread="jobs")
            return result

    got = anyio.run(main)
    assert (got["claimed"], got.get("seq")) == (True, seq), got


# ---------------------------------------------------------------- caches


def test_a_board_and_a_thread_index_are_cached_from_cache_from_messages_on(tmp_path: Path) -> None:
    root = tmp_path / "box"
    box = Mailbox.init(root, fsync=False)
    box.create_thread("jobs", creator="boss")
    cache = root / ".state" / "index" / "jobs.tasks.json"
    while box.tasks.board("jobs").seq < CACHE_FROM - 1:
        _tasks(box, 1)
    assert box.tasks.board("jobs").seq == CACHE_FROM - 1
    assert not cache.exists(), "a short thread's board is folded again, not cached"
    assert box.thread("jobs").id == "jobs"
    assert not (root / ".state" / "index" / "jobs.json").exists(), "nor its index"
    _tasks(box, 1)
    assert box.tasks.board("jobs").seq == CACHE_FROM
    assert cache.exists()
    assert Mailbox(root).thread("jobs").id == "jobs"
    assert (root / ".state" / "index" / "jobs.json").exists()


def test_a_busy_board_is_saved_at_most_its_share_of_the_time(tmp_path: Path) -> None:
    """A board whose last save took save_s is saved again only SAVE_SHARE * save_s later
    (past SAVE_EVERY_S alone it is not); the time a save takes is what the rule goes by."""
    from mailslot.coordination import board as _board

    root = tmp_path / "box"
    box = Mailbox.init(root, fsync=False)
    box.create_thread("jobs", creator="boss")
    _tasks(box, CACHE_FROM)
    cache = root / ".state" / "index" / "jobs.tasks.json"
    board = box.tasks.board("jobs")
    assert cache.exists() and board.save_s > 0, "the save's time is kept"
    assert json.loads(cache.read_bytes())["seq"] == CACHE_FROM
    slow = 10 * _board.SAVE_EVERY_S / _board.SAVE_SHARE  # its share: 10 x SAVE_EVERY_S
    board.save_s = slow
    board.saved = time.monotonic() - 3 * _board.SAVE_EVERY_S  # past SAVE_EVERY_S, not its share
    _tasks(box, 1)
    assert box.tasks.board("jobs").seq == CACHE_FROM + 1
    assert json.loads(cache.read_bytes())["seq"] == CACHE_FROM, "saved before its share"
    board.saved = time.monotonic() - _board.SAVE_SHARE * slow - 1
    _tasks(box, 1)
    box.tasks.board("jobs")
    assert json.loads(cache.read_bytes())["seq"] == CACHE_FROM + 2, "not saved past its share"
