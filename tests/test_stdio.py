"""The stdio transport of `mailslot serve` (mailslot.server.transport), driven through real pipes.

Requests split across writes, many in one write, lines far past one read, blank lines, CRLF,
bytes that are not UTF-8 and lines that are not JSON; a stdin that is a file rather than a pipe
(served by the SDK's transport); stray output of a child kept off the wire; and the official
client over both protocol eras.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
import tty
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import INITIALIZE, agent, answer, call, raw_serve, read_line, until

from mailslot import Mailbox


def _line(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc) + "\n").encode()


def _call(id_: int, tool: str, **args: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "method": "tools/call",
            "params": {"name": tool, "arguments": args}}  # fmt: skip


def _text(reply: dict[str, Any]) -> str:
    assert "result" in reply, reply
    return str(reply["result"]["content"][0]["text"])


def _send(proc: subprocess.Popen[bytes], data: bytes) -> None:
    assert proc.stdin is not None
    proc.stdin.write(data)
    proc.stdin.flush()


def _close(proc: subprocess.Popen[bytes]) -> bytes:
    _, err = proc.communicate(timeout=30)  # closes stdin: the server's cue to exit
    assert proc.returncode == 0, err.decode(errors="replace")
    return err


def test_a_request_split_across_writes_and_many_in_one_write(tmp_path: Path) -> None:
    Mailbox.init(tmp_path / "box").create_thread("t", creator="x")
    proc = raw_serve(tmp_path / "box", "alice")
    try:
        answer(proc, 1)
        data = _line(_call(2, "msg_post", thread="t", content="split"))
        for i in range(0, len(data), 7):  # seven bytes at a time, each its own write
            _send(proc, data[i : i + 7])
            time.sleep(0.002)
        assert json.loads(_text(answer(proc, 2)))["seq"] == 1
        burst = b"".join(_line(_call(10 + i, "msg_post", thread="t", content=f"b{i}"))
                         for i in range(20))  # fmt: skip
        _send(proc, burst)
        seqs = {json.loads(_text(answer(proc, 10 + i)))["seq"] for i in range(20)}
        assert seqs == set(range(2, 22))
    finally:
        _close(proc)
    assert [m.content for m in Mailbox(tmp_path / "box").read("t").messages] == [
        "split",
        *(f"b{i}" for i in range(20)),
    ]


def test_lines_far_longer_than_one_read_pass_whole_both_ways(tmp_path: Path) -> None:
    Mailbox.init(tmp_path / "box").create_thread("t", creator="x")
    big = "".join(chr(0x4E00 + i % 500) for i in range(80_000))  # 240 KB of UTF-8, 4 reads
    proc = raw_serve(tmp_path / "box", "alice")
    try:
        answer(proc, 1)
        _send(proc, _line(_call(2, "msg_post", thread="t", content=big)))
        assert json.loads(_text(answer(proc, 2)))["seq"] == 1
        _send(proc, _line(_call(3, "msg_list", thread="t")))
        listed = json.loads(_text(answer(proc, 3)))
        assert listed["messages"][0]["content"] == big
    finally:
        _close(proc)


def test_blank_lines_crlf_bad_bytes_and_bad_json_are_answered_and_do_not_stop_the_server(
    tmp_path: Path,
) -> None:
    Mailbox.init(tmp_path / "box").create_thread("t", creator="x")
    proc = raw_serve(tmp_path / "box", "alice")
    try:
        answer(proc, 1)
        _send(proc, b"\n\n   \n")
        _send(proc, b"this is not json\n")
        refused = json.loads(read_line(proc))  # JSON-RPC: a parse error, under id null
        assert refused["id"] is None and refused["error"]["code"] == -32700
        assert refused["error"]["message"].startswith("not JSON (")
        _send(proc, b'{"jsonrpc": "2.0", "id": 5, "method": \xff\xfe}\n')
        assert answer(proc, 5)["error"]["code"] == -32700  # its id could be read: answered
        _send(proc, b'{"jsonrpc": "2.0", "id": 6, "method": 7}\n')
        assert answer(proc, 6)["error"]["message"].startswith("not a JSON-RPC 2.0 message")
        crlf = json.dumps(_call(2, "msg_post", thread="t", content="crlf")).encode() + b"\r\n"
        _send(proc, crlf)
        assert json.loads(_text(answer(proc, 2)))["seq"] == 1
        _send(proc, _line(_call(3, "msg_post", thread="t", content="caf\u00e9 \U0001f600")))
        assert json.loads(_text(answer(proc, 3)))["seq"] == 2
    finally:
        _close(proc)
    assert Mailbox(tmp_path / "box").read("t").messages[1].content == "caf\u00e9 \U0001f600"


def test_a_last_request_without_a_newline_is_answered_before_exit(tmp_path: Path) -> None:
    Mailbox.init(tmp_path / "box").create_thread("t", creator="x")
    proc = raw_serve(tmp_path / "box", "alice")
    answer(proc, 1)
    _send(proc, json.dumps(_call(2, "thread_list")).encode())  # no newline, then EOF
    out, err = proc.communicate(timeout=30)
    replies = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert [r.get("id") for r in replies] == [2], err.decode(errors="replace")


def test_a_file_on_stdin_is_served_by_the_sdk_transport(tmp_path: Path) -> None:
    """A person trying the server by hand: requests in a file, replies into a file."""
    Mailbox.init(tmp_path / "box").create_thread("t", creator="x")
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(
        _line(INITIALIZE)
        + _line({"jsonrpc": "2.0", "method": "notifications/initialized"})
        + _line({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    )
    replies = tmp_path / "replies.jsonl"
    with requests.open("rb") as stdin, replies.open("wb") as stdout:
        done = subprocess.run(
            [sys.executable, "-m", "mailslot", "serve", "--root", str(tmp_path / "box"),
             "--agent", "alice"],
            stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    got = {d.get("id"): d for d in map(json.loads, replies.read_text().splitlines())}
    assert len(got[2]["result"]["tools"]) == 15


def test_a_terminal_is_served_by_the_sdk_transport_and_left_blocking(tmp_path: Path) -> None:
    """Someone typing requests: the terminal is never made non-blocking under their shell."""
    Mailbox.init(tmp_path / "box")
    master, slave = os.openpty()
    tty.setraw(slave)  # no echo: what master reads is what the server wrote
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailslot", "serve", "--root", str(tmp_path / "box"),
             "--agent", "alice"],
            stdin=slave, stdout=slave, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.write(
            master, _line(INITIALIZE) + _line({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        )
        seen = b""
        deadline = time.monotonic() + 30
        while b'"id":2' not in seen.replace(b" ", b"") and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                seen += os.read(master, 1 << 16)
        assert b'"tools"' in seen
        assert os.get_blocking(slave)  # while it serves, too
        proc.terminate()
        proc.wait(timeout=30)
        assert os.get_blocking(slave)
    finally:
        os.close(master)
        os.close(slave)


def test_output_of_a_child_process_never_reaches_the_wire(tmp_path: Path) -> None:
    """fd 1 points at stderr while serving: a hook or tool that prints cannot corrupt MCP."""
    Mailbox.init(tmp_path / "box").create_thread("t", creator="x")
    proc = raw_serve(tmp_path / "box", "alice")
    try:
        answer(proc, 1)
        fds = Path(f"/proc/{proc.pid}/fd")
        # What a child would inherit: fd 0 reads nothing, fd 1 is stderr, not the wire.
        assert (fds / "0").resolve() == Path("/dev/null")
        assert (fds / "1").readlink() == (fds / "2").readlink()
        _send(proc, _line(_call(2, "thread_list")))
        assert "result" in answer(proc, 2)
    finally:
        _close(proc)


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
def test_the_official_client_in_both_eras(tmp_path: Path, mode: str) -> None:
    Mailbox.init(tmp_path / "box")

    async def main() -> None:
        async with agent(tmp_path / "box", "alice", mode) as alice:
            tools = await alice.list_tools()
            assert len(tools.tools) == 15
            await call(alice, "thread_create", topic="eras")
            for i in range(50):
                posted = await call(alice, "msg_post", thread="eras", content=f"m{i}")
                assert posted["seq"] == i + 1
            got = await call(alice, "msg_list", thread="eras", limit=100)
            assert [m["content"] for m in got["messages"]] == [f"m{i}" for i in range(50)]

    anyio.run(main)


def _serve(root: Path, stdin: Any, stdout: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "mailslot", "serve", "--root", str(root), "--agent", "alice"],
        stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
    )  # fmt: skip


def _replies(fd: int, ids: set[int], within: float = 30) -> dict[int, dict[str, Any]]:
    """Read lines from fd until a reply to each of ids has come; return them by id."""
    got: dict[int, dict[str, Any]] = {}
    buf = b""
    deadline = time.monotonic() + within
    while not ids <= set(got):
        assert time.monotonic() < deadline, f"no reply to {ids - set(got)} in time"
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            chunk = os.read(fd, 1 << 16)
            assert chunk, "the server closed its output"
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                doc = json.loads(line)
                got[doc.get("id")] = doc
    return got


def test_one_socket_as_stdin_and_stdout_is_served(tmp_path: Path) -> None:
    """inetd, systemd socket units and Popen(stdin=s, stdout=s) hand a server one socket."""
    Mailbox.init(tmp_path / "box").create_thread("t", creator="x")
    ours, theirs = socket.socketpair()
    proc = _serve(tmp_path / "box", theirs, theirs)
    theirs.close()
    try:
        ours.sendall(_line(INITIALIZE))
        _replies(ours.fileno(), {1})
        ours.sendall(b"".join(_line(_call(i, "msg_post", thread="t", content=f"m{i}"))
                              for i in range(2, 7)))  # fmt: skip
        got = _replies(ours.fileno(), set(range(2, 7)))
        assert sorted(json.loads(_text(got[i]))["seq"] for i in range(2, 7)) == [1, 2, 3, 4, 5]
        ours.shutdown(socket.SHUT_WR)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode(errors="replace")
    finally:
        ours.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_a_client_that_dies_leaves_a_server_that_exits_cleanly(tmp_path: Path) -> None:
    """The client's end of both pipes closes at once (it was killed): exit 0, no traceback."""
    Mailbox.init(tmp_path / "box").create_thread("t", creator="x")
    proc = raw_serve(tmp_path / "box", "alice")
    answer(proc, 1)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # nothing reads the server's replies any more
    time.sleep(0.2)
    proc.stdin.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=30) == 0, err.decode(errors="replace")
    assert b"Traceback" not in err, err.decode(errors="replace")
    proc.stderr.close()


