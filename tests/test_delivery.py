"""The delivery rule as a library, without MCP: what a wait returns, which tasks it offers, and
when positions move (coordination/inbox.py). The tools, hooks and console use this same rule;
tests/test_positions.py and tests/test_tasks_mcp.py drive it through real servers."""

from __future__ import annotations

import anyio

from mailslot import Mailbox
from mailslot.agent.inbox import Delivery
from mailslot.agent.reading import Reading


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
