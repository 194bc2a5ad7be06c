"""The console page in a real browser: headless Chromium driven through selenium + chromedriver,
against a real `mailslot ui` process, while other processes write to the mailbox.

What is tested here is the page (src/mailslot/console/): that it lists and opens threads,
shows new messages live, posts what the person writes, never runs what a message contains,
follows presence, pages through long threads and works on a phone-sized screen. The server's
own defences (token, Host, Origin) are tested over HTTP elsewhere.

MAILSLOT_SCREENSHOT=1 also saves the desktop screenshot to docs/console.png (the README
shows it); otherwise screenshots go to the test's temp folder only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import agent, call, no_loop_guard, raw_serve, require, until

from mailslot import Mailbox

REPO = Path(__file__).resolve().parent.parent
DIFF = """Added it:

```diff
+    p.add_argument("--version", action="version", version=f"tool {__version__}")
```

`tool --version` now prints `tool 0.1.0`; tests pass."""
HOSTILE = (
    "Look: <script>window.__pwned=1</script> and "
    '<img src=x onerror="window.__pwned=2"> and [x](javascript:window.__pwned=3) and '
    '[<img src=x onerror="window.__pwned=6">](https://a.example/six) and '
    '[seven](https://a.example/"onmouseover="window.__pwned=7)'
)
# The real links in HOSTILE as the page must show them: [href, text], both exactly as written.
HOSTILE_LINKS = [
    ["https://a.example/six", '<img src=x onerror="window.__pwned=6">'],
    ['https://a.example/"onmouseover="window.__pwned=7', "seven"],
]
# Installed before the page loads: records every element ever put in the document (an image
# or a handler that came and went would be missed by a look at the DOM at the end).
RECORDER = """
window.__added = {imgs: 0, handlers: [], scripts: []};
window.__recorder = new MutationObserver(records => {
  for (const r of records) for (const n of r.addedNodes) {
    if (n.nodeType !== 1) continue;
    for (const e of [n, ...n.querySelectorAll('*')]) {
      if (e.tagName === 'IMG') __added.imgs++;
      const src = e.tagName === 'SCRIPT' && e.getAttribute('src');
      if (src !== false && !__added.scripts.includes(src)) __added.scripts.push(src);
      for (const a of e.attributes) if (a.name.startsWith('on')) __added.handlers.push(a.name);
    }
  }
});
__recorder.observe(document, {childList: true, subtree: true});
"""


def _browser() -> tuple[str, str]:
    """Return the paths of chromium and chromedriver, or skip (fail under CI) without them."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        require("needs selenium (pip install '.[test]')")
    chrome = next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None,
    )
    driver = shutil.which("chromedriver")
    if chrome is None or driver is None:
        require(
            "needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver)"
        )
    assert chrome is not None and driver is not None
    return chrome, driver


@pytest.fixture
def ui(root: Path) -> Iterator[str]:
    """Start `mailslot ui --as dave` on a free port; return the URL with the token."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailslot", "ui", "--root", str(root), "--port", "0",
         "--as", "dave"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            found = re.search(r"http://127\.0\.0\.1:\d+/\?token=\S+", line)
            url = found.group(0) if found else None
        assert url, f"mailslot ui printed no URL: {proc.stderr.read() if proc.poll() else ''}"
        yield url
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


@pytest.fixture
def browser() -> Iterator[Any]:
    """Return a headless Chromium (1280x800) under chromedriver."""
    chrome, driver_path = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,800", "--force-device-scale-factor=1",
                 "--disable-extensions", "--no-first-run", "--lang=en-US"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        size(driver, 1280, 800)
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Give this test a machine of its own (keys and pins; ask for it before `ui`, which then
    runs on it): no key made elsewhere in the session signs its posts."""
    config = tmp_path / "here"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    return config


# ---------------------------------------------------------------------------- helpers


