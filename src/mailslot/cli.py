"""The `mailslot` command: the same verbs as the library, for people and scripts.

This is the only module that reads flags and the environment. Exit codes: 0 success, 1 a
mailslot error (one line on stderr), 2 a usage error.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mailslot import __version__
from mailslot._errors import MailslotError
from mailslot._format import PRIORITIES, STATES, TYPES, Message
from mailslot.mailbox import Mailbox, default_root, find_root

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def _root(args: argparse.Namespace) -> Path:
    if args.root:
        return Path(args.root)
    env = os.environ.get("MAILSLOT_ROOT")
    if env:
        return Path(env)
    return find_root()


def _open(args: argparse.Namespace) -> Mailbox:
    return Mailbox(_root(args))


def _sender(args: argparse.Namespace) -> str:
    """Return who a person posts as: --as, MAILSLOT_AGENT, or the OS user made into a name."""
    name = args.sender or os.environ.get("MAILSLOT_AGENT")
    if name:
        return str(name)
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "human"
    slug = re.sub(r"[^a-z0-9._-]+", "-", user.lower()).strip("-.")
    return slug[:64] or "human"


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, ensure_ascii=False))


def _show_message(m: Message) -> str:
    to = f" → {', '.join(m.to)}" if m.to else ""
    badges = "" if m.type == "message" else f" [{m.type}]"
    if m.priority != "normal":
        badges += f" !{m.priority}"
    reply = f" (re #{m.reply_to})" if m.reply_to else ""
    head = f"#{m.seq} {m.sender}{to}{badges}{reply}  {m.created_at}"
    if m.type == "state":
        body = f"state: {m.meta.get('previous', '?')} → {m.meta.get('state', '?')}"
        if m.content:
            body += "\n" + m.content
    else:
        body = m.content
    return head + "\n" + textwrap.indent(body, "  ") + "\n"


def cmd_init(args: argparse.Namespace) -> int:
    path = Path(args.path) if args.path else (Path(args.root) if args.root else default_root())
    box = Mailbox.init(path, fsync=not args.no_fsync)
    if args.json:
        _print_json({"root": str(box.root), "format": box.settings.format})
    else:
        print(f"mailbox ready at {box.root}")
    return EXIT_OK


def cmd_thread(args: argparse.Namespace) -> int:
    box = _open(args)
    info = box.create_thread(args.topic, creator=_sender(args))
    if args.json:
        _print_json(info.to_dict())
    else:
        print(f"{info.id}  (head {info.head}, {info.state})")
    return EXIT_OK


def cmd_threads(args: argparse.Namespace) -> int:
    box = _open(args)
    infos = box.threads(state=args.state, include_archived=args.all)
    if args.json:
        _print_json([t.to_dict() for t in infos])
        return EXIT_OK
    if not infos:
        print("no threads yet")
        return EXIT_OK
    for t in infos:
        print(f"{t.id:<24} {t.state:<10} {t.head:>6} msgs  {', '.join(t.participants)}  {t.topic}")
    return EXIT_OK


def cmd_post(args: argparse.Namespace) -> int:
    box = _open(args)
    content = sys.stdin.buffer.read() if args.text == "-" else args.text
    meta = None
    if args.meta is not None:
        try:
            meta = json.loads(args.meta)
        except ValueError as e:
            raise MailslotError(f"--meta is not JSON: {e}") from None
    seq = box.post(
        args.thread,
        content,
        sender=_sender(args),
        to=args.to or [],
        type=args.type,
        priority=args.priority,
        reply_to=args.reply_to,
        meta=meta,
        idempotency_key=args.key,
    )
    if args.json:
        _print_json(box.get(args.thread, seq).to_dict())
    else:
        print(seq)
    return EXIT_OK


def cmd_read(args: argparse.Namespace) -> int:
    box = _open(args)
    page = box.read(args.thread, args.after, args.limit)
    if args.json:
        _print_json(
            {
                "messages": [m.to_dict() for m in page.messages],
                "cursor": page.cursor,
                "has_more": page.has_more,
                "skipped": [{"path": d.path, "reason": d.reason} for d in page.skipped],
            }
        )
        return EXIT_OK
    for m in page.messages:
        print(_show_message(m))
    for d in page.skipped:
        print(f"(skipped {d})", file=sys.stderr)
    if page.has_more:
        print(f"... more: mailslot read {args.thread} --after {page.cursor}")
    return EXIT_OK


def cmd_state(args: argparse.Namespace) -> int:
    box = _open(args)
    seq = box.set_state(args.thread, args.state, sender=_sender(args), summary=args.summary)
    if args.json:
        _print_json(box.thread(args.thread).to_dict())
    else:
        print(seq)
    return EXIT_OK


def cmd_register(args: argparse.Namespace) -> int:
    box = _open(args)
    card = box.register_agent(
        args.name, client=args.client, model=args.model, description=args.description
    )
    if args.json:
        _print_json(card.to_dict())
    else:
        print(f"registered {card.name}")
    return EXIT_OK


def cmd_agents(args: argparse.Namespace) -> int:
    box = _open(args)
    cards = box.agents()
    if args.json:
        _print_json([c.to_dict() for c in cards])
        return EXIT_OK
    if not cards:
        print("no agents yet")
    for c in cards:
        print(f"{c.name:<20} {c.model or '-':<20} {c.description or ''}")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from mailslot.stdio_server import serve  # imports mcp: only this command pays for it

    agent = args.agent or os.environ.get("MAILSLOT_AGENT") or None
    lang = args.lang or os.environ.get("MAILSLOT_LANG") or None
    serve(
        str(_root(args)),
        agent=agent,
        lang=lang,
        wait_default=args.wait_default,
        wait_max=args.wait_max,
        stale_after=args.heartbeat_timeout,
        wait_mode="poll" if args.poll else None,
    )
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    """Return the argument parser of the mailslot command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--root", help="mailbox root (default: $MAILSLOT_ROOT, else nearest .mailslot/)"
    )
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    who = argparse.ArgumentParser(add_help=False)
    who.add_argument(
        "--as", dest="sender", help="your name (default: $MAILSLOT_AGENT, else the OS user)"
    )

    p = argparse.ArgumentParser(
        prog="mailslot", description="A mailbox for AI agents that is nothing but a folder."
    )
    p.add_argument("--version", action="version", version=f"mailslot {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("init", parents=[common], help="create a mailbox root")
    s.add_argument(
        "path",
        nargs="?",
        help="where (default: .mailslot/ at the top of the git checkout, else here)",
    )
    s.add_argument("--no-fsync", action="store_true", help="scratch folder: do not fsync messages")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("thread", parents=[common, who], help="create or join the thread of a topic")
    s.add_argument("topic")
    s.set_defaults(func=cmd_thread)

    s = sub.add_parser("threads", parents=[common], help="list threads, most recent first")
    s.add_argument("--state", choices=STATES)
    s.add_argument("--all", action="store_true", help="include archived threads")
    s.set_defaults(func=cmd_threads)

    s = sub.add_parser("post", parents=[common, who], help="post a message (TEXT or - for stdin)")
    s.add_argument("thread")
    s.add_argument("text")
    s.add_argument("--to", action="append", metavar="AGENT", help="address an agent (repeatable)")
    s.add_argument("--type", default="message", choices=[t for t in TYPES if t != "state"])
    s.add_argument("--priority", default="normal", choices=PRIORITIES)
    s.add_argument("--reply-to", type=int, metavar="SEQ")
    s.add_argument("--meta", help="a JSON object stored with the message")
    s.add_argument("--key", help="idempotency key: a retry with the same key is stored once")
    s.set_defaults(func=cmd_post)

    s = sub.add_parser("read", parents=[common], help="print a thread's messages")
    s.add_argument("thread")
    s.add_argument("--after", type=int, default=0, metavar="SEQ")
    s.add_argument("--limit", type=int, default=100)
    s.set_defaults(func=cmd_read)

    s = sub.add_parser("state", parents=[common, who], help="change a thread's state")
    s.add_argument("thread")
    s.add_argument("state", choices=STATES)
    s.add_argument("--summary", help="Markdown summary, typically when closing")
    s.set_defaults(func=cmd_state)

    s = sub.add_parser("register", parents=[common], help="create or update an agent card")
    s.add_argument("name")
    s.add_argument("--client")
    s.add_argument("--model")
    s.add_argument("--description")
    s.set_defaults(func=cmd_register)

    s = sub.add_parser("serve", parents=[common], help="serve MCP over stdio for one agent")
    s.add_argument(
        "--agent", help="this agent's name (default: $MAILSLOT_AGENT, else from the client)"
    )
    s.add_argument("--lang", help="preferred language of messages, e.g. English or Chinese")
    s.add_argument(
        "--wait-default",
        type=float,
        default=50.0,
        metavar="S",
        help="msg_wait timeout when the model gives none (default 50)",
    )
    s.add_argument(
        "--wait-max",
        type=float,
        default=600.0,
        metavar="S",
        help="longest msg_wait a model may ask for (default 600)",
    )
    s.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="an agent not seen for this long reads as offline (default 30)",
    )
    s.add_argument("--poll", action="store_true", help="wake waiters by polling only")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("agents", parents=[common], help="list agent cards")
    s.set_defaults(func=cmd_agents)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the mailslot command with argv and return its exit code."""
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except MailslotError as e:
        print(f"mailslot: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
