"""Pushes to an idle agent: `mailslot serve --channel` and Claude Code's channel notifications.

Real `serve` processes; the official MCP client observes the vendor notification through a
client extension's notification binding, as any client that wants them must.
"""

from __future__ import annotations

import fcntl
import json
import select
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import INITIALIZE, agent, call, no_loop_guard, params, read_line, until, until_async
from mcp.client import Client
from mcp.client.extension import ClientExtension, NotificationBinding
from pydantic import BaseModel

from mailslot import Mailbox
from mailslot.agent.notices import MAX_NEWS
from mailslot.clients.channels import PUSH_MAX_LINES
from mailslot.clients.hooks import run
from mailslot.store.format import loads

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
        b.agents.register(name)
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


async def pushes(ext: Channel, count: int, within: float = 30) -> list[tuple[str, int]]:
    """Return what the pushes name once they name count messages (fail if they never do).

    That nothing else is pushed is shown by a later push (a sentinel): a push names what a
    look found, and a look finds every news there is, so what was wrongly pushed comes before
    or with it.
    """
    await until_async(f"{count} messages pushed", lambda: _named_at_least(ext, count), within)
    return named(ext.got)


async def _named_at_least(ext: Channel, count: int) -> bool:
    return len(named(ext.got)) >= count


async def pushed(ext: Channel, thread: str, seq: int) -> list[tuple[str, int]]:
    """Return what the pushes name once one names message seq of thread."""

    async def there() -> bool:
        return (thread, seq) in named(ext.got)

    await until_async(f"{thread} #{seq} pushed", there)
    return named(ext.got)


def reported(root: Path, agent: str, thread: str) -> int:
    """Return the seq up to which news of thread was reported to agent (.state/notified/)."""
    try:
        doc = loads((root / ".state" / "notified" / f"{agent}.json").read_bytes())
    except (OSError, ValueError):
        return 0
    return int(doc.get("reported", {}).get(thread, 0))


def texts(got: dict[str, Any]) -> list[str]:
    return [m["content"] for m in got["messages"]]


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
            seq = (await call(alice, "msg_post", thread="t", content="review PR 7 please",
                              to=["bob"], type="task", priority="high"))["seq"]  # fmt: skip
            await pushes(ext, 1)
            [push] = ext.got
            assert push.meta == {"thread": "t", "seq": str(seq), "sender": "alice",
                                 "type": "task", "priority": "high", "count": "1"}  # fmt: skip
            assert all(k.isidentifier() and isinstance(v, str) for k, v in push.meta.items())
            assert "review PR 7 please" in push.content and "alice" in push.content
            assert f"task_claim(thread='t', seq={seq})" in push.content
            box.post("t", "not for bob", sender="alice", to=["carol"])
            box.post("t", "chatter", sender="alice")
            sentinel = box.post("t", "for bob", sender="alice", to=["bob"])
            assert await pushed(ext, "t", sentinel) == [("t", seq), ("t", sentinel)]

    anyio.run(main)


def test_a_message_a_wait_returns_is_not_pushed(box: Mailbox) -> None:
    async def main() -> None:
        async with channel_agent(box.root, "bob") as (bob, ext):
            async with anyio.create_task_group() as tg:

                async def post_when_waiting() -> None:
                    await until_async("bob waiting", lambda: _status(box, "bob", "waiting"))
                    box.post("t", "for the waiter", sender="alice", to=["bob"])

                tg.start_soon(post_when_waiting)
                got = await call(bob, "msg_wait", timeout_s=60)
            assert texts(got) == ["for the waiter"]
            box.post("t", "while idle", sender="alice", to=["bob"])
            assert await pushes(ext, 1) == [("t", 2)]  # not 1, before or with it
            # The push moved no position: the next wait still returns it.
            again = await call(bob, "msg_wait", timeout_s=2)
            assert [m["content"] for m in again["messages"]] == ["while idle"]

    anyio.run(main)


async def _status(box: Mailbox, agent: str, status: str) -> bool:
    return box.agents.presence(agent).status == status


def test_a_burst_is_pushed_in_a_few_notifications_that_name_it_all(box: Mailbox) -> None:
    no_loop_guard(box.root)  # 100 from alice to bob: a flood the loop guard would stop at 20

    async def main() -> None:
        async with channel_agent(box.root, "bob") as (_, ext):
            code = (
                "import sys; from mailslot import Mailbox; b = Mailbox(sys.argv[1]); "
                "[b.post('t', f'n{i}', sender='alice', to=['bob'], "
                "priority='urgent' if i == 99 else 'normal') for i in range(100)]"
            )
            subprocess.run([sys.executable, "-c", code, str(box.root)], check=True, timeout=120)
            await pushes(ext, 100, within=60)
            seqs = [s for _, s in named(ext.got)]
            assert sorted(seqs) == list(range(1, 101))  # each once
            assert len(ext.got) <= 10, len(ext.got)
            # The urgent one (the last) comes first in the push that names it.
            [push] = [p for p in ext.got if "n99" in p.content]
            assert named([push])[0] == ("t", 100) and push.meta["priority"] == "urgent"

    anyio.run(main)


