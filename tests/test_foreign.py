"""Foreign writers: git, sync tools and people write the folder, and no message is lost.

Every waiter here runs in its own OS process (tests/workers.py) against real files; git is the
real command. The promise under test: every message reaches every reader exactly once, in
order; a file still arriving is waited for, and what cannot be read is reported, never skipped
silently.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import agent, call, finish, git_init, run_git, spawn

from mailslot import Mailbox, Pending
from mailslot.store.format import MESSAGE_KEYS, dumps
from mailslot.tools import Session


def message_bytes(i: int, sender: str = "sync", **extra: Any) -> str:
    """Return a valid message file's text, as another machine's mailslot wrote it."""
    doc = dict(
        zip(MESSAGE_KEYS, (uuid.uuid4().hex, sender, [], "message", "normal", None,
                           "2026-01-01T00:00:00.000Z", f"message {i}", {}), strict=True)
    )  # fmt: skip
    doc.update(extra)
    return dumps(doc).decode()


def collect(root: Path, thread: str, after: int, total: int, grace: float = 10.0) -> Any:
    proc = spawn("collector", str(root), thread, str(after), str(total), str(grace))
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def collected(proc: Any) -> dict[str, Any]:
    out = finish([proc], timeout=150)[0]
    return dict(json.loads(out.strip().splitlines()[-1]))


def assert_exactly_once(got: dict[str, Any], seqs: list[int]) -> None:
    assert [s for s, _, _ in got["seen"]] == seqs, "lost, doubled or reordered"
    assert len({i for _, i, _ in got["seen"]}) == len(seqs)
    assert got["skipped"] == [], f"reported damaged: {got['skipped']}"


# ---------------------------------------------------------------- git


@pytest.mark.parametrize("workers", [1, 4])
def test_waiter_gets_every_message_a_git_pull_brings(
    tmp_path: Path, git: dict[str, str], workers: int
) -> None:
    a = tmp_path / "a"
    a.mkdir()
    git_init(git, a, "a")
    box = Mailbox.init(a / ".mailslot", fsync=False)
    box.create_thread("t", creator="alice")
    box.post("t", "first", sender="alice")
    run_git(git, a, "add", "-A")
    run_git(git, a, "commit", "-q", "-m", "start")
    run_git(git, tmp_path, "clone", "-q", str(a), "b")
    b = tmp_path / "b"
    for i in range(300):
        box.post("t", f"message {i} " + "x" * 2000, sender="alice")
    run_git(git, a, "add", "-A")
    run_git(git, a, "commit", "-q", "-m", "300 more")

    waiter = collect(b / ".mailslot", "t", 1, 300)
    # checkout.workers > 1 writes files in parallel, so seqs also arrive out of order.
    run_git(git, b, "-c", f"checkout.workers={workers}", "-c", "checkout.thresholdForParallelism=1",
            "pull", "-q", "--no-rebase", "origin", "main")  # fmt: skip
    got = collected(waiter)
    assert_exactly_once(got, list(range(2, 302)))
    assert [c for _, _, c in got["seen"]][:2] == [
        "message 0 " + "x" * 2000,
        "message 1 " + "x" * 2000,
    ]


def test_a_branch_switch_leaves_the_index_and_readers_right(
    tmp_path: Path, git: dict[str, str]
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git_init(git, repo, "r")
    box = Mailbox.init(repo / ".mailslot")
    box.create_thread("t", creator="alice")
    box.post("t", "one", sender="alice")
    run_git(git, repo, "add", "-A")
    run_git(git, repo, "commit", "-q", "-m", "one")
    run_git(git, repo, "checkout", "-q", "-b", "closing")
    box.post("t", "two", sender="alice")
    box.set_state("t", "closed", sender="alice", summary="done")
    run_git(git, repo, "add", "-A")
    run_git(git, repo, "commit", "-q", "-m", "closed")
    assert box.thread("t").state == "closed"
    run_git(git, repo, "checkout", "-q", "main")  # the folder goes back in time
    assert box.thread("t").state == "discuss" and box.thread("t").head == 1
    run_git(git, repo, "checkout", "-q", "closing")
    info = box.thread("t")
    assert (info.state, info.head, info.summary) == ("closed", 3, "done")


# ---------------------------------------------------------------- files that arrive in two steps


def test_files_created_then_filled_are_waited_for(root: Path) -> None:
    box = Mailbox(root)
    box.create_thread("t", creator="alice")
    docs = root.parent / "docs.json"
    docs.write_text(json.dumps([[i, message_bytes(i)] for i in range(1, 41)]))
    waiter = collect(root, "t", 0, 40)
    writer = spawn("foreign", str(root), "t", str(docs), "fill", "0.02")
    got = collected(waiter)
    finish([writer])
    assert_exactly_once(got, list(range(1, 41)))
    assert got["pending"] > 0, "the waiter never met a half-written file: the test proves nothing"


def test_a_state_message_written_slowly_reaches_the_thread_index(root: Path) -> None:
    box = Mailbox(root)
    box.create_thread("t", creator="alice")
    box.post("t", "one", sender="alice")
    state = message_bytes(2, type="state", content="all done",
                          meta={"state": "closed", "previous": "discuss"})  # fmt: skip
    docs = root.parent / "docs.json"
    docs.write_text(json.dumps([[2, state]]))
    writer = spawn("foreign", str(root), "t", str(docs), "fill", "0.3")
    assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    seen_pending = False
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the index is read while the file is half there
        info = box.thread("t")
        seen_pending |= box.read("t", 1).pending is not None
        if info.state == "closed":
            break
        time.sleep(0.01)
    finish([writer])
    assert seen_pending
    assert box.thread("t").state == "closed" and box.thread("t").summary == "all done"
    assert Mailbox(root).thread("t").state == "closed"  # and the cache on disk agrees


def test_seqs_delivered_out_of_order_arrive_in_order(root: Path) -> None:
    box = Mailbox(root)
    box.create_thread("t", creator="alice")
    order = list(range(1, 61))
    rng = random.Random(7)
    for start in range(0, 60, 10):  # shuffled within windows, the way a sync tool delivers
        window = order[start : start + 10]
        rng.shuffle(window)
        order[start : start + 10] = window
    docs = root.parent / "docs.json"
    docs.write_text(json.dumps([[i, message_bytes(i)] for i in order]))
    waiter = collect(root, "t", 0, 60)
    writer = spawn("foreign", str(root), "t", str(docs), "rename", "0.01")
    got = collected(waiter)
    finish([writer])
    assert_exactly_once(got, list(range(1, 61)))
    assert got["pending"] > 0, "no gap was ever seen: the test proves nothing"


# ---------------------------------------------------------------- gaps


def test_a_young_gap_is_pending_and_an_old_one_reported(root: Path) -> None:
    box = Mailbox(root, grace_s=0.5)
    box.create_thread("t", creator="alice")
    for i in range(3):
        box.post("t", f"m{i + 1}", sender="alice")
    tdir = root / "threads" / "t"
    for seq in (5, 6):  # seq 4 never arrives
        (tdir / f"{seq:06d}.json").write_text(message_bytes(seq))
    page = box.read("t")
    assert [m.seq for m in page.messages] == [1, 2, 3] and page.cursor == 3
    assert isinstance(page.pending, Pending) and page.pending.seq == 4
    assert "missing while seq 5 exists" in page.pending.reason and not page.skipped
    # Acknowledged means visible: a post goes after the highest file, never into the gap.
    assert box.post("t", "after the gap", sender="alice") == 7
    assert box.thread("t").head == 7
    assert Mailbox(root).head("t") == 7  # a cold probe sees past the gap too
    time.sleep(0.6)
    page = box.read("t")
    assert [m.seq for m in page.messages] == [1, 2, 3, 5, 6, 7] and page.pending is None
    assert len(page.skipped) == 1 and "000004.json" in page.skipped[0].path
    assert "missing" in page.skipped[0].reason and "doctor --fix" in page.skipped[0].reason


def test_a_writer_with_a_stale_hint_posts_past_a_gap(root: Path) -> None:
    box = Mailbox(root, grace_s=0.2)
    box.create_thread("t", creator="alice")
    for i in range(3):
        box.post("t", f"m{i}", sender="alice")  # the writer now remembers head 3
    tdir = root / "threads" / "t"
    for seq in range(5, 21):  # another clone's messages, synced without seq 4
        (tdir / f"{seq:06d}.json").write_text(message_bytes(seq))
    assert box.post("t", "mine", sender="alice") == 21


def test_the_model_is_told_what_was_stepped_over_and_what_is_pending(root: Path) -> None:
    box = Mailbox(root, grace_s=0.3)
    box.agents.register("alice")
    box.create_thread("t", creator="alice")
    box.post("t", "one", sender="alice")
    tdir = root / "threads" / "t"
    (tdir / "000003.json").write_text(message_bytes(3))
    session = Session(box, agent="bob")
    out = session.msg_list("t")
    assert [m["seq"] for m in out["messages"]] == [1] and out["next_after_seq"] == 1
    assert out["pending"][0]["seq"] == 2 and "again shortly" in out["hint"]

    async def wait() -> dict[str, Any]:
        return await session.msg_wait("t", after_seq=1, timeout_s=3)

    got = anyio.run(wait)
    assert [m["seq"] for m in got["messages"]] == [3]
    assert "000002.json" in got["unreadable"][0] and "doctor --fix" in got["unreadable"][0]
    session.close()
    box.close()


def test_a_merge_conflict_stops_readers_with_what_to_do(root: Path) -> None:
    box = Mailbox(root, grace_s=0)
    box.create_thread("t", creator="alice")
    box.post("t", "one", sender="alice")
    ours, theirs = message_bytes(2, sender="a"), message_bytes(2, sender="b")
    conflicted = "<<<<<<< HEAD\n" + ours + "=======\n" + theirs + ">>>>>>> other\n"
    (root / "threads" / "t" / "000002.json").write_text(conflicted)
    (root / "threads" / "t" / "000003.json").write_text(message_bytes(3))
    page = box.read("t")
    assert [m.seq for m in page.messages] == [1] and page.cursor == 1 and not page.skipped
    assert page.pending is not None and page.pending.blocked
    assert "merge conflict" in page.pending.reason and "doctor --fix" in page.pending.reason
    got = box.wait("t", 1, timeout=0.3)  # a blocked file does not make a waiter spin or skip
    assert got.timed_out and got.pending and got.cursor == {"t": 1}
    box.close()


def test_a_file_made_empty_by_a_killed_foreign_writer_is_reported_after_grace(root: Path) -> None:
    box = Mailbox(root, grace_s=0.3)
    box.create_thread("t", creator="alice")
    box.post("t", "one", sender="alice")
    (root / "threads" / "t" / "000002.json").write_bytes(b"")
    box.post("t", "three", sender="alice")
    got = box.wait("t", 1, timeout=5)  # waits out the grace period, then steps over
    assert [m.seq for m in got.messages] == [3]
    assert "000002.json" in got.skipped[0].path
    box.close()


def test_a_gap_revealed_by_a_file_with_an_old_mtime_is_still_pending(root: Path) -> None:
    # rsync -t and other sync tools keep the sender's mtime: the file that reveals the gap looks
    # an hour old, but it arrived just now, so the missing seq before it may still be coming.
    box = Mailbox(root, grace_s=30)
    box.create_thread("t", creator="alice")
    box.post("t", "one", sender="alice")
    tdir = root / "threads" / "t"
    later = tdir / "000003.json"
    later.write_text(message_bytes(3))
    old = time.time() - 3600
    os.utime(later, (old, old))
    page = box.read("t", 1)
    assert page.messages == [] and page.skipped == [], "not stepped over as a gap"
    assert page.pending is not None and page.pending.seq == 2
    got = box.wait("t", 1, timeout=0.2)
    assert (got.messages, got.skipped, got.cursor) == ([], [], {"t": 1})
    assert [p.seq for p in got.pending] == [2]
    (tdir / "000002.json").write_text(message_bytes(2))  # it was still arriving
    assert [m.seq for m in box.read("t", 1).messages] == [2, 3]
    box.close()


def merge_file(git: dict[str, str], tmp_path: Path, ours: str, theirs: str) -> bytes:
    """Return what git writes for an add/add conflict of ours and theirs (git merge-file)."""
    sides = []
    for name, text in (("ours", ours), ("base", ""), ("theirs", theirs)):
        (tmp_path / name).write_text(text)
        sides.append(str(tmp_path / name))
    done = subprocess.run(
        ["git", "merge-file", "-p", "-L", "HEAD", "-L", "base", "-L", "other", *sides],
        env=git, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, f"one conflict: {done.stderr.decode()}"
    return done.stdout


def test_conflict_markers_after_a_shared_first_line_stop_readers(
    root: Path, git: dict[str, str], tmp_path: Path
) -> None:
    box = Mailbox(root, grace_s=0)  # so a file that is not a conflict would count as damage
    box.create_thread("t", creator="alice")
    box.post("t", "one", sender="alice")
    merged = merge_file(git, tmp_path, message_bytes(2, sender="a"), message_bytes(2, sender="b"))
    assert merged.startswith(b"{\n<<<<<<< HEAD\n"), "git keeps the shared first line first"
    (root / "threads" / "t" / "000002.json").write_bytes(merged)
    (root / "threads" / "t" / "000003.json").write_text(message_bytes(3))
    page = box.read("t", 1)
    assert page.messages == [] and page.skipped == []
    assert page.pending is not None and page.pending.blocked
    assert "merge conflict" in page.pending.reason and "doctor --fix" in page.pending.reason
    got = box.wait("t", 1, timeout=0.2)
    assert got.timed_out and got.skipped == [] and [p.blocked for p in got.pending] == [True]
    box.close()


def test_doctor_keeps_both_sides_with_the_same_sender_and_text(
    root: Path, git: dict[str, str], tmp_path: Path
) -> None:
    # Two clones where alice said the same thing: two messages (two ids), not one twice.
    box = Mailbox(root)
    box.create_thread("t", creator="alice")
    box.post("t", "one", sender="alice")
    box.close()
    ours = message_bytes(2, sender="alice", content="done")
    theirs = message_bytes(2, sender="alice", content="done")
    ids = {json.loads(ours)["id"], json.loads(theirs)["id"]}
    (root / "threads" / "t" / "000002.json").write_bytes(merge_file(git, tmp_path, ours, theirs))
    done = subprocess.run(
        [sys.executable, "-m", "mailslot", "doctor", "--root", str(root), "--fix"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    with Mailbox(root) as fixed:
        messages = list(fixed.messages("t"))
    assert [(m.seq, m.sender, m.content) for m in messages] == [
        (1, "alice", "one"), (2, "alice", "done"), (3, "alice", "done")
    ]  # fmt: skip
    assert {m.id for m in messages[1:]} == ids
    assert messages[2].meta["moved_from"] == {"seq": 2, "reason": "merge conflict"}


def test_a_thread_wait_tells_the_model_what_it_stopped_before(root: Path) -> None:
    box = Mailbox(root)  # the default grace: an empty file may still be arriving
    box.agents.register("alice")
    for thread in ("arriving", "conflicted"):
        box.create_thread(thread, creator="alice")
        box.post(thread, "one", sender="alice")
        (root / "threads" / thread / "000003.json").write_text(message_bytes(3))
    (root / "threads" / "arriving" / "000002.json").write_bytes(b"")
    conflict = "<<<<<<< HEAD\n" + message_bytes(2) + "=======\n" + message_bytes(2) + ">>>>>>> x\n"
    (root / "threads" / "conflicted" / "000002.json").write_text(conflict)

    async def main() -> None:
        async with agent(root, "bob") as bob:
            for thread, blocked in (("arriving", False), ("conflicted", True)):
                got = await call(bob, "msg_wait", thread=thread, after_seq=1, timeout_s=0.5)
                assert (got["status"], got["messages"]) == ("timeout", []), thread
                assert got["next_after_seq"] == 1, "not past what it stopped before"
                (pending,) = got["pending"]
                assert (pending["thread"], pending["seq"]) == (thread, 2)
                assert ("doctor --fix" in pending.get("do", "")) == blocked, pending
                assert "unreadable" not in got

    anyio.run(main)