def size(driver: Any, width: int, height: int, *, mobile: bool = False) -> None:
    """Make the page's viewport exactly width x height CSS pixels (a window's size would
    include whatever the browser draws around the page)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def one(driver: Any, selector: str, within: float = 30) -> Any:
    """Return the first element matching selector once it exists; fail if it does not."""
    until(f"an element {selector}", lambda: bool(css(driver, selector)), within)
    return css(driver, selector)[0]


def attr(driver: Any, selector: str, name: str) -> str | None:
    """Return an attribute of the first element matching selector (None if there is none),
    read in one step: the page re-renders lists, so a found element may be gone a moment later."""
    got = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e && e.getAttribute(arguments[1])",
        selector, name,
    )  # fmt: skip
    return None if got is None else str(got)


def text(driver: Any, selector: str) -> str:
    """Return the rendered text of the first element matching selector ('' if none)."""
    got = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : ''", selector
    )
    return str(got)


def seqs(driver: Any) -> list[int]:
    got = driver.execute_script(
        "return [...document.querySelectorAll('#transcript [data-test=message]')]"
        ".map(e => Number(e.dataset.seq))"
    )
    return [int(s) for s in got]


def open_console(driver: Any, url: str, thread: str | None = None) -> None:
    """Load the page (the token URL sets the cookie and redirects to /) and wait until it is
    ready: threads listed, the events stream open, and thread (if given) open."""
    driver.get(url)
    until("the page ready", lambda: driver.execute_script("return document.body.dataset.ready"))
    until("the events stream open", lambda: bool(css(driver, "#live[data-status=live]")))
    if thread is not None:
        if not css(driver, f'[data-test=thread-item][data-thread="{thread}"].selected'):
            one(driver, f'[data-test=thread-item][data-thread="{thread}"]').click()
        until(f"thread {thread} open", lambda: driver.execute_script(
            "return document.querySelector('#thread-meta').textContent.startsWith(arguments[0])",
            thread + " ·"))  # fmt: skip


def no_page_errors(driver: Any) -> None:
    """Fail on a script error or a Content-Security-Policy refusal in the browser's console."""
    bad = [
        e["message"]
        for e in driver.get_log("browser")
        if e.get("level") == "SEVERE" or "Content Security Policy" in e.get("message", "")
    ]
    assert not bad, bad


def seed(root: Path) -> Mailbox:
    box = Mailbox(root)
    for name in ("alice", "bob", "carol"):
        box.agents.register(name)
    return box


def message_file(root: Path, thread: str, seq: int) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        (root / "threads" / thread / f"{seq:06d}.json").read_text(encoding="utf-8")
    )
    return doc


# ---------------------------------------------------------------------------- the tests


def test_page_lists_threads_and_opens_one(root: Path, ui: str, browser: Any) -> None:
    with seed(root) as box:
        box.create_thread("Plan the release", creator="alice")
        box.post("plan-the-release", "Who takes the changelog?", sender="alice", to=["bob"])
        box.post("plan-the-release", "I will.", sender="bob", reply_to=1)
        box.create_thread("Fix the flaky test", creator="carol")
        box.post("fix-the-flaky-test", "It fails **one run in ten**.", sender="carol")
        box.set_state("fix-the-flaky-test", "implement", sender="bob", summary="bob takes it")
    open_console(browser, ui)
    assert one(browser, "#person").text == "dave"
    assert str(root.resolve()) in one(browser, "#root").text
    items = browser.execute_script(
        "return [...document.querySelectorAll('[data-test=thread-item]')]"
        ".map(e => [e.dataset.thread, e.dataset.state, e.innerText])"
    )
    # Most recent first, with state, topic, head, participants.
    assert [i[0] for i in items] == ["fix-the-flaky-test", "plan-the-release"]
    assert items[0][1] == "implement"
    assert "Fix the flaky test" in items[0][2] and "#2" in items[0][2]
    assert "carol" in items[0][2] and "bob" in items[0][2]

    open_console(browser, ui, "fix-the-flaky-test")
    assert seqs(browser) == [1, 2]
    body = one(browser, '[data-test=message][data-seq="1"] [data-test=body]')
    assert body.find_element("css selector", "strong").text == "one run in ten"
    event = one(browser, '[data-test=message][data-seq="2"]')
    assert "bob moved the thread to implement" in event.text
    assert "bob takes it" in event.text

    one(browser, '[data-test=thread-item][data-thread="plan-the-release"]').click()
    until("the other thread shown", lambda: seqs(browser) == [1, 2])
    until("its messages", lambda: "I will." in one(browser, "#transcript").text)
    reply = one(browser, '[data-test=message][data-seq="2"]')
    assert "↩ #1" in reply.find_element("css selector", "[data-test=reply-link]").text
    first = one(browser, '[data-test=message][data-seq="1"]')
    assert "alice" in first.find_element("css selector", "[data-test=sender]").text
    assert "bob" in first.find_element("css selector", "[data-test=to]").text

    # Opening a thread marks it read: after a reload no unread badge is left on either.
    browser.refresh()
    open_console(browser, ui)
    until("no unread badges", lambda: not css(browser, "[data-test=unread]"))
    no_page_errors(browser)


