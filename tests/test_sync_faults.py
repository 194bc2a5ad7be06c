"""`mailslot sync` under faults and against a hostile remote (issue 29), with real git.

Every clone is a git checkout with its mailbox at `.mailslot/`, the remote a bare repository on
disk, and every sync a separate `mailslot sync` process. Each fault ends the same way: every
message present once on every clone (no id missing, none twice), and the fault said in words
in `mailslot sync --status` (and its --json).
"""

from __future__ import annotations

import base64
import calendar
import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import mount_tmpfs
from helpers import run_git, until
from test_sync import files, make_clone, status, sync

from mailslot import Mailbox
from mailslot.store.format import max_message_file_bytes
from mailslot.store.settings import DEFAULT_MAX_CONTENT as MAX

#: A remote's messages a note from sync stands in for carry this id prefix (one per clone).
NOTE = "doctor-"


@pytest.fixture
def remote(tmp_path: Path, git: dict[str, str]) -> Path:
    path = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(path)], env=git, check=True)
    return path


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Return a list the test adds its long-running processes to; they are ended after it."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()


def start_sync(env: dict[str, str], root: Path, *args: str) -> subprocess.Popen[str]:
    """Start `mailslot sync` (continuous, or with args) in a process group of its own."""
    argv = [sys.executable, "-m", "mailslot", "sync", "--root", str(root), *args]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip


def settings(root: Path, **sync_values: float) -> None:
    """Set root's "sync" settings in mailslot.json (quick looks, for a test that waits)."""
    path = root / "mailslot.json"
    doc = json.loads(path.read_text())
    doc["sync"] = {**doc.get("sync", {}), **sync_values}
    path.write_text(json.dumps(doc))


def post(root: Path, thread: str, *texts: str, sender: str = "alice") -> list[str]:
    """Post texts to thread (made if new) on root's mailbox; return the messages' ids."""
    with Mailbox(root) as box:
        if thread not in {t.id for t in box.threads()}:
            box.create_thread(thread, creator=sender)
        return [box.get(thread, box.post(thread, text, sender=sender)).id for text in texts]


def threads(root: Path) -> dict[str, list[tuple[int, str]]]:
    """Return {thread: [(seq, id)]} read from every message file, failing on one unreadable."""
    out: dict[str, list[tuple[int, str]]] = {}
    for tdir in sorted((root / "threads").iterdir()):
        got = []
        for path in sorted(tdir.glob("[0-9]*.json")):
            data = path.read_bytes()
            assert data, f"{path} is empty"
            got.append((int(path.stem), json.loads(data)["id"]))
        out[tdir.name] = got
    return out


def every_message_once(roots: list[Path], posted: set[str]) -> dict[str, list[str]]:
    """Assert every message posted is on every clone once, in the same order everywhere.

    Return {thread: [id in seq order]} (notes sync wrote for the remote's unreadable files are
    shown as NOTE: each clone writes its own).
    """
    seen = []
    for root in roots:
        order = {}
        for thread, msgs in threads(root).items():
            seqs = [s for s, _ in msgs]
            assert seqs == list(range(1, len(seqs) + 1)), f"{root}: {thread} has gaps: {seqs}"
            order[thread] = [NOTE if i.startswith(NOTE) else i for _, i in msgs]
        ids = [i for got in order.values() for i in got if i != NOTE]
        twice = [i for i, n in collections.Counter(ids).items() if n > 1]
        assert not twice, f"{root}: messages present twice: {twice}"
        assert not posted - set(ids), f"{root}: messages missing: {posted - set(ids)}"
        seen.append(order)
    assert all(order == seen[0] for order in seen), f"clones differ: {seen}"
    return seen[0]


def said(env: dict[str, str], root: Path) -> tuple[str, dict]:
    """Return what `mailslot sync --status` says, in words and as JSON."""
    return sync(env, root, "--status"), json.loads(sync(env, root, "--status", "--json"))


def branch(env: dict[str, str], remote: Path) -> str:
    """Return the remote's mailslot branch tip ("" if it has none)."""
    done = subprocess.run(["git", "-C", str(remote), "rev-parse", "--verify", "-q", "mailslot"],
                          env=env, capture_output=True, text=True)  # fmt: skip
    return done.stdout.strip()


def began(doc: dict) -> float:
    """Return when the last round began (its status stamp, to the second)."""
    return calendar.timegm(time.strptime(doc["last_round"], "%Y-%m-%dT%H:%M:%SZ"))


