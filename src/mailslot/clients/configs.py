"""MCP client configurations for `mailslot serve`: render them, and merge them into place.

Merging edits the client's file as text: our entry goes in or is replaced, and every other
byte (other servers, settings, comments, formatting) stays as it was. What cannot be parsed
is refused, and nothing is written unless the edited file parses to the old one plus our entry.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def serve_command() -> list[str]:
    """Return the absolute command that starts `mailslot serve` from this installation."""
    script = Path(sys.executable).parent / ("mailslot.exe" if os.name == "nt" else "mailslot")
    if script.exists():
        return [str(script), "serve"]
    return [sys.executable, "-m", "mailslot", "serve"]


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


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def _toml_table(server: dict[str, Any]) -> str:
    lines = ["[mcp_servers.mailslot]"] + [f"{k} = {_toml_value(v)}" for k, v in server.items()]
    return "\n".join(lines) + "\n"


def _replace_toml_table(text: str, table: str) -> str:
    """Return text with our [mcp_servers.mailslot] table (and its sub-tables) replaced by table,
    or table appended; every other line stays as it is."""
    kept: list[str] = []
    at: int | None = None
    ours = False
    for line in text.splitlines():
        header = line.strip()
        if header.startswith("["):
            name = header.strip("[]").strip()
            ours = name == "mcp_servers.mailslot" or name.startswith("mcp_servers.mailslot.")
            if ours and at is None:
                at = len(kept)
        if not ours:
            kept.append(line)
    block = [*table.rstrip("\n").splitlines(), ""]
    if at is None:
        while kept and not kept[-1].strip():
            kept.pop()
        kept += ([""] if kept else []) + block
    else:
        kept[at:at] = block
    return "\n".join(kept).rstrip("\n") + "\n"


def render(
    client: str, root: Path, agent: str, *, channel: bool = False, at: Place | None = None
) -> str:
    """Return the configuration text for client, as its file holds it."""
    server = entry(client, root, agent, channel=channel, at=at)
    if client == "codex":
        return _toml_table(server)
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
    import tomllib  # only configuring a client needs it

    server = entry(client, root, agent, channel=channel, at=at)
    where = where or [_servers_key(client), "mailslot"]
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if client == "codex":
        try:
            existing = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise MailslotError(
                f"{path} is not valid TOML ({e}); fix it first, nothing was written"
            ) from None
        had = "mailslot" in existing.get("mcp_servers", {})
        new = _replace_toml_table(text, _toml_table(server))
        tomllib.loads(new)  # still valid TOML, or we write nothing
    elif not text.strip():
        nested: Any = server
        for key in reversed(where):
            nested = {key: nested}
        had, new = False, json.dumps(nested, indent=2) + "\n"
    else:
        jsonc = client in JSONC_CLIENTS
        doc, plain = _read_json(path, text, jsonc)
        parent = doc
        for depth, key in enumerate(where[:-1]):
            parent = parent.setdefault(key, {})
            if not isinstance(parent, dict):
                name = ".".join(where[: depth + 1])
                raise MailslotError(f"{path}: {name!r} is not an object; nothing was written")
        had = where[-1] in parent
        parent[where[-1]] = server
        try:
            new = _put_member(text, plain, where, server)
            merged = json.loads(_strip_comments(new) if jsonc else new)
        except (ValueError, IndexError):
            merged = None
        if merged != doc:  # our entry, and nothing else, changed; or nothing is written
            raise MailslotError(
                f"could not merge into {path} safely, so nothing was written: add the entry "
                f"`mailslot mcp-config {client}` prints to it by hand"
            )
    if had and new == text:
        return "unchanged"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.mailslot-tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, path)
    return "updated" if had else "added"


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


def _strip_comments(text: str) -> str:
    """Return JSONC text as JSON of the same length: comments and trailing commas become spaces.

    Raise ValueError for an unterminated comment.
    """
    return _blank_trailing_commas(_blank_comments(text))


def _blank_comments(text: str) -> str:
    """Return text with its // and /* */ comments made spaces (newlines kept), so offsets in
    the result are offsets in text. Raise ValueError for an unterminated comment."""
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                out[i] = " "
                i += 1
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise ValueError(f"unterminated /* comment at offset {i}")
            for j in range(i, end + 2):
                out[j] = out[j] if text[j] in "\r\n" else " "
            i = end + 2
            continue
        i += 1
    return "".join(out)


def _blank_trailing_commas(plain: str) -> str:
    """Return comment-free JSONC with each comma before a closing bracket made a space."""
    out, i, n, comma = list(plain), 0, len(plain), -1
    while i < n:
        c = plain[i]
        if c == '"':
            comma = -1
            i += 1
            while i < n and plain[i] != '"':
                i += 2 if plain[i] == "\\" else 1
        elif c == ",":
            comma = i
        elif c in "}]" and comma >= 0:
            out[comma] = " "
            comma = -1
        elif not c.isspace():
            comma = -1
        i += 1
    return "".join(out)


_DECODER = json.JSONDecoder()


def _skip_space(plain: str, i: int) -> int:
    while i < len(plain) and plain[i].isspace():
        i += 1
    return i


def _members(plain: str, start: int) -> tuple[dict[str, tuple[int, int, int]], int]:
    """Return the members of the object opening at start, {key: (key at, value at, value end)},
    and the offset of its closing brace. plain is JSON, or JSONC with comments blanked."""
    members: dict[str, tuple[int, int, int]] = {}
    strict = _blank_trailing_commas(plain)  # values are decoded as JSON; offsets are the same
    i = _skip_space(plain, start + 1)
    if plain[i] == "}":
        return members, i
    while True:
        key, after = _DECODER.raw_decode(strict, i)
        colon = _skip_space(plain, after)
        at = _skip_space(plain, colon + 1)
        _, end = _DECODER.raw_decode(strict, at)
        members[key] = (i, at, end)  # a repeated key: the last one counts, as in json.loads
        i = _skip_space(plain, end)
        if plain[i] == ",":
            i = _skip_space(plain, i + 1)
        if plain[i] == "}":
            return members, i


def _indent_of(text: str, at: int) -> str:
    line = text[text.rfind("\n", 0, at) + 1 : at]
    return line[: len(line) - len(line.lstrip())]


def _put_member(text: str, plain: str, keys: list[str], value: Any) -> str:
    """Return text with the member at the path keys set to value, everything else unchanged.

    plain is text with its comments blanked (the same offsets). The objects on the path must
    exist or be missing (the caller checked); missing ones are made. New lines are indented
    like their neighbours; a one-line object stays on one line.
    """
    start = _skip_space(plain, 0)
    for depth, key in enumerate(keys):
        members, close = _members(plain, start)
        nested: Any = value
        for k in reversed(keys[depth + 1 :]):
            nested = {k: nested}
        if key in members and depth < len(keys) - 1:
            start = members[key][1]
            continue
        if key in members:  # replace the value, where it stands
            key_at, at, end = members[key]
            if "\n" in plain[start:close]:
                pad = _indent_of(text, key_at)
                body = json.dumps(nested, indent=2, ensure_ascii=False).replace("\n", "\n" + pad)
            else:
                body = json.dumps(nested, ensure_ascii=False)
            return text[:at] + body + text[end:]
        return _add_member(text, plain, start, close, members, key, nested)
    raise ValueError("no keys to set")


def _add_member(
    text: str,
    plain: str,
    start: int,
    close: int,
    members: dict[str, tuple[int, int, int]],
    key: str,
    value: Any,
) -> str:
    """Return text with "key": value added as the last member of the object at start..close."""
    name = json.dumps(key, ensure_ascii=False)
    if members and "\n" not in plain[start:close]:  # a one-line object: stay on one line
        last = max(end for _, _, end in members.values())
        return f"{text[:last]}, {name}: {json.dumps(value, ensure_ascii=False)}{text[last:]}"
    outer = _indent_of(text, start)
    if members:
        pad = _indent_of(text, min(k for k, _, _ in members.values()))
    else:
        pad = outer + ("\t" if outer.startswith("\t") else "  ")
    member = f"{name}: " + json.dumps(value, indent=2, ensure_ascii=False).replace("\n", "\n" + pad)
    if not members:
        return f"{text[: start + 1]}\n{pad}{member}\n{outer}{text[close:]}"
    last = max(end for _, _, end in members.values())
    return _append_after(text, plain, last, pad, member)


def _append_after(text: str, plain: str, last: int, pad: str, item: str) -> str:
    """Return text with item added on a line of its own (indented by pad) after the value
    that ends at last, the last one of its object or array."""
    # After the last member's line, so a comment on that line stays with it; a comma follows
    # the last value unless one (a trailing comma) already does.
    comma = _skip_space(plain, last)
    has_comma = plain[comma] == ","
    line_end = plain.find("\n", last)
    rest = plain[(comma + 1 if has_comma else last) : line_end if line_end >= 0 else len(plain)]
    at = line_end if line_end >= 0 and not rest.strip() else last
    if has_comma and at == last:
        at = comma + 1
    head = text[:last] + ("" if has_comma else ",") + text[last:at]
    return f"{head}\n{pad}{item}{text[at:]}"


# ---------------------------------------------------------------------------- hooks and channels

HOOK_CLIENTS = ("claude-code", "codex", "gemini")
# The client's event -> the `mailslot hook` event that handles it. Gemini CLI names Claude's
# UserPromptSubmit BeforeAgent and its Stop AfterAgent (its own `hooks migrate` maps them so).
HOOK_EVENTS = {
    "claude-code": {"SessionStart": "session-start", "UserPromptSubmit": "prompt", "Stop": "stop"},
    "codex": {"SessionStart": "session-start", "UserPromptSubmit": "prompt", "Stop": "stop"},
    "gemini": {"SessionStart": "session-start", "BeforeAgent": "prompt", "AfterAgent": "stop"},
}
GEMINI_HOOK_TIMEOUT_MS = 10_000
CHANNEL_LAUNCH = "claude --dangerously-load-development-channels server:mailslot"

HookArgv = Callable[[str, str, str, Path | None], list[str]]
"""(client, event, agent, root) -> the argv that runs `mailslot hook EVENT` for client."""


def hook_argv(client: str, event: str, agent: str, root: Path | None = None) -> list[str]:
    """Return the absolute argv of `mailslot hook EVENT --client CLIENT --as AGENT [--root]`."""
    from mailslot.clients.hooks import hook_argv as build  # _hooks imports this module

    return build(client, event, agent, root)


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


def channel_hint() -> str:
    """Return how to start Claude Code so that mailslot's channel pushes messages to it."""
    return (
        f"start Claude Code with: {CHANNEL_LAUNCH}\n"
        "(during the research preview --channels takes only allowlisted plugins; the "
        "development flag loads a server of .mcp.json, and asks you to confirm at startup)\n"
    )


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
        if client == "gemini":  # matcher "*" is every source, prompt and turn; timeout in ms
            handler = {"name": "mailslot", **handler, "timeout": GEMINI_HOOK_TIMEOUT_MS}
            groups[event] = {"matcher": "*", "hooks": [handler]}
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
        text += f"notify = {_toml_value(doc['notify'])}\n"
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


