"""The MCP server in memory, through the SDK's own Client, in both protocol eras."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import require, until_async
from mcp import types
from mcp.client import Client
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.shared.subscriptions import ResourceUpdated

from mailslot import Mailbox
from mailslot.stdio_server import create_server, instructions
from mailslot.tools import TOOL_NAMES, Session

ERAS = ["auto", "legacy"]  # 2026-07-28 (no handshake), and the initialize handshake era


@asynccontextmanager
async def connect(
    root: Path,
    mode: str,
    *,
    agent: str | None = None,
    lang: str | None = None,
    handler: Callable[[Any], Any] | None = None,
) -> AsyncIterator[Client]:
    box = Mailbox(root, fsync=False)
    server = create_server(
        lambda: Session(box, agent=agent, lang=lang, progress_every=0.1), agent=agent, lang=lang
    )
    try:
        async with Client(
            server,
            mode=mode,
            cache=None,
            message_handler=handler,
            client_info=types.Implementation(name="test-client", version="1"),
        ) as c:
            yield c
    finally:
        box.close()


def text(result: types.CallToolResult) -> Any:
    assert isinstance(result.content[0], types.TextContent)
    body = result.content[0].text
    return body if result.is_error else json.loads(body)


@pytest.mark.parametrize("mode", ERAS)
def test_tools_are_few_and_cheap(root: Path, mode: str) -> None:
    async def main() -> None:
        async with connect(root, mode) as c:
            listed = (await c.list_tools()).tools
            assert [t.name for t in listed] == list(TOOL_NAMES)
            size = len(json.dumps([t.model_dump(mode="json", exclude_none=True) for t in listed]))
            assert size <= 8192, f"tools/list costs {size} bytes of the model's context"
            wait = next(t for t in listed if t.name == "msg_wait")
            assert wait.annotations and wait.annotations.read_only_hint
            assert "thread" in wait.input_schema["properties"]
            assert "ctx" not in wait.input_schema["properties"]

    anyio.run(main)


@pytest.mark.parametrize("mode", ERAS)
def test_conversation_and_errors(root: Path, mode: str) -> None:
    async def main() -> None:
        async with connect(root, mode) as c:
            created = text(await c.call_tool("thread_create", {"topic": "Bus123"}))
            assert created["thread"] == "bus123"
            posted = text(await c.call_tool("msg_post", {"thread": "bus123", "content": "hello"}))
            assert posted["seq"] == 1
            listed = text(await c.call_tool("msg_list", {"thread": "bus123"}))
            assert listed["messages"][0]["from"] == "test", "named after the client"
            bad = await c.call_tool("msg_post", {"thread": "bus124", "content": "x"})
            assert bad.is_error
            assert (
                "no thread 'bus124'; threads with similar names: bus123; call thread_list"
                in text(bad)
            )
            bad = await c.call_tool("msg_post", {"thread": "bus123", "content": "x", "to": ["zed"]})
            assert bad.is_error and "no agent 'zed' (known agents: test)" in text(bad)
            bad = await c.call_tool("msg_post", {"thread": "bus123", "content": 5})
            assert bad.is_error and "content" in text(bad)
            bad = await c.call_tool(
                "msg_post", {"thread": "bus123", "content": "x", "priority": "asap"}
            )
            assert bad.is_error and "priority" in text(bad)
            bad = await c.call_tool("thread_get", {"thread": "../../etc"})
            assert bad.is_error and "invalid thread id" in text(bad)
            closed = text(
                await c.call_tool(
                    "thread_set_state", {"thread": "bus123", "state": "closed", "summary": "ok"}
                )
            )
            assert closed["state"] == "closed"
            cfg = text(await c.call_tool("bus_get_config", {}))
            assert cfg["agent"] == "test"

    anyio.run(main)


@pytest.mark.parametrize("mode", ERAS)
def test_wait_reports_progress(root: Path, mode: str) -> None:
    seen: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, message))

    async def main() -> dict:
        async with connect(root, mode) as c:
            await c.call_tool("thread_create", {"topic": "t"})
            return text(
                await c.call_tool(
                    "msg_wait", {"thread": "t", "timeout_s": 0.5}, progress_callback=on_progress
                )
            )

    got = anyio.run(main)
    assert got["status"] == "timeout" and "call msg_wait" in got["hint"]
    assert seen and all(m and m.startswith("waiting on t:") for _, m in seen)


@pytest.mark.parametrize("mode", ERAS)
def test_a_write_from_another_process_wakes_the_wait(root: Path, mode: str) -> None:
    async def main() -> dict:
        async with connect(root, mode, agent="waiter") as c:
            await c.call_tool("thread_create", {"topic": "t"})
            result: dict = {}

            async def wait() -> None:
                result.update(text(await c.call_tool("msg_wait", {"thread": "t", "after_seq": 0})))

            async def waiting() -> bool:
                return Mailbox(root).agents.presence("waiter").status == "waiting"

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                await until_async("the server waiting", waiting)  # so the post must wake it
                await anyio.to_thread.run_sync(
                    lambda: Mailbox(root).post("t", "from elsewhere", sender="other")
                )
            return result

    got = anyio.run(main)
    assert got["status"] == "messages" and got["messages"][0]["content"] == "from elsewhere"


def test_resources_and_legacy_subscription(root: Path) -> None:
    updates: list[str] = []

    async def handler(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updates.append(str(message.params.uri))

    async def main() -> None:
        async with connect(root, "legacy", agent="reader", handler=handler) as c:
            await c.call_tool("thread_create", {"topic": "t"})
            uris = {str(r.uri) for r in (await c.list_resources()).resources}
            assert uris == {"mailslot://threads", "mailslot://agents", "mailslot://config",
                            "mailslot://reservations"}  # fmt: skip
            templates = {
                t.uri_template for t in (await c.list_resource_templates()).resource_templates
            }
            assert templates == {
                "mailslot://threads/{thread}/transcript",
                "mailslot://threads/{thread}/state",
            }
            uri = "mailslot://threads/t/transcript"
            with pytest.warns(MCPDeprecationWarning):  # a handshake-era client, on purpose
                await c.subscribe_resource(uri)
            await anyio.to_thread.run_sync(lambda: Mailbox(root).post("t", "news", sender="x"))
            with anyio.fail_after(10):
                while uri not in updates:
                    await anyio.sleep(0.02)
            md = (await c.read_resource(uri)).contents[0]
            assert isinstance(md, types.TextResourceContents) and "news" in md.text
            state = (await c.read_resource("mailslot://threads/t/state")).contents[0]
            assert isinstance(state, types.TextResourceContents)
            assert json.loads(state.text)["head"] == 1
            agents = (await c.read_resource("mailslot://agents")).contents[0]
            assert isinstance(agents, types.TextResourceContents) and "reader" in agents.text
            await c.call_tool("files_reserve", {"paths": ["docs/"], "reason": "rewrite"})
            held = (await c.read_resource("mailslot://reservations")).contents[0]
            assert isinstance(held, types.TextResourceContents)
            assert [(h["path"], h["holder"], h["reason"]) for h in json.loads(held.text)] == [
                ("docs/**", "reader", "rewrite")
            ]

    anyio.run(main)


def test_listen_stream_gets_updates_in_the_2026_era(root: Path) -> None:
    async def main() -> None:
        async with connect(root, "auto", agent="reader") as c:
            await c.call_tool("thread_create", {"topic": "t"})
            uri = "mailslot://threads/t/transcript"
            async with c.listen(resource_subscriptions=[uri]) as sub:
                await anyio.to_thread.run_sync(lambda: Mailbox(root).post("t", "news", sender="x"))
                with anyio.fail_after(10):
                    async for event in sub:
                        if isinstance(event, ResourceUpdated) and event.uri == uri:
                            break

    anyio.run(main)


@pytest.mark.parametrize("mode", ERAS)
def test_prompts(root: Path, mode: str) -> None:
    async def main() -> None:
        async with connect(root, mode, agent="lead", lang="Chinese") as c:
            await c.call_tool("thread_create", {"topic": "t"})
            await c.call_tool("msg_post", {"thread": "t", "content": "we chose plan B"})
            await c.call_tool("agent_register", {"description": "leads"})
            names = {p.name for p in (await c.list_prompts()).prompts}
            assert names == {"summarize_thread", "handoff_to_agent"}
            got = await c.get_prompt("summarize_thread", {"thread": "t"})
            body = got.messages[0].content
            assert isinstance(body, types.TextContent)
            assert "we chose plan B" in body.text and "Chinese" in body.text
            assert "thread_set_state(thread='t', state='closed'" in body.text
            got = await c.get_prompt(
                "handoff_to_agent", {"thread": "t", "to_agent": "lead", "task": "write tests"}
            )
            body = got.messages[0].content
            assert isinstance(body, types.TextContent)
            assert "msg_post(thread='t', type='task', to=['lead']" in body.text
            with pytest.raises(Exception, match="no agent 'ghost'"):
                await c.get_prompt(
                    "handoff_to_agent", {"thread": "t", "to_agent": "ghost", "task": "x"}
                )

    anyio.run(main)


def test_instructions_say_how_to_collaborate() -> None:
    text_ = instructions("coder", "Chinese")
    assert "You are agent 'coder'" in text_ and "msg_wait" in text_ and "Chinese" in text_
    assert "agent_register" in instructions(None, None)
    assert "with next_task=true it also takes the next one open to you" in text_
    assert "task_claim(thread) without a seq" in text_


def test_damage_and_vanishing_never_kill_the_server(root: Path) -> None:
    async def main() -> None:
        async with connect(root, "auto", agent="sturdy") as c:
            await c.call_tool("thread_create", {"topic": "t"})
            await c.call_tool("msg_post", {"thread": "t", "content": "one"})
            (root / "threads" / "t" / "000002.json").write_text("{torn")
            old = time.time() - 3600  # torn long ago: damage, not a file still arriving
            os.utime(root / "threads" / "t" / "000002.json", (old, old))
            await c.call_tool("msg_post", {"thread": "t", "content": "three"})
            listed = text(await c.call_tool("msg_list", {"thread": "t"}))
            assert [m["content"] for m in listed["messages"]] == ["one", "three"]
            assert "000002.json" in listed["unreadable"][0]
            md = (await c.read_resource("mailslot://threads/t/transcript")).contents[0]
            assert isinstance(md, types.TextResourceContents) and "three" in md.text
            await c.call_tool("thread_create", {"topic": "gone"})
            shutil.rmtree(root / "threads" / "gone")
            bad = await c.call_tool("msg_list", {"thread": "gone"})
            assert bad.is_error and "no thread 'gone'" in text(bad)
            bad = await c.call_tool("msg_wait", {"thread": "gone", "timeout_s": 1})
            assert bad.is_error and "no thread 'gone'" in text(bad)
            assert (
                text(await c.call_tool("msg_post", {"thread": "t", "content": "four"}))["seq"] == 4
            )

    anyio.run(main)


def test_full_disk_is_an_error_the_model_can_read(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        require(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        root = mnt / "box"
        Mailbox.init(root)

        async def main() -> None:
            async with connect(root, "legacy", agent="filler") as c:
                await c.call_tool("thread_create", {"topic": "t"})
                (mnt / "ballast").write_bytes(b"\0" * (1024 * 1024 - 64 * 1024))
                bad = await c.call_tool("msg_post", {"thread": "t", "content": "x" * 200_000})
                assert bad.is_error and "no space left" in text(bad)
                assert "nothing was stored" in text(bad)
                (mnt / "ballast").unlink()
                ok = text(await c.call_tool("msg_post", {"thread": "t", "content": "x" * 200_000}))
                assert ok["seq"] == 1

        anyio.run(main)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