# -- 1. the remote unreachable for a while ---------------------------------------------------


def test_posts_queue_while_the_remote_is_away_and_flow_in_order_when_it_is_back(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    posted = post(a, "t", "before")
    sync(git, a)
    sync(git, b)
    away = remote.with_name("away.git")
    os.rename(remote, away)
    queued = post(a, "t", "one", "two", "three") + post(a, "u", "four")
    out = sync(git, a, "--once", ok=False)
    assert "git ls-remote failed" in out and "Could not read from remote repository" in out
    words, doc = said(git, a)
    assert "waiting to be pushed: 4 message(s)" in words
    assert "last error" in words and "the repository exists" in words
    assert doc["pending"] == 4 and "ls-remote failed" in doc["last_error"]
    os.rename(away, remote)
    sync(git, a)  # one round: everything queued goes
    words, doc = said(git, a)
    assert "waiting to be pushed: 0 message(s)" in words and "last error" not in words
    assert doc["pending"] == 0 and doc["last_error"] is None
    sync(git, b)
    order = every_message_once([a, b], {*posted, *queued})
    assert order == {"t": [*posted, *queued[:3]], "u": queued[3:]}
    assert files(a) == files(b)


def test_a_running_sync_recovers_by_itself_when_the_remote_comes_back(
    tmp_path: Path, git: dict[str, str], remote: Path, procs: list[subprocess.Popen[str]]
) -> None:
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    settings(a, look_s=0.2, max_look_s=1)
    posted = post(a, "t", "before")
    daemon = start_sync(git, a)
    procs.append(daemon)
    until("the sync pushed", lambda: branch(git, remote) != "", within=60)
    until("the sync is in step", lambda: status(a).get("pending") == 0, within=60)
    away = remote.with_name("away.git")
    os.rename(remote, away)
    queued = post(a, "t", "one", "two")
    at = time.time()
    until("the sync says the remote is away",
          lambda: "ls-remote failed" in (status(a).get("last_error") or ""), within=60)  # fmt: skip
    until("the sync counts what waits", lambda: status(a).get("pending") == 2, within=60)
    # It tries again on its own clock (well after the posts' file events woke it).
    until("the sync tries again", lambda: began(status(a)) >= at + 2, within=60)
    words, _ = said(git, a)
    assert f"sync: running (pid {daemon.pid})" in words and "waiting to be pushed: 2" in words
    os.rename(away, remote)
    until("the sync recovered",
          lambda: status(a).get("last_error") is None and status(a).get("pending") == 0,
          within=60)  # fmt: skip
    assert daemon.poll() is None  # the same process, never restarted
    sync(git, b)
    assert every_message_once([a, b], {*posted, *queued}) == {"t": [*posted, *queued]}


# -- 2. sync SIGKILLed mid-push and mid-fetch ------------------------------------------------

GATE = """\
#!{python} -I
# A slow remote: while {block} exists, the git command that runs this (one whose arguments
# hold each of {words}, as a word or a side of a refspec) waits before {command} serves it.
import json, os, sys, time

def chain():
    pid, out = os.getppid(), []
    while pid > 1:
        try:
            argv = open(f"/proc/{{pid}}/cmdline", "rb").read().decode().split("\\0")
            stat = open(f"/proc/{{pid}}/stat").read()
        except OSError:
            break
        if os.path.basename(argv[0]) not in ("git", "sh", "dash", "bash"):
            break
        out.append((pid, argv))
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return out

def holds(word, argv):
    return any(word in (a, *a.lstrip("+").split(":")) for a in argv[1:])

gits = [argv for _, argv in chain() if os.path.basename(argv[0]) == "git"]
if os.path.exists({block!r}) and any(all(holds(w, a) for w in {words!r}) for a in gits):
    with open({waiting!r} + ".tmp", "w") as f:
        json.dump([os.getpid(), *(p for p, _ in chain())], f)
    os.rename({waiting!r} + ".tmp", {waiting!r})
    while os.path.exists({block!r}):
        time.sleep(0.02)
os.execvp("git", ["git", {command!r}, *sys.argv[1:]])
"""


class Gate:
    """A remote made slow for one clone: git's receive-pack or upload-pack waits at a gate."""

    def __init__(self, env: dict[str, str], clone: Path, command: str, *words: str) -> None:
        self.block = clone / f"{command}.block"
        self.waiting = clone / f"{command}.waiting"
        script = clone / f"slow-{command}"
        script.write_text(GATE.format(python=sys.executable, block=str(self.block),
                                      waiting=str(self.waiting), words=list(words),
                                      command=command))  # fmt: skip
        script.chmod(0o755)
        key = "receivepack" if command == "receive-pack" else "uploadpack"
        run_git(env, clone, "config", f"remote.origin.{key}", str(script))

    def hold(self) -> None:
        self.block.touch()

    def held(self) -> list[int]:
        """Wait until git waits at the gate; return the pids of the git processes waiting."""
        until("git waits at the gate", self.waiting.exists, within=60)
        return list(json.loads(self.waiting.read_text()))

    def release(self, pids: list[int]) -> None:
        """Open the gate and wait until the processes that waited at it are gone."""
        self.block.unlink()
        until("git that waited at the gate ended", lambda: not any(map(alive, pids)), within=60)
        self.waiting.unlink()


def alive(pid: int) -> bool:
    """Return True if pid runs (a zombie nobody reaped does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill(proc: subprocess.Popen[str], how: str) -> None:
    """SIGKILL the sync alone (its git goes on, orphaned) or with its git (its process group)."""
    if how == "alone":
        proc.kill()
    else:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("how", ["alone", "with its git"])
def test_a_sync_killed_mid_push_loses_nothing_and_doubles_nothing(
    tmp_path: Path, git: dict[str, str], remote: Path, procs: list[subprocess.Popen[str]],
    how: str,
) -> None:  # fmt: skip
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    first = post(a, "t", "first")
    sync(git, a)
    sync(git, b)
    mine = post(a, "t", "a1", "a2") + post(a, "u", "a3")
    theirs = post(b, "t", "b1", sender="bob")  # the same seq as a1, not pushed yet
    gate = Gate(git, a.parent, "receive-pack", "push", "refs/heads/mailslot")
    gate.hold()
    before = branch(git, remote)
    proc = start_sync(git, a, "--once")
    procs.append(proc)
    pids = gate.held()
    kill(proc, how)
    assert status(a)["pending"] == 3
    gate.release(pids)
    if how == "alone":  # the orphaned push went through: its answer was lost
        assert branch(git, remote) != before
    else:
        assert branch(git, remote) == before
    sync(git, a)
    sync(git, b)
    sync(git, a)
    order = every_message_once([a, b], {*first, *mine, *theirs})
    assert order == {"t": [*first, *mine[:2], *theirs], "u": mine[2:]}
    assert files(a) == files(b)
    for root in (a, b):
        words, doc = said(git, root)
        assert "waiting to be pushed: 0 message(s)" in words and "last error" not in words
        assert doc["pending"] == 0 and doc["last_error"] is None


@pytest.mark.parametrize("how", ["alone", "with its git"])
def test_a_sync_killed_mid_fetch_loses_nothing_and_doubles_nothing(
    tmp_path: Path, git: dict[str, str], remote: Path, procs: list[subprocess.Popen[str]],
    how: str,
) -> None:  # fmt: skip
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    first = post(a, "t", "first")
    sync(git, a)
    sync(git, b)
    fresh = post(a, "t", "a1", "a2") + post(a, "u", "a3")
    sync(git, a)
    theirs = post(b, "t", "b1", sender="bob")  # the same seq as a1, not pushed yet
    gate = Gate(git, b.parent, "upload-pack", "fetch", "refs/heads/mailslot")
    gate.hold()
    proc = start_sync(git, b, "--once")
    procs.append(proc)
    pids = gate.held()
    kill(proc, how)
    gate.release(pids)
    assert threads(b) == {"t": [(1, first[0]), (2, theirs[0])]}  # nothing landed yet
    sync(git, b)
    sync(git, a)
    order = every_message_once([a, b], {*first, *fresh, *theirs})
    assert order == {"t": [*first, *fresh[:2], *theirs], "u": fresh[2:]}
    assert files(a) == files(b)
    for root in (a, b):
        words, doc = said(git, root)
        assert "waiting to be pushed: 0 message(s)" in words and "last error" not in words
        assert doc["pending"] == 0 and doc["last_error"] is None


# -- 3. two syncs started on one machine for one root ----------------------------------------


def waits_for(pid: int, lock: Path) -> bool:
    """Return True if process pid is blocked waiting for the flock of file lock (/proc/locks)."""
    inode = str(os.stat(lock).st_ino)
    for line in Path("/proc/locks").read_text().splitlines():
        f = line.split()  # "1: -> FLOCK ADVISORY WRITE <pid> <dev>:<inode> 0 EOF" for a waiter
        if f[1] == "->" and f[5] == str(pid) and f[6].split(":")[-1] == inode:
            return True
    return False


def test_a_second_sync_of_one_root_stops_and_a_once_waits_for_the_round(
    tmp_path: Path, git: dict[str, str], remote: Path, procs: list[subprocess.Popen[str]]
) -> None:
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    settings(a, look_s=0.2, max_look_s=1)
    first = post(a, "t", "first")
    daemon = start_sync(git, a)
    procs.append(daemon)
    until("the sync pushed", lambda: branch(git, remote) != "", within=60)
    until("the sync runs", lambda: status(a).get("pid") == daemon.pid, within=60)
    second = start_sync(git, a)
    procs.append(second)
    out, err = second.communicate(timeout=120)
    assert second.returncode != 0
    assert f"another sync of {a} runs on this machine (pid {daemon.pid})" in err
    gate = Gate(git, a.parent, "receive-pack", "push", "refs/heads/mailslot")
    gate.hold()
    posted = post(a, "t", "one")
    pids = gate.held()  # the running sync is mid-round, pushing
    once = start_sync(git, a, "--once")
    procs.append(once)
    lock = a / ".state" / "sync" / "round.lock"
    until("the --once waits for the round lock", lambda: waits_for(once.pid, lock), within=60)
    more = post(a, "u", "two")
    gate.release(pids)
    out, err = once.communicate(timeout=120)
    assert once.returncode == 0, out + err
    assert "in step with origin" in out
    until("the running sync is in step",
          lambda: status(a).get("pending") == 0 and status(a).get("last_error") is None,
          within=60)  # fmt: skip
    assert daemon.poll() is None
    words, doc = said(git, a)
    assert f"sync: running (pid {daemon.pid})" in words and doc["pid"] == daemon.pid
    sync(git, b)
    assert every_message_once([a, b], {*first, *posted, *more}) == {
        "t": [*first, *posted],
        "u": more,
    }


# -- 4. the disk full during a fetch ---------------------------------------------------------


def fill(folder: Path, leave: int) -> Path:
    """Fill folder's file system but for about leave bytes; return the file that fills it."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        for chunk in (b"\0" * (1 << 20), b"\0" * (1 << 12)):
            with contextlib.suppress(OSError):
                while os.write(fd, chunk):
                    pass
    finally:
        os.close(fd)
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))
    return filler