def test_new_messages_appear_live(root: Path, ui: str, browser: Any) -> None:
    with seed(root) as box:
        box.create_thread("live", creator="alice")
        box.create_thread("elsewhere", creator="bob")
        box.post("live", "first", sender="alice")
        open_console(browser, ui, "live")
        assert seqs(browser) == [1]

        # How soon is bench's business (python -m bench.console); here: that they come.
        for i in range(3):
            seq = box.post("live", f"live message {i}", sender="bob", to=["alice"])
            until(
                f"message {seq} shown",
                lambda seq=seq: bool(css(browser, f'[data-test=message][data-seq="{seq}"]')),
            )
        assert seqs(browser) == [1, 2, 3, 4]
        assert "live message 2" in one(browser, '[data-test=message][data-seq="4"]').text

        # Another thread: its unread badge goes up, the open transcript stays as it was.
        box.post("elsewhere", "psst", sender="bob")
        box.post("elsewhere", "psst again", sender="carol")
        badge = '[data-test=thread-item][data-thread="elsewhere"] [data-test=unread]'
        until("unread badge 2", lambda: text(browser, badge) == "2")
        assert seqs(browser) == [1, 2, 3, 4]
        # The open thread counts nothing unread: the page marked what it showed as read.
        assert not css(browser, '[data-test=thread-item][data-thread="live"] [data-test=unread]')
    no_page_errors(browser)


def test_composer_post_lands_on_disk(root: Path, ui: str, browser: Any) -> None:
    from selenium.webdriver.support.ui import Select

    with seed(root) as box:
        box.create_thread("compose", creator="alice")
        box.post("compose", "Can someone look at the parser?", sender="alice", type="question")
    open_console(browser, ui, "compose")
    one(browser, '[data-test=message][data-seq="1"] [data-test=reply]').click()
    assert "#1" in one(browser, "#reply-to").text
    assert one(browser, "#to").get_attribute("value") == "alice"  # replying fills in the sender
    text = "On it: the *parser* fails on `\\r\\n`.\n\nA second paragraph."
    one(browser, "#composer textarea").send_keys(text)
    Select(one(browser, "#type")).select_by_value("result")
    Select(one(browser, "#priority")).select_by_value("high")
    one(browser, "#send").click()

    path = root / "threads" / "compose" / "000002.json"
    until("the message file on disk", path.exists)
    doc = message_file(root, "compose", 2)
    assert doc["from"] == "dave"
    assert doc["content"] == text
    assert doc["to"] == ["alice"]
    assert doc["type"] == "result"
    assert doc["priority"] == "high"
    assert doc["reply_to"] == 1
    shown = one(browser, '[data-test=message][data-seq="2"]')
    assert "parser" in shown.find_element("css selector", "em").text
    assert one(browser, "#composer textarea").get_attribute("value") == ""
    assert not one(browser, "#reply-to").is_displayed()

    # A recipient who does not exist: the server's error is shown, nothing is stored.
    one(browser, "#composer textarea").send_keys("hello?")
    one(browser, "#to").send_keys("nobody-here")
    one(browser, "#send").click()
    until("the error shown", lambda: one(browser, "#error").is_displayed())
    assert "nobody-here" in one(browser, "#error-text").text
    assert not (root / "threads" / "compose" / "000003.json").exists()

    # The state form records a `state` message from dave.
    one(browser, "#error-close").click()
    Select(one(browser, "#new-state")).select_by_value("review")
    one(browser, "#state-summary").send_keys("ready for a look")
    one(browser, "#set-state").click()
    until("the state message on disk",
          (root / "threads" / "compose" / "000003.json").exists)  # fmt: skip
    doc = message_file(root, "compose", 3)
    assert (doc["from"], doc["type"], doc["meta"]["state"]) == ("dave", "state", "review")
    until("the event shown", lambda: "dave moved the thread to review" in one(
        browser, '[data-test=message][data-seq="3"]').text)  # fmt: skip
    until("the thread's state updated", lambda: one(browser, "#thread-state").text == "review")