def _read_json(path: Path, text: str, jsonc: bool) -> tuple[dict[str, Any], str]:
    """Return the object text holds and text with comments blanked; MailslotError if none."""
    kind = "JSON (comments allowed)" if jsonc else "JSON"
    try:
        plain = _blank_comments(text) if jsonc else text
        doc = json.loads(_blank_trailing_commas(plain) if jsonc else plain)
    except ValueError as e:
        raise MailslotError(
            f"{path} is not valid {kind} ({e}); fix it first, nothing was written"
        ) from None
    if not isinstance(doc, dict):
        raise MailslotError(f"{path} does not hold a JSON object; nothing was written")
    return doc, plain


def _value_at(plain: str, keys: list[str]) -> int:
    """Return the offset of the value at the path keys (all present) of the JSON in plain."""
    at = _skip_space(plain, 0)
    for key in keys:
        at = _members(plain, at)[0][key][1]
    return at


def _elements(plain: str, start: int) -> tuple[list[tuple[int, int]], int]:
    """Return the (start, end) of each element of the array opening at start, and the offset
    of its closing bracket. plain is JSON, or JSONC with comments blanked."""
    strict = _blank_trailing_commas(plain)
    found: list[tuple[int, int]] = []
    i = _skip_space(plain, start + 1)
    while plain[i] != "]":
        _, end = _DECODER.raw_decode(strict, i)
        found.append((i, end))
        i = _skip_space(plain, end)
        if plain[i] == ",":
            i = _skip_space(plain, i + 1)
    return found, i


