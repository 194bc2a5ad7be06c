"""The command lines a client runs: `mailslot serve` for its server entry and `mailslot hook
EVENT` for its hooks, each by this installation's absolute path."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

#: Per client, our event name -> the client's own event name (as hook_event_name spells it).
CLIENT_EVENTS: dict[str, dict[str, str]] = {
    "claude-code": {
        "session-start": "SessionStart",
        "prompt": "UserPromptSubmit",
        "stop": "Stop",
        "pre-tool": "PreToolUse",
    },
    "codex": {
        "session-start": "SessionStart",
        "prompt": "UserPromptSubmit",
        "stop": "Stop",
        "pre-tool": "PreToolUse",
        "notify": "notify",
    },
    "gemini": {
        "session-start": "SessionStart",
        "prompt": "BeforeAgent",
        "stop": "AfterAgent",
        "pre-tool": "BeforeTool",
    },
}


def serve_command() -> list[str]:
    """Return the absolute command that starts `mailslot serve` from this installation."""
    script = Path(sys.executable).parent / ("mailslot.exe" if os.name == "nt" else "mailslot")
    if script.exists():
        return [str(script), "serve"]
    return [sys.executable, "-m", "mailslot", "serve"]


def hook_argv(client: str, event: str, agent: str, root: Path | str | None = None) -> list[str]:
    """Return the absolute command (argv) that runs `mailslot hook event` for client."""
    if event not in CLIENT_EVENTS[client]:
        raise ValueError(f"{client} has no {event!r} hook")
    *base, _serve = serve_command()
    options = ["--client", client, "--as", agent]
    if root is not None:
        options += ["--root", str(Path(root).absolute())]
    if event == "notify":  # Codex appends the payload: it must follow EVENT for argparse
        return [*base, "hook", *options, event]
    return [*base, "hook", event, *options]


def hook_commands(client: str, agent: str, root: Path | str | None = None) -> dict[str, str]:
    """Return, for client, its event name -> the shell command line of our hook for it.

    Claude Code and Codex: SessionStart, UserPromptSubmit, Stop, PreToolUse (and, for Codex,
    ``notify``: split it with shlex for config.toml's ``notify = [...]``); Gemini:
    SessionStart, BeforeAgent, AfterAgent, BeforeTool. root, if given, is passed as --root
    (hooks run in the client's working directory, without the server's MAILSLOT_ROOT).
    """
    return {
        theirs: shlex.join(hook_argv(client, ours, agent, root))
        for ours, theirs in CLIENT_EVENTS[client].items()
    }
