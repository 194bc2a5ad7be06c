"""The loop guard (issue 31): agents in a loop are refused their next post until a person
writes; a person is never refused, and a flood from one agent never buries a person's message.

Agents are real `mailslot serve` processes driven by the official MCP client; people post with
the real `mailslot` command (or the console) as a subprocess. The task drain, where the process
boundary does not matter, runs through the library for speed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import agent, call, documentation
from mcp import types
from mcp.client import Client

from mailslot import Mailbox
from mailslot.store.errors import LoopRefused, RootError
from mailslot.store.format import Message


@pytest.fixture
def root(tmp_path: Path) -> Path:
    box = Mailbox.init(tmp_path / "box", fsync=False)
    return box.root


def settings(root: Path, loop_guard: object) -> None:
    """Set "loop_guard" in root's mailslot.json."""
    config = root / "mailslot.json"
    doc = json.loads(config.read_text())
    doc["loop_guard"] = loop_guard
    config.write_text(json.dumps(doc))


async def refused(c: Client, tool: str, **args: Any) -> str:
    """Call tool; assert the server answered with a tool error; return its text."""
    result = await c.call_tool(tool, args)
    assert isinstance(result.content[0], types.TextContent)
    assert result.is_error, f"{tool}({args}) should have been refused: {result.content[0].text}"
    return result.content[0].text


