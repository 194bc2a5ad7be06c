"""Coordination across machines through `mailslot sync` (issue 29): claims, presence, leases,
reservations and search, between clones that meet only through a bare remote on disk.

Real git, real `mailslot sync` and `mailslot serve` processes (driven by the official MCP
client), a real `mailslot ui`. Both clones live on this machine, so they share the hostname:
what a clone learns of the other's agents comes through sync (presence files landed with
``"via": "sync"``), and the pids it carries are real pids of this host.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import SERVE, agent, call, params, run_git, until, until_async
from mcp.client import Client
from test_console import UI
from test_sync import files, make_clone, remote, sync  # noqa: F401  (remote: a fixture)

from mailslot import Mailbox
from mailslot.clients.guard import install
from mailslot.store.errors import MailslotError, NameTaken

#: Short heartbeats, so that a silent clone is noticed within a test.
SHORT = {"heartbeat_s": 1, "max_look_s": 1, "look_s": 0.5}


def short_sync(root: Path) -> None:
    """Give root's mailslot.json the short sync settings."""
    path = root / "mailslot.json"
    doc = json.loads(path.read_text())
    doc["sync"] = SHORT
    path.write_text(json.dumps(doc))


@pytest.fixture
def clones(tmp_path: Path, git: dict[str, str], remote: Path) -> tuple[Path, Path]:  # noqa: F811
    """Return the mailbox roots of two clones, a (alice's) and b (bob's), of one remote."""
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    short_sync(a)
    short_sync(b)
    return a, b


@pytest.fixture
def daemons(git: dict[str, str]) -> Iterator[dict[Path, subprocess.Popen[str]]]:
    """Continuous `mailslot sync` processes a test starts (root -> process); ended at the end."""
    running: dict[Path, subprocess.Popen[str]] = {}
    yield running
    for p in running.values():
        if p.poll() is None:
            p.terminate()
        try:
            p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()


