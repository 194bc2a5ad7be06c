"""Backpressure and do not disturb (issue 31): what msg_post's result says of the agents it
addressed, and the reminders an agent that asked not to be disturbed is spared.

Real `mailslot serve` processes through the official MCP client, the real `mailslot hook` and
`mailslot dnd` commands as subprocesses, and positions and presence as those processes write
them on disk.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import agent, call, until, until_async
from test_channels import Channel, channel_agent, named, pushed

from mailslot import Mailbox
from mailslot.agent.pressure import RECENT_THREADS, UNREAD_AT, ago
from mailslot.tools import Session

INPUTS = Path(__file__).parent / "hook_inputs"


@pytest.fixture
def box(tmp_path: Path) -> Mailbox:
    b = Mailbox.init(tmp_path / "box")
    for name in ("alice", "bob", "carol"):
        b.agents.register(name)
    for topic in ("t", "x"):
        b.create_thread(topic, creator="alice")
    return b


def mailslot(root: Path, *argv: str, stdin: str = "") -> str:
    """Run the real `mailslot` command; return its stdout (it must succeed)."""
    done = subprocess.run(
        [sys.executable, "-m", "mailslot", *argv, "--root", str(root)],
        input=stdin, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def hook(root: Path, event: str, name: str = "bob") -> str:
    """Run `mailslot hook EVENT` for Claude Code as a client does; return what it prints."""
    text = (INPUTS / f"claude-code.{event}.json").read_text(encoding="utf-8")
    return mailslot(root, "hook", event, "--as", name, stdin=text)


def said(posted: dict[str, Any], name: str) -> str | None:
    """Return the line a post's result says of recipient name, or None."""
    lines = [line for line in posted.get("recipients", []) if line.startswith(f"{name} ")]
    assert len(lines) <= 1, posted
    return lines[0] if lines else None


_n = iter(range(1_000_000))


async def post(c: Any, thread: str, to: list[str], **more: Any) -> dict[str, Any]:
    """Post from c to `to` in thread (a new content each time: the loop guard refuses repeats)."""
    return dict(await call(c, "msg_post", thread=thread, content=f"note {next(_n)}", to=to, **more))


def test_a_post_to_agents_with_nothing_pending_says_nothing(box: Mailbox) -> None:
    async def main() -> None:
        async with agent(box.root, "bob") as bob, agent(box.root, "alice") as alice:
            await call(bob, "agent_list")  # online, reading nothing
            for i in range(UNREAD_AT - 2):  # one short of enough, with the post below
                box.post("x", f"m{i}", sender="carol", to=["bob"])
            # carol has a card and never ran a server: a person or a script, never "offline".
            got = await post(alice, "t", ["bob", "carol"], priority="urgent")
            assert "recipients" not in got, got

    anyio.run(main)


def test_many_unread_is_said_from_what_another_process_showed(box: Mailbox) -> None:
    """The count comes from the positions bob's own server writes on disk: once its wait has
    returned them, alice's server (another process) says nothing more."""

    async def main() -> None:
        for i in range(UNREAD_AT + 2):
            box.post("x", f"please look at {i}", sender="carol", to=["bob"])
        async with agent(box.root, "bob") as bob, agent(box.root, "alice") as alice:
            args = {"thread": "t", "content": "bob, see x", "to": ["bob"], "idempotency_key": "k"}
            got = await call(alice, "msg_post", **args)
            assert said(got, "bob") == f"bob has {UNREAD_AT + 2} unread messages", got
            shown = await call(bob, "msg_wait", timeout_s=5)
            assert len(shown["messages"]) == UNREAD_AT + 3  # carol's and alice's

            async def quiet() -> bool:  # the same post again: nothing new is stored
                again = await call(alice, "msg_post", **args)
                assert again["seq"] == got["seq"]
                return said(again, "bob") is None

            await until_async("bob's positions on disk", quiet)

    anyio.run(main)


def test_an_offline_agent_is_said_with_when_it_was_last_seen(box: Mailbox) -> None:
    async def main() -> None:
        async with agent(box.root, "bob") as bob:
            await call(bob, "agent_list")
        async with agent(box.root, "alice") as alice:
            got = await post(alice, "t", ["bob"], priority="urgent", type="task")
            line = said(got, "bob")
            assert line is not None and line.startswith("bob is offline (last seen "), got
            assert "delivered" in line
        # Urgent or not, it is stored, and bob's next session is given it.
        async with agent(box.root, "bob") as bob:
            waited = await call(bob, "msg_wait", timeout_s=5)
            assert [(m["seq"], m.get("priority")) for m in waited["messages"]] == [
                (got["seq"], "urgent")
            ]

    anyio.run(main)


def test_an_agent_waiting_on_another_thread_is_said(box: Mailbox) -> None:
    async def main() -> None:
        async with agent(box.root, "bob") as bob, agent(box.root, "alice") as alice:
            # Two waits on x, one right after the other: one stretch of waiting.
            await call(bob, "msg_wait", thread="x", timeout_s=1.5)
            first_ended = time.time()
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: call(bob, "msg_wait", thread="x", timeout_s=60))
                await until_async("bob waiting on x", lambda: _waiting(box, "bob", "x"))
                doc = box.agents.presence_doc("bob") or {}
                assert doc["waiting_since_epoch"] < first_ended, doc  # since the first wait
                got = await post(alice, "t", ["bob"])
                line = said(got, "bob")
                assert line is not None and line.startswith(
                    "bob has been waiting on thread 'x' for "
                ), got
                # A post in the thread it waits on wakes it: nothing to say.
                here = await post(alice, "x", ["bob"])
                assert "recipients" not in here, here
                tg.cancel_scope.cancel()

    anyio.run(main)


