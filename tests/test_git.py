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

import anyio
import pytest
from helpers import agent, call, git_init, run_git, until_async
from hypothesis import given
from hypothesis import strategies as st
from mcp.client import Client

from mailslot import Mailbox, Message
from mailslot.doctor.checks import temp_path
from mailslot.doctor.conflict import conflict_sides
from mailslot.store.positions import MAX_MOVED, Position, Rewind

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


# ---------------------------------------------------------------- agents across a fix

AGENTS = ("reader", "partial", "newcomer")  # shown all of b's posts, the first only, none


def post(git: dict[str, str], repo: Path, who: str, text: str) -> None:
    """Post text in t of repo's mailbox from who, to every agent, and commit it."""
    with Mailbox(repo / ".mailslot") as box:
        box.post("t", text, sender=who, to=list(AGENTS))
    run_git(git, repo, "add", "-A")
    run_git(git, repo, "commit", "-q", "-m", text)
    time.sleep(0.01)  # the next post never shares this one's millisecond


async def delivered(c: Client, kind: str, first: bool = False) -> list[str]:
    """Wait on thread t or on the inbox until a wait times out; return the contents it gave
    (first: a first look, which sets the agent's position at the thread as it is)."""
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


def diverged(
    git: dict[str, str], tmp_path: Path, kept: str, kind: str
) -> tuple[Path, dict[str, list[str]]]:
    """Return clone b and what each agent was shown there before b merges clone a.

    Both clones post at seqs 3 and 4 of t, and b at 5 too. kept says whose posts keep 3 and 4
    after the fix: "theirs" (a posted first: b's move to the end) or "ours". Before the
    merge, on b, reader was shown all of b's posts, partial the first, newcomer none (each had
    looked at t once before, so each has a position there).
    """
    origin = origin_repo(git, tmp_path / "origin")
    with Mailbox(origin / ".mailslot") as box:
        for name in AGENTS:
            box.agents.register(name)
    run_git(git, origin, "add", "-A")
    run_git(git, origin, "commit", "-q", "-m", "agents")
    a = clone(git, origin, tmp_path / "a", "alice")
    b = clone(git, origin, tmp_path / "b", "bob")
    shown: dict[str, list[str]] = {}

    async def before() -> None:
        for name in AGENTS:
            async with agent(b / ".mailslot", name) as c:
                shown[name] = await delivered(c, kind, first=True)
        if kept == "theirs":
            post(git, a, "alice", "a's 1")
        post(git, b, "bob", "b's 1")
        async with agent(b / ".mailslot", "partial") as c:
            shown["partial"] += await delivered(c, kind)
        if kept == "ours":
            post(git, a, "alice", "a's 1")
        post(git, a, "alice", "a's 2")
        post(git, b, "bob", "b's 2")
        post(git, b, "bob", "b's 3")  # one more than a: it merges cleanly, and stays at 5
        async with agent(b / ".mailslot", "reader") as c:
            shown["reader"] += await delivered(c, kind)

    anyio.run(before)
    return b, shown


