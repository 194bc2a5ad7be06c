"""The first hour, the model's side: what a model stumbles on must read like a next step.

Real `mailslot serve` processes driven by the official MCP client.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import SERVE, agent, call
from mcp import types
from mcp.client import Client

from mailslot import InvalidName, Mailbox


async def error(c: Client, tool: str, **args: Any) -> str:
    result = await c.call_tool(tool, args)
    assert result.is_error, f"{tool}({args}) should have failed: {result.content}"
    assert isinstance(result.content[0], types.TextContent)
    return result.content[0].text


@pytest.mark.parametrize(
    ("tool", "args", "says"),
    [
        ("msg_post", {"thread": "t", "content": "x", "to": "bob"}, "'to' must be a list"),
        ("msg_post", {"thread": "t"}, "'content' is required"),
        ("msg_post", {"thread": "t", "content": "x", "type": "note"}, "'type' must be one of"),
        ("msg_post", {"thread": "t", "content": "x", "priority": "asap"}, "'priority' must be"),
        ("msg_post", {"thread": "t", "content": "x", "reply_to": 0}, "'reply_to' must be >= 1"),
        ("msg_list", {"thread": "t", "limit": 5000}, "'limit' must be >= 1 and <= 200"),
        ("msg_list", {"thread": "t", "after_seq": "two"}, "'after_seq' must be a whole number"),
        ("msg_wait", {"thread": "t", "timeout_s": -1}, "'timeout_s' must be > 0"),
        ("thread_list", {"state": "open"}, "'state' must be one of discuss"),
        ("thread_set_state", {"thread": "t", "state": "finished"}, "'state' must be one of"),
    ],
)
def test_argument_errors_read_like_next_steps(
    root: Path, tool: str, args: dict[str, Any], says: str
) -> None:
    Mailbox(root).create_thread("t", creator="x")

    async def main() -> None:
        async with agent(root, "model") as c:
            text = await error(c, tool, **args)
            assert says in text, text
            assert f"Call {tool}(" in text  # the call to make instead
            for raw in ("validation error", "pydantic", "errors.pydantic.dev", "input_type="):
                assert raw not in text, text

    anyio.run(main)


def test_a_topic_works_where_a_thread_id_belongs(root: Path) -> None:
    async def main() -> None:
        async with agent(root, "model") as c:
            made = await call(c, "thread_create", topic="Review PR 7")
            assert made["thread"] == "review-pr-7"
            posted = await call(c, "msg_post", thread="Review PR 7", content="on it")
            assert posted["thread"] == "review-pr-7" and posted["seq"] == 1
            listed = await call(c, "msg_list", thread="review PR 7!", after_seq=0)
            assert [m["content"] for m in listed["messages"]] == ["on it"]
            got = await call(c, "thread_get", thread="REVIEW-PR-7")
            assert got["thread"] == "review-pr-7"
            text = await error(c, "msg_post", thread="Some other topic", content="x")
            assert "thread_create(topic)" in text and "thread_list" in text
            schema = {t.name: t.input_schema for t in (await c.list_tools()).tools}
            described = schema["msg_post"]["properties"]["thread"]
            assert "topic" in described.get("description", "")

    anyio.run(main)


def test_a_position_past_the_head_is_named_and_corrected(root: Path) -> None:
    box = Mailbox(root)
    box.create_thread("t", creator="x")
    for i in range(5):
        box.post("t", f"m{i}", sender="x")

    async def main() -> None:
        async with agent(root, "model") as c:
            listed = await call(c, "msg_list", thread="t", after_seq=999)
            assert listed["messages"] == [] and listed["next_after_seq"] == 5
            assert "past the newest message (5)" in listed["hint"]

            async def later() -> None:
                await anyio.sleep(0.3)
                Mailbox(root).post("t", "sixth", sender="x")

            async with anyio.create_task_group() as tg:
                tg.start_soon(later)
                got = await call(c, "msg_wait", thread="t", after_seq=999, timeout_s=10)
            assert [m["seq"] for m in got["messages"]] == [6]  # not skipped
            assert "past the newest message" in got["note"]

    anyio.run(main)


def test_a_pinned_name_in_use_takes_a_free_variant_and_says_so(root: Path) -> None:
    async def main() -> None:
        async with agent(root, "claude") as first, agent(root, "claude") as second:
            assert (await call(first, "bus_get_config"))["agent"] == "claude"
            config = await call(second, "bus_get_config")
            assert config["agent"] == "claude-2" and "'claude' was in use" in config["note"]
            assert "You are agent 'claude-2'" in (second.instructions or "")

    anyio.run(main)
    strict = subprocess.run(
        [*SERVE, "--root", str(root), "--agent", "solo", "--strict-name"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert strict.returncode == 0  # free: taken, and stdin closed at once


def test_the_config_names_the_agent_before_any_other_call(root: Path) -> None:
    async def main() -> None:
        async with agent(root, "early") as c:
            assert (await call(c, "bus_get_config"))["agent"] == "early"

    anyio.run(main)


def test_mailslot_is_not_a_name_an_agent_can_take(root: Path) -> None:
    with pytest.raises(InvalidName, match="reserved"):
        Mailbox(root).agents.register("mailslot")

    async def main() -> None:
        async with agent(root, "someone") as c:
            text = await error(c, "agent_register", name="mailslot")
            assert "reserved" in text

    anyio.run(main)


def test_the_latest_summary_is_kept_and_an_old_one_is_marked(root: Path) -> None:
    async def main() -> None:
        async with agent(root, "lead") as c:
            await call(c, "thread_create", topic="t")
            await call(c, "thread_set_state", thread="t", state="done", summary="Built it.")
            got = await call(c, "thread_get", thread="t")
            assert got["summary"] == "Built it." and "summary_from" not in got
            await call(c, "thread_set_state", thread="t", state="closed", summary="Shipped.")
            await call(c, "thread_set_state", thread="t", state="implement")  # reopened
            got = await call(c, "thread_get", thread="t")
            assert got["summary"] == "Shipped." and got["summary_from"] == "closed"

    anyio.run(main)
    exported = subprocess.run(
        [*SERVE[:-1], "export", "t", "--root", str(root)],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert "Summary (from when it was closed)" in exported
    assert json.loads(
        subprocess.run([*SERVE[:-1], "threads", "--json", "--root", str(root)],
                       capture_output=True, text=True, timeout=30, check=True).stdout
    )["threads"][0]["summary_state"] == "closed"  # fmt: skip