async def _waiting(box: Mailbox, name: str, on: str) -> bool:
    p = box.agents.presence(name)
    return p.status == "waiting" and p.waiting_on == on


def test_ago_reads_at_a_glance() -> None:
    now = 1_000_000.0
    assert [ago(now - s, now) for s in (5, 1200, 3 * 3600, 3 * 86400)] == [
        "5 s", "20 min", "3 h", "3 days",
    ]  # fmt: skip


def test_a_post_looks_at_recent_threads_not_every_thread(tmp_path: Path) -> None:
    """The count is a floor taken over this thread and the threads written last: unread
    messages in a thread written long before (past RECENT_THREADS others) are not counted."""
    box = Mailbox.init(tmp_path / "box")
    for name in ("alice", "bob", "carol"):
        box.agents.register(name)
    box.create_thread("old", creator="carol")
    for i in range(UNREAD_AT + 5):
        box.post("old", f"old {i}", sender="carol", to=["bob"])
    box.create_thread("t", creator="alice")
    alice = Session(Mailbox(box.root), agent="alice")
    got = alice.msg_post("t", "one", to=["bob"])
    assert said(got, "bob") == f"bob has {UNREAD_AT + 5} unread messages"
    for i in range(RECENT_THREADS):
        box.create_thread(f"busy {i}", creator="carol")
        box.post(f"busy-{i}", "chatter", sender="carol")
    looked: list[str] = []
    unanswered = alice.box.unanswered

    def spy(thread: str, name: str) -> tuple[list[int], int]:
        looked.append(thread)
        return unanswered(thread, name)

    alice.box.unanswered = spy  # type: ignore[method-assign]
    got = alice.msg_post("t", "two", to=["bob"])
    assert "recipients" not in got, got
    assert len(set(looked)) <= RECENT_THREADS and "old" not in looked, looked


def test_dnd_by_agent_register_holds_pushes_and_hooks_not_delivery(box: Mailbox) -> None:
    async def main() -> None:
        ext: Channel
        async with channel_agent(box.root, "bob") as (bob, ext), agent(box.root, "alice") as alice:
            assert (await call(bob, "agent_register", dnd=True))["dnd"] is True
            listed = {a["agent"]: a for a in (await call(alice, "agent_list"))["agents"]}
            assert (
                listed["bob"]["do_not_disturb"] is True and "do_not_disturb" not in listed["alice"]
            )
            first = await post(alice, "t", ["bob"], type="task", priority="urgent")
            assert said(first, "bob") == (
                "bob asked not to be disturbed: delivered, but no hook or push tells bob until "
                "that is lifted"
            )
            await anyio.sleep(2)  # a push would come within a fraction of this
            assert ext.got == [], [p.content for p in ext.got]
            assert hook(box.root, "prompt") == ""
            assert hook(box.root, "stop") == ""  # an unanswered task: the stop is not held
            # Delivery goes on: the wait returns it.
            waited = await call(bob, "msg_wait", timeout_s=5)
            assert [m["seq"] for m in waited["messages"]] == [first["seq"]]
            second = await post(alice, "t", ["bob"])
            await anyio.sleep(2)
            assert ext.got == []
            # Lifted: what is still news (the second; the wait returned the first) is pushed,
            # once, and the hooks do not repeat it.
            assert "dnd" not in await call(bob, "agent_register", dnd=False)
            assert await pushed(ext, "t", second["seq"]) == [("t", second["seq"])]
            assert (
                "do_not_disturb"
                not in {a["agent"]: a for a in (await call(alice, "agent_list"))["agents"]}["bob"]
            )
            third = await post(alice, "t", ["bob"])
            assert "recipients" not in third
            both = [("t", second["seq"]), ("t", third["seq"])]
            assert await pushed(ext, "t", third["seq"]) == both
            until("bob's reports on disk", lambda: hook(box.root, "prompt") == "")
            assert named(ext.got).count(("t", second["seq"])) == 1

    anyio.run(main)


def test_dnd_by_the_command_holds_hooks_and_lifting_reports_once(box: Mailbox) -> None:
    out = mailslot(box.root, "dnd", "bob", "--as", "dave")
    assert "do not disturb bob" in out
    agents = json.loads(mailslot(box.root, "agents", "--json"))["agents"]
    assert [a["agent"] for a in agents if a.get("do_not_disturb")] == ["bob"]
    assert "do not disturb" in mailslot(box.root, "agents")
    task = box.post("t", "review PR 7", sender="alice", to=["bob"], type="task")
    alice = Session(Mailbox(box.root), agent="alice")
    got = alice.msg_post("t", "and PR 8", to=["bob"], type="task")
    assert said(got, "bob") is not None and "not to be disturbed" in str(said(got, "bob"))
    for event in ("session-start", "prompt", "stop"):
        assert hook(box.root, event) == "", event
    assert json.loads(mailslot(box.root, "dnd", "bob", "--off", "--json")) == {
        "agent": "bob", "dnd": False, "was": True,
    }  # fmt: skip
    told = json.loads(hook(box.root, "prompt"))["hookSpecificOutput"]["additionalContext"]
    assert "review PR 7" in told and "and PR 8" in told
    assert hook(box.root, "prompt") == ""  # once
    held = json.loads(hook(box.root, "stop"))
    assert held["decision"] == "block" and f"#{task}]" in held["reason"]
    assert hook(box.root, "stop") == ""
    assert "recipients" not in alice.msg_post("t", "and PR 9", to=["bob"])


def test_dnd_of_an_unknown_name_is_refused(box: Mailbox) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mailslot", "dnd", "bobb", "--root", str(box.root)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1 and "no agent 'bobb'" in done.stderr
    assert not (box.root / ".state" / "dnd" / "bobb.json").exists()
