"""Backpressure and do not disturb: what a post tells its sender of the agents it addressed.

A post to an agent under pressure says so in its result, one short line per such recipient,
so the model can pick another agent, or wait, or post anyway (posting is never refused):

- **unread**: ``UNREAD_AT`` or more messages addressed to it that it has not been shown (and
  not answered), besides this one. Counted from what it was shown (its read positions on disk,
  ``.state/cursors/``, written by its server at most a second after a read) and the thread
  index (who was addressed and did not answer), in this thread and the ``RECENT_THREADS``
  threads most recently written (the tail of ``.state/news``): a post never looks at every
  thread, so the count is a floor;
- **offline**: its presence file says so (an agent that never had one says nothing: a person
  reading with the command, a script);
- **waiting elsewhere**: it is blocked in a wait on another thread, which this post does not
  wake;
- **do not disturb**: it asked (``agent_register(dnd=true)``) or a person did
  (``mailslot dnd NAME``). The message is delivered (``msg_wait`` and ``msg_list`` return
  everything), but hooks and channel pushes tell the agent nothing until it is lifted; then
  what is still news is reported, once. Kept per machine in ``.state/dnd/<agent>.json``.

Nothing is said of a recipient under no pressure, so a result stays small.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mailslot.store.errors import MailslotError
from mailslot.store.format import Message, loads, now_iso, span
from mailslot.store.names import check_name
from mailslot.store.news import NEWS
from mailslot.store.positions import Position
from mailslot.store.presence import DEFAULT_STALE_AFTER

if TYPE_CHECKING:
    from mailslot.mailbox import Mailbox

UNREAD_AT = 10  # unread messages (besides the post) from which a post says so
RECENT_THREADS = 32  # threads most recently written that the unread count looks at
NEWS_TAIL = 16 * 1024  # bytes of .state/news read for them (about a thousand posts)
DND = ".state/dnd"


# ---------------------------------------------------------------------- do not disturb


def dnd_of(box: Mailbox, agent: str) -> dict[str, Any] | None:
    """Return agent's do-not-disturb record (since, by) if it is on, else None."""
    check_name(agent, "agent name")
    try:
        doc = loads((box.root / DND / f"{agent}.json").read_bytes())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("dnd") is True else None


def set_dnd(box: Mailbox, agent: str, on: bool, *, by: str) -> bool:
    """Turn agent's do not disturb on or off (by: who asked); return whether it was on."""
    check_name(agent, "agent name")
    was = dnd_of(box, agent) is not None
    files = box._files
    path = files.dir(DND) / f"{agent}.json"
    if on and not was:
        files.write_state_file(path, {"dnd": True, "since": now_iso(), "by": by})
    elif not on:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return was


def disturb(box: Mailbox, agent: str, dnd: bool | None) -> bool:
    """Set agent's do not disturb as it asked (None: leave it); return whether it is on."""
    if dnd is not None:
        set_dnd(box, agent, dnd, by=agent)
        return dnd
    return dnd_of(box, agent) is not None


def dnd_agents(box: Mailbox) -> set[str]:
    """Return the agents whose do not disturb is on (one listing of .state/dnd/)."""
    try:
        names = [n.removesuffix(".json") for n in os.listdir(box.root / DND) if n.endswith(".json")]
    except OSError:
        return set()
    out = set()
    for name in names:
        with contextlib.suppress(MailslotError):
            if dnd_of(box, name) is not None:
                out.add(name)
    return out


# ---------------------------------------------------------------------- backpressure


def recent_threads(box: Mailbox, first: str) -> list[str]:
    """Return first, then up to RECENT_THREADS - 1 other threads, most recently written first
    (from the tail of .state/news: a hint, so a thread written long ago may be missing)."""
    out = [first]
    try:
        with open(box.root / NEWS, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - NEWS_TAIL))
            tail = f.read(NEWS_TAIL).split(b"\n")[1:-1]  # the first may be cut, the last is ""
    except OSError:
        return out
    for raw in reversed(tail):
        name = raw.decode("ascii", errors="replace")
        if name not in out:
            with contextlib.suppress(MailslotError):
                out.append(check_name(name, "thread id"))
        if len(out) >= RECENT_THREADS:
            break
    return out


def unread(box: Mailbox, agent: str, threads: Iterable[str], skip: Message | None = None) -> int:
    """Return how many messages in threads are addressed to agent, not answered by it and not
    shown to it (by its read positions on disk), leaving out skip."""
    count = 0
    for thread in threads:
        with contextlib.suppress(MailslotError):
            seqs, _ = box.unanswered(thread, agent)
            if not seqs:
                continue
            pos = Position.from_json(box.load_cursor(agent, thread), box.incarnation(thread))
            count += sum(
                1
                for s in seqs
                if s > pos.inbox_seen
                and not pos.was_shown(s, inbox=True)
                and not (skip is not None and skip.thread == thread and skip.seq == s)
            )
    return count


def ago(epoch: float, now: float | None = None) -> str:
    """Return how long ago epoch was, in words a model reads at a glance ("20 min", "3 h")."""
    return span((time.time() if now is None else now) - epoch)


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def pressure(box: Mailbox, msg: Message, stale_after: float = DEFAULT_STALE_AFTER) -> list[str]:
    """Return one line for each recipient of msg under pressure (see the module docstring)."""
    recipients = [a for a in msg.to if a != msg.sender]
    if not recipients:
        return []
    threads = recent_threads(box, msg.thread)
    lines = []
    for agent in recipients:
        with contextlib.suppress(MailslotError):
            line = _line(box, agent, msg, threads, stale_after)
            if line:
                lines.append(line)
    return lines


def _line(
    box: Mailbox, agent: str, msg: Message, threads: list[str], stale_after: float
) -> str | None:
    parts = []
    count = unread(box, agent, threads, skip=msg)
    if count >= UNREAD_AT:
        parts.append(f"has {count} unread messages")
    presence = box.agents.presence(agent, stale_after=stale_after)
    offline = presence.status == "offline" and box.agents.presence_doc(agent) is not None
    if offline:
        seen = _epoch(presence.last_seen)
        parts.append("is offline" + (f" (last seen {ago(seen)} ago)" if seen else ""))
    elif presence.status == "waiting" and presence.waiting_on not in (None, "inbox", msg.thread):
        since = presence.waiting_since
        how_long = f" for {ago(since)}" if since is not None else ""
        parts.append(f"has been waiting on thread '{presence.waiting_on}'{how_long}")
    dnd = dnd_of(box, agent) is not None
    if dnd:
        parts.append("asked not to be disturbed")
    if not parts:
        return None
    said = f"{agent} {' and '.join(parts)}"
    if dnd:
        return f"{said}: delivered, but no hook or push tells {agent} until that is lifted"
    if offline:
        return f"{said}: delivered, read when {agent} comes back"
    return said
