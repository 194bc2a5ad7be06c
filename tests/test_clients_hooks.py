"""`mcp-config --hooks` and `--channel`: mailslot's hooks merged into Claude Code's, Codex's and
Gemini CLI's files, next to what is there; the channel flag on Claude Code's server entry."""

from __future__ import annotations

import json
import os
import shlex
import tomllib
from pathlib import Path

import pytest

from mailslot.clients import configs, textedit
from mailslot.clients.hook_configs import hooks_snippet, install_hooks
from mailslot.clients.launch import hook_argv, serve_command
from mailslot.store.errors import MailslotError

EVENTS = {
    "claude-code": {"SessionStart": "session-start", "UserPromptSubmit": "prompt", "Stop": "stop",
                    "PreToolUse": "pre-tool"},
    "codex": {"SessionStart": "session-start", "UserPromptSubmit": "prompt", "Stop": "stop",
              "PreToolUse": "pre-tool"},
    "gemini": {"SessionStart": "session-start", "BeforeAgent": "prompt", "AfterAgent": "stop",
               "BeforeTool": "pre-tool"},
}  # fmt: skip
#: The pre-tool hook runs for the edit and shell tools alone (tests/test_edit_guard.py).
TOOLS_MATCHER = {"claude-code": "Edit|Write|MultiEdit|NotebookEdit|Bash",
                 "codex": "^(apply_patch|Bash)$",
                 "gemini": "^(write_file|replace|run_shell_command)$"}  # fmt: skip
FILES = {"claude-code": ".claude/settings.json", "codex": ".codex/hooks.json",
         "gemini": ".gemini/settings.json"}  # fmt: skip


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "project").mkdir()
    return tmp_path / "project"


def program(event: str, client: str, agent: str) -> list[str]:
    """The argv that runs `mailslot hook EVENT --client CLIENT --as AGENT` here (Codex appends
    its payload to notify's, so there the event comes last)."""
    options = ["--client", client, "--as", agent]
    if event == "notify":
        return [*serve_command()[:-1], "hook", *options, event]
    return [*serve_command()[:-1], "hook", event, *options]


def load(client: str, path: Path) -> dict:
    text = path.read_text()
    return json.loads(textedit.strip_comments(text) if client == "gemini" else text)


def ours(client: str, doc: dict, event: str) -> list[dict]:
    """Every handler in doc's hooks.event that runs `mailslot hook`."""
    return [h for g in doc["hooks"].get(event, []) for h in g["hooks"]
            if "hook" in shlex.split(h["command"])]  # fmt: skip


def check_ours(client: str, doc: dict, agent: str) -> None:
    for event, name in EVENTS[client].items():
        [handler] = ours(client, doc, event)
        assert shlex.split(handler["command"]) == program(name, client, agent)
        [group] = [g for g in doc["hooks"][event] if handler in g["hooks"]]
        tools = TOOLS_MATCHER[client] if name == "pre-tool" else None
        if client == "gemini":
            assert group == {"matcher": tools or "*", "hooks": [handler]}
            assert handler == {"name": "mailslot", "type": "command",
                               "command": handler["command"], "timeout": 10_000}  # fmt: skip
        elif tools:
            assert group == {"matcher": tools, "hooks": [handler]}
        else:
            assert group == {"hooks": [handler]}
            assert handler == {"type": "command", "command": handler["command"]}


def test_the_hook_command_is_this_installation(home: Path) -> None:
    argv = hook_argv("claude-code", "stop", "c1")
    assert argv == program("stop", "claude-code", "c1")
    assert Path(argv[0]).is_absolute() and os.access(argv[0], os.X_OK)


@pytest.mark.parametrize("client", ["claude-code", "codex", "gemini"])
def test_install_into_an_empty_project_then_twice(client: str, project: Path, home: Path) -> None:
    done = install_hooks(client, "worker-1", project, home)
    path = project / FILES[client]
    assert done[0].startswith("added ") and str(path) in done[0]
    check_ours(client, load(client, path), "worker-1")
    before = path.read_text()
    again = install_hooks(client, "worker-1", project, home)
    assert "already in" in again[0] and path.read_text() == before

    # Another agent's name: mailslot's entries are replaced, not added to.
    assert install_hooks(client, "worker-2", project, home)[0].startswith("updated ")
    check_ours(client, load(client, path), "worker-2")