@pytest.mark.parametrize("full", ["before the fetch", "while landing"])
def test_a_full_disk_lands_nothing_half_and_everything_once_there_is_room(
    tmp_path: Path, git: dict[str, str], remote: Path, full: str
) -> None:
    mnt = tmp_path / "small"
    mount_tmpfs(mnt, "8m")  # the receiving clone, its .git and its mailbox, on a small disk
    try:
        a = make_clone(git, remote, tmp_path / "a", "alice")
        b = make_clone(git, remote, mnt / "b", "bob")
        first = post(a, "t", "first")
        sync(git, a)
        sync(git, b)
        if full == "before the fetch":  # the pack does not fit: nothing is fetched
            texts = [base64.b64encode(os.urandom(48_000)).decode() for _ in range(8)]
            leave = 0
        else:  # the pack fits (it compresses well), the message files do not
            texts = [f"{n} " + "all work and no play " * 3000 for n in range(30)]
            leave = 512 * 1024
        half = len(texts) // 2
        big = post(a, "t", *texts[:half]) + post(a, "u", *texts[half:])
        sync(git, a)
        mine = post(b, "t", "b1", sender="bob")  # b's own, not pushed yet
        filler = fill(mnt, leave)
        out = sync(git, b, "--once", ok=False)
        assert "No space left on device" in out
        words, doc = said(git, b)
        assert "last error" in words and "No space left on device" in doc["last_error"]
        theirs = files(a)
        landed = 0
        for path in sorted((b / "threads").rglob("*")):  # nothing half-landed
            if path.is_dir():
                continue
            rel = str(path.relative_to(b))
            assert path.name == "thread.json" or path.name[:-5].isdigit(), rel
            if json.loads(path.read_bytes())["id"] in {*first, *mine}:
                continue
            assert path.read_bytes() == theirs[rel], f"{rel} is not the remote's file"
            landed += path.name != "thread.json"
        got = threads(b)
        for thread, msgs in got.items():
            assert [s for s, _ in msgs] == list(range(1, len(msgs) + 1)), f"a gap in {thread}"
        if full == "before the fetch":
            assert got == {"t": [(1, first[0]), (2, mine[0])]}
        else:  # some landed, whole and in order, before the disk was full
            assert 0 < landed < len(big)
        filler.unlink()
        sync(git, b)
        sync(git, a)
        assert every_message_once([a, b], {*first, *big, *mine}) == {
            "t": [*first, *big[:half], *mine],
            "u": big[half:],
        }
        assert files(a) == files(b)
        words, doc = said(git, b)
        assert "waiting to be pushed: 0 message(s)" in words and "last error" not in words
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# -- 5. a push rejected by a branch protection rule ------------------------------------------


