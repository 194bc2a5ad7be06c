"""Waiting: a reader blocked in one process wakes when another process publishes.

The waiter processes (tests/workers.py) cannot wake on the 5 s safety re-check, which is pushed
past every timeout here, and each says "blocked" once its first look found nothing: a message
posted after that reaches it through a file event (or a poll, in poll mode) or not at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

import pytest
from helpers import finish, spawn, until, until_async
from test_foreign import message_bytes

from mailslot import InvalidMessage, Mailbox, NoSuchThread, RootError
from mailslot.store import plan as _plan
from mailslot.store import wait as _wait
from mailslot.store.watch import Watcher, filesystem_type, is_network_fs


def start_waiter(
    root: Path,
    threads: str = "t",
    after: object = None,
    to: str = "-",
    timeout: float = 3600,
    mode: str = "auto",
):  # type: ignore[no-untyped-def]
    """Start a waiter process; return it once it is blocked (its first look found nothing).

    Its own timeout is far beyond the test's (result waits 30 s): a wait that reaches its end
    looks once more, which would find the message without any wake-up.
    """
    after_arg = "-" if after is None else json.dumps(after)
    p = spawn("waiter", str(root), threads, after_arg, to, str(timeout), mode)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    line = p.stdout.readline().strip()
    assert line == "blocked", f"{line} {p.stderr.read() if line else ''}"
    return p


def result(p) -> dict:  # type: ignore[no-untyped-def]
    (out,) = finish([p], timeout=30)
    return json.loads(out)


def test_waiter_in_another_process_wakes(box: Mailbox) -> None:
    p = start_waiter(box.root, after={"t": 0})
    box.post("t", "wake up", sender="alice")
    got = result(p)
    assert got["timed_out"] is False
    assert [m["content"] for m in got["messages"]] == ["wake up"]
    assert got["cursor"] == {"t": 1}
    assert got["threads"] >= 2, "native mode waits with an observer thread"
    assert got["after_close"] == 1, "closing the mailbox stops the observer"


def test_several_waiters_all_wake(box: Mailbox) -> None:
    waiters = [start_waiter(box.root, after={"t": 0}) for _ in range(4)]
    box.post("t", "everyone", sender="alice")
    for p in waiters:
        got = result(p)
        assert [m["content"] for m in got["messages"]] == ["everyone"]
        assert got["timed_out"] is False


def test_inbox_wakes_for_a_new_thread(box: Mailbox) -> None:
    cursor = box.cursor()
    p = start_waiter(box.root, threads="-", after=cursor, to="bob")
    other = Mailbox(box.root)
    other.post("t", "not for bob", sender="alice")
    other.create_thread("brand new thread", creator="alice")
    other.post("brand-new-thread", "for bob", sender="alice", to=["bob"])
    got = result(p)
    assert [(m["thread"], m["content"]) for m in got["messages"]] == [
        ("brand-new-thread", "for bob")
    ]
    assert got["cursor"]["brand-new-thread"] == 1


def test_poll_mode_without_observer(box: Mailbox) -> None:
    p = start_waiter(box.root, after={"t": 0}, mode="poll")
    box.post("t", "polled", sender="alice")
    got = result(p)
    assert [m["content"] for m in got["messages"]] == ["polled"]
    assert got["timed_out"] is False, "woken by the 0.1 s poll"
    assert got["threads"] == 0, "poll mode runs no observer thread"


def test_timeout_is_a_normal_empty_result(box: Mailbox) -> None:
    got = box.wait("t", 0, timeout=0.2)
    assert (got.messages, got.timed_out, got.cursor) == ([], True, {"t": 0})
    assert box.wait("t", 0, timeout=0).timed_out


def test_returns_at_once_when_newer_exists(box: Mailbox) -> None:
    box.post("t", "already here", sender="alice")
    got = box.wait("t", 0, timeout=3600)
    assert not got.timed_out
    assert [m.content for m in got.messages] == ["already here"]


def test_burst_returns_together_in_order_up_to_limit(box: Mailbox) -> None:
    for i in range(50):
        box.post("t", f"m{i}", sender="alice")
    got = box.wait("t", 0, timeout=1)
    assert [m.seq for m in got.messages] == list(range(1, 51))
    got = box.wait("t", 0, timeout=1, limit=10)
    assert [m.seq for m in got.messages] == list(range(1, 11)) and got.cursor == {"t": 10}
    got = box.wait("t", got.cursor, timeout=1, limit=10)
    assert [m.seq for m in got.messages] == list(range(11, 21))


def test_from_now_ignores_history(box: Mailbox) -> None:
    box.post("t", "old", sender="alice")
    got = box.wait("t", timeout=0.1)
    assert got.timed_out and got.cursor == {"t": 1}


def test_several_threads_and_inbox_filter(box: Mailbox) -> None:
    box.create_thread("u", creator="alice")
    box.post("u", "to bob", sender="alice", to=["bob"])
    box.post("t", "to all", sender="alice")
    got = box.wait(["t", "u"], {"t": 0, "u": 0}, timeout=1)
    assert sorted(m.content for m in got.messages) == ["to all", "to bob"]
    got = box.wait(["t", "u"], {"t": 0, "u": 0}, to="bob", timeout=1)
    assert [m.content for m in got.messages] == ["to bob"]
    assert got.cursor == {"t": 1, "u": 1}, "the cursor passes messages for others too"


async def _subscribed(box: Mailbox) -> None:
    """Return once a wait of box subscribed to file events (it looks next, at once)."""

    async def subscribed() -> bool:
        return box._watcher is not None and len(box._watcher._subscribers) == 2  # feed, wait

    await until_async("the wait subscribed to file events", subscribed)


def test_async_wait_is_woken_by_another_process(
    box: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the file event can wake it: no safety re-check, and the wait's own end (whose last
    # look would find the message too) lies far beyond the 30 s this test gives it.
    monkeypatch.setattr(_wait, "SAFETY_RECHECK_S", 3600.0)

    async def main() -> list[str]:
        task = asyncio.create_task(box.wait_async("t", 0, timeout=3600))
        try:
            await _subscribed(box)  # long before the writer process below has started
            writer = spawn("writer", str(box.root), "t", "alice", "1", "lock", "fsync",
                           str(box.root.parent / "go"))  # fmt: skip
            (box.root.parent / "go").touch()
            finish([writer])
            got = await asyncio.wait_for(task, 30)
        finally:
            task.cancel()
        return [m.content for m in got.messages]

    assert asyncio.run(main()) == ["alice says 0"]


def test_async_cancel_ends_at_once_and_leaves_nothing(
    box: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing but the cancel can end this wait: no re-check, no timeout within the test's time.
    monkeypatch.setattr(_wait, "SAFETY_RECHECK_S", 3600.0)

    async def main() -> None:
        task = asyncio.create_task(box.wait_async("t", 0, timeout=3600))
        await _subscribed(box)
        assert box._watcher is not None and len(box._watcher._subscribers) == 2
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=30)
        assert task in done and task.cancelled(), "the cancel ended the wait"

    asyncio.run(main())
    assert box._watcher is not None and len(box._watcher._subscribers) == 1  # the feed's


def test_one_observer_per_process_shared_by_waiters(box: Mailbox) -> None:
    other = Mailbox(box.root)
    results: list[int] = []
    waiters = [
        threading.Thread(
            target=lambda b=b: results.append(len(b.wait("t", 0, timeout=10).messages))
        )
        for b in (box, other, box)
    ]
    for w in waiters:
        w.start()

    def subscribed() -> int:
        return len(box._watcher._subscribers) if box._watcher is not None else 0

    until("three waiters subscribed", lambda: subscribed() == 5)  # and each mailbox's feed
    assert box._watcher is other._watcher
    assert len(Watcher._registry) == 1
    box.post("t", "one", sender="alice")
    for w in waiters:
        w.join(10)
    assert results == [1, 1, 1]
    other.close()
    assert len(Watcher._registry) == 1, "still used by box"
    assert box._watcher is not None and len(box._watcher._subscribers) == 1, "other's feed left"
    box.close()
    assert Watcher._registry == {}


def test_bad_wait_arguments(box: Mailbox) -> None:
    with pytest.raises(NoSuchThread):
        box.wait("nope", 0, timeout=0)
    with pytest.raises(InvalidMessage, match="exactly one thread"):
        box.wait(["t", "t"], 0, timeout=0)
    with pytest.raises(InvalidMessage, match="timeout"):
        box.wait("t", 0, timeout=-1)
    with pytest.raises(InvalidMessage, match="cursor"):
        box.wait("t", {"t": -3}, timeout=0)
    with pytest.raises(InvalidMessage, match="limit"):
        box.wait("t", 0, timeout=0, limit=0)


def test_wait_mode_settings(root: Path) -> None:
    assert Mailbox(root).wait_mode == "native"  # a local disk
    assert Mailbox(root, wait_mode="poll").wait_mode == "poll"
    cfg = json.loads((root / "mailslot.json").read_text())
    (root / "mailslot.json").write_text(
        json.dumps({**cfg, "wait_mode": "poll", "poll_interval": 0.25})
    )
    box = Mailbox(root)
    assert (box.wait_mode, box.settings.poll_interval) == ("poll", 0.25)
    (root / "mailslot.json").write_text(json.dumps({**cfg, "wait_mode": "telepathy"}))
    with pytest.raises(RootError, match="wait_mode"):
        Mailbox(root)
    (root / "mailslot.json").write_text(json.dumps({**cfg, "poll_interval": 0}))
    with pytest.raises(RootError, match="poll_interval"):
        Mailbox(root)


def test_network_filesystems_are_recognised(tmp_path: Path) -> None:
    for fstype in ("nfs", "nfs4", "cifs", "smb3", "fuse.sshfs", "fuse", "9p", "ceph"):
        assert is_network_fs(fstype), fstype
    for fstype in ("ext4", "xfs", "btrfs", "tmpfs", "apfs", None):
        assert not is_network_fs(fstype), fstype
    assert filesystem_type(tmp_path) not in (None, "")
    assert filesystem_type(Path("/proc")) == "proc"


def _looked_per_poll_tick(
    root: Path, agent: str, from_empty_cursor: bool, mp: pytest.MonkeyPatch
) -> int:
    """Wait on every thread's inbox in poll mode and return the most threads one poll tick
    looked at (stat-ed the next seq of), leaving out the wait's first look, which reads all.

    The wait ends when, after a few ticks, a message for agent lands in a new thread.
    """
    waiter = Mailbox(root, wait_mode="poll", poll_interval=0.01)
    looked: list[set[str]] = []  # per tick: the thread folders looked at
    real_exists, real_tick = _plan.exists, _wait.Waiting.tick

    def counting_exists(tdir: Path | str, seq: int) -> bool:
        if looked:
            looked[-1].add(os.path.basename(tdir))
        return real_exists(tdir, seq)

    def counting_tick(self: _wait.Waiting, plan: _wait.WaitPlan) -> float:
        looked.append(set())
        if len(looked) == 5:  # past the first ticks: end the wait the way news comes
            with Mailbox(root, fsync=False) as other:
                other.agents.register(agent)
                end = other.create_thread(f"end for {agent}", creator="alice").id
                other.post(end, "the end", sender="alice", to=[agent])
        return real_tick(self, plan)

    with mp.context() as m:
        m.setattr(_plan, "exists", counting_exists)
        m.setattr(_wait.Waiting, "tick", counting_tick)
        got = waiter.wait(None, {} if from_empty_cursor else waiter.cursor(), to=agent)
    assert [m.content for m in got.messages] == ["the end"] and not got.timed_out
    assert len(looked) >= 5
    return max(len(threads) for threads in looked)


def test_an_idle_inbox_waiter_looks_at_a_bounded_number_of_threads_per_poll_tick(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Poll mode sees foreign writers only by looking; a tick looks at the busy threads, those
    # .state/news names, and a slice of the rest (even of a hundred), whether the wait started
    # from an empty cursor ({}: every thread from its start) or from cursor() ("from now").
    box = Mailbox(root, fsync=False)
    for agent in ("alice", "bob"):
        box.agents.register(agent)

    def grow_to(n: int) -> None:
        for i in range(len(box.cursor()), n):
            thread = box.create_thread(f"quiet {i}", creator="alice").id
            box.post(thread, "old news for someone else", sender="alice", to=["bob"])

    grow_to(100)
    hundred = _looked_per_poll_tick(root, "zoe", True, monkeypatch)
    grow_to(300)
    few = _looked_per_poll_tick(root, "carol", True, monkeypatch)
    grow_to(2000)
    many = _looked_per_poll_tick(root, "dave", True, monkeypatch)
    from_now = _looked_per_poll_tick(root, "erin", False, monkeypatch)

    # A slice of the quiet ones (nothing busy: in ticks SWEEP_TICK_S apart), plus the thread
    # that came with news during the wait (unless the slice already held it: which tick first
    # sees it depends on the machine's load).
    def bound(n: int) -> int:
        return _wait.sweep_size(n, _plan.SWEEP_TICK_S) + 2

    assert bound(300) == _wait.POLL_SLICE + 2 and bound(2000) < 2000 / 5
    assert hundred <= bound(100) < 100, f"a tick looked at {hundred} of 100 threads"
    assert few <= bound(300), f"a tick looked at {few} of 300 threads"
    assert many <= bound(2000), f"a tick looked at {few} of 300 threads but {many} of 2,000"
    assert from_now <= bound(2000), f"{many} threads per tick from {{}}, {from_now} from now"


def test_a_thread_that_got_news_during_a_poll_wait_is_looked_at_every_tick(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past a few hundred threads a poll tick looks at a slice of them, plus the busy ones: a
    thread that got news during the wait (here a message to someone else) is looked at on
    every tick after, so the next message there, to the waiter, ends the wait on the next tick
    or the one after, not when the slice comes round to it again (10 ticks at 640 threads)."""
    box = Mailbox(root, fsync=False)
    for name in ("alice", "bob", "carol"):
        box.agents.register(name)
    threads = [box.create_thread(f"quiet {i}", creator="alice").id for i in range(640)]
    for thread in threads:
        box.post(thread, "old news for someone else", sender="alice", to=["bob"])
    busy = threads[5]
    waiter = Mailbox(root, wait_mode="poll", poll_interval=0.01)
    ticks = 0
    seen_past_news = False  # the wait has read the news to bob in the busy thread
    posted_at: int | None = None
    real_exists, real_tick = _plan.exists, _wait.Waiting.tick

    def counting_exists(tdir: Path | str, seq: int) -> bool:
        nonlocal seen_past_news
        if os.path.basename(tdir) == busy and seq == 3:
            seen_past_news = True
        return real_exists(tdir, seq)

    def counting_tick(self: _wait.Waiting, plan: _wait.WaitPlan) -> float:
        nonlocal ticks, posted_at
        ticks += 1
        with Mailbox(root, fsync=False) as other:
            if ticks == 3:  # past the first look: news, but not for the waiter
                other.post(busy, "news for bob", sender="alice", to=["bob"])
            elif seen_past_news and posted_at is None:
                other.post(busy, "news for carol", sender="alice", to=["carol"])
                posted_at = ticks
        return real_tick(self, plan)

    with monkeypatch.context() as m:
        m.setattr(_plan, "exists", counting_exists)
        m.setattr(_wait.Waiting, "tick", counting_tick)
        got = waiter.wait(None, waiter.cursor(), to="carol", timeout=120)
    assert [m.content for m in got.messages] == ["news for carol"] and not got.timed_out
    assert posted_at is not None
    assert ticks - posted_at <= 1, f"seen {ticks - posted_at} ticks after it was posted"


