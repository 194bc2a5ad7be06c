"""`mailslot hook pre-tool`: file reservations checked at edit time, before the client's tool runs.

Claude Code (PreToolUse), Codex (PreToolUse) and Gemini CLI (BeforeTool) run a hook before a
tool call and take a refusal from its stdout. For the tools that change files, this reads the
paths the call writes (`paths`): Claude Code's Edit, Write, MultiEdit and NotebookEdit, Codex's
apply_patch (its ``*** Add/Update/Delete File:`` and ``*** Move to:`` lines), Gemini's
write_file and replace, and every client's shell tool through `shell_writes`. Paths are taken
from the hook input's cwd to the top of the git worktree holding it (reservations are
relative to it, as the commit guard's), and checked with the commit guard's own rule
(`guard.conflicts`): a live exclusive reservation of another agent refuses the call, in the
client's own shape, with the holder, the reason, until when and what to do. The agent's own
reservations, shared ones, those of a holder that died, exited or went silent, and paths no
reservation covers pass, and so does everything outside the worktree.

Nothing is read from the mailbox unless the call writes a path in the worktree: a read, a
search or ``git status`` costs the parse of its input alone. Like every hook, it never breaks
its client: what it cannot read or decide lets the call through (the commit guard, `guard`,
stays as the last line).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mailslot.clients import guard, shell_writes
from mailslot.coordination.board import iso
from mailslot.coordination.reservations import THREAD
from mailslot.mailbox import Mailbox
from mailslot.store.errors import RootError

#: Per client, the tools the hook reads -> what their input is: "file" (tool_input.file_path),
#: "notebook" (notebook_path), "patch" (Codex's apply_patch text in command), "shell" (command).
#: `mcp-config --hooks` installs the hook for these tools alone (hook_configs.PRE_TOOL_MATCHERS).
TOOLS: dict[str, dict[str, str]] = {
    "claude-code": {"Edit": "file", "Write": "file", "MultiEdit": "file",
                    "NotebookEdit": "notebook", "Bash": "shell"},
    "codex": {"apply_patch": "patch", "Bash": "shell"},
    "gemini": {"write_file": "file", "replace": "file", "run_shell_command": "shell"},
}  # fmt: skip
MAX_LISTED = 5  # conflicts named in a refusal; the rest are counted
_PATCH_LINE = re.compile(r"^\*\*\* (?:Add File|Update File|Delete File|Move to): (.+)$", re.M)
_CLASS = re.compile(r"\[[^]/]*\]")


def paths(client: str, doc: dict[str, Any]) -> list[str]:
    """Return the paths the tool call in hook input doc writes, each joined to its cwd (a
    glob stays a glob); [] for a tool that writes nothing, or input it cannot read."""
    kind = TOOLS.get(client, {}).get(str(doc.get("tool_name")))
    given = doc.get("tool_input")
    cwd = doc.get("cwd")
    if kind is None or not isinstance(given, dict):
        return []
    base = cwd if isinstance(cwd, str) and os.path.isabs(cwd) else os.getcwd()
    if kind == "shell":
        command, where = given.get("command"), given.get("dir_path") or given.get("workdir")
        if isinstance(where, str) and where:
            base = os.path.join(base, where)
        return shell_writes.written(command, base) if isinstance(command, str) else []
    if kind == "patch":
        text = given.get("command")
        found = _PATCH_LINE.findall(text) if isinstance(text, str) else []
        return [os.path.join(base, p.strip()) for p in found]
    path = given.get("notebook_path" if kind == "notebook" else "file_path")
    return [os.path.join(base, path)] if isinstance(path, str) and path else []


def worktree_top(start: str) -> str | None:
    """Return the top of the git worktree holding start (where its .git is), if any."""
    here = os.path.realpath(start)
    while True:
        if os.path.lexists(os.path.join(here, ".git")):
            return here
        up = os.path.dirname(here)
        if up == here:
            return None
        here = up


def relative(path: str, top: str) -> str | None:
    """Return path from the worktree's top, as reservations name files; a folder as its
    contents (``dir/**``), a character class as ``?``. None for a path outside the worktree
    or one only the shell knows ($VAR, `cmd`)."""
    if "$" in path or "`" in path:
        return None
    path = os.path.expanduser(path)
    parent, name = os.path.split(os.path.normpath(path))
    full = os.path.join(os.path.realpath(parent), name)  # a symlinked folder, as git sees it
    rel = os.path.relpath(full, top).replace(os.sep, "/")
    if rel == ".":
        return "**"
    if rel == ".." or rel.startswith("../") or os.path.isabs(rel):
        return None
    rel = _CLASS.sub("?", rel)
    if "*" not in rel and "?" not in rel and os.path.isdir(full):
        rel += "/**"
    return rel


def check(client: str, agent: str, doc: dict[str, Any], find_root: Callable[[], Path]) -> str:
    """Return the hook's stdout for the tool call in doc: a refusal in client's shape if it
    writes a path another live agent reserved exclusively, else "". find_root gives the
    mailbox (called only when the call writes a path in a worktree)."""
    written = paths(client, doc)
    if not written:
        return ""
    cwd = doc.get("cwd")
    top = worktree_top(cwd if isinstance(cwd, str) and cwd else os.getcwd())
    try:
        root = find_root()
    except RootError:
        return ""  # no mailbox: nothing is reserved
    if top is None:
        top = os.path.realpath(root.parent)
    rel = list(dict.fromkeys(r for r in (relative(p, top) for p in written) if r is not None))
    if not rel:
        return ""
    with Mailbox(root, sweep=False) as box:
        found = guard.conflicts(box, agent, rel)
    if not found:
        return ""
    reason = refusal(found, shell=TOOLS[client][str(doc["tool_name"])] == "shell")
    if client == "gemini":
        return json.dumps({"decision": "deny", "reason": reason}, ensure_ascii=False) + "\n"
    out = {"hookEventName": "PreToolUse", "permissionDecision": "deny",
           "permissionDecisionReason": reason}  # fmt: skip
    return json.dumps({"hookSpecificOutput": out}, ensure_ascii=False) + "\n"


def refusal(found: list[guard.Conflict], *, shell: bool) -> str:
    """Return what the model reads when its call is refused: each path, who holds it under
    which pattern, until when and why, then what it can do."""
    what = "This command was not run" if shell else "This edit was not made"
    lines = [f"mailslot: {what}: it changes files another agent has reserved."]
    for c in found[:MAX_LISTED]:
        h = c.held
        pattern = "" if h.pattern == c.path else f" (as {h.pattern})"
        why = f": {h.reason}" if h.reason else " (no reason given)"
        lines.append(
            f"- {c.path}: reserved by {h.holder}{pattern} until {iso(c.until)}, "
            f"later while {h.holder} keeps working{why}"
        )
    if len(found) > MAX_LISTED:
        lines.append(f"- ... and {len(found) - MAX_LISTED} more")
    holders = list(dict.fromkeys(c.held.holder for c in found))
    first = found[0].path
    lines.append(
        f"To go on: ask {' and '.join(holders)}, e.g. msg_post(thread='{THREAD}', "
        f"to={holders!r}, content='may I change {first}?'); or wait for the reservation to "
        f"end (msg_wait(thread='{THREAD}') wakes when it changes; files_reserve is granted "
        "once it is free); or work on other files and files_reserve them first."
    )
    return "\n".join(lines)


__all__ = ["TOOLS", "check", "paths", "refusal", "relative", "worktree_top"]
