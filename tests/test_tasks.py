"""Tasks in the library and the command: the fold, claims raced by real processes, leases.

The claim is decided by the thread's own order, so these tests read the folder afterwards and
replay it: whatever processes raced, exactly one claim won each round, and everyone agrees.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from helpers import require, until

from mailslot import Mailbox
from mailslot.coordination.board import SYSTEM, event_of
from mailslot.store.errors import NoSuchMessage, NoSuchThread, RootError, StorageError, TaskError
from mailslot.store.format import MESSAGE_KEYS, dumps


def events(box: Mailbox, thread: str, task: int) -> list[tuple[str, str]]:
    """Return (sender, event or type) of every message replying to task, in seq order."""
    return [(m.sender, event_of(m) or m.type) for m in box.messages(thread) if m.reply_to == task]


def test_claim_wins_once_and_answers_who_holds_it(box: Mailbox) -> None:
    seq = box.post("t", "build the docs\nwith details", sender="alice", type="task")
    got = box.tasks.claim("t", seq, agent="bob", pid=os.getpid())
    assert got.won and got.task.holder == "bob" and got.task.attempts == 1
    assert got.until is not None and got.until > time.time() + 250  # the default lease: 300 s
    other = box.tasks.claim("t", seq, agent="carol", pid=os.getpid())
    assert not other.won and other.task.holder == "bob" and other.seq is None
    # On one machine the loser decided under the lock and wrote nothing.
    assert events(box, "t", seq) == [("bob", "claim")]
    again = box.tasks.claim("t", seq, agent="bob", pid=os.getpid())
    assert again.won and again.seq is None  # its own live claim: nothing new to write
    task = box.tasks.task("t", seq)
    assert (task.status, task.title, task.sender) == ("claimed", "build the docs", "alice")


def test_result_closes_and_a_late_result_changes_nothing(box: Mailbox) -> None:
    seq = box.post("t", "task", sender="alice", type="task")
    box.tasks.claim("t", seq, agent="bob", pid=os.getpid())
    first = box.post("t", "done", sender="bob", type="result", reply_to=seq)
    late = box.post("t", "done too", sender="carol", type="result", reply_to=seq)
    task = box.tasks.task("t", seq)
    assert (task.status, task.closed_by, task.done_by) == ("done", first, "bob")
    assert late > first
    with pytest.raises(TaskError, match="is done: bob posted its result at seq"):
        box.tasks.claim("t", seq, agent="carol")


def test_errors_hand_it_out_again_until_dead_and_the_sender_is_told(box: Mailbox) -> None:
    seq = box.post("t", "flaky job", sender="alice", type="task", meta={"max_attempts": 2})
    for n in (1, 2):
        assert box.tasks.claim("t", seq, agent="bob", pid=os.getpid()).won
        box.post("t", f"failed {n}", sender="bob", type="error", reply_to=seq)
    task = box.tasks.task("t", seq)
    assert (task.status, task.failures, task.attempts, task.notified) == ("dead", 2, 2, True)
    notice = [m for m in box.messages("t") if event_of(m) == "dead"]
    assert len(notice) == 1
    assert notice[0].sender == SYSTEM and notice[0].to == ["alice"]
    assert "flaky job" in notice[0].content and "2 of 2 attempts failed" in notice[0].content
    with pytest.raises(TaskError, match="dead after 2 failed attempts; post it again"):
        box.tasks.claim("t", seq, agent="carol")
    assert box.tasks.settle() == []  # told once


def test_an_error_from_someone_else_while_held_is_only_a_remark(box: Mailbox) -> None:
    seq = box.post("t", "task", sender="alice", type="task")
    box.tasks.claim("t", seq, agent="bob", pid=os.getpid())
    box.post("t", "this will never work", sender="carol", type="error", reply_to=seq)
    task = box.tasks.task("t", seq)
    assert (task.status, task.holder, task.failures) == ("claimed", "bob", 0)


def test_release_gives_back_without_failing(box: Mailbox) -> None:
    seq = box.post("t", "task", sender="alice", type="task")
    with pytest.raises(TaskError, match="you do not hold task"):
        box.tasks.release("t", seq, agent="bob")
    box.tasks.claim("t", seq, agent="bob", pid=os.getpid())
    with pytest.raises(TaskError, match="bob holds it"):
        box.tasks.release("t", seq, agent="carol")
    box.tasks.release("t", seq, agent="bob", reason="no time")
    task = box.tasks.task("t", seq)
    assert (task.status, task.failures, task.holder) == ("open", 0, None)
    assert box.tasks.claim("t", seq, agent="carol", pid=os.getpid()).won


def test_a_task_for_named_agents_is_theirs_alone(box: Mailbox) -> None:
    seq = box.post("t", "for bob", sender="alice", type="task", to=["bob"])
    with pytest.raises(TaskError, match="is for bob, not for carol"):
        box.tasks.claim("t", seq, agent="carol")
    assert box.tasks.claim("t", seq, agent="bob").won


def test_bad_claims_say_what_to_do(box: Mailbox, root: Path) -> None:
    note = box.post("t", "just a note", sender="alice")
    with pytest.raises(TaskError, match="is a 'message', not a task"):
        box.tasks.claim("t", note, agent="bob")
    with pytest.raises(NoSuchMessage, match="no message 99"):
        box.tasks.claim("t", 99, agent="bob")
    with pytest.raises(NoSuchThread):
        box.tasks.claim("nope", 1, agent="bob")
    seq = box.post("t", "task", sender="alice", type="task")
    with pytest.raises(TaskError, match="lease_s must be a number of seconds"):
        box.tasks.claim("t", seq, agent="bob", lease_s=0)
    shutil.rmtree(root / "threads" / "t")  # the thread vanished under us
    with pytest.raises(NoSuchThread):
        box.tasks.claim("t", seq, agent="bob")


def test_a_dead_holder_is_reopened_once_however_many_notice(box: Mailbox, root: Path) -> None:
    seq = box.post("t", "task", sender="alice", type="task")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert box.tasks.claim("t", seq, agent="bob", pid=holder.pid).won
        assert box.tasks.settle() == []  # alive: nothing to do
        assert box.tasks.gone(box.tasks.task("t", seq)) is None
    finally:
        holder.kill()
        holder.wait()
    # Four processes notice at once: the thread's lock lets one of them write the reopen.
    code = (
        "import sys; from mailslot import Mailbox; b = Mailbox(sys.argv[1]); "
        "print(len(b.tasks.settle(noticed_by=sys.argv[2])))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(root), f"w{i}"], stdout=subprocess.PIPE)
        for i in range(4)
    ]
    written = sum(int(p.communicate(timeout=60)[0]) for p in procs)
    assert written == 1
    reopen = [m for m in box.messages("t") if event_of(m) == "reopen"]
    assert len(reopen) == 1 and reopen[0].sender == SYSTEM
    assert f"pid {holder.pid}" in reopen[0].content
    assert "failed attempts: 1 of 3" in reopen[0].content
    task = box.tasks.task("t", seq)
    assert (task.status, task.failures) == ("open", 1)


def test_a_silent_holder_loses_the_task_after_its_lease(box: Mailbox) -> None:
    seq = box.post("t", "task", sender="alice", type="task")
    got = box.tasks.claim("t", seq, agent="bob", lease_s=1)  # a person: no process to watch
    assert got.won and got.until is not None
    assert box.tasks.gone(box.tasks.task("t", seq)) is None
    until(
        "the lease ran out", lambda: box.tasks.gone(box.tasks.task("t", seq)) is not None, within=10
    )
    assert "no sign of work for 1 s" in (box.tasks.gone(box.tasks.task("t", seq)) or "")
    [event] = box.tasks.settle(noticed_by="carol")
    assert event_of(event) == "reopen" and event.meta["task"]["noticed_by"] == "carol"
    assert box.tasks.claim("t", seq, agent="carol", pid=os.getpid()).won


def test_a_message_from_the_holder_is_a_sign_of_work(box: Mailbox) -> None:
    seq = box.post("t", "task", sender="alice", type="task")
    box.tasks.claim("t", seq, agent="bob", lease_s=2)
    for _ in range(3):  # 3 s in all, past the lease, but the holder keeps talking
        time.sleep(1)
        box.post("t", "still on it", sender="bob", type="status", reply_to=seq)
        assert box.tasks.gone(box.tasks.task("t", seq)) is None


def test_only_mailslot_can_reopen(box: Mailbox) -> None:
    seq = box.post("t", "task", sender="alice", type="task")
    claim = box.tasks.claim("t", seq, agent="bob", pid=os.getpid()).seq
    box.post("t", "reopen!", sender="carol", type="status", reply_to=seq,
             meta={"task": {"event": "reopen", "claim": claim}})  # fmt: skip
    assert box.tasks.task("t", seq).holder == "bob"


CLAIMER = """
import json, os, sys, time
from pathlib import Path
from mailslot import Mailbox
root, name, tasks, lock, go, done = sys.argv[1:]
box = Mailbox(root, lock=lock == "lock")
print("ready", flush=True)
while not Path(go).exists():
    time.sleep(0.001)
