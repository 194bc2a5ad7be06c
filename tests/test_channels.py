"""Pushes to an idle agent: `mailslot serve --channel` and Claude Code's channel notifications.

Real `serve` processes; the official MCP client observes the vendor notification through a
client extension's notification binding, as any client that wants them must.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import agent, call, params
from mcp.client import Client
from mcp.client.extension import ClientExtension, NotificationBinding
from pydantic import BaseModel

from mailslot import Mailbox

METHOD = "notifications/claude/channel"


class Push(BaseModel):
    content: str
    meta: dict[str, str] = {}


class Channel(ClientExtension):
    """Collects the channel notifications a server sends."""

    identifier = "com.example/channel-observer"

    def __init__(self) -> None:
        self.got: list[Push] = []

    def notifications(self) -> list[NotificationBinding[Any]]:
        async def keep(p: Push) -> None:
            self.got.append(p)

        return [NotificationBinding(method=METHOD, params_type=Push, handler=keep)]


@asynccontextmanager
async def channel_agent(root: Path, name: str) -> AsyncIterator[tuple[Client, Channel]]:
    ext = Channel()
    async with Client(
        params(root, "--agent", name, "--channel"), mode="legacy", cache=None, extensions=[ext]
    ) as c:
        yield c, ext


@pytest.fixture
def box(tmp_path: Path) -> Mailbox:
    b = Mailbox.init(tmp_path / "box")
    for name in ("alice", "bob", "carol"):
        b.register_agent(name)
    b.create_thread("t", creator="alice")
    return b


def named(pushes: list[Push]) -> list[tuple[str, int]]:
    """Return the (thread, seq) each push's lines name, in order."""
    out = []
    for p in pushes:
        for line in p.content.splitlines():
            if line.startswith("["):
                thread, seq = line[1:].split("]")[0].split(" #")
                out.append((thread, int(seq)))
    return out


async def settle(ext: Channel, count: int, within: float = 10) -> None:
    with anyio.fail_after(within):
        while len(named(ext.got)) < count:
            await anyio.sleep(0.02)
    await anyio.sleep(0.6)  # and nothing more comes


def test_the_capability_is_declared_only_with_channel(box: Mailbox) -> None:
    async def main() -> None:
        async with channel_agent(box.root, "bob") as (c, _):
            caps = c.server_capabilities
            assert caps is not None and caps.experimental == {"claude/channel": {}}
        async with agent(box.root, "carol") as c:
            caps = c.server_capabilities
            assert caps is not None and not caps.experimental

    anyio.run(main)


def test_a_server_without_channel_pushes_nothing(box: Mailbox) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailslot", "serve", "--root", str(box.root), "--agent", "bob"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    hello = {"protocolVersion": "2025-11-25", "capabilities": {},
             "clientInfo": {"name": "raw", "version": "1"}}  # fmt: skip
    for line in (
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
    ):
        proc.stdin.write((json.dumps(line) + "\n").encode())
    assert b'"id":1' in proc.stdout.readline()
    box.post("t", "hello bob", sender="alice", to=["bob"])
    ready, _, _ = select.select([proc.stdout], [], [], 2.0)
    assert not ready, f"unexpected output: {proc.stdout.readline()!r}"
    proc.communicate(timeout=10)  # closes stdin: the server exits


def test_one_push_per_message_with_the_documented_shape(box: Mailbox) -> None:
    async def main() -> None:
        async with channel_agent(box.root, "bob") as (_, ext), agent(box.root, "alice") as alice:
            await anyio.sleep(0.3)
            seq = (await call(alice, "msg_post", thread="t", content="review PR 7 please",
                              to=["bob"], type="task", priority="high"))["seq"]  # fmt: skip
            await settle(ext, 1)
            [push] = ext.got
            assert push.meta == {"thread": "t", "seq": str(seq), "sender": "alice",
                                 "type": "task", "priority": "high", "count": "1"}  # fmt: skip
            assert all(k.isidentifier() and isinstance(v, str) for k, v in push.meta.items())
            assert "review PR 7 please" in push.content and "alice" in push.content
            assert f"task_claim(thread='t', seq={seq})" in push.content
            box.post("t", "not for bob", sender="alice", to=["carol"])
            box.post("t", "chatter", sender="alice")
            await anyio.sleep(1.0)
            assert len(ext.got) == 1  # neither was addressed to bob

    anyio.run(main)


def test_a_message_a_wait_returns_is_not_pushed(box: Mailbox) -> None:
    async def main() -> None:
        async with channel_agent(box.root, "bob") as (bob, ext):
            await anyio.sleep(0.3)
            async with anyio.create_task_group() as tg:

                async def post_soon() -> None:
                    await anyio.sleep(0.5)
                    box.post("t", "for the waiter", sender="alice", to=["bob"])

                tg.start_soon(post_soon)
                got = await call(bob, "msg_wait", timeout_s=10)
            assert [m["content"] for m in got["messages"]] == ["for the waiter"]
            await anyio.sleep(1.0)
            assert ext.got == []
            box.post("t", "while idle", sender="alice", to=["bob"])
            await settle(ext, 1)
            assert [n for _, n in named(ext.got)] == [2]
            # The push moved no position: the next wait still returns it.
            again = await call(bob, "msg_wait", timeout_s=2)
            assert [m["content"] for m in again["messages"]] == ["while idle"]

    anyio.run(main)


