"""`mailslot serve --sync`: the servers of one machine share one sync of their root.

Real processes throughout: each server is `mailslot serve` driven by the official MCP client,
the sync it starts is a real `mailslot sync --served` found in /proc, and the remote is a bare
repository on disk. Nobody runs `mailslot sync` by hand: what a server posts reaches the remote.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import call, until, until_async
from mcp import StdioServerParameters
from mcp.client import Client
from mcp.client.stdio import stdio_client
from test_sync import make_clone, status, sync

from mailslot import Mailbox

SERVE = [sys.executable, "-m", "mailslot", "serve"]


def syncs(root: Path, *, under: bool = False) -> list[int]:
    """Return the pids of the running `mailslot sync --served` processes of root (or, under,
    of any root under it), from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        at = os.fsencode(root)
        if b"--served" in argv and any(a == at or (under and a.startswith(at)) for a in argv):
            found.append(int(entry))
    return found


def set_sync(root: Path, **settings: Any) -> None:
    """Write settings into the "sync" object of root's mailslot.json (a quick clock for tests)."""
    path = root / "mailslot.json"
    doc = json.loads(path.read_text())
    doc["sync"] = {"look_s": 0.2, "max_look_s": 1, "push_delay_s": 0.05, **settings}
    path.write_text(json.dumps(doc))


def reached(env: dict[str, str], remote: Path, text: str) -> bool:
    """Return True if a message file on the remote's mailslot branch holds text."""

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(remote), *args], env=env, capture_output=True,
                              text=True, check=False)  # fmt: skip

    listed = git("ls-tree", "-r", "--name-only", "mailslot")
    names = [n for n in listed.stdout.split() if n.startswith("threads/")]
    return listed.returncode == 0 and any(
        text in git("show", f"mailslot:{n}").stdout for n in names if not n.endswith("thread.json")
    )


async def soon(what: str, check: Callable[[], bool], within: float = 30) -> None:
    """until() for a test's main task: the clients' tasks go on while check() is false."""
    await until_async(what, lambda: anyio.to_thread.run_sync(check), within=within)


async def arrives(env: dict[str, str], remote: Path, text: str) -> None:
    await soon(f"{text!r} on the remote", lambda: reached(env, remote, text), within=120)


def running(root: Path) -> object:
    """Return the pid status.json says runs (None before it says anything)."""
    try:
        return status(root).get("pid") if status(root).get("running") else None
    except FileNotFoundError:
        return None


def starts(root: Path) -> int:
    """Return how many times a server started a sync of root (the lines of sync.log)."""
    try:
        text = (root / ".state" / "sync" / "sync.log").read_text()
    except FileNotFoundError:
        return 0
    return text.count("started by mailslot serve")


def doctor(env: dict[str, str], root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "mailslot", "doctor", "--root", str(root), *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=False)


@pytest.fixture(autouse=True)
def no_sync_left_behind(tmp_path: Path) -> Iterator[None]:
    """Whatever a test did, no sync it caused outlives it."""
    yield
    for pid in syncs(tmp_path, under=True):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class Server:
    """One `mailslot serve` process, its client and its stderr, kept open in a task of its own
    (servers leave in any order, which nested `async with` blocks cannot do)."""

    def __init__(self, root: Path, env: dict[str, str], name: str, *args: str) -> None:
        self.parameters = StdioServerParameters(
            command=SERVE[0], args=[*SERVE[1:], "--root", str(root), "--agent", name, *args],
            env=env,
        )  # fmt: skip
        self.log = root.parent / f"{name}.stderr"
        self.stop = anyio.Event()
        self.gone = anyio.Event()
        self.client: Client | None = None

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            with self.log.open("w") as errlog:
                async with Client(stdio_client(self.parameters, errlog=errlog)) as client:
                    self.client = client
                    task_status.started()
                    await self.stop.wait()
        finally:
            self.gone.set()

    async def call(self, tool: str, **args: Any) -> Any:
        assert self.client is not None
        return await call(self.client, tool, **args)

    async def leave(self) -> None:
        """Close the client's side; return once the server process has exited."""
        self.stop.set()
        await self.gone.wait()


@asynccontextmanager
async def servers() -> AsyncIterator[Any]:
    """Yield a start(root, env, name, *args) that returns a running Server."""
    started: list[Server] = []
    async with anyio.create_task_group() as tg:

        async def start(root: Path, env: dict[str, str], name: str, *args: str) -> Server:
            server = Server(root, env, name, *args)
            await tg.start(server.run)
            started.append(server)
            return server

        try:
            yield start
        finally:
            for server in started:
                server.stop.set()


async def post(server: Server, text: str) -> None:
    await server.call("thread_create", topic="plans")
    await server.call("msg_post", thread="plans", content=text)


@pytest.fixture
def remote(tmp_path: Path, git: dict[str, str]) -> Path:
    path = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(path)], env=git, check=True)
    return path