won = [s for s in json.loads(tasks) if box.tasks.claim("t", s, agent=name, pid=os.getpid()).won]
print(json.dumps(won), flush=True)
while not Path(done).exists():  # alive until all have claimed: a dead holder's task is reopened
    time.sleep(0.01)
"""


@pytest.mark.parametrize("lock", ["lock", "nolock"])
def test_processes_racing_for_tasks_each_win_once(box: Mailbox, root: Path, lock: str) -> None:
    """8 processes race for the same 20 tasks; without the lock (as across machines on a
    network mount) losers' claims land in the log too, and the thread's order decides."""
    seqs = [box.post("t", f"task {i}", sender="alice", type="task") for i in range(20)]
    go, done = root.parent / "go", root.parent / "done"
    args = [json.dumps(seqs), lock, str(go), str(done)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(root), f"w{i}", *args],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        go.touch()
        won = {f"w{i}": json.loads(p.stdout.readline()) for i, p in enumerate(procs) if p.stdout}
        done.touch()
        for p in procs:
            assert p.wait(timeout=120) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    claimed = sorted(s for seqs_ in won.values() for s in seqs_)
    assert claimed == seqs  # every task won by exactly one process
    fresh = Mailbox(root)  # a reader that took no part agrees, from the folder alone
    for name, mine in won.items():
        for s in mine:
            assert fresh.tasks.task("t", s).holder == name
            first = next(m for m in fresh.messages("t") if m.reply_to == s)
            assert first.sender == name  # the first claim in the log is the winner's
    claims = [m for m in fresh.messages("t") if event_of(m) == "claim"]
    if lock == "lock":
        assert len(claims) == 20  # decided under the lock: losers wrote nothing


def test_the_board_is_rebuilt_from_the_messages(box: Mailbox, root: Path) -> None:
    seqs = [box.post("t", f"task {i}", sender="alice", type="task") for i in range(3)]
    box.tasks.claim("t", seqs[0], agent="bob", pid=os.getpid())
    box.post("t", "done", sender="bob", type="result", reply_to=seqs[0])
    box.tasks.claim("t", seqs[1], agent="bob", pid=os.getpid())
    box.post("t", "why?", sender="bob", type="question")
    want = {s: (t.status, t.holder) for s, t in box.tasks.board("t").tasks.items()}
    Mailbox(root).tasks.board("t")  # leaves the cache on disk
    shutil.rmtree(root / ".state")
    assert {
        s: (t.status, t.holder) for s, t in Mailbox(root).tasks.board("t").tasks.items()
    } == want
    cache = root / ".state" / "index" / "t.tasks.json"
    Mailbox(root).tasks.board("t")
    for damage in (b"", b"{not json", json.dumps({"seq": 2, "tasks": 5}).encode()):
        if cache.parent.exists():
            cache.write_bytes(damage)
        board = Mailbox(root).tasks.board("t")
        assert {s: (t.status, t.holder) for s, t in board.tasks.items()} == want
        assert [q.title for q in board.questions.values()] == ["why?"]


def test_a_thread_created_again_has_a_new_board(box: Mailbox, root: Path) -> None:
    seq = box.post("t", "old task", sender="alice", type="task")
    box.tasks.claim("t", seq, agent="bob", pid=os.getpid())
    shutil.rmtree(root / "threads" / "t")
    box.create_thread("t", creator="carol")
    assert box.tasks.board("t").tasks == {}
    new = box.post("t", "new task", sender="carol", type="task")
    assert new == seq and box.tasks.task("t", new).status == "open"


def test_a_read_only_folder_lists_tasks_and_refuses_claims(small_fs: Path) -> None:
    box = Mailbox.init(small_fs / "box")
    box.create_thread("t", creator="alice")
    seq = box.post("t", "task", sender="alice", type="task")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    held = box.post("t", "held by a process that is gone", sender="alice", type="task")
    box.tasks.claim("t", held, agent="bob", pid=gone.pid)
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    ro = Mailbox(small_fs / "box")
    assert ro.tasks.task("t", seq).status == "open"
    assert "ended" in (ro.tasks.gone(ro.tasks.task("t", held)) or "")
    with pytest.raises(StorageError, match="not writable.*nothing was stored"):
        ro.tasks.claim("t", seq, agent="bob")
    assert ro.tasks.settle() == []  # cannot record the reopen: says so in the log, once


def test_a_full_disk_stores_no_half_claim(small_fs: Path) -> None:
    box = Mailbox.init(small_fs / "box")
    box.create_thread("t", creator="alice")
    seq = box.post("t", "task", sender="alice", type="task")
    with (small_fs / "filler").open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    with pytest.raises(StorageError, match="no space left.*nothing was stored"):
        box.tasks.claim("t", seq, agent="bob", pid=os.getpid())
    assert box.tasks.task("t", seq).status == "open" and box.head("t") == seq
    (small_fs / "filler").unlink()
    assert box.tasks.claim("t", seq, agent="bob", pid=os.getpid()).won


def test_settings_bound_leases_and_attempts(root: Path) -> None:
    config = root / "mailslot.json"
    doc = json.loads(config.read_text())
    for bad in ({"task_lease_s": 0}, {"task_max_attempts": 0}, {"task_max_attempts": "3"}):
        config.write_text(json.dumps(doc | bad))
        with pytest.raises(RootError, match="task_"):
            Mailbox(root)
    config.write_text(json.dumps(doc | {"task_lease_s": 60, "task_max_attempts": 5}))
    box = Mailbox(root)
    box.create_thread("t", creator="alice")
    seq = box.post("t", "task", sender="alice", type="task")
    got = box.tasks.claim("t", seq, agent="bob")
    assert got.until is not None and 50 < got.until - time.time() <= 60


# ---------------------------------------------------------------------------- the command


def run(root: Path, *args: str, who: str = "bob") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailslot", *args, "--root", str(root)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "MAILSLOT_AGENT": who},
    )  # fmt: skip


def test_the_command_claims_lists_and_closes(box: Mailbox, root: Path) -> None:
    seq = box.post("t", "write the changelog", sender="alice", type="task")
    box.post("t", "which version?", sender="alice", type="question", to=["bob"])
    got = run(root, "claim", "t", str(seq), "--lease", "600")
    assert got.returncode == 0, got.stderr
    assert f"task {seq} is yours" in got.stdout and "--type result --reply-to" in got.stdout
    lost = run(root, "claim", "t", str(seq), who="carol")
    assert lost.returncode == 1 and "bob holds task" in lost.stderr
    board = run(root, "tasks")
    assert "claimed  bob" in board.stdout and "write the changelog" in board.stdout
    assert "which version?" in board.stdout and "tasks: 0 open, 1 claimed" in board.stdout
    closed = run(root, "post", "t", "done", "--type", "result", "--reply-to", str(seq))
    assert closed.returncode == 0, closed.stderr
    doc = json.loads(run(root, "tasks", "t", "--status", "all", "--json").stdout)
    assert [(t["seq"], t["status"], t["result"]) for t in doc["tasks"]] == [
        (seq, "done", int(closed.stdout))
    ]
    assert doc["counts"] == {"open": 0, "claimed": 0, "done": 1, "dead": 0}
    again = run(root, "claim", "t", str(seq), who="carol")
    assert again.returncode == 1 and "is done" in again.stderr
    assert "`mailslot tasks`" in again.stderr


def test_the_command_gives_a_task_back(box: Mailbox, root: Path) -> None:
    seq = box.post("t", "task", sender="alice", type="task")
    assert run(root, "claim", "t", str(seq)).returncode == 0
    refused = run(root, "claim", "t", str(seq), "--release", who="carol")
    assert refused.returncode == 1 and "you do not hold task" in refused.stderr
    back = run(root, "claim", "t", str(seq), "--release", "--json")
    assert json.loads(back.stdout)["released"] is True
    assert box.tasks.task("t", seq).status == "open"
    assert "tasks: 1 open" in run(root, "tasks").stdout
    bad = run(root, "tasks", "nope")
    assert bad.returncode == 1 and "no thread 'nope'" in bad.stderr


def blocked_on(pid: int, lock: Path) -> bool:
    """Tell whether process pid waits for the flock of the file lock (/proc/locks: '->')."""
    inode = os.stat(lock).st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and str(pid) in fields and any(f.endswith(f":{inode}") for f in fields):
            return True
    return False


def test_a_take_back_that_lost_a_race_says_so_and_frees_nothing(box: Mailbox, root: Path) -> None:
    """dave takes bob's claim back, but bob gives it back and claims again while dave's
    command waits for the thread's lock: the command names the claim it saw, so it says the
    task changed hands and stores nothing, rather than report a take-back that frees nothing
    (the event would name a claim no longer current) or one of a claim dave never saw."""
    if not Path("/proc/locks").exists():
        require("needs /proc/locks to see a process wait for a lock")
    seq = box.post("t", "Write the changelog", sender="alice", type="task")  # 1
    assert box.tasks.claim("t", seq, agent="bob").won  # claim 2
    lock = root / ".state" / "locks" / "t.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the thread's writers wait from here
        took = subprocess.Popen(
            [sys.executable, "-m", "mailslot", "claim", "t", str(seq), "--release",
             "--holder", "bob", "--root", str(root), "--as", "dave"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        until("dave's command waits for the lock", lambda: blocked_on(took.pid, lock))
        # Meanwhile bob gives it back and claims it again (written as another machine's
        # mailslot leaves them: this process holds the lock its own writes would wait for).
        for n, event in ((3, "release"), (4, "claim")):
            doc = dict(zip(MESSAGE_KEYS, (
                uuid.uuid4().hex, "bob", [], "status", "normal", seq,
                f"2026-01-01T00:00:{n:02d}.000Z", f"{event} by bob", {"task": {"event": event}},
            ), strict=True))  # fmt: skip
            (root / "threads" / "t" / f"{n:06d}.json").write_bytes(dumps(doc))
    finally:
        os.close(fd)  # lets the command go on
    out, err = took.communicate(timeout=60)
    assert took.returncode == 1 and "changed hands meanwhile" in err, (out, err)
    assert box.head("t") == 4, "the refused take-back stored nothing"
    task = box.tasks.task("t", seq)
    assert (task.status, task.holder, task.claim) == ("claimed", "bob", 4)


def test_a_killed_holder_not_yet_reaped_has_lost_its_task(box: Mailbox) -> None:
    """A zombie (killed, its exit status not yet collected by its parent) is not alive."""
    seq = box.post("t", "task", sender="alice", type="task")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert box.tasks.claim("t", seq, agent="bob", pid=holder.pid).won
        holder.kill()  # not waited for: a zombie until the finally below
        until(
            "the zombie seen as gone", lambda: box.tasks.gone(box.tasks.task("t", seq)) is not None
        )
        assert "ended" in (box.tasks.gone(box.tasks.task("t", seq)) or "")
    finally:
        holder.wait()


def test_an_agent_gets_the_tasks_posted_between_joining_and_its_first_wait(
    box: Mailbox,
) -> None:
    import anyio

    from mailslot.tools import Session

    worker = Session(box, agent="worker")
    worker.thread_create("t")  # joins; its inbox has not looked yet
    seqs = [box.post("t", f"job {i}", sender="alice", type="task") for i in range(3)]
    box.post("t", "for someone else", sender="alice", type="task", to=["bob"])

    async def main() -> None:
        offered = []
        for left in (True, True, False):  # one task for anyone a wait, each once
            got = await worker.msg_wait(timeout_s=1)
            ((seq, status),) = [(m["seq"], m["task"]["status"]) for m in got["messages"]]
            assert status == "open" and got.get("has_more", False) is left, got
            offered.append(seq)
        assert sorted(offered) == seqs
        assert (await worker.msg_wait(timeout_s=0.2))["messages"] == []  # once
        later = box.post("t", "job 3", sender="alice", type="task")
        assert [m["seq"] for m in (await worker.msg_wait(timeout_s=2))["messages"]] == [later]

    try:
        anyio.run(main)
    finally:
        worker.close()


# ------------------------------------------------------- the fold of events as clones leave them


def write_messages(root: Path, thread: str, events: list[tuple[str, str, dict]]) -> None:
    """Write events straight into thread's folder as seqs 1, 2, ... (as a merge of clones,
    `doctor --fix`, or another machine's mailslot leaves them): (sender, what, extra) where
    what is 'task', 'result', 'error' or a task event (claim, release, reopen, dead) replying
    to task 1; extra is the task event's fields (a reopen's claim) or the task's meta."""
    tdir = root / "threads" / thread
    for seq, (sender, what, extra) in enumerate(events, start=1):
        meta: dict = extra if what == "task" else {}
        if what in ("claim", "release", "reopen", "dead"):
            meta = {"task": {"event": what, **extra}}
        doc = dict(zip(MESSAGE_KEYS, (
            uuid.uuid4().hex, sender, [], what if what in ("task", "result", "error") else "status",
            "normal", None if what == "task" else 1, f"2026-01-01T00:00:{seq:02d}.000Z",
            f"{what} by {sender}", meta,
        ), strict=True))  # fmt: skip
        (tdir / f"{seq:06d}.json").write_bytes(dumps(doc))