def test_a_burst_is_pushed_in_a_few_notifications_that_name_it_all(box: Mailbox) -> None:
    async def main() -> None:
        async with channel_agent(box.root, "bob") as (_, ext):
            await anyio.sleep(0.3)
            code = (
                "import sys; from mailslot import Mailbox; b = Mailbox(sys.argv[1]); "
                "[b.post('t', f'n{i}', sender='alice', to=['bob'], "
                "priority='urgent' if i == 99 else 'normal') for i in range(100)]"
            )
            subprocess.run([sys.executable, "-c", code, str(box.root)], check=True, timeout=120)
            await settle(ext, 100, within=30)
            seqs = [s for _, s in named(ext.got)]
            assert sorted(seqs) == list(range(1, 101))  # each once
            assert len(ext.got) <= 10, len(ext.got)
            assert "n99" in ext.got[0].content or any(
                p.meta["priority"] == "urgent" for p in ext.got
            )

    anyio.run(main)


def test_only_agents_with_a_card_can_cause_a_push(box: Mailbox) -> None:
    async def main() -> None:
        async with channel_agent(box.root, "bob") as (_, ext):
            await anyio.sleep(0.3)
            box.post("t", "hi bob, I am a person", sender="dave", to=["bob"])
            box.post("t", "hi bob", sender="alice", to=["bob"])
            await settle(ext, 1)
            assert [p.meta["sender"] for p in ext.got] == ["alice"]

    anyio.run(main)


def notify(root: Path, path: str) -> subprocess.Popen[str]:
    import os

    return subprocess.Popen(
        [sys.executable, "-m", "mailslot", "notify", "--root", str(root), "--as", "dave",
         "--once", "--timeout", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PATH": path},
    )  # fmt: skip


def test_a_person_gets_a_desktop_notification(box: Mailbox, tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "notified"
    fake = bindir / "notify-send"
    fake.write_text(f'#!/bin/sh\nprintf "%s|%s\\n" "$1" "$2" >> {log}\n')
    fake.chmod(0o755)
    box.post("t", "I am around", sender="dave")  # a person who wrote in the thread
    proc = notify(box.root, str(bindir))
    assert proc.stderr is not None and "notifying dave" in proc.stderr.readline()
    box.post("t", "dave, can you look at the release notes?", sender="alice", to=["dave"],
             priority="high")  # fmt: skip
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert log.read_text() == (
        "mailslot: alice in t (high)|dave, can you look at the release notes?\n"
    )
    assert "mailslot read t --after 1" in out


def test_without_notify_send_a_person_gets_a_bell(box: Mailbox, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    box.post("t", "I am around", sender="dave")
    proc = notify(box.root, str(empty))
    assert proc.stderr is not None and "a terminal bell" in proc.stderr.readline()
    box.post("t", "ping", sender="alice", to=["dave"])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "\a" in err and "alice in t: ping" in out


def test_hooks_and_pushes_never_report_one_message_twice(box: Mailbox) -> None:
    prompt = json.dumps({"session_id": "s", "transcript_path": "/tmp/t.jsonl", "cwd": "/",
                         "hook_event_name": "UserPromptSubmit", "prompt": "go on"})  # fmt: skip

    def hook() -> str:
        done = subprocess.run(
            [sys.executable, "-m", "mailslot", "hook", "prompt", "--as", "bob",
             "--root", str(box.root)],
            input=prompt, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return done.stdout

    async def main() -> None:
        async with channel_agent(box.root, "bob") as (_, ext):
            await anyio.sleep(0.3)
            box.post("t", "pushed first", sender="alice", to=["bob"])
            await settle(ext, 1)
            assert hook() == ""  # the push told it already
        box.post("t", "told by the hook", sender="alice", to=["bob"])
        told = json.loads(hook())["hookSpecificOutput"]["additionalContext"]
        assert "told by the hook" in told and "pushed first" not in told
        async with channel_agent(box.root, "bob") as (_, ext):
            box.post("t", "pushed later", sender="alice", to=["bob"])
            await settle(ext, 1)
            assert [s for _, s in named(ext.got)] == [3]  # not 2: the hook told it

    anyio.run(main)


def test_a_released_task_is_pushed_again_to_an_idle_agent(box: Mailbox) -> None:
    """A task for anyone is pushed when it comes, and again when its holder gives it back:
    the idle agent need not wait to learn that it can take it now."""

    async def main() -> None:
        async with channel_agent(box.root, "bob") as (bob, ext):
            await call(bob, "msg_list", thread="t")  # bob takes part in t
            seq = box.post("t", "fix the flaky test", sender="alice", type="task")
            await settle(ext, 1)
            assert named(ext.got) == [("t", seq)]
            box.claim_task("t", seq, agent="carol")
            await anyio.sleep(0.6)
            assert len(ext.got) == 1, "held by carol: nothing to take"
            box.release_task("t", seq, agent="carol", reason="out of time")
            await settle(ext, 2)
            assert named(ext.got) == [("t", seq), ("t", seq)]
            assert f"task_claim(thread='t', seq={seq})" in ext.got[1].content

    anyio.run(main)