def waits(root: Path, name: str) -> bool:
    """Return True if agent name's serve says it is blocked in a wait."""
    try:
        doc = json.loads((root / ".state" / "presence" / f"{name}.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(doc.get("status") == "waiting")


@pytest.mark.parametrize("kind", ["thread", "inbox"])
@pytest.mark.parametrize("kept", ["theirs", "ours"])
def test_after_a_fix_each_agent_gets_every_message_once(
    git: dict[str, str], tmp_path: Path, kept: str, kind: str
) -> None:
    """After b merges a and runs doctor --fix, the seqs 3 and 4 its agents had been shown hold
    a's posts (or still b's, which are shown nowhere again), and the other clone's are at the
    end: every agent is shown each message once over all its waits, before and after the
    fix, wherever the message now stands. reader is waiting while doctor runs; partial and
    newcomer come back afterwards."""
    b, shown = diverged(git, tmp_path, kept, kind)
    run_git(git, b, "pull", "-q", "--no-rebase", str(tmp_path / "a"), "main", ok=False)
    root = b / ".mailslot"
    shared = ["hello from the shared history", "and a reply"] if kind == "thread" else []
    assert shown == {"reader": [*shared, "b's 1", "b's 2", "b's 3"],
                     "partial": [*shared, "b's 1"], "newcomer": shared}  # fmt: skip

    async def after() -> None:
        async with agent(root, "reader") as c, anyio.create_task_group() as tg:
            got: list[str] = []

            async def wait() -> None:
                args = {"thread": "t"} if kind == "thread" else {}
                answer = await call(c, "msg_wait", timeout_s=60, **args)
                got.extend(m["content"] for m in answer["messages"])

            tg.start_soon(wait)

            async def blocked() -> bool:
                return waits(root, "reader")

            await until_async("reader waits", blocked)
            code, out = await anyio.to_thread.run_sync(lambda: doctor(root, "--fix"))
            assert code == 0, out
        for name in AGENTS:
            shown[name] += got if name == "reader" else []
            async with agent(root, name) as c:
                # After thread reads, the inbox's first look (what it owes) comes first.
                if kind == "thread":
                    shown[name] += await delivered(c, "inbox")
                shown[name] += await delivered(c, kind)

    anyio.run(after)
    contents = [m.content for m in transcript(root)]
    mine, theirs = ["b's 1", "b's 2", "b's 3"], ["a's 1", "a's 2"]
    moved = [*theirs, "b's 3", "b's 1", "b's 2"] if kept == "theirs" else mine + theirs
    assert contents[2:] == moved
    for name in AGENTS:
        assert Counter(shown[name]) == Counter(shared + mine + theirs), name


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


@pytest.mark.parametrize("kept", ["theirs", "ours"])
def test_after_a_fix_in_a_rebase_no_agent_misses_a_message(
    git: dict[str, str], tmp_path: Path, kept: str
) -> None:
    """`git pull --rebase` swaps git's sides: "ours" is the other clone, and the rebase checks
    it out before it replays this clone's posts, so agents here may have been shown either
    side at a conflicted seq. Doctor cannot tell which: each agent gets the other clone's
    messages once, and may get its own clone's again, never none."""
    b, shown = diverged(git, tmp_path, kept, "thread")
    root = b / ".mailslot"
    run_git(git, b, "pull", "-q", "--rebase", str(tmp_path / "a"), "main", ok=False)
    for _ in range(5):  # the rebase stops at each of b's commits that conflicts
        assert doctor(root, "--fix")[0] == 0
        run_git(git, b, "add", "-A")
        argv = ["git", "-C", str(b), "rebase", "--continue"]
        env = {**git, "GIT_EDITOR": "true"}
        done = subprocess.run(argv, capture_output=True, env=env, timeout=60, check=False)
        if done.returncode == 0:
            break
    assert not (b / ".git" / "rebase-merge").exists()

    async def after() -> None:
        for name in AGENTS:
            async with agent(root, name) as c:
                shown[name] += await delivered(c, "thread")

    anyio.run(after)
    theirs = ["a's 1", "a's 2"]
    everything = {"hello from the shared history", "and a reply", "b's 1", "b's 2", "b's 3"}
    for name in AGENTS:
        counts = Counter(shown[name])
        assert [counts[m] for m in theirs] == [1, 1], (name, shown[name])
        assert set(counts) == everything | set(theirs), name


def test_agents_away_during_two_fixes_get_every_message_once(
    git: dict[str, str], tmp_path: Path
) -> None:
    """b merges a and fixes it, a pulls that, both post again, and b merges and fixes again,
    while no agent runs: each goes through both rewinds when it comes back (the mark keeps
    the first), so a's first posts, which took seqs it had read past, still reach it."""
    b, shown = diverged(git, tmp_path, "theirs", "inbox")
    a, root = tmp_path / "a", b / ".mailslot"
    run_git(git, b, "pull", "-q", "--no-rebase", str(a), "main", ok=False)
    assert doctor(root, "--fix")[0] == 0
    run_git(git, b, "add", "-A")
    run_git(git, b, "commit", "-q", "-m", "merge a")
    run_git(git, a, "pull", "-q", "--no-rebase", str(b), "main")  # a fast-forward
    post(git, a, "alice", "a's 3")
    post(git, b, "bob", "b's 4")
    run_git(git, b, "pull", "-q", "--no-rebase", str(a), "main", ok=False)
    assert doctor(root, "--fix")[0] == 0
    marks = json.loads((root / ".state" / "rewound" / "t.json").read_text())
    assert (marks["from"], marks["moved"]["8"], len(marks["earlier"])) == (8, 9, 1)

    async def after() -> None:
        for name in AGENTS:
            async with agent(root, name) as c:
                shown[name] += await delivered(c, "inbox")

    anyio.run(after)
    contents = [m.content for m in transcript(root)][2:]
    assert contents == ["a's 1", "a's 2", "b's 3", "b's 1", "b's 2", "a's 3", "b's 4"]
    for name in AGENTS:
        assert Counter(shown[name]) == Counter(contents), name


def test_a_mark_without_moved_seqs_shows_everything_from_it_again(root: Path) -> None:
    """A mark an older doctor left says only where the rewrite began: agents past it go back
    before it, once, and are shown everything from there again."""
    with Mailbox(root) as box:
        box.create_thread("t", creator="alice")
        for i in range(4):
            box.post("t", f"message {i + 1}", sender="alice")

    async def read(**args: Any) -> list[str]:
        async with agent(root, "reader") as c:
            got = await call(c, "msg_wait", thread="t", timeout_s=1, **args)
            return [m["content"] for m in got["messages"]]

    assert anyio.run(lambda: read(after_seq=0)) == [f"message {i}" for i in range(1, 5)]
    (root / ".state" / "rewound").mkdir()
    (root / ".state" / "rewound" / "t.json").write_text('{"from": 3, "token": "old"}')
    assert anyio.run(read) == ["message 3", "message 4"]
    assert anyio.run(read) == []


def test_a_position_keeps_moved_seqs_until_passed_and_at_most_max_moved() -> None:
    pos = Position("inc", read=5000, inbox=5000)
    assert pos.rewind(Rewind(3, "t1", {s: s + 5000 for s in range(3, 5001)}), owed={4})
    assert (pos.read, pos.inbox) == (2, 2)
    assert sorted(pos.moved_read) == list(range(5003, 5003 + MAX_MOVED))
    assert 5004 not in pos.moved_inbox and len(pos.moved_inbox) == MAX_MOVED
    assert pos.was_shown(5004) and not pos.was_shown(10000, inbox=True)  # beyond the bound
    assert not pos.rewind(Rewind(3, "t1", {}))  # once per token
    again = Position.from_json(json.loads(json.dumps(pos.to_json())), "inc")
    assert (again.moved_read, again.moved_inbox) == (pos.moved_read, pos.moved_inbox)
    again.shown(2, 5100)
    again.inbox_shown(5010)
    assert min(again.moved_read) == 5101 and min(again.moved_inbox) == 5011
    again.clamp(5200)
    assert max(again.moved_read) == 5200


def test_a_seq_taken_while_doctor_splits_is_told_in_a_second_mark(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Doctor marks where its clone's messages will go before it moves them; a writer that
    takes one of those seqs first (another machine's sync, not a local post: those wait for
    the thread's lock) makes it say in a second mark where they went. The agent then gets the
    other clone's messages and that writer's, and not its own clone's again."""
    import uuid

    from mailslot.doctor import conflict
    from mailslot.doctor.checks import diagnose
    from mailslot.store.format import MESSAGE_KEYS, dumps

    def message(content: str, created_at: str) -> bytes:
        values = (uuid.uuid4().hex, "alice", [], "message", "normal", None, created_at,
                  content, {})  # fmt: skip
        return dumps(dict(zip(MESSAGE_KEYS, values, strict=True)))

    with Mailbox(root) as box:
        box.create_thread("t", creator="alice")
        for text in ("one", "two", "b's 1", "b's 2"):
            box.post("t", text, sender="bob")

    async def read(**args: Any) -> list[str]:
        async with agent(root, "reader") as c:
            return await delivered(c, "thread", **args)

    assert anyio.run(lambda: read(first=True)) == ["one", "two", "b's 1", "b's 2"]
    tdir = root / "threads" / "t"
    for seq in (3, 4):  # the other clone's posts, older: they keep 3 and 4
        path = tdir / f"{seq:06d}.json"
        theirs = message(f"a's {seq - 2}", f"2000-01-01T00:00:0{seq}.000Z")
        path.write_bytes(conflicted(path.read_bytes(), theirs))
    marks: list[int] = []

    def racing(*args: Any) -> None:
        conflict_mark(*args)
        marks.append(args[2])
        if len(marks) == 1:  # between the mark and the split: seq 5 is taken
            (tdir / "000005.json").write_bytes(
                message("from elsewhere", "2030-01-01T00:00:00.000Z")
            )

    conflict_mark = conflict.mark_rewound
    monkeypatch.setattr(conflict, "mark_rewound", racing)
    assert diagnose(root, fix=True).healthy
    contents = [m.content for m in transcript(root)]
    assert contents == ["one", "two", "a's 1", "a's 2", "from elsewhere", "b's 1", "b's 2"]
    assert anyio.run(read) == ["a's 1", "a's 2", "from elsewhere"]
    assert marks == [3, 3]
