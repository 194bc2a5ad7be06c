"""The agent-facing operations, called directly as plain functions (no MCP in between)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import until_async

from mailslot import InvalidMessage, Mailbox, NameTaken, NoSuchAgent, NoSuchThread
from mailslot.tools import (
    PROGRESS,
    TOOL_NAMES,
    Session,
    client_slug,
)
from mailslot.views.transcript import transcript_markdown


@pytest.fixture
def sessions(root: Path) -> Iterator[tuple[Session, Session]]:
    box = Mailbox(root, fsync=False)
    a = Session(box, agent="alice", progress_every=0.1)
    b = Session(Mailbox(root, fsync=False), agent="bob", progress_every=0.1)
    yield a, b
    for s in (a, b):
        s.close()
        s.box.close()


def test_tool_set_is_small_and_described() -> None:
    assert len(TOOL_NAMES) <= 15  # the budget: tasks, reservations and search included
    for name in TOOL_NAMES:
        doc = getattr(Session, name).__doc__
        assert doc and doc.count("\n") == 0 and len(doc) <= 100, f"{name}: one short line"


@pytest.mark.parametrize(
    ("client", "name"),
    [("claude-code", "claude-code"), ("Visual Studio Code", "visual-studio-code"),
     ("gemini-cli-mcp-client", "gemini-cli"), ("codex-mcp-client", "codex"), (None, "agent"),
     ("🤖", "agent")],
)  # fmt: skip
def test_names_from_clients(client: str | None, name: str) -> None:
    assert client_slug(client) == name


def test_derived_names_are_unique_among_live_processes(root: Path) -> None:
    box = Mailbox(root)
    one = Session(box, client="claude-code")
    two = Session(Mailbox(root), client="claude-code")
    assert (one.me(), two.me()) == ("claude-code", "claude-code-2")
    with pytest.raises(NameTaken, match="in use by a live process"):
        Session(Mailbox(root), agent="claude-code", strict_name=True)
    three = Session(Mailbox(root), agent="claude-code")  # a pinned name in use: a free variant
    assert (three.me(), three.fallback_from) == ("claude-code-3", "claude-code")
    three.close()
    one.close()
    again = Session(Mailbox(root), agent="claude-code")  # a name let go can be taken again
    assert again.me() == "claude-code"
    assert box.agents.card("claude-code").client == "claude-code", "a card is written on first use"
    again.close()
    two.close()


def test_a_conversation(sessions: tuple[Session, Session]) -> None:
    a, b = sessions
    t = a.thread_create("Fix login bug")
    assert (t["thread"], t["head"]) == ("fix-login-bug", 0)
    assert "msg_list(thread='fix-login-bug'" in t["hint"]
    assert b.thread_create("fix login bug")["thread"] == "fix-login-bug"
    posted = a.msg_post("fix-login-bug", "Bob, reproduce it?", type="task", to=["bob"])
    assert posted["seq"] == 1 and len(posted["id"]) == 32
    b.msg_post("fix-login-bug", "Reproduced.", type="result", reply_to=1, priority="high")
    listed = a.msg_list("fix-login-bug")
    assert [(m["seq"], m["from"], m["type"]) for m in listed["messages"]] == [
        (1, "alice", "task"),
        (2, "bob", "result"),
    ]
    assert listed["messages"][0]["to"] == ["bob"] and "meta" not in listed["messages"][0]
    assert listed["messages"][1]["reply_to"] == 1 and listed["messages"][1]["priority"] == "high"
    assert (listed["next_after_seq"], listed["has_more"]) == (2, False)
    assert a.thread_set_state("fix-login-bug", "closed", summary="Fixed in #12")["seq"] == 3
    got = a.thread_get("fix-login-bug")
    assert (got["state"], got["summary"], got["participants"]) == (
        "closed",
        "Fixed in #12",
        ["alice", "bob"],
    )
    assert [t["thread"] for t in a.thread_list()["threads"]] == ["fix-login-bug"]
    assert a.thread_list(state="review")["threads"] == []


def test_errors_name_what_exists(sessions: tuple[Session, Session]) -> None:
    a, _ = sessions
    a.thread_create("bus123")
    with pytest.raises(NoSuchThread) as e:
        a.msg_post("bus124", "hi")
    assert e.value.suggestions == ["bus123"]
    with pytest.raises(NoSuchAgent) as e2:
        a.msg_post("bus123", "hi", to=["carol"])
    assert e2.value.known == ["alice", "bob"]
    assert a.box.head("bus123") == 0


def test_pages_tell_how_to_continue(sessions: tuple[Session, Session]) -> None:
    a, _ = sessions
    a.thread_create("t")
    for i in range(7):
        a.msg_post("t", f"m{i}")
    page = a.msg_list("t", after_seq=0, limit=3)
    assert [m["seq"] for m in page["messages"]] == [1, 2, 3]
    assert page["has_more"] and "msg_list(thread='t', after_seq=3)" in page["hint"]
    big = "x" * 150_000
    a.msg_post("t", big)
    a.msg_post("t", big)
    page = a.msg_list("t", after_seq=7)
    assert [m["seq"] for m in page["messages"]] == [8], "one call returns at most ~200 KB"
    assert page["has_more"] and page["next_after_seq"] == 8


def test_a_wait_answered_at_once_writes_no_presence(sessions: tuple[Session, Session]) -> None:
    """In a busy conversation each wait returns within milliseconds: its presence file stays
    as it was (two file writes per message saved), and says "waiting" only while blocked."""
    a, b = sessions
    a.thread_create("t")
    presence = b.box.root / ".state" / "presence" / f"{b.agent}.json"

    async def scenario() -> None:
        before = presence.stat().st_mtime_ns, presence.read_bytes()
        for i in range(5):
            a.msg_post("t", f"m{i}")
            got = await b.msg_wait("t", after_seq=i, timeout_s=5)
            assert [m["content"] for m in got["messages"]] == [f"m{i}"]
        assert (presence.stat().st_mtime_ns, presence.read_bytes()) == before
        waiting = asyncio.create_task(b.msg_wait("t", after_seq=5, timeout_s=60))

        async def says_waiting() -> bool:
            return bool(json.loads(presence.read_bytes())["status"] == "waiting")

        await until_async("the blocked wait says 'waiting'", says_waiting)
        a.msg_post("t", "late")
        await waiting
        assert json.loads(presence.read_bytes())["status"] == "online"

    asyncio.run(scenario())


def test_wait_returns_new_messages_and_remembers(sessions: tuple[Session, Session]) -> None:
    a, b = sessions
    a.thread_create("t")

    async def scenario() -> tuple[dict, dict, dict]:
        waiting = asyncio.create_task(b.msg_wait("t", after_seq=0, timeout_s=60))

        async def blocked() -> bool:  # a wait says so once it has blocked a while
            return bool(b.agent_list()["agents"][1]["status"] == "waiting")

        await until_async("bob's wait has blocked", blocked)
        assert b.agent_list()["agents"][1]["waiting_on"] == "t"
        a.msg_post("t", "ping")
        first = await waiting
        a.msg_post("t", "pong")
        second = await b.msg_wait("t", timeout_s=5)  # no after_seq: continues where it left
        third = await b.msg_wait("t", timeout_s=0.3)
        return first, second, third

    first, second, third = asyncio.run(scenario())
    assert first["status"] == "messages" and [m["content"] for m in first["messages"]] == ["ping"]
    assert first["next_after_seq"] == 1 and "after_seq=1" in first["hint"]
    assert [m["content"] for m in second["messages"]] == ["pong"]
    assert third["status"] == "timeout" and third["messages"] == []
    assert "call msg_wait(thread='t', after_seq=2)" in third["hint"]
    assert b.agent_list()["agents"][1]["status"] == "online"


def test_inbox_wait_sees_new_threads(sessions: tuple[Session, Session]) -> None:
    a, b = sessions
    b.me()

    async def scenario() -> dict:
        waiting = asyncio.create_task(b.msg_wait(timeout_s=60))

        async def blocked() -> bool:  # it has looked: what comes now must wake it
            return b.box.agents.presence(str(b.agent)).status == "waiting"

        await until_async("bob's inbox wait has blocked", blocked)
        a.thread_create("other")
        a.msg_post("other", "not for bob")
        a.thread_create("new work")
        a.msg_post("new-work", "for bob", to=["bob"])
        return await waiting

    got = asyncio.run(scenario())
    assert [(m["thread"], m["content"]) for m in got["messages"]] == [("new-work", "for bob")]
    assert "next_after_seq" not in got
    again = asyncio.run(b.msg_wait(timeout_s=0.2))
    assert again["status"] == "timeout", "the inbox cursor was remembered"


def test_inbox_keeps_tasks_sent_before_the_first_wait(sessions: tuple[Session, Session]) -> None:
    a, b = sessions
    b.me()
    a.thread_create("t")
    a.msg_post("t", "do this", type="task", to=["bob"])
    got = asyncio.run(b.msg_wait(timeout_s=1))
    assert [m["content"] for m in got["messages"]] == ["do this"]


def test_damaged_inbox_cursor_is_ignored(sessions: tuple[Session, Session]) -> None:
    a, b = sessions
    b.me()
    a.thread_create("t")
    a.msg_post("t", "for bob", to=["bob"])
    cursors = b.box.root / ".state" / "cursors" / "bob"
    cursors.mkdir(parents=True, exist_ok=True)
    (cursors / "_inbox.json").write_text('{"../x": 3, "t": -1, "u": "seven"}')
    got = asyncio.run(b.msg_wait(timeout_s=1))
    assert [m["content"] for m in got["messages"]] == ["for bob"]


def test_wait_sends_progress(sessions: tuple[Session, Session]) -> None:
    a, _ = sessions
    a.thread_create("t")
    seen: list[tuple[float, str]] = []

    async def report(done: float, message: str) -> None:
        seen.append((done, message))

    async def scenario() -> dict:
        PROGRESS.set(report)
        return await a.msg_wait("t", after_seq=0, timeout_s=0.5)

    got = asyncio.run(scenario())
    assert got["status"] == "timeout"
    assert len(seen) >= 2 and all(m.startswith("waiting on t: ") for _, m in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen), "progress only increases"


def test_wait_arguments(sessions: tuple[Session, Session]) -> None:
    a, _ = sessions
    with pytest.raises(NoSuchThread):
        asyncio.run(a.msg_wait("nope", timeout_s=5))
    with pytest.raises(InvalidMessage, match="after_seq needs a thread"):
        asyncio.run(a.msg_wait(after_seq=3))


def test_register_and_list(sessions: tuple[Session, Session]) -> None:
    a, b = sessions
    card = a.agent_register(model="opus", description="plans the work")
    assert (card["agent"], card["model"]) == ("alice", "opus")
    renamed = a.agent_register(name="planner")
    assert renamed["agent"] == "planner" and a.agent == "planner"
    agents = {x["agent"]: x for x in b.agent_list()["agents"]}
    assert agents["planner"]["status"] == "online"
    assert agents["alice"]["status"] == "offline", "the old name was let go"
    assert agents["bob"]["you"] is True
    with pytest.raises(NameTaken):
        b.agent_register(name="planner")


def test_config(root: Path) -> None:
    s = Session(Mailbox(root), lang="Chinese", wait_default=40, wait_max=300)
    cfg = s.bus_get_config()
    assert cfg["preferred_language"] == "Chinese"
    assert cfg["wait"]["default_s"] == 40 and cfg["wait"]["max_s"] == 300
    # The config names the agent this session will post as (taken from the client's name).
    assert cfg["agent"] == "agent" == s.agent and "msg_wait" in cfg["protocol"]
    s.close()
    with pytest.raises(InvalidMessage):
        Session(Mailbox(root), wait_default=700, wait_max=600)


def test_transcript_markdown(sessions: tuple[Session, Session]) -> None:
    a, b = sessions
    a.thread_create("Release 2.0")
    a.msg_post("release-2-0", "Please tag it.", type="task", to=["bob"])
    b.msg_post("release-2-0", "Tagged **v2.0**.", type="result", reply_to=1)
    a.thread_set_state("release-2-0", "closed", summary="Released.")
    md = transcript_markdown(a.box, "release-2-0")
    assert md.startswith("# Release 2.0\n")
    assert "state **closed**" in md and "> **Summary:** Released." in md
    assert "**#1 alice** → bob · task · " in md and "**#2 bob** · result · re #1 · " in md
    assert "*state: discuss → closed*" in md and "Tagged **v2.0**." in md


def test_an_inbox_wait_reads_again_only_the_boards_that_can_have_changed(
    sessions: tuple[Session, Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While another agent holds a task bob could take, bob's inbox wait looks at its holder
    twice a second; it reads every thread's task board once, then only boards whose thread got
    a message or where others hold tasks, not all of them at every look."""
    a, b = sessions
    quiet = 100
    for i in range(quiet):
        a.thread_create(f"quiet {i}")
    a.thread_create("jobs")
    seq = a.msg_post("jobs", "a job for anyone", type="task")["seq"]
    carol = Session(Mailbox(a.box.root, fsync=False), agent="carol")
    try:
        assert carol.task_claim("jobs", seq)["claimed"] is True
        reads: list[str] = []
        board = b.box.tasks.board

        def counted(thread: str) -> object:
            reads.append(thread)
            return board(thread)

        monkeypatch.setattr(b.box.tasks, "board", counted)
        got = asyncio.run(b.msg_wait(timeout_s=4))
        assert got["status"] == "timeout"
        looks = reads.count("jobs")
        assert looks >= 6, "the held task's holder is looked at every half second"
        # Every board at the first look and once more when the wait's cursor first fills in;
        # after that only jobs' (about 8 looks would read every board 8 times).
        assert len(reads) - looks <= 2 * quiet + 5, (
            f"{len(reads)} board reads for {quiet + 1} threads in {looks} looks"
        )
    finally:
        carol.close()
        carol.box.close()