def mailslot(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the `mailslot` command on root, as a person's shell runs it."""
    return subprocess.run(
        [sys.executable, "-m", "mailslot", *args, "--root", str(root)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def records(root: Path, thread: str) -> list[Message]:
    """Return the loop guard's records in thread."""
    return [m for m in Mailbox(root).messages(thread) if "loop_guard" in m.meta]


# ---------------------------------------------------------------- a ping-pong loop

DOCUMENTED = re.search(r"```\n(loop guard, thread 'plan'.*?)```", documentation(), re.S)[1]


def shape(text: str) -> str:
    """Return a refusal's text with its lines joined, and its duration and path left out."""
    text = text.removeprefix("Error executing tool msg_post: ")  # the SDK's words
    text = re.sub(r"in \d+ (s|min)", "in N", " ".join(text.split()))
    return re.sub(r"\S+/mailslot\.json", "PATH", text)


def test_a_ping_pong_pair_is_refused_within_the_limit_and_a_person_lifts_it(root: Path) -> None:
    Mailbox(root).create_thread("plan", creator="alice")

    async def main() -> None:
        async with agent(root, "alice") as a, agent(root, "bob") as b:
            await call(a, "msg_wait", thread="plan", timeout_s=0.1)  # both on the thread
            await call(b, "msg_wait", thread="plan", timeout_s=0.1)
            # Alice addresses bob by name; bob only replies (reply_to alice's message): both
            # count as an exchange. The pair thanks and re-asks each other.
            stored = 0
            last = (
                await call(
                    a,
                    "msg_post",
                    thread="plan",
                    to=["bob"],
                    content="Shall I take the parser while you take the lexer?",
                )
            )["seq"]
            stored += 1
            error = ""
            for turn in range(1, 40):
                if turn % 2:
                    got = await call(b, "msg_wait", thread="plan", timeout_s=30)
                    seq = got["messages"][-1]["seq"]
                    args = {"reply_to": seq, "content": f"Sounds good, thanks! ({turn}) And you?"}
                    c = b
                else:
                    got = await call(a, "msg_wait", thread="plan", timeout_s=30)
                    seq = got["messages"][-1]["seq"]
                    args = {"to": ["bob"], "content": f"Great, thank you too! ({turn}) Ready?"}
                    c = a
                result = await c.call_tool("msg_post", {"thread": "plan", **args})
                assert isinstance(result.content[0], types.TextContent)
                if result.is_error:
                    error = result.content[0].text
                    break
                last = json.loads(result.content[0].text)["seq"]
                stored += 1
            # Refused at the 21st: 20 stored (the default limit), none of them a person's.
            assert stored == 20, (stored, error)
            assert "loop guard" in error and "have exchanged 20 messages" in error, error
            assert "alice and bob" in error or "bob and alice" in error, error
            assert '"loop_guard": {"exchanges": 40}' in error and "mailslot.json" in error
            assert "msg_wait" in error and "a person" in error, error  # what to do next
            assert shape(error) == shape(DOCUMENTED), "docs/coordination.md shows another text"

            # Nothing of the refused post was stored; one record, for a person to see.
            box = Mailbox(root)
            [record] = records(root, "plan")
            assert record.type == "status" and record.to == [] and record.seq == last + 1
            assert "exchanged 20 messages" in record.content and "refused" in record.content
            assert box.head("plan") == record.seq

            # The other one of the pair is refused too; the record is not written again.
            other = a if c is b else b
            text = await refused(other, "msg_post", thread="plan", content="Still there?",
                                 to=["bob" if other is a else "alice"])  # fmt: skip
            assert "loop guard" in text
            assert len(records(root, "plan")) == 1 and box.head("plan") == record.seq
            # The record woke nobody's inbox: it is addressed to no one.
            waited = await call(b, "msg_wait", timeout_s=0.3)
            assert all(m["seq"] != record.seq for m in waited["messages"])

            # An agent using the command is refused with the command's words.
            cmd = mailslot(root, "post", "plan", "me again", "--as", "alice", "--to", "bob")
            assert cmd.returncode != 0 and "loop guard" in cmd.stderr, cmd.stderr
            assert "mailslot post plan TEXT" in cmd.stderr, cmd.stderr

            # A person's message (the command, as a name with no agent card) lifts it.
            person = mailslot(root, "post", "plan", "Stop thanking; alice: parser, bob: lexer.",
                              "--as", "dana")  # fmt: skip
            assert person.returncode == 0, person.stderr
            posted = await call(a, "msg_post", thread="plan", to=["bob"], content="On it.")
            assert posted["seq"] == box.head("plan")
            await call(b, "msg_post", thread="plan", reply_to=posted["seq"], content="Me too.")

    anyio.run(main)


def test_the_console_posts_as_a_person_and_lifts_the_guard(tmp_path: Path) -> None:
    from test_console import launch  # a real `mailslot ui --as dave`; alice and bob have cards

    for ui in launch(tmp_path / "box"):
        box = Mailbox(tmp_path / "box")
        settings(box.root, {"exchanges": 4})
        box = Mailbox(box.root)
        for i in range(3):  # with alice's question to bob already there: 4 exchanged
            a, b = ("alice", "bob") if i % 2 else ("bob", "alice")
            box.post("release", f"round {i}", sender=a, to=[b])
        with pytest.raises(LoopRefused):
            box.post("release", "round 4", sender="alice", to=["bob"])
        ui.json("POST", "/api/threads/release/messages", {"content": "Ship it, both of you."})
        box.post("release", "round 4", sender="alice", to=["bob"])  # lifted


# ---------------------------------------------------------------- repeats


def test_the_same_content_again_is_refused_an_idempotency_retry_is_not(root: Path) -> None:
    Mailbox(root).create_thread("review", creator="alice")

    async def main() -> None:
        async with agent(root, "alice") as a, agent(root, "bob") as b:
            first = await call(a, "msg_post", thread="review", to=["bob"],
                               content="The tests pass on my machine.")  # fmt: skip
            await call(a, "msg_post", thread="review", content="Anything else?", to=["bob"])
            text = await refused(a, "msg_post", thread="review", to=["bob"],
                                 content="  The tests   pass\non my machine.\n")  # fmt: skip
            assert f"the same content as your #{first['seq']}" in text, text
            assert '"loop_guard": {"repeats": false}' in text, text
            # Another agent may say the same thing; words said again to no one are no loop.
            await call(b, "msg_post", thread="review", content="The tests pass on my machine.")
            await call(b, "msg_post", thread="review", content="The tests pass on my machine.")

            # A retry with the idempotency key gets the first post: not a repeat, no error.
            keyed = {"thread": "review", "to": ["bob"], "idempotency_key": "report-1",
                     "content": "Benchmarks: 352 tasks/s."}  # fmt: skip
            once = await call(a, "msg_post", **keyed)
            again = await call(a, "msg_post", **keyed)
            assert again["seq"] == once["seq"]
            box = Mailbox(root)
            assert [m.content for m in box.messages("review")].count(keyed["content"]) == 1
            assert len(records(root, "review")) == 1  # the refusal above, recorded once

            # After a person's message the same words may be said again.
            assert mailslot(root, "post", "review", "Say it again?", "--as", "dana").returncode == 0
            await call(a, "msg_post", thread="review", to=["bob"],
                       content="The tests pass on my machine.")  # fmt: skip

    anyio.run(main)


# ---------------------------------------------------------------- what never triggers it

# A code review by three agents: 22 messages in one thread, replies both ways, questions, a
# broadcast; the busiest pair (coder and reviewer) exchanges 12 of them, with no person.
# (sender, to, index of the message it replies to, type, content)
REVIEW: list[tuple[str, list[str], int | None, str, str]] = [
    ("coder", ["reviewer", "tester"], None, "message",
     "PR #42 is up: it moves the config loader to TOML (src/config.py, 180 lines) and keeps "
     "JSON as a fallback. Could you review it, and could you run the integration suite?"),
    ("reviewer", ["coder"], 0, "question",
     "Why keep the JSON fallback? Is anyone still on config.json?"),
    ("tester", ["coder"], 0, "message", "Running the integration suite on a59c1e; ~6 minutes."),
    ("coder", ["reviewer"], 1, "message",
     "Two deployments still ship config.json (ops-eu and the demo box). The fallback logs a "
     "deprecation warning; I would remove it in 3.0."),
    ("reviewer", [], 3, "question",
     "OK. load_config() swallows TOMLDecodeError and returns {}: a typo would silently give "
     "the defaults. Can it raise ConfigError with the line number?"),
    ("coder", [], 4, "message", "Good catch. Pushed 7d02f3b: it raises ConfigError('line 12')."),
    ("reviewer", [], 5, "question", "Does the error name the file when it is not in the cwd?"),
    ("coder", [], 6, "message", "Yes, the absolute path; test_config_error_names_the_file."),
    ("tester", ["coder"], 2, "message",
     "Integration suite: 212 passed, 3 failed, all in test_reload.py: the watcher still "
     "looks for config.json."),
    ("coder", [], 8, "question", "Is that with the JSON file present or absent?"),
    ("tester", [], 9, "message", "Absent: the fixture writes config.toml only."),
    ("coder", ["tester"], 10, "message",
     "Then the reloader's glob is wrong. Fixed in 91be4aa (it watches both names). Could you "
     "run test_reload.py again?"),
    ("reviewer", ["tester"], None, "question",
     "While you are at it, can you check the Windows runner? The loader's paths changed."),
    ("tester", [], 12, "message", "Windows job queued; I will report both together."),
    ("tester", ["coder", "reviewer"], 11, "message",
     "test_reload.py: 14 passed. Windows: 212 passed, 1 skipped (symlinks)."),
    ("reviewer", ["coder"], 14, "message",
     "The skip is expected on that runner. One nit: load_config's docstring still says JSON."),
    ("coder", [], 15, "message", "Updated in c3f9e20, with the README's configuration section."),
    ("reviewer", ["coder", "tester"], None, "message", "Approved. Merge when CI is green."),
    ("coder", [], 17, "message", "CI is green on c3f9e20; merging now."),
    ("tester", ["coder"], 18, "message",
     "I will watch tonight's nightly run and post here if anything regresses."),
    ("coder", [], 19, "message", "Thanks. The release note is in CHANGELOG.md under 2.4."),
    ("reviewer", ["coder"], 20, "message", "Closing my review; nice work on the errors."),
]  # fmt: skip


def test_a_busy_healthy_review_of_three_agents_never_meets_the_guard(root: Path) -> None:
    Mailbox(root).create_thread("review-pr-42", creator="coder")

    async def main() -> None:
        async with agent(root, "coder") as c, agent(root, "reviewer") as r, \
                agent(root, "tester") as t:  # fmt: skip
            clients = {"coder": c, "reviewer": r, "tester": t}
            seqs: list[int] = []
            for sender, to, reply, type_, content in REVIEW:
                args: dict[str, Any] = {"thread": "review-pr-42", "content": content,
                                        "type": type_}  # fmt: skip
                if to:
                    args["to"] = to
                if reply is not None:
                    args["reply_to"] = seqs[reply]
                seqs.append((await call(clients[sender], "msg_post", **args))["seq"])

    anyio.run(main)
    assert len(list(Mailbox(root).messages("review-pr-42"))) == len(REVIEW)
    assert records(root, "review-pr-42") == []


def test_a_thousand_task_drain_in_one_thread_never_meets_the_guard(root: Path) -> None:
    box = Mailbox(root)
    workers = [f"w{i}" for i in range(4)]
    for name in ("boss", *workers):
        box.agents.register(name)
    box.create_thread("drain", creator="boss")
    tasks = [box.post("drain", "job", sender="boss", type="task") for _ in range(1000)]
    for i, seq in enumerate(tasks):
        w = workers[i % 4]
        box.tasks.claim("drain", seq, agent=w)
        box.post("drain", "done", sender=w, type="result", reply_to=seq)  # the same words
        if i % 250 == 249:  # a word between boss and a worker now and then: counted, not refused
            asked = box.post("drain", f"{w}, {i + 1} done: keeping up?", sender="boss", to=[w])
            box.post("drain", f"Yes, {i + 1} done, no failures.", sender=w, reply_to=asked)
    results = [m for m in box.messages("drain") if m.type == "result"]
    assert len(results) == 1000 and records(root, "drain") == []


def test_a_person_is_never_refused(root: Path) -> None:
    box = Mailbox(root)
    for name in ("alice", "bob", "carol"):
        box.agents.register(name)
    box.create_thread("t", creator="alice")
    for i in range(50):  # a storm of agents, up to the limit: the next agent's post is refused
        box.post("t", f"idea {i}", sender=("alice", "bob", "carol")[i % 3])
    with pytest.raises(LoopRefused):
        box.post("t", "idea 50", sender="alice")
    for _ in range(120):  # a person, in the storm and far past every limit, the same words
        box.post("t", "Status?", sender="dana", to=["alice"])
    assert len(records(root, "t")) == 1


def test_racing_refusals_leave_one_record(root: Path) -> None:
    settings(root, {"exchanges": 2})
    Mailbox(root).agents.register("alice")
    Mailbox(root).agents.register("bob")
    Mailbox(root).create_thread("t", creator="alice")
    Mailbox(root).post("t", "one", sender="alice", to=["bob"])
    Mailbox(root).post("t", "two", sender="bob", to=["alice"])
    boxes = [Mailbox(root) for _ in range(8)]  # each its own process's view: no shared memory
    go = threading.Barrier(len(boxes))
    refusals: list[LoopRefused] = []

    def post(box: Mailbox, i: int) -> None:
        go.wait()
        try:
            box.post("t", f"three {i}", sender="alice", to=["bob"])
        except LoopRefused as e:
            refusals.append(e)

    threads = [threading.Thread(target=post, args=(b, i)) for i, b in enumerate(boxes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(refusals) == 8 and len(records(root, "t")) == 1


# ---------------------------------------------------------------- settings


def test_the_guard_can_be_turned_off(root: Path) -> None:
    settings(root, False)
    box = Mailbox(root)
    for name in ("alice", "bob"):
        box.agents.register(name)
    box.create_thread("t", creator="alice")
    for i in range(60):
        a, b = ("alice", "bob") if i % 2 else ("bob", "alice")
        box.post("t", "thanks!", sender=a, to=[b])
    assert records(root, "t") == []


def test_custom_limits(root: Path) -> None:
    settings(root, {"exchanges": 4, "messages": 6, "window_s": 60, "repeats": False})
    box = Mailbox(root)
    for name in ("alice", "bob", "carol"):
        box.agents.register(name)
    box.create_thread("pair", creator="alice")
    for i in range(4):
        a, b = ("alice", "bob") if i % 2 else ("bob", "alice")
        box.post("pair", "same words", sender=a, to=[b])  # repeats are off
    with pytest.raises(LoopRefused) as pair:
        box.post("pair", "once more", sender="alice", to=["bob"])
    assert pair.value.rule == "exchanges" and "the limit is 4 in 60 s" in str(pair.value)
    assert '"loop_guard": {"exchanges": 8}' in str(pair.value)
    # mailslot's own notes (a task handed out again) are no person's: they lift nothing.
    box.post("pair", "task 3 is open again", sender="mailslot", type="status")
    with pytest.raises(LoopRefused):
        box.post("pair", "once more", sender="bob", to=["alice"])
    box.post("pair", "a word for carol", sender="alice", to=["carol"])  # another pair

    # A storm of three agents broadcasting (to no one in particular).
    box.create_thread("storm", creator="alice")
    for i in range(6):
        box.post("storm", f"idea {i}", sender=("alice", "bob", "carol")[i % 3])
    with pytest.raises(LoopRefused) as storm:
        box.post("storm", "idea 6", sender="alice")
    assert storm.value.rule == "messages" and "alice 2, bob 2, carol 2" in str(storm.value)
    assert '"loop_guard": {"messages": 12}' in str(storm.value)
    # Tasks, results and status are never refused.
    box.post("storm", "a task", sender="alice", type="task")
    box.post("storm", "still here", sender="bob", type="status")


def test_messages_older_than_the_window_do_not_count(root: Path) -> None:
    settings(root, {"exchanges": 3, "window_s": 1})
    box = Mailbox(root)
    for name in ("alice", "bob"):
        box.agents.register(name)
    box.create_thread("t", creator="alice")
    for i in range(3):
        box.post("t", f"a {i}", sender="alice", to=["bob"])
    time.sleep(1.5)  # all three now lie outside the 1 s window
    for i in range(3):
        box.post("t", f"b {i}", sender="bob", to=["alice"])
    with pytest.raises(LoopRefused):
        box.post("t", "b 3", sender="bob", to=["alice"])


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ({"exchanges": "20"}, "'loop_guard.exchanges' must be a whole number"),
        ({"exchange": 5}, "'loop_guard' has no key 'exchange'"),
        ({"window_s": 0}, "'loop_guard.window_s' must be a number of seconds"),
        ({"repeats": "yes"}, "'loop_guard.repeats' must be true or false"),
        ("on", "'loop_guard' must be false (off), true (the defaults) or an object"),
    ],
)
def test_a_malformed_setting_is_a_clear_error(root: Path, value: object, said: str) -> None:
    settings(root, value)
    with pytest.raises(RootError, match="loop_guard") as e:
        Mailbox(root)
    assert said in str(e.value) and "mailslot.json" in str(e.value)
    cmd = mailslot(root, "threads")
    assert cmd.returncode != 0 and said in cmd.stderr, cmd.stderr


# ---------------------------------------------------------------- a flood


def test_a_flood_from_one_agent_does_not_bury_a_persons_message(root: Path) -> None:
    Mailbox(root).create_thread("ops", creator="spammer")

    async def main() -> None:
        async with agent(root, "spammer") as s, agent(root, "bob") as b:
            await call(b, "msg_wait", timeout_s=0.1)  # bob's first look at its inbox
            stored = refusals = 0
            for i in range(200):
                result = await s.call_tool(
                    "msg_post",
                    {"thread": "ops", "to": ["bob"], "content": f"Disk check {i}: all fine."},
                )
                refusals += result.is_error
                stored += not result.is_error
            assert stored == 20 and refusals == 180, (stored, refusals)
            person = mailslot(root, "post", "ops", "Bob, the deploy is blocked: look at #ops "
                              "first.", "--as", "dana", "--to", "bob")  # fmt: skip
            assert person.returncode == 0, person.stderr
            got = await call(b, "msg_wait", timeout_s=30)
            first = got["messages"][0]
            assert (first["from"], first["content"]) == (
                "dana",
                "Bob, the deploy is blocked: look at #ops first.",
            ), [m["from"] for m in got["messages"]]

    anyio.run(main)