@pytest.mark.parametrize("client", ["claude-code", "codex", "gemini"])
def test_other_hooks_and_settings_survive(client: str, project: Path, home: Path) -> None:
    path = project / FILES[client]
    path.parent.mkdir(parents=True)
    prompt = "BeforeAgent" if client == "gemini" else "UserPromptSubmit"
    after = "AfterTool" if client == "gemini" else "PostToolUse"  # an event mailslot leaves alone
    other_group = '{ "matcher": "Bash",  "hooks": [ {"type": "command", "command": "lint.sh"} ] }'
    original = (
        "{\n"
        '    "model":   "opus",\n'
        '    "permissions": {"allow": ["Bash(ls:*)"]},\n'
        '    "hooks": {\n'
        f'        "{after}": [ {other_group} ],\n'
        f'        "{prompt}": [\n'
        '            {"hooks": [{"type": "command", "command": "echo hi"}]}\n'
        "        ]\n"
        "    }\n"
        "}\n"
    )
    path.write_text(original)
    install_hooks(client, "w", project, home)
    text = path.read_text()
    doc = load(client, path)
    check_ours(client, doc, "w")
    # Every line of the old file is still there as it was (one gained a comma, as it must).
    for line in original.splitlines():
        assert line in text, line
    assert f'        "{after}": [ {other_group} ],\n' in text
    assert doc["model"] == "opus" and doc["permissions"] == {"allow": ["Bash(ls:*)"]}
    assert doc["hooks"][prompt][0] == {"hooks": [{"type": "command", "command": "echo hi"}]}
    assert len(doc["hooks"][prompt]) == 2, "the other hook of the same event stays first"
    assert list(doc["hooks"]) == [after, prompt, *(e for e in EVENTS[client]
                                                         if e != prompt)]  # fmt: skip

    # Installed again, and for another name: the other hooks are untouched, one entry each.
    first = path.read_text()
    install_hooks(client, "w", project, home)
    assert path.read_text() == first
    install_hooks(client, "v", project, home)
    doc = load(client, path)
    check_ours(client, doc, "v")
    assert doc["hooks"][prompt][0] == {"hooks": [{"type": "command", "command": "echo hi"}]}
    assert f'        "{after}": [ {other_group} ],\n' in path.read_text()


def test_gemini_keeps_comments_and_the_server_entry(project: Path, home: Path) -> None:
    path = project / ".gemini" / "settings.json"
    path.parent.mkdir()
    path.write_text('{\n  // my theme\n  "ui": {"theme": "x"}, /* kept */\n}\n')
    configs.install("gemini", path, project / ".mailslot", "gemini")
    install_hooks("gemini", "gemini", project, home)
    install_hooks("gemini", "gemini", project, home)
    text = path.read_text()
    assert "// my theme" in text and "/* kept */" in text
    doc = load("gemini", path)
    assert doc["ui"] == {"theme": "x"} and "mailslot" in doc["mcpServers"]
    check_ours("gemini", doc, "gemini")


def test_a_one_line_file_and_a_mixed_group(project: Path, home: Path) -> None:
    path = project / ".claude" / "settings.json"
    path.parent.mkdir()
    path.write_text('{"hooks": {"Stop": [{"hooks": [{"type": "command", "command": "x"}]}]}}\n')
    install_hooks("claude-code", "a", project, home)
    doc = load("claude-code", path)
    check_ours("claude-code", doc, "a")
    assert doc["hooks"]["Stop"][0] == {"hooks": [{"type": "command", "command": "x"}]}

    # Someone put our handler into a group of theirs: theirs stays, ours is taken out of it.
    stop = doc["hooks"]["Stop"]
    stop[0]["hooks"].append(stop.pop()["hooks"][0])
    path.write_text(json.dumps(doc, indent=2))
    install_hooks("claude-code", "b", project, home)
    doc = load("claude-code", path)
    check_ours("claude-code", doc, "b")
    assert doc["hooks"]["Stop"][0] == {"hooks": [{"type": "command", "command": "x"}]}


