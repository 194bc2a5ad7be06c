"""Watches you can trust: the watch follows the folder, sees foreign writers finish, and says so
when the kernel refuses it.

Every waiter here is a separate process blocked in Mailbox.wait over a real folder; the folder
is changed by real git checkouts, a real `mailslot init`, plain open/write, and real inotify
limits (lowered inside a user namespace of the waiter's own, so nothing else on the machine is
affected). The waiter's 5 s safety re-check is pushed past every timeout here, so a waiter
that wakes at all was woken by a file event, the watch's keeper or a poll, as each test says.
"""

from __future__ import annotations

import json
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import git_init, require, run_git, watching

from mailslot import Mailbox
from mailslot.store.watch import Watcher

# A waiter process: waits `rounds` times from a cursor, saying "blocked" when each wait first
# sleeps and then what woke it. Only file events, the keeper or polls can wake it (see
# workers.only_woken_by_events). With a limit "name=value" it first lowers
# /proc/sys/user/<name>, which only a process in its own user namespace may do. With
# say_pending 1 it also says "pending THREAD SEQ" when a wait first sleeps before a message
# that is still arriving, and looks at it again only on a file event (no timer at all).
WAITER = r"""
import json, logging, sys
logging.basicConfig(format="%(name)s %(levelname)s: %(message)s")  # whose warning it is
tests, root, threads, after, rounds, limit, say_pending = sys.argv[1:]
if limit != "-":
    name, value = limit.split("=")
    with open(f"/proc/sys/user/{name}", "w") as f:
        f.write(value)
sys.path.insert(0, tests)
from workers import only_woken_by_events
only_woken_by_events()
from mailslot import Mailbox
from mailslot.store import wait as _wait
if say_pending == "1":
    _wait.PENDING_RECHECK_S = 3600.0
    tick, said = _wait.Waiting.tick, set()
    def say(self, plan):
        for p in plan.pending.values():
            if (p.thread, p.seq) not in said:
                said.add((p.thread, p.seq))
                print("pending", p.thread, p.seq, flush=True)
        return tick(self, plan)
    _wait.Waiting.tick = say
box = Mailbox(root, poll_interval=60 if say_pending == "1" else 0.1)
names = None if threads == "-" else threads.split(",")
cursor = json.loads(after)
print("ready", flush=True)
for _ in range(int(rounds)):
    got = box.wait(names, cursor, timeout=3600)  # the test gives up long before (next_line)
    cursor = got.cursor
    print(json.dumps({**got.to_dict(), "mode": box.wait_mode}), flush=True)
box.close()
"""

# How a warning of mailslot's own starts in a waiter's stderr (watchdog may warn as well).
WARNING = "mailslot WARNING:"


class Waiters:
    """Start waiter processes; kill whatever is still running at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.err_read: dict[int, list[str]] = {}  # pid -> stderr lines read while it ran

    def start(
        self,
        root: Path,
        threads: str,
        after: dict[str, int],
        *,
        rounds: int = 1,
        limit: str = "-",
        prefix: tuple[str, ...] = (),
        say_pending: bool = False,
    ) -> subprocess.Popen[bytes]:
        tests = str(Path(__file__).parent)
        argv = [sys.executable, "-c", WAITER, tests, str(root), threads, json.dumps(after)]
        p = subprocess.Popen(
            [*prefix, *argv, str(rounds), limit, "1" if say_pending else "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,  # see read_line
        )
        self.procs.append(p)
        assert self.next_line(p) == "ready"
        self.blocked(p)
        return p

    def blocked(self, p: subprocess.Popen[bytes]) -> None:
        """Return once p's current wait looked, found nothing, and went to sleep."""
        line = self.next_line(p)
        assert line == "blocked", f"expected the waiter to block, it said {line}"

    @staticmethod
    def next_line(p: subprocess.Popen[bytes], within: float = 30) -> str:
        assert p.stdout is not None
        ready, _, _ = select.select([p.stdout], [], [], within)
        line = p.stdout.readline() if ready else b""
        if not line:
            p.kill()
            _, err = p.communicate()
            pytest.fail(
                f"waiter said nothing within {within} s (exit {p.returncode}): {err.decode()}"
            )
        return line.decode().strip()

    def woke(self, p: subprocess.Popen[bytes]) -> dict[str, Any]:
        return dict(json.loads(self.next_line(p)))

    def stderr_line(self, p: subprocess.Popen[bytes], text: str, within: float = 30) -> str:
        """Return the first line p writes to stderr that holds text (while p runs on)."""
        assert p.stderr is not None
        deadline = time.monotonic() + within
        while True:
            ready, _, _ = select.select([p.stderr], [], [], max(0.0, deadline - time.monotonic()))
            line = p.stderr.readline().decode() if ready else ""
            if not line:
                pytest.fail(f"waiter wrote no line with {text!r} within {within} s")
            self.err_read.setdefault(p.pid, []).append(line)
            if text in line:
                return line.strip()

    def stderr(self, p: subprocess.Popen[bytes]) -> str:
        """Return all p wrote to stderr, once it exited (successfully)."""
        _, err = p.communicate(timeout=30)
        text = "".join(self.err_read.get(p.pid, [])) + err.decode()
        assert p.returncode == 0, f"waiter exited {p.returncode}: {text}"
        return text


