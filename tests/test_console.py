"""`mailslot ui` over HTTP: the token, the Host and Origin checks, the API and its events.

A real `mailslot ui` process and real HTTP requests (urllib); the page itself is tested in a
real browser (test_console_browser.py).
"""

from __future__ import annotations

import html.parser
import http.client
import http.cookiejar
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import agent, call, until

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
        headers = {"Host": f"127.0.0.1:{self.port}" if host is None else host}
        if cookie:
            headers["Cookie"] = f"mailslot_token_{self.port}={self.token}"
        if method == "POST":
            headers["Content-Type"] = content_type
            if origin == "self":
                headers["Origin"] = f"http://127.0.0.1:{self.port}"
            elif origin is not None:
                headers["Origin"] = origin
        data = json.dumps(body).encode() if body is not None else None
        con.request(method, path, body=data, headers=headers)
        r = con.getresponse()
        head = {k.lower(): v for k, v in r.getheaders()}
        # An event stream never ends: its first line is enough to tell it was served.
        streaming = head.get("content-type", "").startswith("text/event-stream")
        out = r.status, head, r.readline() if streaming else r.read()
        con.close()
        return out

    def json(self, method: str, path: str, body: Any = None) -> Any:
        status, _, data = self.request(method, path, body)
        assert status == 200, (status, data)
        return json.loads(data)


def launch(root: Path) -> Iterator[UI]:
    """Yield `mailslot ui --as dave` running over a mailbox with one question in 'release'."""
    box = Mailbox.init(root)
    for name in ("alice", "bob"):
        box.agents.register(name)
    box.create_thread("release", creator="alice")
    box.post("release", "Ship **1.2** today?", sender="alice", to=["bob"], type="question")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailslot", "ui", "--root", str(root), "--as", "dave"],
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


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[UI]:
    yield from launch(tmp_path / "box")


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UI]:
    """One console for the guard's matrix (its refusals change nothing, so it is shared)."""
    yield from launch(tmp_path_factory.mktemp("guard") / "box")


def test_the_printed_address_exchanges_the_token_for_a_cookie(ui: UI) -> None:
    status, headers, _ = ui.request("GET", f"/?token={ui.token}", cookie=False)
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert f"mailslot_token_{ui.port}={ui.token}" in cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    status, headers, body = ui.request("GET", "/")
    assert status == 200 and b"<html" in body.lower()
    assert "script-src 'self'" in headers["content-security-policy"]
    assert ui.request("GET", "/?token=wrong", cookie=False)[0] == 403


# What a page of another origin may send without asking first (a CORS "simple" request),
# including text/plain with a parameter that merely mentions JSON.
SIMPLE_TYPES = [
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "text/plain",
    "text/plain; charset=application/json",
    "text/plain;application/json",
]


@pytest.mark.parametrize("kind", SIMPLE_TYPES)
def test_a_post_that_is_not_json_is_refused(guarded: UI, kind: str) -> None:
    before = files(guarded)
    status, _, body = guarded.request(
        "POST", "/api/threads/release/messages", {"content": "x"}, content_type=kind
    )
    assert status == 415 and b"send JSON" in body
    assert files(guarded) == before


@pytest.mark.parametrize("kind", ["application/json", "application/json; charset=utf-8",
                                  "Application/JSON"])  # fmt: skip
def test_a_json_post_is_taken(guarded: UI, kind: str) -> None:
    status, _, body = guarded.request(
        "POST", "/api/threads/release/messages", {"content": kind}, content_type=kind
    )
    assert status == 200, body


def ui_root(ui: UI) -> Path:
    args = ui.proc.args
    assert isinstance(args, list)
    return Path(args[args.index("--root") + 1])


def files(ui: UI) -> dict[str, bytes]:
    """Return every file of the console's mailbox and its bytes (to see that nothing changed)."""
    root = ui_root(ui)
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- the guard, as a matrix

NOT_LOGGED_IN = b"open the address `mailslot ui` printed"
READS = ["/app.js", "/app.css", "/api/me", "/api/threads", "/api/threads/release", "/api/agents",
         "/api/tasks", "/api/reservations", "/api/search?q=ship", "/api/events"]  # fmt: skip
CHANGES = [
    ("/api/threads", {"topic": "forged"}),
    ("/api/threads/release/messages", {"content": "forged"}),
    ("/api/threads/release/state", {"state": "review"}),
    ("/api/threads/release/read", {"seq": 1}),
]


@pytest.mark.parametrize("path", ["/", *READS])
def test_without_the_token_nothing_is_served(guarded: UI, path: str) -> None:
    status, _, body = guarded.request("GET", path, cookie=False)
    assert status == 403 and NOT_LOGGED_IN in body


