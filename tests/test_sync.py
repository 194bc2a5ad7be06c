"""`mailslot sync`: clones of one repository meet through a real bare remote, with real git.

Each clone is a git checkout with its mailbox at `.mailslot/`; each `mailslot sync --once` is a
separate process. The remote is a bare repository on disk (a path, as on a network drive).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import git_init, run_git

from mailslot import Mailbox


def sync(env: dict[str, str], root: Path, *args: str, ok: bool = True) -> str:
    """Run `mailslot sync --once` (or args) as a separate process; return its stdout."""
    argv = [sys.executable, "-m", "mailslot", "sync", "--root", str(root), *(args or ("--once",))]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip
    if ok:
        assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def status(root: Path) -> dict:
    return json.loads((root / ".state" / "sync" / "status.json").read_text())


def files(root: Path) -> dict[str, bytes]:
    """Return every file of root's mailbox that travels (threads and agent cards)."""
    out = {}
    for sub in ("threads", "agents"):
        for path in sorted((root / sub).rglob("*.json")):
            out[str(path.relative_to(root))] = path.read_bytes()
    return out


@pytest.fixture
def remote(tmp_path: Path, git: dict[str, str]) -> Path:
    path = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(path)], env=git, check=True)
    return path


def make_clone(env: dict[str, str], remote: Path, path: Path, who: str) -> Path:
    """Return the mailbox root of a new checkout at path with remote as its origin."""
    path.mkdir()
    git_init(env, path, who)
    run_git(env, path, "remote", "add", "origin", str(remote))
    Mailbox.init(path / ".mailslot").close()
    return path / ".mailslot"