def test_unreadable_files_are_left_alone(project: Path, home: Path) -> None:
    path = project / ".claude" / "settings.json"
    path.parent.mkdir()
    path.write_text("{not json")
    with pytest.raises(MailslotError, match="not valid JSON"):
        install_hooks("claude-code", "a", project, home)
    path.write_text('{"hooks": []}')
    with pytest.raises(MailslotError, match="'hooks' is not an object"):
        install_hooks("claude-code", "a", project, home)
    path.write_text('{"hooks": {"Stop": {}}}')
    with pytest.raises(MailslotError, match=r"hooks\.Stop is not a list"):
        install_hooks("claude-code", "a", project, home)
    assert path.read_text() == '{"hooks": {"Stop": {}}}'


# ---------------------------------------------------------------- codex notify


def test_codex_notify_goes_above_the_tables(project: Path, home: Path) -> None:
    config = home / ".codex" / "config.toml"
    config.parent.mkdir()
    original = ('# mine\nmodel = "o3"\n\n# servers\n[mcp_servers.other]\ncommand = "x"\n'
                '\n[mcp_servers.other.env]\nA = "1"\n')  # fmt: skip
    config.write_text(original)
    done = install_hooks("codex", "cx", project, home)
    assert any(line.startswith("added Codex's notify") for line in done), done
    text = config.read_text()
    parsed = tomllib.loads(text)
    assert parsed["notify"] == program("notify", "codex", "cx")
    assert parsed["model"] == "o3" and parsed["mcp_servers"]["other"]["env"] == {"A": "1"}
    assert text.startswith('# mine\nmodel = "o3"\nnotify = [')
    assert text.endswith('\n\n# servers\n[mcp_servers.other]\ncommand = "x"\n'
                         '\n[mcp_servers.other.env]\nA = "1"\n')  # fmt: skip

    install_hooks("codex", "cx", project, home)
    assert config.read_text() == text and text.count("notify =") == 1
    # With the server entry installed after it, and for another name: one notify, replaced.
    configs.install("codex", config, project / ".mailslot", "cx")
    done = install_hooks("codex", "cy", project, home)
    assert any(line.startswith("updated Codex's notify") for line in done), done
    text = config.read_text()
    assert text.count("notify =") == 1
    parsed = tomllib.loads(text)
    assert parsed["notify"] == program("notify", "codex", "cy")
    assert "mailslot" in parsed["mcp_servers"] and "other" in parsed["mcp_servers"]


@pytest.mark.parametrize("start", ["", "[tui]\nnotifications = true\n", 'model = "o3"\n'])
def test_codex_notify_in_small_files(start: str, project: Path, home: Path) -> None:
    config = home / ".codex" / "config.toml"
    config.parent.mkdir()
    config.write_text(start)
    install_hooks("codex", "cx", project, home)
    parsed = tomllib.loads(config.read_text())
    assert parsed == {**tomllib.loads(start), "notify": program("notify", "codex", "cx")}


def test_codex_notify_of_another_program_is_kept(project: Path, home: Path) -> None:
    config = home / ".codex" / "config.toml"
    config.parent.mkdir()
    config.write_text('notify = ["python3", "/x/notify.py"]\n')
    done = install_hooks("codex", "cx", project, home)
    [said] = [line for line in done if "notify =" in line]
    assert said.startswith("not changed:") and "another program" in said
    assert config.read_text() == 'notify = ["python3", "/x/notify.py"]\n'
    line = said.splitlines()[-1].strip()
    assert tomllib.loads(line)["notify"] == program("notify", "codex", "cx")
    assert (project / ".codex" / "hooks.json").exists(), "the hooks went in all the same"


def test_codex_broken_config_is_refused(project: Path, home: Path) -> None:
    config = home / ".codex" / "config.toml"
    config.parent.mkdir()
    config.write_text("model = \n")
    with pytest.raises(MailslotError, match="not valid TOML"):
        install_hooks("codex", "cx", project, home)
    assert config.read_text() == "model = \n"


# ---------------------------------------------------------------- printing, refusals, channel


