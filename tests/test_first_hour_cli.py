"""The first hour, the person's side: what a person stumbles on must read like a next step.

`--json` means JSON on every command that offers it; errors name the command to run; a doctor
never sends anyone in a loop; each warning is printed once; exports render safely.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import require

from mailslot import Mailbox, NoSuchAgent
from mailslot.cli import COMMANDS, EXIT_USAGE, _command_here, main


@pytest.fixture
def env_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "box"
    box = Mailbox.init(root)
    box.agents.register("bob")
    box.create_thread("t", creator="alice")
    box.post("t", "**PR 7** is ready", sender="alice", to=["bob"], type="task")
    box.post("t", "Approved.", sender="bob", reply_to=1)
    monkeypatch.setenv("MAILSLOT_ROOT", str(root))
    monkeypatch.setenv("MAILSLOT_AGENT", "alice")
    monkeypatch.chdir(tmp_path)
    return root


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- 8: --json means JSON

# One way to run each command that offers --json; a command added with --json but not here
# fails test_json_is_offered_only_where_it_is_kept.
JSON_RUNS: dict[str, list[str]] = {
    "init": ["init", "{tmp}/other"],
    "thread": ["thread", "Another topic"],
    "threads": ["threads"],
    "read": ["read", "t"],
    "post": ["post", "t", "hi"],
    "tail": ["tail"],
    "wait": ["wait", "t", "--after", "0", "--timeout", "1"],
    "state": ["state", "t", "review"],
    "agents": ["agents"],
    "register": ["register", "carol"],
    "dnd": ["dnd", "bob"],
    "key": ["key", "--list"],
    "verify": ["verify"],
    "export": ["export", "t"],
    "doctor": ["doctor"],
    "mcp-config": ["mcp-config", "codex"],
    "tasks": ["tasks"],
    "claim": ["claim", "t", "1", "--as", "bob"],
    "reservations": ["reservations"],
    "reserve": ["reserve", "docs/"],
    "release": ["release"],
    "search": ["search", "PR"],
    "sync": ["sync", "--status"],
}


def test_json_is_offered_only_where_it_is_kept() -> None:
    offered = {c.name for c in COMMANDS if c.json}
    assert offered == set(JSON_RUNS)
    assert {"serve", "demo"}.isdisjoint(offered), "serve's stdout is the protocol's"


@pytest.mark.parametrize("name", sorted(JSON_RUNS))
def test_json_means_json(
    env_root: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str
) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in JSON_RUNS[name]]
    code, out, _ = run(capsys, *argv, "--json")
    assert code == 0, out
    if name == "tail":  # JSON lines: one message a line
        assert [json.loads(line)["seq"] for line in out.splitlines()] == [1, 2]
    else:  # one document, an object: a list's items under a named key, as in the tools
        assert isinstance(json.loads(out), dict), out


def test_export_and_mcp_config_json(env_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, as_json, _ = run(capsys, "export", "t", "--json")
    _, as_format, _ = run(capsys, "export", "t", "--format", "json")
    assert json.loads(as_json) == json.loads(as_format)
    code, _, err = run(capsys, "export", "t", "--json", "--format", "html")
    assert code == EXIT_USAGE and "give one" in err
    _, out, _ = run(capsys, "mcp-config", "codex", "--json")
    doc = json.loads(out)
    assert doc["server"]["args"] == ["serve"] and doc["text"].startswith("[mcp_servers.mailslot]")
    assert doc["path"].endswith("config.toml")
    with pytest.raises(SystemExit) as e:
        main(["serve", "--json"])
    assert e.value.code == EXIT_USAGE


# ---------------------------------------------------------------- 9: a command that works as shown


def test_the_demo_names_the_command_as_the_shell_finds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = Path(sys.executable).parent
    if not (bindir / "mailslot").exists():
        require("mailslot is not installed as a script beside this interpreter")
    others = [p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != bindir]
    monkeypatch.setenv("PATH", os.pathsep.join(others))
    away = _command_here()
    assert away.endswith("/mailslot") and away != "mailslot"
    assert subprocess.run([os.path.expanduser(away), "--version"], check=False).returncode == 0
    monkeypatch.setenv("PATH", os.pathsep.join([str(bindir), *others]))
    assert _command_here() == "mailslot"


# ---------------------------------------------------------------- 10: doctor's advice


def test_doctor_says_what_to_do_and_never_loops(
    env_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tdir = env_root / "threads" / "t"
    (tdir / "notes.txt").write_text("my notes")
    (tdir / "7.json").write_text("{}")
    (env_root / "agents" / "README").write_text("who is who")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = os.uname().nodename
        fresh = env_root / ".state" / "tmp" / f"{host}.{live.pid}.abc.tmp"
        fresh.write_text("being written")
        presence = env_root / ".state" / "presence"
        presence.mkdir(parents=True, exist_ok=True)
        killed = subprocess.Popen([sys.executable, "-c", "pass"])
        killed.wait()
        (presence / "zombie.json").write_text(json.dumps(
            {"agent": "zombie", "status": "online", "pid": killed.pid, "host": host,
             "last_seen_epoch": time.time()}))  # fmt: skip

        code, out, err = run(capsys, "doctor")
        assert code == 0, out
        assert out.splitlines()[-1].startswith("healthy ("), "notes only: healthy"
        assert "contents    1 thread, 2 messages" in out
        assert "interrupted" not in out and f"process {live.pid}" in out
        assert "named like 000007.json" in out and "readers already count it offline" in out
        assert "doctor --fix" not in out.splitlines()[-1]
        assert err == ""

        config = json.loads((env_root / "mailslot.json").read_text())
        (env_root / "mailslot.json").write_text(json.dumps({**config, "fsnyc": False}))
        (env_root / "agents" / "broken.json").write_text("[1, 2")
        code, out, err = run(capsys, "doctor", "--fix")
        assert code == 1
        assert "unknown setting 'fsnyc' (did you mean 'fsync'?)" in out
        assert "next: `mailslot register broken` writes a new card" in out
        assert out.splitlines()[-1] == (
            "2 problems left, which --fix does not repair: see next: under each"
        )
        assert err == "", "the bad card is told once, in the report"
        code, out, _ = run(capsys, "doctor", "--json")
        report = json.loads(out)
        severity = {(f["kind"], Path(f["path"]).name): f["severity"] for f in report["findings"]}
        assert severity == {
            ("config", "mailslot.json"): "problem",
            ("foreign file", "7.json"): "note",
            ("foreign file", "notes.txt"): "note",
            ("temp file", fresh.name): "note",
            ("agent card", "README"): "note",
            ("agent card", "broken.json"): "problem",
        }
        assert all(f["todo"] for f in report["findings"])
        run(capsys, "register", "broken")
        (env_root / "mailslot.json").write_text(json.dumps(config))
        code, out, _ = run(capsys, "doctor")
        assert code == 0 and fresh.exists(), "a live writer's file is left alone"
    finally:
        live.kill()
        live.wait()


# ---------------------------------------------------------------- 11: errors name the command


def test_a_missing_thread_names_the_commands(
    env_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "post", "nonexist", "hi")
    assert code == 1 and "`mailslot threads`" in err and "`mailslot thread TOPIC`" in err
    assert "list threads to see them all" not in err


def test_who_wrote_in_a_thread_can_be_addressed(
    env_root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MAILSLOT_AGENT")
    code, _, err = run(capsys, "post", "t", "hi, bob", "--as", "root", "--to", "bob")
    assert code == 0, err
    # root has no card, but wrote in t: bob can answer it, from the command or the library.
    code, _, err = run(capsys, "post", "t", "hi, root", "--as", "bob", "--to", "root")
    assert code == 0, err
    assert Mailbox(env_root).post("t", "and alice", sender="bob", to=["alice"]) == 5
    code, _, err = run(capsys, "post", "t", "hi", "--to", "ghost")
    assert code == 1 and "`mailslot register ghost` creates it" in err
    assert "known: alice, bob, root" in err
    Mailbox(env_root).create_thread("u", creator="bob")
    with pytest.raises(NoSuchAgent):  # root wrote in t, not in u: unknown there
        Mailbox(env_root).post("u", "x", sender="bob", to=["root"])


# ---------------------------------------------------------------- 12: each warning once


def test_a_damaged_file_is_told_once(env_root: Path) -> None:
    bad = env_root / "threads" / "t" / "000003.json"
    bad.write_text("{torn")
    os.utime(bad, (time.time() - 60, time.time() - 60))  # past the grace period
    Mailbox(env_root).post("t", "after", sender="alice")
    done = subprocess.run([sys.executable, "-m", "mailslot", "read", "t"], capture_output=True,
                          text=True, check=False, env={**os.environ})  # fmt: skip
    assert done.returncode == 0 and "after" in done.stdout
    assert done.stderr.count("000003.json") == 1, done.stderr


# ---------------------------------------------------------------- 13: the HTML export


def test_the_html_export_renders_markdown_safely(
    env_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    box = Mailbox(env_root)
    box.post("t", 'See [the PR](https://example.com/pr/7?a=1&b=2) <img src=x onerror="x()">\n'
             "[bad](javascript:alert(1))\n\n```\n<b>code</b>\n```", sender="alice")  # fmt: skip
    _, page, _ = run(capsys, "export", "t", "--format", "html")
    assert "<strong>PR 7</strong>" in page and "**PR 7**" not in page
    assert '<a href="#m1">re #1</a>' in page and 'id="m1"' in page
    assert '<a href="https://example.com/pr/7?a=1&amp;b=2">the PR</a>' in page
    assert "&lt;img src=x" in page and "<img" not in page
    assert "javascript:" not in page.split("[bad](")[0] and 'href="javascript' not in page
    assert "<pre><code>&lt;b&gt;code&lt;/b&gt;</code></pre>" in page


# ---------------------------------------------------------------- 15: JSONC kept


def test_vscode_config_with_comments_is_merged_and_kept(
    env_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / ".vscode" / "mcp.json"
    cfg.parent.mkdir()
    original = (
        '{\n  // servers for this repo\n  "servers": {\n'
        '    "github": {"type": "http", "url": "https://api.example.com/mcp/"}, // mine\n'
        '  },\n  /* inputs come later */\n  "inputs": [],\n}\n'
    )
    cfg.write_text(original)
    code, out, err = run(capsys, "mcp-config", "vscode", "--install", "--path", str(cfg))
    assert code == 0 and out.startswith("added"), err
    text = cfg.read_text()
    assert "// servers for this repo" in text and "/* inputs come later */" in text
    assert '"url": "https://api.example.com/mcp/"}, // mine' in text
    code, out, _ = run(capsys, "mcp-config", "vscode", "--install", "--path", str(cfg),
                       "--agent", "copilot-2")  # fmt: skip
    assert code == 0 and out.startswith("updated")
    assert cfg.read_text().count('"mailslot"') == 1 and "copilot-2" in cfg.read_text()
    assert "// servers for this repo" in cfg.read_text()

    cfg.write_text('{\n  // unfinished\n  "servers": {\n')
    code, _, err = run(capsys, "mcp-config", "vscode", "--install", "--path", str(cfg))
    assert code == 1 and "nothing was written" in err
    assert cfg.read_text() == '{\n  // unfinished\n  "servers": {\n'
    claude = tmp_path / ".mcp.json"
    claude.write_text('{\n  // Claude Code refuses comments here\n  "mcpServers": {}\n}\n')
    code, _, err = run(capsys, "mcp-config", "claude-code", "--install", "--path", str(claude))
    assert code == 1 and "not valid JSON" in err
