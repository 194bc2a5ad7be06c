"""The real clients read what the README and `mailslot mcp-config` give them.

Claude Code, Gemini CLI and Codex CLI, from npm (.ci/run installs pinned versions into
.ci/node/; MAILSLOT_CLAUDE, MAILSLOT_GEMINI, MAILSLOT_CODEX name other copies). Where one is
missing its test skips, and under CI=true fails: npm reaches these packages from CI, and none
needs an account for what is run here. Each client runs with a home folder of its own, so no
configuration of the user's is read or changed.

What each can show without a model: `claude mcp list` and `gemini mcp list` start every
configured server and say whether it connected (the server then holds its agent name, which
leaves the agent's card in the mailbox); `codex mcp list` only reads its config (Codex starts
MCP servers only in a session with a model, which needs a login).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import documentation

from mailslot import Mailbox

REPO = Path(__file__).resolve().parent.parent
README = documentation()  # the README and the docs/ pages it links
BIN = REPO / ".ci" / "node" / "node_modules" / ".bin"
SCRIPT = str(Path(sys.executable).parent / "mailslot")


def client(name: str) -> str:
    """Return the path of the real client called name; skip (fail under CI) if it is missing."""
    path = os.environ.get(f"MAILSLOT_{name.upper()}") or str(BIN / name)
    if not (Path(path).exists() and shutil.which("node")):
        reason = f"needs node and the real `{name}` (.ci/run installs it into .ci/node/)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true requires this test to run", pytrace=False)
        pytest.skip(reason)
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """Return a project folder holding a fresh mailbox, .mailslot/."""
    Mailbox.init(tmp_path / "project" / ".mailslot")
    return tmp_path / "project"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Return an environment with a home folder of its own and nothing sent home."""
    home = tmp_path / "home"
    home.mkdir()
    keep = {k: v for k, v in os.environ.items() if not k.startswith("MAILSLOT_") and k != "CI"}
    return keep | {
        "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
        "CODEX_HOME": str(home / ".codex"), "NO_COLOR": "1",
        "DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }  # fmt: skip


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, check=False)  # fmt: skip


