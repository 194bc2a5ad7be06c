"""The `mailslot` command: the same verbs as the library and the tools, for people and scripts.

This is the only module that reads flags and the environment. Exit codes: 0 success, 1 a
mailslot error (one line on stderr), 2 a usage error, 124 `wait` timed out, 130 interrupted,
141 the reader of stdout went away (`mailslot read t | head -1`).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from mailslot import __version__
from mailslot.clients import configs
from mailslot.commands.terminal import agents_table, doctor_report, show, table, trouble, when
from mailslot.coordination.reservations import held_view
from mailslot.coordination.tasks import STATUSES, iso
from mailslot.mailbox import Mailbox, default_root, find_root
from mailslot.store.errors import (
    InvalidName,
    MailslotError,
    NoSuchAgent,
    NoSuchMessage,
    NoSuchThread,
    TaskError,
)
from mailslot.store.format import PRIORITIES, STATES, TYPES, Message, loads
from mailslot.store.names import slugify
from mailslot.tools import question_view, task_board, task_view, thread_id

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 124  # as GNU timeout(1): scripts already know it
EXIT_INTERRUPTED = 130
EXIT_READER_GONE = 141  # 128 + SIGPIPE, as the shell reports a command whose reader left


# ---------------------------------------------------------------------------- declaring commands

Handler = Callable[[argparse.Namespace], int]


class Arg(NamedTuple):
    """One argument of a command: what `ArgumentParser.add_argument` is given."""

    flags: tuple[str, ...]
    options: dict[str, Any]


class Command(NamedTuple):
    """A subcommand: its name, help, arguments, which shared options it takes, and its handler."""

    name: str
    help: str
    args: tuple[Arg, ...]
    root: bool
    json: bool
    who: bool
    handler: Handler


COMMANDS: list[Command] = []  # in declaration order, which is the order `--help` lists them


def arg(*flags: str, **options: Any) -> Arg:
    """Return an argument declaration, spelled as `add_argument` spells it."""
    return Arg(flags, options)


def command(
    name: str,
    *,
    help: str,
    args: Sequence[Arg] = (),
    root: bool = True,
    json: bool = True,
    who: bool = False,
) -> Callable[[Handler], Handler]:
    """Return a decorator that declares the command `name`, run by the function it decorates.

    root adds --root; json adds --json, a promise that the command then prints JSON and only
    JSON (tests/test_first_hour_cli.py holds every command to it); who adds --as.
    """

    def declare(handler: Handler) -> Handler:
        COMMANDS.append(Command(name, help, tuple(args), root, json, who, handler))
        return handler

    return declare


class UsageError(Exception):
    """Arguments that disagree with each other: exit 2, as argparse does for the rest."""


def parser(only: str | None = None) -> argparse.ArgumentParser:
    """Return the argument parser of the mailslot command (with only that subcommand, if
    given: what `mailslot serve` parses at every agent's start needs no other)."""
    root = argparse.ArgumentParser(add_help=False)
    root.add_argument(
        "--root", help="mailbox root (default: $MAILSLOT_ROOT, else nearest .mailslot/)"
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON for scripts")
    who = argparse.ArgumentParser(add_help=False)
    who.add_argument(
        "--as", dest="sender", help="your name (default: $MAILSLOT_AGENT, else the OS user)"
    )

    p = argparse.ArgumentParser(
        prog="mailslot",
        description="A mailbox for AI agents that is nothing but a folder.",
        epilog="exit codes: 0 ok, 1 error, 2 usage, 124 wait timed out, 130 interrupted, "
        "141 the output's reader went away",
    )
    p.add_argument("--version", action="version", version=f"mailslot {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for c in COMMANDS:
        if only is not None and c.name != only:
            continue
        parents = [pa for pa, on in ((root, c.root), (as_json, c.json), (who, c.who)) if on]
        s = sub.add_parser(c.name, parents=parents, help=c.help)
        for a in c.args:
            s.add_argument(*a.flags, **a.options)
        s.set_defaults(func=c.handler, json=False)
    return p


# ---------------------------------------------------------------------------- errors and warnings


def command_text(e: MailslotError) -> str:
    """Return what a person reads for a library error: what went wrong and the command to run.

    The one place library errors become the command's words, as `stdio_server.model_text` is
    for the model: the library's own text names no front end's verbs.
    """
    if isinstance(e, NoSuchThread):
        near = f"; did you mean {', '.join(e.suggestions)}?" if e.suggestions else ""
        return (f"no thread {e.thread!r}{near} (`mailslot threads` lists the threads, "
                "`mailslot thread TOPIC` starts one)")  # fmt: skip
    if isinstance(e, NoSuchAgent):
        known = ", ".join(e.known) if e.known else "none yet"
        return (f"no agent {e.agent!r} here or in this thread (known: {known}); "
                f"`mailslot register {e.agent}` creates it")  # fmt: skip
    if isinstance(e, NoSuchMessage):
        return f"{e}; `mailslot read {e.thread}` shows them"
    if isinstance(e, InvalidName) and e.kind == "thread id":
        try:
            topic = bool(slugify(str(e.name))) and not re.search(r"[/\\]", str(e.name))
        except InvalidName:
            topic = False  # neither an id nor a topic (a path is not one either)
        if not topic:
            return f"{e}; `mailslot threads` lists the thread ids"
        return (f"no thread has the id or topic {e.name!r}; give a thread id or the topic of a "
                f"thread (`mailslot threads` lists them), or start one with "
                f"`mailslot thread {shlex.quote(str(e.name))}`")  # fmt: skip
    if isinstance(e, TaskError):
        return f"{e}; `mailslot tasks` shows the tasks and their status"
    return str(e)


class _Warnings(logging.Handler):
    """Print the library's warnings on stderr, as Python would, but each damaged file once.

    A read both logs the damaged files it steps over and returns them, and the command lists
    what it returned (`trouble`): both go through told, so a person reads each file once.
    """

    def __init__(self, told: set[str]) -> None:
        super().__init__(logging.WARNING)
        self.told = told

    def emit(self, record: logging.LogRecord) -> None:
        damaged = getattr(record, "damaged", None)
        if damaged is not None:
            if damaged in self.told:
                return
            self.told.add(damaged)
        try:
            print(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


# ---------------------------------------------------------------------------- helpers


def _root(args: argparse.Namespace) -> Path:
    if args.root:
        return Path(args.root)
    env = os.environ.get("MAILSLOT_ROOT")
    if env:
        return Path(env)
    return find_root()


def _open(args: argparse.Namespace) -> Mailbox:
    """Return the command's mailbox, with its THREAD arguments (an id or a topic, as the tools
    take) made thread ids."""
    box = Mailbox(_root(args))
    if getattr(args, "thread", None):
        args.thread = thread_id(box, args.thread)
    if getattr(args, "threads", None):
        args.threads = [thread_id(box, t) for t in args.threads]
    return box


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


def _show(m: Message, *, thread: bool = False) -> str:
    """Return a message for this terminal: colour and width ($COLUMNS) read here, not below."""
    width = max(40, min(shutil.get_terminal_size((100, 24)).columns, 120) - 2)
    return show(m, thread=thread, color=_color(), width=width)


def _emit(messages: Iterable[Message], args: argparse.Namespace, *, thread: bool = False) -> None:
    for m in messages:
        if args.json:
            print(json.dumps(m.to_dict(), ensure_ascii=False), flush=True)
        else:
            print(_show(m, thread=thread), flush=True)


# ---------------------------------------------------------------------------- commands


@command(
    "init",
    help="create a mailbox root",
    args=[
        arg("path", nargs="?",
            help="where (default: .mailslot/ at the top of the git checkout, else here)"),
        arg("--no-fsync", action="store_true", help="scratch folder: do not fsync messages"),
        arg("--shared", action="store_true",
            help="shared by the users of the folder's group (converts an existing mailbox)"),
    ],
)  # fmt: skip
def cmd_init(args: argparse.Namespace) -> int:
    path = Path(args.path) if args.path else (Path(args.root) if args.root else default_root())
    box = Mailbox.init(path, fsync=not args.no_fsync, shared=args.shared)
    if args.json:
        _print_json({"root": str(box.root), "format": box.settings.format,
                     "shared": box.settings.shared, "changes": box.shared_changes})  # fmt: skip
    else:
        print(f"mailbox ready at {box.root}")
        for line in box.shared_changes:
            print(f"  {line}")
        print("next: connect an agent, e.g. `mailslot mcp-config claude-code --install` "
              "(or cursor, vscode, codex, gemini, claude-desktop); `mailslot demo` shows three "
              "agents at work, `mailslot ui` the mailbox in your browser")  # fmt: skip
    return EXIT_OK


@command(
    "demo",
    help="watch three agents collaborate through a fresh mailbox",
    args=[
        arg("--root", help="an empty folder for the demo's mailbox (default: a temp folder)"),
        arg("--ui", action="store_true", help="then show the conversation in `mailslot ui`"),
    ],
    root=False,
    json=False,
)
def cmd_demo(args: argparse.Namespace) -> int:
    import anyio

    from mailslot import demo

    if args.root:
        root = Path(args.root)
        if root.exists() and any(root.iterdir()):
            raise MailslotError(f"{root} is not empty; give the demo a new or empty folder")
    else:
        root = Path(tempfile.mkdtemp(prefix="mailslot-demo-")) / ".mailslot"
    by_cd = root.name == ".mailslot" and not os.environ.get("MAILSLOT_ROOT")
    command = _command_here()
    anyio.run(lambda: demo.run(root, sys.stdout, color=_color(), command=command, by_cd=by_cd))
    if args.ui:  # leave the conversation open in the console
        args.sender = None
        return _serve_ui(Mailbox(root), _sender(args), 0, False)
    return EXIT_OK


def _command_here() -> str:
    """Return how a person runs this mailslot in their shell, from any folder.

    `mailslot` if that is what PATH finds; else the path of this installation's script (after
    `pip install .` into a venv that is not active, PATH finds none), else
    `python -m mailslot` with this interpreter. Home is written ~ to keep lines short.
    """
    script = Path(sys.executable).parent / ("mailslot.exe" if os.name == "nt" else "mailslot")
    found = shutil.which("mailslot")
    if script.exists():
        with contextlib.suppress(OSError):
            if found and os.path.samefile(found, script):
                return "mailslot"
        return _shell_path(script)
    return f"{_shell_path(Path(sys.executable))} -m mailslot"


def _shell_path(path: Path) -> str:
    """Return an absolute path as a shell word, with the home folder as ~."""
    path = path.absolute()
    with contextlib.suppress(RuntimeError, ValueError):
        return "~/" + shlex.quote(str(path.relative_to(Path.home())))
    return shlex.quote(str(path))


@command("thread", help="create or join the thread of a topic", args=[arg("topic")], who=True)
def cmd_thread(args: argparse.Namespace) -> int:
    box = _open(args)
    info = box.create_thread(args.topic, creator=_sender(args))
    if args.json:
        _print_json(info.to_dict())
    else:
        print(f"{info.id}  (head {info.head}, {info.state})")
    return EXIT_OK


@command(
    "threads",
    help="list threads, most recent first",
    args=[
        arg("--state", choices=STATES),
        arg("--all", action="store_true", help="include archived threads"),
    ],
)
def cmd_threads(args: argparse.Namespace) -> int:
    box = _open(args)
    infos = box.threads(state=args.state, include_archived=args.all)
    if args.json:
        _print_json({"threads": [t.to_dict() for t in infos]})
        return EXIT_OK
    if not infos:
        print("no threads yet")
        return EXIT_OK
    rows = [[t.id, t.state, str(t.head), ", ".join(t.participants), when(t.last_activity), t.topic]
            for t in infos]  # fmt: skip
    print(table(rows, ["THREAD", "STATE", "MSGS", "PARTICIPANTS", "LAST ACTIVITY", "TOPIC"]))
    return EXIT_OK


@command(
    "read",
    help="print a thread's messages",
    args=[
        arg("thread"),
        arg("--after", type=int, default=0, metavar="SEQ"),
        arg("--last", type=int, metavar="N", help="only the last N messages"),
        arg("--limit", type=int, default=100),
    ],
)
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
    trouble(page.skipped, [page.pending] if page.pending else [], args.told)
    if page.pending is not None and not page.pending.blocked:
        print(f"... run `mailslot read {args.thread} --after {page.cursor}` again shortly",
              file=sys.stderr)  # fmt: skip
    if page.has_more:
        print(f"... more: mailslot read {args.thread} --after {page.cursor}")
    return EXIT_OK


@command(
    "post",
    help="post a message (TEXT or - for stdin)",
    args=[
        arg("thread"),
        arg("text"),
        arg("--to", action="append", metavar="AGENT", help="address an agent (repeatable)"),
        arg("--type", default="message", choices=[t for t in TYPES if t != "state"]),
        arg("--priority", default="normal", choices=PRIORITIES),
        arg("--reply-to", type=int, metavar="SEQ"),
        arg("--meta", help="a JSON object stored with the message"),
        arg("--key", help="idempotency key: a retry with the same key is stored once"),
    ],
    who=True,
)
def cmd_post(args: argparse.Namespace) -> int:
    box = _open(args)
    content: str | bytes = args.text
    if args.text == "-":
        content = sys.stdin.buffer.read()
        # `echo hi | mailslot post t -` means "hi": drop the one final newline, as $(...) does.
        content = content[:-2] if content.endswith(b"\r\n") else content.removesuffix(b"\n")
    meta = None
    if args.meta is not None:
        try:
            meta = loads(args.meta)  # bounded: a hostile depth is a ValueError, not a crash
        except ValueError as e:
            raise MailslotError(f"--meta is not JSON: {e}") from None
    thread = args.thread
    message = box.publish(
        thread, content, sender=_sender(args), to=args.to or [], type=args.type,
        priority=args.priority, reply_to=args.reply_to, meta=meta, idempotency_key=args.key,
    )  # fmt: skip
    if args.json:
        _print_json(message.to_dict())
    else:
        print(message.seq)
    return EXIT_OK


@command(
    "tail",
    help="show the latest messages; -f follows live",
    args=[
        arg("threads", nargs="*", metavar="THREAD", help="default: every thread"),
        arg("-f", "--follow", action="store_true", help="keep printing new messages (Ctrl-C ends)"),
        arg("-n", "--lines", type=int, default=10, metavar="N", help="show the last N first"),
    ],
)
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
    try:
        while True:  # blocks in wait(): no busy polling; new threads are followed too
            got = box.wait(args.threads or None, cursor, timeout=3600)
            cursor = got.cursor
            _emit(got.messages, args, thread=True)
            trouble(got.skipped, got.pending, args.told)
    except KeyboardInterrupt:
        return EXIT_OK  # Ctrl-C is how one stops following
    finally:
        box.close()


@command(
    "wait",
    help="block until new messages; exit 124 on timeout",
    args=[
        arg("thread", nargs="?", help="default: every thread"),
        arg("--after", type=int, metavar="SEQ", help="wait past this seq (default: from now)"),
        arg("--to", metavar="AGENT", help="only messages addressed to AGENT (its inbox)"),
        arg("--timeout", type=float, default=60.0, metavar="S"),
        arg("--limit", type=int, default=100),
    ],
)
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
        trouble(got.skipped, got.pending, args.told)
    return EXIT_TIMEOUT if got.timed_out else EXIT_OK


@command(
    "state",
    help="change a thread's state",
    args=[
        arg("thread"),
        arg("state", choices=STATES),
        arg("--summary", help="Markdown summary, typically when closing"),
    ],
    who=True,
)
def cmd_state(args: argparse.Namespace) -> int:
    box = _open(args)
    seq = box.set_state(args.thread, args.state, sender=_sender(args), summary=args.summary)
    if args.json:
        _print_json(box.thread(args.thread).to_dict())
    else:
        print(seq)
    return EXIT_OK


@command(
    "tasks",
    help="the task board: open, claimed (by whom, until when), done and dead tasks",
    args=[
        arg("thread", nargs="?", help="default: every thread"),
        arg("--status", choices=[*STATUSES, "all"], help="only these (default: all but done)"),
    ],
    who=True,
)
def cmd_tasks(args: argparse.Namespace) -> int:
    box = _open(args)
    threads = [args.thread] if args.thread else list(box)
    if args.thread:
        box.thread(threads[0])  # a missing thread fails here, with its readable error
    if box.read_only is None:  # holders that died or stalled let go before we show them
        box.tasks.settle(threads, noticed_by=_sender(args))
    board = task_board(box, threads, args.status)
    shown, questions, counts = board.tasks, board.questions, board.counts
    if args.json:
        _print_json(
            {
                "tasks": [task_view(box, t) for t in shown],
                "counts": counts,
                "questions": [question_view(q) for q in questions],
            }
        )  # fmt: skip
        return EXIT_OK
    if shown:
        rows = []
        for t in shown:
            until = box.tasks.until(t)
            holder = t.holder or (t.done_by if t.status == "done" else "") or ""
            tries = f"{t.attempts}" + (f" ({t.failures} failed)" if t.failures else "")
            rows.append([t.thread, str(t.seq), t.status, holder,
                         when(iso(until)) if until else "", tries, t.sender, t.title])  # fmt: skip
        print(table(rows, ["THREAD", "SEQ", "STATUS", "HOLDER", "UNTIL", "TRIES", "FROM", "TASK"]))
    if questions:
        print("\nunanswered questions:" if shown else "unanswered questions:")
        rows = [[q.thread, str(q.seq), q.sender, ", ".join(q.to), q.title] for q in questions]
        print(table(rows, ["THREAD", "SEQ", "FROM", "TO", "QUESTION"]))
    summary = ", ".join(f"{n} {st}" for st, n in counts.items())
    print(("\n" if shown or questions else "") + f"tasks: {summary}")
    return EXIT_OK


@command(
    "claim",
    help="take a task (you alone work on it until you post its result, or give it back)",
    args=[
        arg("thread"),
        arg("seq", type=int),
        arg(
            "--lease", type=float, metavar="S", help="seconds it stays yours without a sign of work"
        ),
        arg("--release", action="store_true", help="give back a task you hold instead"),
        arg(
            "--holder",
            metavar="NAME",
            help="with --release: take the task back from NAME, recorded as yours",
        ),
    ],
    who=True,
)
def cmd_claim(args: argparse.Namespace) -> int:
    box = _open(args)
    me = _sender(args)
    if args.holder is not None and not args.release:
        raise UsageError("--holder goes with --release (take NAME's claim back)")
    if args.release:
        holder = args.holder if args.holder not in (None, me) else None
        event = box.tasks.release(args.thread, args.seq, agent=me, holder=holder)
        if args.json:
            _print_json(
                {"released": True, "thread": args.thread, "seq": args.seq, "event_seq": event.seq}
                | ({"holder": holder} if holder else {})
            )
        elif holder:
            print(f"took task {args.seq} back from {holder} as {me} (event {event.seq}); "
                  "it is open again")  # fmt: skip
        else:
            print(f"gave task {args.seq} back (event {event.seq}); it is open again")
        return EXIT_OK
    # No process of ours stays to hold it: the claim lasts its lease, renewed by claiming again.
    got = box.tasks.claim(args.thread, args.seq, agent=me, lease_s=args.lease)
    until = iso(got.until) if got.until else None
    if args.json:
        _print_json({"claimed": got.won, "thread": args.thread, "seq": args.seq,
                     "holder": got.task.holder, "until": until})  # fmt: skip
    elif got.won:
        close = f"mailslot post {args.thread} TEXT --type result --reply-to {args.seq}"
        print(f"task {args.seq} is yours until {when(until or '')} (claim again to renew); "
              f"`{close}` closes it")  # fmt: skip
    else:
        print(f"{got.task.holder} holds task {args.seq} until {when(until or '')}", file=sys.stderr)
    return EXIT_OK if got.won else EXIT_ERROR


@command("reservations", help="who holds which paths of the repository, until when, and why")
def cmd_reservations(args: argparse.Namespace) -> int:
    box = _open(args)
    held = box.reservations.live()
    if args.json:
        _print_json({"reservations": [held_view(h, box.reservations.until(h)) for h in held]})
        return EXIT_OK
    if not held:
        print("no reservations")
        return EXIT_OK
    rows = [[h.pattern, h.holder, "exclusive" if h.exclusive else "shared", when(iso(h.since)),
             when(iso(box.reservations.until(h))), h.reason] for h in held]  # fmt: skip
    print(table(rows, ["PATH", "HOLDER", "KIND", "SINCE", "UNTIL", "WHY"]))
    return EXIT_OK


@command(
    "reserve",
    help="reserve paths you will edit (all of them, or none if someone holds any)",
    args=[
        arg("paths", nargs="+", metavar="PATH", help="repository-relative files, folders, globs"),
        arg("--shared", action="store_true", help="only keep others from reserving exclusively"),
        arg("--ttl", type=float, metavar="S", help="seconds it lasts (reserve again to renew)"),
        arg("--reason", help="why, for the others"),
    ],
    who=True,
)
def cmd_reserve(args: argparse.Namespace) -> int:
    box = _open(args)
    # No process of ours stays to hold them: they last their TTL, renewed by reserving again.
    grant = box.reservations.reserve(args.paths, agent=_sender(args), exclusive=not args.shared,
                        ttl_s=args.ttl, reason=args.reason)  # fmt: skip
    held = grant.held if grant.granted else grant.conflicts
    if args.json:
        _print_json({"granted": grant.granted,
                     "reserved" if grant.granted else "conflicts":
                         [held_view(h, box.reservations.until(h)) for h in held]})  # fmt: skip
    elif grant.granted:
        until = when(iso(box.reservations.until(held[0])))
        print(f"reserved {', '.join(h.pattern for h in held)} until {until} "
              "(reserve again to renew; `mailslot release` gives them back)")  # fmt: skip
        if grant.whole_repo:
            print("note: this reserves the whole repository", file=sys.stderr)
    else:
        for h in held:
            why = f" ({h.reason})" if h.reason else ""
            print(f"refused: {h.holder} holds {h.pattern} until "
                  f"{when(iso(box.reservations.until(h)))}{why}", file=sys.stderr)  # fmt: skip
    return EXIT_OK if grant.granted else EXIT_ERROR


@command(
    "release",
    help="give back your reservations of paths (all of yours without PATH)",
    args=[
        arg("paths", nargs="*", metavar="PATH"),
        arg(
            "--holder",
            metavar="NAME",
            help="free NAME's reservations instead (all of them without PATH), recorded as "
            "freed by you and naming NAME",
        ),
    ],
    who=True,
)
def cmd_release(args: argparse.Namespace) -> int:
    box = _open(args)
    me = _sender(args)
    holder = args.holder if args.holder not in (None, me) else None
    released, not_held = box.reservations.release(args.paths or None, agent=me, holder=holder)
    if args.json:
        _print_json({"released": sorted({h.pattern for h in released}), "not_held": not_held}
                    | ({"holder": holder} if holder else {}))  # fmt: skip
    else:
        whose = f"{holder}'s" if holder else "yours"
        if released:
            freed = ", ".join(sorted({h.pattern for h in released}))
            print(f"freed {holder}'s reservation of {freed} (recorded as freed by {me})"
                  if holder else f"released {freed}")  # fmt: skip
        for p in not_held:
            print(f"not {whose}: {p} (nothing to give back)", file=sys.stderr)
        if not released and not not_held:
            print(f"{holder} held no reservations" if holder else "you held no reservations",
                  file=sys.stderr)  # fmt: skip
    return EXIT_OK if released or not (args.paths or not_held) else EXIT_ERROR


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
def cmd_guard(args: argparse.Namespace) -> int:
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
def cmd_notify(args: argparse.Namespace) -> int:
    box = _open(args)
    me = _sender(args)
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
def cmd_hook(args: argparse.Namespace) -> int:
    from mailslot.clients import hooks as _hooks  # only this command loads it

    # Never exit non-zero, even for an unknown event or client: exit 2 would block the user's
    # prompt in Claude Code. _hooks.run says what is wrong on stderr and exits 0.
    stdin = "" if args.event == "notify" else _hooks.read_stdin()
    root = Path(args.root) if args.root else None
    out, code = _hooks.run(args.event, args.client, args.sender, stdin, args.payload, root)
    sys.stdout.write(out)
    return code


@command(
    "search",
    help='search every thread: words, "phrases", prefix*, OR, NOT; best matches first',
    args=[
        arg("query"),
        arg("--thread", metavar="T"),
        arg("--from", dest="sender", metavar="NAME", help="only messages from NAME"),
        arg("--type", choices=[t for t in TYPES if t != "state"]),
        arg("--to", metavar="AGENT", help="only messages addressed to AGENT"),
        arg(
            "--since",
            metavar="ISO",
            help="only messages created since then: an ISO 8601 date or time, e.g. 2026-12-01 "
            "or 2026-12-01T09:30+02:00 (UTC where no offset is given)",
        ),
        arg("--limit", type=int, default=20),
    ],
)
def cmd_search(args: argparse.Namespace) -> int:
    box = _open(args)
    found = box.search(args.query, thread=args.thread, sender=args.sender, type=args.type,
                       to=args.to, since=args.since, limit=args.limit)  # fmt: skip
    if args.json:
        _print_json({"hits": [m.message.to_dict() | {"snippet": m.snippet} for m in found.hits],
                     "total": found.total, "engine": found.engine})  # fmt: skip
        return EXIT_OK
    if not found.hits:
        print("no match (try fewer words, a prefix such as auth*, or OR between words)")
        return EXIT_OK
    on, off = ("\033[1;33m", "\033[0m") if _color() else ("", "")
    for hit in found.hits:
        m = hit.message
        text = hit.snippet.replace("«", on).replace("»", off) if on else hit.snippet
        print(f"{m.thread} #{m.seq}  {m.sender} ({m.type})  {when(m.created_at)}")
        print(f"    {text}")
    if found.total > len(found.hits):
        print(f"... {found.total - len(found.hits)} more: raise --limit or add filters")
    trouble(found.skipped, [], args.told)
    return EXIT_OK


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
def cmd_ui(args: argparse.Namespace) -> int:
    return _serve_ui(_open(args), _sender(args), args.port, args.open)


def _serve_ui(box: Mailbox, person: str, port: int, open_it: bool) -> int:
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


@command("agents", help="who is online, waiting, idle or offline")
def cmd_agents(args: argparse.Namespace) -> int:
    from mailslot.tools import Session

    agents = Session(_open(args)).agent_list()["agents"]
    if args.json:
        _print_json({"agents": agents})
        return EXIT_OK
    if not agents:
        print("no agents yet")
        return EXIT_OK
    print(agents_table(agents, color=_color()))
    return EXIT_OK


@command(
    "register",
    help="create or update an agent card",
    args=[arg("name"), arg("--client"), arg("--model"), arg("--description")],
)
def cmd_register(args: argparse.Namespace) -> int:
    box = _open(args)
    card = box.agents.register(
        args.name, client=args.client, model=args.model, description=args.description
    )
    if args.json:
        _print_json(card.to_dict())
    else:
        print(f"registered {card.name}")
    return EXIT_OK


@command(
    "export",
    help="a thread as Markdown, JSON or HTML",
    args=[arg("thread"),
          arg("--format", choices=["md", "json", "html"], help="default md; --json means json")],
)  # fmt: skip
def cmd_export(args: argparse.Namespace) -> int:
    from mailslot.tools import transcript_html, transcript_markdown

    if args.json and args.format not in (None, "json"):
        raise UsageError(f"--json asks for JSON and --format for {args.format}: give one")
    form = "json" if args.json else args.format or "md"
    box = _open(args)
    if form == "md":
        sys.stdout.write(transcript_markdown(box, args.thread))
    elif form == "html":
        sys.stdout.write(transcript_html(box, args.thread))
    else:
        doc = {"thread": box.thread(args.thread).to_dict(),
               "messages": [m.to_dict() for m in box.messages(args.thread)]}  # fmt: skip
        _print_json(doc)
    return EXIT_OK


@command(
    "doctor",
    help="check the folder; --fix repairs what is safe",
    args=[arg("--fix", action="store_true")],
)
def cmd_doctor(args: argparse.Namespace) -> int:
    from mailslot.store.doctor import diagnose

    report = diagnose(_root(args), fix=args.fix)
    if args.json:
        _print_json(report.to_dict())
    else:
        print(doctor_report(report, fix=args.fix, color=_color()))
    return EXIT_OK if report.healthy else EXIT_ERROR


@command(
    "mcp-config",
    help="print (or --install) a client's MCP config",
    args=[
        arg("client", choices=configs.CLIENTS),
        arg("--agent", help="the agent's name (default: one per client, e.g. claude)"),
        arg("--install", action="store_true", help="merge it into the file the client reads"),
        arg("--path", help="install into this file instead"),
        arg("--hooks", action="store_true",
            help="also the hooks that bring mail into the agent's turns "
                 "(claude-code, codex, gemini; for the agent of the server entry)"),
        arg("--channel", action="store_true",
            help="claude-code: serve --channel, which pushes new messages to an idle session"),
    ],
)  # fmt: skip
def cmd_mcp_config(args: argparse.Namespace) -> int:
    root = _root(args).resolve()
    Mailbox(root)  # fail here, clearly, if it is not a mailbox
    agent = args.agent or configs.AGENT_NAMES[args.client]  # the hooks' too: one name
    if args.hooks:
        configs.hook_groups(args.client, agent)  # refuse before anything is written
    project = root.parent if root.name == ".mailslot" else Path.cwd()
    home = Path.home()
    at = configs.place(args.client, root, project)  # what may be left to the machine
    hooked = configs.hook_options(at, root)
    path = Path(args.path) if args.path else configs.target(args.client, project, home, at)
    if not args.install:
        text = configs.render(args.client, root, agent, channel=args.channel, at=at)
        if args.json:  # the entry as JSON, and the file's text (TOML for codex) as a string
            doc = {"client": args.client, "agent": agent, "root": str(root), "path": str(path),
                   "server": configs.entry(args.client, root, agent, channel=args.channel,
                                            at=at),
                   "text": text}  # fmt: skip
            if args.hooks:
                doc["hooks"] = configs.hooks_doc(args.client, agent, **hooked)
                targets = configs.hooks_targets(args.client, project, home, at)
                doc["hooks_paths"] = {k: str(v) for k, v in targets.items()}
            if args.channel:
                doc["launch"] = configs.CHANNEL_LAUNCH
            _print_json(doc)
        else:
            sys.stdout.write(text)
            if args.hooks:
                snippet = configs.hooks_snippet(args.client, agent, project, home, at=at, **hooked)
                sys.stdout.write(snippet)
            if args.channel:
                sys.stderr.write(configs.channel_hint())
        return EXIT_OK
    where = configs.keys(args.client, path, project, home)
    how = configs.install(args.client, path, root, agent, channel=args.channel, at=at,
                           where=where)  # fmt: skip
    done = (configs.install_hooks(args.client, agent, project, home, at=at, **hooked)
            if args.hooks else [])  # fmt: skip
    notes = configs.install_notes(args.client, path, at, project, home)
    if args.json:
        _print_json({"client": args.client, "path": str(path), "result": how, "agent": agent,
                     "hooks": done, "notes": notes,
                     "launch": configs.CHANNEL_LAUNCH if args.channel else None})  # fmt: skip
    else:
        if how == "unchanged":
            print(f"mailslot (agent {agent!r}, root {root}) is already in {path}: nothing changed")
        else:
            print(f"{how} mailslot (agent {agent!r}, root {root}) in {path}")
        for line in done + notes:
            print(line)
        if args.channel:
            sys.stdout.write(configs.channel_hint())
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
    ],
)  # fmt: skip
def cmd_serve(args: argparse.Namespace) -> int:
    from mailslot.stdio_server import serve  # imports mcp: only this command pays for it

    agent = args.agent if args.agent is not None else os.environ.get("MAILSLOT_AGENT") or None
    lang = args.lang or os.environ.get("MAILSLOT_LANG") or None
    serve(
        str(_root(args)),
        agent=agent,
        lang=lang,
        wait_default=min(50.0, args.wait_max) if args.wait_default is None else args.wait_default,
        wait_max=args.wait_max,
        stale_after=args.heartbeat_timeout,
        wait_mode="poll" if args.poll else None,
        strict_name=args.strict_name,
        channel=args.channel or os.environ.get("MAILSLOT_CHANNEL", "") in ("1", "true", "yes"),
    )
    return EXIT_OK


def _not_utf8(argv: Sequence[str]) -> str | None:
    """Return what is wrong with the first argument that is not UTF-8 text, or None.

    Python hands such bytes over as lone surrogates, which no message, name or query can hold;
    a --root path may hold them (file names are bytes on POSIX).
    """
    for i, a in enumerate(argv):
        try:
            a.encode("utf-8")
        except UnicodeEncodeError as e:
            if a.startswith("--root=") or (i and argv[i - 1] == "--root"):
                continue
            raw = a.encode("utf-8", "surrogateescape")
            byte = raw[len(a[: e.start].encode("utf-8", "surrogateescape"))]
            return (
                f'argument "{raw.decode("utf-8", "backslashreplace")}" is not valid UTF-8 '
                f"(byte 0x{byte:02x}); mailslot reads its arguments as UTF-8 text: check the "
                "terminal's locale or the script's encoding"
            )
    return None


def _reader_gone() -> int:
    """End quietly when stdout's reader went away (`mailslot read t | head -1`).

    The Python docs' recipe: point stdout at devnull so the interpreter's final flush has
    nowhere to fail. Exit 141 (128 + SIGPIPE), what the shell reports for `cat`, `grep` or
    `git log` cut off the same way: the command did not get to say everything, so it does not
    claim success, and `set -o pipefail` scripts treat it as they treat those.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_READER_GONE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the mailslot command with argv and return its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    named = argv[0] if argv and any(c.name == argv[0] for c in COMMANDS) else None
    if (bad := _not_utf8(argv)) is not None:
        print(f"mailslot{' ' + named if named else ''}: error: {bad}", file=sys.stderr)
        return EXIT_USAGE
    args = parser(named).parse_args(argv)
    args.told = set()  # the damaged files this run has told of (_Warnings, trouble)
    warnings = _Warnings(args.told)
    if args.command != "serve":  # serve logs through the SDK's handler: each line once
        logging.getLogger("mailslot").addHandler(warnings)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a reader gone away is told here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        return _reader_gone()
    except MailslotError as e:
        print(f"mailslot: {command_text(e)}", file=sys.stderr)
        return EXIT_ERROR
    except UsageError as e:
        print(f"mailslot {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        logging.getLogger("mailslot").removeHandler(warnings)
