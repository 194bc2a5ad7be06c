"""What is new for an agent that is not waiting: the news hooks and channel pushes bring it.

An agent blocked in ``msg_wait`` learns of new messages at once; one whose turn has ended
learns of nothing until something tells it. Hooks (run by its client between turns) and
channel pushes (sent by its server) both tell it what is new: messages addressed to it, and
open tasks for anyone in any thread (again when one is reopened, released or
failed), past its inbox position (what it has been shown, the one truth) and past what was
already reported to it. What was reported is kept per agent in ``.state/notified/<agent>.json``
(thread -> seq), shared by hooks and pushes, so neither repeats the other. A report is a hint:
it moves no read position, and the messages are still returned by the agent's next
``msg_wait``.

Positions: the push loop runs in the agent's own server and reads the session's positions (in
memory: what its waits and reads returned); a hook is another process and reads them from
disk, where the server writes them at most a second after a wait or read (and at its exit), so
a hook run within that second may repeat what a wait just returned.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from mailslot.agent.reading import Reading
from mailslot.coordination.board import OPEN, offer_of
from mailslot.store.errors import MailslotError
from mailslot.store.format import Message, loads
from mailslot.store.names import check_name
from mailslot.store.positions import Position
from mailslot.store.signing import INVALID, UNKNOWN_KEY

if TYPE_CHECKING:
    from mailslot.mailbox import Mailbox

MAX_STEPS = 32  # when each reported seq was reported: the last this many steps per thread
MAX_NEWS = 200  # messages one look reports at most (the rest comes on the next look)
EXCERPT_CHARS = 200


@dataclass(frozen=True, slots=True)
class News:
    """A message the agent has not been shown, and what it means to it."""

    message: Message
    task: bool  # an open task it may take
    at: int = 0  # the seq of the event that made the task open again (0: the message itself)

    @property
    def found(self) -> int:
        """Return the seq in its thread at which this was found: what reporting it passes."""
        return max(self.message.seq, self.at)

    def line(self) -> str:
        """Return one line for the agent: where, who, what, and the call that reads it."""
        m = self.message
        text = " ".join(m.content.split())
        if len(text) > EXCERPT_CHARS:
            text = text[: EXCERPT_CHARS - 1] + "…"
        badge = m.type if m.priority == "normal" else f"{m.type}, {m.priority}"
        if m.signed in (INVALID, UNKNOWN_KEY):  # docs/signing.md: the reader is told
            what = "INVALID SIGNATURE" if m.signed == INVALID else "UNKNOWN KEY"
            badge += f", {what}: may not be from {m.sender}"
        call = (
            f"task_claim(thread='{m.thread}', seq={m.seq})"
            if self.task
            else f"msg_list(thread='{m.thread}', after_seq={m.seq - 1})"
        )
        return f"[{m.thread} #{m.seq}] {m.sender} ({badge}): {text} -> {call}"


def reportable(news: list[News], shown: list[News]) -> list[News]:
    """Return the shown news that may be marked reported when the rest of news is left out.

    A report is marked as one seq per thread, so in a thread with news left out only what was
    found before the first of it may be marked: what is left out comes next time.
    """
    ids = {id(n) for n in shown}
    first_left: dict[str, int] = {}
    for n in news:
        if id(n) not in ids:
            t = n.message.thread
            first_left[t] = min(first_left.get(t, n.found), n.found)
    return [n for n in shown if n.found < first_left.get(n.message.thread, n.found + 1)]


class Notices:
    """What is new for one agent of a mailbox, and what was already reported to it."""

    def __init__(self, box: Mailbox, agent: str, reading: Reading | None = None) -> None:
        """Open the notices of agent; reading, if given, is what the agent's own server has
        shown it (in memory, ahead of what it has written to disk), else what disk says."""
        check_name(agent, "agent name")
        self.box = box
        self.agent = agent
        self.reading = reading if reading is not None else Reading(box)
        #: True when the last new() left news out (past MAX_NEWS): look again for the rest.
        self.more = False

    def _marks(self) -> dict[str, Any]:
        try:
            doc = loads((self.box.root / ".state" / "notified" / f"{self.agent}.json").read_bytes())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _save(self, marks: dict[str, Any]) -> None:
        files = self.box._files
        with contextlib.suppress(MailslotError):  # lost, it costs a repeated hint, never a message
            files.write_state_file(files.dir(".state/notified") / f"{self.agent}.json", marks)

    def reported(self) -> dict[str, int]:
        """Return thread -> the seq up to which news was reported (by hooks or pushes)."""
        marks = self._marks().get("reported")
        if not isinstance(marks, dict):
            return {}
        return {t: s for t, s in marks.items() if type(s) is int}

    def new(
        self, *, senders: set[str] | None = None, threads: Iterable[str] | None = None
    ) -> list[News]:
        """Return what is new for the agent, urgent first, then by thread and seq.

        senders, if given, keeps only messages from those names (a channel pushes only what
        agents with a card sent: a push is a way into the model's prompt). threads, if given,
        looks only there (where messages came since the last look); else in every thread. At
        most MAX_NEWS are returned; more is then True, and what was left out is returned next
        time.
        """
        self.more = False
        out: list[News] = []
        reported = self.reported()
        for thread in sorted(threads) if threads is not None else list(self.box):
            self._look(thread, reported, out)
        if senders is not None:
            out = [n for n in out if n.message.sender in senders]
        rank = {"urgent": 0, "high": 1, "normal": 2, "low": 3}
        out.sort(key=lambda n: (rank.get(n.message.priority, 2), n.message.thread, n.message.seq))
        self.more = self.more or len(out) > MAX_NEWS
        return reportable(out, out[:MAX_NEWS])

    def _look(self, thread: str, reported: dict[str, int], out: list[News]) -> None:
        """Add to out what is new for the agent in thread, past what it was shown or told."""
        try:
            pos = self.reading.position(thread, self.agent)
            tasks = self.box.tasks.board(thread).tasks
        except MailslotError:
            return  # removed, or unreadable: the agent's own reads report it
        # While inbox messages from before a first look are still owed in the thread, its
        # inbox position is unknown, as it is on disk then (Reading.save).
        inbox = None if self.reading.owes_in(thread) else pos.inbox
        # A thread read counts only where it joins the inbox's mark: one from now skipped
        # what came before it, which is still news (what it returned is not: was_shown).
        read = pos.read if pos.read is not None and pos.start <= (inbox or 0) else None
        floor = max(inbox or 0, read or 0, reported.get(thread, 0))
        seen: dict[int, int] = {}  # seq of a message (or task) in out -> its index there
        start = floor  # where reading the thread's messages begins
        judged = 0  # messages to the agent up to here were judged by the thread index
        if inbox is None and pos.read is None:
            start, judged = self._first_look(thread, floor, tasks, out, seen)
        self._read_on(thread, pos, tasks, start, judged, out, seen)

    def _first_look(
        self, thread: str, floor: int, tasks: dict[int, Any], out: list[News], seen: dict[int, int]
    ) -> tuple[int, int]:
        """Add to out what in a thread the agent never looked at is addressed to it and
        unanswered; return where to read on from, and the seq up to which the thread index
        judged the messages to the agent."""
        me = self.agent
        judged = 0
        # What is addressed to it and unanswered is news (from the thread index, not a read
        # of the whole thread), then what came after that.
        with contextlib.suppress(MailslotError):
            seqs, judged = self.box.unanswered(thread, me)
            for s in seqs:
                if s > floor:
                    with contextlib.suppress(MailslotError):
                        m = self.box.get(thread, s)
                        task = tasks.get(s)
                        out.append(News(m, task is not None and task.status == OPEN))
                        seen[s] = len(out) - 1
        # Tasks for anyone are not in that index, and the inbox's first look hands out
        # every open one (in any thread): while it could take one, read on from the
        # floor to find each where it was last offered.
        if not any(t.open_to(me) and t.sender != me for t in tasks.values()):
            return max(floor, judged), judged
        return floor, judged

    def _read_on(
        self,
        thread: str,
        pos: Position,
        tasks: dict[int, Any],
        start: int,
        judged: int,
        out: list[News],
        seen: dict[int, int],
    ) -> None:
        """Add to out the messages of thread past start that are news for the agent: to it
        and not answered past judged, or offering it a task (once, where last offered)."""
        me = self.agent
        with contextlib.suppress(MailslotError):
            for m in self.box.messages(thread, start):
                if m.seq in seen or m.sender == me or pos.was_shown(m.seq, inbox=True):
                    continue
                task = tasks.get(m.seq)
                if me in m.to:
                    if m.seq <= judged:
                        continue  # answered: the index said so
                    open_task = task is not None and task.status == OPEN
                    out.append(News(self.box.trust.mark(m), open_task))
                    seen[m.seq] = len(out) - 1
                elif not m.to:
                    offered = self._offered(thread, m, tasks)
                    if offered is None:
                        continue
                    i = seen.get(offered.message.seq)
                    if i is None:
                        out.append(offered)
                        seen[offered.message.seq] = len(out) - 1
                    else:  # already news in this look: once, found where it was last offered
                        out[i] = replace(out[i], task=True, at=max(out[i].at, m.seq))
                if len(out) >= MAX_NEWS:
                    self.more = True
                    break

    def _offered(self, thread: str, m: Message, tasks: dict[int, Any]) -> News | None:
        """Return the task m offers the agent, open now, as news found at m; or None."""
        seq = offer_of(m, self.agent)
        if seq is None:
            return None
        task = tasks.get(seq)
        if task is None or not task.open_to(self.agent):
            return None
        if seq == m.seq:
            return News(self.box.trust.mark(m), True)
        try:  # reopened, released or failed: the task itself is the news, found at m
            return News(self.box.get(thread, seq), True, at=m.seq)
        except MailslotError:
            return None

    def mark(self, news: list[News]) -> None:
        """Record news as reported, so that neither hooks nor pushes report it again."""
        marks = self._marks()
        reported = self.reported()
        steps = marks.get("reported_at")
        steps = steps if isinstance(steps, dict) else {}
        at = round(time.time(), 3)
        for n in news:
            m = n.message
            reported[m.thread] = max(reported.get(m.thread, 0), n.found)
        for thread, upto in reported.items():  # when each seq was reported: receipts read it
            its = steps.get(thread)
            its = [s for s in its if isinstance(s, list)] if isinstance(its, list) else []
            if not its or its[-1][0] < upto:
                steps[thread] = [*its, [upto, at]][-MAX_STEPS:]
        marks["reported"], marks["reported_at"] = reported, steps
        self._save(marks)

    def stop_due(self) -> list[Message]:
        """Return the tasks and questions addressed to the agent that it has not answered and
        that no Stop hook has held it for yet (each holds it once, so a stop can never loop)."""
        held = self._marks().get("stop")
        held = held if isinstance(held, dict) else {}
        out = []
        for thread in list(self.box):
            with contextlib.suppress(MailslotError):
                seqs, _ = self.box.unanswered(thread, self.agent)
                for s in seqs:
                    if s <= held.get(thread, 0):
                        continue
                    m = self.box.get(thread, s)
                    if m.type in ("task", "question"):
                        task = self.box.tasks.board(thread).tasks.get(s)
                        if task is None or task.status in ("open", "claimed"):
                            out.append(m)
        return out

    def held_at_stop(self, messages: list[Message]) -> None:
        """Record that a Stop hook held the agent for messages."""
        marks = self._marks()
        held = marks.get("stop")
        held = held if isinstance(held, dict) else {}
        for m in messages:
            held[m.thread] = max(int(held.get(m.thread, 0)), m.seq)
        marks["stop"] = held
        self._save(marks)