def test_message_content_is_never_run(root: Path, ui: str, browser: Any) -> None:
    with seed(root) as box:
        topic = '<img src=x onerror="window.__pwned=4">topic'
        thread = box.create_thread(topic, creator="alice").id
        box.post(
            thread, HOSTILE, sender="alice", meta={"note": "<script>window.__pwned=5</script>"}
        )
    from selenium.webdriver.common.action_chains import ActionChains

    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORDER})
    open_console(browser, ui, thread)
    message = one(browser, '[data-test=message][data-seq="1"]')
    shown = message.text
    assert "<script>window.__pwned=1</script>" in shown
    assert '<img src=x onerror="window.__pwned=2">' in shown
    links = browser.execute_script(
        "return [...arguments[0].querySelectorAll('[data-test=body] a')]"
        ".map(a => [a.getAttribute('href'), a.textContent])",
        message,
    )
    assert links == HOSTILE_LINKS  # real links, their text and address as written
    ActionChains(browser).move_to_element(
        message.find_element("css selector", "[data-test=body] a[href$='=7']")
    ).perform()  # where a broken-out onmouseover would fire
    assert topic in one(browser, "#thread-topic").text
    assert topic in text(browser, "[data-test=thread-item]")

    # A live arrival and a search hit go through the same paths: try them too.
    with Mailbox(root) as box:
        box.post(thread, HOSTILE, sender="bob")
    one(browser, '[data-test=message][data-seq="2"]')
    search = one(browser, "#search")
    search.send_keys("pwned\n")
    one(browser, "[data-test=search-hit]")
    assert "<script>" in text(browser, "[data-test=search-hit]")
    assert css(browser, "[data-test=search-hit] mark")  # matches marked with DOM calls

    # No image or handler was ever in the page (so none can fire later), and nothing ran.
    state = browser.execute_script(
        """__recorder.takeRecords();  // delivered already; this only makes sure
        return {
          pwned: typeof window.__pwned,
          scripts: [...document.scripts].map(s => s.getAttribute('src')),
          added: __added,
          imgs: document.querySelectorAll('img').length,
          handlers: [...document.querySelectorAll('*')].flatMap(e => [...e.attributes])
            .filter(a => a.name.startsWith('on')).length,
          js: [...document.querySelectorAll('[href],[src],[action]')]
            .map(e => e.getAttribute('href') || e.getAttribute('src') || e.getAttribute('action'))
            .filter(h => /^\\s*javascript:/i.test(h)),
        }"""
    )
    assert state == {
        "pwned": "undefined",
        "scripts": ["/app.js"],
        "imgs": 0,
        "handlers": 0,
        "js": [],
        "added": {"imgs": 0, "handlers": [], "scripts": ["/app.js"]},
    }
    logs = [e for e in browser.get_log("browser") if "pwned" in e.get("message", "")]
    assert not logs, logs


def test_presence_follows_a_serve_process(root: Path, ui: str, browser: Any) -> None:
    seed(root).close()
    open_console(browser, ui)
    bob = '[data-test=agent][data-name="bob"]'
    until("bob listed", lambda: attr(browser, bob, "data-status") == "offline")
    proc = raw_serve(root, "bob")
    try:
        until("bob online", lambda: attr(browser, bob, "data-status") == "online")
        assert "online" in text(browser, bob)
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=15)
        until("bob offline", lambda: attr(browser, bob, "data-status") == "offline")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_long_thread_pages_backwards(root: Path, ui: str, browser: Any) -> None:
    with Mailbox(no_loop_guard(root), fsync=False) as box:  # 300 agents' posts: past its limits
        box.agents.register("alice")
        box.agents.register("bob")
        box.create_thread("long", creator="alice")
        for i in range(1, 300):
            box.post("long", f"message number {i}", sender="alice" if i % 2 else "bob")
        box.post("long", "answering the fifth", sender="bob", reply_to=5)
    open_console(browser, ui, "long")
    assert seqs(browser) == list(range(251, 301))
    at_bottom = browser.execute_script(
        "const t = document.getElementById('transcript');"
        "return t.scrollHeight - t.scrollTop - t.clientHeight < 5"
    )
    assert at_bottom, "a thread opens at its latest message"

    def scroll_top() -> None:
        browser.execute_script("document.getElementById('transcript').scrollTop = 0")

    scroll_top()
    until("the previous page", lambda: seqs(browser)[:1] == [201])
    assert seqs(browser) == list(range(201, 301))
    # What was on screen stays there: the view did not jump to the new top.
    assert browser.execute_script("return document.getElementById('transcript').scrollTop") > 0
    for first in (151, 101, 51, 1):
        scroll_top()
        until(f"the page from {first}", lambda first=first: seqs(browser)[:1] == [first])
    assert seqs(browser) == list(range(1, 301))
    assert not one(browser, "#load-earlier").is_displayed()

    # A reply link to a message not loaded yet loads what it needs and shows it.
    browser.refresh()
    open_console(browser, ui, "long")
    assert seqs(browser)[0] == 251
    one(browser, '[data-test=message][data-seq="300"] [data-test=reply-link]').click()
    until("#5 loaded", lambda: bool(css(browser, '[data-test=message][data-seq="5"]')))
    until("#5 in view", lambda: browser.execute_script(
        "const r = document.querySelector('[data-test=message][data-seq=\"5\"]')"
        ".getBoundingClientRect(), t = document.getElementById('transcript')"
        ".getBoundingClientRect(); return r.top >= t.top - 1 && r.top < t.bottom"))  # fmt: skip


