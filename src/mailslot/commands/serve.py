"""Commands that run beside agents and people: the git guard, desktop notifications,
a client's hooks, the console (ui) and the MCP server (serve).

Each loads what it runs when it runs: `mailslot serve` starts every agent, and pays
for none of the others.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mailslot.commands.declare import EXIT_ERROR, EXIT_OK, EXIT_TIMEOUT, Here, arg, command
from mailslot.mailbox import Mailbox
from mailslot.store.errors import MailslotError


@command(
    "guard",
    help="a git pre-commit hook that refuses commits touching paths others reserved",
    args=[
        arg(
            "action",
            choices=["install", "uninstall", "check"],
            help="add the hook, remove it, or run the check the hook runs",
        ),
    ],
    json=False,
    who=True,
)
def cmd_guard(args: argparse.Namespace, here: Here) -> int:
    from mailslot.clients import guard as _guard  # only this command loads it

    repo = Path.cwd()
    if args.action == "install":
        print(_guard.install(repo))
        return EXIT_OK
    if args.action == "uninstall":
        print(_guard.uninstall(repo))
        return EXIT_OK
    root = Path(args.root) if args.root else None
    verdict = _guard.check(repo, args.sender, root=root)
    if verdict.refused:
        print(_guard.report(verdict.conflicts), end="", file=sys.stderr)
    return EXIT_ERROR if verdict.refused else EXIT_OK


@command(
    "notify",
    help="a desktop notification (or a terminal bell) for each message addressed to you",
    args=[
        arg("--once", action="store_true", help="exit after the first messages"),
        arg("--timeout", type=float, metavar="S", help="give up after S seconds (exit 124)"),
    ],
    json=False,
    who=True,
)
def cmd_notify(args: argparse.Namespace, here: Here) -> int:
    box = here.open(args)
    me = here.sender(args)
    tool = shutil.which("notify-send")
    cursor: dict[str, int] | None = box.cursor()  # from now: before saying it has begun
    how = "notify-send" if tool else "a terminal bell"
    print(f"notifying {me} of messages addressed to it ({how}); Ctrl-C ends", file=sys.stderr)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    try:
        while True:
            left = 3600.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return EXIT_TIMEOUT
            got = box.wait(None, cursor, to=me, timeout=min(left, 3600.0))
            cursor = got.cursor
            for m in got.messages:
                if m.sender == me:
                    continue
                title = f"mailslot: {m.sender} in {m.thread}" + (
                    f" ({m.priority})" if m.priority != "normal" else ""
                )
                body = " ".join(m.content.split())[:200]
                if tool:
                    subprocess.run([tool, title, body], check=False, timeout=10)
                else:
                    print("\a", end="", file=sys.stderr, flush=True)
                print(f"{title}: {body}  (mailslot read {m.thread} --after {m.seq - 1})",
                      flush=True)  # fmt: skip
            if args.once and got.messages:
                return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        box.close()


@command(
    "hook",
    help="run as a client's hook: tell the agent what is new for it (nothing if nothing)",
    json=False,  # stdout is the client's hook protocol
    who=True,
    args=[
        arg("event", metavar="EVENT", help="session-start, prompt, stop or notify"),
        arg("payload", nargs="?", help="notify: the JSON Codex appends (else read from stdin)"),
        arg("--client", default="claude-code", metavar="CLIENT",
            help="claude-code (default), codex or gemini"),
    ],
)  # fmt: skip
def cmd_hook(args: argparse.Namespace, here: Here) -> int:
    from mailslot.clients import hooks as _hooks  # only this command loads it

    # Never exit non-zero, even for an unknown event or client: exit 2 would block the user's
    # prompt in Claude Code. _hooks.run says what is wrong on stderr and exits 0.
    stdin = "" if args.event == "notify" else _hooks.read_stdin()
    root = Path(args.root) if args.root else None
    out, code = _hooks.run(args.event, args.client, args.sender, stdin, args.payload, root)
    sys.stdout.write(out)
    return code


@command(
    "ui",
    help="a live page of the mailbox in your browser, on 127.0.0.1 only",
    args=[
        arg("--port", type=int, default=0, help="the port (default: a free one)"),
        arg("--open", action="store_true", help="open it in the browser"),
    ],
    json=False,
    who=True,
)
def cmd_ui(args: argparse.Namespace, here: Here) -> int:
    return serve_ui(here.open(args), here.sender(args), args.port, args.open)


def serve_ui(box: Mailbox, person: str, port: int, open_it: bool) -> int:
    """Serve the console of box to person on 127.0.0.1:port until Ctrl-C; return the exit code."""
    import signal
    import socket
    import webbrowser

    from mailslot.console.server import Console, run

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as e:
        sock.close()
        why = f"cannot listen on 127.0.0.1:{port} ({e.strerror}); try --port 0"
        raise MailslotError(why) from None
    sock.listen(128)  # connections made as soon as the address is printed wait for the server
    port = sock.getsockname()[1]
    console = Console(box, person, port)
    url = f"http://127.0.0.1:{port}/?token={console.token}"
    print(f"mailslot ui for {person}: {url}", flush=True)
    print("(only this machine can reach it, with the token in the address; Ctrl-C stops it)",
          flush=True)  # fmt: skip
    if open_it:
        webbrowser.open(url)
    try:
        run(console, sock)
    except KeyboardInterrupt:
        pass  # the Ctrl-C that stopped it, raised again by uvicorn once it has stopped
    finally:
        # Stopping already: another Ctrl-C now would only cut the clean-up with a traceback.
        before = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            sock.close()
            box.close()
        finally:
            signal.signal(signal.SIGINT, before)
    return EXIT_OK


@command(
    "serve",
    help="serve MCP over stdio for one agent",
    json=False,  # stdout is the protocol's
    args=[
        arg("--agent", help="this agent's name (default: $MAILSLOT_AGENT, else from the client)"),
        arg("--lang", help="preferred language of messages, e.g. English or Chinese"),
        arg("--wait-default", type=float, metavar="S",
            help="msg_wait timeout when the model gives none (default 50, or --wait-max "
                 "if lower)"),
        arg("--wait-max", type=float, default=600.0, metavar="S",
            help="longest msg_wait a model may ask for (default 600)"),
        arg("--heartbeat-timeout", type=float, default=30.0, metavar="S",
            help="not seen for this long reads as offline (default 30)"),
        arg("--poll", action="store_true", help="wake waiters by polling only"),
        arg("--strict-name", action="store_true",
            help="exit if the agent name is in use, instead of taking NAME-2, NAME-3, ..."),
        arg("--channel", action="store_true",
            help="push new messages to an idle Claude Code session (its channels; "
                 "also $MAILSLOT_CHANNEL=1)"),
        arg("--sync", action="store_true",
            help="keep the mailbox in step with its git remote while serving: start this "
                 "machine's `mailslot sync` of the root, or use the one running "
                 '(also "sync": {"serve": true} in mailslot.json)'),
    ],
)  # fmt: skip
def cmd_serve(args: argparse.Namespace, here: Here) -> int:
    from mailslot.stdio_server import serve  # imports mcp: only this command pays for it

    agent = args.agent if args.agent is not None else here.env("MAILSLOT_AGENT")
    lang = args.lang or here.env("MAILSLOT_LANG")
    root = here.root(args)
    _start_sync(root, args.sync)  # what it holds stays held until this process exits
    serve(
        str(root),
        agent=agent,
        lang=lang,
        wait_default=min(50.0, args.wait_max) if args.wait_default is None else args.wait_default,
        wait_max=args.wait_max,
        stale_after=args.heartbeat_timeout,
        wait_mode="poll" if args.poll else None,
        strict_name=args.strict_name,
        channel=args.channel or here.env("MAILSLOT_CHANNEL") in ("1", "true", "yes"),
    )
    return EXIT_OK


def _start_sync(root: Path, asked: bool) -> int | None:
    """Start or use this machine's sync of root if asked; return the fd that holds it running
    (open until this process exits: the sync ends about a round after its last server).

    A sync that cannot start never stops the server: it says why, in one line on stderr
    (stdout is the protocol's).
    """
    from mailslot.sync import served

    try:
        return served.start(root, asked=asked)
    except MailslotError as e:
        print(f"mailslot serve: {e}", file=sys.stderr, flush=True)
        return None
