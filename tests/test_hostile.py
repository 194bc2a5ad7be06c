"""Hostile conditions: bad names and paths, damage, crashes, load and protocol abuse.

Every attack goes through the library, the command and the MCP tools where it applies, and
checks two things besides the error: nothing outside the root changed, and nothing was stored.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import (
    answer,
    finish,
    no_loop_guard,
    raw_serve,
    require,
    spawn,
    start_together,
    until,
)
from mcp import types
from mcp.client import Client

from mailslot import InvalidMessage, InvalidName, Mailbox, NotFound, RootError
from mailslot.cli import main
from mailslot.stdio_server import create_server
from mailslot.tools import Session

BAD_NAMES = [
    "",
    " ",
    "..",
    "../x",
    "../../etc/passwd",
    "a/b",
    "a\\b",
    "/etc/passwd",
    "C:\\Windows",
    "x\x00y",
    "x\ny",
    "tab\tx",
    "\u200bzero-width",
    "\uff42\uff55\uff53",
    "b\u03c5s",
    "Bus",
    "é",
    ".hidden",
    "-lead",
    "trailing.",
    "a..b",
    "con",
    "aux.json",
    "LPT1",
    "nul.txt",
    "x" * 10_000,
]


def snapshot(top: Path) -> dict[str, bytes | None]:
    """Return every path under top with its bytes (None for folders)."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for d in dirnames:
            out[os.path.join(dirpath, d)] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[p] = b"<link>" if os.path.islink(p) else Path(p).read_bytes()
    return out


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Mailbox, Path]]:
    """A mailbox inside tmp_path/box, with a decoy folder beside it that must never change."""
    decoy = tmp_path / "outside"
    decoy.mkdir()
    (decoy / "secret.txt").write_text("do not touch")
    box = Mailbox.init(tmp_path / "box")
    box.agents.register("alice")
    box.create_thread("t", creator="alice")
    box.post("t", "first", sender="alice")
    yield box, tmp_path
    box.close()


def unchanged(tmp_path: Path, before: dict[str, bytes | None]) -> None:
    after = snapshot(tmp_path)
    outside_before = {k: v for k, v in before.items() if "/box/" not in k + "/"}
    outside_after = {k: v for k, v in after.items() if "/box/" not in k + "/"}
    assert outside_after == outside_before, "something outside the root changed"
    messages = lambda s: {k for k in s if "/threads/" in k}  # noqa: E731
    assert messages(after) == messages(before), "a thread or message appeared"


# ---------------------------------------------------------------- names and paths


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_in_the_library(world: tuple[Mailbox, Path], name: str) -> None:
    box, tmp = world
    before = snapshot(tmp)
    attempts = [
        lambda: box.post(name, "x", sender="alice"),
        lambda: box.post("t", "x", sender=name),
        lambda: box.post("t", "x", sender="alice", to=[name]),
        lambda: box.read(name),
        lambda: box.get(name, 1),
        lambda: box.head(name),
        lambda: box.wait(name, 0, timeout=0),
        lambda: box.agents.register(name),
        lambda: box.agents.card(name),
        lambda: box.agents.hold_name(name),
        lambda: box.create_thread("t2", creator=name),
        lambda: box.set_state(name, "closed", sender="alice"),
    ]
    for attempt in attempts:
        with pytest.raises((InvalidName, NotFound)) as e:
            attempt()
        assert len(str(e.value)) < 400, "the error quotes a long name shortened"
    unchanged(tmp, before)


# A NUL cannot pass through argv (the library and MCP cases cover it).
@pytest.mark.parametrize("name", [n for n in BAD_NAMES[:12] if "\x00" not in n])
def test_bad_names_in_the_command(
    world: tuple[Mailbox, Path], name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    box, tmp = world
    before = snapshot(tmp)
    root = str(box.root)
    for argv in (
        ["post", name, "x"],
        ["read", name],
        ["register", name],
        ["post", "t", "x", "--as", name],
        ["post", "t", "x", "--to", name],
        ["export", name],
        ["wait", name, "--timeout", "0"],
    ):
        code = main([*argv, "--root", root])
        _, err = capsys.readouterr()
        assert code == 1 and err.startswith("mailslot: "), (argv, err)
    unchanged(tmp, before)


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "x\x00y", "Bus", "con", "x" * 10_000])
def test_bad_names_through_mcp(world: tuple[Mailbox, Path], name: str) -> None:
    box, tmp = world
    before = snapshot(tmp)

    async def run() -> None:
        server = create_server(lambda: Session(Mailbox(box.root), agent="probe"), agent="probe")
        async with Client(server, cache=None) as c:
            for tool, args in (
                ("msg_post", {"thread": name, "content": "x"}),
                ("msg_post", {"thread": "t", "content": "x", "to": [name]}),
                ("msg_list", {"thread": name}),
                ("msg_wait", {"thread": name, "timeout_s": 1}),
                ("thread_get", {"thread": name}),
                ("thread_set_state", {"thread": name, "state": "closed"}),
                ("agent_register", {"name": name}),
            ):
                result = await c.call_tool(tool, args)
                assert result.is_error, (tool, args)
                text = result.content[0]
                assert isinstance(text, types.TextContent)
                assert "invalid" in text.text or "no thread" in text.text, text.text

    anyio.run(run)
    after_messages = {k for k in snapshot(tmp) if "/threads/" in k}
    assert after_messages == {k for k in before if "/threads/" in k}