def test_only_agents_with_a_card_can_cause_a_push(box: Mailbox) -> None:
    async def main() -> None:
        async with channel_agent(box.root, "bob") as (_, ext):
            box.post("t", "hi bob, I am a person", sender="dave", to=["bob"])
            box.post("t", "hi bob", sender="alice", to=["bob"])
            await pushes(ext, 1)
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
            box.post("t", "pushed first", sender="alice", to=["bob"])
            await pushes(ext, 1)
            await until_async("the push recorded", _reported(box.root, "t", 1))
            assert hook() == ""  # the push told it already
        box.post("t", "told by the hook", sender="alice", to=["bob"])
        told = json.loads(hook())["hookSpecificOutput"]["additionalContext"]
        assert "told by the hook" in told and "pushed first" not in told
        async with channel_agent(box.root, "bob") as (_, ext):
            box.post("t", "pushed later", sender="alice", to=["bob"])
            assert await pushes(ext, 1) == [("t", 3)]  # not 2 (before or with it): the hook told it

    anyio.run(main)


def test_a_released_task_is_pushed_again_to_an_idle_agent(box: Mailbox) -> None:
    """A task for anyone is pushed when it comes, and again when its holder gives it back:
    the idle agent need not wait to learn that it can take it now."""

    async def main() -> None:
        async with channel_agent(box.root, "bob") as (bob, ext):
            await call(bob, "msg_list", thread="t")  # bob takes part in t
            seq = box.post("t", "fix the flaky test", sender="alice", type="task")
            assert await pushes(ext, 1) == [("t", seq)]
            box.tasks.claim("t", seq, agent="carol")
            held = box.post("t", "carol has it", sender="alice", to=["bob"])
            assert await pushed(ext, "t", held) == [("t", seq), ("t", held)], "held: not news"
            box.tasks.release("t", seq, agent="carol", reason="out of time")
            assert await pushes(ext, 3) == [("t", seq), ("t", held), ("t", seq)]
            assert f"task_claim(thread='t', seq={seq})" in ext.got[2].content

    anyio.run(main)


def _reported(root: Path, thread: str, seq: int) -> Any:
    async def check() -> bool:
        return reported(root, "bob", thread) >= seq

    return check


def test_what_a_quick_wait_returned_is_not_pushed(box: Mailbox) -> None:
    """serve writes read positions to disk once a second; its pushes go by what its waits
    returned, not by what is on disk yet (two quick waits, then the agent is idle)."""

    async def main() -> None:
        async with channel_agent(box.root, "bob") as (bob, ext):
            box.post("t", "first", sender="dave", to=["bob"])  # dave has no card: no push yet
            assert texts(await call(bob, "msg_wait", timeout_s=60)) == ["first"]
            box.post("t", "second", sender="dave", to=["bob"])
            assert texts(await call(bob, "msg_wait", timeout_s=60)) == ["second"]
            box.agents.register("dave")  # what dave sent would be pushed now, were it news
            seq = box.post("t", "third", sender="alice", to=["bob"])
            assert await pushed(ext, "t", seq) == [("t", seq)]

    anyio.run(main)


def test_tasks_for_anyone_in_a_thread_joined_but_never_read_are_pushed(box: Mailbox) -> None:
    """thread_create joins a thread: its tasks for anyone are the agent's news (its inbox wait
    hands them out), before and after it joined, though it never read the thread."""

    async def main() -> None:
        box.create_thread("t3", creator="alice")
        early = box.post("t3", "port the parser", sender="alice", type="task")
        async with channel_agent(box.root, "bob") as (bob, ext):
            await call(bob, "thread_create", topic="t3")
            seq = box.post("t3", "and the lexer", sender="alice", type="task")
            assert sorted(await pushed(ext, "t3", seq)) == [("t3", early), ("t3", seq)]
            later = box.post("t3", "and the printer", sender="alice", type="task")
            assert (await pushed(ext, "t3", later))[2:] == [("t3", later)]
            offered = []
            for _ in range(3):  # one task for anyone a wait
                got = await call(bob, "msg_wait", timeout_s=60)
                offered += [m["seq"] for m in got["messages"]]
            assert sorted(offered) == [early, seq, later]

    anyio.run(main)


