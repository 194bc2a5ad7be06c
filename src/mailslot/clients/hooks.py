"""`mailslot hook EVENT`: tell an agent between its turns what is new for it in the mailbox.

A client runs its hooks as commands with a JSON document on stdin and reads their stdout:
Claude Code (SessionStart, UserPromptSubmit, Stop), Codex CLI (the same three, plus the legacy
``notify`` program, which gets its JSON as the last argv argument) and Gemini CLI
(SessionStart, BeforeAgent, AfterAgent). Each event has a name of our own on the command line:

- ``session-start`` and ``prompt`` add what is new (``Notices.new``) to the model's context, as
  ``hookSpecificOutput.additionalContext``, and record it as reported;
- ``stop`` keeps the agent from ending its turn while tasks and questions addressed to it are
  unanswered (``Notices.stop_due``): Claude and Codex take ``decision: block``, Gemini
  ``decision: deny``, each with the reason as the model's next prompt. Each message holds the
  agent once (``Notices.held_at_stop``), so a stop can never loop; ``stop_hook_active`` is not
  read, that rule is the loop guard;
- ``notify`` (Codex only) cannot reach the model: it raises a desktop notification
  (``notify-send``, else a terminal bell on stderr) and marks nothing as reported.
- ``pre-tool`` (Claude Code and Codex PreToolUse, Gemini BeforeTool) refuses an edit, a write
  or a shell command that changes a file another live agent reserved exclusively
  (`edit_guard`); it holds under do not disturb too.

While the agent's do not disturb is on (``agent.pressure``), every event prints nothing and
marks nothing: what it held is reported by the first hook after it is lifted.

Nothing new prints nothing. A hook must never break its client: no agent name, no mailbox, a
stdin that is not a JSON object, any error, all print nothing on stdout, at most one line on
stderr, and exit 0. If stdin names its event (``hook_event_name``) and that is not the event
this command was configured for, the hook is wired to the wrong event: it prints nothing
(one line on stderr), since output of one event's shape is refused by another's parser.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mailslot.agent.notices import News, Notices, reportable
from mailslot.agent.pressure import dnd_of
from mailslot.clients import edit_guard
from mailslot.clients.launch import CLIENT_EVENTS
from mailslot.mailbox import Mailbox, find_root
from mailslot.store.errors import MailslotError
from mailslot.store.format import Message, loads

CLIENTS = ("claude-code", "codex", "gemini")
EVENTS = ("session-start", "prompt", "stop", "notify", "pre-tool")

MAX_TEXT = 9_000  # characters of context or reason; the clients cap hook output at 10,000
ARROW = " \u2192 "  # "→": News.line() says "->", and Gemini HTML-escapes "<" and ">"


def run(
    event: str,
    client: str,
    agent: str | None,
    stdin_text: str,
    argv_payload: str | None,
    root: Path | None,
    *,
    env: Mapping[str, str] | None = None,
) -> tuple[str, int]:
    """Run the hook event of client and return (stdout text, exit code); the code is always 0.

    agent None means $MAILSLOT_AGENT, root None $MAILSLOT_ROOT, else the nearest .mailslot/
    above the hook's cwd (from its JSON), else above the working directory. env replaces
    os.environ. Warnings (one line) and the notify bell go to stderr.
    """
    environ = os.environ if env is None else env
    try:
        return _run(event, client, agent or environ.get("MAILSLOT_AGENT") or None,
                    stdin_text, argv_payload, root, environ), 0  # fmt: skip
    except Exception as e:  # a hook must never break its client: say it, and carry on
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if not isinstance(e, MailslotError | OSError | ValueError):
            text = f"{type(e).__name__}: {text}"
        _warn(text)
        return "", 0


def read_stdin() -> str:
    """Return the hook's stdin as text; "" if there is none, or it is a terminal (a person
    trying the command), or it cannot be read. Never raises: a hook must not break its client."""
    stream = sys.stdin
    try:
        if stream is None or stream.isatty():
            return ""
        return stream.buffer.read().decode("utf-8", errors="replace")
    except (OSError, ValueError, AttributeError):
        return ""


def _warn(text: str) -> None:
    with contextlib.suppress(OSError, ValueError):  # stderr closed: nothing left to tell
        print(f"mailslot hook: {text}", file=sys.stderr, flush=True)


def _run(
    event: str,
    client: str,
    agent: str | None,
    stdin_text: str,
    argv_payload: str | None,
    root: Path | None,
    environ: Mapping[str, str],
) -> str:
    if client not in CLIENT_EVENTS:
        raise ValueError(f"unknown client {client!r} (one of {', '.join(CLIENTS)})")
    theirs = CLIENT_EVENTS[client].get(event)
    if theirs is None:
        raise ValueError(f"{client} has no {event!r} hook")
    if agent is None:
        return ""  # not configured for an agent: nothing to tell, and nothing is wrong
    doc = _payload(argv_payload if event == "notify" else stdin_text)
    if doc is None:
        raise ValueError(f"the {theirs} hook input is not a JSON object")
    if event == "notify":
        if doc.get("type") != "agent-turn-complete":
            return ""
    else:
        named = doc.get("hook_event_name")
        if named is not None and named != theirs:
            raise ValueError(f"`hook {event}` runs for {theirs} but was given {named!r}")
    if event == "pre-tool":  # reservations at edit time; do not disturb does not hold it
        return edit_guard.check(client, agent, doc, lambda: _root(root, doc, environ))
    path = _root(root, doc, environ)
    with Mailbox(path, sweep=False) as box:
        if dnd_of(box, agent) is not None:
            return ""  # do not disturb: nothing is reported (nor marked), nor held at a stop
        notices = Notices(box, agent)
        if event == "notify":
            _notify(len(notices.new()), agent, environ)
            return ""
        if event == "stop":
            due = notices.stop_due()
            if not due:
                return ""
            reason = _fit_stop(agent, due, gemini=client == "gemini")
            notices.held_at_stop(due)
            return _dump({"decision": "deny" if client == "gemini" else "block",
                          "reason": reason})  # fmt: skip
        news = notices.new()
        if not news:
            return ""
        context, shown = _fit_news(agent, news, gemini=client == "gemini")
        notices.mark(reportable(news, shown))
        return _dump({"hookSpecificOutput": {"hookEventName": theirs,
                                             "additionalContext": context}})  # fmt: skip


def _payload(text: str | None) -> dict[str, Any] | None:
    if not text or not text.strip():
        return None
    try:
        doc = loads(text)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _root(root: Path | None, doc: dict[str, Any], environ: Mapping[str, str]) -> Path:
    if root is not None:
        return root
    if environ.get("MAILSLOT_ROOT"):
        return Path(environ["MAILSLOT_ROOT"])
    cwd = doc.get("cwd")
    if isinstance(cwd, str) and cwd and Path(cwd).is_dir():
        return find_root(cwd)
    return find_root()


def _dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, ensure_ascii=False) + "\n"


def _clean(text: str, gemini: bool) -> str:
    """Return text with News.line()'s arrow as →, and for Gemini no < or > (it escapes them)."""
    text = text.replace(" -> ", ARROW)
    if gemini:
        text = text.replace("<", "\u2039").replace(">", "\u203a")  # angle quotes
    return text