@pytest.mark.parametrize("path", READS)
def test_the_token_in_the_address_logs_in_only_on_the_page(guarded: UI, path: str) -> None:
    """`?token=` is exchanged for the cookie at / only: anywhere else it is not a login (an
    address with the token in it ends up in histories, logs and Referer headers)."""
    joiner = "&" if "?" in path else "?"
    status, headers, body = guarded.request("GET", f"{path}{joiner}token={guarded.token}",
                                            cookie=False)  # fmt: skip
    assert (status, "set-cookie" in headers) == (403, False), (status, body)
    assert NOT_LOGGED_IN in body


@pytest.mark.parametrize(("path", "doc"), CHANGES)
def test_the_token_in_the_address_changes_nothing(guarded: UI, path: str, doc: Any) -> None:
    before = files(guarded)
    status, _, body = guarded.request("POST", f"{path}?token={guarded.token}", doc, cookie=False)
    assert status == 403 and NOT_LOGGED_IN in body
    assert files(guarded) == before


# None (no Origin at all), and origins that only begin (or end) like the page's own; a browser
# sends the origin exactly.
FOREIGN_ORIGINS = [
    None,
    "http://127.0.0.1:{port}.evil.example", "http://127.0.0.1:{port}0",
    "http://localhost:{port}.evil.example", "http://127.0.0.1:{port}@evil.example",
    "http://evil.example/http://127.0.0.1:{port}", "https://127.0.0.1:{port}", "http://127.0.0.1",
    "http://evil.example", "null", "",
]  # fmt: skip


@pytest.mark.parametrize("origin", FOREIGN_ORIGINS)
@pytest.mark.parametrize(("path", "doc"), CHANGES)
def test_a_foreign_origin_changes_nothing(
    guarded: UI, origin: str | None, path: str, doc: Any
) -> None:
    before = files(guarded)
    sent = origin if origin is None else origin.format(port=guarded.port)
    status, _, body = guarded.request("POST", path, doc, origin=sent)
    assert status == 403 and b"cross-origin" in body, (status, body)
    assert files(guarded) == before


@pytest.mark.parametrize("origin", ["http://127.0.0.1:{port}", "http://localhost:{port}"])
def test_the_pages_own_origin_may_post(guarded: UI, origin: str) -> None:
    status, _, body = guarded.request("POST", "/api/threads/release/messages", {"content": "ok"},
                                      origin=origin.format(port=guarded.port))  # fmt: skip
    assert status == 200, body
    seq = json.loads(body)["seq"]
    assert Mailbox(ui_root(guarded)).get("release", seq).content == "ok"


FOREIGN_HOSTS = ["evil.example", "evil.example:{port}", "127.0.0.1:{port}.evil.example",
                 "127.0.0.1:{port}0", "localhost.evil.example:{port}", "127.0.0.1", "127.0.0.1:1",
                 ""]  # fmt: skip


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
@pytest.mark.parametrize("path", ["/", "/?token={token}", "/app.js", "/api/threads",
                                  "/api/events", "/api/threads/release/messages"])  # fmt: skip
def test_a_foreign_host_gets_nothing_anywhere(guarded: UI, host: str, path: str) -> None:
    """DNS rebinding: a name that resolves to 127.0.0.1 gets neither the page, nor the cookie
    for the token, nor the API."""
    before = files(guarded)
    post = path.endswith("/messages")
    status, headers, body = guarded.request(
        "POST" if post else "GET",
        path.format(token=guarded.token),
        {"content": "forged"} if post else None,
        host=host.format(port=guarded.port),
        cookie="token" not in path,
    )
    assert (status, "set-cookie" in headers) == (403, False), (status, body)
    assert b"127.0.0.1 or localhost" in body
    assert files(guarded) == before


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}"])
def test_the_page_answers_on_both_loopback_names(guarded: UI, host: str) -> None:
    name = host.format(port=guarded.port)
    status, headers, _ = guarded.request("GET", f"/?token={guarded.token}", host=name, cookie=False)
    cookie = f"mailslot_token_{guarded.port}={guarded.token}"
    assert status == 303 and cookie in headers["set-cookie"]
    status, _, body = guarded.request("GET", "/", host=name)
    assert status == 200 and b"<html" in body.lower()


