"""An audit of issue 31 (receipts, backpressure and do not disturb, the loop guard): promises
of the docs that mutants of the code got past tests/test_receipts.py, tests/test_pressure.py
and tests/test_loops.py.

Real `mailslot serve` processes through the official MCP client, the real `mailslot hook`
command, positions and presence as those processes write them on disk.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import agent, call, until_async
from test_console import UI, receipts, ui, ui_root  # noqa: F401  (ui: a fixture)
from test_loops import mailslot, records, refused, settings
from test_pressure import said
from test_receipts import hook, reach, states, two_clones
from test_sync import make_clone, remote, sync  # noqa: F401  (remote: a fixture)

from mailslot import Mailbox
from mailslot.agent.pressure import UNREAD_AT
from mailslot.agent.receipts import Receipts
from mailslot.store.errors import LoopRefused
from mailslot.store.positions import MAX_RECEIPTS
from mailslot.views.model import PAGE_BUDGET_BYTES


@pytest.fixture
def box(tmp_path: Path) -> Mailbox:
    b = Mailbox.init(tmp_path / "box")
    for name in ("alice", "bob", "carol"):
        b.agents.register(name)
    for topic in ("t", "x", "y"):
        b.create_thread(topic, creator="alice")
    return b


def big(box: Mailbox, n: int) -> list[int]:
    """Post n messages from alice to bob in t, so large that a page holds two of them."""
    size = PAGE_BUDGET_BYTES * 45 // 100
    return [box.post("t", f"part {i} " + "x" * size, sender="alice", to=["bob"])
            for i in range(n)]  # fmt: skip


# ---------------------------------------------------------------- receipts


def test_a_wait_cut_by_its_size_shows_only_what_it_returned(box: Mailbox) -> None:
    """shown: a wait returned it. An inbox wait that returns two of three large messages (the
    rest next time, has_more) leaves the third stored."""
    seqs = big(box, 3)

    async def main() -> None:
        async with agent(box.root, "bob") as b:
            got = await call(b, "msg_wait", timeout_s=10)
            assert [m["seq"] for m in got["messages"]] == seqs[:2] and got["has_more"], got
            await reach(box.root, seqs[1], {"bob": "shown"})
            assert states(box.root, seqs[2]) == {"bob": "stored"}, "shown but never returned"

    anyio.run(main)


def test_a_read_cut_by_its_size_shows_only_what_it_returned(box: Mailbox) -> None:
    """The same for msg_list: what the page did not return is not shown."""
    seqs = big(box, 3)

    async def main() -> None:
        async with agent(box.root, "bob") as b:
            page = await call(b, "msg_list", thread="t")
            assert [m["seq"] for m in page["messages"]] == seqs[:2] and page["has_more"], page
            await reach(box.root, seqs[1], {"bob": "shown"})
            assert states(box.root, seqs[2]) == {"bob": "stored"}, "shown but never returned"

    anyio.run(main)


def test_a_reported_message_is_not_read_and_says_when_it_was_reported(box: Mailbox) -> None:
    """A hook told bob of alice's message: the receipt says when ("with when"), and
    msg_wait(until_read) goes on waiting (reported is not shown) until bob's wait shows it."""

    async def main() -> None:
        async with agent(box.root, "alice") as a, agent(box.root, "bob") as b:
            seq = (await call(a, "msg_post", thread="t", content="review?", to=["bob"]))["seq"]
            assert "review?" in await anyio.to_thread.run_sync(hook, box.root, "bob")
            page = await call(a, "msg_list", thread="t")
            assert re.fullmatch(r"reported (just now|\d+ s ago)",
                                page["messages"][0]["receipts"]["bob"]), page  # fmt: skip
            done: dict[str, Any] = {}
            async with anyio.create_task_group() as tg:

                async def wait() -> None:
                    done.update(await call(a, "msg_wait", thread="t", until_read=seq,
                                           timeout_s=120))  # fmt: skip

                tg.start_soon(wait)
                await anyio.sleep(1.5)  # the wait looks every 0.25 s
                assert not done, f"returned while bob was only told of it: {done}"
                await call(b, "msg_wait", timeout_s=10)
            assert done["status"] == "read" and done["receipts"]["bob"].startswith("shown"), done

    anyio.run(main)


