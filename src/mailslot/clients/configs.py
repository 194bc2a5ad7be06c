"""MCP client configurations for `mailslot serve`: render them, and merge them into place.

Merging edits the client's file as text: our entry goes in or is replaced, and every other
byte (other servers, settings, comments, formatting) stays as it was. What cannot be parsed
is refused, and nothing is written unless the edited file parses to the old one plus our entry.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailslot.clients import textedit
from mailslot.clients.launch import serve_command
from mailslot.store.errors import MailslotError

CLIENTS = ("claude-code", "cursor", "vscode", "codex", "gemini", "claude-desktop")
AGENT_NAMES = {
    "claude-code": "claude", "cursor": "cursor", "vscode": "copilot", "codex": "codex",
    "gemini": "gemini", "claude-desktop": "claude-desktop",
}  # fmt: skip
# Clients that read their JSON file as JSONC (comments, trailing commas): VS Code documents
# it for mcp.json, and Gemini CLI was seen to load a commented settings.json. Claude Code
# refuses a commented .mcp.json, so for the others a comment is an error, as it is for them.
JSONC_CLIENTS = ("vscode", "gemini")
CHANNEL_CLIENTS = ("claude-code",)
CHANNEL_LAUNCH = "claude --dangerously-load-development-channels server:mailslot"


# Clients that start a stdio server in the project's folder (checked with the real ones, and
# Codex by its documentation), so `mailslot serve` finds the project's .mailslot/ there by
# walking up, as git finds .git: their files need no MAILSLOT_ROOT.
WALK_CLIENTS = ("claude-code", "gemini", "codex")
# Clients whose configuration is one file per user, never committed with a project.
USER_CLIENTS = ("claude-desktop",)


@dataclass(frozen=True)
class Place:
    """What the written files may leave to the machine they are read on.

    bare: `mailslot` is on PATH, so files name it so (a teammate's clone runs theirs), not by
    this installation's absolute path. walk: the mailbox is the project's .mailslot/, which the
    server finds from the project's folder, so no absolute MAILSLOT_ROOT.
    """

    bare: bool
    walk: bool

    @property
    def shared(self) -> bool:
        """Tell whether the entry holds nothing of this machine (a team may commit it)."""
        return self.bare and self.walk


def place(client: str, root: Path, project: Path) -> Place:
    """Return how client's files for the mailbox at root, used from project, are written."""
    if client in USER_CLIENTS:
        return Place(bare=False, walk=False)
    walk = client in WALK_CLIENTS and root == project / ".mailslot"
    return Place(bare=shutil.which("mailslot") is not None, walk=walk)


def entry(
    client: str, root: Path, agent: str, *, channel: bool = False, at: Place | None = None
) -> dict[str, Any]:
    """Return the server entry for client: command, args and environment.

    Absolute paths, unless at says the command is on PATH (then `mailslot`) or the root is
    found from the project (then no MAILSLOT_ROOT). channel adds `serve --channel` (Claude
    Code only; MailslotError for the others).
    """
    if channel and client not in CHANNEL_CLIENTS:
        raise MailslotError(
            f"--channel is for claude-code only: {client} has no channels (Claude Code's "
            "channels let a server push messages into the session)"
        )
    command, *args = ["mailslot", "serve"] if at and at.bare else serve_command()
    if channel:
        args.append("--channel")
    out: dict[str, Any] = {}
    if client in ("claude-code", "vscode"):
        out["type"] = "stdio"
    env = {"MAILSLOT_AGENT": agent} if at and at.walk else {
        "MAILSLOT_ROOT": str(root), "MAILSLOT_AGENT": agent}  # fmt: skip
    out |= {"command": command, "args": args, "env": env}
    if client in ("claude-code", "gemini"):
        out["timeout"] = 600_000  # ms; lets msg_wait run past the usual 60 s
    if client == "codex":
        out |= {"startup_timeout_sec": 20, "tool_timeout_sec": 600}
    return out


def render(
    client: str, root: Path, agent: str, *, channel: bool = False, at: Place | None = None
) -> str:
    """Return the configuration text for client, as its file holds it."""
    server = entry(client, root, agent, channel=channel, at=at)
    if client == "codex":
        return textedit.toml_table(server)
    key = _servers_key(client)
    return json.dumps({key: {"mailslot": server}}, indent=2) + "\n"


def codex_home(home: Path) -> Path:
    """Return Codex's own folder: $CODEX_HOME, else ~/.codex."""
    return Path(os.environ.get("CODEX_HOME") or home / ".codex")


def target(client: str, project: Path, home: Path, at: Place | None = None) -> Path:
    """Return the file client reads its MCP servers from (project files where there are).

    Claude Code's entry goes into the project's .mcp.json, which a team commits, unless at
    says it holds this machine's paths: then into the project's local scope in ~/.claude.json
    (see keys), which wins over .mcp.json and is this user's alone.
    """
    if client == "claude-code":
        return project / ".mcp.json" if at is None or at.shared else home / ".claude.json"
    if client == "cursor":
        return project / ".cursor" / "mcp.json"
    if client == "vscode":
        return project / ".vscode" / "mcp.json"
    if client == "gemini":
        return project / ".gemini" / "settings.json"
    if client == "codex":  # the project's, read in a project the user trusts; never the global
        return project / ".codex" / "config.toml"
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "Claude" / "claude_desktop_config.json"
    if os.name == "nt":
        return Path(os.environ.get("APPDATA", home)) / "Claude" / "claude_desktop_config.json"
    return home / ".config" / "Claude" / "claude_desktop_config.json"


def keys(client: str, path: Path, project: Path, home: Path) -> list[str]:
    """Return where in the JSON file at path client's mailslot entry goes: the project's
    local scope in ~/.claude.json, else under the servers key."""
    if client == "claude-code" and path == home / ".claude.json":
        return ["projects", str(project), "mcpServers", "mailslot"]
    return [_servers_key(client), "mailslot"]


def _servers_key(client: str) -> str:
    """Return the key client's JSON file holds its MCP servers under."""
    return "servers" if client == "vscode" else "mcpServers"


def install(
    client: str,
    path: Path,
    root: Path,
    agent: str,
    *,
    channel: bool = False,
    at: Place | None = None,
    where: list[str] | None = None,
) -> str:
    """Merge mailslot's entry into the config file at path; return 'added', 'updated' or
    'unchanged' (the file already says it all: nothing is written).

    where is the entry's place in a JSON file (default: under the servers key). Other servers
    and settings in the file are kept as they are. Raise MailslotError if the file cannot be
    read as the format it should have (nothing is written then).
    """
    server = entry(client, root, agent, channel=channel, at=at)
    where = where or [_servers_key(client), "mailslot"]
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if client == "codex":
        had, new = _merged_toml(path, text, server)
    elif not text.strip():
        nested: Any = server
        for key in reversed(where):
            nested = {key: nested}
        had, new = False, json.dumps(nested, indent=2) + "\n"
    else:
        had, new = _merged_json(client, path, text, where, server)
    if had and new == text:
        return "unchanged"
    textedit.write(path, new)
    return "updated" if had else "added"


def _merged_toml(path: Path, text: str, server: dict[str, Any]) -> tuple[bool, str]:
    """Return whether Codex's config.toml text (of path) had our table, and text with server
    as our table. Raise MailslotError if text is not valid TOML."""
    import tomllib  # only configuring a client needs it

    try:
        existing = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise MailslotError(
            f"{path} is not valid TOML ({e}); fix it first, nothing was written"
        ) from None
    had = "mailslot" in existing.get("mcp_servers", {})
    new = textedit.replace_toml_table(text, textedit.toml_table(server))
    tomllib.loads(new)  # still valid TOML, or we write nothing
    return had, new


def _merged_json(
    client: str, path: Path, text: str, where: list[str], server: dict[str, Any]
) -> tuple[bool, str]:
    """Return whether the JSON text (of path) had an entry at where, and text with server there.

    Raise MailslotError if text is not an object with objects along where, or if the edit
    would change more than our entry.
    """
    jsonc = client in JSONC_CLIENTS
    doc, plain = textedit.read_json(path, text, jsonc)
    parent = doc
    for depth, key in enumerate(where[:-1]):
        parent = parent.setdefault(key, {})
        if not isinstance(parent, dict):
            name = ".".join(where[: depth + 1])
            raise MailslotError(f"{path}: {name!r} is not an object; nothing was written")
    had = where[-1] in parent
    parent[where[-1]] = server
    try:
        new = textedit.put_member(text, plain, where, server)
        merged = json.loads(textedit.strip_comments(new) if jsonc else new)
    except (ValueError, IndexError):
        merged = None
    if merged != doc:  # our entry, and nothing else, changed; or nothing is written
        raise MailslotError(
            f"could not merge into {path} safely, so nothing was written: add the entry "
            f"`mailslot mcp-config {client}` prints to it by hand"
        )
    return had, new


PATH_ADVICE = "put mailslot on PATH (`pipx install mailslot` or `uv tool install mailslot`)"


def install_notes(client: str, path: Path, at: Place, project: Path, home: Path) -> list[str]:
    """Return what a person must know after client's entry was written to path: where this
    machine's paths went and why, and the step the client wants before it starts the server."""
    if client in USER_CLIENTS:
        return []
    why = []
    if not at.bare:
        why.append(f"`mailslot` is not on PATH here, so the command is {serve_command()[0]}")
    if not at.walk:
        how = ("the mailbox is not this project's .mailslot/" if client in WALK_CLIENTS
               else f"{client} may start servers outside the project")  # fmt: skip
        why.append(f"{how}, so MAILSLOT_ROOT is its absolute path")
    notes = []
    if why and client == "claude-code" and path == home / ".claude.json":
        notes.append(
            f"this machine's paths went to the project's local scope in {path} (yours alone; "
            f"it wins over .mcp.json), not to .mcp.json, which a team commits, because "
            f"{'; and '.join(why)}; for a .mcp.json a teammate's clone can use, {PATH_ADVICE}"
            " and run this again"
        )
    elif why:
        notes.append(
            f"note: {path} holds this machine's paths ({'; and '.join(why)}): it works here, "
            f"not on a teammate's clone; before committing it, {PATH_ADVICE} and run this again"
        )
    if client == "claude-code" and path == project / ".mcp.json":
        notes.append(
            "Claude Code starts a server of .mcp.json only once you approve it (`claude mcp "
            f"list` says 'Pending approval' until then): run `claude` in {project} and "
            "approve mailslot when asked, or enable it later in /mcp"
        )
    if client == "gemini":
        notes.append(
            "Gemini CLI starts no server in a folder you have not trusted (`gemini mcp list` "
            f"says 'Disabled'): trust {project} when gemini asks at startup, or with /permissions"
        )
    if client == "codex":
        notes.append(
            f"Codex reads {path} only in a project you trust: answer yes when codex asks at "
            f"startup in {project}"
        )
        notes += _codex_global(home)
    return notes


def _codex_global(home: Path) -> list[str]:
    """Say so if Codex's global config.toml has a mailslot server of its own (it is left)."""
    import tomllib

    path = codex_home(home) / "config.toml"
    try:
        server = tomllib.loads(path.read_text(encoding="utf-8"))["mcp_servers"]["mailslot"]
    except (FileNotFoundError, KeyError, TypeError):
        return []  # no file, or no mailslot server in it
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        return [f"could not read {path} ({e}) to see whether it has a mailslot server too"]
    env = server.get("env") if isinstance(server, dict) else None
    points = (env or {}).get("MAILSLOT_ROOT") if isinstance(env, dict) else None
    return [
        f"left as it is: {path} has a mailslot server too"
        + (f" (MAILSLOT_ROOT {points})" if points else "")
        + ", which Codex uses in every project without one of its own; in this one, once "
        "trusted, the project's wins; `codex mcp remove mailslot` removes the global one"
    ]


# Clients with a terminal interface `mailslot run` wakes when idle, and their program's name.
RUN_PROGRAMS = {"claude-code": "claude", "codex": "codex", "gemini": "gemini"}


def run_hint(client: str, agent: str) -> str | None:
    """Return the `mailslot run` line that wakes client's agent when it idles, or None."""
    program = RUN_PROGRAMS.get(client)
    if program is None:
        return None
    return f"to wake {agent} when idle: mailslot run --agent {agent} -- {program}"


def channel_hint() -> str:
    """Return how to start Claude Code so that mailslot's channel pushes messages to it."""
    return (
        f"start Claude Code with: {CHANNEL_LAUNCH}\n"
        "(during the research preview --channels takes only allowlisted plugins; the "
        "development flag loads a server of .mcp.json, and asks you to confirm at startup)\n"
    )