def test_servers_share_one_sync_that_ends_with_the_last(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    root = make_clone(git, remote, tmp_path / "a", "alice")
    set_sync(root)

    async def main() -> None:
        async with servers() as start:
            first = await start(root, git, "alice", "--sync")
            await soon("a sync started by the first server", lambda: len(syncs(root)) == 1)
            [pid] = syncs(root)
            await soon("the sync running", lambda: running(root) == pid)
            second = await start(root, git, "bob", "--sync")
            await second.call("agent_list")  # the server is up: it started a sync or used one
            assert syncs(root) == [pid]
            assert starts(root) == 1  # the second used the running one
            await post(first, "posted through the first server")
            await arrives(git, remote, "posted through the first server")
            await first.leave()
            # Every round checks for servers: two posts pushed after the first left prove
            # rounds (and checks) went by without it, and the sync stayed for the second.
            for n in (1, 2):
                await post(second, f"the second server's post {n}")
                await arrives(git, remote, f"the second server's post {n}")
            assert syncs(root) == [pid]
            await second.leave()

    anyio.run(main)
    until("the sync ending after the last server", lambda: not syncs(root), within=120)
    assert status(root)["running"] is False
    assert starts(root) == 1


def test_the_setting_starts_the_sync_without_the_flag(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    root = make_clone(git, remote, tmp_path / "a", "alice")
    set_sync(root, serve=True)

    async def main() -> None:
        async with servers() as start:
            server = await start(root, git, "alice")
            await soon("a sync started by the setting", lambda: len(syncs(root)) == 1)
            await post(server, "a post with sync set to serve")
            await arrives(git, remote, "a post with sync set to serve")
            [pid] = syncs(root)
            said = await anyio.to_thread.run_sync(doctor, git, root)
            assert f"running (pid {pid})" in said.stdout, said.stdout
            await server.leave()

    anyio.run(main)
    until("the sync ending with its server", lambda: not syncs(root), within=120)


def test_a_server_starts_none_while_a_sync_of_the_root_runs(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    root = make_clone(git, remote, tmp_path / "a", "alice")
    set_sync(root)
    (root / ".state" / "sync").mkdir(parents=True, exist_ok=True)
    held = os.open(root / ".state" / "sync" / "daemon.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)  # as `mailslot sync` holds it while it runs

    async def main() -> None:
        async with servers() as start:
            server = await start(root, git, "alice", "--sync")
            await server.call("agent_list")  # up: it looked at daemon.lock before serving
            assert starts(root) == 0 and not syncs(root)
            await server.leave()

    try:
        anyio.run(main)
    finally:
        os.close(held)


def test_a_server_that_cannot_sync_still_serves_and_says_why(
    tmp_path: Path, git: dict[str, str]
) -> None:
    root = tmp_path / "box"  # in no git checkout, and no sync.remote
    Mailbox.init(root).close()
    log: list[Path] = []

    async def main() -> None:
        async with servers() as start:
            server = await start(root, git, "alice", "--sync")
            await post(server, "served all the same")
            got = await server.call("msg_list", thread="plans")
            assert [m["content"] for m in got["messages"]] == ["served all the same"]
            await server.leave()
            log.append(server.log)

    anyio.run(main)
    said = log[0].read_text()
    assert "sync not started" in said and "not in a git checkout" in said, said
    assert "sync.remote" in said
    assert not syncs(root) and starts(root) == 0


def test_a_served_sync_ends_a_round_after_its_last_user_and_not_before(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    """The lock alone decides: a process holding users.lock keeps a served sync running."""
    root = make_clone(git, remote, tmp_path / "a", "alice")
    set_sync(root)
    (root / ".state" / "sync").mkdir(parents=True, exist_ok=True)
    users = os.open(root / ".state" / "sync" / "users.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(users, fcntl.LOCK_SH)
    argv = [sys.executable, "-m", "mailslot", "sync", "--root", str(root), "--served"]
    proc = subprocess.Popen(argv, env=git, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with Mailbox(root) as box:
            box.create_thread("plans", creator="alice")
            for text in ("held post 1", "held post 2"):  # rounds went by, each checking for users
                box.post("plans", text, sender="alice")
                until(f"{text!r} on the remote", partial(reached, git, remote, text), within=120)
        assert proc.poll() is None
        os.close(users)
        proc.wait(timeout=120)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_doctor_tells_how_sync_stands(tmp_path: Path, git: dict[str, str], remote: Path) -> None:
    root = make_clone(git, remote, tmp_path / "a", "alice")
    set_sync(root, serve=False)

    never = doctor(git, root)
    assert "sync " not in never.stdout and "unknown setting" not in never.stdout, never.stdout
    assert json.loads(doctor(git, root, "--json").stdout)["sync"] is None
    with Mailbox(root) as box:
        box.create_thread("plans", creator="alice")
        box.post("plans", "hello", sender="alice")
    sync(git, root)
    done = doctor(git, root)
    assert done.returncode == never.returncode, done.stdout
    [line] = [x for x in done.stdout.splitlines() if x.startswith("sync ")]
    assert "with origin (branch mailslot)" in line and "not running" in line, line
    assert "last round 20" in line and "in step " in line and "no error" in line, line
    assert "0 message(s) wait to be pushed" in line, line
    shutil.move(remote, tmp_path / "gone.git")  # the remote unreachable
    with Mailbox(root) as box:
        box.post("plans", "stuck", sender="alice")
    sync(git, root, ok=False)
    failed = doctor(git, root)
    assert failed.returncode == never.returncode, failed.stdout  # the folder is as healthy
    [line] = [x for x in failed.stdout.splitlines() if x.startswith("sync ")]
    assert "last error (20" in line and "Could not read from remote" in line, line
    doc = json.loads(doctor(git, root, "--json").stdout)["sync"]
    assert doc["remote"] == "origin" and "Could not read" in doc["last_error"]


def test_a_served_sync_stops_at_a_signal_though_servers_remain(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    root = make_clone(git, remote, tmp_path / "a", "alice")
    set_sync(root)
    (root / ".state" / "sync").mkdir(parents=True, exist_ok=True)
    users = os.open(root / ".state" / "sync" / "users.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(users, fcntl.LOCK_SH)  # a server still runs
    argv = [sys.executable, "-m", "mailslot", "sync", "--root", str(root), "--served"]
    proc = subprocess.Popen(argv, env=git, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        until("the sync running", lambda: running(root) == proc.pid, within=120)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        assert proc.returncode == 0
        assert status(root)["running"] is False
    finally:
        os.close(users)
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
