"""Bounded reading and writing: hostile nesting, and content that grows when escaped.

A file nested 100,000 levels deep must be reported as damage where it lies and nowhere else,
through the library, the command and the MCP server; and whatever a writer acknowledges, every
reader can read back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import answer, raw_serve, server_env
from mcp import StdioServerParameters, types
from mcp.client import Client

from mailslot import InvalidMessage, Mailbox, RootError
from mailslot.doctor.checks import diagnose
from mailslot.mailbox import DEFAULT_MAX_CONTENT
from mailslot.store.format import (
    MAX_JSON_DEPTH,
    MAX_META_BYTES,
    MAX_META_DEPTH,
    dumps,
    loads,
    max_message_file_bytes,
)

DEPTH = 100_000
DEEP = b"[" * DEPTH + b"]" * DEPTH  # valid JSON, only too deep
SERVE = [sys.executable, "-m", "mailslot"]


def mailslot(root: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    """Run the real `mailslot` command on root and return what it did."""
    done = subprocess.run(
        [*SERVE, *args, "--root", str(root)],
        input=stdin.decode(),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MAILSLOT_AGENT": "carol"},
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def set_config(root: Path, **settings: Any) -> None:
    config = root / "mailslot.json"
    config.write_bytes(dumps({**json.loads(config.read_bytes()), **settings}))


# ---------------------------------------------------------------- loads itself


@pytest.mark.parametrize(
    "data",
    [
        DEEP,
        b"[" * DEPTH,  # torn as well as deep
        b'{"a":' * DEPTH + b"1" + b"}" * DEPTH,
        b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1),
        b'{"a": [1, {"b": ' + b"[" * DEPTH + b"]" * DEPTH + b"}]}",
    ],
    ids=["lists", "unclosed", "objects", "one-too-deep", "deep-inside"],
)
def test_deep_json_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match=f"nested deeper than {MAX_JSON_DEPTH} levels"):
        loads(data)
    with pytest.raises(ValueError, match="nested deeper"):
        loads(data.decode())


def test_depth_limit_counts_structure_only() -> None:
    at_limit = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert loads(at_limit) == loads(at_limit.decode())
    brackets_in_text = json.dumps({"content": "[" * DEPTH + '\\"{' * 1000}).encode()
    assert loads(brackets_in_text)["content"].startswith("[[[")
    wide = json.dumps([[i] for i in range(10_000)]).encode()
    assert len(loads(wide)) == 10_000


def test_deep_json_repeatedly_leaves_the_interpreter_usable() -> None:
    for _ in range(200):
        with pytest.raises(ValueError):
            loads(DEEP)
    assert loads(b'{"ok": [true]}') == {"ok": [True]}


# ---------------------------------------------------------------- a mailbox with deep files


@pytest.fixture
def hurt(tmp_path: Path) -> Path:
    """A root where one file of every kind is nested 100,000 levels deep.

    Threads: 'good' (healthy), 'bad' (seq 2 is deep, seqs 1 and 3 are fine), 'rec' (its
    thread.json is deep). Agents alice and bob are fine; the card of 'mallory' is deep, and so
    are bob's presence file, alice's cursor files and the index of 'good'.
    """
    root = tmp_path / "box"
    Mailbox.init(root)
    set_config(root, grace_s=0)  # report damage at once, without waiting for a slow writer
    with Mailbox(root) as box:
        box.agents.register("alice")
        box.agents.register("bob")
        for thread in ("good", "bad", "rec"):
            box.create_thread(thread, creator="alice")
        box.post("good", "good one", sender="alice")
        box.post("good", "good two, for alice", sender="bob", to=["alice"])
        box.post("bad", "bad one", sender="alice")
        box.post("bad", "placeholder", sender="alice")
        box.post("bad", "bad three, for alice", sender="bob", to=["alice"])
        box.post("rec", "rec one", sender="bob")
        box.threads()  # writes the thread indexes
    (root / "threads" / "bad" / "000002.json").write_bytes(DEEP)
    (root / "threads" / "rec" / "thread.json").write_bytes(DEEP)
    (root / "agents" / "mallory.json").write_bytes(DEEP)
    for rel in ("presence/bob.json", "cursors/alice/good.json", "cursors/alice/bad.json",
                "index/good.json"):  # fmt: skip
        path = root / ".state" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(DEEP)
    return root


def test_library_reports_deep_files_where_they_lie(hurt: Path) -> None:
    with Mailbox(hurt) as box:
        page = box.read("bad")
        assert [m.content for m in page.messages] == ["bad one", "bad three, for alice"]
        assert [Path(d.path).name for d in page.skipped] == ["000002.json"]
        assert "nested deeper than 64 levels" in page.skipped[0].reason
        good = box.read("good")
        assert len(good.messages) == 2 and not good.skipped and good.pending is None
        assert [m.content for m in box.read("rec").messages] == ["rec one"]

        got = box.wait("bad", after=1, timeout=5)
        assert not got.timed_out and [m.seq for m in got.messages] == [3]
        assert [Path(d.path).name for d in got.skipped] == ["000002.json"]
        inbox = box.wait(None, after={}, to="alice", timeout=5)
        assert sorted((m.thread, m.seq) for m in inbox.messages) == [("bad", 3), ("good", 2)]
        assert {Path(d.path).parent.name for d in inbox.skipped} == {"bad"}

        threads = {t.id: t for t in box.threads()}
        assert set(threads) == {"good", "bad", "rec"}
        assert threads["rec"].topic == "rec", "the id stands in for an unreadable topic"
        assert threads["good"].head == 2 and threads["bad"].head == 3
        assert [a.name for a in box.agents.cards()] == ["alice", "bob"]
        assert box.agents.presence("bob").status == "offline"
        assert box.load_cursor("alice", "good") is None
        assert box.post("bad", "still writable", sender="bob") == 4


def test_command_reports_deep_files_and_never_crashes(hurt: Path) -> None:
    read = mailslot(hurt, "read", "bad")
    assert read.returncode == 0
    assert "bad one" in read.stdout and "bad three" in read.stdout
    assert "000002.json" in read.stderr and "nested deeper" in read.stderr
    good = mailslot(hurt, "read", "good")
    assert good.returncode == 0 and "good two" in good.stdout and good.stderr == ""
    threads = mailslot(hurt, "threads", "--json")
    assert threads.returncode == 0
    assert {t["id"] for t in json.loads(threads.stdout)["threads"]} == {"good", "bad", "rec"}
    agents = mailslot(hurt, "agents", "--json")
    assert agents.returncode == 0
    assert [a["agent"] for a in json.loads(agents.stdout)["agents"]] == ["alice", "bob"]
    waited = mailslot(hurt, "wait", "bad", "--after", "1", "--timeout", "5")
    assert waited.returncode == 0 and "bad three" in waited.stdout
    inbox = mailslot(hurt, "wait", "--to", "alice", "--timeout", "0.5")
    assert inbox.returncode == 124, "an inbox wait over every thread times out normally"

    doctor = mailslot(hurt, "doctor", "--json")
    assert doctor.returncode == 1, "damage left unfixed is not healthy"
    found = {(f["kind"], Path(f["path"]).name) for f in json.loads(doctor.stdout)["findings"]}
    assert {
        ("corrupt message", "000002.json"),
        ("thread record", "thread.json"),
        ("agent card", "mallory.json"),
    } <= found
    assert mailslot(hurt, "doctor").returncode == 1


def test_doctor_fix_quarantines_a_deep_message(hurt: Path) -> None:
    report = diagnose(hurt, fix=True)
    fixed = [f for f in report.findings if f.kind == "corrupt message"]
    assert len(fixed) == 1 and fixed[0].fixed and "nested deeper" in fixed[0].detail
    with Mailbox(hurt) as box:
        page = box.read("bad")
        assert [m.seq for m in page.messages] == [1, 2, 3] and not page.skipped
        assert page.messages[1].sender == "mailslot"


def params(root: Path, agent: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=SERVE[0],
        args=[*SERVE[1:], "serve", "--root", str(root), "--agent", agent],
        env=server_env(),
    )


@asynccontextmanager
async def served(root: Path, agent: str) -> AsyncIterator[Client]:
    async with Client(params(root, agent), cache=None) as c:
        yield c


async def call(c: Client, tool: str, **args: Any) -> Any:
    result = await c.call_tool(tool, args)
    assert isinstance(result.content[0], types.TextContent)
    assert not result.is_error, result.content[0].text
    return json.loads(result.content[0].text)


def test_mcp_reports_deep_files_and_keeps_serving(hurt: Path) -> None:
    async def main() -> None:
        async with served(hurt, "alice") as c:
            # Its inbox first: what was sent to alice, though her cursors are deep files.
            inbox = await call(c, "msg_wait", timeout_s=5)
            assert sorted((m["thread"], m["seq"]) for m in inbox["messages"]) == [
                ("bad", 3),
                ("good", 2),
            ]
            assert all("/bad/" in u for u in inbox.get("unreadable", []))
            listed = await call(c, "msg_list", thread="bad")
            assert [m["seq"] for m in listed["messages"]] == [1, 3]
            assert len(listed["unreadable"]) == 1 and "000002.json" in listed["unreadable"][0]
            assert "nested deeper" in listed["unreadable"][0]
            good = await call(c, "msg_list", thread="good")
            assert len(good["messages"]) == 2 and "unreadable" not in good

            waited = await call(c, "msg_wait", thread="bad", after_seq=1, timeout_s=5)
            assert [m["seq"] for m in waited["messages"]] == [3]

            threads = await call(c, "thread_list")
            assert {t["thread"] for t in threads["threads"]} == {"good", "bad", "rec"}
            agents = await call(c, "agent_list")
            assert {a["agent"] for a in agents["agents"]} == {"alice", "bob"}
            posted = await call(c, "msg_post", thread="bad", content="after the damage")
            assert posted["seq"] == 4

    anyio.run(main)


def test_deep_config_is_a_one_line_error_everywhere(hurt: Path) -> None:
    (hurt / "mailslot.json").write_bytes(DEEP)
    with pytest.raises(RootError, match="nested deeper than 64 levels"):
        Mailbox(hurt)
    for argv in (["threads"], ["read", "good"], ["agents"]):
        done = mailslot(hurt, *argv)
        assert done.returncode == 1
        assert done.stderr.startswith("mailslot: ") and done.stderr.count("\n") == 1
        assert "nested deeper" in done.stderr
    doctor = mailslot(hurt, "doctor", "--json")
    assert doctor.returncode == 1
    config = [f for f in json.loads(doctor.stdout)["findings"] if f["kind"] == "config"]
    assert config and "nested deeper" in config[0]["detail"]
    serve = subprocess.run(
        [*SERVE, "serve", "--root", str(hurt), "--agent", "alice"],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert serve.returncode == 1 and "Traceback" not in serve.stderr
    assert "nested deeper" in serve.stderr


# ---------------------------------------------------------------- deep input from writers


@pytest.mark.parametrize(
    "meta",
    ["[" * DEPTH, "[" * 60_000 + "]" * 60_000, '{"a": ' * 40 + "1" + "}" * 40],
    ids=["unclosed", "balanced", "deeper-than-meta-allows"],
)
def test_deep_meta_on_the_command_line(root: Path, meta: str) -> None:
    with Mailbox(root) as box:
        box.create_thread("t", creator="alice")
    done = mailslot(root, "post", "t", "hello", "--meta", meta)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("mailslot: ") and done.stderr.count("\n") == 1
    assert "nested deeper than" in done.stderr
    assert Mailbox(root).head("t") == 0, "nothing was stored"


def test_deep_meta_through_mcp(root: Path) -> None:
    with Mailbox(root) as box:
        box.create_thread("t", creator="alice")
    meta: Any = 0
    for _ in range(150):
        meta = [meta]

    async def main() -> None:
        async with served(root, "alice") as c:
            bad = await c.call_tool(
                "msg_post", {"thread": "t", "content": "x", "meta": {"a": meta}}
            )
            assert bad.is_error
            assert isinstance(bad.content[0], types.TextContent)
            assert f"nested deeper than {MAX_META_DEPTH} levels" in bad.content[0].text
            assert (await call(c, "msg_post", thread="t", content="fine"))["seq"] == 1

    anyio.run(main)


def test_hostile_depth_on_the_wire_leaves_the_server_usable(root: Path) -> None:
    """100,000 levels is past what the MCP SDK parses: the request is answered with an error
    that says which argument is too deep; nothing is stored and the server goes on."""
    with Mailbox(root) as box:
        box.create_thread("t", creator="alice")
    proc = raw_serve(root, "alice")
    assert proc.stdin is not None and proc.stdout is not None
    assert "result" in answer(proc, 1)
    args = '{"thread": "t", "content": "x", "meta": {"a": ' + "[" * DEPTH + "]" * DEPTH + "}}"
    deep = '{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "msg_post", '
    deep += f'"arguments": {args}}}}}\n'
    post = {"name": "msg_post", "arguments": {"thread": "t", "content": "fine"}}
    ok = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": post}
    proc.stdin.write(deep.encode() + (json.dumps(ok) + "\n").encode())
    proc.stdin.flush()
    replies: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + 30
    while 3 not in replies and time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, "the server closed its output"
        doc = json.loads(line)
        if "id" in doc:
            replies[doc["id"]] = doc
    assert 3 in replies and not replies[3]["result"]["isError"]
    assert json.loads(replies[3]["result"]["content"][0]["text"])["seq"] == 1
    assert "argument 'meta' of msg_post is nested" in replies[2]["error"]["message"]
    assert proc.poll() is None, "the server is still running"
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert Mailbox(root).head("t") == 1


# ---------------------------------------------------------------- acknowledged implies readable


def test_control_characters_are_stored_and_read_back_exactly(root: Path) -> None:
    content = "\x01" * 200_000  # 200 KB of text, 1.2 MB once escaped as JSON
    with Mailbox(root) as box:
        box.create_thread("t", creator="alice")
        seq = box.post("t", content, sender="alice")
        path = root / "threads" / "t" / "000001.json"
        assert path.stat().st_size > 1_200_000
        page = box.read("t")
        assert not page.skipped and page.messages[0].content == content
        assert box.get("t", seq).content == content
    report = diagnose(root)
    assert report.healthy and report.messages == 1, report.findings
    shown = mailslot(root, "read", "t", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["messages"][0]["content"] == content


def test_control_characters_through_mcp(root: Path) -> None:
    content = "\x1f\x00\x01" * 70_000

    async def main() -> None:
        async with served(root, "alice") as c:
            await call(c, "thread_create", topic="t")
            assert (await call(c, "msg_post", thread="t", content=content))["seq"] == 1
            listed = await call(c, "msg_list", thread="t")
            assert listed["messages"][0]["content"] == content and "unreadable" not in listed

    anyio.run(main)


def test_the_largest_message_is_accepted_and_readable(root: Path) -> None:
    """Content at its limit, all control characters, plus meta at its limit: it fits."""
    content = "\x01" * DEFAULT_MAX_CONTENT
    entry = len('"k0000": "' + "\\u0002" * 70 + '", ')  # as check_meta measures it
    meta = {f"k{i:04d}": "\x02" * 70 for i in range(MAX_META_BYTES // entry)}
    assert MAX_META_BYTES - 1000 < len(json.dumps(meta, ensure_ascii=False)) <= MAX_META_BYTES
    with Mailbox(root) as box:
        for name in ("alice", *(f"agent-{i:03d}-{'x' * 50}" for i in range(100))):
            box.agents.register(name)
        box.create_thread("t", creator="alice")
        to = [a.name for a in box.agents.cards()]
        seq = box.post("t", content, sender="alice", to=to, meta=meta)
        size = (root / "threads" / "t" / "000001.json").stat().st_size
        assert 6 * DEFAULT_MAX_CONTENT < size <= max_message_file_bytes(DEFAULT_MAX_CONTENT)
        got = box.get("t", seq)
        assert (got.content, got.meta, got.to) == (content, meta, to)
        with pytest.raises(InvalidMessage, match="over the limit"):
            box.post("t", content + "\x01", sender="alice")
        assert box.head("t") == 1


def test_meta_that_grows_past_the_file_limit_is_refused(root: Path) -> None:
    """Meta is limited as compact JSON; indented in the file, a deeply nested one grows ~40x.
    If that would make a file readers refuse, the writer refuses it first and stores nothing."""
    inner: Any = [[0]] * 12_000
    for _ in range(MAX_META_DEPTH - 4):
        inner = [inner]
    meta = {"a": inner}
    assert len(json.dumps(meta)) <= MAX_META_BYTES, "within the meta limit as measured"
    with Mailbox(root) as box:
        box.create_thread("t", creator="alice")
        with pytest.raises(InvalidMessage) as e:
            box.post("t", "x", sender="alice", meta=meta)
        assert "readers accept" in str(e.value) and "nothing was stored" in str(e.value)
        assert box.head("t") == 0
        assert not list((root / ".state" / "tmp").iterdir()), "no temp file left behind"


def test_reader_and_writer_share_one_limit(root: Path) -> None:
    set_config(root, max_content_bytes=1000)
    limit = max_message_file_bytes(1000)
    with Mailbox(root) as box:
        box.create_thread("t", creator="alice")
        box.post("t", "\x01" * 1000, sender="alice")
        assert (root / "threads" / "t" / "000001.json").stat().st_size <= limit
        foreign = root / "threads" / "t" / "000002.json"
        doc = json.loads((root / "threads" / "t" / "000001.json").read_bytes())
        doc["content"] = "x" * limit  # written by something that is not mailslot
        foreign.write_bytes(dumps(doc))
        page = box.read("t")
        assert [m.seq for m in page.messages] == [1]
        assert "too large" in page.skipped[0].reason
    report = diagnose(root)
    assert [(f.kind, Path(f.path).name) for f in report.findings] == [
        ("corrupt message", "000002.json")
    ]
    assert "too large" in report.findings[0].detail