def _fit(head: str, lines: list[str], tail: str, gemini: bool) -> tuple[str, int]:
    """Return head, as many lines as fit in MAX_TEXT (and how many more there are), tail; and
    how many lines were shown."""
    head, tail = _clean(head, gemini), _clean(tail, gemini)
    body: list[str] = []
    size = len(head) + len(tail) + 80
    for line in lines:
        line = _clean(line, gemini)
        if size + len(line) + 1 > MAX_TEXT:
            break
        body.append(line)
        size += len(line) + 1
    shown = len(body)
    if shown < len(lines):
        body.append(f"... and {len(lines) - shown} more (not listed here)")
    return "\n".join([head, *body, tail]), shown


def _fit_news(agent: str, news: list[News], *, gemini: bool) -> tuple[str, list[News]]:
    head = f"mailslot: {len(news)} new for you (agent {agent}):"
    tail = ("Read them with msg_wait() or msg_list(thread=..., after_seq=...); "
            "take an open task with task_claim(thread=..., seq=...).")  # fmt: skip
    text, shown = _fit(head, [n.line() for n in news], tail, gemini)
    return text, news[:shown]


def _stop_line(m: Message) -> str:
    text = " ".join(m.content.split())
    if len(text) > 200:
        text = text[:199] + "\u2026"
    answer = (f"msg_post(thread='{m.thread}', reply_to={m.seq}, type='result', content=...)"
              if m.type == "task" else
              f"msg_post(thread='{m.thread}', reply_to={m.seq}, content=...)")  # fmt: skip
    claim = f" or task_claim(thread='{m.thread}', seq={m.seq})" if m.type == "task" else ""
    return f"[{m.thread} #{m.seq}] {m.sender} ({m.type}): {text}{ARROW}{answer}{claim}"


def _fit_stop(agent: str, due: list[Message], *, gemini: bool) -> str:
    n = len(due)
    head = (f"mailslot: before you stop, {n} {'message' if n == 1 else 'messages'} addressed to "
            f"you (agent {agent}) {'is' if n == 1 else 'are'} unanswered:")  # fmt: skip
    tail = (
        "Answer each one with msg_post(thread, reply_to=SEQ, ...) (type='result' for a "
        "task), or claim it with task_claim and handle it, before you stop. If you cannot, "
        "say so in a reply, so the sender knows. You will not be held for these again."
    )
    text, _ = _fit(head, [_stop_line(m) for m in due], tail, gemini)
    return text


def _notify(count: int, agent: str, environ: Mapping[str, str]) -> None:
    """Raise a desktop notification of count new messages for agent, else ring the bell."""
    if count == 0:
        return
    what = f"{count} new for {agent}"
    sender = shutil.which("notify-send", path=environ.get("PATH", os.defpath))
    if sender is not None:
        try:
            subprocess.run([sender, "mailslot", what], env=dict(environ), timeout=10,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)  # fmt: skip
            return
        except (OSError, subprocess.SubprocessError):
            pass
    with contextlib.suppress(OSError, ValueError, AttributeError):  # no stderr: nothing rings
        sys.stderr.write("\a")
        sys.stderr.flush()