def _append_element(text: str, plain: str, start: int, value: Any) -> str:
    """Return text with value added as the last element of the array opening at start."""
    found, close = _elements(plain, start)
    if found and "\n" not in plain[start:close]:  # a one-line array: stay on one line
        last = found[-1][1]
        return f"{text[:last]}, {json.dumps(value, ensure_ascii=False)}{text[last:]}"
    outer = _indent_of(text, start)
    pad = _indent_of(text, found[0][0]) if found else outer + ("\t" if "\t" in outer else "  ")
    item = json.dumps(value, indent=2, ensure_ascii=False).replace("\n", "\n" + pad)
    if not found:
        return f"{text[: start + 1]}\n{pad}{item}\n{outer}{text[close:]}"
    return _append_after(text, plain, found[-1][1], pad, item)


def _replace_element(text: str, plain: str, start: int, index: int, value: Any) -> str:
    """Return text with element index of the array opening at start replaced by value."""
    found, close = _elements(plain, start)
    at, end = found[index]
    if "\n" in plain[start:close]:
        body = json.dumps(value, indent=2, ensure_ascii=False).replace(
            "\n", "\n" + _indent_of(text, at)
        )
    else:
        body = json.dumps(value, ensure_ascii=False)
    return text[:at] + body + text[end:]