@pytest.mark.parametrize("topic", ["../../etc", "/etc/passwd", "..\\..\\x", "C:\\x", "a/../../b"])
def test_path_like_topics_stay_inside(world: tuple[Mailbox, Path], topic: str) -> None:
    box, tmp = world
    before = snapshot(tmp)
    info = box.create_thread(topic, creator="alice")
    assert "/" not in info.id and "\\" not in info.id and ".." not in info.id
    assert (box.root / "threads" / info.id / "thread.json").exists()
    outside = {k: v for k, v in snapshot(tmp).items() if "/box/" not in k + "/"}
    assert outside == {k: v for k, v in before.items() if "/box/" not in k + "/"}


def test_normalisation_and_look_alikes(world: tuple[Mailbox, Path]) -> None:
    box, _ = world
    nfc, nfd = "Caf\u00e9 review", "Cafe\u0301 review"
    assert box.create_thread(nfc, creator="alice").id == box.create_thread(nfd, creator="alice").id
    plain = box.create_thread("bus123", creator="alice").id
    greek = box.create_thread("b\u03c5s123", creator="alice").id  # Greek upsilon, not "u"
    cyrillic = box.create_thread("bu\u0455123", creator="alice").id  # Cyrillic dze, not "s"
    assert len({plain, greek, cyrillic}) == 3, "look-alike topics must not meet"


def test_idempotency_keys_are_never_paths(world: tuple[Mailbox, Path]) -> None:
    box, tmp = world
    before = snapshot(tmp)
    seq = box.post("t", "keyed", sender="alice", idempotency_key="../../outside/secret.txt")
    assert box.post("t", "keyed", sender="alice", idempotency_key="../../outside/secret.txt") == seq
    with pytest.raises(InvalidName):
        box.post("t", "x", sender="alice", idempotency_key="nul\x00key")
    assert (tmp / "outside" / "secret.txt").read_text() == "do not touch"
    assert {k for k in snapshot(tmp) if "outside" in k} == {k for k in before if "outside" in k}


def test_thread_swapped_for_a_symlink_after_open(world: tuple[Mailbox, Path]) -> None:
    box, tmp = world
    box.read("t")  # opened and used
    os.rename(box.root / "threads" / "t", tmp / "moved")
    (box.root / "threads" / "t").symlink_to(tmp / "outside")
    before = snapshot(tmp / "outside")
    with pytest.raises(RootError, match="symlink"):
        box.post("t", "x", sender="alice")
    with pytest.raises(RootError, match="symlink"):
        box.read("t")
    assert snapshot(tmp / "outside") == before


def test_state_swapped_for_a_symlink_after_open(world: tuple[Mailbox, Path]) -> None:
    box, tmp = world
    box.post("t", "before", sender="alice")
    os.rename(box.root / ".state", tmp / "old-state")
    (box.root / ".state").symlink_to(tmp / "outside")
    before = snapshot(tmp / "outside")
    with pytest.raises(RootError, match="symlink"):
        box.post("t", "x", sender="alice")
    with pytest.raises(RootError, match="symlink"):
        box.agents.register("bob")
    assert snapshot(tmp / "outside") == before


# ---------------------------------------------------------------- content


