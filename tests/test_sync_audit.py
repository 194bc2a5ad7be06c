"""`mailslot sync`: rules a mutation audit of issue 29 found no test holding.

Real git, a bare remote on disk, every sync a separate `mailslot sync --once` process (the
helpers of test_sync.py). Each test names the rule it holds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import agent, call, require, run_git, until_async
from test_sync import files, make_clone, status, sync

from mailslot import Mailbox


@pytest.fixture
def remote(tmp_path: Path, git: dict[str, str]) -> Path:
    path = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(path)], env=git, check=True)
    return path


def state(root: Path) -> dict:
    return json.loads((root / ".state" / "sync" / "state.json").read_text())


def commits(env: dict[str, str], bare: Path) -> int:
    """Return how many commits the remote's mailslot branch has."""
    return len(run_git(env, bare, "rev-list", "mailslot").split())


def remarks(root: Path) -> str:
    return json.dumps(status(root)["remarks"])


def test_a_thread_both_clones_made_keeps_each_ones_record(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    """The record a clone made is never replaced by the remote's: its readers' positions
    belong to it (a new record would make the thread new again to every reader there)."""
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
        box.post("t", "from alice", sender="alice")
    with Mailbox(b) as box:
        box.create_thread("t", creator="bob")
        box.post("t", "from bob", sender="bob")
        made = box.incarnation("t")
    mine = (b / "threads" / "t" / "thread.json").read_bytes()
    sync(git, a)
    sync(git, b)  # b takes a's record and messages; bob's message moves after alice's
    assert (b / "threads" / "t" / "thread.json").read_bytes() == mine
    with Mailbox(b) as box:
        assert box.incarnation("t") == made
        assert [m.content for m in box.messages("t")] == ["from alice", "from bob"]


def write_in_place(path: Path, content: bytes) -> None:
    """Write path's content over its old one, as a foreign writer may (its folder unchanged)."""
    with open(path, "r+b") as f:
        f.write(content)
        f.truncate()


def test_a_thread_that_waits_through_two_remote_moves_gets_all_it_missed(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    """A waiting thread is taken again from the commit it first stopped at, however many
    rounds it waited; once in step it waits no more (no thread left behind in the state, and
    no round after takes its files again as if the remote had changed them)."""
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
        box.post("t", "t 1", sender="alice")
    sync(git, a)
    sync(git, b)
    with Mailbox(b) as box:
        box.post("t", "b 2", sender="bob")
    path = b / "threads" / "t" / "000002.json"
    data = path.read_bytes()
    write_in_place(path, data[:12])  # bob's post, still being written
    for text in ("t 2", "t 3"):  # the remote moves twice while t waits on b
        with Mailbox(a) as box:
            box.post("t", text, sender="alice")
        sync(git, a)
        sync(git, b)
        assert "thread t waits" in remarks(b)
    write_in_place(path, data)  # and written out at last
    sync(git, b)
    sync(git, a)
    assert files(b) == files(a)
    with Mailbox(b) as box:
        assert [m.content for m in box.messages("t")] == ["t 1", "t 2", "t 3", "b 2"]
    assert state(b)["behind"] == {}
    sync(git, b)  # a round after: nothing of t is taken again
    assert "which a message never is" not in remarks(b)


def test_a_message_finished_in_place_after_a_round_it_waited_in_is_pushed(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    """A thread that waited on a file still being written is looked at again next round, even
    when the file is finished in place (its folder's mtime unchanged)."""
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    with Mailbox(b) as box:
        box.create_thread("t", creator="bob")
        box.post("t", "t 1", sender="bob")
    sync(git, b)
    with Mailbox(b) as box:
        box.post("t", "t 2", sender="bob")
    path = b / "threads" / "t" / "000002.json"
    data = path.read_bytes()
    folder = os.stat(path.parent).st_mtime_ns

    write_in_place(path, data[:12])  # as a foreign writer that writes it in place, in two steps
    sync(git, b)
    assert "t" in status(b)["waiting"]
    write_in_place(path, data)
    assert os.stat(path.parent).st_mtime_ns == folder
    sync(git, b)
    assert status(b)["pending"] == 0 and not status(b)["waiting"]
    sync(git, a)
    with Mailbox(a) as box:
        assert [m.content for m in box.messages("t")] == ["t 1", "t 2"]


def test_a_task_of_this_clone_that_moved_with_its_claim_is_not_a_claim_lost(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    """A claim that moved with the task it claims (both of this clone) lost nothing, even where
    the remote's task now stands at the task's old seq, claimed by another agent."""
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    with Mailbox(a) as box:
        box.create_thread("jobs", creator="boss")
        box.post("jobs", "the jobs of the week", sender="boss")
    sync(git, a)
    sync(git, b)
    with Mailbox(a) as box:  # both clones post a task at seq 2 and claim it at seq 3
        theirs = box.post("jobs", "build the docs", sender="boss", type="task")
        assert box.tasks.claim("jobs", theirs, agent="alpha").won
    with Mailbox(b) as box:
        ours = box.post("jobs", "fix the tests", sender="boss", type="task")
        assert box.tasks.claim("jobs", ours, agent="bravo").won
    sync(git, a)
    sync(git, b)  # b's task and bravo's claim move to 4 and 5
    with Mailbox(b) as box:
        msgs = list(box.messages("jobs"))
        assert [(m.seq, m.sender, m.type) for m in msgs] == [
            (1, "boss", "message"), (2, "boss", "task"), (3, "alpha", "status"),
            (4, "boss", "task"), (5, "bravo", "status"),
        ]  # fmt: skip
        board = box.tasks.board("jobs")
        assert (board.tasks[2].holder, board.tasks[4].holder) == ("alpha", "bravo")
    assert "moved after the remote's" in remarks(b)


def test_a_round_that_only_took_pushes_nothing_back(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    """What a clone took from the remote (messages, an agent card) is known to be there: its
    next rounds push no commit for it."""
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    with Mailbox(a) as box:
        box.agents.register("reviewer", description="reads the diffs")
        box.create_thread("t", creator="alice")
        box.post("t", "hello", sender="alice")
    sync(git, a)
    before = commits(git, remote)
    sync(git, b)
    sync(git, b)
    assert commits(git, remote) == before
    assert files(b) == files(a)


def test_a_lost_state_costs_one_comparison_and_no_commit(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    """Without its state (deleted, or a new machine's copy of the folder), a clone compares
    every file with the remote once: what both hold is known as shared, not pushed again."""
    a = make_clone(git, remote, tmp_path / "a", "alice")
    with Mailbox(a) as box:
        box.agents.register("reviewer", description="reads the diffs")
        for t in ("t", "u"):
            box.create_thread(t, creator="alice")
            box.post(t, f"{t} 1", sender="alice")
            box.post(t, f"{t} 2", sender="alice")
    sync(git, a)
    before = commits(git, remote)
    (a / ".state" / "sync" / "state.json").unlink()
    sync(git, a)
    assert commits(git, remote) == before
    assert state(a)["known"] == {"t": 2, "u": 2}
    sync(git, a)
    assert commits(git, remote) == before


def test_a_round_after_one_that_took_opens_no_file_of_the_mailbox(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    """A round that brought a thread in step remembers its folder as it left it: the next
    quiet round opens none of its files (the state's stamps are kept even when nothing new is
    pushed)."""
    if shutil.which("strace") is None:
        require("needs strace to see which files a round opens")
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
        box.post("t", "one", sender="alice")
    sync(git, a)
    sync(git, b)
    with Mailbox(a) as box:
        box.post("t", "two", sender="alice")
    sync(git, a)
    sync(git, b)  # takes "two": t's folder changed here
    trace = tmp_path / "trace"
    argv = ["strace", "-f", "-e", "trace=open,openat", "-o", str(trace), sys.executable, "-m",
            "mailslot", "sync", "--root", str(b), "--once"]  # fmt: skip
    done = subprocess.run(argv, env=git, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    opened = [ln for ln in trace.read_text().splitlines() if "/threads/" in ln]
    assert not opened, opened[:5]


def test_a_push_that_finds_the_remote_moved_since_the_look_takes_it_and_pushes_again(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    """Another clone pushes between this round's look at the remote and its push: git refuses
    the push ("fetch first", the new tip is not here), and the round takes the remote's
    commit and pushes over it, never an error. The other clone's push is run by a `git` on
    PATH that calls the real one (the round's first ls-remote, then b's `sync --once`)."""
    real = shutil.which("git")
    assert real is not None
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
        box.post("t", "shared", sender="alice")
    sync(git, a)
    sync(git, b)
    with Mailbox(a) as box:
        box.post("t", "alice's", sender="alice")
    with Mailbox(b) as box:
        box.post("t", "bob's", sender="bob")
    bin_dir, marker = tmp_path / "bin", tmp_path / "raced"
    bin_dir.mkdir()
    wrapper = bin_dir / "git"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" ls-remote "*) if [ ! -e {marker} ]; then touch {marker}\n'
        f'  {real} "$@"; rc=$?\n'
        f"  {sys.executable} -m mailslot sync --once --root {b} >{tmp_path}/b.out 2>&1\n"
        "  exit $rc; fi;; esac\n"
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    out = sync({**git, "PATH": f"{bin_dir}:{git['PATH']}"}, a)
    assert marker.exists() and "in step" in (tmp_path / "b.out").read_text(), out
    assert status(a)["last_error"] is None and status(a)["pending"] == 0
    sync(git, b)
    assert files(a) == files(b)
    with Mailbox(a) as box:
        assert [m.content for m in box.messages("t")] == ["shared", "bob's", "alice's"]


def test_a_gap_of_look_ahead_seqs_is_seen_as_a_writer_sees_it(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    """A file sixteen seqs past a missing one (a writer's look-ahead) is seen: the thread
    waits on the gap, rather than pushing as if nothing lay past it."""
    a = make_clone(git, remote, tmp_path / "a", "alice")
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
        box.post("t", "one", sender="alice")
        box.post("t", "two", sender="alice")
    sync(git, a)
    tdir = a / "threads" / "t"
    data = json.loads((tdir / "000002.json").read_bytes())
    (tdir / "000019.json").write_text(json.dumps({**data, "id": data["id"][:-4] + "beef"}))
    for seq in range(3, 19):  # 3..18 missing: a foreign writer's gap of sixteen
        assert not (tdir / f"{seq:06d}.json").exists()
    sync(git, a)
    assert "gap before 000019.json" in (status(a)["waiting"] or {}).get("t", "")


def test_a_copy_an_interrupted_round_left_is_kept_once(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    """A round killed while it moved this clone's messages can leave one twice (its new seq
    written, its old one not yet rewritten): the next round finds the copies by their ids and
    keeps the first."""
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
        box.post("t", "shared", sender="alice")
    sync(git, a)
    sync(git, b)
    with Mailbox(a) as box:
        box.post("t", "alice's", sender="alice")
    sync(git, a)
    with Mailbox(b) as box:
        box.post("t", "bob 1", sender="bob")
        box.post("t", "bob 2", sender="bob")
    tdir = b / "threads" / "t"
    shutil.copyfile(tdir / "000003.json", tdir / "000004.json")  # what the killed round left
    sync(git, b)
    sync(git, a)
    assert files(a) == files(b)
    with Mailbox(b) as box:
        assert [m.content for m in box.messages("t")] == ["shared", "alice's", "bob 1", "bob 2"]


def _async(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """Return check as a coroutine function for until_async (run in a worker thread)."""

    async def run() -> bool:
        return await anyio.to_thread.run_sync(check)

    return run


async def delivered(c: Any, kind: str, first: bool = False) -> list[str]:
    """Wait on thread t or on the inbox until a wait times out; return the contents it gave
    (first: a thread's first look, from its start)."""
    args: dict[str, Any] = {"thread": "t"} if kind == "thread" else {}
    if first and kind == "thread":
        args["after_seq"] = 0
    seen: list[str] = []
    for _ in range(50):
        got = await call(c, "msg_wait", timeout_s=1, **args)
        args.pop("after_seq", None)
        if not got["messages"]:
            return seen
        seen += [m["content"] for m in got["messages"]]
    raise AssertionError("msg_wait never ran dry")


@pytest.mark.parametrize("kind", ["thread", "inbox"])
def test_an_agent_shown_messages_a_sync_moved_is_shown_the_remotes_once_and_those_not_again(
    tmp_path: Path, git: dict[str, str], remote: Path, kind: str
) -> None:
    """carol, on b, was shown bob's posts at seqs 2 and 3; sync puts alice's at 2 and moves
    bob's to 3 and 4, and leaves a rewind mark from 2 that says where bob's went: carol's next
    waits (thread or inbox) bring alice's, once, and not bob's again."""
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    with Mailbox(a) as box:
        box.agents.register("carol")
        box.create_thread("t", creator="alice")
        box.post("t", "shared", sender="alice", to=["carol"])
    sync(git, a)
    sync(git, b)
    with Mailbox(a) as box:
        box.post("t", "alice 1", sender="alice", to=["carol"])
    sync(git, a)
    with Mailbox(b) as box:
        box.post("t", "bob 1", sender="bob", to=["carol"])
        box.post("t", "bob 2", sender="bob", to=["carol"])
    shown: list[str] = []

    async def look() -> None:
        async with agent(b, "carol") as c:
            shown.extend(await delivered(c, kind, first=not shown))

    anyio.run(look)
    assert shown == ["shared", "bob 1", "bob 2"]
    sync(git, b)
    with Mailbox(b) as box:
        assert [m.content for m in box.messages("t")] == ["shared", "alice 1", "bob 1", "bob 2"]
    anyio.run(look)
    assert Counter(shown) == Counter(["shared", "alice 1", "bob 1", "bob 2"]), shown


def test_messages_of_this_clone_the_remote_already_has_elsewhere_are_not_shown_again(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    """A copy of b's checkout (the person's other machine) pushed b's posts first, behind
    alice's: the remote holds them at 3 and 4, where b had them at 2 and 3. When b takes that,
    its rewind mark says where each went, so carol (shown them on b at 2 and 3) is shown
    alice's at 2 once, and bob's not again."""
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    with Mailbox(a) as box:
        box.agents.register("carol")
        box.create_thread("t", creator="alice")
        box.post("t", "shared", sender="alice", to=["carol"])
    sync(git, a)
    sync(git, b)
    with Mailbox(a) as box:
        box.post("t", "alice 1", sender="alice", to=["carol"])
    sync(git, a)
    with Mailbox(b) as box:
        box.post("t", "bob 1", sender="bob", to=["carol"])
        box.post("t", "bob 2", sender="bob", to=["carol"])
    shown: list[str] = []

    async def look() -> None:
        async with agent(b, "carol") as c:
            shown.extend(await delivered(c, "thread", first=not shown))

    anyio.run(look)
    assert shown == ["shared", "bob 1", "bob 2"]
    other = tmp_path / "b-copy"
    shutil.copytree(b.parent, other, symlinks=True)
    sync(git, other / ".mailslot")  # pushes bob's after alice's
    sync(git, b)
    assert files(b) == files(other / ".mailslot")
    with Mailbox(b) as box:
        assert [m.content for m in box.messages("t")] == ["shared", "alice 1", "bob 1", "bob 2"]
    anyio.run(look)
    assert Counter(shown) == Counter(["shared", "alice 1", "bob 1", "bob 2"]), shown


def test_a_seq_the_remote_skipped_holds_a_note_and_this_clones_message_moves_once(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    """Someone deleted a message on the branch (seq 2 gone, 3 there): a clone whose own post
    stood at 2 moves it after the remote's 3 and leaves a note from sync at 2, so the post is
    in the thread once and readers meet no gap."""
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
        box.post("t", "shared", sender="alice")
    sync(git, a)
    sync(git, b)
    with Mailbox(a) as box:
        box.post("t", "alice 2", sender="alice")
        box.post("t", "alice 3", sender="alice")
    sync(git, a)
    edit = tmp_path / "edit"
    run_git(git, tmp_path, "clone", "-q", "-b", "mailslot", str(remote), str(edit))
    run_git(git, edit, "rm", "-q", "threads/t/000002.json")
    run_git(git, edit, "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q", "-m", "rm")
    run_git(git, edit, "push", "-q", "origin", "mailslot")
    with Mailbox(b) as box:
        box.post("t", "bob's", sender="bob")
    sync(git, b)
    with Mailbox(b) as box:
        page = box.read("t")
        assert page.pending is None and not page.skipped
        got = [(m.seq, m.content, m.meta.get("sync")) for m in page.messages]
    assert [(s, k) for s, _, k in got] == [(1, None), (2, "gap"), (3, None), (4, None)]
    assert [c for _, c, k in got if k is None] == ["shared", "alice 3", "bob's"]


def test_a_seq_zero_on_the_remote_is_not_a_message(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    """threads/<id>/000000.json is no name of the layout (seqs start at 1): refused as such, and
    never written here, not even when the thread's files are put back after a `git clean`."""
    a = make_clone(git, remote, tmp_path / "a", "alice")
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
        box.post("t", "one", sender="alice")
    sync(git, a)
    edit = tmp_path / "edit"
    run_git(git, tmp_path, "clone", "-q", "-b", "mailslot", str(remote), str(edit))
    shutil.copyfile(edit / "threads" / "t" / "000001.json", edit / "threads" / "t" / "000000.json")
    run_git(git, edit, "add", "threads/t/000000.json")
    run_git(git, edit, "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q", "-m", "zero")
    run_git(git, edit, "push", "-q", "origin", "mailslot")
    sync(git, a)
    assert "skipped threads/t/000000.json from the remote: not a file of the mailbox layout" in (
        remarks(a)
    )
    shutil.rmtree(a / "threads" / "t")  # a `git clean`: the thread is put back
    sync(git, a)
    assert sorted(p.name for p in (a / "threads" / "t").iterdir()) == [
        "000001.json", "thread.json",
    ]  # fmt: skip


def test_a_wait_that_meets_a_rewrite_under_way_sees_its_mark_before_its_messages(
    tmp_path: Path,
) -> None:
    """A writer that rewrites seqs (sync bringing a thread in step) holds the thread's lock and
    leaves its rewind mark last. carol, waiting past bob's posts at 2 and 3, meets the rewrite's
    first file (bob's second post, moved to 4) before the mark: her wait lets the writer finish
    (Mailbox.settled) and goes back with the mark, so she is shown alice's post at 2 once and
    bob's not again. The writer here does what land.integrate does, by hand, with a pause."""
    from test_git import waits

    from mailslot.doctor.conflict import moved_bytes
    from mailslot.doctor.repair import mark_rewound, put, thread_lock
    from mailslot.store.format import parse_message

    b = tmp_path / "b"
    scratch = tmp_path / "a"  # where alice's post was made (its file, as the remote has it)
    for root in (b, scratch):
        with Mailbox.init(root) as box:
            box.agents.register("carol")
            box.create_thread("t", creator="alice")
            box.post("t", "shared", sender="alice", to=["carol"])
    with Mailbox(scratch) as box:
        box.post("t", "alice 1", sender="alice", to=["carol"])
    with Mailbox(b) as box:
        box.post("t", "bob 1", sender="bob", to=["carol"])
        box.post("t", "bob 2", sender="bob", to=["carol"])
    tdir, tmp = b / "threads" / "t", b / ".state" / "tmp"
    ours = {s: (tdir / f"{s:06d}.json").read_bytes() for s in (2, 3)}
    theirs = (scratch / "threads" / "t" / "000002.json").read_bytes()

    def rewrite() -> None:
        with thread_lock(b / ".state" / "locks", "t"):
            for old, new in ((3, 4), (2, 3)):  # new names first, then the rewritten, down
                data = moved_bytes(parse_message(ours[old], "t", old), old, None, "sync")
                assert put(tdir / f"{new:06d}.json", data, tmp, replace=new == 3)
            assert put(tdir / "000002.json", theirs, tmp, replace=True)
            time.sleep(3)  # a wait that does not let it finish has returned by now
            mark_rewound(b, "t", 2, {2: 3, 3: 4}, tmp)

    shown: list[str] = []

    async def main() -> None:
        async with agent(b, "carol") as c:
            shown.extend(await delivered(c, "thread", first=True))
        assert shown == ["shared", "bob 1", "bob 2"]
        async with agent(b, "carol") as c, anyio.create_task_group() as tg:

            async def wait() -> None:
                got = await call(c, "msg_wait", thread="t", timeout_s=60)
                shown.extend(m["content"] for m in got["messages"])

            tg.start_soon(wait)
            await until_async("carol waits", _async(lambda: waits(b, "carol")))
            await anyio.to_thread.run_sync(rewrite)
        async with agent(b, "carol") as c:
            shown.extend(await delivered(c, "thread"))

    anyio.run(main)
    assert Counter(shown) == Counter(["shared", "alice 1", "bob 1", "bob 2"]), shown


def test_a_message_file_as_big_as_readers_accept_is_taken(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    """The size check refuses what is over the largest file readers accept, not that size."""
    from mailslot.store.format import max_message_file_bytes
    from mailslot.store.settings import DEFAULT_MAX_CONTENT

    a = make_clone(git, remote, tmp_path / "a", "alice")
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
        box.post("t", "one", sender="alice")
        box.post("t", "two", sender="alice")
    sync(git, a)
    edit = tmp_path / "edit"
    run_git(git, tmp_path, "clone", "-q", "-b", "mailslot", str(remote), str(edit))
    path = edit / "threads" / "t" / "000003.json"
    two = (edit / "threads" / "t" / "000002.json").read_bytes()
    doc = json.loads(two)
    doc["id"], doc["content"] = doc["id"][:-4] + "beef", "three"
    data = json.dumps(doc).encode()
    limit = max_message_file_bytes(DEFAULT_MAX_CONTENT)
    path.write_bytes(b" " * (limit - len(data)) + data)  # exactly the largest readers accept
    run_git(git, edit, "add", "threads/t/000003.json")
    run_git(git, edit, "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q", "-m", "big")
    run_git(git, edit, "push", "-q", "origin", "mailslot")
    sync(git, a)
    assert (a / "threads" / "t" / "000003.json").read_bytes() == path.read_bytes()
    with Mailbox(a) as box:
        assert [m.content for m in box.messages("t")] == ["one", "two", "three"]


def push_edit(env: dict[str, str], bare: Path, work: Path, files_: dict[str, bytes]) -> None:
    """Commit files (path -> bytes) on the remote's mailslot branch from a checkout of it at
    work, as a person editing the branch by hand would, and push."""
    if not work.exists():
        run_git(env, work.parent, "clone", "-q", "-b", "mailslot", str(bare), str(work))
    for path, data in files_.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_bytes(data)
        run_git(env, work, "add", path)
    run_git(env, work, "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q", "-m", "edit")
    run_git(env, work, "push", "-q", "origin", "mailslot")


def test_a_record_or_card_over_what_readers_read_is_refused(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    """Readers read at most 64 KiB of a thread record or an agent card: a bigger one from the
    remote is refused, though a message file may be that big."""
    a = make_clone(git, remote, tmp_path / "a", "alice")
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
        box.post("t", "one", sender="alice")
    sync(git, a)
    record = json.dumps({"id": "u", "topic": "x" * (70 * 1024), "created_by": "m"}).encode()
    card = json.dumps({"name": "mallory", "description": "x" * (70 * 1024)}).encode()
    push_edit(git, remote, tmp_path / "edit", {"threads/u/thread.json": record,
                                               "agents/mallory.json": card})  # fmt: skip
    sync(git, a)
    said = remarks(a)
    for path in ("threads/u/thread.json", "agents/mallory.json"):
        assert f"skipped {path} from the remote: " in said and "over the 65536" in said, said
    assert not (a / "threads" / "u" / "thread.json").exists()
    assert not (a / "agents" / "mallory.json").exists()


def test_a_thread_record_deleted_here_is_put_back(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    """A thread.json deleted here (its messages left) comes back from the remote, as messages
    do: the thread keeps its record and its readers their positions."""
    a = make_clone(git, remote, tmp_path / "a", "alice")
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
        box.post("t", "one", sender="alice")
    sync(git, a)
    kept = files(a)
    (a / "threads" / "t" / "thread.json").unlink()
    sync(git, a)
    assert files(a) == kept
    assert "put back 1 file(s) of t" in remarks(a)


def test_a_clone_that_changes_remote_starts_over_with_it_in_silence(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    """The state belongs to one remote and branch: a sync with another (sync.remote changed, or
    --remote) compares everything with it afresh, and says nothing of the first one's branch
    being deleted or rewritten."""
    a = make_clone(git, remote, tmp_path / "a", "alice")
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
        box.post("t", "one", sender="alice")
    sync(git, a)
    other = tmp_path / "other.git"
    subprocess.run(["git", "init", "-q", "--bare", str(other)], env=git, check=True)
    sync(git, a, "--once", "--remote", str(other))
    assert "threads/t/000001.json" in run_git(git, other, "ls-tree", "-r", "--name-only",
                                              "mailslot")  # fmt: skip
    said = remarks(a)
    assert "no branch" not in said and "rewritten" not in said, said


def test_a_card_that_is_a_symlink_here_is_not_pushed(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    """agents/ holds files: a symlink there (to a file elsewhere that reads as a card) is not
    read and sent to the remote."""
    a = make_clone(git, remote, tmp_path / "a", "alice")
    with Mailbox(a) as box:
        box.agents.register("alice")
    elsewhere = tmp_path / "private.json"
    elsewhere.write_text(json.dumps({"name": "eve", "description": "a private file"}))
    (a / "agents" / "eve.json").symlink_to(elsewhere)
    sync(git, a)
    pushed = run_git(git, remote, "ls-tree", "-r", "--name-only", "mailslot")
    assert "agents/alice.json" in pushed and "agents/eve.json" not in pushed


def test_a_thread_waiting_round_after_round_is_remarked_once(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    """A remark said again is kept once (its latest), so a thread waiting for many rounds does
    not push every other remark out of the status."""
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
        box.post("t", "t 1", sender="alice")
    sync(git, a)
    sync(git, b)
    (b / "threads" / "t" / "000002.json").write_text("{ half writ")
    with Mailbox(a) as box:
        box.post("t", "t 2", sender="alice")
    sync(git, a)
    for _ in range(3):
        sync(git, b)
    texts = [r["text"] for r in status(b)["remarks"]]
    assert sum(t.startswith("thread t waits") for t in texts) == 1, texts


def test_an_agent_that_comes_is_announced_at_the_next_round_not_the_next_heartbeat(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    """A running sync pushes its machine's presence when an agent comes, not only every
    heartbeat_s (an hour here)."""
    from helpers import answer, raw_serve, until

    a = make_clone(git, remote, tmp_path / "a", "alice")
    doc = json.loads((a / "mailslot.json").read_text())
    doc["sync"] = {"look_s": 0.3, "max_look_s": 1, "heartbeat_s": 3600}
    (a / "mailslot.json").write_text(json.dumps(doc))
    argv = [sys.executable, "-m", "mailslot", "sync", "--root", str(a)]
    daemon = subprocess.Popen(argv, env=git, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)  # fmt: skip
    server = None
    try:
        until("a first round", lambda: (a / ".state/sync/status.json").exists()
              and status(a).get("last_ok") is not None, 60)  # fmt: skip
        server = raw_serve(a, "planner")
        answer(server, 1)

        def announced() -> bool:
            return "refs/mailslot/presence/" in run_git(git, remote, "for-each-ref")

        until("planner's machine on the remote", announced, 60)
    finally:
        if server is not None:
            server.terminate()
            server.communicate(timeout=30)
        daemon.terminate()
        daemon.communicate(timeout=60)


def test_a_name_a_process_here_holds_keeps_its_own_presence(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    """Two machines started an agent of one name before they synced: what the other announces
    never overwrites the presence of the live process here."""
    from helpers import answer, raw_serve, until

    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    servers = [raw_serve(b, "alpha"), raw_serve(a, "alpha")]
    try:
        for server, root in zip(servers, (b, a), strict=True):
            answer(server, 1)
            until("alpha's presence", lambda r=root: (r / ".state/presence/alpha.json").exists())
        mine = json.loads((b / ".state/presence/alpha.json").read_text())
        sync(git, a)  # a's alpha announced
        sync(git, b)  # and not landed over b's own
        here = json.loads((b / ".state/presence/alpha.json").read_text())
        assert here.get("via") != "sync" and here.get("pid") == mine.get("pid"), here
    finally:
        for server in servers:
            server.terminate()
            server.communicate(timeout=30)


def test_another_machine_is_silent_after_three_heartbeats_and_a_look() -> None:
    """docs/sync.md: a machine silent for three heartbeats plus a look (3.5 minutes by
    default) has its agents read offline."""
    from mailslot.sync.config import SyncConfig

    assert "three heartbeats plus a look (3.5 minutes by default)" in " ".join(
        (Path(__file__).parent.parent / "docs" / "sync.md").read_text().split()
    )
    assert SyncConfig().silent_after_s == 3.5 * 60
    assert SyncConfig(heartbeat_s=10, max_look_s=5).silent_after_s == 35


def test_a_heartbeat_a_week_old_is_a_machine_gone_its_ref_deleted(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    """A machine that died without a word leaves its last heartbeat: one older than a week (by
    its clock) is deleted from the remote by the next sync, and its agents are not landed."""
    a = make_clone(git, remote, tmp_path / "a", "alice")
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
    sync(git, a)
    then = time.time() - 8 * 86400
    doc = {"machine": "old-1", "host": "elsewhere", "at": then,
           "agents": {"ghost": {"agent": "ghost", "host": "elsewhere", "pid": 1,
                                "status": "online", "last_seen_epoch": then}}}  # fmt: skip
    beat = tmp_path / "beat.json"
    beat.write_text(json.dumps(doc))
    blob = run_git(git, remote, "hash-object", "-w", str(beat)).strip()
    tree = subprocess.run(["git", "-C", str(remote), "mktree"], env=git, check=True, text=True,
                          input=f"100644 blob {blob}\tpresence.json\n",
                          capture_output=True).stdout.strip()  # fmt: skip
    commit = run_git(git, remote, "-c", "user.name=m", "-c", "user.email=m@x", "commit-tree",
                     tree, "-m", "old-1 is here").strip()  # fmt: skip
    run_git(git, remote, "update-ref", "refs/mailslot/presence/old-1", commit)
    sync(git, a)
    assert run_git(git, remote, "for-each-ref", "refs/mailslot/") == ""
    assert not (a / ".state" / "presence" / "ghost.json").exists()


def test_a_thread_read_after_a_sync_shows_what_only_the_inbox_had_passed(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    """carol's inbox had passed bob's two posts on b (shown the one to her, the other is to
    nobody); sync moves both after alice's. Her next thread reads show alice's and bob's post
    to nobody, once each, and not the one her inbox showed."""
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    with Mailbox(a) as box:
        box.agents.register("carol")
        box.create_thread("t", creator="alice")
        box.post("t", "shared", sender="alice")
    sync(git, a)
    sync(git, b)
    with Mailbox(a) as box:
        box.post("t", "alice 1", sender="alice")
    sync(git, a)
    shown: list[str] = []

    async def look(kind: str, first: bool = False) -> None:
        async with agent(b, "carol") as c:
            shown.extend(await delivered(c, kind, first=first))

    anyio.run(look, "thread", True)
    with Mailbox(b) as box:
        box.post("t", "bob to carol", sender="bob", to=["carol"])
        box.post("t", "bob to all", sender="bob")
    anyio.run(look, "inbox")
    assert shown == ["shared", "bob to carol"]
    sync(git, b)
    anyio.run(look, "thread")
    assert Counter(shown) == Counter(["shared", "alice 1", "bob to carol", "bob to all"]), shown


def test_the_settings_table_of_the_docs_gives_the_defaults() -> None:
    """docs/sync.md's table of settings names every setting with its default."""
    from mailslot.sync.config import SyncConfig

    text = (Path(__file__).parent.parent / "docs" / "sync.md").read_text()
    rows = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.strip("|").split("|")]
        if len(parts) == 3 and parts[0].startswith("`") and parts[1].startswith("`"):
            rows[parts[0].strip("`")] = json.loads(parts[1].strip("`"))
    defaults = {k: getattr(SyncConfig(), k) for k in SyncConfig.__dataclass_fields__}
    assert rows == defaults


def test_a_once_that_cannot_reach_the_remote_exits_1_and_says_why(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    """`mailslot sync --once` is for scripts and CI: a round that fails exits 1, with git's
    words on stderr."""
    a = make_clone(git, remote, tmp_path / "a", "alice")
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
        box.post("t", "one", sender="alice")
    os.rename(remote, remote.with_name("gone.git"))
    argv = [sys.executable, "-m", "mailslot", "sync", "--root", str(a), "--once"]
    done = subprocess.run(argv, env=git, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "mailslot sync: git ls-remote failed" in done.stderr


def test_what_the_inbox_owed_where_sync_rewrote_comes_from_where_it_went(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    """carol joins t on b, where bob's task for anyone (seq 2) is owed to her inbox; before
    her inbox looks, sync puts alice's post (to nobody) at 2 and bob's task at 3. Her inbox
    brings the task once, from 3, and not alice's post, which was never hers."""
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    with Mailbox(a) as box:
        box.agents.register("carol")
        box.create_thread("t", creator="alice")
        box.post("t", "shared", sender="alice")
    sync(git, a)
    sync(git, b)
    with Mailbox(a) as box:
        box.post("t", "alice 1", sender="alice")
    sync(git, a)
    with Mailbox(b) as box:
        box.post("t", "bob's task", sender="bob", type="task")
    got: list[tuple[int, str]] = []

    async def main() -> None:
        async with agent(b, "carol") as c:
            await call(c, "thread_create", topic="t")  # joins: the task is owed
            await anyio.to_thread.run_sync(sync, git, b)
            for _ in range(5):
                answer = await call(c, "msg_wait", timeout_s=1)
                if not answer["messages"]:
                    break
                got.extend((m["seq"], m["content"]) for m in answer["messages"])

    anyio.run(main)
    assert got == [(3, "bob's task")]


def test_a_state_the_remote_set_at_a_seq_this_clone_had_read_is_the_threads_state(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    """b's thread index had read bob's post at seq 2; sync puts alice's state change there (and
    bob's after it), and drops the index: the thread's state is alice's, as on a."""
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
        box.post("t", "shared", sender="alice")
    sync(git, a)
    sync(git, b)
    with Mailbox(a) as box:
        box.set_state("t", "review", sender="alice", summary="ready for review")
    sync(git, a)
    with Mailbox(b) as box:
        box.post("t", "bob's", sender="bob")
        assert (box.thread("t").state, box.thread("t").head) == ("discuss", 2)  # indexed
    sync(git, b)
    with Mailbox(b) as box:
        info = box.thread("t")
        assert (info.state, info.summary, info.head) == ("review", "ready for review", 3)


@pytest.mark.parametrize("between", [False, True], ids=["away", "back-between"])
def test_an_agent_through_two_syncs_that_moved_what_it_saw_is_shown_each_message_once(
    tmp_path: Path, git: dict[str, str], remote: Path, between: bool
) -> None:
    """carol was shown bob's posts at 2 and 3 on b; a first sync moves them to 3 and 4, a
    second rewrites from 5 on (its mark keeps the first's, for agents that were away). carol,
    back after both, goes through both marks in order: the second does not make her forget
    where the first said bob's posts went. Back between them, she goes through the first then,
    and only through the second after: not through the first again, nor through either after
    a third."""
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    with Mailbox(a) as box:
        box.agents.register("carol")
        box.create_thread("t", creator="alice")
        box.post("t", "shared", sender="alice")
    sync(git, a)
    sync(git, b)
    with Mailbox(a) as box:
        box.post("t", "alice 1", sender="alice")
    sync(git, a)
    with Mailbox(b) as box:
        box.post("t", "bob 1", sender="bob")
        box.post("t", "bob 2", sender="bob")
    shown: list[str] = []

    async def look(first: bool = False) -> None:
        async with agent(b, "carol") as c:
            shown.extend(await delivered(c, "thread", first=first))

    anyio.run(look, True)
    assert shown == ["shared", "bob 1", "bob 2"]
    sync(git, b)  # alice 1 at 2, bob's at 3 and 4
    if between:
        anyio.run(look)
        assert shown == ["shared", "bob 1", "bob 2", "alice 1"]
    with Mailbox(b) as box:
        box.post("t", "bob 3", sender="bob")  # at 5
    sync(git, a)
    with Mailbox(a) as box:
        box.post("t", "alice 2", sender="alice")  # at 5 too, pushed first
    sync(git, a)
    sync(git, b)  # alice 2 at 5, bob 3 at 6
    with Mailbox(b) as box:
        assert [m.content for m in box.messages("t")] == [
            "shared", "alice 1", "bob 1", "bob 2", "alice 2", "bob 3",
        ]  # fmt: skip
    anyio.run(look)
    everything = ["shared", "alice 1", "bob 1", "bob 2", "alice 2", "bob 3"]
    assert Counter(shown) == Counter(everything), shown
    with Mailbox(b) as box:  # a third: carol has been through the first two
        box.post("t", "bob 4", sender="bob")  # at 7
    sync(git, a)
    with Mailbox(a) as box:
        box.post("t", "alice 3", sender="alice")
    sync(git, a)
    sync(git, b)  # alice 3 at 7, bob 4 at 8
    anyio.run(look)
    assert Counter(shown) == Counter([*everything, "alice 3", "bob 4"]), shown