@pytest.mark.parametrize("client", ["claude-code", "codex", "gemini"])
def test_snippet_says_where_and_what(client: str, project: Path, home: Path) -> None:
    text = hooks_snippet(client, "w", project, home)
    head, *rest = text.split("\n", 1)
    assert head == f"# {project / FILES[client]} (merge into its hooks)"
    body = rest[0]
    if client == "codex":
        body, notify = body.split(f"# {home / '.codex' / 'config.toml'}")
        assert tomllib.loads(notify.split("\n", 1)[1])["notify"] == program("notify", "codex", "w")
    check_ours(client, json.loads(body), "w")


@pytest.mark.parametrize("client", ["cursor", "vscode", "claude-desktop"])
def test_hooks_for_a_client_without_them(client: str, project: Path, home: Path) -> None:
    with pytest.raises(MailslotError, match="is for claude-code, codex and gemini"):
        install_hooks(client, "w", project, home)
    with pytest.raises(MailslotError, match="has no hooks"):
        hooks_snippet(client, "w", project, home)
    assert not list(project.iterdir())


@pytest.mark.parametrize("agent", [None, ""])
def test_hooks_need_an_agent(agent: str | None, project: Path, home: Path) -> None:
    with pytest.raises(MailslotError, match="pass --agent NAME"):
        install_hooks("claude-code", agent, project, home)
    with pytest.raises(MailslotError, match="pass --agent NAME"):
        hooks_snippet("gemini", agent, project, home)
    assert not list(project.iterdir())


def test_channel_adds_the_flag_for_claude_code(project: Path) -> None:
    root = project / ".mailslot"
    server = configs.entry("claude-code", root, "c", channel=True)
    assert server["args"][-2:] == ["serve", "--channel"]
    assert server["command"] == serve_command()[0]
    assert configs.entry("claude-code", root, "c")["args"][-1] == "serve"
    rendered = json.loads(configs.render("claude-code", root, "c", channel=True))
    assert rendered["mcpServers"]["mailslot"] == server
    path = project / ".mcp.json"
    path.write_text('{"mcpServers": {"other": {"command": "x"}}}')
    configs.install("claude-code", path, root, "c", channel=True)
    doc = json.loads(path.read_text())
    assert doc["mcpServers"]["mailslot"]["args"][-1] == "--channel"
    assert doc["mcpServers"]["other"] == {"command": "x"}
    assert "claude --dangerously-load-development-channels server:mailslot" in (
        configs.channel_hint()
    )


@pytest.mark.parametrize("client", ["cursor", "vscode", "codex", "gemini", "claude-desktop"])
def test_channel_for_other_clients_is_refused(client: str, project: Path) -> None:
    with pytest.raises(MailslotError, match="--channel is for claude-code only"):
        configs.render(client, project / ".mailslot", "x", channel=True)
    with pytest.raises(MailslotError, match="--channel is for claude-code only"):
        configs.install(client, project / "f.json", project / ".mailslot", "x", channel=True)
    assert not (project / "f.json").exists()


def test_a_given_command_and_root(project: Path, home: Path) -> None:
    def module(client: str, event: str, agent: str, root: Path | None) -> list[str]:
        return ["/usr/bin/python3", "-m", "mailslot", "hook", event, "--client", client,
                "--as", agent, "--root", str(root)]  # fmt: skip

    root = project / ".mailslot"
    install_hooks("claude-code", "a", project, home, root=root, argv=module)
    doc = load("claude-code", project / FILES["claude-code"])
    [stop] = ours("claude-code", doc, "Stop")
    assert shlex.split(stop["command"]) == module("claude-code", "stop", "a", root)
    install_hooks("claude-code", "a", project, home, root=root)
    [stop] = ours("claude-code", load("claude-code", project / FILES["claude-code"]), "Stop")
    assert shlex.split(stop["command"]) == [*program("stop", "claude-code", "a"), "--root",
                                            str(root)]  # fmt: skip
    # The script's entries replace the `python -m mailslot` ones: both are mailslot's.
    install_hooks("claude-code", "a", project, home)
    check_ours("claude-code", load("claude-code", project / FILES["claude-code"]), "a")
