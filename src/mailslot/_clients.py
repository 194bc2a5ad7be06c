"""MCP client configurations for `mailslot serve`: render them, and merge them into place.

Merging edits the client's file as text: our entry goes in or is replaced, and every other
byte (other servers, settings, comments, formatting) stays as it was. What cannot be parsed
is refused, and nothing is written unless the edited file parses to the old one plus our entry.
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from mailslot._errors import MailslotError

CLIENTS = ("claude-code", "cursor", "vscode", "codex", "gemini", "claude-desktop")
AGENT_NAMES = {
    "claude-code": "claude", "cursor": "cursor", "vscode": "copilot", "codex": "codex",
    "gemini": "gemini", "claude-desktop": "claude-desktop",
}  # fmt: skip
# Clients that read their JSON file as JSONC (comments, trailing commas): VS Code documents
# it for mcp.json, and Gemini CLI was seen to load a commented settings.json. Claude Code
# refuses a commented .mcp.json, so for the others a comment is an error, as it is for them.
JSONC_CLIENTS = ("vscode", "gemini")


def serve_command() -> list[str]:
    """Return the absolute command that starts `mailslot serve` from this installation."""
    script = Path(sys.executable).parent / ("mailslot.exe" if os.name == "nt" else "mailslot")
    if script.exists():
        return [str(script), "serve"]
    return [sys.executable, "-m", "mailslot", "serve"]


def entry(client: str, root: Path, agent: str) -> dict[str, Any]:
    """Return the server entry for client: command, args and environment, absolute paths."""
    command, *args = serve_command()
    out: dict[str, Any] = {}
    if client in ("claude-code", "vscode"):
        out["type"] = "stdio"
    out |= {"command": command, "args": args,
            "env": {"MAILSLOT_ROOT": str(root), "MAILSLOT_AGENT": agent}}  # fmt: skip
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


def render(client: str, root: Path, agent: str) -> str:
    """Return the configuration text for client, as its file holds it."""
    server = entry(client, root, agent)
    if client == "codex":
        return _toml_table(server)
    key = "servers" if client == "vscode" else "mcpServers"
    return json.dumps({key: {"mailslot": server}}, indent=2) + "\n"


def target(client: str, project: Path, home: Path) -> Path:
    """Return the file client reads its MCP servers from (project files where there are)."""
    if client == "claude-code":
        return project / ".mcp.json"
    if client == "cursor":
        return project / ".cursor" / "mcp.json"
    if client == "vscode":
        return project / ".vscode" / "mcp.json"
    if client == "gemini":
        return project / ".gemini" / "settings.json"
    if client == "codex":
        return home / ".codex" / "config.toml"
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "Claude" / "claude_desktop_config.json"
    if os.name == "nt":
        return Path(os.environ.get("APPDATA", home)) / "Claude" / "claude_desktop_config.json"
    return home / ".config" / "Claude" / "claude_desktop_config.json"


def install(client: str, path: Path, root: Path, agent: str) -> str:
    """Merge mailslot's entry into the config file at path; return 'added' or 'updated'.

    Other servers and settings in the file are kept as they are. Raise MailslotError if the
    file cannot be read as the format it should have (nothing is written then).
    """
    server = entry(client, root, agent)
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
        had, new = False, render(client, root, agent)
    else:
        jsonc = client in JSONC_CLIENTS
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
        key = "servers" if client == "vscode" else "mcpServers"
        if not isinstance(doc.get(key, {}), dict):
            raise MailslotError(f"{path}: {key!r} is not an object; nothing was written")
        had = "mailslot" in doc.get(key, {})
        doc.setdefault(key, {})["mailslot"] = server
        try:
            new = _put_member(text, plain, [key, "mailslot"], server)
            merged = json.loads(_strip_comments(new) if jsonc else new)
        except (ValueError, IndexError):
            merged = None
        if merged != doc:  # our entry, and nothing else, changed; or nothing is written
            raise MailslotError(
                f"could not merge into {path} safely, so nothing was written: add the entry "
                f"`mailslot mcp-config {client}` prints to it by hand"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.mailslot-tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, path)
    return "updated" if had else "added"


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
    return f"{head}\n{pad}{member}{text[at:]}"