def test_phone_size(root: Path, ui: str, browser: Any, tmp_path: Path) -> None:
    with seed(root) as box:
        box.create_thread("on the go", creator="alice")
        for i in range(12):
            box.post("on-the-go", f"update {i}: " + "some words " * 12, sender="alice")
    size(browser, 390, 844, mobile=True)
    open_console(browser, ui, "on-the-go")
    assert browser.execute_script("return window.innerWidth") == 390
    overflow = browser.execute_script("return document.documentElement.scrollWidth")
    assert overflow <= 390, f"the page is {overflow} px wide on a 390 px screen"
    for part in ("#transcript", "#composer", "#composer textarea", "#send", "#threads"):
        box_ = browser.execute_script(
            "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
            "return [r.left, r.right, r.width, r.height]", part)  # fmt: skip
        left, right, width, height = box_
        assert left >= 0 and right <= 390 and width > 0 and height > 0, (part, box_)
    transcript = one(browser, "#transcript")
    assert transcript.size["width"] >= 330 and transcript.size["height"] >= 300
    assert one(browser, '[data-test=message][data-seq="12"]').is_displayed()

    browser.save_screenshot(str(tmp_path / "console-phone-top.png"))
    textarea = one(browser, "#composer textarea")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", textarea)
    textarea.send_keys("sent from a phone")
    one(browser, "#send").click()
    until("posted", (root / "threads" / "on-the-go" / "000013.json").exists)
    assert message_file(root, "on-the-go", 13)["content"] == "sent from a phone"
    one(browser, '[data-test=message][data-seq="13"]')
    browser.save_screenshot(str(tmp_path / "console-phone.png"))
    no_page_errors(browser)


def test_screenshot(machine: Path, root: Path, ui: str, browser: Any, tmp_path: Path) -> None:
    """A small realistic conversation, as the README shows it: the agents sign, as served
    agents do (their keys on a machine of the test's own)."""
    with seed(root) as box:
        box.agents.register("alice", client="claude-code", model="claude-opus-4",
                           description="plans the work and delegates it")  # fmt: skip
        box.agents.register(
            "bob", client="codex", model="gpt-5-codex", description="writes the code"
        )
        box.agents.register("carol", client="gemini-cli", model="gemini-2.5-pro",
                           description="reviews changes")  # fmt: skip
        for name in ("alice", "bob", "carol"):
            box.trust.own(name)
        box.create_thread("Wire the config loader", creator="bob")
        box.post("wire-the-config-loader", "Config loader is merged; thanks all.", sender="bob")
        t = box.create_thread("Add a --version flag to the CLI", creator="alice").id
        box.post(t, "Hi both. I'll split this up: bob codes, carol reviews.", sender="alice")
        task = box.post(t, "Please add `--version` to the CLI, with a test.", sender="alice",
                        type="task", to=["bob"], priority="high")  # fmt: skip
        box.tasks.claim(t, task, agent="bob")
        box.set_state(t, "implement", sender="bob")
        box.reservations.reserve(["src/tool/cli.py", "tests/test_cli.py"], agent="bob",
                    reason="adding --version")  # fmt: skip
        box.post(t, DIFF, sender="bob", type="result", reply_to=task)
        ask = box.post(t, "Thanks! Carol, over to you.", sender="alice", to=["carol"])
        box.set_state(t, "review", sender="carol")
        box.post(t, "Looks good: ran `tool --version`, checked the test. One nit: mention it "
                    "in the **README**.", sender="carol", reply_to=ask)  # fmt: skip
        box.agents.set_presence("alice", "waiting", waiting_on=t)
        box.agents.set_presence("carol", "online")
        box.agents.set_presence("bob", "online")
    open_console(browser, ui, t)
    assert browser.execute_script("return [innerWidth, innerHeight]") == [1280, 800]
    until("the agents shown", lambda: len(css(browser, "[data-test=agent]")) == 3)
    assert attr(browser, '[data-test=agent][data-name="alice"]', "data-status") == "waiting"
    assert f"waiting on {t}" in text(browser, '[data-test=agent][data-name="alice"]')
    marks = browser.execute_script(
        "return [...document.querySelectorAll('#messages [data-test=signed]')]"
        ".map(e => e.dataset.signed)"
    )
    assert marks and set(marks) == {"valid"}, marks
    until(
        "the fonts loaded",
        lambda: browser.execute_script("return document.fonts.status") == "loaded",
    )
    shot = tmp_path / "console.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000, "the screenshot looks empty"
    one(browser, "#tab-tasks").click()
    until("the task listed", lambda: bool(css(browser, "[data-test=task][data-status=done]")))
    assert "Please add" in one(browser, "[data-test=task]").text
    browser.save_screenshot(str(tmp_path / "console-tasks.png"))
    one(browser, "#tab-reservations").click()
    until("the reservations listed", lambda: len(css(browser, "[data-test=reservation]")) == 2)
    assert "adding --version" in one(browser, "#reservations").text
    no_page_errors(browser)
    if os.environ.get("MAILSLOT_SCREENSHOT") == "1":
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, REPO / "docs" / "console.png")
        print(f"saved {REPO / 'docs' / 'console.png'}")


# ------------------------------------------------------------------ issue 27: items 6 and 14

