"""The `mailslot` command: the same verbs as the library and the tools, for people and scripts.

This is the only module that reads flags and the environment. Exit codes: 0 success, 1 a
mailslot error (one line on stderr), 2 a usage error, 124 `wait` timed out, 130 interrupted.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from mailslot import __version__
from mailslot._errors import MailslotError
from mailslot._format import PRIORITIES, STATES, TYPES, Damage, Message, Pending, loads
from mailslot.mailbox import Mailbox, default_root, find_root

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 124  # as GNU timeout(1): scripts already know it
EXIT_INTERRUPTED = 130


# ---------------------------------------------------------------------------- helpers


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
    if args.sender is not None:
        return str(args.sender)  # given explicitly: validated as given, even if empty
    name = os.environ.get("MAILSLOT_AGENT")
    if name:
        return name
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "human"
    slug = re.sub(r"[^a-z0-9._-]+", "-", user.lower()).strip("-.")
    return slug[:64] or "human"


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, ensure_ascii=False))


def _color() -> bool:
    return (
        sys.stdout.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
    )


def _paint(text: str, code: str) -> str:
    return f"\033[{code}m{text}\033[0m" if _color() else text


def _when(iso: str) -> str:
    try:
        return (
            datetime.fromisoformat(iso.replace("Z", "+00:00"))
            .astimezone()
            .strftime("%Y-%m-%d %H:%M:%S")
        )
    except ValueError:
        return iso


def _wrap(text: str, width: int) -> str:
    """Wrap Markdown prose to width; code blocks, tables and indented lines stay as written."""
    out, fenced = [], False
    for line in text.splitlines() or [""]:
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if (
            fenced
            or line.startswith(("    ", "\t", "|"))
            or line.lstrip().startswith("```")
            or len(line) <= width
        ):
            out.append(line)
            continue
        bullet = re.match(r"\s*(?:[-*+]|\d+[.)])\s+", line)
        indent = " " * (bullet.end() if bullet else len(line) - len(line.lstrip()))
        out.append(textwrap.fill(line, width, subsequent_indent=indent, break_on_hyphens=False))
    return "\n".join(out)


def _show(m: Message, *, thread: bool = False) -> str:
    """Return a message for a terminal: author, recipients, badges, reply, time, wrapped body."""
    head = _paint(f"#{m.seq}", "2") + " " + _paint(m.sender, "1")
    if thread:
        head = _paint(m.thread, "36") + " " + head
    if m.to:
        head += " → " + ", ".join(m.to)
    if m.type != "message":
        head += " " + _paint(f"[{m.type}]", "35")
    if m.priority != "normal":
        head += " " + _paint(f"!{m.priority}", "31" if m.priority in ("high", "urgent") else "2")
    if m.reply_to:
        head += f" (re #{m.reply_to})"
    head += "  " + _paint(_when(m.created_at), "2")
    if m.type == "state":
        body = f"state: {m.meta.get('previous', '?')} → {m.meta.get('state', '?')}"
        if m.content:
            body += "\n" + m.content
    else:
        body = m.content
    width = max(40, min(shutil.get_terminal_size((100, 24)).columns, 120) - 2)
    return head + "\n" + textwrap.indent(_wrap(body, width), "  ", lambda _: True) + "\n"


def _emit(messages: Iterable[Message], args: argparse.Namespace, *, thread: bool = False) -> None:
    for m in messages:
        if args.json:
            print(json.dumps(m.to_dict(), ensure_ascii=False), flush=True)
        else:
            print(_show(m, thread=thread), flush=True)


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- commands


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
    rows = [[t.id, t.state, str(t.head), ", ".join(t.participants), _when(t.last_activity), t.topic]
            for t in infos]  # fmt: skip
    print(_table(rows, ["THREAD", "STATE", "MSGS", "PARTICIPANTS", "LAST ACTIVITY", "TOPIC"]))
    return EXIT_OK


def cmd_post(args: argparse.Namespace) -> int:
    box = _open(args)
    content = sys.stdin.buffer.read() if args.text == "-" else args.text
    meta = None
    if args.meta is not None:
        try:
            meta = loads(args.meta)  # bounded: a hostile depth is a ValueError, not a crash
        except ValueError as e:
            raise MailslotError(f"--meta is not JSON: {e}") from None
    message = box.publish(
        args.thread, content, sender=_sender(args), to=args.to or [], type=args.type,
        priority=args.priority, reply_to=args.reply_to, meta=meta, idempotency_key=args.key,
    )  # fmt: skip
    if args.json:
        _print_json(message.to_dict())
    else:
        print(message.seq)
    return EXIT_OK


def cmd_read(args: argparse.Namespace) -> int:
    box = _open(args)
    after = args.after
    if args.last is not None:
        after = max(after, box.head(args.thread) - args.last)
    page = box.read(args.thread, after, args.limit)
    if args.json:
        _print_json(
            {
                "messages": [m.to_dict() for m in page.messages],
                "cursor": page.cursor,
                "has_more": page.has_more,
                "skipped": [{"path": d.path, "reason": d.reason} for d in page.skipped],
                "pending": page.pending.to_dict() if page.pending else None,
            }
        )
        return EXIT_OK
    for m in page.messages:
        print(_show(m))
    _trouble(page.skipped, [page.pending] if page.pending else [], set())
    if page.pending is not None and not page.pending.blocked:
        print(f"... run `mailslot read {args.thread} --after {page.cursor}` again shortly",
              file=sys.stderr)  # fmt: skip
    if page.has_more:
        print(f"... more: mailslot read {args.thread} --after {page.cursor}")
    return EXIT_OK


def _trouble(skipped: list[Damage], pending: list[Pending], told: set[str]) -> None:
    """Print on stderr, once each, what a read stepped over and what it is waiting for."""
    for d in skipped:
        if d.path not in told:
            told.add(d.path)
            print(f"(skipped {d})", file=sys.stderr)
    for p in pending:
        key = f"{p.path}\0{p.reason[:20]}"
        if key not in told:
            told.add(key)
            print(f"(waiting for {p})", file=sys.stderr)


def cmd_tail(args: argparse.Namespace) -> int:
    box = _open(args)
    names = args.threads or list(box)
    cursor: dict[str, int] = {}
    backlog: list[Message] = []
    for t in names:
        head = box.head(t)
        backlog += box.read(t, max(0, head - args.lines), max(1, min(args.lines, 1000))).messages
        cursor[t] = head
    backlog.sort(key=lambda m: (m.created_at, m.thread, m.seq))
    _emit(backlog[-args.lines :] if args.lines else [], args, thread=True)
    if not args.follow:
        return EXIT_OK
    told: set[str] = set()
    try:
        while True:  # blocks in wait(): no busy polling; new threads are followed too
            got = box.wait(args.threads or None, cursor, timeout=3600)
            cursor = got.cursor
            _emit(got.messages, args, thread=True)
            _trouble(got.skipped, got.pending, told)
    except KeyboardInterrupt:
        return EXIT_OK  # Ctrl-C is how one stops following
    finally:
        box.close()


def cmd_wait(args: argparse.Namespace) -> int:
    box = _open(args)
    after: int | None = args.after
    try:
        got = box.wait(args.thread, after, to=args.to, timeout=args.timeout, limit=args.limit)
    finally:
        box.close()
    if args.json:
        _print_json(got.to_dict())
    else:
        _emit(got.messages, args, thread=args.thread is None)
        _trouble(got.skipped, got.pending, set())
    return EXIT_TIMEOUT if got.timed_out else EXIT_OK


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
    from mailslot.tools import Session

    agents = Session(_open(args)).agent_list()["agents"]
    if args.json:
        _print_json(agents)
        return EXIT_OK
    if not agents:
        print("no agents yet")
        return EXIT_OK
    colors = {"online": "32", "waiting": "36", "idle": "33", "offline": "2"}
    rows = []
    for a in agents:
        since = a.get("since") if a["status"] != "offline" else a.get("last_seen")
        what = a["status"] + (f" on {a['waiting_on']}" if a.get("waiting_on") else "")
        status = _paint(what, colors.get(a["status"], "0"))
        rows.append([a["agent"], status, _when(since) if since else "-", a.get("client") or "-",
                     a.get("model") or "-", a.get("description") or ""])  # fmt: skip
    print(_table(rows, ["AGENT", "STATUS", "SINCE", "CLIENT", "MODEL", "DESCRIPTION"]))
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from mailslot.tools import transcript_html, transcript_markdown

    box = _open(args)
    if args.format == "md":
        sys.stdout.write(transcript_markdown(box, args.thread))
    elif args.format == "html":
        sys.stdout.write(transcript_html(box, args.thread))
    else:
        doc = {"thread": box.thread(args.thread).to_dict(),
               "messages": [m.to_dict() for m in box.messages(args.thread)]}  # fmt: skip
        _print_json(doc)
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from mailslot._doctor import diagnose

    report = diagnose(_root(args), fix=args.fix)
    if args.json:
        _print_json(report.to_dict())
    else:
        yes = {True: "yes", False: "NO", None: "?"}
        print(f"root        {report.root}")
        network = " (network mount)" if report.network else ""
        print(f"filesystem  {report.filesystem or '?'}{network}"
              f"; hard links {yes[report.hard_links]}; locks {yes[report.locks]}; "
              f"waits wake by {report.wait_mode or '?'}")  # fmt: skip
        print(f"contents    {report.threads} threads, {report.messages} messages")
        for f in report.findings:
            mark = _paint("fixed", "32") if f.fixed else _paint("problem", "31")
            print(f"{mark}  {f.kind}: {f.path}: {f.detail}" + (f" -> {f.fixed}" if f.fixed else ""))
        if report.healthy:
            print("healthy" if not report.findings else "healthy after repairs")
        elif not args.fix and any(f.kind in FIXABLE for f in report.findings):
            print("run `mailslot doctor --fix` to repair what is safe to repair")
        if report.git_work_tree and any(f.kind == "conflict" and f.fixed for f in report.findings):
            print(f"merge conflicts resolved: finish the merge with `git add -A {report.root}` "
                  "and `git commit`")  # fmt: skip
    return EXIT_OK if report.healthy else EXIT_ERROR


FIXABLE = {
    "thread record", "gap", "corrupt message", "conflict", "temp file", "stale presence",
    "gitignore",
}  # fmt: skip


def cmd_mcp_config(args: argparse.Namespace) -> int:
    from mailslot import _clients

    root = _root(args).resolve()
    Mailbox(root)  # fail here, clearly, if it is not a mailbox
    agent = args.agent or _clients.AGENT_NAMES[args.client]
    if not args.install:
        sys.stdout.write(_clients.render(args.client, root, agent))
        return EXIT_OK
    project = root.parent if root.name == ".mailslot" else Path.cwd()
    path = Path(args.path) if args.path else _clients.target(args.client, project, Path.home())
    how = _clients.install(args.client, path, root, agent)
    if args.json:
        _print_json({"client": args.client, "path": str(path), "result": how, "agent": agent})
    else:
        print(f"{how} mailslot (agent {agent!r}, root {root}) in {path}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    import anyio

    from mailslot import demo

    if args.root:
        root = Path(args.root)
        if root.exists() and any(root.iterdir()):
            raise MailslotError(f"{root} is not empty; give the demo a new or empty folder")
    else:
        root = Path(tempfile.mkdtemp(prefix="mailslot-demo-")) / ".mailslot"
    anyio.run(lambda: demo.run(root, sys.stdout, color=_color()))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from mailslot.stdio_server import serve  # imports mcp: only this command pays for it

    agent = args.agent if args.agent is not None else os.environ.get("MAILSLOT_AGENT") or None
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


# ---------------------------------------------------------------------------- parser


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
        prog="mailslot",
        description="A mailbox for AI agents that is nothing but a folder.",
        epilog="exit codes: 0 ok, 1 error, 2 usage, 124 wait timed out, 130 interrupted",
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

    s = sub.add_parser("demo", help="watch three agents collaborate through a fresh mailbox")
    s.add_argument("--root", help="an empty folder for the demo's mailbox (default: a temp folder)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("thread", parents=[common, who], help="create or join the thread of a topic")
    s.add_argument("topic")
    s.set_defaults(func=cmd_thread)

    s = sub.add_parser("threads", parents=[common], help="list threads, most recent first")
    s.add_argument("--state", choices=STATES)
    s.add_argument("--all", action="store_true", help="include archived threads")
    s.set_defaults(func=cmd_threads)

    s = sub.add_parser("read", parents=[common], help="print a thread's messages")
    s.add_argument("thread")
    s.add_argument("--after", type=int, default=0, metavar="SEQ")
    s.add_argument("--last", type=int, metavar="N", help="only the last N messages")
    s.add_argument("--limit", type=int, default=100)
    s.set_defaults(func=cmd_read)

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

    s = sub.add_parser("tail", parents=[common], help="show the latest messages; -f follows live")
    s.add_argument("threads", nargs="*", metavar="THREAD", help="default: every thread")
    s.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new messages (Ctrl-C ends)"
    )
    s.add_argument("-n", "--lines", type=int, default=10, metavar="N", help="show the last N first")
    s.set_defaults(func=cmd_tail)

    s = sub.add_parser(
        "wait", parents=[common], help="block until new messages; exit 124 on timeout"
    )
    s.add_argument("thread", nargs="?", help="default: every thread")
    s.add_argument(
        "--after", type=int, metavar="SEQ", help="wait past this seq (default: from now)"
    )
    s.add_argument("--to", metavar="AGENT", help="only messages addressed to AGENT (its inbox)")
    s.add_argument("--timeout", type=float, default=60.0, metavar="S")
    s.add_argument("--limit", type=int, default=100)
    s.set_defaults(func=cmd_wait)

    s = sub.add_parser("state", parents=[common, who], help="change a thread's state")
    s.add_argument("thread")
    s.add_argument("state", choices=STATES)
    s.add_argument("--summary", help="Markdown summary, typically when closing")
    s.set_defaults(func=cmd_state)

    s = sub.add_parser("agents", parents=[common], help="who is online, waiting, idle or offline")
    s.set_defaults(func=cmd_agents)

    s = sub.add_parser("register", parents=[common], help="create or update an agent card")
    s.add_argument("name")
    s.add_argument("--client")
    s.add_argument("--model")
    s.add_argument("--description")
    s.set_defaults(func=cmd_register)

    s = sub.add_parser("export", parents=[common], help="a thread as Markdown, JSON or HTML")
    s.add_argument("thread")
    s.add_argument("--format", choices=["md", "json", "html"], default="md")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser(
        "doctor", parents=[common], help="check the folder; --fix repairs what is safe"
    )
    s.add_argument("--fix", action="store_true")
    s.set_defaults(func=cmd_doctor)

    from mailslot._clients import CLIENTS

    s = sub.add_parser(
        "mcp-config", parents=[common], help="print (or --install) a client's MCP config"
    )
    s.add_argument("client", choices=CLIENTS)
    s.add_argument("--agent", help="the agent's name (default: one per client, e.g. claude)")
    s.add_argument("--install", action="store_true", help="merge it into the file the client reads")
    s.add_argument("--path", help="install into this file instead")
    s.set_defaults(func=cmd_mcp_config)

    s = sub.add_parser("serve", parents=[common], help="serve MCP over stdio for one agent")
    s.add_argument(
        "--agent", help="this agent's name (default: $MAILSLOT_AGENT, else from the client)"
    )
    s.add_argument("--lang", help="preferred language of messages, e.g. English or Chinese")
    s.add_argument("--wait-default", type=float, default=50.0, metavar="S",
                   help="msg_wait timeout when the model gives none (default 50)")  # fmt: skip
    s.add_argument("--wait-max", type=float, default=600.0, metavar="S",
                   help="longest msg_wait a model may ask for (default 600)")  # fmt: skip
    s.add_argument("--heartbeat-timeout", type=float, default=30.0, metavar="S",
                   help="not seen for this long reads as offline (default 30)")  # fmt: skip
    s.add_argument("--poll", action="store_true", help="wake waiters by polling only")
    s.set_defaults(func=cmd_serve)
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
        return EXIT_INTERRUPTED