def start_sync(env: dict[str, str], root: Path, running: dict[Path, subprocess.Popen[str]]) -> None:
    """Start a continuous `mailslot sync` of root; return once it has done a round."""
    argv = [sys.executable, "-m", "mailslot", "sync", "--root", str(root)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    running[root] = proc
    status = root / ".state" / "sync" / "status.json"

    def went_round() -> bool:
        assert proc.poll() is None, proc.communicate()
        try:
            doc = json.loads(status.read_text())
        except (OSError, ValueError):
            return False
        return doc.get("pid") == proc.pid and doc.get("last_ok") is not None

    until(f"the sync of {root} running", went_round, 60)


def presence(root: Path, name: str) -> dict[str, Any]:
    """Return the presence file of name in root as written (empty if there is none)."""
    return Mailbox(root).agents.presence_doc(name) or {}


def status_of(root: Path, name: str) -> str:
    return Mailbox(root).agents.presence(name).status


def _async(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """Return check as a coroutine function for until_async (run in a worker thread)."""

    async def run() -> bool:
        return await anyio.to_thread.run_sync(check)

    return run


# ---------------------------------------------------------------- 1. a task claimed twice


def test_a_task_claimed_on_two_clones_at_once_goes_to_the_first_pushed(
    clones: tuple[Path, Path], git: dict[str, str]
) -> None:
    a, b = clones
    with Mailbox(a) as box:
        box.create_thread("jobs", creator="boss")
        task = box.post("jobs", "build the docs", sender="boss", type="task")
    sync(git, a)
    sync(git, b)
    told: list[dict[str, Any]] = []  # what bravo's waits returned

    async def main() -> None:
        async with agent(a, "alpha") as x, agent(b, "bravo") as y:
            for c in (x, y):  # both see the task offered, and take it before either syncs
                got = await call(c, "msg_wait", timeout_s=5)
                assert [m["seq"] for m in got["messages"]] == [task], got
                assert (await call(c, "task_claim", thread="jobs", seq=task))["claimed"] is True
            await anyio.to_thread.run_sync(sync, git, a)  # alpha's claim reaches the remote first

            async def bravo_waits() -> None:
                with anyio.move_on_after(60):
                    while not any(m["from"] == "mailslot" for m in told):
                        got = await call(y, "msg_wait", timeout_s=60)
                        told.extend(got["messages"])
                assert any(m["from"] == "mailslot" for m in told), f"bravo was not told: {told}"

            async with anyio.create_task_group() as tg:
                tg.start_soon(bravo_waits)
                waiting = _async(lambda: status_of(b, "bravo") == "waiting")
                await until_async("bravo blocked in its wait", waiting)
                await anyio.to_thread.run_sync(sync, git, b)  # one round: bravo's claim moves
            await anyio.to_thread.run_sync(sync, git, a)
            for c in (x, y):  # both clones' boards: alpha holds it, from its claim
                listed = await call(c, "task_list", thread="jobs", status="all")
                assert [(t["seq"], t["status"], t["holder"]) for t in listed["tasks"]] == [
                    (task, "claimed", "alpha")
                ], listed
            # alpha is told nothing: its claim stood.
            assert (await call(x, "msg_wait", timeout_s=0.5))["messages"] == []
            # Both clones hold the same thread, seq for seq (before alpha's server, stopping,
            # gives the task back).
            assert files(a) == files(b)

    anyio.run(main)
    msgs = list(Mailbox(b).messages("jobs"))
    claims = [m for m in msgs if m.type == "status" and m.meta["task"]["event"] == "claim"]
    assert [c.sender for c in claims] == ["alpha", "bravo"]
    assert claims[1].meta["moved_from"]["reason"] == "sync"
    assert Mailbox(b).tasks.board("jobs").tasks[task].claim == claims[0].seq
    (lost,) = [m for m in msgs if m.sender == "mailslot"]
    assert (lost.type, lost.to, lost.meta["sync"], lost.reply_to) == (
        "error", ["bravo"], "claim lost", claims[1].seq,
    )  # fmt: skip
    assert "alpha" in lost.content and f"task {task}" in lost.content
    # bravo's wait brought the news once, and not its own claim again (moved, already shown).
    assert [(m["from"], m["seq"]) for m in told if m["from"] == "mailslot"] == [
        ("mailslot", lost.seq)
    ]
    assert claims[1].seq not in [m["seq"] for m in told]


# ---------------------------------------------------------------- 2. presence across clones


def test_an_agent_served_on_one_clone_is_online_on_the_other_and_keeps_its_name_there(
    clones: tuple[Path, Path], git: dict[str, str]
) -> None:
    a, b = clones

    async def main() -> None:
        async with agent(a, "alpha") as x:
            assert (await call(x, "bus_get_config"))["agent"] == "alpha"
            assert status_of(b, "alpha") == "offline"  # b knows nothing of a yet
            await anyio.to_thread.run_sync(sync, git, a)  # a's heartbeat goes out
            await anyio.to_thread.run_sync(sync, git, b)  # and lands here
            assert presence(b, "alpha")["via"] == "sync"
            assert status_of(b, "alpha") == "online"
            shown = subprocess.run([sys.executable, "-m", "mailslot", "agents", "--json",
                                    "--root", str(b)], capture_output=True, text=True,
                                   timeout=60, check=True)  # fmt: skip
            listed = {e["agent"]: e for e in json.loads(shown.stdout)["agents"]}
            assert listed["alpha"]["status"] == "online", listed
            # The name is held on a: nobody on b takes it while a's heartbeat holds.
            with Mailbox(b) as box, pytest.raises(NameTaken):
                box.agents.hold_name("alpha")
            refused = subprocess.run(
                [*SERVE, "--root", str(b), "--agent", "alpha", "--strict-name"],
                capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            assert refused.returncode == 1, refused.stderr
            assert "agent name 'alpha' is in use by a live process" in refused.stderr
            async with agent(b, "alpha") as y:  # without --strict-name: a name of its own
                assert (await call(y, "bus_get_config"))["agent"] == "alpha-2"
            assert presence(b, "alpha")["via"] == "sync"  # and alpha's stays as a said

    anyio.run(main)


# ---------------------------------------------------------------- 3. a holder gone silent


def test_a_task_held_on_a_clone_gone_silent_is_handed_out_on_the_other(
    clones: tuple[Path, Path], git: dict[str, str], daemons: dict[Path, subprocess.Popen[str]]
) -> None:
    """alpha claims on a; a's sync stops; b's agents see alpha's heartbeat end and take over.

    alpha's server stays alive all along: both clones are on this machine, so had it died, b
    would see its pid gone (the claim records pid and host) and hand the task out at once,
    without the heartbeat that this test is about. Only a's sync is killed."""
    a, b = clones
    with Mailbox(a) as box:
        box.create_thread("jobs", creator="boss")
        task = box.post("jobs", "deploy", sender="boss", type="task")
    start_sync(git, a, daemons)
    start_sync(git, b, daemons)
    # bravo's heartbeat timeout (--heartbeat-timeout): shorter than the default 30 s, to spare
    # time, yet longer than the 10 s sync takes at most to refresh a landed presence file.
    stale = 20.0

    def held_on_b() -> bool:
        try:
            return Mailbox(b).tasks.board("jobs").tasks[task].holder == "alpha"
        except MailslotError:
            return False  # the thread is not here yet

    async def main() -> None:
        bravo = params(b, "--agent", "bravo", "--heartbeat-timeout", str(stale))
        async with agent(a, "alpha") as x, Client(bravo, cache=None) as y:
            assert (await call(x, "task_claim", thread="jobs", seq=task))["claimed"] is True
            await until_async("b sees alpha's claim", _async(held_on_b), 60)
            await until_async(
                "alpha's presence landed on b",
                _async(lambda: presence(b, "alpha").get("via") == "sync"),
                60,
            )
            first = presence(b, "alpha")["last_seen_epoch"]
            # While a's heartbeat comes, b's sync keeps alpha fresh past bravo's timeout,
            await until_async(
                "b's sync refreshing alpha's presence",
                _async(lambda: presence(b, "alpha")["last_seen_epoch"] > first + stale + 2),
                60,
            )
            # so the task stays alpha's there.
            got = await call(y, "task_claim", thread="jobs", seq=task)
            assert (got["claimed"], got["holder"]) == (False, "alpha"), got
            daemons[a].send_signal(signal.SIGKILL)  # a falls silent; alpha's server lives on
            daemons[a].communicate()
            deadline = anyio.current_time() + 120
            while True:  # b: silent after silent_after_s, then offline after bravo's timeout
                left = deadline - anyio.current_time()
                assert left > 0, "the task never came back to b's agents"
                got = await call(y, "msg_wait", timeout_s=min(30, left))
                if any(m["seq"] == task and m["thread"] == "jobs" for m in got["messages"]):
                    break
            got = await call(y, "task_claim", thread="jobs", seq=task)
            assert (got["claimed"], got["attempt"]) == (True, 2), got
            assert (await call(x, "bus_get_config"))["agent"] == "alpha"  # alive all along

    anyio.run(main)
    (reopen,) = [m for m in Mailbox(b).messages("jobs")
                 if m.type == "status" and m.meta["task"]["event"] == "reopen"]  # fmt: skip
    assert reopen.meta["task"]["holder"] == "alpha"
    assert "no heartbeat" in reopen.meta["task"]["reason"], reopen.meta


# ---------------------------------------------------------------- 4. reservations and the guard


def test_a_reservation_made_on_one_clone_holds_on_the_other_and_its_guard_refuses(
    clones: tuple[Path, Path], git: dict[str, str]
) -> None:
    a, b = clones
    env = {k: v for k, v in git.items() if not k.startswith("MAILSLOT_")}
    work = b.parent
    (work / "src").mkdir()
    (work / "src" / "b.py").write_text("b = 1\n")
    (work / "src" / "c.py").write_text("c = 1\n")
    run_git(env, work, "add", "src")
    run_git(env, work, "commit", "-q", "-m", "start")
    install(work, env=env)
    bravo = {**env, "MAILSLOT_AGENT": "bravo"}

    def commit() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(work), "commit", "-q", "-m", "change"],
                              env=bravo, capture_output=True, text=True, timeout=120,
                              check=False)  # fmt: skip

    def change(path: str) -> None:
        with (work / path).open("a") as f:
            f.write("# changed\n")
        run_git(env, work, "add", "--", path)

    async def main() -> None:
        async with agent(a, "alpha") as x:
            got = await call(x, "files_reserve", paths=["src/b.py"], reason="splitting b")
            assert got["granted"] is True, got
            await anyio.to_thread.run_sync(sync, git, a)
            await anyio.to_thread.run_sync(sync, git, b)
            with Mailbox(b) as box:
                assert [(h.holder, h.pattern, h.exclusive) for h in box.reservations.live()] == [
                    ("alpha", "src/b.py", True)
                ]
            shown = subprocess.run([sys.executable, "-m", "mailslot", "reservations", "--json",
                                    "--root", str(b)], env=env, capture_output=True, text=True,
                                   timeout=60, check=True)  # fmt: skip
            (held,) = json.loads(shown.stdout)["reservations"]
            assert (held["holder"], held["path"], held["reason"]) == (
                "alpha", "src/b.py", "splitting b",
            )  # fmt: skip
            # bob's clone refuses a commit of the file alpha reserved on alice's,
            change("src/b.py")
            before = run_git(env, work, "rev-parse", "HEAD")
            refused = await anyio.to_thread.run_sync(commit)
            assert refused.returncode == 1, refused.stdout + refused.stderr
            assert "src/b.py" in refused.stderr and "alpha" in refused.stderr
            assert "splitting b" in refused.stderr
            assert run_git(env, work, "rev-parse", "HEAD") == before
            # and lets the others through.
            run_git(env, work, "restore", "--staged", "src/b.py")
            change("src/c.py")
            assert (await anyio.to_thread.run_sync(commit)).returncode == 0
            # Once alpha gives it back and the clones sync, the commit passes.
            assert (await call(x, "files_release"))["released"], "alpha held src/b.py"
            await anyio.to_thread.run_sync(sync, git, a)
            await anyio.to_thread.run_sync(sync, git, b)
            change("src/b.py")
            done = await anyio.to_thread.run_sync(commit)
            assert done.returncode == 0, done.stderr

    anyio.run(main)


# ---------------------------------------------------------------- 5. search and the console


def console(root: Path) -> UI:
    """Start `mailslot ui --as dave` on root (the caller stops it)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailslot", "ui", "--root", str(root), "--as", "dave"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r"http://127\.0\.0\.1:(\d+)/\?token=(\S+)", line)
    assert found, line + proc.communicate(timeout=30)[1]
    return UI(proc, int(found.group(1)), found.group(2))


def search(root: Path, word: str) -> list[tuple[str, int, str, str]]:
    """Return `mailslot search word`'s hits on root: (thread, seq, sender, id)."""
    done = subprocess.run([sys.executable, "-m", "mailslot", "search", word, "--json",
                           "--root", str(root)], capture_output=True, text=True, timeout=60,
                          check=True)  # fmt: skip
    return sorted((h["thread"], h["seq"], h["from"], h["id"])
                  for h in json.loads(done.stdout)["hits"])  # fmt: skip


def api_search(ui: UI, word: str) -> list[tuple[str, int, str]]:
    hits = ui.json("GET", f"/api/search?q={word}")["hits"]
    return sorted((h["thread"], h["seq"], h["from"]) for h in hits)


def test_search_and_the_console_find_a_message_posted_on_the_other_clone(
    clones: tuple[Path, Path], git: dict[str, str]
) -> None:
    a, b = clones
    with Mailbox(b) as box:  # b's index and console exist before the message comes
        box.create_thread("notes", creator="bob")
        box.post("notes", "nothing to see", sender="bob")
    ui = console(b)
    try:
        assert search(b, "zebrafish") == [] and api_search(ui, "zebrafish") == []
        with Mailbox(a) as box:
            box.create_thread("release", creator="alice")
            mid = box.publish("release", "the zebrafish build is green", sender="alice").id
        sync(git, a)
        sync(git, b)
        assert search(b, "zebrafish") == [("release", 1, "alice", mid)]
        assert api_search(ui, "zebrafish") == [("release", 1, "alice")]
        page = ui.json("GET", "/api/threads/release")
        assert [(m["seq"], m["from"]) for m in page["messages"]] == [(1, "alice")]
    finally:
        ui.proc.terminate()
        ui.proc.communicate(timeout=30)


def test_after_a_sync_moved_messages_search_finds_each_once_at_its_new_seq(
    clones: tuple[Path, Path], git: dict[str, str]
) -> None:
    a, b = clones
    with Mailbox(a) as box:
        box.create_thread("t", creator="alice")
        box.post("t", "shared start", sender="alice")
    sync(git, a)
    sync(git, b)
    with Mailbox(a) as box:  # both post from seq 2 on, before they see each other
        alice = box.publish("t", "alice saw a quokka", sender="alice").id
    with Mailbox(b) as box:
        bob = [box.publish("t", "bob saw a wombat", sender="bob").id,
               box.publish("t", "bob saw another wombat", sender="bob", reply_to=2).id]  # fmt: skip
    ui = console(b)
    try:  # b's index and its console's hold bob's messages at 2 and 3 before they move
        assert search(b, "wombat") == [("t", 2, "bob", bob[0]), ("t", 3, "bob", bob[1])]
        assert api_search(ui, "wombat") == [("t", 2, "bob"), ("t", 3, "bob")]
        sync(git, a)  # alice's stands at 2
        sync(git, b)  # bob's move to 3 and 4
        sync(git, a)
        moved = [("t", 3, "bob", bob[0]), ("t", 4, "bob", bob[1])]
        for root in (a, b):
            assert search(root, "quokka") == [("t", 2, "alice", alice)]
            assert search(root, "wombat") == moved
            assert search(root, "saw") == [("t", 2, "alice", alice), *moved]  # each once
        assert api_search(ui, "quokka") == [("t", 2, "alice")]
        assert api_search(ui, "wombat") == [("t", 3, "bob"), ("t", 4, "bob")]
        assert api_search(ui, "saw") == [("t", 2, "alice"), ("t", 3, "bob"), ("t", 4, "bob")]
    finally:
        ui.proc.terminate()
        ui.proc.communicate(timeout=30)
