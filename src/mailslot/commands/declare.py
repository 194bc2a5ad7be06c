"""How a command of `mailslot` is declared, beside its handler, and what the handler is given.

A command module declares each command with `@command(...)` over its handler; `mailslot.cli`
lists them, builds the parser from them and runs the chosen handler with a `Here`, through
which the handler asks for what the flags and the environment say (only `cli` reads them).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from mailslot.mailbox import Mailbox
    from mailslot.store.format import Message

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 124  # as GNU timeout(1): scripts already know it
EXIT_INTERRUPTED = 130
EXIT_READER_GONE = 141  # 128 + SIGPIPE, as the shell reports a command whose reader left


class Here(Protocol):
    """What a handler asks of the place the command runs in; `mailslot.cli` answers."""

    def root(self, args: argparse.Namespace) -> Path:
        """Return the mailbox root: --root, else $MAILSLOT_ROOT, else the nearest .mailslot/."""

    def open(self, args: argparse.Namespace) -> Mailbox:
        """Return the command's mailbox, with its THREAD arguments (an id or a topic, as the
        tools take) made thread ids."""

    def sender(self, args: argparse.Namespace) -> str:
        """Return who a person posts as: --as, $MAILSLOT_AGENT, or the OS user made a name."""

    def env(self, name: str) -> str | None:
        """Return the environment variable name, or None if it is unset or empty."""

    def color(self) -> bool:
        """Return whether to colour: stdout is a terminal, and neither NO_COLOR nor TERM=dumb."""

    def show(self, m: Message, *, thread: bool = False) -> str:
        """Return a message for this terminal, in its colour and width ($COLUMNS)."""

    def command(self) -> str:
        """Return how a person runs this mailslot in their shell, from any folder."""


Handler = Callable[[argparse.Namespace, Here], int]


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
) -> Callable[[Handler], Command]:
    """Return a decorator that makes the function it decorates the command `name`.

    root adds --root; json adds --json, a promise that the command then prints JSON and only
    JSON (tests/test_first_hour_cli.py holds every command to it); who adds --as.
    """

    def declare(handler: Handler) -> Command:
        return Command(name, help, tuple(args), root, json, who, handler)

    return declare


class UsageError(Exception):
    """Arguments that disagree with each other: exit 2, as argparse does for the rest."""


def print_json(doc: Any) -> None:
    """Print doc as the indented JSON a command's --json prints."""
    print(json.dumps(doc, indent=2, ensure_ascii=False))