B, C, D, M = "bob", "carol", "dave", SYSTEM  # dave: a person at the console
#: (rule, the thread's messages in seq order, the task as folded: status, holder, claim,
#: attempts, failures). Each row fails when the rule it names is broken in Board.add.
# fmt: off
FOLDS = [
    ("a reopen of an earlier claim does not end the current holder's",
     [("alice", "task", {}), (B, "claim", {}), (M, "reopen", {"claim": 2}), (C, "claim", {}),
      (M, "reopen", {"claim": 2})],
     ("claimed", C, 4, 2, 1)),
    ("a dead event of an earlier claim does not end the current holder's",
     [("alice", "task", {}), (B, "claim", {}), (M, "reopen", {"claim": 2}), (C, "claim", {}),
      (M, "dead", {"claim": 2})],
     ("claimed", C, 4, 2, 1)),
    ("a reopen of the current claim ends it",
     [("alice", "task", {}), (B, "claim", {}), (M, "reopen", {"claim": 2})],
     ("open", None, None, 1, 1)),
    ("a reopen signed by an agent is not mailslot's",
     [("alice", "task", {}), (B, "claim", {}), (C, "reopen", {"claim": 2})],
     ("claimed", B, 2, 1, 0)),
    ("a release from someone who is not the holder frees nothing",
     [("alice", "task", {}), (B, "claim", {}), (C, "release", {})],
     ("claimed", B, 2, 1, 0)),
    ("the holder's release frees the task without failing it",
     [("alice", "task", {}), (B, "claim", {}), (B, "release", {})],
     ("open", None, None, 1, 0)),
    ("a person's take-back of the current claim frees the task without failing it",
     [("alice", "task", {}), (B, "claim", {}), (D, "release", {"holder": B, "claim": 2})],
     ("open", None, None, 1, 0)),
    ("a take-back counts only for the claim it names, not the holder's next one",
     [("alice", "task", {}), (B, "claim", {}), (B, "release", {}), (B, "claim", {}),
      (D, "release", {"holder": B, "claim": 2})],
     ("claimed", B, 4, 2, 0)),
    ("a take-back naming another holder than the claim's frees nothing",
     [("alice", "task", {}), (B, "claim", {}), (D, "release", {"holder": C, "claim": 2})],
     ("claimed", B, 2, 1, 0)),
    ("when the last attempt is lost the task is dead, not open",
     [("alice", "task", {"max_attempts": 2}), (B, "claim", {}), (M, "reopen", {"claim": 2}),
      (C, "claim", {}), (M, "reopen", {"claim": 4})],
     ("dead", None, None, 2, 2)),
    ("of two claims the first by seq wins",
     [("alice", "task", {}), (C, "claim", {}), (B, "claim", {})],
     ("claimed", C, 2, 1, 0)),
    ("a claim moved past the result by a merge is void",
     [("alice", "task", {}), (B, "claim", {}), (B, "result", {}), (C, "claim", {})],
     ("done", None, None, 1, 0)),
    ("an error from someone else while it is held is a remark",
     [("alice", "task", {}), (B, "claim", {}), (C, "error", {})],
     ("claimed", B, 2, 1, 0)),
    ("an error from anyone while nobody holds it is a failed attempt",
     [("alice", "task", {"max_attempts": 2}), (C, "error", {}), (B, "claim", {}),
      (B, "release", {}), (C, "error", {})],
     ("dead", None, None, 1, 2)),
]
# fmt: on


