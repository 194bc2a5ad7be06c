"""`mailslot hook EVENT`: what Claude Code, Codex CLI and Gemini CLI hooks print, from the
inputs those clients send (tests/hook_inputs/), on a real mailbox, in-process and as a real
`python -m mailslot hook` process."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import agent, call, no_loop_guard, until_async

from mailslot import Mailbox
from mailslot.clients.hooks import CLIENTS, MAX_TEXT, run
from mailslot.clients.launch import CLIENT_EVENTS, hook_argv, hook_commands
from mailslot.tools import Session

INPUTS = Path(__file__).parent / "hook_inputs"
CONTEXT_EVENTS = [(c, e) for c in CLIENTS for e in ("session-start", "prompt")]


def recorded(client: str, event: str, cwd: Path | None = None) -> str:
    """Return the recorded input of client's event, with its cwd made cwd if given."""
    text = (INPUTS / f"{client}.{event}.json").read_text(encoding="utf-8")
    if cwd is None:
        return text
    doc = json.loads(text)
    doc["cwd"] = str(cwd)
    return json.dumps(doc)


def hook(
    root: Path | None,
    event: str,
    client: str = "claude-code",
    *,
    agent: str | None = "bob",
    stdin: str | None = None,
    payload: str | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run the hook in-process with the client's recorded input; return its stdout."""
    if stdin is None:
        stdin = "" if event == "notify" else recorded(client, event)
    out, code = run(event, client, agent, stdin, payload, root, env=env or {})
    assert code == 0
    return out


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSLOT_")}
    return env | extra


def command(
    *argv: str, stdin: str = "", env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m mailslot hook ...` as a client does, with stdin piped."""
    return subprocess.run(
        [sys.executable, "-m", "mailslot", "hook", *argv],
        input=stdin, capture_output=True, text=True, timeout=60,
        env=env if env is not None else clean_env(), cwd=cwd,
    )  # fmt: skip


def context(out: str, name: str) -> str:
    """Return the additionalContext of a SessionStart/UserPromptSubmit/BeforeAgent output,
    checking the output is exactly that shape."""
    doc = json.loads(out)
    assert list(doc) == ["hookSpecificOutput"]
    assert set(doc["hookSpecificOutput"]) == {"hookEventName", "additionalContext"}
    assert doc["hookSpecificOutput"]["hookEventName"] == name
    text = doc["hookSpecificOutput"]["additionalContext"]
    assert isinstance(text, str)
    assert len(text) < 10_000
    return text


def stop_reason(out: str, client: str) -> str:
    doc = json.loads(out)
    assert set(doc) == {"decision", "reason"}
    assert doc["decision"] == ("deny" if client == "gemini" else "block")
    assert isinstance(doc["reason"], str) and doc["reason"]
    return str(doc["reason"])


def post(root: Path, text: str, *, to: str | None = "bob", **kw: Any) -> int:
    with Mailbox(root) as b:
        return b.publish("t", text, sender="alice", to=[to] if to else [], **kw).seq


@pytest.fixture
def mailbox(box: Mailbox) -> Path:
    """Return the root of a mailbox with thread t, agents alice and bob."""
    return box.root


# ---------------------------------------------------------------------------- recorded inputs


def test_recorded_inputs_are_what_the_clients_send() -> None:
    for client, events in CLIENT_EVENTS.items():
        for ours, theirs in events.items():
            doc = json.loads((INPUTS / f"{client}.{ours}.json").read_text(encoding="utf-8"))
            if ours == "notify":
                assert doc["type"] == "agent-turn-complete"
            else:
                assert doc["hook_event_name"] == theirs


@pytest.mark.parametrize(("client", "event"), CONTEXT_EVENTS)
def test_context_events_report_news_once_then_only_what_is_new(
    mailbox: Path, client: str, event: str
) -> None:
    name = CLIENT_EVENTS[client][event]
    post(mailbox, "please review <the> parser", type="task")
    post(mailbox, "the build is green -> ship it")
    post(mailbox, "not for bob", to="alice")

    text = context(hook(mailbox, event, client), name)
    lines = text.splitlines()
    assert lines[0] == "mailslot: 2 new for you (agent bob):"
    assert lines[1].startswith("[t #1] alice (task): please review")
    assert lines[1].endswith("\u2192 task_claim(thread='t', seq=1)")
    assert lines[2].startswith("[t #2] alice (message): the build is green")
    assert lines[2].endswith("\u2192 msg_list(thread='t', after_seq=1)")
    assert "not for bob" not in text
    assert lines[-1].startswith("Read them with msg_wait() or msg_list(")
    if client == "gemini":  # it HTML-escapes < and > in additionalContext
        assert "<" not in text and ">" not in text
    else:
        assert "<the>" in text
    assert " -> task_claim" not in text

    assert hook(mailbox, event, client) == ""  # nothing new: nothing at all

    post(mailbox, "one more thing")
    again = context(hook(mailbox, event, client), name).splitlines()
    assert again[0] == "mailslot: 1 new for you (agent bob):"
    assert again[1].startswith("[t #4] alice (message): one more thing")
    assert len(again) == 3


def test_a_task_given_back_or_failed_is_news_again(mailbox: Path) -> None:
    """Released by its holder, or failed by it: the task is open again, and an agent taking
    part in its thread hears of it once more (once each time), as its inbox wait would say."""
    _join(mailbox)
    seq = post(mailbox, "triage the crash report", to=None, type="task")
    first = context(hook(mailbox, "prompt"), "UserPromptSubmit")
    assert f"[t #{seq}] alice (task): triage" in first
    assert hook(mailbox, "prompt") == ""
    with Mailbox(mailbox) as b:
        b.tasks.claim("t", seq, agent="carol")
        assert hook(mailbox, "prompt") == "", "held by carol: nothing to take"
        b.tasks.release("t", seq, agent="carol")
    again = context(hook(mailbox, "prompt"), "UserPromptSubmit").splitlines()
    assert again[1].startswith(f"[t #{seq}] alice (task): triage")
    assert again[1].endswith(f"task_claim(thread='t', seq={seq})")
    assert hook(mailbox, "prompt") == "", "reported once"
    with Mailbox(mailbox) as b:
        b.tasks.claim("t", seq, agent="carol")
        b.publish("t", "it does not reproduce", sender="carol", type="error", reply_to=seq)
    failed = context(hook(mailbox, "prompt"), "UserPromptSubmit")
    assert f"[t #{seq}] alice (task): triage" in failed
    assert hook(mailbox, "prompt") == ""


def _join(root: Path, agent: str = "bob") -> None:
    with Mailbox(root) as b:
        session = Session(b, agent=agent)
        session.msg_list("t")  # the agent takes part in t
        session.close()


def test_a_task_released_before_the_look_is_reported_once(mailbox: Path) -> None:
    _join(mailbox)
    seq = post(mailbox, "please do X", to=None, type="task")
    with Mailbox(mailbox) as b:
        b.tasks.claim("t", seq, agent="carol")
        b.tasks.release("t", seq, agent="carol")
    first = context(hook(mailbox, "prompt"), "UserPromptSubmit")
    assert first.count(f"[t #{seq}]") == 1
    assert hook(mailbox, "prompt") == "", "its release was part of what was reported"


def test_a_reoffered_task_shown_first_never_hides_what_is_left_for_later(mailbox: Path) -> None:
    """A hook shows what fits and marks it reported; a task offered again late in the thread,
    shown first, must not mark the messages left out before that offer as reported."""
    _join(mailbox)
    no_loop_guard(mailbox)  # 80 messages from one agent to another: past the loop guard's limit
    seq = post(mailbox, "task for anyone", to=None, type="task")
    assert hook(mailbox, "prompt")
    with Mailbox(mailbox) as b:
        b.tasks.claim("t", seq, agent="carol")
    sent = [post(mailbox, f"msg {i} " + "words " * 60) for i in range(80)]
    with Mailbox(mailbox) as b:
        b.tasks.release("t", seq, agent="carol")
    told: list[str] = []
    for _ in range(20):
        out = hook(mailbox, "prompt")
        if not out:
            break
        told += context(out, "UserPromptSubmit").splitlines()
    missing = [s for s in sent if not any(line.startswith(f"[t #{s}] ") for line in told)]
    assert missing == [], f"never reported: {missing}"
    assert any(line.startswith(f"[t #{seq}] ") for line in told)


def test_session_start_and_prompt_share_what_was_reported(mailbox: Path) -> None:
    post(mailbox, "hello")
    assert hook(mailbox, "session-start")
    assert hook(mailbox, "prompt") == ""
    assert hook(mailbox, "prompt", "gemini") == ""  # per agent, not per client


def test_news_the_agent_got_from_msg_wait_is_not_reported(mailbox: Path) -> None:
    post(mailbox, "first")
    post(mailbox, "second")

    async def wait() -> list[int]:
        with Mailbox(mailbox) as box:
            s = Session(box, agent="bob")
            try:
                got = await s.msg_wait(timeout_s=0.2)
            finally:
                s.close()
        return [m["seq"] for m in got["messages"]]

    assert anyio.run(wait) == [1, 2]
    assert hook(mailbox, "prompt") == ""
    post(mailbox, "third")
    text = context(hook(mailbox, "prompt"), "UserPromptSubmit")
    assert "third" in text and "first" not in text and "second" not in text


def test_a_long_list_is_cut_and_the_rest_comes_next_time(mailbox: Path) -> None:
    no_loop_guard(mailbox)  # 60 messages from one agent to another: past the loop guard's limit
    for i in range(60):
        post(mailbox, f"message {i:02d} " + "x" * 300)
    post(mailbox, "urgent at the end", priority="urgent")
    seen: list[int] = []
    for _ in range(10):
        out = hook(mailbox, "prompt")
        if not out:
            break
        text = context(out, "UserPromptSubmit")
        assert len(text) <= MAX_TEXT
        lines = text.splitlines()
        items = [ln for ln in lines if ln.startswith("[t #")]
        seen += [int(ln.split("#")[1].split("]")[0]) for ln in items]
        if len(lines) - 2 > len(items):
            assert lines[-2].startswith("... and ") and lines[-2].endswith(
                " more (not listed here)"
            )
    else:
        pytest.fail("the hook kept reporting")
    assert set(seen) == set(range(1, 62))  # nothing lost; the urgent one may come twice
    assert seen[0] == 61  # urgent first
    assert len(seen) <= 62


def test_tasks_for_anyone_in_a_thread_joined_but_never_read_are_news(mailbox: Path) -> None:
    """thread_create joins a thread: its tasks for anyone are news to the agent (its inbox
    wait hands them out), those from before it joined too, though it never read the thread;
    once each, and again when one is given back."""
    with Mailbox(mailbox) as b:
        b.create_thread("t3", creator="alice")
        early = b.publish("t3", "port the parser", sender="alice", type="task").seq
        asked = b.publish("t3", "which parser?", sender="alice", to=["bob"], type="question")
        session = Session(b, agent="bob")
        session.thread_create("t3")
        session.msg_post("t3", "the new one", to=["alice"], reply_to=asked.seq)  # answered
        session.close()
        seq = b.publish("t3", "and the lexer", sender="alice", type="task").seq
    first = context(hook(mailbox, "prompt"), "UserPromptSubmit").splitlines()
    assert [ln.split("]")[0] for ln in first[1:-1]] == [f"[t3 #{early}", f"[t3 #{seq}"]
    assert hook(mailbox, "prompt") == ""
    with Mailbox(mailbox) as b:
        b.tasks.claim("t3", early, agent="carol")
        b.tasks.release("t3", early, agent="carol")
        later = b.publish("t3", "and the printer", sender="alice", type="task").seq
    again = context(hook(mailbox, "prompt"), "UserPromptSubmit").splitlines()
    assert [ln.split("]")[0] for ln in again[1:-1]] == [f"[t3 #{early}", f"[t3 #{later}"]
    assert hook(mailbox, "prompt") == ""


def test_a_task_for_anyone_in_a_thread_never_joined_is_news(mailbox: Path) -> None:
    """A task for anyone is for every agent (issue 27, item 3), as its inbox wait hands it
    out: news though the agent never joined, read or wrote the thread; once."""
    with Mailbox(mailbox) as b:
        b.create_thread("t4", creator="alice")
        seq = b.publish("t4", "port the parser", sender="alice", type="task").seq
    first = context(hook(mailbox, "prompt"), "UserPromptSubmit")
    assert f"[t4 #{seq}] alice (task): port the parser" in first
    assert first.rstrip().splitlines()[1].endswith(f"task_claim(thread='t4', seq={seq})")
    assert hook(mailbox, "prompt") == ""


def test_urgent_news_comes_first_whatever_its_thread_and_age(mailbox: Path) -> None:
    with Mailbox(mailbox) as b:
        b.create_thread("a", creator="alice")
        b.create_thread("z", creator="alice")
        old = b.publish("z", "urgent, in a later thread, posted first", sender="alice",
                        to=["bob"], priority="urgent").seq  # fmt: skip
        b.publish("a", "normal one", sender="alice", to=["bob"])
        b.publish("a", "normal two", sender="alice", to=["bob"])
        new = b.publish("a", "urgent, posted last", sender="alice", to=["bob"],
                        priority="urgent").seq  # fmt: skip
    post(mailbox, "normal in t")
    lines = context(hook(mailbox, "prompt"), "UserPromptSubmit").splitlines()
    assert [ln.split("]")[0] for ln in lines[1:-1]] == [
        f"[a #{new}", f"[z #{old}", "[a #1", "[a #2", "[t #1"]  # fmt: skip


def test_a_hook_sees_what_a_running_server_returned_once_it_wrote_it(mailbox: Path) -> None:
    """A hook is another process: it knows what the agent's server returned from the read
    positions the server writes (at most a second after a wait, and at its exit)."""
    post(mailbox, "first")

    async def main() -> None:
        async with agent(mailbox, "bob") as bob:
            assert [m["content"] for m in (await call(bob, "msg_wait"))["messages"]] == ["first"]
            post(mailbox, "second")
            assert [m["content"] for m in (await call(bob, "msg_wait"))["messages"]] == ["second"]
            await until_async("bob's position written", lambda: _inbox_at(mailbox, 2))
            assert hook(mailbox, "prompt") == ""
            post(mailbox, "third")
            assert "third" in context(hook(mailbox, "prompt"), "UserPromptSubmit")

    anyio.run(main)


async def _inbox_at(root: Path, seq: int) -> bool:
    with Mailbox(root) as b:
        doc = b.load_cursor("bob", "t")
    return isinstance(doc, dict) and (doc.get("inbox") or 0) >= seq


# ---------------------------------------------------------------------------- stop


@pytest.mark.parametrize("client", CLIENTS)
def test_stop_holds_once_per_unanswered_task_or_question(mailbox: Path, client: str) -> None:
    post(mailbox, "fix the flaky test", type="task")
    post(mailbox, "which branch?", type="question")
    post(mailbox, "just saying")
    post(mailbox, "a task for anyone", to=None, type="task")

    reason = stop_reason(hook(mailbox, "stop", client), client)
    assert "[t #1] alice (task): fix the flaky test" in reason
    assert "msg_post(thread='t', reply_to=1, type='result'" in reason
    assert "task_claim(thread='t', seq=1)" in reason
    assert "[t #2] alice (question): which branch?" in reason
    assert "msg_post(thread='t', reply_to=2, content=...)" in reason
    assert "just saying" not in reason and "for anyone" not in reason
    assert "before you stop" in reason
    if client == "gemini":
        assert "<" not in reason and ">" not in reason

    assert hook(mailbox, "stop", client) == ""  # held once: now it may stop

    post(mailbox, "and this one", type="task")
    again = stop_reason(hook(mailbox, "stop", client), client)
    assert "and this one" in again and "flaky" not in again
    assert hook(mailbox, "stop", client) == ""


def test_stop_lets_an_agent_that_answered_go(mailbox: Path) -> None:
    seq = post(mailbox, "what time is it?", type="question")
    with Mailbox(mailbox) as b:
        b.publish("t", "noon", sender="bob", to=["alice"], reply_to=seq)
    assert hook(mailbox, "stop") == ""


def test_stop_does_not_mark_news_reported(mailbox: Path) -> None:
    post(mailbox, "do it", type="task")
    assert hook(mailbox, "stop")
    assert "do it" in context(hook(mailbox, "prompt"), "UserPromptSubmit")


# ---------------------------------------------------------------- never break the client


@pytest.mark.parametrize("stdin", ["", "   \n", "not json", "[1, 2]", '"text"', "{", "\x00\xff"])
def test_bad_stdin_prints_nothing(
    mailbox: Path, stdin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    post(mailbox, "hello", type="task")
    for event in ("session-start", "prompt", "stop"):
        assert hook(mailbox, event, stdin=stdin) == ""
    assert len(capsys.readouterr().err.splitlines()) == 3  # one line each
    assert hook(mailbox, "prompt")  # and nothing was marked


def test_no_agent_prints_nothing(mailbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    post(mailbox, "hello")
    assert hook(mailbox, "prompt", agent=None) == ""
    assert capsys.readouterr().err == ""  # not configured: nothing is wrong
    text = context(
        hook(mailbox, "prompt", agent=None, env={"MAILSLOT_AGENT": "bob"}), "UserPromptSubmit"
    )
    assert "hello" in text


def test_no_mailbox_prints_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert hook(tmp_path / "nowhere", "prompt") == ""
    assert hook(None, "prompt", stdin=recorded("claude-code", "prompt", tmp_path)) == ""
    assert hook(None, "stop", env={"MAILSLOT_ROOT": str(tmp_path / "gone")}) == ""
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("mailslot hook: ") for line in err)


def test_a_bad_agent_name_or_unknown_event_prints_nothing(mailbox: Path) -> None:
    assert hook(mailbox, "prompt", agent="../etc") == ""
    assert hook(mailbox, "bogus", stdin="{}") == ""
    assert hook(mailbox, "prompt", "cursor", stdin="{}") == ""
    assert hook(mailbox, "notify", "claude-code", payload="{}") == ""


def test_input_of_another_event_is_ignored(
    mailbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    post(mailbox, "hello", type="task")
    # a Stop input to the prompt hook: wired to the wrong event, so nothing of either shape
    assert hook(mailbox, "prompt", stdin=recorded("claude-code", "stop")) == ""
    assert hook(mailbox, "prompt", "gemini", stdin=recorded("claude-code", "prompt")) == ""
    assert "runs for UserPromptSubmit but was given 'Stop'" in capsys.readouterr().err
    assert hook(mailbox, "prompt")  # nothing was marked
    no_name = json.dumps({"cwd": "/nowhere"})
    assert hook(mailbox, "stop", stdin=no_name)  # no hook_event_name: taken as configured


def test_the_mailbox_is_found_from_the_hooks_cwd(tmp_path: Path) -> None:
    project = tmp_path / "project"
    Mailbox.init(project / ".mailslot")
    (project / "src" / "deep").mkdir(parents=True)
    with Mailbox(project / ".mailslot") as b:
        b.agents.register("bob")
        b.create_thread("t", creator="alice")
        b.publish("t", "found you", sender="alice", to=["bob"])
    stdin = recorded("codex", "prompt", project / "src" / "deep")
    assert "found you" in context(hook(None, "prompt", "codex", stdin=stdin), "UserPromptSubmit")


# ---------------------------------------------------------------------------- codex notify


def fake_notify_send(folder: Path) -> Path:
    """Put a notify-send in folder that records its arguments; return the record's path."""
    log = folder / "notify-send.args"
    script = folder / "notify-send"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {shlex.quote(str(log))}\n')
    script.chmod(0o755)
    return log


def test_codex_notify_calls_notify_send_with_the_count(mailbox: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = fake_notify_send(bin_dir)
    payload = recorded("codex", "notify")
    env = {"PATH": str(bin_dir)}
    assert hook(mailbox, "notify", "codex", payload=payload, env=env) == ""
    assert not log.exists()  # nothing new: no notification

    post(mailbox, "one", type="task")
    post(mailbox, "two")
    assert hook(mailbox, "notify", "codex", payload=payload, env=env) == ""
    assert log.read_text().splitlines() == ["mailslot", "2 new for bob"]

    log.unlink()
    other = json.dumps({**json.loads(payload), "type": "approval-requested"})
    assert hook(mailbox, "notify", "codex", payload=other, env=env) == ""
    assert not log.exists()
    # the model has not seen it: still news for its hooks
    assert "2 new for you" in context(hook(mailbox, "prompt", "codex"), "UserPromptSubmit")


def test_codex_notify_rings_the_bell_without_notify_send(
    mailbox: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    payload = recorded("codex", "notify")
    post(mailbox, "one")
    assert hook(mailbox, "notify", "codex", payload=payload, env={"PATH": str(empty)}) == ""
    assert capsys.readouterr().err == "\a"
    assert hook(mailbox, "notify", "codex", payload="not json", env={"PATH": str(empty)}) == ""
    assert "\a" not in capsys.readouterr().err


# ---------------------------------------------------------------------------- configuration


def test_hook_commands_per_client(tmp_path: Path) -> None:
    assert set(hook_commands("claude-code", "claude")) == {
        "SessionStart", "UserPromptSubmit", "Stop", "PreToolUse"}  # fmt: skip
    assert set(hook_commands("codex", "codex")) == {
        "SessionStart", "UserPromptSubmit", "Stop", "PreToolUse", "notify"}  # fmt: skip
    assert set(hook_commands("gemini", "gemini")) == {
        "SessionStart", "BeforeAgent", "AfterAgent", "BeforeTool"}  # fmt: skip
    cmds = hook_commands("gemini", "gem ini", tmp_path / "my box")
    argv = shlex.split(cmds["AfterAgent"])
    assert Path(argv[0]).is_absolute() and Path(argv[0]).exists()
    assert argv[-8:] == ["hook", "stop", "--client", "gemini", "--as", "gem ini",
                         "--root", str(tmp_path / "my box")]  # fmt: skip
    assert hook_argv("codex", "notify", "codex")[-6:] == [
        "hook", "--client", "codex", "--as", "codex", "notify"]  # fmt: skip
    with pytest.raises(ValueError, match="no 'notify' hook"):
        hook_argv("claude-code", "notify", "claude")


# ---------------------------------------------------------------------------- the real command


def test_claude_code_hooks_as_a_process(tmp_path: Path) -> None:
    project = tmp_path / "project"
    Mailbox.init(project / ".mailslot")
    with Mailbox(project / ".mailslot") as b:
        b.agents.register("bob")
        b.create_thread("t", creator="alice")
        b.publish("t", "review my branch", sender="alice", to=["bob"], type="task")
    env = clean_env()
    start = command("session-start", "--as", "bob", env=env, cwd=tmp_path,
                    stdin=recorded("claude-code", "session-start", project))  # fmt: skip
    assert start.returncode == 0, start.stderr
    assert "review my branch" in context(start.stdout, "SessionStart")
    again = command("prompt", "--as", "bob", env=env, cwd=project,
                    stdin=recorded("claude-code", "prompt"))  # fmt: skip
    assert (again.returncode, again.stdout) == (0, "")
    stop = command("stop", "--client", "claude-code", env=env | {"MAILSLOT_AGENT": "bob"},
                   stdin=recorded("claude-code", "stop", project))  # fmt: skip
    assert stop.returncode == 0
    assert "review my branch" in stop_reason(stop.stdout, "claude-code")
    stop = command("stop", "--as", "bob", env=env, stdin=recorded("claude-code", "stop", project))
    assert (stop.returncode, stop.stdout) == (0, "")


def test_codex_hooks_as_a_process(mailbox: Path, tmp_path: Path) -> None:
    post(mailbox, "ship it?", type="question")
    env = clean_env(MAILSLOT_ROOT=str(mailbox))
    for event in ("session-start", "stop"):
        got = command(event, "--client", "codex", "--as", "bob", env=env,
                      stdin=recorded("codex", event))  # fmt: skip
        assert got.returncode == 0, got.stderr
        if event == "stop":
            assert "ship it?" in stop_reason(got.stdout, "codex")
        else:
            assert "ship it?" in context(got.stdout, "SessionStart")

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = fake_notify_send(bin_dir)
    post(mailbox, "another")
    notify = hook_argv("codex", "notify", "bob")[-6:-1]  # as config.toml will run it
    assert notify[0] == "hook"
    note = command(*notify[1:], "notify", recorded("codex", "notify"),
                   env=env | {"PATH": str(bin_dir)})  # fmt: skip
    assert (note.returncode, note.stdout) == (0, "")
    assert log.read_text().splitlines() == ["mailslot", "1 new for bob"]
    empty = tmp_path / "empty"
    empty.mkdir()
    bell = command(*notify[1:], "notify", recorded("codex", "notify"),
                   env=env | {"PATH": str(empty)})  # fmt: skip
    assert (bell.returncode, bell.stdout, bell.stderr) == (0, "", "\a")


def test_gemini_hooks_as_a_process(mailbox: Path) -> None:
    post(mailbox, "a <b> c", type="task")
    env = clean_env()
    got = command("prompt", "--client", "gemini", "--as", "bob", "--root", str(mailbox),
                  env=env, stdin=recorded("gemini", "prompt"))  # fmt: skip
    assert got.returncode == 0, got.stderr
    text = context(got.stdout, "BeforeAgent")
    assert "a \u2039b\u203a c" in text and "<" not in text and ">" not in text
    stop = command("stop", "--client", "gemini", "--as", "bob", "--root", str(mailbox),
                   env=env, stdin=recorded("gemini", "stop"))  # fmt: skip
    assert "a \u2039b\u203a c" in stop_reason(stop.stdout, "gemini")
    start = command("session-start", "--client", "gemini", "--as", "bob", "--root", str(mailbox),
                    env=env, stdin=recorded("gemini", "session-start"))  # fmt: skip
    assert (start.returncode, start.stdout) == (0, "")


def test_the_command_never_breaks_the_client(mailbox: Path, tmp_path: Path) -> None:
    post(mailbox, "hello", type="task")
    cases = [
        (["prompt", "--as", "bob", "--root", str(mailbox)], "not json"),
        (["prompt", "--as", "bob", "--root", str(mailbox)], ""),
        (["prompt", "--root", str(mailbox)], recorded("claude-code", "prompt")),
        (
            ["stop", "--as", "bob", "--root", str(tmp_path / "none")],
            recorded("claude-code", "stop"),
        ),
        (["stop", "--as", "bob"], recorded("claude-code", "stop", tmp_path)),
        (["whatever", "--as", "bob", "--root", str(mailbox)], "{}"),
        (["prompt", "--client", "vim", "--as", "bob", "--root", str(mailbox)], "{}"),
    ]
    for argv, stdin in cases:
        got = command(*argv, stdin=stdin, cwd=tmp_path)
        assert (got.returncode, got.stdout) == (0, ""), argv
        assert len(got.stderr.splitlines()) <= 1, (argv, got.stderr)


@pytest.mark.parametrize("source", ["_hooks", "_clients"])
def test_codex_runs_the_configured_notify_program_with_its_payload(
    mailbox: Path, tmp_path: Path, source: str
) -> None:
    """Codex appends the payload to the configured argv: argparse takes it only right after
    EVENT, so the notify program must end with `notify` (options before it)."""
    from mailslot.clients import hook_configs

    if source == "_clients":
        argv = hook_configs.notify_argv("bob", root=mailbox)
    else:
        argv = hook_argv("codex", "notify", "bob", mailbox)
    assert argv[-1] == "notify", f"{argv}: Codex appends its payload after `notify`"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = fake_notify_send(bin_dir)
    post(mailbox, "ping")
    got = subprocess.run(
        [*argv, recorded("codex", "notify")], capture_output=True, text=True, timeout=60,
        env=clean_env(PATH=str(bin_dir)), cwd=tmp_path,
    )  # fmt: skip
    assert (got.returncode, got.stdout, got.stderr) == (0, "", "")
    assert log.read_text().splitlines() == ["mailslot", "1 new for bob"]


def test_news_the_agent_read_in_the_thread_is_not_reported(mailbox: Path) -> None:
    """Messages to the agent that it read with msg_list (a read of the thread, no inbox wait)
    were shown: only what comes after them is news."""
    post(mailbox, "first")
    post(mailbox, "second")
    with Mailbox(mailbox) as box:
        s = Session(box, agent="bob")
        try:
            assert [m["seq"] for m in s.msg_list("t")["messages"]] == [1, 2]
        finally:
            s.close()
    assert hook(mailbox, "prompt") == ""
    post(mailbox, "third")
    text = context(hook(mailbox, "prompt"), "UserPromptSubmit")
    assert "third" in text and "first" not in text and "second" not in text


def test_a_thread_wait_from_now_leaves_what_came_before_it_as_news(mailbox: Path) -> None:
    """bob's inbox looked at t; a task for anyone and a question to bob landed; bob's first
    msg_wait(t) started from now, past them. The hook took them as read and never told him;
    what that thread wait returned stays read."""
    with Mailbox(mailbox) as box:
        s = Session(box, agent="bob")
        try:
            anyio.run(lambda: s.msg_wait(timeout_s=0.1))  # the inbox's first look
            task = post(mailbox, "anyone: tag the release", to=None, type="task")
            ask = post(mailbox, "which tag?", type="question")
            waited = anyio.run(lambda: s.msg_wait(thread="t", timeout_s=0.2))  # from now
            assert waited["messages"] == [] and waited["next_after_seq"] == ask
            post(mailbox, "ping")
            got = anyio.run(lambda: s.msg_wait(thread="t", timeout_s=5))
            assert [m["content"] for m in got["messages"]] == ["ping"]
        finally:
            s.close()
    text = context(hook(mailbox, "prompt"), "UserPromptSubmit")
    assert f"[t #{task}]" in text and f"[t #{ask}]" in text, text
    assert "ping" not in text, text
