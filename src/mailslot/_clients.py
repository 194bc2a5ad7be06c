"""MCP client configurations for `mailslot serve`: render them, and merge them into place."""

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
    else:
        try:
            doc = json.loads(text) if text.strip() else {}
        except ValueError as e:
            raise MailslotError(
                f"{path} is not valid JSON ({e}); fix it first, nothing was written"
            ) from None
        if not isinstance(doc, dict):
            raise MailslotError(f"{path} does not hold a JSON object; nothing was written")
        key = "servers" if client == "vscode" else "mcpServers"
        servers = doc.setdefault(key, {})
        if not isinstance(servers, dict):
            raise MailslotError(f"{path}: {key!r} is not an object; nothing was written")
        had = "mailslot" in servers
        servers["mailslot"] = server
        new = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.mailslot-tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, path)
    return "updated" if had else "added"