def test_a_push_a_hook_refuses_waits_with_the_hooks_words_and_goes_once_it_is_lifted(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    first = post(a, "t", "first")
    sync(git, a)
    sync(git, b)
    hook = remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\nwhile read old new ref; do\n"
                    '  [ "$ref" = refs/heads/mailslot ] && '
                    "echo 'GH006: Protected branch update failed for refs/heads/mailslot.' >&2 "
                    "&& exit 1\ndone\nexit 0\n")  # fmt: skip
    hook.chmod(0o755)
    held = post(a, "t", "one", "two")
    out = sync(git, a, "--once", ok=False)
    assert "GH006: Protected branch update failed" in out
    words, doc = said(git, a)
    assert "waiting to be pushed: 2 message(s)" in words and doc["pending"] == 2
    error = doc["last_error"]
    assert "the remote refused the push to mailslot" in error
    assert "GH006: Protected branch update failed" in error
    assert "allow pushes to it" in error and "waits here" in error
    assert f"last error ({doc['error_at']}): {error}" in words
    sync(git, a, "--once", ok=False)  # still refused: nothing is lost or doubled meanwhile
    assert status(a)["pending"] == 2
    hook.unlink()
    sync(git, a)
    words, doc = said(git, a)
    assert "waiting to be pushed: 0 message(s)" in words and "last error" not in words
    sync(git, b)
    assert every_message_once([a, b], {*first, *held}) == {"t": [*first, *held]}
    assert files(a) == files(b)