@pytest.mark.parametrize(
    ("content", "meta", "match"),
    [
        ("x" * (256 * 1024 + 1), None, "over the limit"),
        ("ok", {"k": "v" * 70_000}, "over the limit"),
        ("ok", {"n": float("inf")}, "JSON"),
        ("ok", {"n": float("-inf")}, "JSON"),
        ("lone \udfff", None, "surrogate"),
        (b"\xc3\x28", None, "UTF-8"),
        ("ok", {"k": b"bytes"}, "not JSON"),
        ("ok", {"k": object()}, "not JSON"),
        ("ok", [1, 2], "JSON object"),
    ],
)
def test_bad_content_through_the_library(
    world: tuple[Mailbox, Path], content: Any, meta: Any, match: str
) -> None:
    box, _ = world
    with pytest.raises(InvalidMessage, match=match):
        box.post("t", content, sender="alice", meta=meta)
    assert box.head("t") == 1


# What of the above JSON can carry; infinities, bytes and objects never reach a server.
BAD_CONTENT_ON_THE_WIRE: list[tuple[dict[str, Any], str]] = [
    ({"content": "x" * (256 * 1024 + 1)}, "over the limit"),
    ({"content": "ok", "meta": {"k": "v" * 70_000}}, "over the limit"),
    ({"content": "ok", "meta": [1, 2]}, "JSON object"),
]


def test_bad_content_through_mcp(world: tuple[Mailbox, Path]) -> None:
    box, _ = world
    proc = raw_serve(box.root, "alice")
    assert proc.stdin is not None
    assert "result" in answer(proc, 1)
    # A lone surrogate is a valid JSON escape (json.dumps writes one), but the MCP SDK's parser
    # refuses it and drops the request unanswered, as it drops other invalid requests; the
    # server goes on, as the answers to the requests after it show.
    surrogate = {"name": "msg_post", "arguments": {"thread": "t", "content": "lone \udfff"}}
    requests = [{"jsonrpc": "2.0", "id": 99, "method": "tools/call", "params": surrogate}]
    for n, (arguments, _) in enumerate(BAD_CONTENT_ON_THE_WIRE, start=2):
        params = {"name": "msg_post", "arguments": {"thread": "t", **arguments}}
        requests.append({"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": params})
    for request in requests:
        proc.stdin.write((json.dumps(request) + "\n").encode())
    proc.stdin.flush()
    for n, (_, match) in enumerate(BAD_CONTENT_ON_THE_WIRE, start=2):
        reply = answer(proc, n)["result"]
        assert reply["isError"] and match in reply["content"][0]["text"], reply
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert box.head("t") == 1, "nothing was stored"


def test_big_numbers_round_trip(world: tuple[Mailbox, Path]) -> None:
    box, _ = world
    meta = {"big": 2**200, "neg": -(2**70), "float": 1e308, "tiny": 5e-324, "deep": [[[[1]]]]}
    seq = box.post("t", "numbers", sender="alice", meta=meta)
    assert Mailbox(box.root).get("t", seq).meta == meta


# ---------------------------------------------------------------- folder damage


