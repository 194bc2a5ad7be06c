"""Commands for people and scripts: read, tail, wait, agents, export, doctor, mcp-config, demo."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from helpers import watching

from mailslot import Mailbox
from mailslot.cli import EXIT_TIMEOUT, main


@pytest.fixture
def env_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "box"
    box = Mailbox.init(root)
    box.agents.register("bob")
    box.create_thread("t", creator="alice")
    monkeypatch.setenv("MAILSLOT_ROOT", str(root))
    monkeypatch.setenv("MAILSLOT_AGENT", "alice")
    return root


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cli(*argv: str, root: Path, **kw: object) -> subprocess.Popen[str]:
    env = {**os.environ, "MAILSLOT_ROOT": str(root), "MAILSLOT_AGENT": "alice"}
    return subprocess.Popen(
        [sys.executable, "-m", "mailslot", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kw,
    )  # type: ignore[call-overload]


# ---------------------------------------------------------------- reading


def test_read_last_and_plain_output(env_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    box = Mailbox(env_root)
    for i in range(5):
        box.post("t", f"message {i}", sender="alice")
    box.post(
        "t",
        "**urgent** " + "word " * 60,
        sender="bob",
        priority="urgent",
        type="question",
        reply_to=5,
    )
    code, out, _ = run(capsys, "read", "t", "--last", "2")
    assert code == 0
    assert "#5 alice" in out and "#6 bob [question] !urgent (re #5)" in out and "#4" not in out
    assert "\033[" not in out, "no colours when stdout is not a terminal"
    assert max(len(line) for line in out.splitlines()) <= 122, "long paragraphs are wrapped"


def test_threads_table(env_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Mailbox(env_root).post("t", "hi", sender="bob")
    code, out, _ = run(capsys, "threads")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == [
        "THREAD",
        "STATE",
        "MSGS",
        "PARTICIPANTS",
        "LAST",
        "ACTIVITY",
        "TOPIC",
    ]
    assert row.split()[:4] == ["t", "discuss", "1", "alice,"]


def test_tail_without_follow(env_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    box = Mailbox(env_root)
    box.create_thread("u", creator="alice")
    for i in range(3):  # tail merges threads by time (milliseconds): keep the stamps apart
        box.post("t", f"t{i}", sender="alice")
        time.sleep(0.003)
        box.post("u", f"u{i}", sender="bob")
        time.sleep(0.003)
    code, out, _ = run(capsys, "tail", "-n", "4", "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(lines) == 4
    assert {m["content"] for m in lines} == {"t1", "u1", "t2", "u2"}


def test_tail_follow_streams_and_stops_on_ctrl_c(env_root: Path) -> None:
    box = Mailbox(env_root)
    box.post("t", "old", sender="alice")
    # Ctrl-C reaches the command as a person's terminal sends it, even where this test runs
    # with SIGINT ignored (a background job inherits that, and Python keeps it ignored).
    p = cli("tail", "-f", "-n", "1", "--json", root=env_root,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        assert p.stdout is not None
        assert json.loads(p.stdout.readline())["content"] == "old"
        box.post("t", "new", sender="bob")
        assert json.loads(p.stdout.readline())["content"] == "new"
        box.create_thread("fresh", creator="bob")
        box.post("fresh", "in a new thread", sender="bob")
        got = json.loads(p.stdout.readline())
        assert (got["thread"], got["content"]) == ("fresh", "in a new thread")
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=10)
        assert p.returncode == 0 and "Traceback" not in err
    finally:
        if p.poll() is None:  # it ignored Ctrl-C: fail, and leave no process behind
            p.kill()
            p.communicate()


def test_wait_command(env_root: Path) -> None:
    p = cli("wait", "t", "--after", "0", "--timeout", "30", "--json", root=env_root)
    watching(p.pid, env_root / "threads")  # so the post wakes it, not found at its first look
    Mailbox(env_root).post("t", "done", sender="bob")
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 0
    doc = json.loads(out)
    assert [m["content"] for m in doc["messages"]] == ["done"] and doc["cursor"] == {"t": 1}
    timed = cli("wait", "t", "--after", "1", "--timeout", "0.3", root=env_root)
    out, _ = timed.communicate(timeout=30)
    assert timed.returncode == EXIT_TIMEOUT and out == ""


def test_wait_on_an_inbox(env_root: Path) -> None:
    box = Mailbox(env_root)
    box.post("t", "before: not waited for", sender="alice", to=["bob"])
    p = cli("wait", "--to", "bob", "--timeout", "30", "--json", root=env_root)
    watching(p.pid, env_root / "threads")  # "from now" is taken: what follows is new
    box.post("t", "not for bob", sender="alice")
    box.create_thread("new", creator="alice")
    box.post("new", "for bob", sender="alice", to=["bob"])
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 0
    assert [m["content"] for m in json.loads(out)["messages"]] == ["for bob"]


# ---------------------------------------------------------------- agents


def test_agents_show_presence(env_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    box = Mailbox(env_root)
    hold = box.agents.hold_name("bob", client="cli-test")
    box.agents.register("idler")
    box.agents.hold_name("idler")
    box.agents.set_presence("idler", "online", last_active=time.time() - 3600)
    box.agents.register("ghost")
    code, out, _ = run(capsys, "agents", "--json")
    status = {a["agent"]: a["status"] for a in json.loads(out)["agents"]}
    assert status == {"bob": "online", "idler": "idle", "ghost": "offline"}
    box.agents.set_presence("bob", "waiting", waiting_on="t")
    code, out, _ = run(capsys, "agents")
    assert re.search(r"bob\s+waiting on t\s+\d{4}-", out)
    box.agents.release_name(hold)
    code, out, _ = run(capsys, "agents", "--json")
    assert code == 0
    assert {a["agent"]: a["status"] for a in json.loads(out)["agents"]}["bob"] == "offline"


# ---------------------------------------------------------------- export


def test_export_formats(env_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    box = Mailbox(env_root)
    box.post("t", "Ship it? <script>alert(1)</script>", sender="alice", to=["bob"], type="task")
    box.set_state("t", "closed", sender="bob", summary="Shipped.")
    code, md, _ = run(capsys, "export", "t")
    assert code == 0 and md.startswith("# t\n") and "**#1 alice** → bob · task" in md
    code, raw, _ = run(capsys, "export", "t", "--format", "json")
    doc = json.loads(raw)
    assert doc["thread"]["state"] == "closed" and len(doc["messages"]) == 2
    code, page, _ = run(capsys, "export", "t", "--format", "html")
    assert (
        page.startswith("<!doctype html>") and "&lt;script&gt;" in page and "<script>" not in page
    )
    assert "Shipped." in page


# ---------------------------------------------------------------- doctor


def break_everything(root: Path) -> None:
    box = Mailbox(root)
    for i in range(4):
        box.post("t", f"m{i + 1}", sender="alice")
    tdir = root / "threads" / "t"
    (tdir / "000002.json").unlink()  # a gap
    (tdir / "000003.json").write_text("{torn")  # corrupt
    (tdir / "notes.txt").write_text("a person's notes")  # foreign
    box.create_thread("u", creator="alice")
    (root / "threads" / "u" / "thread.json").unlink()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (root / ".state" / "tmp" / f"{os.uname().nodename}.{dead.pid}.abc.tmp").write_text("half")
    presence = root / ".state" / "presence"
    presence.mkdir(parents=True, exist_ok=True)
    (presence / "zombie.json").write_text(json.dumps(
        {"agent": "zombie", "status": "online", "pid": dead.pid, "host": "elsewhere",
         "last_seen_epoch": time.time() - 999}))  # fmt: skip
    (root / ".gitignore").write_text("")
    box.create_thread("copies", creator="alice")
    box.post("copies", "original", sender="alice")
    (root / "threads" / "copies" / "000002.json").write_bytes(
        (root / "threads" / "copies" / "000001.json").read_bytes()
    )  # a copy: same id twice
    (root / "threads" / "escape").symlink_to(root.parent)
    (root / "agents" / "broken.json").write_text("[1, 2")


def test_doctor_finds_and_fixes(env_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    break_everything(env_root)
    code, out, _ = run(capsys, "doctor", "--json")
    report = json.loads(out)
    assert code == 1 and not report["healthy"]
    kinds = {f["kind"] for f in report["findings"]}
    assert kinds >= {"gap", "corrupt message", "foreign file", "thread record", "temp file",
                     "stale presence", "gitignore", "duplicate", "symlink",
                     "agent card"}  # fmt: skip
    assert report["hard_links"] is True and report["locks"] is True
    assert report["wait_mode"] == "native" and report["network"] is False

    code, out, _ = run(capsys, "doctor", "--fix")
    assert "fixed" in out and "foreign file" in out
    box = Mailbox(env_root)
    page = box.read("t")
    assert [m.seq for m in page.messages] == [1, 2, 3, 4], "readers pass the repaired seqs"
    assert page.messages[1].sender == "mailslot" and "missing" in page.messages[1].content
    assert "quarantine" in page.messages[2].content
    kept = list((env_root / ".state" / "quarantine" / "t").iterdir())
    assert len(kept) == 1 and kept[0].read_text() == "{torn"
    assert box.thread("u").topic == "u"
    code, out, _ = run(capsys, "doctor", "--json")
    left = sorted(f["kind"] for f in json.loads(out)["findings"])
    assert left == ["agent card", "duplicate", "foreign file", "symlink"], (
        "only what is unsafe to touch"
    )
    assert box.post("t", "after repair", sender="alice") == 5


def test_doctor_on_a_future_format(env_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (env_root / "mailslot.json").write_text('{"format": 9}')
    code, out, _ = run(capsys, "doctor")
    assert code == 1 and "newer mailslot" in out


def test_doctor_on_a_healthy_root(env_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Mailbox(env_root).post("t", "fine", sender="alice")
    code, out, _ = run(capsys, "doctor")
    assert code == 0 and out.rstrip().endswith("healthy")


# ---------------------------------------------------------------- mcp-config


@pytest.mark.parametrize("client", ["claude-code", "cursor", "vscode", "codex", "gemini",
                                    "claude-desktop"])  # fmt: skip
def test_mcp_config_prints_absolute_paths(
    env_root: Path, capsys: pytest.CaptureFixture[str], client: str
) -> None:
    code, out, _ = run(capsys, "mcp-config", client)
    assert code == 0
    doc = tomllib.loads(out)["mcp_servers"] if client == "codex" else json.loads(out)
    servers = doc if client == "codex" else doc["servers" if client == "vscode" else "mcpServers"]
    entry = servers["mailslot"]
    assert Path(entry["command"]).is_absolute() and Path(entry["command"]).exists()
    assert entry["args"][-1] == "serve"
    assert entry["env"]["MAILSLOT_ROOT"] == str(env_root.resolve())


def test_mcp_config_install_merges(
    env_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "mcp.json"
    cfg.write_text(json.dumps({"mcpServers": {"other": {"command": "x"}}, "theme": "dark"}))
    code, out, _ = run(capsys, "mcp-config", "cursor", "--install", "--path", str(cfg))
    assert code == 0 and out.startswith("added mailslot")
    doc = json.loads(cfg.read_text())
    assert doc["theme"] == "dark" and doc["mcpServers"]["other"] == {"command": "x"}
    assert doc["mcpServers"]["mailslot"]["env"]["MAILSLOT_AGENT"] == "cursor"
    code, out, _ = run(
        capsys, "mcp-config", "cursor", "--install", "--path", str(cfg), "--agent", "c2"
    )
    assert out.startswith("updated") and json.loads(cfg.read_text())["mcpServers"]["mailslot"][
        "env"]["MAILSLOT_AGENT"] == "c2"  # fmt: skip

    toml = tmp_path / "config.toml"
    toml.write_text('model = "o3"\n\n[mcp_servers.other]\ncommand = "x"\nargs = ["a"]\n')
    run(capsys, "mcp-config", "codex", "--install", "--path", str(toml))
    run(capsys, "mcp-config", "codex", "--install", "--path", str(toml))
    parsed = tomllib.loads(toml.read_text())
    assert parsed["model"] == "o3" and parsed["mcp_servers"]["other"]["args"] == ["a"]
    assert parsed["mcp_servers"]["mailslot"]["tool_timeout_sec"] == 600
    assert toml.read_text().count("[mcp_servers.mailslot]") == 1

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    code, _, err = run(capsys, "mcp-config", "vscode", "--install", "--path", str(broken))
    assert code == 1 and "not valid JSON" in err and broken.read_text() == "{not json"


def test_mcp_config_install_default_places(
    env_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    run(capsys, "mcp-config", "vscode", "--install")
    assert "servers" in json.loads((tmp_path / ".vscode" / "mcp.json").read_text())
    run(capsys, "mcp-config", "codex", "--install")  # the project's file, never the user's
    assert (tmp_path / ".codex" / "config.toml").exists()
    assert not (tmp_path / "home" / ".codex").exists()


# ---------------------------------------------------------------- demo


def test_demo_runs_three_agents(tmp_path: Path) -> None:
    root = tmp_path / "demo" / ".mailslot"
    result = subprocess.run(
        [sys.executable, "-m", "mailslot", "demo", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"}
        | {"HOME": str(tmp_path / "home")},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for line in (
        "planner → coder: [task]",
        "coder: [result] (re #2)",
        "state review → closed",
        "coder blocks in msg_wait",
        "threads/",
        "000002.json",
        "is closed after 9 messages",
    ):
        assert line in out, line
    box = Mailbox(root)
    (info,) = box.threads()
    assert info.state == "closed" and info.summary and "--version" in info.summary
    assert [m.seq for m in box.messages(info.id)] == list(range(1, 10))
    assert {p.agent: p.status for p in box.agents.presences()} == {
        "planner": "offline", "coder": "offline", "reviewer": "offline"}  # fmt: skip
    # The agents signed with keys of the demo's own, gone with it: none among this machine's.
    page = box.read(info.id)
    assert {m.signed for m in page.messages} == {"valid"}, [m.signed for m in page.messages]
    assert not (tmp_path / "home" / ".config" / "mailslot" / "keys").exists()


def test_demo_refuses_a_used_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("mine")
    code, _, err = run(capsys, "demo", "--root", str(tmp_path / "x"))
    assert code == 1 and "not empty" in err