def test_only_a_wait_that_blocks_starts_the_watch_and_it_first_looks_everywhere(
    box: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wait that finds messages at once, or has no time to wait, starts no watcher (a worker
    taking task after task pays nothing for file events). The wait that starts it looks at
    every thread it is on once: a file another writer (git, rsync) put in a quiet thread
    before the watch began, which no file event and no news line names, is returned by it
    without a timer tick."""
    monkeypatch.setattr(_wait, "SAFETY_RECHECK_S", 3600.0)
    box.create_thread("u", creator="alice")
    plan = box.wait_plan(None, box.cursor())  # kept across runs, as an agent's inbox is
    box.post("t", "one", sender="alice")
    got = asyncio.run(box.run_wait(plan, 5))
    assert [m.content for m in got.messages] == ["one"]
    assert box._watcher is None, "a wait that found messages at once started the watch"
    assert [m.content for m in box.wait("t", 0, timeout=5).messages] == ["one"]  # in a thread
    assert box._watcher is None, "a blocking wait() that found messages started the watch"
    assert asyncio.run(box.run_wait(plan, 0)).messages == []
    assert box._watcher is None, "a wait with no time to wait started the watch"
    head = box.cursor("u")["u"]
    pulled = box.root / ".state" / "tmp" / "pulled"
    pulled.write_text(message_bytes(head + 1))
    os.rename(pulled, box.root / "threads" / "u" / f"{head + 1:06d}.json")
    got = asyncio.run(box.run_wait(plan, 2))
    assert [m.content for m in got.messages] == [f"message {head + 1}"], got
    assert box._watcher is not None