def test_future_format_reads_but_refuses_to_write(
    world: tuple[Mailbox, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    box, tmp = world
    (box.root / "mailslot.json").write_text('{"format": 2, "fancy": "new things"}')
    newer = Mailbox(box.root)
    assert [m.content for m in newer.read("t").messages] == ["first"]
    before = snapshot(tmp)
    for attempt in (
        lambda: newer.post("t", "x", sender="alice"),
        lambda: newer.create_thread("new", creator="alice"),
        lambda: newer.agents.register("bob"),
        lambda: newer.set_state("t", "closed", sender="alice"),
        lambda: newer.agents.hold_name("bob"),
    ):
        with pytest.raises(RootError, match="format 2.*will not write here: upgrade mailslot"):
            attempt()
    assert snapshot(tmp) == before
    code = main(["post", "t", "x", "--root", str(box.root), "--as", "alice"])
    assert code == 1 and "newer mailslot" in capsys.readouterr().err


def test_permission_denied_file(tmp_path: Path) -> None:
    """A file the reader may not open is skipped and named; a write it may not make says so."""
    drop = []
    if os.geteuid() == 0:  # root reads anything: drop the capabilities that let it
        if not shutil.which("setpriv"):
            require("running as root without setpriv(1) to drop CAP_DAC_OVERRIDE")
        drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    box = Mailbox.init(tmp_path / "box")
    box.create_thread("t", creator="alice")
    for i in range(3):
        box.post("t", f"m{i}", sender="alice")
    (box.root / "threads" / "t" / "000002.json").chmod(0o000)
    (box.root / "threads" / "t").chmod(0o555)  # and the folder is not writable
    code = (
        "import json; from mailslot import Mailbox, StorageError\n"
        f"box = Mailbox({str(box.root)!r})\n"
        "page = box.read('t')\n"
        "try:\n    box.post('t', 'x', sender='alice'); wrote = True\n"
        "except StorageError as e:\n    wrote = str(e)\n"
        "print(json.dumps({'seqs': [m.seq for m in page.messages],"
        " 'skipped': [d.reason for d in page.skipped], 'wrote': wrote}))"
    )
    try:
        result = subprocess.run(
            [*drop, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        (box.root / "threads" / "t").chmod(0o755)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["seqs"] == [1, 3]
    assert "Permission denied" in got["skipped"][0]
    assert "nothing was stored" in got["wrote"], got["wrote"]
    assert box.head("t") == 3


# ---------------------------------------------------------------- crashes


def test_server_killed_while_waiting(world: tuple[Mailbox, Path]) -> None:
    box, _ = world
    proc = raw_serve(box.root, "sleeper")
    answer(proc, 1)
    assert proc.stdin is not None
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "msg_wait", "arguments": {"thread": "t", "timeout_s": 60}},
    }
    proc.stdin.write((json.dumps(call) + "\n").encode())
    proc.stdin.flush()
    until("the server waiting", lambda: box.agents.presence("sleeper").status == "waiting")
    proc.kill()
    proc.communicate(timeout=10)
    assert box.agents.presence("sleeper").status == "offline"
    assert box.post("t", "life goes on", sender="alice") == 2
    # Killed while it wrote a state file (positions, presence), it may leave that temp file:
    # the next process to open the root removes it (its pid is dead), and nothing else stays.
    Mailbox(box.root).close()
    assert not list((box.root / ".state" / "tmp").iterdir())
    again = raw_serve(box.root, "sleeper")  # its name is free again
    assert "result" in answer(again, 1)
    again.communicate(timeout=10)


# ---------------------------------------------------------------- protocol abuse


def test_protocol_abuse_leaves_the_server_usable(world: tuple[Mailbox, Path]) -> None:
    box, _ = world
    proc = raw_serve(box.root, "target")
    assert proc.stdin is not None
    assert "result" in answer(proc, 1)
    junk = [
        b"this is not json\n",
        b"[1, 2, 3]\n",
        b'{"jsonrpc": "2.0", "id": 90, "method": \n',
        b"\xff\xfe\x00garbage\n",
        (json.dumps({"jsonrpc": "2.0", "id": 2, "method": "no/such/method"}) + "\n").encode(),
        (
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 3,
                    "method": "tools/call",
                    "params": {
                        "name": "msg_post",
                        "arguments": {"thread": 123, "content": ["not", "text"]},
                    },
                }
            )
            + "\n"
        ).encode(),
        (
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 4,
                    "method": "tools/call",
                    "params": {"name": "no_such_tool", "arguments": {}},
                }
            )
            + "\n"
        ).encode(),
        (
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 5,
                    "method": "tools/call",
                    "params": {
                        "name": "msg_post",
                        "arguments": {"thread": "t", "content": "x" * 3_000_000},
                    },
                }
            )
            + "\n"
        ).encode(),
        (
            json.dumps({"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": "oops"}) + "\n"
        ).encode(),
        (
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 7,
                    "method": "tools/call",
                    "params": {
                        "name": "msg_post",
                        "arguments": {"thread": "t", "content": "still here"},
                    },
                }
            )
            + "\n"
        ).encode(),
    ]
    for line in junk:
        proc.stdin.write(line)
    proc.stdin.flush()
    assert answer(proc, 2)["error"]["code"] == -32601  # method not found
    for bad in (3, 4, 5):
        reply = answer(proc, bad)
        assert reply.get("error") or reply["result"]["isError"], reply
        if bad == 5:
            assert "limit" in json.dumps(reply)
    # Request 6 (params that are not an object) gets no reply at all: the MCP SDK drops invalid
    # request objects. What matters is that the server goes on, as the next answer shows.
    ok = answer(proc, 7)["result"]
    assert not ok["isError"] and json.loads(ok["content"][0]["text"])["seq"] == 2
    assert proc.poll() is None, "the server is still running"
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert box.head("t") == 2, "no junk was stored"


# ---------------------------------------------------------------- load


