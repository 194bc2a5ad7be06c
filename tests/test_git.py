"""Mailboxes in git: two clones that both post, a merge that conflicts, and doctor --fix.

Real `git` and real files. Without git the tests that need it skip and say why, except under
CI=true, where a missing git fails them: CI must run what this file is for.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import git_init, run_git
from hypothesis import given
from hypothesis import strategies as st

from mailslot import Mailbox, Message
from mailslot.doctor.checks import temp_path
from mailslot.doctor.conflict import conflict_sides

# ---------------------------------------------------------------- helpers


def doctor(root: Path, *args: str) -> tuple[int, str]:
    """Run `mailslot doctor` as a separate process; return its exit code and stdout."""
    argv = [sys.executable, "-m", "mailslot", "doctor", "--root", str(root), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert not done.stderr.strip(), done.stderr
    return done.returncode, done.stdout


def clone(env: dict[str, str], origin: Path, dest: Path, user: str) -> Path:
    run_git(env, origin.parent, "clone", "-q", str(origin), str(dest))
    run_git(env, dest, "config", "user.name", user)
    run_git(env, dest, "config", "user.email", f"{user}@example.org")
    return dest


def origin_repo(env: dict[str, str], path: Path, thread: bool = True) -> Path:
    """Return a repository holding a mailbox (with thread t of two messages, if asked)."""
    path.mkdir()
    git_init(env, path, "origin")
    (path / "README").write_text("a project\n")
    with Mailbox.init(path / ".mailslot") as box:
        if thread:
            box.create_thread("t", creator="alice")
            box.post("t", "hello from the shared history", sender="alice")
            box.post("t", "and a reply", sender="bob", reply_to=1)
    run_git(env, path, "add", "-A")
    run_git(env, path, "commit", "-q", "-m", "a mailbox")
    return path


def post_three(repo: Path, who: str, parents: dict[str, str | None]) -> list[str]:
    """Post three messages in t of repo's mailbox; return their ids; record who each answers.

    alice answers the shared history and then herself; bob writes a reply chain.
    """
    with Mailbox(repo / ".mailslot") as box:
        shared = box.get("t", 1).id
        first = box.publish("t", f"{who} 1", sender=who)
        chain = (1, first.seq) if who == "alice" else (first.seq, None)
        second = box.publish("t", f"{who} 2", sender=who, reply_to=chain[0])
        third = box.publish("t", f"{who} 3", sender=who, reply_to=chain[1] or second.seq)
        parents[first.id] = None
        parents[second.id] = shared if who == "alice" else first.id
        parents[third.id] = first.id if who == "alice" else second.id
        return [first.id, second.id, third.id]


def transcript(root: Path, thread: str = "t") -> list[Message]:
    with Mailbox(root) as box:
        return list(box.messages(thread))


# ---------------------------------------------------------------- conflict_sides


OURS = b'{\n  "id": "a",\n  "from": "alice",\n  "meta": {}\n}\n'
THEIRS = b'{\n  "id": "b",\n  "from": "bob",\n  "meta": {}\n}\n'


def test_no_markers_is_none() -> None:
    assert conflict_sides(OURS) is None
    assert conflict_sides(b"") is None
    # Marker text inside a line (a message about merges) is not a conflict.
    assert conflict_sides(b'{\n  "content": "<<<<<<< HEAD\\n=======\\n>>>>>>> x"\n}\n') is None


def test_several_blocks_rebuild_both_files() -> None:
    merged = (b'{\n<<<<<<< HEAD\n  "id": "a",\n  "from": "alice",\n=======\n  "id": "b",\n'
              b'  "from": "bob",\n>>>>>>> other\n  "meta": {}\n}\n')  # fmt: skip
    assert conflict_sides(merged) == (OURS, THEIRS)
    two = (b"same\n<<<<<<< HEAD\nA1\n=======\nB1\n>>>>>>> x\nmiddle\n<<<<<<< HEAD\nA2\n"
           b"A3\n=======\n>>>>>>> x\nend")  # fmt: skip
    assert conflict_sides(two) == (b"same\nA1\nmiddle\nA2\nA3\nend", b"same\nB1\nmiddle\nend")


def test_diff3_base_is_dropped() -> None:
    merged = (b"<<<<<<< HEAD\n" + OURS + b"||||||| da179b3\n" + b"=======\n" + THEIRS
              + b">>>>>>> other\n")  # fmt: skip
    assert conflict_sides(merged) == (OURS, THEIRS)
    with_base = b"x\n<<<<<<< ours\n1\n||||||| base\n0\nzero\n=======\n2\n>>>>>>> theirs\ny\n"
    assert conflict_sides(with_base) == (b"x\n1\ny\n", b"x\n2\ny\n")


def test_crlf_is_kept() -> None:
    merged = b"{\r\n<<<<<<< HEAD\r\n  a\r\n=======\r\n  b\r\n>>>>>>> other\r\n}\r\n"
    assert conflict_sides(merged) == (b"{\r\n  a\r\n}\r\n", b"{\r\n  b\r\n}\r\n")


def test_unlabelled_and_longer_markers() -> None:
    assert conflict_sides(b"<<<<<<<\na\n=======\nb\n>>>>>>>\n") == (b"a\n", b"b\n")
    # conflict-marker-size=9: seven-character lines inside are content, not markers.
    merged = b"<<<<<<<<< ours\n=======\n=========\n>>>>>>> x\n>>>>>>>>> theirs\n"
    assert conflict_sides(merged) == (b"=======\n", b">>>>>>> x\n")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"<<<<<<< HEAD\na\n>>>>>>> x\n", r"line 3: >>>>>>> out of order"),
        (b"<<<<<<< HEAD\na\n=======\nb\n", r"ends inside the block opened on line 1"),
        (b"<<<<<<< HEAD\n<<<<<<< HEAD\n=======\n>>>>>>> x\n", r"line 2: <<<<<<< inside"),
        (b"<<<<<<< H\na\n=======\nb\n>>>>>>> x\n=======\n", r"line 6: ======= outside a block"),
        (b"<<<<<<< H\na\n=======\n||||||| base\n>>>>>>> x\n", r"line 4: \|\|\|\|\|\|\| out of"),
    ],
)
def test_malformed_markers_say_where(data: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match="malformed merge conflict markers: .*" + reason):
        conflict_sides(data)
    with pytest.raises(ValueError, match=reason):
        conflict_sides(data.replace(b"\n", b"\r\n"))


LINES = st.lists(st.sampled_from([b"{", b"}", b'  "id": "x",', b"  1,", b"  []"]), max_size=4)


@given(st.lists(st.tuples(LINES, LINES, LINES), min_size=1, max_size=4), LINES, st.booleans())
def test_any_merge_splits_back(blocks: list[Any], tail: list[bytes], diff3: bool) -> None:
    merged: list[bytes] = []
    ours: list[bytes] = []
    theirs: list[bytes] = []
    for common, a, b in blocks:
        merged += [*common, b"<<<<<<< ours", *a, *([b"||||||| base", b"  0"] if diff3 else [])]
        merged += [b"=======", *b, b">>>>>>> theirs"]
        ours += [*common, *a]
        theirs += [*common, *b]
    merged += tail

    def text(lines: list[bytes]) -> bytes:
        return b"".join(line + b"\n" for line in [*lines])

    assert conflict_sides(text(merged)) == (text(ours + tail), text(theirs + tail))


# ---------------------------------------------------------------- two clones, one merge


@pytest.mark.parametrize("style", ["merge", "diff3"])
@pytest.mark.parametrize("first", ["ours", "theirs"])
def test_both_clones_post_then_merge_and_fix(
    git: dict[str, str], tmp_path: Path, style: str, first: str
) -> None:
    origin = origin_repo(git, tmp_path / "origin")
    a = clone(git, origin, tmp_path / "a", "alice")
    b = clone(git, origin, tmp_path / "b", "bob")
    parents: dict[str, str | None] = {}
    # Who posts first decides which side keeps seqs 3..5: the merging clone's (ours) or not.
    order = [(a, "alice"), (b, "bob")] if first == "ours" else [(b, "bob"), (a, "alice")]
    posted: dict[str, list[str]] = {}
    for repo, who in order:
        posted[who] = post_three(repo, who, parents)
        time.sleep(0.01)  # the two sides' first messages never share a millisecond
        run_git(git, repo, "add", "-A")
        run_git(git, repo, "commit", "-q", "-m", f"{who} posts")
    run_git(git, a, "-c", f"merge.conflictStyle={style}", "pull", "-q", "--no-rebase",
            str(b), "main", ok=False)  # fmt: skip
    root = a / ".mailslot"
    tdir = root / "threads" / "t"
    assert b"<<<<<<< " in (tdir / "000003.json").read_bytes()
    assert (b"||||||| " in (tdir / "000003.json").read_bytes()) == (style == "diff3")

    code, out = doctor(root, "--json")
    report = json.loads(out)
    assert code == 1 and not report["healthy"]
    conflicts = [f for f in report["findings"] if f["kind"] == "conflict"]
    assert [Path(f["path"]).name for f in conflicts] == ["000003.json", "000004.json",
                                                         "000005.json"]  # fmt: skip
    assert all("two clones both wrote seq" in f["detail"] for f in conflicts)
    assert {f["kind"] for f in report["findings"]} == {"conflict"}

    code, out = doctor(root, "--fix")
    assert code == 0, out
    assert "healthy after repairs" in out
    assert "git add -A" in out and "git commit" in out

    messages = transcript(root)
    assert [m.seq for m in messages] == list(range(1, 9)), "no gaps, nothing lost"
    by_id = {m.id: m for m in messages}
    counts = Counter(m.id for m in messages)
    new = posted["alice"] + posted["bob"]
    assert all(counts[i] == 1 for i in new) and len(counts) == 8
    kept_who, moved_who = ("alice", "bob") if first == "ours" else ("bob", "alice")
    assert [by_id[i].seq for i in posted[kept_who]] == [3, 4, 5]
    assert [by_id[i].seq for i in posted[moved_who]] == [6, 7, 8]
    for i in posted[kept_who]:
        assert "moved_from" not in by_id[i].meta
    for original, i in zip((3, 4, 5), posted[moved_who], strict=True):
        m = by_id[i]
        assert m.meta["moved_from"] == {"seq": original, "reason": "merge conflict"}
        assert m.sender == moved_who and m.content == f"{moved_who} {original - 2}"
    for i in new:  # every reply still answers the message its author answered
        want = parents[i]
        got = by_id[i].reply_to
        assert (got is None) if want is None else (by_id[want].seq == got), (i, want, got)
    quarantined = list((root / ".state" / "quarantine" / "t").iterdir())
    assert len(quarantined) == 3 and all(b"<<<<<<< " in p.read_bytes() for p in quarantined)

    run_git(git, a, "add", "-A")
    assert not run_git(git, a, "ls-files", "-u"), "every conflict is resolved"
    run_git(git, a, "commit", "-q", "-m", "merge bob's posts")
    assert not run_git(git, a, "status", "--porcelain")
    code, out = doctor(root)
    assert code == 0 and out.rstrip().endswith("healthy"), out


def test_two_machines_fixing_one_merge_agree(git: dict[str, str], tmp_path: Path) -> None:
    """Each clone merges the other and fixes it alone; merging the two fixes is then clean."""
    origin = origin_repo(git, tmp_path / "origin")
    a = clone(git, origin, tmp_path / "a", "alice")
    b = clone(git, origin, tmp_path / "b", "bob")
    parents: dict[str, str | None] = {}
    for repo, who in ((a, "alice"), (b, "bob")):
        post_three(repo, who, parents)
        run_git(git, repo, "add", "-A")
        run_git(git, repo, "commit", "-q", "-m", f"{who} posts")
        run_git(git, repo, "branch", "posts")
    for repo, other in ((a, b), (b, a)):
        run_git(git, repo, "pull", "-q", "--no-rebase", str(other), "posts", ok=False)
        assert doctor(repo / ".mailslot", "--fix")[0] == 0
        run_git(git, repo, "add", "-A")
        run_git(git, repo, "commit", "-q", "-m", "merge")
    run_git(git, a, "pull", "-q", "--no-rebase", str(b), "main")  # no conflict this time
    files_a = {p.name: p.read_bytes() for p in (a / ".mailslot" / "threads" / "t").iterdir()}
    files_b = {p.name: p.read_bytes() for p in (b / ".mailslot" / "threads" / "t").iterdir()}
    assert files_a == files_b and len(files_a) == 9
    assert doctor(a / ".mailslot")[0] == 0


def test_both_clones_create_the_same_thread(git: dict[str, str], tmp_path: Path) -> None:
    origin = origin_repo(git, tmp_path / "origin", thread=False)
    a = clone(git, origin, tmp_path / "a", "alice")
    b = clone(git, origin, tmp_path / "b", "bob")
    ids = {}
    for repo, who in ((b, "bob"), (a, "alice")):  # bob's thread is the older one
        with Mailbox(repo / ".mailslot") as box:
            box.create_thread("Release plan", creator=who)
            ids[who] = box.publish("release-plan", f"{who} starts the plan", sender=who).id
        time.sleep(0.01)
        run_git(git, repo, "add", "-A")
        run_git(git, repo, "commit", "-q", "-m", f"{who} opens the release plan")
    run_git(git, a, "pull", "-q", "--no-rebase", str(b), "main", ok=False)
    root = a / ".mailslot"
    record = root / "threads" / "release-plan" / "thread.json"
    assert b"<<<<<<< " in record.read_bytes()

    code, out = doctor(root, "--json")
    findings = json.loads(out)["findings"]
    assert code == 1
    assert {(f["kind"], Path(f["path"]).name) for f in findings} == {
        ("conflict", "thread.json"), ("conflict", "000001.json")}  # fmt: skip
    detail = next(f["detail"] for f in findings if f["path"] == str(record))
    assert "both created thread release-plan" in detail

    code, out = doctor(root, "--fix")
    assert code == 0, out
    doc = json.loads(record.read_text())
    assert doc["created_by"] == "bob" and doc["topic"] == "Release plan"
    messages = transcript(root, "release-plan")
    assert [(m.seq, m.id) for m in messages] == [(1, ids["bob"]), (2, ids["alice"])]
    assert messages[1].meta["moved_from"] == {"seq": 1, "reason": "merge conflict"}
    with Mailbox(root) as box:
        assert box.thread("release-plan").created_by == "bob"
    run_git(git, a, "add", "-A")
    run_git(git, a, "commit", "-q", "-m", "merge")
    assert doctor(root)[0] == 0


# ---------------------------------------------------------------- crafted conflicts, no git


def conflicted(ours: bytes, theirs: bytes) -> bytes:
    return b"<<<<<<< HEAD\n" + ours + b"=======\n" + theirs + b">>>>>>> other\n"


def test_an_unreadable_side_becomes_a_note(box: Mailbox) -> None:
    box.post("t", "one", sender="alice")
    mine = box.publish("t", "two", sender="alice")
    path = box.root / "threads" / "t" / "000002.json"
    path.write_bytes(conflicted(path.read_bytes(), b"{torn\n"))
    code, out = doctor(box.root, "--fix")
    assert code == 0, out
    messages = transcript(box.root)
    assert [m.seq for m in messages] == [1, 2, 3]
    assert messages[1].id == mine.id and messages[1].content == "two"
    note = messages[2]
    assert note.sender == "mailslot" and note.type == "error" and "unreadable" in note.content
    assert note.meta["moved_from"] == {"seq": 2, "reason": "merge conflict"}
    assert Path(note.meta["kept"]).read_bytes().startswith(b"<<<<<<< HEAD")


@pytest.mark.parametrize("moved", ["newer", "older"])
def test_a_rerun_after_an_interrupted_fix_moves_nothing_twice(box: Mailbox, moved: str) -> None:
    """A fix killed after re-publishing a side but before replacing the file: run it again.

    The side already re-published never also keeps the seq, even when it is the one the rule
    would keep (the run of conflicts was cut short by the first, interrupted fix).
    """
    first = box.post("t", "one", sender="alice")
    older = box.publish("t", "older", sender="alice")
    newer = box.publish("t", "newer", sender="bob")
    tdir = box.root / "threads" / "t"
    data = {m.id: (tdir / f"{m.seq:06d}.json").read_bytes() for m in (older, newer)}
    stays, gone = (older, newer) if moved == "newer" else (newer, older)
    (tdir / "000003.json").write_bytes(data[gone.id])
    (tdir / "000002.json").write_bytes(conflicted(data[older.id], data[newer.id]))
    code, out = doctor(box.root, "--fix")
    assert code == 0, out
    messages = transcript(box.root)
    assert [m.seq for m in messages] == [1, 2, 3] and messages[0].seq == first
    assert [m.id for m in messages[1:]] == [stays.id, gone.id]


def test_a_killed_doctors_temp_file_is_swept(root: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = temp_path(root / ".state" / "tmp", "put", pid=dead.pid)
    left.write_bytes(b'{"half": ')
    code, out = doctor(root, "--json")
    assert code == 1
    [finding] = [f for f in json.loads(out)["findings"] if f["path"] == str(left)]
    assert finding["kind"] == "temp file" and finding["fixed"] is None
    code, out = doctor(root, "--fix", "--json")
    assert code == 0
    [finding] = [f for f in json.loads(out)["findings"] if f["path"] == str(left)]
    assert finding["fixed"] == "removed" and not left.exists()


def test_an_agent_that_read_past_the_merge_gets_the_other_clones_messages(
    git: dict[str, str], tmp_path: Path
) -> None:
    """Clone a posts first, so after b pulls and fixes, a's messages take the seqs b's agent
    had already read; its position goes back, and nothing of a's reaches it late or never."""
    import anyio

    from mailslot.tools import Session

    origin = origin_repo(git, tmp_path / "origin")
    a = clone(git, origin, tmp_path / "a", "alice")
    b = clone(git, origin, tmp_path / "b", "bob")
    for repo in (a, b):
        Mailbox(repo / ".mailslot").agents.register("worker")
    with Mailbox(a / ".mailslot") as box:
        a_tasks = [box.post("t", f"a's task {i}", sender="alice", to=["worker"], type="task")
                   for i in range(2)]  # fmt: skip
    run_git(git, a, "add", "-A")
    run_git(git, a, "commit", "-q", "-m", "a posts")
    run_git(git, a, "push", "-q", "origin", "HEAD:side")
    time.sleep(0.01)  # b's messages are the younger side: a's keep the seqs
    box_b = Mailbox(b / ".mailslot")
    for i in range(2):
        box_b.post("t", f"b's note {i}", sender="bob", to=["worker"])
    worker = Session(box_b, agent="worker")

    async def drain(**args: Any) -> list[str]:
        got = await worker.msg_wait(timeout_s=0.5, **args)
        return [m["content"] for m in got["messages"]]

    try:
        seen = anyio.run(lambda: drain(thread="t", after_seq=0))
        assert seen[-2:] == ["b's note 0", "b's note 1"]
        run_git(git, b, "add", "-A")
        run_git(git, b, "commit", "-q", "-m", "b posts")
        run_git(git, b, "pull", "-q", "--no-rebase", "origin", "side", ok=False)  # conflicts
        doctor(b / ".mailslot", "--fix")
        assert [m.content for m in transcript(b / ".mailslot")][2:4] == ["a's task 0", "a's task 1"]
        later = anyio.run(lambda: drain(thread="t")) + anyio.run(lambda: drain())
        assert "a's task 0" in later and "a's task 1" in later, later
        assert a_tasks == [3, 4]  # the seqs b's agent had read past
    finally:
        worker.close()
        box_b.close()