# Installed once the page is ready: every unread count the list ever shows, per thread (a count
# that was wrong for a moment and corrected by the next load would be missed at the end).
BADGES = """
window.__badges = {};
const note = () => {
  for (const e of document.querySelectorAll('[data-test=thread-item]')) {
    const seen = (__badges[e.dataset.thread] = __badges[e.dataset.thread] || []);
    if (seen[seen.length - 1] !== e.dataset.unread) seen.push(e.dataset.unread);
  }
};
note();
new MutationObserver(note).observe(document.querySelector('#threads'),
                                   {childList: true, subtree: true});
"""


def test_the_bookkeeping_thread_stays_out_of_the_way(root: Path, ui: str, browser: Any) -> None:
    """A reservation newer than every conversation: on a phone the page opens the conversation,
    and file-reservations is listed apart, last, with no unread count."""
    with seed(root) as box:
        box.create_thread("Plan the release", creator="alice")
        box.post("plan-the-release", "who takes the changelog?", sender="alice")
        box.create_thread("Fix the flaky test", creator="carol")
        box.post("fix-the-flaky-test", "it fails one run in ten", sender="carol")
        for i in range(3):
            assert box.reservations.reserve([f"src/part{i}/"], agent="bob").granted
    size(browser, 390, 844, mobile=True)
    open_console(browser, ui)
    until("a thread open", lambda: bool(css(browser, "[data-test=thread-item].selected")))
    assert attr(browser, "[data-test=thread-item].selected", "data-thread") == "fix-the-flaky-test"
    items = browser.execute_script(
        "return [...document.querySelectorAll('#threads > li')].map(e => [e.dataset.test,"
        " e.dataset.thread || '', e.dataset.unread || '', e.dataset.bookkeeping || ''])"
    )
    assert items == [
        ["thread-item", "fix-the-flaky-test", "0", ""],
        ["thread-item", "plan-the-release", "1", ""],
        ["bookkeeping-head", "", "", ""],
        ["thread-item", "file-reservations", "0", "1"],
    ]
    # Still readable: it opens when asked for.
    one(browser, '[data-test=thread-item][data-thread="file-reservations"]').click()
    until("its transcript", lambda: seqs(browser) == [1, 2, 3])
    no_page_errors(browser)


def test_unread_counts_leave_out_the_persons_own(root: Path, ui: str, browser: Any) -> None:
    """dave's own messages (posted from the command, another process) are not unread for dave,
    in the list as loaded or as messages arrive live."""
    with seed(root) as box:
        box.create_thread("elsewhere", creator="alice")
        box.create_thread("open here", creator="alice")
        box.post("elsewhere", "from bob", sender="bob")
        box.post("elsewhere", "from dave, by the command", sender="dave")
        box.post("open-here", "the newest: the page opens this one", sender="alice")
        open_console(browser, ui, "open-here")
        badge = '[data-test=thread-item][data-thread="elsewhere"]'
        until("unread 1", lambda: attr(browser, badge, "data-unread") == "1")
        browser.execute_script(BADGES)
        box.post("elsewhere", "dave again", sender="dave")
        until("head 3 listed", lambda: "#3" in text(browser, badge))
        box.post("elsewhere", "carol", sender="carol")
        until("unread 2", lambda: attr(browser, badge, "data-unread") == "2")
        seen = browser.execute_script("return window.__badges.elsewhere")
        assert seen == ["1", "2"], seen  # never counted dave's own, not even for a moment
    no_page_errors(browser)


def test_search_results_fill_the_panel(root: Path, ui: str, browser: Any) -> None:
    with seed(root) as box:
        box.create_thread("deploys", creator="alice")
        for i in range(30):
            box.post("deploys", f"deploy {i} went out", sender="alice")
    open_console(browser, ui, "deploys")
    # An empty To field reads as what it means, not as names already filled in.
    placeholder = attr(browser, "#to", "placeholder") or ""
    assert "everyone" in placeholder and not re.search(r"\b(alice|bob|carol)\b", placeholder)
    box_ = one(browser, "#search")
    box_.send_keys("deploy")
    box_.submit()
    until("30 hits", lambda: len(css(browser, "[data-test=search-hit]")) == 30)
    panel, results = browser.execute_script(
        "return ['#threads-panel', '#search-results'].map(s =>"
        " { const r = document.querySelector(s).getBoundingClientRect();"
        " return [r.top, r.bottom]; })"
    )
    assert abs(results[1] - panel[1]) <= 2, (panel, results)  # down to the panel's bottom
    one(browser, "#search-close").click()
    until("the thread list back", lambda: bool(css(browser, "#threads [data-test=thread-item]")))
    assert one(browser, "#threads").is_displayed()
    no_page_errors(browser)