def test_urgent_news_is_pushed_first_whatever_its_thread_and_age(box: Mailbox) -> None:
    box.create_thread("a", creator="alice")
    box.create_thread("z", creator="alice")
    old = box.post("z", "urgent, in a later thread, posted first", sender="alice", to=["bob"],
                   priority="urgent")  # fmt: skip
    box.post("a", "normal one", sender="alice", to=["bob"])
    box.post("a", "normal two", sender="alice", to=["bob"])
    new = box.post("a", "urgent, posted last", sender="alice", to=["bob"], priority="urgent")
    box.post("t", "normal in t", sender="alice", to=["bob"])

    async def main() -> None:
        async with channel_agent(box.root, "bob") as (_, ext):
            got = await pushes(ext, 5)
            assert got == [("a", new), ("z", old), ("a", 1), ("a", 2), ("t", 1)]
            assert ext.got[0].meta["priority"] == "urgent"

    anyio.run(main)


def test_news_left_out_of_a_long_look_is_pushed_next_and_each_once(box: Mailbox) -> None:
    """One look holds at most MAX_NEWS; what it leaves out is pushed at once after, without
    waiting for more to arrive, and is never marked reported unpushed (an urgent one found
    past it included)."""
    count = MAX_NEWS + 30
    no_loop_guard(box.root)  # a flood the loop guard would stop
    code = (
        "import sys; from mailslot import Mailbox; b = Mailbox(sys.argv[1]); "
        f"[b.post('t', f'n{{i}}', sender='alice', to=['bob']) for i in range({count})]; "
        "b.post('t', 'urgent, last', sender='alice', to=['bob'], priority='urgent')"
    )
    subprocess.run([sys.executable, "-c", code, str(box.root)], check=True, timeout=300)

    async def main() -> None:
        async with channel_agent(box.root, "bob") as (_, ext):
            seqs = [s for _, s in await pushes(ext, count + 1, within=60)]
            assert sorted(seqs) == list(range(1, count + 2))  # each once

    anyio.run(main)


def test_a_task_for_anyone_in_a_thread_never_joined_is_pushed(box: Mailbox) -> None:
    """A task for anyone is for every agent (issue 27, item 3): in a thread the agent never
    joined or read, from before its server started and after, it is news for the pushes as
    its inbox wait hands it out."""
    box.create_thread("u", creator="alice")
    task = box.post("u", "write the changelog", sender="alice", type="task")

    async def main() -> None:
        async with channel_agent(box.root, "bob") as (bob, ext):
            sentinel = box.post("t", "ping", sender="alice", to=["bob"])
            assert await pushed(ext, "t", sentinel) == [("t", sentinel), ("u", task)]
            got = await call(bob, "msg_wait", timeout_s=60)  # as the inbox hands it out
            assert ("u", task) in [(m["thread"], m["seq"]) for m in got["messages"]]
            box.create_thread("v", creator="alice")  # created after bob's server started
            later = box.post("v", "tag the release", sender="alice", type="task")
            assert ("v", later) in await pushed(ext, "v", later)

    anyio.run(main)


def test_a_push_cut_short_marks_only_what_was_handed_out(box: Mailbox) -> None:
    """A look's news goes out in pushes of PUSH_MAX_LINES; stopped between two (here: the
    client reads nothing, the pipe fills, and the server is told to stop), what was not
    handed out is not marked reported, though an urgent one found past it went out first."""
    wide = "\U0001d11e" * 200  # 4 bytes each: a push of 50 lines is ~40 KB
    box = Mailbox(no_loop_guard(box.root))  # a flood the loop guard would stop
    for i in range(150):
        box.post("t", f"{i} {wide}", sender="alice", to=["bob"])
    urgent = box.post("t", "urgent, last", sender="alice", to=["bob"], priority="urgent")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailslot", "serve", "--root", str(box.root), "--agent", "bob",
         "--channel"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
    )  # fmt: skip
    try:
        assert proc.stdin is not None and proc.stdout is not None
        # The smallest pipe: the server's write buffer (64 KiB) takes two pushes, not three.
        fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, 4096)
        proc.stdin.write((json.dumps(INITIALIZE) + "\n").encode())
        assert b'"id":1' in read_line(proc)
        done = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        proc.stdin.write((json.dumps(done) + "\n").encode())  # nothing more is read: it fills
        until("the first push marked", lambda: reported(box.root, "bob", "t") > 0)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    mark = reported(box.root, "bob", "t")
    told, _ = run("prompt", "claude-code", "bob", "{}", None, box.root, env={})
    lines = json.loads(told)["hookSpecificOutput"]["additionalContext"].splitlines()
    items = [int(ln.split("#")[1].split("]")[0]) for ln in lines if ln.startswith("[t #")]
    assert items[0] == urgent  # handed out in the first push, never marked: it comes again
    assert items[1:] == list(range(mark + 1, mark + len(items)))  # from the first not handed out
    assert mark % PUSH_MAX_LINES == PUSH_MAX_LINES - 1  # what whole pushes held (not the urgent)