def test_a_task_in_a_thread_that_came_during_an_inbox_wait_moves_on_from_a_stalled_holder(
    sessions: tuple[Session, Session],
) -> None:
    """bob waits in his inbox; a thread is created meanwhile with a task for anyone that carol
    claims (lease 1 s) before bob's wait runs again, and carol goes silent: bob's wait looks at
    the holders in that new thread too, reopens the task and returns it."""
    a, b = sessions
    a.thread_create("old")
    carol = Session(Mailbox(a.box.root, fsync=False), agent="carol")
    try:

        async def scenario() -> dict[str, Any]:
            waiting = asyncio.create_task(b.msg_wait(timeout_s=20))

            async def blocked() -> bool:
                return b.box.agents.presence(str(b.agent)).status == "waiting"

            await until_async("bob's inbox wait has blocked", blocked)
            # No await from here to the claim: bob's wait cannot look in between, so it first
            # meets the task already held.
            a.thread_create("new")
            seq = a.msg_post("new", "a job for anyone", type="task")["seq"]
            assert carol.task_claim("new", seq, lease_s=1)["claimed"] is True
            return await waiting

        got = asyncio.run(scenario())
        assert [(m["thread"], m["content"]) for m in got["messages"]] == [
            ("new", "a job for anyone")
        ], got
        assert got["messages"][0]["task"]["reopened"], got
    finally:
        carol.close()
        carol.box.close()