def test_a_sender_in_the_body_is_ignored(guarded: UI) -> None:
    """The console speaks as its person only: a `from`, `sender` or `creator` posted with a
    message, a state or a new thread is not who it is stored as."""
    forged = {"from": "alice", "sender": "alice", "creator": "alice", "created_by": "alice"}
    seq = guarded.json("POST", "/api/threads/release/messages", forged | {"content": "who?"})["seq"]
    state = guarded.json("POST", "/api/threads/release/state", forged | {"state": "review"})["seq"]
    made = guarded.json("POST", "/api/threads", forged | {"topic": "A new one"})["thread"]
    box = Mailbox(ui_root(guarded))
    assert [box.get("release", s).sender for s in (seq, state)] == ["dave", "dave"]
    assert box.thread(made).created_by == "dave"


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


class _Tags(html.parser.HTMLParser):
    """Every start tag with its attributes, and the text inside each <a>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.links: list[list[str | None]] = []
        self.inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "a":
            self.links.append([dict(attrs).get("href"), ""])
        self.inside = self.inside or tag == "a"

    def handle_endtag(self, tag: str) -> None:
        self.inside = self.inside and tag != "a"

    def handle_data(self, data: str) -> None:
        if self.inside:
            self.links[-1][1] = (self.links[-1][1] or "") + data


@pytest.mark.parametrize(
    ("markdown", "links"),
    [
        ("[<img src=x onerror=alert(1)>](https://a.example)",
         [["https://a.example", "<img src=x onerror=alert(1)>"]]),
        ("[<script>alert(1)</script>](https://a.example/s)",
         [["https://a.example/s", "<script>alert(1)</script>"]]),
        ('[x](https://a.example/"onmouseover="alert&#40;1&#41;)',
         [['https://a.example/"onmouseover="alert&#40;1&#41;', "x"]]),
        ("[x](https://a.example/'><img/src=x/onerror=alert&#40;1&#41;>)",
         [["https://a.example/'><img/src=x/onerror=alert&#40;1&#41;>", "x"]]),
        ('[a "b" &amp; <i>](https://a.example/?q="&amp;)',
         [['https://a.example/?q="&amp;', 'a "b" &amp; <i>']]),
        ("[x](javascript:alert(1))", []),
        ("[x](JaVaScRiPt:alert&#40;1&#41;)", []),
        ("[x](data:text/html,<script>alert&#40;1&#41;</script>)", []),
    ],
)  # fmt: skip
def test_hostile_text_in_a_real_link_is_inert(
    guarded: UI, markdown: str, links: list[list[str]]
) -> None:
    """A link's text and address reach the page as text and as one href: nothing in them
    becomes a tag or an attribute, and only http(s) addresses become links at all."""
    seq = Mailbox(ui_root(guarded)).post("release", markdown, sender="alice")
    [m] = guarded.json("GET", f"/api/threads/release?before={seq + 1}&limit=1")["messages"]
    parsed = _Tags()
    parsed.feed(m["html"])
    assert parsed.links == links, m["html"]
    assert {t for t, _ in parsed.tags} <= {"p", "a"}, m["html"]
    assert all(set(attrs) <= {"href"} for _, attrs in parsed.tags), m["html"]


def test_events_tell_of_messages_from_other_processes(ui: UI) -> None:
    # Each read waits at most 30 s (the socket's timeout): the message must come by then.
    con = http.client.HTTPConnection("127.0.0.1", ui.port, timeout=30)
    cookie = f"mailslot_token_{ui.port}={ui.token}"
    con.request("GET", "/api/events", headers={"Host": f"127.0.0.1:{ui.port}", "Cookie": cookie})
    r = con.getresponse()
    assert r.status == 200 and r.getheader("content-type", "").startswith("text/event-stream")
    assert r.readline().startswith(b":")  # the stream is open
    subprocess.run(
        [sys.executable, "-m", "mailslot", "post", "release", "hello from a script",
         "--root", str(ui_root(ui)), "--as", "bob"], check=True, timeout=60,
    )  # fmt: skip
    event = None
    for line in iter(r.readline, b""):
        if line.strip() == b"event: message":
            event = json.loads(r.readline().decode().removeprefix("data: "))
            break
    con.close()
    assert event == {"thread": "release", "seq": 2, "from": "bob"}  # the page skips its own


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


def test_two_consoles_in_one_browser_keep_their_logins(tmp_path: Path) -> None:
    """Cookies are not kept apart by port: a second console on 127.0.0.1 (another mailbox, or
    the demo's) must not log the first one out by setting a cookie of the same name."""
    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    consoles = []
    try:
        for name in ("one", "two"):
            Mailbox.init(tmp_path / name)
            consoles.append(start_ui(["ui", "--root", str(tmp_path / name), "--as", name])[1])
        for ui in consoles:  # log in to each, as following each printed address would
            with browser.open(f"http://127.0.0.1:{ui.port}/?token={ui.token}", timeout=30) as r:
                assert r.status == 200 and r.url == f"http://127.0.0.1:{ui.port}/"
        for ui, name in zip(consoles, ("one", "two"), strict=True):
            with browser.open(f"http://127.0.0.1:{ui.port}/api/me", timeout=30) as r:
                assert json.loads(r.read())["person"] == name
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{e.url}: {e.code} {e.read().decode()}") from None
    finally:
        for ui in consoles:
            ui.proc.terminate()
            ui.proc.communicate(timeout=10)


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


def test_a_large_mailbox_lists_whole_and_pages(tmp_path: Path) -> None:
    """1,000 threads and a thread of 20,000 messages: the list comes whole, the long thread
    opens on its latest page and pages back (how long that takes is bench's business)."""
    root = tmp_path / "box"
    box = Mailbox.init(root, fsync=False)
    for i in range(1000):
        box.create_thread(f"topic {i}", creator="alice")
    box.create_thread("long", creator="alice")
    for i in range(20_000):
        box.post("long", f"message {i + 1}", sender="alice")
    proc, ui = start_ui(["ui", "--root", str(root), "--as", "dave"])
    try:
        threads = ui.json("GET", "/api/threads")["threads"]
        assert len(threads) == 1001 and threads[0]["thread"] == "long"
        page = ui.json("GET", "/api/threads/long")
        assert [m["seq"] for m in page["messages"]] == list(range(19_951, 20_001))
        assert page["has_before"] is True
        older = ui.json("GET", "/api/threads/long?before=19951")
        assert [m["seq"] for m in older["messages"]] == list(range(19_901, 19_951))
        first = ui.json("GET", "/api/threads/long?before=51")
        assert [m["seq"] for m in first["messages"]] == list(range(1, 51))
        assert first["has_before"] is False
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_the_command_takes_a_task_back_as_the_person(tmp_path: Path) -> None:
    """`mailslot claim T SEQ --release --holder bob` opens bob's task again as dave's own act."""
    root = tmp_path / "box"
    with Mailbox.init(root) as box:
        box.create_thread("work", creator="alice")
        box.post("work", "Write the changelog", sender="alice", type="task")
        assert box.tasks.claim("work", 1, agent="bob").won

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "mailslot", *args, "--root", str(root), "--as", "dave"]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    mine = run("claim", "work", "1", "--release")
    assert mine.returncode == 1 and "you do not hold task 1" in mine.stderr
    alone = run("claim", "work", "1", "--holder", "bob")  # a claim, not a take-back: refused
    assert alone.returncode == 2 and "--holder goes with --release" in alone.stderr
    took = run("claim", "work", "1", "--release", "--holder", "bob")
    assert took.returncode == 0 and "took task 1 back from bob as dave" in took.stdout
    with Mailbox(root) as box:
        event = box.get("work", 3)
        assert (event.sender, event.meta["task"]) == (
            "dave", {"event": "release", "holder": "bob", "claim": 2}
        )  # fmt: skip
        assert list(event.to) == ["bob"], "the holder is told"
        assert box.head("work") == 3, "nothing but the take-back was stored"
        assert box.tasks.task("work", 1).status == "open"
    again = run("claim", "work", "1", "--release", "--holder", "bob")
    assert again.returncode == 1 and "bob does not hold task 1" in again.stderr


