"""How the `mailslot` command shows messages, agents and doctor reports to a person.

Whether to colour and how wide to wrap are arguments: only `cli` reads the environment.
"""

from __future__ import annotations

import re
import sys
import textwrap
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mailslot.agent.receipts import Receipt
from mailslot.store.format import Damage, Message, Pending
from mailslot.store.signing import INVALID, UNKNOWN_KEY, UNSIGNED, VALID

if TYPE_CHECKING:  # the doctor is imported when `doctor` runs, not by every command
    from mailslot.doctor.report import Report


def paint(text: str, code: str, *, color: bool) -> str:
    """Return text in the ANSI colour code, or text unchanged when color is false."""
    return f"\033[{code}m{text}\033[0m" if color else text


def when(iso: str) -> str:
    """Return an ISO timestamp as local time, or unchanged if it is not one."""
    try:
        return (
            datetime.fromisoformat(iso.replace("Z", "+00:00"))
            .astimezone()
            .strftime("%Y-%m-%d %H:%M:%S")
        )
    except ValueError:
        return iso


def wrap(text: str, width: int) -> str:
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


#: How a message's signature shows in a terminal (store/signing.py), and its colour.
SIGNED_BADGES = {
    VALID: ("✓ signed", "32"),
    INVALID: ("✗ INVALID SIGNATURE", "1;31"),
    UNKNOWN_KEY: ("? unknown key", "33"),
    UNSIGNED: ("unsigned", "2"),
}


def show(m: Message, *, thread: bool = False, color: bool, width: int) -> str:
    """Return a message for a terminal: author, recipients, badges, reply, time, wrapped body."""
    head = paint(f"#{m.seq}", "2", color=color) + " " + paint(m.sender, "1", color=color)
    if thread:
        head = paint(m.thread, "36", color=color) + " " + head
    if m.to:
        head += " → " + ", ".join(m.to)
    if m.type != "message":
        head += " " + paint(f"[{m.type}]", "35", color=color)
    if m.priority != "normal":
        code = "31" if m.priority in ("high", "urgent") else "2"
        head += " " + paint(f"!{m.priority}", code, color=color)
    if m.reply_to:
        head += f" (re #{m.reply_to})"
    if m.signed is not None:
        head += " " + paint(*SIGNED_BADGES[m.signed], color=color)
    head += "  " + paint(when(m.created_at), "2", color=color)
    if m.type == "state":
        body = f"state: {m.meta.get('previous', '?')} → {m.meta.get('state', '?')}"
        if m.content:
            body += "\n" + m.content
    else:
        body = m.content
    return head + "\n" + textwrap.indent(wrap(body, width), "  ", lambda _: True) + "\n"


def receipt_line(receipts: list[Receipt], now: float, *, color: bool) -> str:
    """Return the line a terminal shows under a message of how far each recipient has got
    with it ("↳ bob: shown 2 min ago · carol: stored"), or "" when it has no recipient."""
    if not receipts:
        return ""
    return "  " + paint("↳ " + " · ".join(f"{r.agent}: {r.text(now)}" for r in receipts), "2",
                        color=color) + "\n"  # fmt: skip


def table(rows: list[list[str]], headers: list[str]) -> str:
    """Return rows under headers as left-aligned columns two spaces apart."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def agents_table(agents: list[dict[str, Any]], *, color: bool) -> str:
    """Return `agent_list`'s agents as a table, each status in its colour."""
    colors = {"online": "32", "waiting": "36", "idle": "33", "offline": "2"}
    rows = []
    for a in agents:
        since = a.get("since") if a["status"] != "offline" else a.get("last_seen")
        what = a["status"] + (f" on {a['waiting_on']}" if a.get("waiting_on") else "")
        what += ", do not disturb" if a.get("do_not_disturb") else ""
        status = paint(what, colors.get(a["status"], "0"), color=color)
        rows.append([a["agent"], status, when(since) if since else "-", a.get("client") or "-",
                     a.get("model") or "-", a.get("description") or ""])  # fmt: skip
    return table(rows, ["AGENT", "STATUS", "SINCE", "CLIENT", "MODEL", "DESCRIPTION"])


def plural(n: int, word: str) -> str:
    """Return "1 thread", "2 threads": n and word, made plural when n is not 1."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def doctor_report(report: Report, *, fix: bool, color: bool, sync: str | None = None) -> str:
    """Return a doctor report as lines: the folder, its contents, each finding, what to do next.

    Every finding not yet fixed says what to do: what --fix would do about it, or, where --fix
    leaves it, what a person does. The last line never sends anyone to --fix for nothing.
    sync: how the root's sync with a git remote stands, in words (None: it never synced).
    """
    yes = {True: "yes", False: "NO", None: "?"}
    lines = [f"root        {report.root}"]
    network = " (network mount)" if report.network else ""
    lines.append(f"filesystem  {report.filesystem or '?'}{network}"
                 f"; hard links {yes[report.hard_links]}; locks {yes[report.locks]}; "
                 f"waits wake by {report.wait_mode or '?'}")  # fmt: skip
    lines.append(f"contents    {plural(report.threads, 'thread')}, "
                 f"{plural(report.messages, 'message')}")  # fmt: skip
    if sync:
        lines.append(f"sync        {sync}")
    for f in report.findings:
        if f.fixed:
            mark = paint("fixed  ", "32", color=color)
        elif f.note:
            mark = paint("note   ", "2", color=color)
        else:
            mark = paint("problem", "31", color=color)
        fixed = f" -> {f.fixed}" if f.fixed else ""
        lines.append(f"{mark}  {f.kind}: {f.path}: {f.detail}{fixed}")
        if f.fixed:
            continue
        if f.fix and not fix and f.note:
            step = f"{f.todo or 'nothing to do'}; `mailslot doctor --fix` {f.fix}"
        elif f.fix and not fix:
            step = f"{f.todo}; else " if f.todo else ""
            step += f"`mailslot doctor --fix` {f.fix}"
        else:
            step = f.todo or ""
        if step:
            lines.append(f"{'':9}next: {step}")
    problems = [f for f in report.findings if f.outstanding]
    notes = sum(f.note and not f.fixed for f in report.findings)
    if not problems:
        done = "healthy after repairs" if any(f.fixed for f in report.findings) else "healthy"
        lines.append(done + (f" ({plural(notes, 'note')} above, no problem)" if notes else ""))
    else:
        repairable = 0 if fix else sum(f.fix is not None for f in problems)
        said = f"{plural(len(problems), 'problem')} left"
        if repairable:
            said += f": `mailslot doctor --fix` repairs {repairable}"
            if repairable < len(problems):
                said += ", the others need you (see next:)"
        else:
            said += ", which --fix does not repair: see next: under each"
        lines.append(said)
    if report.git_work_tree and any(f.kind == "conflict" and f.fixed for f in report.findings):
        lines.append(f"merge conflicts resolved: finish the merge with `git add -A {report.root}` "
                     "and `git commit`")  # fmt: skip
    return "\n".join(lines)


def trouble(skipped: list[Damage], pending: list[Pending], told: set[str]) -> None:
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
