"""The tools' contract as a model meets it (issue 27, items 1 and 5): an argument a tool does not
take is refused with the real name and nothing done, every parameter says what it is, every
bound is in the schema and every cap in the result, and errors say what to do next.

Real `mailslot serve` processes driven by the official MCP client.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import SERVE, agent, call, params, require
from mcp import types
from mcp.client import Client

from mailslot import Mailbox
from mailslot.coordination.search_index import fts5_available
from mailslot.tools import TOOL_NAMES


async def error(c: Client, tool: str, args: dict[str, Any]) -> str:
    result = await c.call_tool(tool, args)
    assert isinstance(result.content[0], types.TextContent)
    assert result.is_error, f"{tool}({args}) should have failed: {result.content[0].text}"
    return result.content[0].text


# (tool, arguments with one a model gets wrong, the wrong name, the name it meant)
WRONG = [
    ("msg_post", {"thread": "t", "content": "hi", "recipients": ["bob"]}, "recipients", "to"),
    ("msg_post", {"thread": "t", "content": "hi", "in_reply_to": 1}, "in_reply_to", "reply_to"),
    ("msg_post", {"thread": "t", "body": "hi"}, "body", "content"),
    ("msg_post", {"thread": "t", "text": "hi"}, "text", "content"),
    ("msg_post", {"thread": "t", "content": "hi", "inReplyTo": 1}, "inReplyTo", "reply_to"),
    ("msg_post", {"thread": "t", "content": "hi", "idempotency": "k"}, "idempotency",
     "idempotency_key"),
    ("msg_wait", {"thread": "t", "after": 0}, "after", "after_seq"),
    ("msg_wait", {"thread": "t", "after_sq": 0}, "after_sq", "after_seq"),
    ("msg_wait", {"thread": "t", "timeout": 1}, "timeout", "timeout_s"),
    ("msg_list", {"thread_id": "t"}, "thread_id", "thread"),
    ("msg_search", {"q": "hello"}, "q", "query"),
    ("msg_search", {"text": "hello"}, "text", "query"),
    ("agent_register", {"agent": "zed"}, "agent", "name"),
    ("task_claim", {"thread": "t", "task_id": 1}, "task_id", "seq"),
    ("files_reserve", {"path": "src/x.py"}, "path", "paths"),
    ("thread_set_state", {"thread": "t", "status": "done"}, "status", "state"),
    ("task_list", {"state": "open"}, "state", "status"),
    ("agent_register", {"agent_name": "zed"}, "agent_name", "name"),
    ("msg_post", {"thread": "t", "content": "hi", "messageType": "task"}, "messageType", "type"),
]  # fmt: skip


def test_an_argument_a_tool_does_not_take_is_refused_with_the_real_name(root: Path) -> None:
    """msg_post(recipients=[...]) stored a message to everyone; msg_wait(after=0) ignored after:
    each is refused, naming the argument meant, and nothing is stored, claimed or reserved."""
    box = Mailbox(root)
    box.create_thread("t", creator="bob")
    box.post("t", "a task for anyone", sender="bob", type="task")

    async def main() -> None:
        async with agent(root, "alice") as c:
            for tool, args, wrong, right in WRONG:
                text = await error(c, tool, args)
                assert f"unknown argument '{wrong}': did you mean '{right}'?" in text, text
                assert "Nothing was done" in text and f"Call {tool}(" in text, text
            text = await error(c, "agent_list", {"verbose": True})
            assert "unknown argument 'verbose'" in text and "agent_list takes no arguments" in text
            text = await error(c, "msg_post", {"thread": "t", "content": "x", "zzz": 1, "cc": []})
            assert "unknown argument 'zzz';" in text and "'cc': did you mean 'to'?" in text
            # The same calls with the real names work.
            posted = await call(c, "msg_post", thread="t", content="hi", to=["bob"], reply_to=1)
            assert posted["seq"] == 2
            got = await call(c, "msg_wait", thread="t", after_seq=0, timeout_s=5)
            assert [m["seq"] for m in got["messages"]] == [1]

    anyio.run(main)
    stored = box.read("t", 0, 50).messages
    assert [(m.seq, m.sender, m.to) for m in stored] == [(1, "bob", []), (2, "alice", ["bob"])]
    assert box.tasks.board("t").tasks[1].status == "open"  # task_claim(task_id=1) claimed nothing
    assert box.reservations.live() == []  # files_reserve(path=...) reserved nothing


def test_an_unknown_tool_names_the_nearest_and_lists_them_all(root: Path) -> None:
    async def main() -> tuple[str, str]:
        async with agent(root, "alice") as c:
            near = await error(c, "msg_send", {"thread": "t", "content": "hi"})
            return near, await error(c, "frobnicate", {})

    text, far = anyio.run(main)
    assert text.startswith("Unknown tool: msg_send; did you mean msg_")
    assert far.startswith("Unknown tool: frobnicate. The tools are: "), far
    assert all(name in text for name in TOOL_NAMES), text


def test_a_list_too_short_or_long_says_which_argument_and_what_to_pass(root: Path) -> None:
    async def main() -> tuple[str, str]:
        async with agent(root, "alice") as c:
            empty = await error(c, "files_reserve", {"paths": []})
            many = await error(c, "files_reserve", {"paths": [f"f{i}" for i in range(101)]})
            return empty, many

    empty, many = anyio.run(main)
    assert "'paths' needs at least 1 item (Repository-relative files" in empty, empty
    assert 'e.g. ["src/app/**"]' in empty and "Call files_reserve(paths" in empty
    assert "after validation" not in empty
    assert "'paths' takes at most 100 items, not 101" in many, many
    assert Mailbox(root).reservations.live() == []


def test_a_lower_wait_max_lowers_the_default_wait(root: Path) -> None:
    """`serve --wait-max 30` (a client that cuts calls at 30 s) refused to start: the default
    wait stayed 50. It now waits at most the maximum; a default above it names both values."""

    async def main() -> dict[str, Any]:
        async with Client(params(root, "--agent", "alice", "--wait-max", "1"), cache=None) as c:
            return dict((await call(c, "bus_get_config"))["wait"])

    wait = anyio.run(main)
    assert (wait["default_s"], wait["max_s"]) == (1, 1), wait
    done = subprocess.run([*SERVE, "--root", str(root), "--agent", "bob", "--wait-default", "5",
                           "--wait-max", "1"], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode != 0 and done.stdout == ""
    assert "default wait (5 s)" in done.stderr and "maximum wait (1 s)" in done.stderr, done.stderr
    assert "--wait-default" in done.stderr, done.stderr


def test_a_wait_capped_says_so(root: Path) -> None:
    """timeout_s above the server's maximum waits the maximum and the result says it capped it;
    a timeout within the maximum says nothing of a cap."""

    async def main() -> tuple[dict, dict, dict, dict]:
        async with Client(params(root, "--agent", "alice", "--wait-default", "0.5",
                                 "--wait-max", "1"), cache=None) as c:  # fmt: skip
            await call(c, "thread_create", topic="t")
            capped = await call(c, "msg_wait", thread="t", timeout_s=5000)
            above = await call(c, "msg_wait", thread="t", timeout_s=1.5)
            within = await call(c, "msg_wait", thread="t", timeout_s=0.2)
            at_max = await call(c, "msg_wait", thread="t", timeout_s=1)
            return capped, above, within, at_max

    capped, above, within, at_max = anyio.run(main)
    assert capped["status"] == "timeout"
    assert "timeout_s capped at 1 " in capped["note"], capped
    assert "timeout_s capped at 1 " in above["note"], above
    assert "note" not in within, within
    assert "note" not in at_max, "the maximum itself is no cap"


def test_the_schema_says_every_parameter_bound_and_read_only_tool(root: Path) -> None:
    """Each parameter has a description, a list of choices or bounds; msg_wait's says its cap
    and the clients' 60 s; the tools that change nothing are marked read-only, the others not;
    and the whole list stays within its budget."""

    async def main() -> list[types.Tool]:
        async with agent(root, "alice") as c:
            return (await c.list_tools()).tools

    tools = {t.name: t for t in anyio.run(main)}
    for tool in tools.values():
        for name, spec in tool.input_schema["properties"].items():
            said = spec.get("description") or spec.get("enum") or "maximum" in spec
            assert said, f"{tool.name}.{name} says nothing of what it is: {spec}"
    timeout = tools["msg_wait"].input_schema["properties"]["timeout_s"]["description"]
    assert "600" in timeout and "60" in timeout.replace("600", "")
    # Those issue 27 found without a word, and the one added since.
    for tool, name in [("msg_post", "meta"), ("files_reserve", "ttl_s"),
                       ("files_reserve", "reason"), ("files_reserve", "exclusive"),
                       ("msg_search", "sender"), ("msg_search", "to"), ("thread_list", "state"),
                       ("agent_register", "model"), ("task_list", "mine")]:  # fmt: skip
        assert tools[tool].input_schema["properties"][name].get("description"), (tool, name)
    read_only = {n for n, t in tools.items() if t.annotations and t.annotations.read_only_hint}
    assert {"msg_search", "task_list", "msg_list", "msg_wait", "thread_list"} <= read_only
    assert not read_only & {"msg_post", "task_claim", "files_reserve", "thread_create"}
    size = len(json.dumps([t.model_dump(mode="json", by_alias=True, exclude_none=True)
                           for t in tools.values()]))  # fmt: skip
    assert size <= 8192, f"tools/list costs {size} bytes"


def test_a_query_search_cannot_read_says_what_is_wrong_with_it(root: Path) -> None:
    if not fts5_available():
        require("this Python's SQLite has no FTS5")
    box = Mailbox(root)
    box.create_thread("t", creator="bob")
    box.post("t", "we rely on auth and retries", sender="bob")

    async def main() -> dict[str, str]:
        async with agent(root, "alice") as c:
            queries = ("AND", "*", "NOT auth", "auth NOT", "auth OR", '"auth', "(auth")
            said = {q: await error(c, "msg_search", {"query": q}) for q in queries}
            found = await call(c, "msg_search", query='"AND"')
            assert [h["seq"] for h in found["hits"]] == [1], "the word itself, in quotes"
            return said

    said = anyio.run(main)
    assert "AND goes between two words, e.g. deploy AND staging" in said["AND"]
    assert 'write it in double quotes: "AND"' in said["AND"]
    assert "* marks a prefix and goes right after letters, e.g. auth*" in said["*"]
    assert "a query cannot start with NOT" in said["NOT auth"]
    assert "NOT goes between two words" in said["auth NOT"] and "start" not in said["auth NOT"]
    assert "OR goes between two words" in said["auth OR"]
    assert "a double quote is not closed" in said['"auth']
    assert "a parenthesis is not closed" in said["(auth"]
    for text in said.values():
        assert "fts5" not in text and "special query" not in text, text
        assert "schema OR migration" in text  # the examples


def test_task_list_mine_shows_what_i_hold_and_what_i_can_take(root: Path) -> None:
    box = Mailbox(root)
    box.create_thread("t", creator="carol")
    for name in ("alice", "bob"):
        box.agents.register(name)
    box.post("t", "for anyone, alice takes it", sender="carol", type="task")  # 1
    box.post("t", "for bob", sender="carol", type="task", to=["bob"])  # 2
    box.post("t", "for anyone, still open", sender="carol", type="task")  # 3
    box.post("t", "for alice", sender="carol", type="task", to=["alice"])  # 4
    box.post("t", "which port?", sender="carol", type="question", to=["bob"])  # 5
    box.post("t", "who reviews?", sender="alice", type="question")  # 6: alice's own

    async def main() -> tuple[dict, dict, dict]:
        async with agent(root, "alice") as a, agent(root, "bob") as b:
            assert (await call(a, "task_claim", thread="t", seq=1))["claimed"]
            mine_a = await call(a, "task_list", mine=True)
            mine_b = await call(b, "task_list", mine=True)
            held = await call(a, "task_list", mine=True, status="claimed")
            return mine_a, mine_b, held

    mine_a, mine_b, held = anyio.run(main)
    assert [t["seq"] for t in mine_a["tasks"]] == [1, 3, 4]
    assert mine_a["counts"]["claimed"] == 1 and mine_a["counts"]["open"] == 2
    assert mine_a["questions"] == []
    assert [t["seq"] for t in mine_b["tasks"]] == [2, 3], "not the one alice holds"
    assert [q["seq"] for q in mine_b["questions"]] == [5, 6]
    assert [(t["seq"], t["holder"]) for t in held["tasks"]] == [(1, "alice")]


@pytest.mark.parametrize("tool", ["msg_post", "msg_wait"])
def test_a_null_for_an_optional_argument_is_still_taken(root: Path, tool: str) -> None:
    """The schema leaves "or null" out of optional parameters (a third of tools/list); a
    client that sends null anyway is still served."""

    async def main() -> dict:
        async with Client(params(root, "--agent", "alice", "--wait-default", "0.3"),
                          cache=None) as c:  # fmt: skip
            await call(c, "thread_create", topic="t")
            if tool == "msg_post":
                return await call(c, "msg_post", thread="t", content="x", to=None, meta=None)
            return await call(c, "msg_wait", thread="t", after_seq=None, timeout_s=None)

    got = anyio.run(main)
    assert got["seq"] == 1 if tool == "msg_post" else got["status"] == "timeout"


def test_a_huge_wrong_argument_is_not_repeated_back_whole(root: Path) -> None:
    """A 100 KB value of the wrong type is named, not echoed: the error stays a few hundred
    characters, so the model's mistake does not fill its context."""
    Mailbox(root).create_thread("t", creator="bob")
    huge = "bob " * 25_000

    async def main() -> list[str]:
        async with agent(root, "alice") as c:
            return [
                await error(c, "msg_post", {"thread": "t", "content": "hi", "to": huge}),
                await error(c, "msg_wait", {"thread": "t", "after_seq": huge}),
                await error(c, "files_reserve", {"paths": ["x"], "exclusive": huge}),
            ]

    for text in anyio.run(main):
        assert len(text) < 1000, text[:300]
        assert "'bob bob" in text and f"({len(repr(huge))} characters)" in text, text
    assert Mailbox(root).head("t") == 0


def test_true_or_false_for_a_number_is_refused(root: Path) -> None:
    """pydantic reads true as 1: task_claim(seq=true) claimed task 1, msg_list(after_seq=false)
    read from the start. A number must be a number; nothing is claimed or stored."""
    box = Mailbox(root)
    box.create_thread("t", creator="bob")
    box.post("t", "a job", sender="bob", type="task")

    async def main() -> list[str]:
        async with agent(root, "alice") as c:
            return [
                await error(c, "task_claim", {"thread": "t", "seq": True}),
                await error(c, "msg_list", {"thread": "t", "after_seq": False}),
                await error(c, "msg_wait", {"thread": "t", "timeout_s": True}),
                await error(c, "msg_post", {"thread": "t", "content": "re", "reply_to": True}),
            ]

    claim, listed, waited, posted = anyio.run(main)
    assert "'seq' must be a number, not true" in claim and "Call task_claim(" in claim, claim
    assert "'after_seq' must be a number, not false" in listed, listed
    assert "'timeout_s' must be a number, not true" in waited, waited
    assert "'reply_to' must be a number, not true" in posted, posted
    assert Mailbox(root).head("t") == 1 and Mailbox(root).tasks.board("t").tasks[1].status == "open"