@pytest.fixture
def waiters() -> Iterator[Waiters]:
    w = Waiters()
    yield w
    for p in w.procs:
        if p.poll() is None:
            p.kill()
        p.communicate()


def _post(root: Path, thread: str, content: str) -> None:
    """Post from this process (not the waiter's)."""
    with Mailbox(root) as box:
        box.post(thread, content, sender="alice")


def _contents(got: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["thread"], m["content"]) for m in got["messages"]]


# ---------------------------------------------------------------------- following the folder


def test_branch_switch_that_recreates_threads_keeps_waking(
    tmp_path: Path, waiters: Waiters, git: dict[str, str]
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git_init(git, repo, "test")
    root = repo / ".mailslot"
    with Mailbox.init(root) as box:
        box.create_thread("t", creator="alice")
        box.post("t", "committed", sender="alice")
    run_git(git, repo, "add", "-A")
    run_git(git, repo, "commit", "-q", "-m", "a mailbox")
    run_git(git, repo, "checkout", "-q", "-b", "other")
    run_git(git, repo, "rm", "-r", "-q", ".mailslot/threads")
    run_git(git, repo, "commit", "-q", "-m", "a branch without threads")
    run_git(git, repo, "checkout", "-q", "main")

    p = waiters.start(root, "t", {"t": 1}, rounds=2)
    run_git(git, repo, "checkout", "-q", "other")
    assert not (root / "threads").exists(), "the checkout removed threads/"
    run_git(git, repo, "checkout", "-q", "main")
    assert (root / "threads" / "t" / "000001.json").exists(), "and the checkout back restored it"

    # At once: the watch may not be on the new folder yet; moving it there wakes the waiter.
    _post(root, "t", "right after the switch")
    got = waiters.woke(p)
    assert _contents(got) == [("t", "right after the switch")]

    # Once the watch is on the new folder, the file event itself wakes the waiter.
    waiters.blocked(p)
    watching(p.pid, root / "threads")
    _post(root, "t", "once the watch moved")
    got = waiters.woke(p)
    assert _contents(got) == [("t", "once the watch moved")]
    assert got["mode"] == "native"
    assert WARNING not in waiters.stderr(p), "following the folder is not a failure"


def test_root_deleted_and_reinitialised_under_an_inbox_waiter(
    tmp_path: Path, waiters: Waiters
) -> None:
    root = tmp_path / "box"
    Mailbox.init(root).close()
    p = waiters.start(root, "-", {})
    shutil.rmtree(root)
    subprocess.run(
        [sys.executable, "-m", "mailslot", "init", str(root)], check=True, capture_output=True
    )
    with Mailbox(root) as box:
        box.create_thread("fresh", creator="alice")
    _post(root, "fresh", "into a new root")
    got = waiters.woke(p)
    assert _contents(got) == [("fresh", "into a new root")]
    assert got["cursor"] == {"fresh": 1}
    assert WARNING not in waiters.stderr(p)


# ---------------------------------------------------------------------- foreign writers


@pytest.mark.parametrize("first", ["empty", "half"])
def test_file_filled_later_by_a_foreign_writer_wakes_the_waiter(
    tmp_path: Path, waiters: Waiters, first: str
) -> None:
    # The bytes a writer elsewhere made (then git, rsync or an editor carries them here).
    with Mailbox.init(tmp_path / "elsewhere") as other:
        other.create_thread("t", creator="alice")
        other.post("t", "filled in later", sender="alice")
    data = (tmp_path / "elsewhere" / "threads" / "t" / "000001.json").read_bytes()
    with Mailbox.init(tmp_path / "box") as box:
        box.create_thread("t", creator="alice")
    root = box.root

    # Only file events wake this waiter, even while a message is still arriving.
    p = waiters.start(root, "t", {"t": 0}, say_pending=True)
    split = 0 if first == "empty" else len(data) // 2
    with open(root / "threads" / "t" / "000001.json", "xb") as f:  # create, then fill
        f.write(data[:split])
        f.flush()
        line = waiters.next_line(p)
        assert line == "pending t 1", f"the waiter saw the file before it was whole: {line}"
        f.write(data[split:])
    got = waiters.woke(p)
    assert _contents(got) == [("t", "filled in later")]
    assert got["skipped"] == [], "a file still being written is pending, not damage"
    assert got["mode"] == "native"


def test_watcher_signals_when_a_created_file_is_filled(box: Mailbox) -> None:
    # The event alone, with no re-check of any waiter in between: writing and closing the file.
    # Each signal names the thread the file is in (what a waiter then looks at, and only that).
    watcher = Watcher.acquire(box.root / "threads")
    signalled = threading.Event()
    named: list[str | None] = []

    def heard(thread: str | None) -> None:
        named.append(thread)
        signalled.set()

    unsubscribe = watcher.subscribe(heard)
    try:
        with open(box.root / "threads" / "t" / "000001.json", "xb") as f:
            assert signalled.wait(5), "creating the file signals"
            signalled.clear()  # creating is one event (opening it is none we watch)
            f.write(b"{}")
            f.flush()
            assert signalled.wait(10), "writing into it signals"
            signalled.clear()
        assert signalled.wait(10), "closing it signals"
        assert watcher.failure is None
        assert set(named) == {"t"}, named
    finally:
        unsubscribe()
        watcher.release()


# ---------------------------------------------------------------------- inotify limits

UNSHARE = ("unshare", "--user", "--map-root-user")


def _own_limits() -> tuple[str, ...]:
    """Return the argv prefix that runs a process in a user namespace with inotify limits of its
    own; skip (fail under CI) where the machine cannot make one."""
    if shutil.which("unshare") is None:
        require("needs unshare (util-linux) to give the waiter inotify limits of its own")
    probe = subprocess.run(
        [*UNSHARE, "sh", "-c", "echo 7 > /proc/sys/user/max_inotify_watches"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        require(
            "cannot lower inotify limits in a user namespace of our own "
            f"(unprivileged user namespaces disabled?): {probe.stderr.strip()}"
        )
    return UNSHARE


def _limit_warning(err: str, limit: str) -> str:
    """Return mailslot's one warning in err; it names the limit reached and its fix."""
    lines = [line for line in err.splitlines() if line.startswith(WARNING)]
    assert len(lines) == 1, f"exactly one warning from mailslot, got: {err}"
    (line,) = lines
    setting = f"fs.inotify.{limit}"
    assert setting in line.partition("To fix")[0], f"the warning names {setting}: {line}"
    assert f"sysctl -w {setting}=" in line, f"the warning says how to raise it: {line}"
    assert "poll" in line, f"the warning says that waits poll now: {line}"
    return line


# Which of watchdog's ways of meeting the limit is hit depends on its version and the kernel:
# inotify_init failing, the recursive watch raising, or a thread folder quietly left unwatched.
@pytest.mark.parametrize(
    ("limit", "reached"),
    [
        ("max_inotify_instances=0", "max_user_instances"),
        ("max_inotify_watches=0", "max_user_watches"),
        ("max_inotify_watches=1", "max_user_watches"),
    ],
)
def test_inotify_limit_reached_falls_back_to_polling_with_one_warning(
    root: Path, waiters: Waiters, limit: str, reached: str
) -> None:
    prefix = _own_limits()
    with Mailbox(root) as box:
        box.create_thread("t", creator="alice")
    p = waiters.start(root, "t", {"t": 0}, rounds=2, limit=limit, prefix=prefix)
    for i in range(2):
        if i:
            waiters.blocked(p)
        _post(root, "t", f"polled {i}")
        got = waiters.woke(p)  # by the 0.1 s poll: no event reaches it, and no re-check
        assert _contents(got) == [("t", f"polled {i}")], limit
        assert got["mode"] == "hybrid", limit
    _limit_warning(waiters.stderr(p), reached)


def test_watch_refused_for_a_thread_created_while_waiting(root: Path, waiters: Waiters) -> None:
    prefix = _own_limits()
    with Mailbox(root) as box:
        box.create_thread("t", creator="alice")
    # Room for threads/ and t/, none for a third folder: the new thread's watch fails quietly.
    p = waiters.start(root, "-", {"t": 0}, limit="max_inotify_watches=2", prefix=prefix)
    with Mailbox(root) as box:
        box.create_thread("late", creator="alice")
    # Once the waiter has noticed, its waits poll: the message below reaches it by a poll.
    noticed = waiters.stderr_line(p, WARNING)
    assert "late" in noticed, f"the warning names the folder left without a watch: {noticed}"
    _post(root, "late", "into a folder nobody watches")
    got = waiters.woke(p)
    assert _contents(got) == [("late", "into a folder nobody watches")]
    assert got["mode"] == "hybrid"
    assert _limit_warning(waiters.stderr(p), "max_user_watches") == noticed