def test_the_person_steps_in_as_themselves(root: Path, ui: str, browser: Any) -> None:
    """Reopen bob's task, claim it, give it back, free bob's reservation: every event is dave's
    own, naming bob where it takes something of his, never a message in bob's name."""
    with seed(root) as box:
        box.create_thread("work", creator="alice")
        box.post("work", "Write the changelog", sender="alice", type="task")
        assert box.tasks.claim("work", 1, agent="bob").won
        assert box.reservations.reserve(["src/store/"], agent="bob", reason="splitting it").granted
    open_console(browser, ui, "work")
    one(browser, "[data-test=tab-tasks]").click()
    one(browser, "[data-test=task][data-status=claimed] [data-test=task-reopen]").click()
    one(browser, "[data-test=task][data-status=open] [data-test=task-claim]").click()
    until("dave holds it", lambda: text(browser, "[data-test=task-holder]") == "dave")
    one(browser, "[data-test=task][data-status=claimed] [data-test=task-release]").click()
    one(browser, "[data-test=task][data-status=open]")
    one(browser, "[data-test=tab-reservations]").click()
    one(browser, '[data-test=reservation][data-holder="bob"] [data-test=reservation-free]').click()
    until("no reservations", lambda: not css(browser, "[data-test=reservation]"))
    with Mailbox(root) as box:
        events = [box.get("work", s) for s in range(3, box.head("work") + 1)]
        assert [(m.sender, m.meta["task"]) for m in events] == [
            ("dave", {"event": "release", "holder": "bob", "claim": 2}),
            ("dave", {"event": "claim", "lease_s": 300.0}),
            ("dave", {"event": "release"}),
        ]
        assert "bob" in events[0].to and box.tasks.task("work", 1).status == "open"
        freed = box.get("file-reservations", box.head("file-reservations"))
        assert (freed.sender, freed.to) == ("dave", ["bob"])
        assert freed.meta["release"] == {"paths": ["src/store/**"], "holder": "bob"}
        assert box.reservations.live() == []
    no_page_errors(browser)


# ------------------------------------------------------------------ issue 31: receipts


def receipt(driver: Any, seq: int, name: str) -> list[str] | None:
    """Return [state, text] of name's receipt under message seq as the page shows it (None if
    none), read in one step."""
    got = driver.execute_script(
        "const e = document.querySelector('[data-test=message][data-seq=\"' + arguments[0] +"
        " '\"] [data-test=receipts] [data-agent=\"' + arguments[1] + '\"]');"
        "return e && [e.dataset.state, e.textContent]", seq, name,
    )  # fmt: skip
    return None if got is None else [str(x) for x in got]


def test_receipts_follow_bob_as_he_reads_and_answers(root: Path, ui: str, browser: Any) -> None:
    """The line under alice's question: bob and carol not yet; bob read it once his real
    `mailslot serve` waited (no reload: the page looks again); answered when his reply arrives
    live, on the page by the time the reply is."""
    with seed(root) as box:
        box.create_thread("review", creator="alice")
        box.post("review", "Can you review the patch?", sender="alice", to=["bob", "carol"])
    open_console(browser, ui, "review")
    assert receipt(browser, 1, "bob") == ["stored", "bob not yet"]
    assert receipt(browser, 1, "carol") == ["stored", "carol not yet"]
    assert "bob not yet · carol not yet" in text(browser, "[data-test=receipts]")

    def state(name: str) -> str | None:
        got = receipt(browser, 1, name)
        return got[0] if got else None

    async def bob() -> None:
        async with agent(root, "bob") as b:
            got = await call(b, "msg_wait", timeout_s=10)
            assert [m["seq"] for m in got["messages"]] == [1]
            await anyio.to_thread.run_sync(until, "bob read", lambda: state("bob") == "shown")
            shown = receipt(browser, 1, "bob")
            assert shown and re.fullmatch(r"✓ bob read (just now|\d+ s ago)", shown[1]), shown
            assert state("carol") == "stored"
            await call(b, "msg_post", thread="review", content="LGTM", reply_to=1, to=["alice"])

    anyio.run(bob)
    until("the reply shown", lambda: bool(css(browser, '[data-test=message][data-seq="2"]')))
    assert receipt(browser, 1, "bob") == ["answered", "✓ bob answered"]
    assert state("carol") == "stored"
    assert receipt(browser, 2, "alice") == ["stored", "alice not yet"]
    no_page_errors(browser)


# ------------------------------------------------------------------ issue 33: signatures


def signature(driver: Any, seq: int) -> dict[str, Any] | None:
    """Return how message seq shows its signature (None until it is shown), read in one step:
    its mark (state, text, title, colours), its warning line's text, the message's border."""
    got = driver.execute_script(
        """const m = document.querySelector('[data-test=message][data-seq="' + arguments[0] + '"]');
        if (!m) return null;
        const mark = m.querySelector('[data-test=signed]');
        const warning = m.querySelector('[data-test=signed-warning]');
        const look = mark && getComputedStyle(mark);
        return {state: mark && mark.dataset.signed, text: mark && mark.textContent,
                title: mark && mark.title, color: look && look.color,
                background: look && look.backgroundColor,
                warning: warning && warning.innerText,
                shown: !!warning && warning.getBoundingClientRect().height > 0,
                border: getComputedStyle(m).borderTopColor}""",
        seq,
    )
    return got if isinstance(got, dict) else None