# ---------------------------------------------------------------- receipts (issue 31)


def receipts(ui: UI, seq: int, thread: str = "release") -> dict[str, dict[str, Any]]:
    """Return recipient -> receipt of message seq, as the thread's JSON carries them."""
    page = ui.json("GET", f"/api/threads/{thread}")
    [m] = [m for m in page["messages"] if m["seq"] == seq]
    return {r["agent"]: r for r in m.get("receipts", [])}


def test_the_thread_carries_receipts_that_move_as_bob_reads_and_answers(ui: UI) -> None:
    """alice's question to bob: stored, shown once a real `mailslot serve` for bob waited
    (when, as an ISO time), answered once he replied; messages without recipients have none."""
    root = ui_root(ui)
    assert receipts(ui, 1) == {"bob": {"agent": "bob", "state": "stored", "at": None,
                                       "text": "stored"}}  # fmt: skip
    seen: list[dict[str, Any]] = []

    def shown() -> bool:
        seen.append(receipts(ui, 1)["bob"])
        return seen[-1]["state"] == "shown"

    async def bob() -> None:
        async with agent(root, "bob") as b:
            got = await call(b, "msg_wait", timeout_s=10)
            assert [m["seq"] for m in got["messages"]] == [1]
            await anyio.to_thread.run_sync(until, "bob shown it", shown)
            await call(b, "msg_post", thread="release", content="Yes.", reply_to=1, to=["alice"])

    before = time.time()
    anyio.run(bob)
    at = datetime.fromisoformat(seen[-1]["at"].replace("Z", "+00:00"))
    assert at.tzinfo == UTC and before - 5 <= at.timestamp() <= time.time() + 5, seen[-1]
    assert re.fullmatch(r"shown (just now|\d+ s ago)", seen[-1]["text"]), seen[-1]
    assert receipts(ui, 1)["bob"] == {"agent": "bob", "state": "answered", "at": None,
                                      "text": "answered"}  # fmt: skip
    assert receipts(ui, 2) == {"alice": {"agent": "alice", "state": "stored", "at": None,
                                         "text": "stored"}}  # fmt: skip
    with Mailbox(root) as box:
        box.post("release", "a note", sender="alice")
    assert "receipts" not in ui.json("GET", "/api/threads/release")["messages"][2]