def test_a_post_on_one_clone_reaches_the_other_byte_for_byte(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    with Mailbox(a) as box:
        box.agents.register("alice")
        box.agents.register("bob")
        box.create_thread("review pr 7", creator="alice")
        box.post("review-pr-7", "please review", sender="alice", to=["bob"])
    sync(git, a)
    sync(git, b)
    assert files(b) == files(a)
    with Mailbox(b) as box:
        assert [m.content for m in box.messages("review-pr-7")] == ["please review"]
    log = run_git(git, a.parent, "log", "--format=%s", "mailslot", "--", "threads/review-pr-7")
    assert "1 in review-pr-7" in log
    # The messages travel on their own branch, never swept into a code commit by `add -A`.
    assert "threads/" not in run_git(git, a.parent, "add", "-A", "--dry-run")
    assert ".mailslot/mailslot.json" in run_git(git, a.parent, "add", "-A", "--dry-run")
    assert status(a)["pending"] == 0 and status(a)["last_error"] is None
    # No agent of either clone runs: neither leaves a heartbeat ref on the remote.
    assert run_git(git, remote, "for-each-ref", "refs/mailslot/") == ""


def test_two_clones_that_posted_the_same_seqs_keep_both_and_agree(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
        box.post("t", "shared", sender="alice")
    sync(git, a)
    sync(git, b)
    with Mailbox(a) as box:  # both post from seq 2 on, before they see each other
        box.post("t", "alice 1", sender="alice")
        box.post("t", "alice 2", sender="alice", reply_to=2)
    with Mailbox(b) as box:
        box.post("t", "bob 1", sender="bob")
        box.post("t", "bob 2", sender="bob", reply_to=2)
        bob_ids = [m.id for m in box.messages("t", after=1)]
    sync(git, a)  # alice pushes first: her seqs stand
    sync(git, b)  # bob's move after hers
    sync(git, a)
    assert files(a) == files(b)
    with Mailbox(b) as box:
        got = list(box.messages("t"))
    assert [m.content for m in got] == ["shared", "alice 1", "alice 2", "bob 1", "bob 2"]
    moved = got[3:]
    assert [m.id for m in moved] == bob_ids  # ids and content unchanged
    assert [m.meta["moved_from"] for m in moved] == [
        {"seq": 2, "reason": "sync"},
        {"seq": 3, "reason": "sync"},
    ]
    assert moved[1].reply_to == 4  # followed bob 1 to its new seq
    assert got[2].reply_to == 2  # alice's, as she wrote it
    assert "moved after the remote's" in json.dumps(status(b)["remarks"])


def test_sync_never_touches_the_persons_head_index_or_working_tree(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    a = make_clone(git, remote, tmp_path / "a", "alice")
    work = a.parent
    (work / "code.py").write_text("print(1)\n")
    run_git(git, work, "add", "code.py")
    run_git(git, work, "commit", "-q", "-m", "code")
    (work / "code.py").write_text("print(2)\n")  # a dirty tree
    (work / "new.py").write_text("x = 1\n")
    run_git(git, work, "add", "new.py")  # and something staged
    hooks = work / ".git" / "hooks"
    for hook in ("pre-push", "reference-transaction", "post-checkout"):
        (hooks / hook).write_text(f"#!/bin/sh\necho ran >> {work}/hooks-ran\n")
        (hooks / hook).chmod(0o755)
    before = [run_git(git, work, *c) for c in (("status", "--porcelain"), ("rev-parse", "HEAD"),
                                                ("write-tree",), ("stash", "list"))]  # fmt: skip
    index = (work / ".git" / "index").read_bytes()
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
        box.post("t", "hi", sender="alice")
    sync(git, a)
    after = [run_git(git, work, *c) for c in (("status", "--porcelain"), ("rev-parse", "HEAD"),
                                               ("write-tree",), ("stash", "list"))]  # fmt: skip
    assert after == before
    assert (work / ".git" / "index").read_bytes() == index
    assert not (work / "hooks-ran").exists()
    assert run_git(git, work, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"
    assert "threads/t/000001.json" in run_git(git, remote, "ls-tree", "-r", "--name-only",
                                              "mailslot")  # fmt: skip


def test_a_fresh_clone_receives_the_mailbox_with_one_command(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    a = make_clone(git, remote, tmp_path / "a", "alice")
    with Mailbox(a) as box:
        box.create_thread("deploy", creator="alice")
        box.post("deploy", "ship it", sender="alice")
    sync(git, a)
    fresh = tmp_path / "ci"
    fresh.mkdir()
    git_init(git, fresh, "ci")
    run_git(git, fresh, "remote", "add", "origin", str(remote))
    argv = [sys.executable, "-m", "mailslot", "sync", "--once"]
    done = subprocess.run(argv, cwd=fresh, env={**git, "MAILSLOT_ROOT": ""},
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert files(fresh / ".mailslot") == files(a)


def test_a_force_push_that_dropped_messages_loses_nothing(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
        box.post("t", "one", sender="alice")
    sync(git, a)
    first = run_git(git, remote, "rev-parse", "mailslot").strip()
    with Mailbox(a) as box:
        box.post("t", "two", sender="alice")
    sync(git, a)
    run_git(git, remote, "update-ref", "refs/heads/mailslot", first)  # history rewritten
    sync(git, a)
    assert "rewritten" in json.dumps(status(a)["remarks"])
    sync(git, b)
    with Mailbox(b) as box:
        assert [m.content for m in box.messages("t")] == ["one", "two"]


def test_a_deleted_branch_is_pushed_again(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    a = make_clone(git, remote, tmp_path / "a", "alice")
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
        box.post("t", "one", sender="alice")
    sync(git, a)
    run_git(git, remote, "branch", "-D", "mailslot")
    sync(git, a)
    assert "threads/t/000001.json" in run_git(git, remote, "ls-tree", "-r", "--name-only",
                                              "mailslot")  # fmt: skip
    assert "no branch mailslot" in json.dumps(status(a)["remarks"])


def test_status_says_in_words_what_sync_did(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    a = make_clone(git, remote, tmp_path / "a", "alice")
    assert "never synced" in sync(git, a, "--status")
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
        box.post("t", "one", sender="alice")
    sync(git, a)
    shown = sync(git, a, "--status")
    assert "remote: origin (branch mailslot)" in shown
    assert "waiting to be pushed: 0 message(s)" in shown
    os.rename(remote, remote.with_name("gone.git"))  # the remote unreachable
    with Mailbox(a) as box:
        box.post("t", "two", sender="alice")
    out = sync(git, a, "--once", ok=False)
    assert "git ls-remote failed" in out
    shown = sync(git, a, "--status")
    assert "last error" in shown and "git ls-remote failed" in shown
    assert re.search(r"waiting to be pushed: 1 message\(s\), the oldest posted \d+ s ago", shown)
    assert re.search(r"last round: \S+, last in step \d+ s ago", shown)


def test_messages_deleted_here_come_back_and_are_never_deleted_there(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
        for n in range(3):
            box.post("t", f"m{n}", sender="alice")
        box.create_thread("u", creator="alice")
        box.post("u", "other", sender="alice")
    sync(git, a)
    kept = files(a)
    (a / "threads" / "t" / "000002.json").unlink()  # a person, a checkout, a clean
    for path in (a / "threads" / "u").iterdir():
        path.unlink()
    (a / "threads" / "u").rmdir()
    sync(git, a)
    assert files(a) == kept
    assert "put back" in json.dumps(status(a)["remarks"])
    sync(git, b)
    assert files(b) == kept


def test_a_mailbox_committed_with_the_code_is_not_synced_until_its_person_chooses(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    a = make_clone(git, remote, tmp_path / "a", "alice")
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
        box.post("t", "committed with the code", sender="alice")
    run_git(git, a.parent, "add", "-A")
    run_git(git, a.parent, "commit", "-q", "-m", "code and mailbox")
    out = sync(git, a, ok=False)
    assert (
        "committed on your code branch" in out and "git rm -r -q --cached --ignore-unmatch" in out
    )
    assert run_git(git, remote, "branch", "--list", "mailslot") == ""
    # The person's choice, as the message says: the messages leave the code branch.
    run_git(git, a.parent, "rm", "-r", "-q", "--cached", "--ignore-unmatch", ".mailslot/threads",
            ".mailslot/agents")  # fmt: skip
    (a / ".gitignore").write_text((a / ".gitignore").read_text() + "threads/\nagents/\n")
    run_git(git, a.parent, "add", ".mailslot/.gitignore")
    run_git(git, a.parent, "commit", "-q", "-m", "the mailbox travels on the mailslot branch")
    sync(git, a)
    with Mailbox(a) as box:
        box.post("t", "new, never in a code commit", sender="alice")
    run_git(git, a.parent, "add", "-A")  # what a person does before a code commit
    assert "threads" not in run_git(git, a.parent, "diff", "--cached", "--name-only")


def fast(root: Path, **given: float) -> None:
    """Give root's mailslot.json quick sync settings (a test should not wait 30 s)."""
    path = root / "mailslot.json"
    doc = json.loads(path.read_text())
    doc["sync"] = {"look_s": 0.3, "max_look_s": 1, "push_delay_s": 0.1, "heartbeat_s": 2,
                   **given}  # fmt: skip
    path.write_text(json.dumps(doc))


def start_sync(env: dict[str, str], root: Path) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "mailslot", "sync", "--root", str(root)]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def test_a_running_sync_wakes_a_waiter_on_the_other_clone(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    for root in (a, b):
        fast(root)
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
        box.post("t", "first", sender="alice")
    sync(git, a)
    sync(git, b)
    syncs = [start_sync(git, a), start_sync(git, b)]
    try:
        with Mailbox(b) as box:
            cursor = box.cursor("t")
            with Mailbox(a) as there:
                sent = there.post("t", "across machines", sender="alice")
            got = box.wait("t", cursor, timeout=60)
            assert [(m.seq, m.content) for m in got.messages] == [(sent, "across machines")]
        second = start_sync(git, a)  # a second continuous sync of one root stops at once
        _, err = second.communicate(timeout=60)
        assert second.returncode == 1 and "another sync" in err
    finally:
        for p in syncs:
            p.terminate()
        for p in syncs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
    assert status(a)["running"] is False


def test_the_ci_one_liner_of_the_readme_works_on_a_fresh_clone(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    a = make_clone(git, remote, tmp_path / "a", "alice")
    with Mailbox(a) as box:
        box.create_thread("deploy", creator="alice")
        box.post("deploy", "please run the tests", sender="alice")
    sync(git, a)
    line = next(
        ln
        for ln in (Path(__file__).parent.parent / "README.md").read_text().splitlines()
        if ln.startswith("mailslot sync --once &&")
    )
    ci = tmp_path / "ci"
    ci.mkdir()
    git_init(git, ci, "ci")
    run_git(git, ci, "remote", "add", "origin", str(remote))
    bin_dir = Path(sys.executable).parent
    env = {**git, "PATH": f"{bin_dir}:{git['PATH']}", "MAILSLOT_AGENT": "ci"}
    env.pop("MAILSLOT_ROOT", None)
    done = subprocess.run(["bash", "-c", line], cwd=ci, env=env, capture_output=True,
                          text=True, timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stderr
    sync(git, a)
    with Mailbox(a) as box:
        got = [(m.sender, m.content) for m in box.messages("deploy")]
    assert got == [("alice", "please run the tests"), ("ci", "tests passed")]


def test_clones_that_pull_the_move_to_the_sync_branch_get_their_files_back(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], env=git, check=True)
    a = make_clone(git, origin, tmp_path / "a", "alice")
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
        box.post("t", "committed with the code", sender="alice")
    run_git(git, a.parent, "add", "-A")
    run_git(git, a.parent, "commit", "-q", "-m", "code and mailbox")
    run_git(git, a.parent, "push", "-q", "origin", "main")
    b_work = tmp_path / "b"
    run_git(git, tmp_path, "clone", "-q", str(origin), str(b_work))
    b = b_work / ".mailslot"
    kept = files(b)
    # Alice moves the messages to the sync branch, as docs/sync.md says, and syncs.
    run_git(git, a.parent, "rm", "-r", "-q", "--cached", "--ignore-unmatch", ".mailslot/threads",
            ".mailslot/agents")  # fmt: skip
    (a / ".gitignore").write_text((a / ".gitignore").read_text() + "threads/\nagents/\n")
    run_git(git, a.parent, "add", ".mailslot/.gitignore")
    run_git(git, a.parent, "commit", "-q", "-m", "the mailbox travels on the mailslot branch")
    run_git(git, a.parent, "push", "-q", "origin", "main")
    sync(git, a)
    run_git(git, b_work, "pull", "-q", "origin", "main")  # git deletes the tracked messages
    assert not (b / "threads" / "t" / "000001.json").exists()
    sync(git, b)
    assert files(b) == kept


def test_an_agent_card_both_clones_changed_is_the_remotes(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    with Mailbox(a) as box:
        box.agents.register("reviewer", description="first")
    sync(git, a)
    sync(git, b)
    with Mailbox(a) as box:
        box.agents.register("reviewer", description="alice's edit")
    with Mailbox(b) as box:
        box.agents.register("reviewer", description="bob's edit")
    sync(git, a)
    sync(git, b)
    sync(git, a)
    for root in (a, b):
        with Mailbox(root) as box:
            assert box.agents.card("reviewer").description == "alice's edit"


def test_a_quiet_round_reads_no_file_of_the_mailbox(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    import shutil

    from helpers import require

    if shutil.which("strace") is None:
        require("needs strace to see which files a round opens")
    a = make_clone(git, remote, tmp_path / "a", "alice")
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
        for n in range(20):
            box.post("t", f"m{n}", sender="alice")
    sync(git, a)
    trace = tmp_path / "trace"
    argv = ["strace", "-f", "-e", "trace=open,openat", "-o", str(trace), sys.executable, "-m",
            "mailslot", "sync", "--root", str(a), "--once"]  # fmt: skip
    done = subprocess.run(argv, env=git, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    opened = [ln for ln in trace.read_text().splitlines() if "/threads/" in ln]
    assert not opened, opened[:5]
    with Mailbox(a) as box:  # and a round after a post opens that thread only
        box.post("t", "one more", sender="alice")
    subprocess.run(argv, env=git, capture_output=True, text=True, timeout=120, check=True)
    opened = [
        ln for ln in trace.read_text().splitlines() if "/threads/t/0" in ln and "= -1" not in ln
    ]
    assert opened and all("000021.json" in ln for ln in opened), opened


def test_a_machines_heartbeat_ref_lives_while_its_agents_do(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    from helpers import answer, raw_serve, until

    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    server = raw_serve(a, "planner")
    try:
        answer(server, 1)  # initialized: the name is held, the presence written
        until("planner's presence", lambda: (a / ".state/presence/planner.json").exists())
        sync(git, a)
        refs = run_git(git, remote, "for-each-ref", "--format=%(refname)", "refs/mailslot/")
        assert refs.strip() == f"refs/mailslot/presence/{status(a)['machine']}"
        sync(git, b)
        with Mailbox(b) as box:
            assert box.agents.presence("planner").status in ("online", "waiting", "idle")
    finally:
        server.terminate()
        server.communicate(timeout=30)
    sync(git, a)  # its last agent left: the ref goes, and with it the agent, at once
    assert run_git(git, remote, "for-each-ref", "refs/mailslot/") == ""
    sync(git, b)
    landed = json.loads((b / ".state/presence/planner.json").read_text())
    assert landed["status"] == "offline" and landed["via"] == "sync"


def test_a_burst_of_posts_travels_in_a_few_commits(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    from helpers import until

    a = make_clone(git, remote, tmp_path / "a", "alice")
    fast(a, push_delay_s=0.3)
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
    sync(git, a)
    daemon = start_sync(git, a)
    try:
        with Mailbox(a) as box:
            for n in range(50):
                box.post("t", f"burst {n}", sender="alice")

        def arrived() -> bool:
            names = run_git(git, remote, "ls-tree", "--name-only", "mailslot", "threads/t/")
            return "threads/t/000050.json" in names

        until("the burst on the remote", arrived, within=120)
    finally:
        daemon.terminate()
        daemon.communicate(timeout=60)
    commits = run_git(git, remote, "rev-list", "mailslot", "--", "threads/t/").split()
    assert 2 <= len(commits) < 25, len(commits)  # the thread's record, then the burst
    log = run_git(git, a.parent, "log", "--format=%s", "mailslot", "--", "threads/t")
    assert any(int(line.split(" in t")[0].rsplit(" ", 1)[-1]) > 1 for line in log.splitlines()
               if " in t" in line), log  # fmt: skip


def test_a_thread_that_cannot_be_brought_in_step_waits_alone(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    with Mailbox(a) as box:
        for t in ("t", "u"):
            box.create_thread(t, creator="alice")
            box.post(t, f"{t} 1", sender="alice")
    sync(git, a)
    sync(git, b)
    (b / "threads" / "t" / "000002.json").write_text("{ half writ")  # an editor, a sync tool
    with Mailbox(a) as box:
        box.post("t", "t 2", sender="alice")
        box.post("u", "u 2", sender="alice")
    sync(git, a)
    sync(git, b)  # u goes on; t waits for its file and says so
    with Mailbox(b) as box:
        assert [m.content for m in box.messages("u")] == ["u 1", "u 2"]
    assert "thread t waits" in json.dumps(status(b)["remarks"])
    (b / "threads" / "t" / "000002.json").unlink()  # the person gives up on it
    sync(git, b)
    assert files(b) == files(a)


def test_a_message_changed_on_the_remote_is_not_taken(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    a = make_clone(git, remote, tmp_path / "a", "alice")
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
        box.post("t", "the original", sender="alice")
    sync(git, a)
    kept = files(a)
    # Someone checks the branch out, edits a message and pushes: history says otherwise now.
    edit = tmp_path / "edit"
    run_git(git, tmp_path, "clone", "-q", "-b", "mailslot", str(remote), str(edit))
    path = edit / "threads" / "t" / "000001.json"
    path.write_text(path.read_text().replace("the original", "rewritten"))
    run_git(git, edit, "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q", "-am", "edit")
    run_git(git, edit, "push", "-q", "origin", "mailslot")
    sync(git, a)
    assert files(a) == kept
    assert "which a message never is" in json.dumps(status(a)["remarks"])