# -- 6. a hostile remote ----------------------------------------------------------------------

#: What a hostile commit on the remote's branch holds beside good messages, and why it is bad.
REFUSED = [
    "threads/t/000002.json",  # a symlink to /etc/passwd
    "threads/t/000005.json",  # over the size limit
    "threads/t/000006.json",  # a submodule
    "threads/t/000008.json",  # a symlink whose target reads as a message
    "hooks/post-checkout",
    ".state/presence/x.json",
    "mailslot.json",
    "threads/Bad Name/000001.json",
    "threads/t/01.json",
    "threads/t/0000003.json",  # seq 3 by another name
    "threads/..x/000001.json",
    "threads/t2/thread.json",  # the record of another thread
    "agents/mallory.json",  # the card of another agent
]


def message_files(tmp_path: Path, *texts: str) -> list[bytes]:
    """Return message files as a writer makes them (from mallory, in a scratch mailbox)."""
    with Mailbox.init(tmp_path / "scratch") as box:
        box.create_thread("s", creator="mallory")
        seqs = [box.post("s", text, sender="mallory") for text in texts]
    return [(tmp_path / "scratch" / "threads" / "s" / f"{s:06d}.json").read_bytes() for s in seqs]


def fast_import(
    env: dict[str, str], repo: Path, tip: str, entries: list[tuple[str, str, bytes]]
) -> str:
    """Commit entries (mode, path, bytes; for a submodule the commit id) over tip; return it."""
    out = [b"commit refs/heads/mailslot\n", b"committer M <m@evil.example> 1700000000 +0000\n",
           b"data 8\nhostile\n", f"from {tip}\n".encode()]  # fmt: skip
    for mode, path, data in entries:
        if mode == "160000":
            out.append(f"M {mode} {data.decode()} {path}\n".encode())
        else:
            out += [f"M {mode} inline {path}\n".encode(), b"data %d\n" % len(data), data, b"\n"]
    out.append(b"done\n")
    subprocess.run(["git", "-C", str(repo), "fast-import", "--quiet", "--done"], env=env,
                   input=b"".join(out), check=True, capture_output=True)  # fmt: skip
    return branch(env, repo)