def test_32_processes_post_and_wait(tmp_path: Path) -> None:
    root = tmp_path / "load"
    box = Mailbox.init(root, fsync=False)
    no_loop_guard(root)  # 8 agents posting 40 each in a second: a storm to the loop guard
    box.create_thread("load", creator="judge")
    box.create_thread("signal", creator="judge")
    go = tmp_path / "go"
    writers = [
        spawn("writer", str(root), "load", f"lib{i}", "150", "lock", "nofsync", str(go))
        for i in range(12)
    ]
    agents = [spawn("mcp_agent", str(root), f"mcp{i}", "40", str(go)) for i in range(8)]
    waiters = [
        spawn("waiter", str(root), "signal", json.dumps({"signal": 0}), "-", "240", "auto")
        for _ in range(4)
    ]
    start_together([*writers, *agents], go)  # 12 + 8 clients + 8 servers + 4 waiters = 32
    acked: dict[str, list[int]] = {}
    for out in finish(writers):
        doc = json.loads(out)
        acked[doc["writer"]] = doc["acked"]
    for p in agents:
        assert p.stdout is not None
        doc = json.loads(p.stdout.readline())
        acked[doc["writer"]] = doc["acked"]
    for p in waiters:  # all blocked before the signal comes: only its file event wakes them
        assert p.stdout is not None
        assert [p.stdout.readline().strip() for _ in "12"] == ["ready", "blocked"]
    box.post("signal", "done", sender="judge")
    for out in finish(agents, timeout=120):
        assert json.loads(out.strip().splitlines()[-1]) == {"woke": "done"}
    for out in finish(waiters, timeout=120):
        got = json.loads(out.strip().splitlines()[-1])
        assert [m["content"] for m in got["messages"]] == ["done"]
    total = 12 * 150 + 8 * 40
    messages = list(Mailbox(root).messages("load"))
    assert [m.seq for m in messages] == list(range(1, total + 1))
    seen = {(m.meta["writer"], m.meta["i"]) for m in messages}
    assert len(seen) == total, "every acknowledged message is there exactly once"
    for writer, seqs in acked.items():
        mine = [m.seq for m in messages if m.meta["writer"] == writer]
        assert mine == seqs, f"{writer}: acknowledged seqs differ from what is stored"


@pytest.mark.slow
def test_soak_hundreds_of_killed_writers(tmp_path: Path) -> None:
    root = tmp_path / "soak"
    box = Mailbox.init(root)
    box.create_thread("crash", creator="judge")
    import random

    rng = random.Random(7)
    for k in range(300):
        p = spawn("forever", str(root), "crash", f"victim{k}")
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.03))
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=30)
        assert box.post("crash", "survivor", sender="judge") == box.head("crash")
    messages = list(box.messages("crash"))
    assert [m.seq for m in messages] == list(range(1, box.head("crash") + 1))
    for k in range(300):
        mine = [m.meta["i"] for m in messages if m.sender == f"victim{k}"]
        assert mine == list(range(len(mine))), f"victim{k}: a message doubled or lost its place"
    Mailbox(root)
    assert not list((root / ".state" / "tmp").iterdir())


@pytest.mark.parametrize("digits", [41, 401, 4001])
def test_a_seq_hundreds_of_digits_long_is_no_message(
    world: tuple[Mailbox, Path], digits: int
) -> None:
    """No file can be named after such a seq (names stop at 255 bytes): it is simply not there,
    as 10**40 is not, never a file that 'cannot be opened', and never a walk past it."""
    box, _ = world
    big = 10 ** (digits - 1)
    proc = raw_serve(box.root, "alice")
    assert proc.stdin is not None
    assert "result" in answer(proc, 1)
    calls = [
        ("task_claim", {"thread": "t", "seq": big}),
        ("msg_list", {"thread": "t", "after_seq": big}),
        ("msg_wait", {"thread": "t", "after_seq": big, "timeout_s": 0.2}),
        ("msg_post", {"thread": "t", "content": "re", "reply_to": big}),
    ]
    for n, (name, arguments) in enumerate(calls, start=2):
        request = {"jsonrpc": "2.0", "id": n, "method": "tools/call",
                   "params": {"name": name, "arguments": arguments}}  # fmt: skip
        proc.stdin.write((json.dumps(request) + "\n").encode())
        proc.stdin.flush()
        reply = answer(proc, n)["result"]
        text = reply["content"][0]["text"]
        assert "cannot be opened" not in text and "too long" not in text, text
        assert str(box.root) not in text, text
        if name in ("task_claim", "msg_post"):
            assert reply["isError"] and f"no message {big} in thread 't'" in text, text
        else:
            assert not reply["isError"] and json.loads(text)["messages"] == [], text
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and b"cannot be opened" not in err, err.decode()
    assert box.head("t") == 1, "nothing was stored"