def test_a_task_claimed_in_both_clones_has_one_holder_after_the_merge(
    git: dict[str, str], tmp_path: Path
) -> None:
    origin = origin_repo(git, tmp_path / "origin")
    with Mailbox(origin / ".mailslot") as box:
        task = box.post("t", "build the release", sender="alice", type="task")
    run_git(git, origin, "add", "-A")
    run_git(git, origin, "commit", "-q", "-m", "a task")
    a = clone(git, origin, tmp_path / "a", "alice")
    b = clone(git, origin, tmp_path / "b", "bob")
    for repo, who in ((a, "carol"), (b, "dave")):  # each clone's worker takes it and does it
        with Mailbox(repo / ".mailslot") as box:
            assert box.tasks.claim("t", task, agent=who).won
            box.post("t", f"built by {who}", sender=who, type="result", reply_to=task)
        run_git(git, repo, "add", "-A")
        run_git(git, repo, "commit", "-q", "-m", f"{who} builds")
        time.sleep(0.01)
    run_git(git, a, "pull", "-q", "--no-rebase", str(b), "main", ok=False)
    root = a / ".mailslot"
    code, out = doctor(root, "--fix")
    assert code == 0, out
    with Mailbox(root) as box:
        done = box.tasks.task("t", task)
        assert (done.status, done.attempts, done.done_by) == ("done", 1, "carol")
        claims = [(m.sender, m.seq) for m in box.messages("t") if m.reply_to == task]
        # Both claims and both results are kept; dave's came back after carol's, so his
        # claim is void and his result is recorded without closing the task again.
        assert claims == [("carol", 4), ("carol", 5), ("dave", 6), ("dave", 7)]
        assert done.closed_by == 5
