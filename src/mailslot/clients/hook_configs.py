"""Hooks in the clients' settings for `mcp-config --hooks`: mailslot's hook entries for Claude
Code, Codex and Gemini CLI, rendered, and merged into the files where the client reads them.

Other hooks and settings stay as they are; mailslot's own entries are found by what they run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mailslot.clients import textedit
from mailslot.clients.configs import JSONC_CLIENTS, Place, codex_home
from mailslot.clients.launch import hook_argv
from mailslot.store.errors import MailslotError

HOOK_CLIENTS = ("claude-code", "codex", "gemini")
# The client's event -> the `mailslot hook` event that handles it. Gemini CLI names Claude's
# UserPromptSubmit BeforeAgent and its Stop AfterAgent (its own `hooks migrate` maps them so).
# The pre-tool hook (reservations at edit time) runs only for the tools that change files and
# for shell commands (edit_guard.TOOLS): its group carries the client's matcher for them,
# names joined by | for Claude Code, a regular expression for Codex and Gemini CLI.
HOOK_EVENTS = {
    "claude-code": {"SessionStart": "session-start", "UserPromptSubmit": "prompt", "Stop": "stop",
                    "PreToolUse": "pre-tool"},
    "codex": {"SessionStart": "session-start", "UserPromptSubmit": "prompt", "Stop": "stop",
              "PreToolUse": "pre-tool"},
    "gemini": {"SessionStart": "session-start", "BeforeAgent": "prompt", "AfterAgent": "stop",
               "BeforeTool": "pre-tool"},
}  # fmt: skip
PRE_TOOL_MATCHERS = {
    "claude-code": "Edit|Write|MultiEdit|NotebookEdit|Bash",
    "codex": "^(apply_patch|Bash)$",
    "gemini": "^(write_file|replace|run_shell_command)$",
}
GEMINI_HOOK_TIMEOUT_MS = 10_000

HookArgv = Callable[[str, str, str, Path | None], list[str]]
"""(client, event, agent, root) -> the argv that runs `mailslot hook EVENT` for client."""


def bare_hook_argv(client: str, event: str, agent: str, root: Path | None = None) -> list[str]:
    """Return hook_argv's command run as `mailslot` from PATH, not by this installation's path."""
    argv = hook_argv(client, event, agent, root)
    return ["mailslot", *argv[argv.index("hook") :]]


def hook_options(at: Place | None, root: Path) -> dict[str, Any]:
    """Return the root and argv keywords of the hook functions for files placed by at."""
    options: dict[str, Any] = {"root": None if at and at.walk else root}
    if at and at.bare:
        options["argv"] = bare_hook_argv
    return options


def _shell(argv: list[str]) -> str:
    return subprocess.list2cmdline(argv) if os.name == "nt" else shlex.join(argv)


def _check_hooks(client: str, agent: str | None) -> str:
    if client not in HOOK_CLIENTS:
        raise MailslotError(
            f"{client} has no hooks mailslot can use: --hooks is for claude-code, codex and gemini"
        )
    if not agent:
        raise MailslotError(
            "--hooks needs the agent's name: pass --agent NAME (the name the server entry "
            "gets too), so the hooks read that agent's inbox"
        )
    return agent


def _argv(client: str, event: str, agent: str, root: Path | None, argv: HookArgv) -> list[str]:
    return argv(client, event, agent, root)


def hook_groups(
    client: str, agent: str | None, *, root: Path | None = None, argv: HookArgv = hook_argv
) -> dict[str, dict[str, Any]]:
    """Return {client event: mailslot's matcher group} for client's hooks file."""
    agent = _check_hooks(client, agent)
    groups: dict[str, dict[str, Any]] = {}
    for event, ours in HOOK_EVENTS[client].items():
        handler: dict[str, Any] = {
            "type": "command",
            "command": _shell(_argv(client, ours, agent, root, argv)),
        }
        tools = PRE_TOOL_MATCHERS[client] if ours == "pre-tool" else None
        if client == "gemini":  # matcher "*" is every source, prompt and turn; timeout in ms
            handler = {"name": "mailslot", **handler, "timeout": GEMINI_HOOK_TIMEOUT_MS}
            groups[event] = {"matcher": tools or "*", "hooks": [handler]}
        elif tools:  # the edit and shell tools alone
            groups[event] = {"matcher": tools, "hooks": [handler]}
        else:  # no matcher: SessionStart then fires for every source, the others have none
            groups[event] = {"hooks": [handler]}
    return groups


def notify_argv(agent: str, *, root: Path | None = None, argv: HookArgv = hook_argv) -> list[str]:
    """Return Codex's `notify` program: `mailslot hook notify --client codex --as AGENT`."""
    return _argv("codex", "notify", agent, root, argv)


def hooks_targets(
    client: str, project: Path, home: Path, at: Place | None = None
) -> dict[str, Path]:
    """Return where client's hooks go: {"hooks": file} and, for codex, {"notify": file}.

    Claude Code's go into .claude/settings.json, which a team commits, unless at says they
    hold this machine's paths: then into .claude/settings.local.json, this user's alone.
    """
    _check_hooks(client, "-")
    if client == "claude-code":
        name = "settings.json" if at is None or at.shared else "settings.local.json"
        return {"hooks": project / ".claude" / name}
    if client == "gemini":
        return {"hooks": project / ".gemini" / "settings.json"}
    # Codex reads hooks.json of a trusted project (and ~/.codex/); notify is one top-level key
    # of ~/.codex/config.toml, the file its server entry is in.
    return {"hooks": project / ".codex" / "hooks.json", "notify": codex_home(home) / "config.toml"}


def hooks_doc(
    client: str, agent: str | None, *, root: Path | None = None, argv: HookArgv = hook_argv
) -> dict[str, Any]:
    """Return mailslot's hook entries for client as data: {"hooks": ...} (+ "notify" for codex)."""
    doc: dict[str, Any] = {
        "hooks": {k: [g] for k, g in hook_groups(client, agent, root=root, argv=argv).items()}
    }
    if client == "codex":
        doc["notify"] = notify_argv(str(agent), root=root, argv=argv)
    return doc


def hooks_snippet(
    client: str,
    agent: str | None,
    project: Path,
    home: Path,
    *,
    root: Path | None = None,
    argv: HookArgv = hook_argv,
    at: Place | None = None,
) -> str:
    """Return what to add by hand: each file's path, then its hook entries."""
    doc = hooks_doc(client, agent, root=root, argv=argv)
    paths = hooks_targets(client, project, home, at)
    text = f"# {paths['hooks']} (merge into its hooks)\n"
    text += json.dumps({"hooks": doc["hooks"]}, indent=2, ensure_ascii=False) + "\n"
    if client == "codex":
        text += f"# {paths['notify']} (a top-level key, above every [table])\n"
        text += f"notify = {textedit.toml_value(doc['notify'])}\n"
    return text


def install_hooks(
    client: str,
    agent: str | None,
    project: Path,
    home: Path,
    *,
    root: Path | None = None,
    argv: HookArgv = hook_argv,
    at: Place | None = None,
) -> list[str]:
    """Merge mailslot's hooks into client's files; return lines saying what was done.

    Other hooks (of the same events too) and settings stay; mailslot's own entries are found
    by what they run and replaced, so installing twice changes nothing. MailslotError if a file
    cannot be read or merged safely (nothing is written to it then).
    """
    groups = hook_groups(client, agent, root=root, argv=argv)
    paths = hooks_targets(client, project, home, at)
    events = ", ".join(groups)
    how = _merge_hooks(paths["hooks"], client in JSONC_CLIENTS, groups)
    done = [f"{how} mailslot's {events} hooks (agent {agent!r}) in {paths['hooks']}"]
    if how == "unchanged":
        done = [f"mailslot's {events} hooks (agent {agent!r}) already in {paths['hooks']}"]
    if client == "codex":
        done.append("Codex runs them once you trust the project and review them in /hooks")
        notify = notify_argv(str(agent), root=root, argv=argv)
        done.append(_merge_notify(paths["notify"], notify))
    return done


def runs_mailslot_hook(words: list[str]) -> bool:
    """Tell whether argv words run `mailslot hook ...` (the script, or python -m mailslot)."""
    words = [w.strip('"') for w in words]
    if "hook" not in words:
        return False
    program = words[: words.index("hook")]
    if len(program) == 1:
        return program[0].replace("\\", "/").rsplit("/", 1)[-1].lower() in (
            "mailslot",
            "mailslot.exe",
        )
    return program[-2:] == ["-m", "mailslot"]


def _is_ours(handler: Any) -> bool:
    if not isinstance(handler, dict):
        return False
    if handler.get("name") == "mailslot":  # Gemini's handlers carry a name
        return True
    command = handler.get("command")
    if not isinstance(command, str):
        return False
    try:
        return runs_mailslot_hook(shlex.split(command, posix=os.name != "nt"))
    except ValueError:
        return False


def _has_ours(group: Any) -> bool:
    hooks = group.get("hooks") if isinstance(group, dict) else None
    return isinstance(hooks, list) and any(_is_ours(h) for h in hooks)


def _without_ours(groups: list[Any]) -> list[Any]:
    """Return groups with mailslot's handlers taken out, and groups left empty by that dropped."""
    kept: list[Any] = []
    for group in groups:
        if not _has_ours(group):
            kept.append(group)
            continue
        rest = [h for h in group["hooks"] if not _is_ours(h)]
        if rest:
            kept.append({**group, "hooks": rest})
    return kept


def _merge_hooks(path: Path, jsonc: bool, groups: dict[str, dict[str, Any]]) -> str:
    """Merge groups into the "hooks" of the JSON file at path; return 'added', 'updated' or
    'unchanged'. Only mailslot's entries change; other bytes stay where they can."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if not text.strip():
        new = json.dumps({"hooks": {k: [g] for k, g in groups.items()}}, indent=2) + "\n"
        textedit.write(path, new)
        return "added"
    doc, plain = textedit.read_json(path, text, jsonc)
    hooks = doc.get("hooks", {})
    if not isinstance(hooks, dict):
        raise MailslotError(f"{path}: 'hooks' is not an object; nothing was written")
    want = json.loads(json.dumps(doc))  # what the file must parse to afterwards
    want_hooks = want.setdefault("hooks", {})
    new, had, changed = text, False, False
    for event, group in groups.items():
        current = hooks.get(event)
        if current is None:
            want_hooks[event] = [group]
            new = textedit.put_member(new, plain, ["hooks", event], [group])
        elif not isinstance(current, list):
            raise MailslotError(f"{path}: hooks.{event} is not a list; nothing was written")
        else:
            ours = [i for i, g in enumerate(current) if _has_ours(g)]
            had = had or bool(ours)
            if [current[i] for i in ours] == [group]:
                continue  # there already, as it should be
            at = textedit.value_at(plain, ["hooks", event])
            if not ours:
                want_hooks[event] = [*current, group]
                new = textedit.append_element(new, plain, at, group)
            elif len(ours) == 1 and all(_is_ours(h) for h in current[ours[0]]["hooks"]):
                want_hooks[event] = [group if i == ours[0] else g for i, g in enumerate(current)]
                new = textedit.replace_element(new, plain, at, ours[0], group)
            else:  # ours mixed into other groups: rewrite this event's list
                want_hooks[event] = [*_without_ours(current), group]
                new = textedit.put_member(new, plain, ["hooks", event], want_hooks[event])
        changed = True
        plain = textedit.blank_comments(new) if jsonc else new
    if not changed:
        return "unchanged"
    try:
        merged = json.loads(textedit.strip_comments(new) if jsonc else new)
    except ValueError:
        merged = None
    if merged != want:
        raise MailslotError(
            f"could not merge into {path} safely, so nothing was written: add the hooks "
            "`mailslot mcp-config --hooks` prints to it by hand"
        )
    textedit.write(path, new)
    return "updated" if had else "added"


_TOML_HEADER = re.compile(r"\s*\[")
_TOML_NOTIFY = re.compile(r"\s*notify\s*=")


def _merge_notify(path: Path, notify: list[str]) -> str:
    """Set the top-level `notify` of Codex's config.toml at path to notify, unless it runs
    another program; return a line saying what was done."""
    import tomllib

    text = path.read_text(encoding="utf-8") if path.exists() else ""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise MailslotError(
            f"{path} is not valid TOML ({e}); fix it first, nothing was written"
        ) from None
    line = f"notify = {textedit.toml_value(notify)}"
    current = doc.get("notify")
    if current == notify:
        return f"Codex's notify already runs mailslot in {path}"
    ours = isinstance(current, list) and all(isinstance(w, str) for w in current)
    if current is not None and not (ours and runs_mailslot_hook(current)):
        return (
            f"not changed: {path} already sets notify to another program, and Codex runs "
            f"only one; to have it run mailslot's instead, put this line there:\n  {line}"
        )
    lines = text.splitlines()
    head = next((i for i, s in enumerate(lines) if _TOML_HEADER.match(s)), len(lines))
    if current is not None:  # ours, for another agent or installation: replace its line
        at = next((i for i in range(head) if _TOML_NOTIFY.match(lines[i])), None)
        new_lines = [*lines[:at], line, *lines[at + 1 :]] if at is not None else []
    else:  # above the first table (and the comments just above it)
        while head and lines[head - 1].lstrip().startswith("#"):
            head -= 1
        before, after = lines[:head], lines[head:]
        while before and not before[-1].strip():
            after.insert(0, before.pop())
        new_lines = [*before, line, *([""] if after and after[0].strip() else []), *after]
    new = "\n".join(new_lines) + "\n"
    try:
        merged = tomllib.loads(new)
    except tomllib.TOMLDecodeError:
        merged = None
    if merged != {**doc, "notify": notify}:
        raise MailslotError(
            f"could not set notify in {path} safely, so nothing was written: add this line "
            f"at its top, above every [table]:\n  {line}"
        )
    textedit.write(path, new)
    return f"{'updated' if current is not None else 'added'} Codex's notify in {path}"