def test_the_pipes_are_left_blocking_or_not_as_they_were(tmp_path: Path) -> None:
    Mailbox.init(tmp_path / "box")
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    os.set_blocking(stdin_r, False)  # a parent that uses non-blocking pipes for its children
    try:
        proc = _serve(tmp_path / "box", stdin_r, stdout_w)
        os.write(stdin_w, _line(INITIALIZE))
        _replies(stdout_r, {1})
        os.close(stdin_w)
        proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert not os.get_blocking(stdin_r), "stdin was non-blocking: it must stay so"
        assert os.get_blocking(stdout_w), "stdout was blocking: it must stay so"
    finally:
        for fd in (stdin_r, stdout_r, stdout_w):
            os.close(fd)


# ------------------------------------------------ a client that reads late, and the end of stdin

BIG = 30_000  # five messages of this make a msg_list reply of about 150 KB: two fill a pipe


def _big_thread(root: Path) -> list[str]:
    """Make thread t of five big messages; return their contents."""
    with Mailbox.init(root) as box:
        box.create_thread("t", creator="x")
        contents = [f"{i}" * BIG for i in range(5)]
        for content in contents:
            box.post("t", content, sender="x")
    return contents


def _until_eof(
    proc: subprocess.Popen[bytes], within: float = 60, slowly: bool = False
) -> list[dict[str, Any]]:
    """Read the server's stdout to its end (slowly: 8 KB at a time, with pauses); return
    every line, as JSON, in the order written."""
    assert proc.stdout is not None
    out = b""
    deadline = time.monotonic() + within
    while True:
        assert time.monotonic() < deadline, f"stdout not closed in time; read {out[-200:]!r}"
        ready, _, _ = select.select([proc.stdout], [], [], 1)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 8192 if slowly else 1 << 16)
            if not chunk:
                break
            out += chunk
            if slowly:
                time.sleep(0.002)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _exit(proc: subprocess.Popen[bytes]) -> str:
    """Return the server's stderr once it has exited 0 (stdout read to its end already)."""
    assert proc.stderr is not None and proc.stdout is not None
    err = proc.stderr.read().decode(errors="replace")
    assert proc.wait(timeout=30) == 0, err
    proc.stdout.close()
    proc.stderr.close()
    return err


