"""`mailslot run`: an agent's client in a terminal that wakes it when news comes while it idles."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mailslot.commands.declare import Here, UsageError, arg, command
from mailslot.mailbox import Mailbox
from mailslot.store.names import check_name, slugify

# The program's name -> the agent `mailslot mcp-config` names for that client by default.
AGENTS = {"claude": "claude", "codex": "codex", "gemini": "gemini"}
EXIT_NOT_FOUND = 127  # as a shell says of a command it cannot find


def agent_for(program: str, given: str | None, env: str | None) -> str:
    """Return the agent's name: --agent, else $MAILSLOT_AGENT, else the one `mcp-config` gives
    the client (claude, codex, gemini), else the program's name made a name."""
    if given is not None:
        return check_name(given, "agent name")
    if env:
        return check_name(env, "agent name")
    name = Path(program).name
    return AGENTS.get(name) or slugify(name) or "agent"


@command(
    "run",
    help="run an agent's client (claude, codex, gemini...) in this terminal, and type one "
    "line into it when news comes for the agent while it sits idle at its prompt",
    args=[
        arg("--agent", help="the agent's name (default: $MAILSLOT_AGENT, else the client's, "
            "as mcp-config names it: claude, codex, gemini)"),
        arg("--gap", type=float, default=30.0, metavar="S",
            help="at least S seconds between two nudges (default 30)"),
        arg("--quiet", type=float, default=2.0, metavar="S",
            help="idle once the client wrote nothing for S seconds (default 2)"),
        arg("client", nargs=argparse.REMAINDER, metavar="-- CLIENT [ARGS...]",
            help="the client's command line, after --"),
    ],
    json=False,
)  # fmt: skip
def cmd_run(args: argparse.Namespace, here: Here) -> int:
    from mailslot.clients import nudge, relay  # only this command loads them

    argv = args.client[1:] if args.client[:1] == ["--"] else args.client
    if not argv:
        raise UsageError("name the client to run after --, e.g. `mailslot run -- claude`")
    if args.gap < 0 or args.quiet <= 0:
        raise UsageError("--gap takes 0 or more seconds, --quiet more than 0")
    box = Mailbox(here.root(args))
    agent = agent_for(argv[0], args.agent, here.env("MAILSLOT_AGENT"))
    env = dict(os.environ) | {"MAILSLOT_AGENT": agent}  # the client's own serve is this agent
    if args.root:
        env["MAILSLOT_ROOT"] = str(Path(args.root).absolute())
    rules = nudge.Rules(quiet=args.quiet, gap=args.gap)

    def title(text: str) -> None:  # the window's title says whether nudges are paused
        os.write(sys.stdout.fileno(), f"\x1b]2;{text}\x07".encode())

    beside = nudge.Nudger(box, agent, Path(argv[0]).name, rules, title=title)
    try:
        return relay.run(argv, env, beside)
    except FileNotFoundError as e:
        print(f"mailslot run: cannot run {argv[0]!r}: {e.strerror or e}", file=sys.stderr)
        return EXIT_NOT_FOUND