def presence_ref(env: dict[str, str], repo: Path, name: str, blob: str) -> None:
    """Point refs/mailslot/presence/<name> at a commit whose presence.json is blob."""
    tree = subprocess.run(["git", "-C", str(repo), "mktree"], env=env, check=True, text=True,
                          input=f"100644 blob {blob}\tpresence.json\n",
                          capture_output=True).stdout.strip()  # fmt: skip
    commit = run_git(env, repo, "-c", "user.name=m", "-c", "user.email=m@evil.example",
                     "commit-tree", tree, "-m", "x").strip()  # fmt: skip
    run_git(env, repo, "update-ref", f"refs/mailslot/presence/{name}", commit)


def blob(env: dict[str, str], repo: Path, path: Path) -> str:
    return run_git(env, repo, "hash-object", "-w", str(path)).strip()


def sync_rss(env: dict[str, str], root: Path, tmp_path: Path) -> tuple[int, str, int]:
    """Run `mailslot sync --once`; return its exit code, its output and the peak memory of the
    sync process itself (bytes): its VmHWM, read until it exits. Not its git children's, whose
    peaks wait4 would fold in: git's own streaming of a big blob is git's business."""
    argv = [sys.executable, "-m", "mailslot", "sync", "--root", str(root), "--once"]
    peak = 0
    with open(tmp_path / "sync.out", "w+") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=out)
        while proc.poll() is None:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) * 1024)  # kB
            time.sleep(0.005)
        out.seek(0)
        return proc.returncode, out.read(), peak


def outside(tmp_path: Path) -> set[str]:
    """Return every path under tmp_path but the clones' git and mailbox folders and the remote."""
    skip = {".git", ".mailslot", "remote.git", "scratch", "sync.out"}
    return {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
            if not skip & set(p.relative_to(tmp_path).parts)}  # fmt: skip


