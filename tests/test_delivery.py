"""The delivery rule as a library, without MCP: what a wait returns, which tasks it offers, and
when positions move (agent/inbox.py), and the seat, the reading and the task overview beside it.
The tools, hooks and console use these same rules; tests/test_positions.py and
tests/test_tasks_mcp.py drive them through real servers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest

from mailslot import InvalidName, Mailbox
from mailslot.agent.inbox import Delivery
from mailslot.agent.offers import PICK, rank
from mailslot.agent.reading import Reading
from mailslot.agent.seat import Pace, Seat
from mailslot.tools import Session


class Quiet:
    """A waiter with no duties: steps of a tenth of a second, no progress to report."""

    def limit(self, waited: float) -> float:
        return 0.1

    async def progress(self, waited: float, where: str) -> None:
        return None


def delivery(box: Mailbox) -> Delivery:
    return Delivery(box, Reading(box), stale_after=10.0)


def test_a_thread_wait_returns_what_others_posted_and_moves_only_past_what_was_shown(
    box: Mailbox,
) -> None:
    mine = box.post("t", "my own", sender="bob")
    first = box.post("t", "one", sender="alice")
    second = box.post("t", "two", sender="alice")
    bob = delivery(box)

    got, past = anyio.run(bob.thread, "bob", "t", 0, 0.0, Quiet())
    assert past is None
    assert [m.seq for m in got.messages] == [first, second]  # not bob's own message
    assert got.mark(1) == first  # one was shown: the thread goes on after it
    assert bob.reading.position("t", "bob").read == first

    again, _ = anyio.run(bob.thread, "bob", "t", None, 0.0, Quiet())
    assert [m.seq for m in again.messages] == [second]  # from its position, not from 0
    assert again.mark(1) == second
    assert mine < first


def test_a_wait_past_the_newest_message_says_so_and_waits_from_there(box: Mailbox) -> None:
    head = box.post("t", "one", sender="alice")
    got, past = anyio.run(delivery(box).thread, "bob", "t", head + 5, 0.0, Quiet())
    assert past == head and got.messages == []


def test_the_inbox_offers_a_task_for_anyone_while_it_is_open_and_not_once_it_is_claimed(
    box: Mailbox,
) -> None:
    box.agents.register("carol")
    box.create_thread("work", creator="alice")
    task = box.post("work", "build it", sender="alice", type="task")
    note = box.post("work", "for carol", sender="alice", to=["carol"])
    bob, carol = delivery(box), delivery(box)
    for who, d in (("bob", bob), ("carol", carol)):
        d.reading.join("work", who)

    got = anyio.run(bob.inbox, "bob", 0.0, Quiet())
    assert [m.seq for m in got.messages] == [task]  # carol's note is not bob's
    offer = bob.offer("bob", got.messages[0])
    assert offer is not None and offer[0].seq == task and offer[0].status == "open"
    got.mark(1)

    box.tasks.claim("work", task, agent="bob")
    later = anyio.run(carol.inbox, "carol", 0.0, Quiet())
    assert [m.seq for m in later.messages] == [note]  # the claimed task is not offered
    assert not carol.offered("carol", box.get("work", task))


def test_an_agent_is_not_offered_its_own_task(box: Mailbox) -> None:
    box.create_thread("work", creator="alice")
    bob = Delivery(box, Reading(box), stale_after=10.0)
    bob.reading.join("work", "bob")
    anyio.run(bob.inbox, "bob", 0.0, Quiet()).mark(0)
    box.post("work", "build it", sender="bob", type="task")
    got = anyio.run(bob.inbox, "bob", 0.0, Quiet())
    assert got.messages == []


def test_what_the_inbox_owes_from_before_its_first_look_comes_first(box: Mailbox) -> None:
    box.create_thread("old", creator="alice")
    bob = Delivery(box, Reading(box), stale_after=10.0)
    anyio.run(bob.inbox, "bob", 0.0, Quiet()).mark(0)
    late = box.post("old", "now", sender="alice", to=["bob"])
    box.create_thread("new", creator="alice")
    owed = box.post("new", "owed", sender="alice", to=["bob"])
    got = anyio.run(bob.inbox, "bob", 0.0, Quiet())
    assert [(m.thread, m.seq) for m in got.messages] == [("new", owed), ("old", late)]


def test_an_event_of_a_task_that_cannot_be_read_is_not_offered(box: Mailbox) -> None:
    box.create_thread("work", creator="alice")
    task = box.post("work", "build it", sender="alice", type="task")
    bob = Delivery(box, Reading(box), stale_after=10.0)
    bob.reading.join("work", "bob")
    first = anyio.run(bob.inbox, "bob", 0.0, Quiet())
    first.mark(len(first.messages))
    bob.reading.save("bob")
    box.tasks.claim("work", task, agent="carol")
    box.tasks.release("work", task, agent="carol")
    path = box.root / "threads" / "work" / f"{task:06d}.json"
    path.write_text("{torn")
    old = time.time() - 3600
    os.utime(path, (old, old))
    (box.root / ".state" / "index" / "work.tasks.json").unlink(missing_ok=True)  # fold anew
    fresh = Mailbox(box.root, fsync=False)
    bob = Delivery(fresh, Reading(fresh), stale_after=10.0)
    got = anyio.run(bob.inbox, "bob", 0.0, Quiet())
    assert got.messages == [], [(m.seq, m.type, m.content) for m in got.messages]
    fresh.close()


def test_a_seat_waiting_on_its_inbox_waits_for_every_thread(box: Mailbox) -> None:
    seq = box.post("t", "x", sender="alice", to=["bob"])
    m = box.get("t", seq)
    seat = Seat(box, client=None, stale_after=10.0)
    with seat.waiting("inbox"):
        assert seat.waiting_for(m)
    assert not seat.waiting_for(m)


def test_progress_is_reported_once_per_progress_every(box: Mailbox) -> None:
    seen: list[float] = []

    async def report(waited: float, text: str) -> None:
        seen.append(waited)

    pace = Pace(Seat(box, client=None, stale_after=10.0), 1.0, report, lambda: None)

    async def main() -> None:
        for w in (0.5, 1.0, 1.5, 2.0, 2.5):
            await pace.progress(w, "t")

    anyio.run(main)
    assert seen == [1.0, 2.0]


def _move(r: Reading, box: Mailbox) -> None:
    """Post a message to t and mark it shown to bob: a position that must be written."""
    if "t" not in set(box):
        box.create_thread("t", creator="alice")
    seq = box.post("t", "m", sender="alice")
    r.position("t", "bob").shown(seq - 1, seq)


def test_positions_left_for_the_flush_are_due_again_after_it(box: Mailbox) -> None:
    r = Reading(box, save_every=60)
    calls: list[int] = []
    r.on_due = lambda: calls.append(1)
    for _ in range(2):
        _move(r, box)
        r.save("bob", now=False)
    r.flush("bob")
    _move(r, box)
    r.save("bob", now=False)
    assert len(calls) == 2


def test_the_overview_is_oldest_first_across_threads_and_skips_vanished_ones(box: Mailbox) -> None:
    box.create_thread("zeta", creator="alice")
    box.create_thread("alpha", creator="alice")
    old = box.post("zeta", "old task", sender="alice", type="task")
    time.sleep(0.02)
    new = box.post("alpha", "new task", sender="alice", type="task")
    board = box.tasks.overview(["alpha", "zeta", "never-made"])
    assert [(t.thread, t.seq) for t in board.tasks] == [("zeta", old), ("alpha", new)]


def test_resolve_refuses_what_is_neither_an_id_nor_a_topic(box: Mailbox) -> None:
    with pytest.raises(InvalidName):
        box.resolve("no such topic")


def test_taking_a_name_writes_this_client_into_its_card(root: Path) -> None:
    box = Mailbox(root, fsync=False)
    box.agents.register("bob", client="codex")
    s = Session(box, agent="bob", client="claude-code")
    s.me()
    assert box.agents.card("bob").client == "claude-code"
    s.close()
    box.close()


def test_a_wait_says_waiting_once_it_lasts_and_not_before(box: Mailbox) -> None:
    """The presence file says "waiting" from MARK_WAITING_S into a wait (a step ends there),
    and a wait that returns sooner writes nothing."""
    from mailslot.agent.seat import MARK_WAITING_S

    shown: list[float] = []
    pace = Pace(Seat(box, client=None, stale_after=10.0), 5.0, None, lambda: shown.append(1))
    assert pace.limit(0.1) == pytest.approx(MARK_WAITING_S - 0.1)
    assert shown == []
    assert pace.limit(MARK_WAITING_S) == 5.0
    assert shown == [1]


# ---------------------------------------------------------------- one task for anyone a wait


def drain_offers(d: Delivery, me: str) -> list[int]:
    """Wait with no timeout until nothing is left; return the seqs shown, in order."""
    shown: list[int] = []
    while (got := anyio.run(d.inbox, me, 0.0, Quiet())).messages:
        got.mark(len(got.messages))
        shown += [m.seq for m in got.messages]
    return shown


def test_an_inbox_wait_shows_one_task_for_anyone_and_holds_the_others_back(
    box: Mailbox,
) -> None:
    """Each wait shows one open task: the first in the agent's own order of the oldest open
    ones. The position stays before those held back; what was shown past it is not shown
    again, after a restart either, and what was held back comes then."""
    box.create_thread("work", creator="alice")
    bob = delivery(box)
    bob.reading.join("work", "bob")
    anyio.run(bob.inbox, "bob", 0.0, Quiet()).mark(0)  # the first look: nothing yet
    seqs = [box.post("work", f"job {i}", sender="alice", type="task") for i in range(5)]
    shown = []
    for _ in range(2):
        got = anyio.run(bob.inbox, "bob", 0.0, Quiet())
        (m,) = got.messages
        got.mark(1)
        assert got.more
        shown.append(m.seq)
    assert shown == sorted(seqs, key=lambda s: rank("bob", "work", s))[:2]
    held = sorted(set(seqs) - set(shown))
    assert bob.reading.position("work", "bob").inbox == held[0] - 1
    bob.reading.save("bob")

    again = delivery(box)  # a new server: only what was saved
    assert sorted(drain_offers(again, "bob")) == held
    assert drain_offers(again, "bob") == []


def test_agents_waiting_side_by_side_are_offered_different_tasks(box: Mailbox) -> None:
    box.create_thread("work", creator="alice")
    seqs = [box.post("work", f"job {i}", sender="alice", type="task") for i in range(PICK)]
    firsts = {}
    for name in ("w0", "w1", "w2", "w3"):
        d = delivery(box)
        d.reading.join("work", name)
        (m,) = anyio.run(d.inbox, name, 0.0, Quiet()).messages
        assert m.seq == min(seqs, key=lambda s: rank(name, "work", s))
        firsts[name] = m.seq
    assert len(set(firsts.values())) == 4, firsts


def test_a_task_held_back_and_taken_by_another_is_passed_and_the_next_one_offered(
    box: Mailbox,
) -> None:
    box.create_thread("work", creator="alice")
    bob = delivery(box)
    anyio.run(bob.inbox, "bob", 0.0, Quiet()).mark(0)
    seqs = [box.post("work", f"job {i}", sender="alice", type="task") for i in range(3)]
    first, second, third = sorted(seqs, key=lambda s: rank("bob", "work", s))
    got = anyio.run(bob.inbox, "bob", 0.0, Quiet())
    assert [m.seq for m in got.messages] == [first]
    got.mark(1)
    assert box.tasks.claim("work", second, agent="carol").won
    assert drain_offers(bob, "bob") == [third]
    assert bob.reading.position("work", "bob").inbox == box.head("work")  # none held now


def test_messages_to_the_agent_all_come_beside_one_task_for_anyone(box: Mailbox) -> None:
    box.create_thread("work", creator="alice")
    box.create_thread("side", creator="alice")
    bob = delivery(box)
    anyio.run(bob.inbox, "bob", 0.0, Quiet()).mark(0)
    tasks = [box.post("work", f"job {i}", sender="alice", type="task") for i in range(4)]
    to_bob = [
        box.post("work", "bob, read this", sender="alice", to=["bob"]),
        box.post("side", "and this", sender="alice", to=["bob"]),
        box.post("side", "a job for bob", sender="alice", type="task", to=["bob"]),
    ]
    got = anyio.run(bob.inbox, "bob", 0.0, Quiet())
    *addressed, offer = got.messages
    assert sorted(m.seq for m in addressed) == sorted(to_bob) and offer.seq in tasks
    got.mark(len(got.messages))
    assert sorted(drain_offers(bob, "bob")) == sorted(set(tasks) - {offer.seq})