@pytest.mark.parametrize(("rule", "events", "want"), FOLDS, ids=[r for r, _, _ in FOLDS])
def test_the_fold_of_events_as_clones_leave_them(
    root: Path, rule: str, events: list[tuple[str, str, dict]], want: tuple
) -> None:
    Mailbox(root).create_thread("t", creator="alice")
    write_messages(root, "t", events)
    task = Mailbox(root).tasks.board("t").tasks[1]  # a reader that took no part: the folder alone
    assert (task.status, task.holder, task.claim, task.attempts, task.failures) == want, rule


def test_a_lost_claim_leaves_the_holders_process_and_lease(root: Path) -> None:
    """A second claim, from another agent's process, loses and changes nothing of the hold:
    its pid, host and lease are not the holder's (or the holder would be judged by them)."""
    Mailbox(root).create_thread("t", creator="alice")
    write_messages(root, "t", [
        ("alice", "task", {}),
        (C, "claim", {"pid": 1111, "host": "carols-box", "lease_s": 600}),
        (B, "claim", {"pid": 2222, "host": "bobs-box", "lease_s": 5}),
    ])  # fmt: skip
    task = Mailbox(root).tasks.board("t").tasks[1]
    assert (task.holder, task.pid, task.host, task.claim_lease_s) == (C, 1111, "carols-box", 600)