def test_until_read_waits_for_every_recipient(box: Mailbox) -> None:
    """until_read returns "read" once every recipient was shown the message: bob reading it
    does not end alice's wait while carol has not."""

    async def main() -> None:
        async with (
            agent(box.root, "alice") as a,
            agent(box.root, "bob") as b,
            agent(box.root, "carol") as c,
        ):
            seq = (await call(a, "msg_post", thread="t", content="both?", to=["bob", "carol"]))[
                "seq"
            ]
            done: dict[str, Any] = {}
            async with anyio.create_task_group() as tg:

                async def wait() -> None:
                    done.update(await call(a, "msg_wait", thread="t", until_read=seq,
                                           timeout_s=120))  # fmt: skip

                tg.start_soon(wait)
                await call(b, "msg_wait", timeout_s=10)
                await reach(box.root, seq, {"bob": "shown", "carol": "stored"})
                await anyio.sleep(1.5)  # the wait looks every 0.25 s
                assert not done, f"returned while carol had not read it: {done}"
                await call(c, "msg_wait", timeout_s=10)
            assert done["status"] == "read", done
            assert set(done["receipts"]) == {"bob", "carol"}, done

    anyio.run(main)


def test_a_sender_among_the_recipients_has_no_receipt(box: Mailbox) -> None:
    """A receipt is per recipient, its sender left out: alice writing to herself and bob sees
    bob's alone, and until_read waits for bob alone."""

    async def main() -> None:
        async with agent(box.root, "alice") as a, agent(box.root, "bob") as b:
            await call(a, "msg_post", thread="t", content="a note to self", to=["alice"])
            quiet = await call(a, "msg_wait", thread="t", timeout_s=0.1)
            assert "receipts" not in quiet, "a message to its sender alone has no receipts"
            posted = await call(a, "msg_post", thread="t", content="us", to=["alice", "bob"])
            seq = posted["seq"]
            got = await call(a, "thread_get", thread="t")
            assert got["receipts"] == {f"t#{seq}": {"bob": "stored"}}, got
            page = await call(a, "msg_list", thread="t")
            assert [m.get("receipts") for m in page["messages"]] == [None, {"bob": "stored"}]
            await call(b, "msg_wait", timeout_s=10)
            read = await call(a, "msg_wait", thread="t", until_read=seq, timeout_s=30)
            assert read["status"] == "read" and set(read["receipts"]) == {"bob"}, read

    anyio.run(main)


def test_a_position_from_before_receipts_still_says_shown(box: Mailbox) -> None:
    """A read position written before receipts were kept (no shown_at): what its inbox passed
    reads as shown, its time unknown."""
    seq = box.post("t", "for bob", sender="alice", to=["bob"])

    async def main() -> None:
        async with agent(box.root, "bob") as b:
            got = await call(b, "msg_wait", timeout_s=10)
            assert [m["seq"] for m in got["messages"]] == [seq]
            await reach(box.root, seq, {"bob": "shown"})

    anyio.run(main)
    path = box.root / ".state" / "cursors" / "bob" / "t.json"
    doc = json.loads(path.read_text())
    assert doc.pop("shown_at"), doc
    path.write_text(json.dumps(doc))  # as a server from before receipts left it
    assert states(box.root, seq) == {"bob": "shown"}


def read_many(box: Mailbox) -> list[int]:
    """Post 300 messages to bob in t (from a person, whom no guard stops); let bob's server
    read them all with msg_list, in two pages; return their seqs once his receipts are on
    disk."""
    seqs = [box.post("t", f"m{i}", sender="dana", to=["bob"]) for i in range(300)]

    async def main() -> None:
        async with agent(box.root, "bob") as b:
            first = await call(b, "msg_list", thread="t", limit=200)
            second = await call(b, "msg_list", thread="t", after_seq=first["next_after_seq"],
                                limit=200)  # fmt: skip
            assert [m["seq"] for m in first["messages"] + second["messages"]] == seqs
            await reach(box.root, seqs[-1], {"bob": "shown"})

    anyio.run(main)
    return seqs


def test_the_last_receipts_are_kept(box: Mailbox) -> None:
    """A position keeps the receipts of the last MAX_RECEIPTS messages shown: after bob read
    more than that in two pages, the second page's are all there, its first one too."""
    seqs = read_many(box)
    assert states(box.root, seqs[200]) == {"bob": "shown"}, "a newer receipt was dropped"
    assert states(box.root, seqs[-MAX_RECEIPTS]) == {"bob": "shown"}


