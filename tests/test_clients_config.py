"""Where `mailslot mcp-config --install` writes, and what: files a team commits hold nothing of
one machine, what does goes where the client keeps this user's settings, and no install in one
project repoints another project's agents (issue 27, items 10 and 11).

Each test runs the real command in a temporary project with HOME (and CODEX_HOME) pointed at a
temporary folder, once with `mailslot` on PATH and once without, as in a venv not activated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mailslot import Mailbox

SCRIPT = Path(sys.executable).parent / "mailslot"
TEAM_FILES = {"claude-code": [".mcp.json", ".claude/settings.json"],
              "gemini": [".gemini/settings.json"],
              "codex": [".codex/config.toml", ".codex/hooks.json"]}  # fmt: skip


def environ(tmp_path: Path, on_path: bool) -> dict[str, str]:
    """An environment with a home of its own, and `mailslot` on PATH or not."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    if on_path and not (bindir / "mailslot").exists():
        (bindir / "mailslot").symlink_to(SCRIPT)
    keep = [p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "mailslot").exists()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSLOT_")}
    return env | {"HOME": str(home), "CODEX_HOME": str(home / ".codex"),
                  "PATH": os.pathsep.join([str(bindir), *keep] if on_path else keep)}  # fmt: skip


def install(project: Path, env: dict[str, str], *argv: str) -> str:
    done = subprocess.run([str(SCRIPT), "mcp-config", *argv, "--install"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def project(tmp_path: Path) -> Path:
    Mailbox.init(tmp_path / "project" / ".mailslot")
    return tmp_path / "project"


@pytest.mark.parametrize("client", ["claude-code", "gemini", "codex"])
def test_team_files_hold_nothing_of_this_machine(
    client: str, project: Path, tmp_path: Path
) -> None:
    env = environ(tmp_path, on_path=True)
    out = install(project, env, client, "--agent", "dev", "--hooks")
    for name in TEAM_FILES[client]:
        text = (project / name).read_text()
        assert str(tmp_path) not in text and str(SCRIPT.parent) not in text, (name, text)
        assert "MAILSLOT_ROOT" not in text and "--root" not in text, (name, text)
    # The entry runs `mailslot serve` from PATH, as the agent named, and nothing else.
    path = project / TEAM_FILES[client][0]
    if client == "codex":
        server = tomllib.loads(path.read_text())["mcp_servers"]["mailslot"]
    else:
        server = json.loads(path.read_text().replace("//", ""))["mcpServers"]["mailslot"]
    assert [server["command"], *server["args"]] == ["mailslot", "serve"]
    assert server["env"] == {"MAILSLOT_AGENT": "dev"}
    assert "note:" not in out and "this machine's paths" not in out, out
    assert not (Path(env["HOME"]) / ".claude.json").exists()
    assert not (project / ".claude" / "settings.local.json").exists()


def test_without_mailslot_on_path_claude_gets_the_local_files(
    project: Path, tmp_path: Path
) -> None:
    env = environ(tmp_path, on_path=False)
    out = install(project, env, "claude-code", "--agent", "dev", "--hooks")
    # Nothing a team commits: the absolute command goes to this user's own files.
    assert not (project / ".mcp.json").exists()
    assert not (project / ".claude" / "settings.json").exists()
    local = json.loads((Path(env["HOME"]) / ".claude.json").read_text())
    server = local["projects"][str(project.resolve())]["mcpServers"]["mailslot"]
    assert [server["command"], *server["args"]] == [str(SCRIPT), "serve"]
    assert server["env"] == {"MAILSLOT_AGENT": "dev"}  # the root is still found from the project
    hooks = json.loads((project / ".claude" / "settings.local.json").read_text())["hooks"]
    command = hooks["Stop"][0]["hooks"][0]["command"]
    assert command.startswith(f"{SCRIPT} hook stop") and "--root" not in command
    # And it says what it did and why, and how to get the team's file.
    assert "not on PATH" in out and ".mcp.json" in out and "run this again" in out, out

    # Installing again with mailslot on PATH writes the team's files.
    install(project, environ(tmp_path, on_path=True), "claude-code", "--agent", "dev")
    assert json.loads((project / ".mcp.json").read_text())["mcpServers"]["mailslot"]["command"] == (
        "mailslot"
    )


def test_a_mailbox_outside_the_project_keeps_claudes_files_local(
    project: Path, tmp_path: Path
) -> None:
    """mailslot on PATH, but the mailbox is not the project's .mailslot/: the entry and the
    hooks name its absolute root, so they go to this user's files, and the hooks keep it."""
    env = environ(tmp_path, on_path=True)
    box = tmp_path / "shared-box"
    Mailbox.init(box)
    out = install(project, env, "claude-code", "--agent", "dev", "--hooks", "--root", str(box))
    assert not (project / ".mcp.json").exists()
    assert not (project / ".claude" / "settings.json").exists()
    local = json.loads((Path(env["HOME"]) / ".claude.json").read_text())
    server = local["projects"][str(project.resolve())]["mcpServers"]["mailslot"]
    assert [server["command"], *server["args"]] == ["mailslot", "serve"]
    assert server["env"] == {"MAILSLOT_ROOT": str(box.resolve()), "MAILSLOT_AGENT": "dev"}
    hooks = json.loads((project / ".claude" / "settings.local.json").read_text())["hooks"]
    command = hooks["Stop"][0]["hooks"][0]["command"]
    assert command.startswith("mailslot hook stop") and str(box.resolve()) in command, command
    assert "MAILSLOT_ROOT is its absolute path" in out, out


@pytest.mark.parametrize("client", ["gemini", "codex"])
def test_without_mailslot_on_path_a_project_file_says_it_holds_this_machine(
    client: str, project: Path, tmp_path: Path
) -> None:
    env = environ(tmp_path, on_path=False)
    out = install(project, env, client, "--agent", "dev")
    path = project / TEAM_FILES[client][0]
    assert str(SCRIPT) in path.read_text() and "MAILSLOT_ROOT" not in path.read_text()
    assert f"note: {path} holds this machine's paths" in out and "not on PATH" in out, out


def test_codex_goes_into_the_project_and_leaves_the_global_config(
    project: Path, tmp_path: Path
) -> None:
    env = environ(tmp_path, on_path=True)
    config = Path(env["CODEX_HOME"]) / "config.toml"
    config.parent.mkdir()
    mine = ('model = "o3"\n\n[mcp_servers.mailslot]\ncommand = "mailslot"\nargs = ["serve"]\n'
            'env = { MAILSLOT_ROOT = "/elsewhere/.mailslot", MAILSLOT_AGENT = "a" }\n')  # fmt: skip
    config.write_text(mine)
    out = install(project, env, "codex", "--agent", "dev")
    assert config.read_text() == mine, "another project's agent is not repointed"
    assert f"left as it is: {config} has a mailslot server too" in out, out
    assert "/elsewhere/.mailslot" in out
    server = tomllib.loads((project / ".codex" / "config.toml").read_text())["mcp_servers"]
    assert server["mailslot"]["env"] == {"MAILSLOT_AGENT": "dev"}
    assert "only in a project you trust" in out