def test_a_hostile_remote_lands_only_good_files_and_never_stops_the_other_threads(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    c = make_clone(git, remote, tmp_path / "c", "carol")
    with Mailbox(a) as box:
        box.agents.register("alice")
    first = post(a, "t", "one")
    for root in (a, b, c):
        sync(git, root)
    good = message_files(tmp_path, "hello from mallory", "and again", "a link")
    record = json.loads((a / "threads" / "t" / "thread.json").read_bytes())
    card = json.loads((a / "agents" / "alice.json").read_bytes())
    marker = tmp_path / "a-hook-ran"
    tip = branch(git, remote)
    fast_import(git, remote, tip, [
        ("120000", "threads/t/000002.json", b"/etc/passwd"),
        ("100644", "threads/t/000003.json", good[0]),
        ("100644", "threads/t/000004.json", b"not json {"),
        ("100644", "threads/t/000005.json", b" " * max_message_file_bytes(MAX) + good[0]),
        ("160000", "threads/t/000006.json", tip.encode()),
        ("100644", "threads/t/000007.json", good[1]),
        ("120000", "threads/t/000008.json", good[2]),
        ("100755", "hooks/post-checkout", f"#!/bin/sh\ntouch {marker}\n".encode()),
        ("100644", ".state/presence/x.json", b'{"host": "evil"}\n'),
        ("100644", "mailslot.json", b'{"format": 1, "fsync": false}\n'),
        ("100644", "threads/Bad Name/000001.json", good[0]),
        ("100644", "threads/t/01.json", good[0]),
        ("100644", "threads/t/0000003.json", good[1]),
        ("100644", "threads/..x/000001.json", good[0]),
        ("100644", "threads/t2/thread.json", json.dumps({**record, "id": "other"}).encode()),
        ("100644", "agents/mallory.json", json.dumps({**card, "name": "alice"}).encode()),
    ])  # fmt: skip
    huge = tmp_path / "huge"
    with open(huge, "wb") as f:
        f.truncate(256 << 20)  # a heartbeat of 256 MiB (of zeros: small once packed)
    presence_ref(git, remote, "evil", blob(git, remote, huge))
    huge.unlink()
    junk = tmp_path / "junk"
    junk.write_bytes(b"\0 not a heartbeat {")
    presence_ref(git, remote, "junk", blob(git, remote, junk))
    run_git(git, remote, "update-ref", "refs/mailslot/presence/bare", blob(git, remote, junk))
    junk.unlink()
    before = outside(tmp_path)
    settings_before = (b / "mailslot.json").read_bytes()
    carols = post(c, "other", "from carol", sender="carol")
    sync(git, c)  # carol takes the hostile commit too, and pushes over it
    mine = post(b, "t", "b1", sender="bob")
    # git streams a blob this big, here and in the remote's upload-pack (a child of the fetch
    # on a local path): the peak measured is sync's own
    for repo in (b.parent, remote):
        run_git(git, repo, "config", "core.bigFileThreshold", "1m")
    code, out, peak = sync_rss(git, b, tmp_path)
    assert code == 0, out
    assert peak < 160 << 20, f"sync read the 256 MiB heartbeat into memory ({peak >> 20} MiB)"
    sync(git, b)  # a second round remarks nothing again
    carols += post(c, "other", "carol again", sender="carol")
    sync(git, c)
    sync(git, b)  # the other thread still flows
    sync(git, a)
    shutil.rmtree(c / "threads" / "t")  # a `git clean` here: what comes back is checked too
    sync(git, c)
    g = [json.loads(m)["id"] for m in good[:2]]
    order = every_message_once([a, b, c], {*first, *g, *mine, *carols})
    assert order == {
        "t": [*first, NOTE, g[0], NOTE, NOTE, NOTE, g[1], NOTE, *mine],
        "other": carols,
    }
    for root in (a, b, c):
        with Mailbox(root) as box:  # readers never stall on the refused seqs
            page = box.read("t")
            assert page.pending is None and not page.skipped
            assert [m.seq for m in page.messages] == list(range(1, 10))
            notes = [m for m in page.messages if m.id.startswith(NOTE)]
            assert [(m.seq, m.meta.get("sync")) for m in notes] == [
                (2, "skipped"),
                (4, "skipped"),
                (5, "skipped"),
                (6, "skipped"),
                (8, "skipped"),
            ]
        assert not (root / "threads" / "t" / "000002.json").is_symlink()
        assert not any(p.is_symlink() for p in root.rglob("*"))
        assert {p.name for p in (root / "threads").iterdir()} == {"t", "other"}
        assert {p.name for p in (root / "threads" / "t").iterdir()} == {
            "thread.json",
            *(f"{s:06d}.json" for s in range(1, 10)),
        }
        assert (
            not (root / "hooks").exists() and not (root / ".state" / "presence" / "x.json").exists()
        )
        assert json.loads((root / "agents" / "alice.json").read_bytes())["name"] == "alice"
        assert not (root / "agents" / "mallory.json").exists()
        assert not (root.parent / "hooks").exists()
    assert (b / "mailslot.json").read_bytes() == settings_before
    assert not marker.exists()  # no hook ran
    assert outside(tmp_path) == before  # nothing written outside the roots
    passwd = Path("/etc/passwd").read_bytes()
    assert not any(passwd in p.read_bytes() for p in b.rglob("*.json") if p.is_file())
    words, doc = said(git, b)
    assert doc["last_error"] is None and doc["pending"] == 0 and "remarks:" in words
    texts = [r["text"] for r in doc["remarks"]]
    for path in [*REFUSED, "threads/t/000004.json"]:
        said_of = [t for t in texts if t.startswith((f"skipped {path} ", f"skipped {path}:"))]
        assert len(said_of) == 1, f"{path}: {said_of}"
    for machine in ("evil", "junk", "bare"):
        assert sum(f"machine {machine}'s heartbeat" in t for t in texts) == 1, texts


def test_a_heartbeat_nested_past_any_parser_is_remarked_not_a_crash(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    a = make_clone(git, remote, tmp_path / "a", "alice")
    post(a, "t", "one")
    deep = tmp_path / "deep"
    deep.write_bytes(
        b'{"machine": "x", "at": 1, "agents": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    )
    presence_ref(git, remote, "deep", blob(git, remote, deep))
    out = sync(git, a)  # a round that takes it ends well, and pushes what it has
    assert "Traceback" not in out
    assert "machine deep's heartbeat is unreadable" in json.dumps(status(a)["remarks"])
    assert "threads/t/000001.json" in run_git(git, remote, "ls-tree", "-r", "--name-only",
                                              "mailslot")  # fmt: skip