def test_a_message_read_long_ago_stays_shown(box: Mailbox) -> None:
    """ "The furthest of stored, reported, shown, answered": bob's read position covers his
    first message, which he was shown, after 299 more; its receipt must not go back."""
    seqs = read_many(box)
    assert states(box.root, seqs[0]) == {"bob": "shown"}


def test_the_persons_read_in_the_console_shows_every_message_to_them_it_passes(ui: UI) -> None:  # noqa: F811
    """dave reads up to the newest message at once: both of alice's messages to him before it
    are shown to him, not the last alone."""
    ui.json("POST", "/api/threads/release/messages", {"content": "I am here."})
    with Mailbox(ui_root(ui)) as box:
        first = box.post("release", "dave, one", sender="alice", to=["dave"])
        second = box.post("release", "dave, two", sender="alice", to=["dave"])
    assert ui.json("POST", "/api/threads/release/read", {"seq": second}) == {"ok": True}
    assert receipts(ui, first)["dave"]["state"] == "shown"
    assert receipts(ui, second)["dave"]["state"] == "shown"


def test_a_receipt_from_another_clone_is_a_time_in_the_past_here(
    tmp_path: Path,
    git: dict[str, str],
    remote: Path,  # noqa: F811
) -> None:
    """ "Times are the reader's clock; what another machine reported travels as an age": bob
    is shown alice's message on clone b; on clone a it reads shown, at a time between bob's
    wait and now, never in the future."""
    a, b, seq = two_clones(tmp_path, git, remote)
    before = time.time()

    async def main() -> None:
        async with agent(b, "bob") as bob:
            got = await call(bob, "msg_wait", timeout_s=10)
            assert [m["seq"] for m in got["messages"]] == [seq]
            await reach(b, seq, {"bob": "shown"})
            await anyio.sleep(3)  # an age the heartbeat carries
            await anyio.to_thread.run_sync(sync, git, b)
        await anyio.to_thread.run_sync(sync, git, a)

    anyio.run(main)
    with Mailbox(a) as box:
        [got] = Receipts(box).of(box.get("t", seq))
    assert got.state == "shown" and got.at is not None, got
    assert before <= got.at <= time.time(), (before, got, time.time())


# ---------------------------------------------------------------- backpressure


def test_unread_is_said_from_exactly_ten(box: Mailbox) -> None:
    """ "10 or more messages ... besides this one": nine say nothing, ten say so."""
    for i in range(UNREAD_AT - 1):
        box.post("x", f"please look at {i}", sender="carol", to=["bob"])

    async def main() -> None:
        async with agent(box.root, "alice") as a:
            nine = await call(a, "msg_post", thread="t", content="one", to=["bob"])
            assert "recipients" not in nine, nine
            ten = await call(a, "msg_post", thread="t", content="two", to=["bob"])
            assert said(ten, "bob") == f"bob has {UNREAD_AT} unread messages", ten

    anyio.run(main)


async def _waiting(box: Mailbox, name: str, on: str) -> bool:
    p = box.agents.presence(name)
    return p.status == "waiting" and p.waiting_on == on


def test_an_agent_waiting_on_its_inbox_is_not_said_to_wait_elsewhere(box: Mailbox) -> None:
    """Waiting elsewhere is a wait this post does not wake; an inbox wait is woken by it."""

    async def main() -> None:
        async with (
            agent(box.root, "bob") as bob,
            agent(box.root, "alice") as alice,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(lambda: call(bob, "msg_wait", timeout_s=60))
            await until_async("bob waiting on his inbox", lambda: _waiting(box, "bob", "inbox"))
            got = await call(alice, "msg_post", thread="t", content="hi", to=["bob"])
            assert "recipients" not in got, got
            tg.cancel_scope.cancel()

    anyio.run(main)


def test_waiting_since_counts_only_waits_on_the_same_thread(box: Mailbox) -> None:
    """ "for how long counts its waits there that followed each other": a wait on y, then one
    on x at once, waits on x since the second began."""

    async def main() -> None:
        async with agent(box.root, "bob") as bob:
            await call(bob, "msg_wait", thread="y", timeout_s=1.5)
            began = time.time()
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: call(bob, "msg_wait", thread="x", timeout_s=60))
                await until_async("bob waiting on x", lambda: _waiting(box, "bob", "x"))
                doc = box.agents.presence_doc("bob") or {}
                assert doc["waiting_since_epoch"] >= began, (doc, began)
                tg.cancel_scope.cancel()

    anyio.run(main)


