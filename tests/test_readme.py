"""The README and docs/ tell the truth: their commands and examples run, every command is
documented, every link leads somewhere."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import documentation

from mailslot.cli import parser

README = Path(__file__).resolve().parent.parent / "README.md"
README_TEXT = README.read_text(encoding="utf-8")
PAGES = [README, *sorted((README.parent / "docs").glob("*.md"))]
TEXT = documentation()  # the README and every docs/ page


def blocks(lang: str, text: str = TEXT) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_examples_run_and_print_what_they_say(tmp_path: Path, index: int) -> None:
    code = blocks("python")[index]
    after = TEXT[TEXT.index(code) + len(code) :]
    shown = re.match(r"```\n\nprints\n\n```text\n(.*?)```", after, flags=re.S)
    assert shown, "each Python example is followed by what it prints"
    for _ in range(2):  # pasted again, in the same folder, it runs again and prints the same
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
            check=False, env={**os.environ, "TMPDIR": str(tmp_path)},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout == shown.group(1)


def test_run_command_works(tmp_path: Path) -> None:
    run = next(b for b in blocks("bash", README_TEXT) if "mailslot demo" in b).strip()
    prefix = "python3 -m venv .venv && .venv/bin/pip install . && "
    assert run.startswith(prefix)
    bindir = Path(sys.executable).parent
    script = run[len(prefix) :].replace(".venv/bin/mailslot", str(bindir / "mailslot"))
    # As in the shell that ran the README's line: the venv is not active, so PATH has no
    # mailslot (and no MAILSLOT_ROOT is set).
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != bindir)
    env = {k: v for k, v in os.environ.items() if k != "MAILSLOT_ROOT"}
    env |= {"TMPDIR": str(tmp_path), "PATH": path, "HOME": str(tmp_path / "home")}
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "planner → coder: [task]" in out and "state review → closed" in out
    # What the demo says to run next works as printed, in that same shell, and fits 100 columns.
    tail = out[out.index("Look next:") :].splitlines()[1:]
    assert tail and all(len(line) <= 100 for line in tail), tail
    look = [line.strip() for line in tail[: tail.index(next(t for t in tail if t[:2] != "  "))]]
    wire = [line.strip() for line in tail if line.startswith("  ")][len(look) :]
    assert look[0].startswith("cd ") and any(" read " in line for line in look), look
    shown = subprocess.run(["bash", "-ec", "\n".join(look)], cwd=tmp_path, capture_output=True,
                           text=True, check=False, env=env, timeout=60)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "Looks good" in shown.stdout and "reviewer" in shown.stdout
    project = tmp_path / "project"
    project.mkdir()
    wired = subprocess.run(["bash", "-ec", "\n".join(wire)], cwd=project, capture_output=True,
                           text=True, check=False, env=env, timeout=60)  # fmt: skip
    assert wired.returncode == 0, wired.stderr
    # mailslot is not on PATH there: Claude Code's entry goes to the project's local scope.
    local = json.loads((tmp_path / "home" / ".claude.json").read_text())
    assert "mailslot" in local["projects"][str(project.resolve())]["mcpServers"]
    assert (project / ".mailslot" / "mailslot.json").exists()
    # Every file the folder's tree (docs/format.md) shows exists in the root the demo made.
    tree = next(b for b in blocks("text") if "mailslot.json" in b)
    for name in (
        "mailslot.json",
        ".gitignore",
        "coder.json",
        "planner.json",
        "thread.json",
        "000001.json",
        "000009.json",
        "add-a-version-flag-to-the-cli",
    ):
        assert name in tree and name in out, name


def test_test_command_is_what_ci_runs() -> None:
    test_cmd = next(b for b in blocks("bash", README_TEXT) if "pytest" in b).strip()
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert test_cmd in ci


@pytest.mark.parametrize("command", sorted(parser()._subparsers._group_actions[0].choices))  # type: ignore[union-attr]
def test_every_command_is_documented(command: str) -> None:
    assert f"`mailslot {command}" in TEXT, f"README and docs/ lack `mailslot {command}`"


def _snippets() -> list[tuple[str, dict]]:
    import tomllib

    out = []
    for block in blocks("json"):
        doc = json.loads(block)
        servers = doc.get("mcpServers") or doc.get("servers")
        if servers:
            out.append(("json", servers["mailslot"]))
    for block in blocks("toml"):
        out.append(("toml", tomllib.loads(block)["mcp_servers"]["mailslot"]))
    return out


def _fill(value: str, root: Path) -> str:
    bindir = Path(sys.executable).parent
    return value.replace("/ABS/PATH/TO/.venv/bin/mailslot", str(bindir / "mailslot")).replace(
        "/ABS/PATH/TO/project/.mailslot", str(root)
    )


def test_every_client_is_configured() -> None:
    kinds = [kind for kind, _ in _snippets()]
    assert kinds.count("json") == 4 and kinds.count("toml") == 1
    assert '"servers"' in TEXT and "mcp_servers.mailslot" in TEXT and "claude mcp add" in TEXT


@pytest.mark.parametrize("index", range(5))
def test_config_snippets_start_the_server(tmp_path: Path, index: int) -> None:
    import anyio
    from mcp import StdioServerParameters
    from mcp.client import Client

    from mailslot import Mailbox

    _, entry = _snippets()[index]
    root = tmp_path / "project" / ".mailslot"
    Mailbox.init(root)
    env = {k: _fill(v, root) for k, v in entry["env"].items()}
    env["XDG_CONFIG_HOME"] = os.environ["XDG_CONFIG_HOME"]  # the server's key: the test's
    params = StdioServerParameters(
        command=_fill(entry["command"], root), args=entry["args"], env=env, cwd=str(tmp_path)
    )

    async def main() -> dict:
        async with Client(params, cache=None) as c:
            result = await c.call_tool("bus_get_config", {})
            return json.loads(result.content[0].text)  # type: ignore[union-attr]

    config = anyio.run(main)
    assert config["agent"] == env["MAILSLOT_AGENT"]
    assert config["root"] == str(root)


def test_claude_mcp_add_matches_the_json() -> None:
    """The README's `claude mcp add-json` line adds the JSON snippet's entry, timeout and all
    (tests/test_clients_real.py runs this line with the real claude)."""
    line = next(b for b in blocks("bash") if "claude mcp add" in b).strip()
    words = shlex.split(line)
    assert words[:6] == ["claude", "mcp", "add-json", "--scope", "project", "mailslot"]
    _, entry = _snippets()[0]
    assert json.loads(words[6]) == entry and entry["timeout"] == 600_000


def test_connect_three_agents_writes_each_clients_file(tmp_path: Path) -> None:
    """The README's three `mcp-config --install` lines, run in a project with mailslot on PATH,
    leave one entry per client, each naming its agent and `mailslot`, with no root in it."""
    import tomllib

    block = next(b for b in blocks("sh", README_TEXT) if "mcp-config" in b)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "mailslot").symlink_to(Path(sys.executable).parent / "mailslot")
    env = {k: v for k, v in os.environ.items() if k not in ("MAILSLOT_ROOT", "MAILSLOT_AGENT")}
    env |= {"PATH": f"{bindir}{os.pathsep}{env['PATH']}", "HOME": str(tmp_path / "home")}
    project = tmp_path / "project"
    project.mkdir()
    done = subprocess.run(["bash", "-ec", block], cwd=project, capture_output=True, text=True,
                          check=False, env=env, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (project / ".mailslot" / "mailslot.json").exists()
    claude = json.loads((project / ".mcp.json").read_text())["mcpServers"]["mailslot"]
    codex = tomllib.loads((project / ".codex" / "config.toml").read_text())["mcp_servers"]
    gemini = json.loads((project / ".gemini" / "settings.json").read_text())["mcpServers"]
    for entry, agent in ((claude, "planner"), (codex["mailslot"], "coder"),
                         (gemini["mailslot"], "reviewer")):  # fmt: skip
        assert entry["command"] == "mailslot" and entry["args"] == ["serve"]
        assert entry["env"] == {"MAILSLOT_AGENT": agent}


def _prose(text: str) -> str:
    """Return text without its code blocks and inline code, where brackets are not links."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", text, flags=re.S))


def _anchors(text: str) -> set[str]:
    """Return the anchors GitHub gives text's headings."""
    titles = re.findall(r"^#{1,6} (.+)$", re.sub(r"```.*?```", "", text, flags=re.S), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", t.strip().lower()).replace(" ", "-") for t in titles}


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {target.partition("#")[0] for target in re.findall(r"\]\(([^)]+)\)", README_TEXT)}
    assert len(PAGES) > 1
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in linked, f"the README does not link docs/{page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page: Path) -> None:
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target} leads to no file"
        if anchor:
            headings = _anchors(linked.read_text(encoding="utf-8"))
            assert anchor in headings, f"{page.name}: {target} leads to no heading"