def _listed(reply: dict[str, Any]) -> list[str]:
    return [m["content"] for m in json.loads(_text(reply))["messages"]]


@pytest.mark.parametrize("n", [4, 10])
def test_replies_buffered_when_stdin_closes_all_reach_a_client_that_reads_late(
    tmp_path: Path, n: int
) -> None:
    """n replies of 150 KB asked for at once, then EOF: each is written, in order, before the
    server exits, although none fits the pipe until the client starts reading, slowly."""
    contents = _big_thread(tmp_path / "box")
    proc = raw_serve(tmp_path / "box", "alice")
    answer(proc, 1)
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(b"".join(_line(_call(10 + i, "msg_list", thread="t")) for i in range(n)))
    proc.stdin.close()
    time.sleep(1)  # the client does not read yet (the test holds whatever this lasts)
    replies = _until_eof(proc, slowly=True)
    err = _exit(proc)
    assert [r.get("id") for r in replies] == [10 + i for i in range(n)], err
    assert all(_listed(r) == contents for r in replies)


def test_a_client_that_reads_late_gets_every_reply_once_in_order(tmp_path: Path) -> None:
    contents = _big_thread(tmp_path / "box")
    proc = raw_serve(tmp_path / "box", "alice")
    try:
        answer(proc, 1)
        _send(proc, b"".join(_line(_call(10 + i, "msg_list", thread="t")) for i in range(8)))
        time.sleep(1)  # not reading: the server's replies wait for room in the pipe
        got = [answer(proc, 10 + i) for i in range(8)]  # each in turn, none skipped
        assert all(_listed(r) == contents for r in got)
        _send(proc, _line(_call(20, "thread_list")))
        assert answer(proc, 20)["result"]["isError"] is False
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
    rest = _until_eof(proc)
    _exit(proc)
    assert rest == [], "no reply written twice"