def _merge_hooks(path: Path, jsonc: bool, groups: dict[str, dict[str, Any]]) -> str:
    """Merge groups into the "hooks" of the JSON file at path; return 'added', 'updated' or
    'unchanged'. Only mailslot's entries change; other bytes stay where they can."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if not text.strip():
        new = json.dumps({"hooks": {k: [g] for k, g in groups.items()}}, indent=2) + "\n"
        _write(path, new)
        return "added"
    doc, plain = _read_json(path, text, jsonc)
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
            new = _put_member(new, plain, ["hooks", event], [group])
        elif not isinstance(current, list):
            raise MailslotError(f"{path}: hooks.{event} is not a list; nothing was written")
        else:
            ours = [i for i, g in enumerate(current) if _has_ours(g)]
            had = had or bool(ours)
            if [current[i] for i in ours] == [group]:
                continue  # there already, as it should be
            at = _value_at(plain, ["hooks", event])
            if not ours:
                want_hooks[event] = [*current, group]
                new = _append_element(new, plain, at, group)
            elif len(ours) == 1 and all(_is_ours(h) for h in current[ours[0]]["hooks"]):
                want_hooks[event] = [group if i == ours[0] else g for i, g in enumerate(current)]
                new = _replace_element(new, plain, at, ours[0], group)
            else:  # ours mixed into other groups: rewrite this event's list
                want_hooks[event] = [*_without_ours(current), group]
                new = _put_member(new, plain, ["hooks", event], want_hooks[event])
        changed = True
        plain = _blank_comments(new) if jsonc else new
    if not changed:
        return "unchanged"
    try:
        merged = json.loads(_strip_comments(new) if jsonc else new)
    except ValueError:
        merged = None
    if merged != want:
        raise MailslotError(
            f"could not merge into {path} safely, so nothing was written: add the hooks "
            "`mailslot mcp-config --hooks` prints to it by hand"
        )
    _write(path, new)
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
    line = f"notify = {_toml_value(notify)}"
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
    _write(path, new)
    return f"{'updated' if current is not None else 'added'} Codex's notify in {path}"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.mailslot-tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