def test_the_views_keep_their_notes_hints_and_limits(root: Path) -> None:
    box = Mailbox(root, fsync=False)
    a = Session(box, agent="alice")
    b = Session(Mailbox(root, fsync=False), agent="bob")
    assert a.files_release() == {
        "released": [],
        "hint": "you held no reservations: nothing to give back",
    }
    assert "whole repository" in a.files_reserve(["**"])["note"]
    a.files_release()
    assert "note" not in a.files_reserve(["src/a.py"])
    for name in ("t1", "t2", "t3"):
        a.thread_create(name)
    total = a.thread_list()["total"]
    assert "hint" in a.thread_list(limit=total - 1) and "hint" not in a.thread_list(limit=total)
    box.post("t1", "build it", sender="alice", type="task")
    box.post("t1", "more", sender="alice")
    created = b.thread_create("t1")
    assert created["open_tasks"] == 1
    assert f"after_seq={created['head']})" in created["hint"] and created["head"] > 0
    for i in range(3):
        box.post("t2", f"why {i}?", sender="alice", type="question")
    board = b.task_list(limit=2)
    assert len(board["questions"]) == 2 and "hint" in board
    assert a.bus_get_config()["limits"]["page_max"] == 200
    a.close()
    alice = next(e for e in b.agent_list()["agents"] if e["agent"] == "alice")
    assert alice["status"] == "offline" and "since" not in alice
    b.close()
    box.close()
    b.box.close()


def test_search_names_every_hit_that_did_not_fit(root: Path) -> None:
    box = Mailbox(root, fsync=False)
    s = Session(box, agent="alice")
    box.create_thread("t", creator="bob")
    filler = "x" * 70_000
    seqs = [box.post("t", f"needle {i} {filler}", sender="bob") for i in range(4)]
    out = s.msg_search("needle")
    shown = {h["seq"] for h in out["hits"]}
    rest = [q for q in seqs if q not in shown]
    assert rest and all(f"t#{q}" in out["hint"] for q in rest), out["hint"]
    s.close()
    box.close()


def test_a_clean_close_gives_the_reservations_back_in_the_ledger(root: Path) -> None:
    box = Mailbox(root, fsync=False)
    s = Session(box, agent="alice")
    assert s.files_reserve(["src/**"])["granted"]
    s.close()
    assert box.reservations.ledger().held == []
    box.close()