def _waiting(root: Path) -> bool:
    return Mailbox(root).agents.presence("alice").status == "waiting"


def test_a_wait_in_flight_at_eof_is_answered_and_does_not_hold_up_the_exit(
    tmp_path: Path,
) -> None:
    """A wait of ten minutes ends when stdin does; a request beside it is still finished."""
    contents = _big_thread(tmp_path / "box")
    proc = raw_serve(tmp_path / "box", "alice")
    answer(proc, 1)
    assert proc.stdin is not None and proc.stderr is not None
    _send(proc, _line(_call(2, "msg_wait", thread="t", after_seq=5, timeout_s=600)))
    until("the server waiting", lambda: _waiting(tmp_path / "box"))
    _send(proc, _line(_call(3, "msg_list", thread="t")))
    proc.stdin.close()
    replies = {r["id"]: r for r in _until_eof(proc)}  # within 60 s: the wait did not hold it
    _exit(proc)
    assert replies[2]["error"]["message"] == "msg_wait ended: the client closed stdin"
    assert _listed(replies[3]) == contents
    assert Mailbox(tmp_path / "box").agents.presence("alice").status == "offline"


def test_a_request_the_client_cancelled_does_not_hold_up_the_exit(tmp_path: Path) -> None:
    """A cancelled request is never answered (MCP): the end of stdin does not wait for it."""
    Mailbox.init(tmp_path / "box").create_thread("t", creator="x")
    proc = raw_serve(tmp_path / "box", "alice")
    answer(proc, 1)
    assert proc.stdin is not None and proc.stderr is not None
    _send(proc, _line(_call(2, "msg_wait", thread="t", timeout_s=600)))
    until("the server waiting", lambda: _waiting(tmp_path / "box"))
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled",
              "params": {"requestId": 2, "reason": "changed my mind"}}  # fmt: skip
    _send(proc, _line(cancel) + _line(_call(3, "thread_list")))
    proc.stdin.close()
    replies = _until_eof(proc)
    _exit(proc)
    assert [r.get("id") for r in replies] == [3]


# ------------------------------------------------------------- lines that are no message at all


def _deep(kind: str, depth: int) -> tuple[str, str]:
    """Return (tool, arguments as JSON) where one value nests depth levels."""
    if kind == "meta":
        return "msg_post", '{"thread": "t", "content": "x", "meta": ' + (
            '{"a": ' * depth + "1" + "}" * depth + "}"
        )
    value = "[" * depth + "]" * depth
    if kind == "paths":
        return "files_reserve", '{"paths": ' + value + "}"
    return "msg_post", '{"thread": "t", "content": "x", "meta": {"k": 1}, "extra": ' + value + "}"


@pytest.mark.parametrize("depth", [200, 1000, 100_000])
def test_a_request_nested_too_deep_is_answered_with_what_to_change(
    tmp_path: Path, depth: int
) -> None:
    Mailbox.init(tmp_path / "box").create_thread("t", creator="x")
    proc = raw_serve(tmp_path / "box", "alice")
    try:
        answer(proc, 1)
        for i, kind in enumerate(["paths", "extra", "meta"]):
            tool, args = _deep(kind, depth)
            line = (f'{{"jsonrpc": "2.0", "id": {10 + i}, "method": "tools/call", "params": '
                    f'{{"name": "{tool}", "arguments": {args}}}}}\n')  # fmt: skip
            _send(proc, line.encode())
            error = answer(proc, 10 + i)["error"]
            assert error["code"] == -32602
            assert error["message"].startswith(
                f"argument '{kind}' of {tool} is nested {depth} levels deep"
            ), error
            assert error["message"].endswith(
                f"call {tool} again with that value nested less deeply"
            )
            assert ("meta at most 32" in error["message"]) == (kind == "meta")
            _send(proc, _line(_call(20 + i, "msg_post", thread="t", content=f"after {kind}")))
            assert json.loads(_text(answer(proc, 20 + i)))["seq"] == i + 1
    finally:
        _close(proc)
    assert [m.content for m in Mailbox(tmp_path / "box").read("t").messages] == [
        "after paths", "after extra", "after meta"
    ]  # fmt: skip