def test_the_persons_read_in_the_console_is_a_receipt(ui: UI) -> None:
    """dave reads in the console: alice's message to him is "shown" to dave; her question to
    bob stays stored for bob (dave's read is not bob's), and so does one to dave past the read."""
    ui.json("POST", "/api/threads/release/messages", {"content": "I am here."})
    with Mailbox(ui_root(ui)) as box:
        to_dave = box.post("release", "dave, a look?", sender="alice", to=["dave", "bob"])
        later = box.post("release", "and this one", sender="alice", to=["dave"])
    assert receipts(ui, to_dave)["dave"]["state"] == "stored"
    assert ui.json("POST", "/api/threads/release/read", {"seq": to_dave}) == {"ok": True}
    got = receipts(ui, to_dave)
    assert got["dave"]["state"] == "shown" and got["dave"]["at"] is not None, got
    assert got["bob"]["state"] == "stored"
    assert receipts(ui, 1)["bob"]["state"] == "stored"
    assert receipts(ui, later)["dave"]["state"] == "stored", "shown past what was read"
    assert ui.json("POST", "/api/threads/release/read", {"seq": later}) == {"ok": True}
    assert receipts(ui, later)["dave"]["state"] == "shown"


# ---------------------------------------------------------------- signatures (issue 33)


def mailslot(root: Path, config: Path, *args: str) -> None:
    """Run the command on the machine whose configuration folder is config."""
    subprocess.run(
        [sys.executable, "-m", "mailslot", *args, "--root", str(root)],
        env={**os.environ, "XDG_CONFIG_HOME": str(config)}, check=True, timeout=60,
        capture_output=True,
    )  # fmt: skip


def signatures(ui: UI) -> dict[int, tuple[str, str | None]]:
    """Return seq -> (signed, warning) of each message of 'release' as the console's JSON has it."""
    page = ui.json("GET", "/api/threads/release")
    return {m["seq"]: (m["signed"], m.get("warning")) for m in page["messages"]}


def test_the_thread_carries_each_messages_signature(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alice's question, posted with no key here: unsigned. bob's answer from a real `mailslot
    serve` (his key made when he took his name): valid, until its file is edited: invalid, with
    the warning. erin signs on machine B (pinned here at first sight), then with a new key on
    machine C: unknown key, with its warning."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "here"))  # the console's machine
    root = tmp_path / "box"
    running = launch(root)
    ui = next(running)
    try:
        assert signatures(ui) == {1: ("unsigned", None)}

        async def bob() -> None:
            async with agent(root, "bob") as b:
                await call(b, "msg_post", thread="release", content="Yes, today.", reply_to=1)

        anyio.run(bob)
        assert signatures(ui) == {1: ("unsigned", None), 2: ("valid", None)}

        path = root / "threads" / "release" / "000002.json"
        doc = json.loads(path.read_text(encoding="utf-8"))
        doc["content"] = "No, not today."
        path.write_text(json.dumps(doc), encoding="utf-8")
        state, warning = signatures(ui)[2]
        assert state == "invalid" and warning is not None
        assert "says it is from bob, but its signature does not match" in warning

        mailslot(root, tmp_path / "B", "key", "erin")
        mailslot(root, tmp_path / "B", "post", "release", "erin here", "--as", "erin")
        assert signatures(ui)[3] == ("valid", None)  # the console pins erin's first key
        mailslot(root, tmp_path / "C", "key", "erin")
        mailslot(root, tmp_path / "C", "post", "release", "erin again", "--as", "erin")
        state, warning = signatures(ui)[4]
        assert state == "unknown key" and warning is not None
        assert "a key this machine does not trust for erin" in warning
        assert signatures(ui)[3] == ("valid", None)
    finally:
        running.close()