def mailslot(*argv: str, cwd: Path, env: dict[str, str]) -> str:
    done = run([SCRIPT, *argv], cwd, env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def fill(text: str, root: Path) -> str:
    return text.replace("/ABS/PATH/TO/.venv/bin/mailslot", SCRIPT).replace(
        "/ABS/PATH/TO/project/.mailslot", str(root)
    )


def test_claude_code_runs_the_readme_line_and_connects(project: Path, env: dict[str, str]) -> None:
    claude = client("claude")
    root = project / ".mailslot"
    line = next(b for b in re.findall(r"```bash\n(.*?)```", README, re.S) if "claude mcp add" in b)
    argv = shlex.split(fill(line.strip(), root))
    added = run([claude, *argv[1:]], project, env)
    assert added.returncode == 0, added.stdout + added.stderr
    entry = json.loads((project / ".mcp.json").read_text())["mcpServers"]["mailslot"]
    assert entry["command"] == SCRIPT and entry["args"] == ["serve"]
    assert entry["env"] == {"MAILSLOT_ROOT": str(root), "MAILSLOT_AGENT": "claude"}
    assert entry["timeout"] == 600_000
    # What the README says: a server of .mcp.json waits for the user's approval.
    listed = run([claude, "mcp", "list"], project, env)
    assert re.search(r"mailslot: .*Pending approval", listed.stdout), listed.stdout
    assert "Pending approval" in README and "/mcp" in README

    # Servers of a project's .mcp.json wait for the user's approval; this approves them all.
    # (.claude/settings.local.json is read only in a folder the user trusted, so use the home.)
    settings = Path(env["HOME"]) / ".claude" / "settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text('{"enableAllProjectMcpServers": true}')
    listed = run([claude, "mcp", "list"], project, env)
    assert re.search(r"mailslot: .*Connected", listed.stdout), listed.stdout + listed.stderr
    assert Mailbox(root).agents.card("claude").name == "claude", "the server ran as the named agent"

    # What `mailslot mcp-config --install` writes there connects too.
    mailslot("mcp-config", "claude-code", "--install", "--agent", "claude-2", cwd=project, env=env)
    listed = run([claude, "mcp", "list"], project, env)
    assert re.search(r"mailslot: .*Connected", listed.stdout), listed.stdout + listed.stderr
    assert Mailbox(root).agents.card("claude-2").name == "claude-2"


def test_gemini_reads_an_installed_config_with_comments(project: Path, env: dict[str, str]) -> None:
    gemini = client("gemini")
    root = project / ".mailslot"
    settings = project / ".gemini" / "settings.json"
    settings.parent.mkdir()
    settings.write_text('{\n  // the user\'s own settings, kept\n  "ui": {"theme": "x"},\n}\n')
    mailslot("mcp-config", "gemini", "--install", cwd=project, env=env)
    assert "// the user's own settings, kept" in settings.read_text()
    # Gemini CLI starts no server of a folder the user has not trusted.
    trusted = Path(env["HOME"]) / ".gemini" / "trustedFolders.json"
    trusted.parent.mkdir(parents=True, exist_ok=True)
    trusted.write_text(json.dumps({str(project): "TRUST_FOLDER"}))
    listed = run([gemini, "mcp", "list"], project, env)
    out = listed.stdout + listed.stderr
    assert listed.returncode == 0 and re.search(r"mailslot: .*Connected", out), out
    assert Mailbox(root).agents.card("gemini").name == "gemini", "the server ran as the named agent"


def test_codex_reads_an_installed_config_and_the_readme_form(
    project: Path, env: dict[str, str]
) -> None:
    codex = client("codex")
    root = project / ".mailslot"
    config = Path(env["CODEX_HOME"]) / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('# mine\nmodel = "o3"\n')
    mailslot("mcp-config", "codex", "--install", "--path", str(config), cwd=project, env=env)
    listed = run([codex, "mcp", "list", "--json"], project, env)
    assert listed.returncode == 0, listed.stderr
    [server] = [s for s in json.loads(listed.stdout) if s["name"] == "mailslot"]
    assert server["enabled"] and server["transport"]["command"] == SCRIPT
    assert server["transport"]["args"] == ["serve"]
    # The mailbox is the project's .mailslot/: the server finds it from the project's folder.
    assert server["transport"]["env"] == {"MAILSLOT_AGENT": "codex"}
    assert server["tool_timeout_sec"] == 600
    assert config.read_text().startswith('# mine\nmodel = "o3"\n')

    # The README's `codex mcp add` form: the name, then the options, then the command.
    run([codex, "mcp", "remove", "mailslot"], project, env)
    added = run([codex, "mcp", "add", "mailslot", "--env", f"MAILSLOT_ROOT={root}", "--env",
                 "MAILSLOT_AGENT=codex", "--", SCRIPT, "serve"], project, env)  # fmt: skip
    assert added.returncode == 0, added.stderr
    got = run([codex, "mcp", "get", "mailslot", "--json"], project, env)
    assert json.loads(got.stdout)["transport"]["env"]["MAILSLOT_ROOT"] == str(root), got.stdout


def on_path(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Return env with `mailslot` on PATH (a folder holding only it)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    if not (bindir / "mailslot").exists():
        (bindir / "mailslot").symlink_to(SCRIPT)
    return env | {"PATH": f"{bindir}{os.pathsep}{env['PATH']}"}


def test_a_teammates_clone_connects_to_its_own_mailbox(
    project: Path, env: dict[str, str], tmp_path: Path
) -> None:
    """The files `mcp-config --install` writes with mailslot on PATH, copied to another path
    (a teammate's clone), start the server there on the clone's mailbox."""
    claude, gemini = client("claude"), client("gemini")
    env = on_path(env, tmp_path)
    mailslot("mcp-config", "claude-code", "--install", "--agent", "c1", cwd=project, env=env)
    mailslot("mcp-config", "gemini", "--install", "--agent", "g1", cwd=project, env=env)
    clone = tmp_path / "teammate" / "project"
    shutil.copytree(project, clone)
    settings = Path(env["HOME"]) / ".claude" / "settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text('{"enableAllProjectMcpServers": true}')
    trusted = Path(env["HOME"]) / ".gemini" / "trustedFolders.json"
    trusted.parent.mkdir(parents=True, exist_ok=True)
    trusted.write_text(json.dumps({str(clone): "TRUST_FOLDER"}))
    for argv in ([claude, "mcp", "list"], [gemini, "mcp", "list"]):
        listed = run(argv, clone, env)
        out = listed.stdout + listed.stderr
        assert re.search(r"mailslot: .*Connected", out), out
    for name in ("c1", "g1"):
        assert Mailbox(clone / ".mailslot").agents.card(name).name == name
        assert not (project / ".mailslot" / "agents" / f"{name}.json").exists()


def test_codex_in_two_projects_each_keeps_its_own(tmp_path: Path, env: dict[str, str]) -> None:
    """Installing in a second project does not repoint the first one's Codex."""
    codex = client("codex")
    env = on_path(env, tmp_path)
    config = Path(env["CODEX_HOME"]) / "config.toml"
    config.parent.mkdir(parents=True)
    projects = [tmp_path / "one", tmp_path / "two"]
    config.write_text("".join(f'[projects."{p}"]\ntrust_level = "trusted"\n\n' for p in projects))
    before = config.read_text()
    for p, agent in zip(projects, ("codex-1", "codex-2"), strict=True):
        Mailbox.init(p / ".mailslot")
        mailslot("mcp-config", "codex", "--install", "--agent", agent, cwd=p, env=env)
    assert config.read_text() == before
    for p, agent in zip(projects, ("codex-1", "codex-2"), strict=True):
        listed = run([codex, "mcp", "list", "--json"], p, env)
        assert listed.returncode == 0, listed.stderr
        [server] = [s for s in json.loads(listed.stdout) if s["name"] == "mailslot"]
        assert server["transport"]["command"] == "mailslot"
        assert server["transport"]["env"] == {"MAILSLOT_AGENT": agent}
