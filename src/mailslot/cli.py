"""The `mailslot` command: the same verbs as the library and the tools, for people and scripts.

The front of the command: it builds the parser from the commands (declared beside their
handlers in `mailslot.commands`), runs one, and turns what it raised into an exit code. This is
the only module that reads flags and the environment. Exit codes: 0 success, 1 a mailslot error
(one line on stderr), 2 a usage error, 124 `wait` timed out, 130 interrupted, 141 the reader of
stdout went away (`mailslot read t | head -1`).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import logging
import os
import re
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from mailslot import __version__
from mailslot.commands import agents, keys, reservations, run, serve, setup, sync, tasks, threads
from mailslot.commands.declare import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_READER_GONE,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Command,
    UsageError,
)
from mailslot.mailbox import Mailbox, find_root
from mailslot.store.errors import (
    InvalidName,
    LoopRefused,
    MailslotError,
    NoSuchAgent,
    NoSuchMessage,
    NoSuchThread,
    TaskError,
)
from mailslot.store.format import Message
from mailslot.store.names import slugify
from mailslot.views import terminal

__all__ = ["COMMANDS", "EXIT_TIMEOUT", "EXIT_USAGE", "command_text", "main", "parser"]

# Every command, in the order `mailslot --help` lists them.
COMMANDS: list[Command] = [
    setup.cmd_init,
    setup.cmd_demo,
    threads.cmd_thread,
    threads.cmd_threads,
    threads.cmd_read,
    threads.cmd_post,
    threads.cmd_tail,
    threads.cmd_wait,
    threads.cmd_state,
    tasks.cmd_tasks,
    tasks.cmd_claim,
    reservations.cmd_reservations,
    reservations.cmd_reserve,
    reservations.cmd_release,
    serve.cmd_guard,
    serve.cmd_notify,
    serve.cmd_hook,
    run.cmd_run,
    threads.cmd_search,
    serve.cmd_ui,
    agents.cmd_agents,
    agents.cmd_register,
    agents.cmd_dnd,
    keys.cmd_key,
    keys.cmd_verify,
    threads.cmd_export,
    setup.cmd_doctor,
    setup.cmd_mcp_config,
    sync.cmd_sync,
    serve.cmd_serve,
]


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
    if isinstance(e, LoopRefused):
        return (f"{e}. A person lifts it with `mailslot post {e.thread} TEXT` as a name with no "
                "agent card (--as NAME)")  # fmt: skip
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


class _Here:
    """The flags and the environment behind what a handler asks (`commands.declare.Here`)."""

    def root(self, args: argparse.Namespace) -> Path:
        if args.root:
            return Path(args.root)
        env = os.environ.get("MAILSLOT_ROOT")
        if env:
            return Path(env)
        return find_root()

    def open(self, args: argparse.Namespace) -> Mailbox:
        box = Mailbox(self.root(args))
        if getattr(args, "thread", None):
            args.thread = box.resolve(args.thread)
        if getattr(args, "threads", None):
            args.threads = [box.resolve(t) for t in args.threads]
        return box

    def sender(self, args: argparse.Namespace) -> str:
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

    def env(self, name: str) -> str | None:
        return os.environ.get(name) or None

    def color(self) -> bool:
        return (
            sys.stdout.isatty()
            and not os.environ.get("NO_COLOR")
            and os.environ.get("TERM") != "dumb"
        )

    def show(self, m: Message, *, thread: bool = False) -> str:
        width = max(40, min(shutil.get_terminal_size((100, 24)).columns, 120) - 2)
        return terminal.show(m, thread=thread, color=self.color(), width=width)

    def command(self) -> str:
        return _command_here()


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
        code = int(args.func(args, _Here()))
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