def test_a_stale_dead_event_does_not_count_as_the_senders_notice(root: Path) -> None:
    """A dead event of an earlier claim leaves the task held; when the task dies later, its
    sender has not been told yet (that stale event told nothing), so a dead notice is owed."""
    Mailbox(root).create_thread("t", creator="alice")
    write_messages(root, "t", [
        ("alice", "task", {"max_attempts": 2}), (B, "claim", {}), (M, "reopen", {"claim": 2}),
        (C, "claim", {}), (M, "dead", {"claim": 2}), (M, "reopen", {"claim": 4}),
    ])  # fmt: skip
    task = Mailbox(root).tasks.board("t").tasks[1]
    assert (task.status, task.failures, task.notified) == ("dead", 2, False)


def test_the_last_attempt_lost_is_a_dead_notice_to_the_sender(box: Mailbox) -> None:
    """A holder that loses the last attempt is not reopened: the task is dead, and the event
    that says so goes to the task's sender, not to the agents it was for."""
    seq = box.post("t", "once", sender="alice", type="task", to=["bob"], meta={"max_attempts": 1})
    assert box.tasks.claim("t", seq, agent="bob", lease_s=1).won  # a person's: lasts its lease
    until(
        "the lease ran out", lambda: box.tasks.gone(box.tasks.task("t", seq)) is not None, within=10
    )
    [event] = box.tasks.settle(noticed_by="carol")
    assert event_of(event) == "dead" and event.sender == SYSTEM
    assert (event.to, event.priority) == (["alice"], "high")
    assert "is dead: bob lost it" in event.content and "post it again" in event.content
    task = box.tasks.task("t", seq)
    assert (task.status, task.failures, task.notified) == ("dead", 1, True)
    assert box.tasks.settle() == []  # told once
