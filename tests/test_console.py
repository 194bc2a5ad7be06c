"""`mailslot ui` over HTTP: the token, the Host and Origin checks, the API and its events.

A real `mailslot ui` process and real HTTP requests (urllib); the page itself is tested in a
real browser (test_console_browser.py).
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailslot import Mailbox


class UI:
    """A running `mailslot ui` and a way to talk to it."""

    def __init__(self, proc: subprocess.Popen[str], port: int, token: str) -> None:
        self.proc = proc
        self.port = port
        self.token = token

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        host: str | None = None,
        origin: str | None = "self",
        cookie: bool = True,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, str], bytes]:
        con = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Host": host or f"127.0.0.1:{self.port}"}
        if cookie:
            headers["Cookie"] = f"mailslot_token={self.token}"
        if method == "POST":
            headers["Content-Type"] = content_type
            if origin == "self":
                headers["Origin"] = f"http://127.0.0.1:{self.port}"
            elif origin is not None:
                headers["Origin"] = origin
        data = json.dumps(body).encode() if body is not None else None
        con.request(method, path, body=data, headers=headers)
        r = con.getresponse()
        out = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        con.close()
        return out

    def json(self, method: str, path: str, body: Any = None) -> Any:
        status, _, data = self.request(method, path, body)
        assert status == 200, (status, data)
        return json.loads(data)


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[UI]:
    box = Mailbox.init(tmp_path / "box")
    for name in ("alice", "bob"):
        box.register_agent(name)
    box.create_thread("release", creator="alice")
    box.post("release", "Ship **1.2** today?", sender="alice", to=["bob"], type="question")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailslot", "ui", "--root", str(tmp_path / "box"), "--as", "dave"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r"http://127\.0\.0\.1:(\d+)/\?token=(\S+)", line)
    assert found, line
    try:
        yield UI(proc, int(found.group(1)), found.group(2))
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_the_printed_address_exchanges_the_token_for_a_cookie(ui: UI) -> None:
    status, headers, _ = ui.request("GET", f"/?token={ui.token}", cookie=False)
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert f"mailslot_token={ui.token}" in cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    status, headers, body = ui.request("GET", "/")
    assert status == 200 and b"<html" in body.lower()
    assert "script-src 'self'" in headers["content-security-policy"]
    assert ui.request("GET", "/?token=wrong", cookie=False)[0] == 403


@pytest.mark.parametrize("path", ["/", "/app.js", "/api/threads", "/api/events", "/api/me"])
def test_without_the_token_nothing_is_served(ui: UI, path: str) -> None:
    status, _, body = ui.request("GET", path, cookie=False)
    assert status == 403 and b"mailslot ui" in body


@pytest.mark.parametrize("host", ["evil.example:80", "attacker.test", "127.0.0.1:1"])
def test_a_foreign_host_is_refused(ui: UI, host: str) -> None:
    """DNS rebinding: a page on another name that resolves to 127.0.0.1 gets nothing."""
    status, _, body = ui.request("GET", "/api/threads", host=host)
    assert status == 403 and b"127.0.0.1 or localhost" in body


@pytest.mark.parametrize("origin", [None, "http://evil.example", "null"])
def test_a_cross_origin_post_is_refused_and_stores_nothing(ui: UI, origin: str | None) -> None:
    status, _, _ = ui.request(
        "POST", "/api/threads/release/messages", {"content": "forged"}, origin=origin
    )
    assert status == 403
    assert [m.content for m in Mailbox(ui_root(ui)).messages("release")] == ["Ship **1.2** today?"]


def test_a_form_post_is_refused(ui: UI) -> None:
    status, _, _ = ui.request(
        "POST", "/api/threads/release/messages", {"content": "x"},
        content_type="application/x-www-form-urlencoded",
    )  # fmt: skip
    assert status == 415


def ui_root(ui: UI) -> Path:
    args = ui.proc.args
    assert isinstance(args, list)
    return Path(args[args.index("--root") + 1])


def test_the_api_reads_and_posts_as_the_person(ui: UI) -> None:
    assert ui.json("GET", "/api/me")["person"] == "dave"
    [t] = ui.json("GET", "/api/threads")["threads"]
    assert (t["thread"], t["head"], t["unread"]) == ("release", 1, 1)
    page = ui.json("GET", "/api/threads/release")
    [m] = page["messages"]
    assert m["html"] == "<p>Ship <strong>1.2</strong> today?</p>" and m["type"] == "question"
    assert ui.json("POST", "/api/threads/release/read", {"seq": 1}) == {"ok": True}
    assert ui.json("GET", "/api/threads")["threads"][0]["unread"] == 0
    reply = {"content": "Yes, after the tests.", "to": ["alice"], "reply_to": 1}
    seq = ui.json("POST", "/api/threads/release/messages", reply)["seq"]
    stored = Mailbox(ui_root(ui)).get("release", seq)
    assert (stored.sender, stored.to, stored.reply_to) == ("dave", ["alice"], 1)
    state = ui.json("POST", "/api/threads/release/state", {"state": "review", "summary": "ok"})
    assert Mailbox(ui_root(ui)).thread("release").state == "review" and state["seq"] == seq + 1
    status, _, body = ui.request("POST", "/api/threads/release/messages", {"content": ""})
    assert status == 400 and "content is empty" in json.loads(body)["error"]
    status, _, body = ui.request("GET", "/api/threads/nope")
    assert status == 404 and "no thread 'nope'" in json.loads(body)["error"]
    status, _, body = ui.request("GET", "/api/search?q=%22unbalanced")
    assert status == 400 and "try:" in json.loads(body)["error"]
    hits = ui.json("GET", "/api/search?q=tests")["hits"]
    assert [(h["seq"], h["from"]) for h in hits] == [(seq, "dave")]


def test_untrusted_text_is_rendered_escaped(ui: UI) -> None:
    hostile = "<script>alert(1)</script> <img src=x onerror=alert(2)> [x](javascript:alert(3))"
    Mailbox(ui_root(ui)).post("release", hostile, sender="alice")
    html = ui.json("GET", "/api/threads/release")["messages"][-1]["html"]
    assert "<script" not in html and "<img" not in html and "href" not in html
    assert "&lt;script&gt;" in html and "[x](javascript:alert(3))" in html  # text, no link


def test_events_tell_of_messages_from_other_processes(ui: UI) -> None:
    con = http.client.HTTPConnection("127.0.0.1", ui.port, timeout=10)
    con.request("GET", "/api/events", headers={
        "Host": f"127.0.0.1:{ui.port}", "Cookie": f"mailslot_token={ui.token}"})  # fmt: skip
    r = con.getresponse()
    assert r.status == 200 and r.getheader("content-type", "").startswith("text/event-stream")
    assert r.readline().startswith(b":")  # the stream is open
    posted = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "mailslot", "post", "release", "hello from a script",
         "--root", str(ui_root(ui)), "--as", "bob"], check=True, timeout=60,
    )  # fmt: skip
    event = None
    while time.monotonic() - posted < 10:
        line = r.readline().decode().strip()
        if line == "event: message":
            event = json.loads(r.readline().decode().removeprefix("data: "))
            break
    con.close()
    assert event == {"thread": "release", "seq": 2}


def start_ui(args: list[str]) -> tuple[subprocess.Popen[str], UI]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailslot", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/\?token=(\S+)", line)
        if found:
            return proc, UI(proc, int(found.group(1)), found.group(2))
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"no address printed: {proc.communicate()}")


def test_the_demo_leaves_its_conversation_open_in_the_console(tmp_path: Path) -> None:
    proc, ui = start_ui(["demo", "--root", str(tmp_path / "demo" / ".mailslot"), "--ui"])
    try:
        [t] = ui.json("GET", "/api/threads")["threads"]
        assert t["state"] == "closed" and set(t["participants"]) >= {"planner", "coder"}
        page = ui.json("GET", f"/api/threads/{t['thread']}")
        assert len(page["messages"]) == t["head"] >= 5
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_a_large_mailbox_opens_at_once(tmp_path: Path) -> None:
    """1,000 threads and a thread of 20,000 messages: the list comes whole, the long thread
    opens on its latest page and pages back."""
    root = tmp_path / "box"
    box = Mailbox.init(root, fsync=False)
    for i in range(1000):
        box.create_thread(f"topic {i}", creator="alice")
    box.create_thread("long", creator="alice")
    for i in range(20_000):
        box.post("long", f"message {i + 1}", sender="alice")
    proc, ui = start_ui(["ui", "--root", str(root), "--as", "dave"])
    try:
        begun = time.monotonic()
        threads = ui.json("GET", "/api/threads")["threads"]
        listed = time.monotonic() - begun
        assert len(threads) == 1001 and threads[0]["thread"] == "long"
        begun = time.monotonic()
        page = ui.json("GET", "/api/threads/long")
        opened = time.monotonic() - begun
        assert [m["seq"] for m in page["messages"]] == list(range(19_951, 20_001))
        assert page["has_before"] is True
        older = ui.json("GET", "/api/threads/long?before=19951")
        assert [m["seq"] for m in older["messages"]] == list(range(19_901, 19_951))
        first = ui.json("GET", "/api/threads/long?before=51")
        assert [m["seq"] for m in first["messages"]] == list(range(1, 51))
        assert first["has_before"] is False
        print(f"\nlist of 1,001 threads: {listed:.2f} s; latest page of 20,000: {opened:.3f} s")
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