def mailslot_on(root: Path, config: Path, *args: str) -> None:
    """Run the command as a person on the machine whose configuration folder is config."""
    subprocess.run(
        [sys.executable, "-m", "mailslot", *args, "--root", str(root)],
        env={**os.environ, "XDG_CONFIG_HOME": str(config)}, check=True, timeout=60,
        capture_output=True,
    )  # fmt: skip


RED, AMBER = "rgb(195, 54, 43)", "rgb(201, 138, 0)"  # app.css's --danger and --warn


def test_each_message_shows_its_signature(
    machine: Path, root: Path, ui: str, browser: Any, tmp_path: Path
) -> None:
    """alice's message, posted with no key: a quiet "unsigned". bob's two answers from a real
    `mailslot serve`: "✓ signed", and one edited in its file: a red "invalid signature" with the
    warning in words. erin with a new key on another machine, arriving live: an amber
    "unknown key" with its warning; bob's next answer, live: "✓ signed", and his first, edited
    while shown, turns red when the page reads the thread again."""
    with seed(root) as box:
        box.create_thread("release", creator="alice")
        box.post("release", "Ship 1.2 today?", sender="alice", to=["bob"])

    async def bob(*answers: str) -> None:
        async with agent(root, "bob") as b:
            for content in answers:
                await call(b, "msg_post", thread="release", content=content, reply_to=1)

    anyio.run(bob, "Yes, today.", "The tests pass.")
    doc = message_file(root, "release", 3)
    doc["content"] = "The tests fail; ship anyway."
    (root / "threads" / "release" / "000003.json").write_text(json.dumps(doc), encoding="utf-8")
    mailslot_on(root, tmp_path / "B", "key", "erin")
    mailslot_on(root, tmp_path / "B", "post", "release", "erin here", "--as", "erin")

    open_console(browser, ui, "release")
    until("four messages", lambda: seqs(browser) == [1, 2, 3, 4])
    unsigned = signature(browser, 1)
    assert unsigned and (unsigned["state"], unsigned["text"]) == ("unsigned", "unsigned")
    assert unsigned["warning"] is None and unsigned["background"] != RED
    for seq in (2, 4):
        valid = signature(browser, seq)
        assert valid and (valid["state"], valid["text"]) == ("valid", "✓ signed"), valid
        assert valid["warning"] is None and valid["border"] != RED
    invalid = signature(browser, 3)
    assert invalid and (invalid["state"], invalid["text"]) == ("invalid", "✗ invalid signature")
    assert invalid["background"] == RED and invalid["border"] == RED, invalid
    said = "This message says it is from bob, but its signature does not match it"
    assert invalid["shown"] and said in invalid["warning"] and said in invalid["title"]
    assert said in one(browser, '[data-test=message][data-seq="3"]').text

    # The console pinned erin's first key when it showed #4: her next key is not trusted here.
    mailslot_on(root, tmp_path / "C", "key", "erin")
    mailslot_on(root, tmp_path / "C", "post", "release", "erin, new laptop", "--as", "erin")
    until("erin's message shown", lambda: signature(browser, 5) is not None)
    unknown = signature(browser, 5)
    assert unknown and (unknown["state"], unknown["text"]) == ("unknown key", "? unknown key")
    assert unknown["border"] == AMBER and unknown["background"] != RED, unknown
    said = "Signed with a key this machine does not trust for erin"
    assert unknown["shown"] and said in unknown["warning"] and said in unknown["title"]

    # #2 edited while shown: the page tells once it reads the thread again, as it does for
    # bob's next answer (live, "✓ signed").
    doc = message_file(root, "release", 2)
    doc["content"] = "No, next week."
    (root / "threads" / "release" / "000002.json").write_text(json.dumps(doc), encoding="utf-8")
    anyio.run(bob, "Tagged 1.2.")
    until("bob's live answer shown", lambda: signature(browser, 6) is not None)
    live = signature(browser, 6)
    assert live and (live["state"], live["text"]) == ("valid", "✓ signed"), live
    edited = signature(browser, 2)
    assert edited and (edited["state"], edited["border"]) == ("invalid", RED), edited
    assert edited["shown"] and "says it is from bob" in edited["warning"]
    assert signature(browser, 3)["state"] == "invalid"  # type: ignore[index]
    browser.save_screenshot(str(tmp_path / "console-signatures.png"))
    no_page_errors(browser)