def test_what_the_inbox_returned_is_not_unread(box: Mailbox) -> None:
    """Unread is what bob has not been shown: the message his inbox wait returned last does
    not count, so one plus nine more is nine unread, said of nothing."""
    first = box.post("x", "please look", sender="carol", to=["bob"])

    async def main() -> None:
        async with agent(box.root, "bob") as bob, agent(box.root, "alice") as alice:
            got = await call(bob, "msg_wait", timeout_s=10)
            assert [m["seq"] for m in got["messages"]] == [first]
            await reach(box.root, first, {"bob": "shown"}, thread="x")
            for i in range(UNREAD_AT - 1):
                box.post("x", f"and at {i}", sender="carol", to=["bob"])
            posted = await call(alice, "msg_post", thread="t", content="see x", to=["bob"])
            assert "recipients" not in posted, posted

    anyio.run(main)


def test_several_pressures_make_one_line(box: Mailbox) -> None:
    """ "Several at once make one line": bob offline and asked not to be disturbed says both."""

    async def main() -> None:
        async with agent(box.root, "bob") as bob:
            assert (await call(bob, "agent_register", dnd=True))["dnd"] is True
        async with agent(box.root, "alice") as alice:
            posted = await call(alice, "msg_post", thread="t", content="when back", to=["bob"])
            line = said(posted, "bob")
            assert line is not None and line.startswith("bob is offline (last seen "), posted
            assert " and asked not to be disturbed: delivered, but no hook or push" in line, line

    anyio.run(main)


# ---------------------------------------------------------------- the loop guard


def test_a_refusal_after_a_person_lifted_the_guard_is_recorded_again(box: Mailbox) -> None:
    """ "The first refusal since the last person's message leaves one status message", and
    "any message from a person" lifts it: in one server, alice floods bob and is refused (one
    record); a person's status lifts it; she floods again and is refused again: a second
    record."""
    settings(box.root, {"exchanges": 3})

    async def main() -> None:
        async with agent(box.root, "alice") as a:
            for round_ in (1, 2):
                for i in range(3):
                    await call(a, "msg_post", thread="t", to=["bob"], content=f"{round_}.{i}")
                text = await refused(a, "msg_post", thread="t", to=["bob"], content="more")
                assert "has sent bob 3 messages" in text, text
                assert len(records(box.root, "t")) == round_
                person = mailslot(box.root, "post", "t", "Stepping in.", "--type", "status",
                                  "--as", "dana")  # fmt: skip
                assert person.returncode == 0, person.stderr

    anyio.run(main)


def test_a_reply_is_addressed_to_whom_it_answers(box: Mailbox) -> None:
    """ "addressed to an agent (in to, or a reply to one of its messages)": bob answering
    alice's messages by reply_to alone is refused once the pair has exchanged the limit."""
    settings(box.root, {"exchanges": 3})
    with Mailbox(box.root) as b:
        last = [b.post("t", f"question {i}", sender="alice", to=["bob"]) for i in range(3)][-1]
        with pytest.raises(LoopRefused) as e:
            b.post("t", "an answer", sender="bob", reply_to=last)
    assert e.value.rule == "exchanges" and e.value.agents == ["bob", "alice"], e.value


def test_a_repeat_of_any_of_the_last_five_is_refused_not_of_older_ones(box: Mailbox) -> None:
    """ "it says what one of its own last 5 there said": the same words after four others are
    refused; after five others they are not."""
    thread = "t"
    box.post(thread, "The build is green.", sender="alice", to=["bob"])
    for i in range(4):
        box.post(thread, f"note {i}", sender="alice", to=["bob"])
    with pytest.raises(LoopRefused) as e:
        box.post(thread, "The build is green.", sender="alice", to=["bob"])
    assert e.value.rule == "repeats"
    box.post(thread, "note 4", sender="alice", to=["bob"])  # five others since it now
    box.post(thread, "The build is green.", sender="alice", to=["bob"])


def test_a_limit_of_zero_is_no_limit(box: Mailbox) -> None:
    """ "exchanges" and "messages" of 0 mean not limited: 60 posts of three agents pass."""
    settings(box.root, {"exchanges": 0, "messages": 0})
    with Mailbox(box.root) as b:
        for i in range(60):
            sender, to = [("alice", "bob"), ("bob", "carol"), ("carol", "alice")][i % 3]
            b.post("t", f"idea {i}", sender=sender, to=[to])
    assert records(box.root, "t") == []
