"""Tasks: claimed by one agent, leased, handed out again when the holder dies or stalls.

A task is a message of type ``task``. Everything that happens to it is a message of its thread
that replies to it (``reply_to`` = the task's seq), so the transcript shows who took what:

- a claim, a release, a reopen or a dead notice is a ``status`` message whose ``meta.task``
  says which (``{"event": "claim", "lease_s": 300, "pid": 4242, "host": "box"}``); a release
  naming a holder and its claim (``{"event": "release", "holder": "bob", "claim": 7}``) is a
  person taking that claim back as themselves: the task is open again, no attempt failed;
- a ``result`` reply closes the task; an ``error`` reply from its holder is a failed attempt.

A task's state is a fold of those messages in seq order (``Board``), so every process on every
machine derives the same answer from the same folder. The first claim made while the task is
open wins; a claim that lands after another is void, and the claimer is told so. On one
machine a claim is decided under the thread's lock (fold to the head, then append), so a loser
writes nothing; across machines on a network mount, where locks do not exclude, the order of
the log decides (design.md §1.8).

A claim holds while its holder's process lives (its presence: the pid on this machine at once,
the heartbeat elsewhere) and shows a sign of work (a tool call, or a message in the thread)
within the lease. When it does not, whichever live process looks first (an inbox wait, a task
list, a claim) writes a ``reopen`` event signed ``mailslot`` (``dead`` once the failed attempts
reach the maximum, addressed to the task's sender), and that event wakes the waiting agents.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from mailslot.coordination import leases as _leases
from mailslot.coordination.leases import Lease
from mailslot.store.agents import Agents
from mailslot.store.errors import MailslotError, TaskError
from mailslot.store.files import HOST, Files, exists
from mailslot.store.format import Message, loads
from mailslot.store.log import ThreadLog
from mailslot.store.presence import DEFAULT_STALE_AFTER
from mailslot.store.publish import Writer

log = logging.getLogger("mailslot")

OPEN, CLAIMED, DONE, DEAD = "open", "claimed", "done", "dead"
STATUSES = (OPEN, CLAIMED, DONE, DEAD)
EVENTS = ("claim", "release", "reopen", "dead")
SYSTEM = "mailslot"  # signs the events a live process writes for a holder that is gone
SAVE_EVERY_S = 2.0  # a board's cache on disk is rewritten at most this often
TITLE_CHARS = 100


def event_of(m: Message) -> str | None:
    """Return the task event a message records (claim, release, reopen, dead), or None."""
    if m.type != "status" or m.reply_to is None:
        return None
    ev = m.meta.get("task")
    event = ev.get("event") if isinstance(ev, dict) else None
    return event if event in EVENTS else None


class _Folded(Protocol):
    seq: int


F = TypeVar("F", bound=_Folded)


def folded_through(fold: Callable[[], F], seq: int, grace_s: float) -> F:
    """Return fold() once it has folded at least through seq (a message just published),
    waiting out a file still arriving before it for up to grace_s + 2 seconds."""
    deadline = time.monotonic() + grace_s + 2.0
    while True:
        folded = fold()
        if folded.seq >= seq or time.monotonic() > deadline:
            return folded
        time.sleep(0.05)


def offer_of(m: Message, me: str) -> int | None:
    """Return the seq of the task m hands out to me, or None: a task, its reopening or release,
    or a failed attempt (an error reply) that was not addressed to me (that one me reads)."""
    if m.type == "task":
        return m.seq
    if event_of(m) in ("reopen", "release"):
        return m.reply_to
    if m.type == "error" and me not in m.to:
        return m.reply_to
    return None


def _epoch(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def iso(epoch: float) -> str:
    """Return epoch seconds as the ISO-8601 UTC time messages use."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def title_of(content: str) -> str:
    """Return the first line of content, cut to TITLE_CHARS."""
    line = next((x.strip() for x in content.splitlines() if x.strip()), "")
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1] + "…"


def _num(value: object, lo: float, hi: float) -> float | None:
    if type(value) in (int, float) and lo <= value <= hi:  # type: ignore[operator]
        return float(value)  # type: ignore[arg-type]
    return None


@dataclass(slots=True)
class Task:
    """What a task's messages say up to where its thread was read."""

    thread: str
    seq: int
    sender: str
    to: tuple[str, ...]
    created_at: str
    title: str
    priority: str = "normal"
    lease_s: float | None = None  # the task's own lease (meta.lease_s)
    max_attempts: int | None = None  # the task's own maximum (meta.max_attempts)
    status: str = OPEN
    holder: str | None = None
    claim: int | None = None  # the seq of the holder's winning claim
    pid: int | None = None  # the holder's process (None: a claim by a person or a script)
    host: str | None = None
    claim_lease_s: float | None = None
    claimed_at: float = 0.0  # epoch seconds of the claim (or of its last renewal)
    attempts: int = 0  # claims won
    failures: int = 0  # errors, and holders that died or stalled
    closed_by: int | None = None  # the seq of the result that closed it
    done_by: str | None = None
    last_error: int | None = None
    notified: bool = False  # a dead notice was written

    def may_take(self, agent: str) -> bool:
        """Return True if agent may claim this task (it is for anyone, or for agent)."""
        return not self.to or agent in self.to

    def open_to(self, agent: str) -> bool:
        """Return True if agent can take this task now: it is open, and agent may claim it."""
        return self.status == OPEN and self.may_take(agent)

    def held_by(self, agent: str | None, pid: int | None) -> bool:
        """Return True if agent's process pid on this machine holds this task now."""
        return (self.status, self.holder, self.pid, self.host) == (CLAIMED, agent, pid, HOST)

    def to_json(self) -> dict[str, Any]:
        """Return the task as cached on disk."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["to"] = list(self.to)
        return out

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Task:
        """Return the task a cache entry describes; raise KeyError/TypeError if malformed."""
        values = {f.name: doc[f.name] for f in fields(cls)}
        values["to"] = tuple(str(a) for a in values["to"])
        task = cls(**values)
        if task.status not in STATUSES or type(task.seq) is not int:
            raise TypeError("not a task")
        return task


@dataclass(slots=True)
class Question:
    """A question nobody but its asker has replied to yet."""

    thread: str
    seq: int
    sender: str
    to: tuple[str, ...]
    created_at: str
    title: str


@dataclass(slots=True)
class Board:
    """The tasks and open questions of one thread, folded from its messages up to seq."""

    seq: int = 0
    incarnation: str = ""
    tasks: dict[int, Task] = field(default_factory=dict)
    questions: dict[int, Question] = field(default_factory=dict)
    #: agent -> epoch seconds of its newest message in the thread (a sign of work).
    last_post: dict[str, float] = field(default_factory=dict)
    complete: bool = True  # False while a message the fold stopped before is still arriving
    saved: float = 0.0
    rewound: int = 0  # the mtime of the thread's rewind mark when the fold began (see below)

    def add(self, m: Message, max_attempts: int) -> None:
        """Take what message m says into the board (messages come in seq order)."""
        at = _epoch(m.created_at)
        if at > self.last_post.get(m.sender, 0.0):
            self.last_post[m.sender] = at
        if m.type == "task":
            self.tasks[m.seq] = Task(
                thread=m.thread, seq=m.seq, sender=m.sender, to=tuple(m.to),
                created_at=m.created_at, title=title_of(m.content), priority=m.priority,
                lease_s=_num(m.meta.get("lease_s"), 1, 86400),
                max_attempts=int(n) if (n := _num(m.meta.get("max_attempts"), 1, 100)) else None,
            )  # fmt: skip
            return
        if m.type == "question":
            self.questions[m.seq] = Question(
                m.thread, m.seq, m.sender, tuple(m.to), m.created_at, title_of(m.content)
            )
            return
        if m.reply_to is None:
            return
        question = self.questions.get(m.reply_to)
        if question is not None and m.sender != question.sender:
            del self.questions[m.reply_to]
        task = self.tasks.get(m.reply_to)
        if task is None:
            return
        limit = task.max_attempts or max_attempts
        if m.type == "result":
            if task.status != DONE:
                task.status, task.closed_by, task.done_by = DONE, m.seq, m.sender
                task.holder = task.claim = task.pid = task.host = None
            return
        if m.type == "error":
            # The holder's error, or anyone's while nobody holds it, is a failed attempt; an
            # error from someone else while it is held is only a remark.
            if (task.status == CLAIMED and task.holder == m.sender) or task.status == OPEN:
                task.failures += 1
                task.last_error = m.seq
                task.status = DEAD if task.failures >= limit else OPEN
                task.holder = task.claim = task.pid = task.host = None
            return
        event = event_of(m)
        ev: dict[str, Any] = m.meta.get("task") if event else {}  # type: ignore[assignment]
        if event == "claim":
            if task.open_to(m.sender):
                task.status, task.holder, task.claim = CLAIMED, m.sender, m.seq
                task.attempts += 1
            elif not (task.status == CLAIMED and task.holder == m.sender):
                return  # lost: claimed after another, or the task was closed meanwhile
            # Won, or renewed by its holder (perhaps restarted: a new process).
            task.pid = ev.get("pid") if type(ev.get("pid")) is int else None
            task.host = str(ev["host"]) if isinstance(ev.get("host"), str) else None
            task.claim_lease_s = _num(ev.get("lease_s"), 1, 86400)
            task.claimed_at = at
        elif event == "release":
            named = ev.get("holder")
            own = named is None and task.holder == m.sender
            taken_back = named == task.holder and ev.get("claim") == task.claim  # that claim only
            if task.status == CLAIMED and (own or taken_back):
                task.status = OPEN
                task.holder = task.claim = task.pid = task.host = None
        elif event in ("reopen", "dead") and m.sender == SYSTEM:  # no agent can take that name
            if task.status == CLAIMED and ev.get("claim") == task.claim:
                task.failures += 1
                dead = event == "dead" or task.failures >= limit
                task.status = DEAD if dead else OPEN
                task.holder = task.claim = task.pid = task.host = None
            if event == "dead" and task.status == DEAD:
                task.notified = True

    def to_json(self) -> dict[str, Any]:
        """Return the board as cached under .state/index/."""
        return {
            "seq": self.seq,
            "incarnation": self.incarnation,
            "tasks": [t.to_json() for t in self.tasks.values()],
            "questions": [
                [q.seq, q.sender, list(q.to), q.created_at, q.title]
                for q in self.questions.values()
            ],
            "last_post": self.last_post,
        }

    @classmethod
    def from_json(cls, thread: str, doc: Any) -> Board:
        """Return the board a cache file holds (an empty one if it cannot be used)."""
        try:
            tasks = [Task.from_json(t) for t in doc["tasks"]]
            questions = [
                Question(thread, int(s), str(a), tuple(map(str, to)), str(c), str(t))
                for s, a, to, c, t in doc["questions"]
            ]
            return cls(
                seq=int(doc["seq"]),
                incarnation=str(doc["incarnation"]),
                tasks={t.seq: t for t in tasks if t.thread == thread},
                questions={q.seq: q for q in questions},
                last_post={str(a): float(e) for a, e in doc["last_post"].items()},
                saved=time.monotonic(),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return cls()


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer to a claim: won, or who holds the task (and until when)."""

    won: bool
    task: Task
    until: float | None  # epoch seconds the lease runs to, if the task is held
    seq: int | None = None  # the claim message written, if one was


class _Lost(Exception):
    """Raised by a claim's guard: the task is no longer open (nothing is written)."""


class Tasks:
    """The task boards of a root in this process; safe to use from several threads."""

    def __init__(
        self,
        files: Files,
        log: ThreadLog,
        agents: Agents,
        writer: Writer,
        incarnation: Callable[[str], str],
    ) -> None:
        self.files = files
        self.log = log
        self.agents = agents
        self.writer = writer
        self.incarnation = incarnation
        self._boards: dict[str, Board] = {}
        self._lock = threading.RLock()
        self._warned: set[tuple[str, int, int | None]] = set()

    # ------------------------------------------------------------------ the fold

    def board(self, thread: str) -> Board:
        """Return the tasks and unanswered questions of thread, as its messages say now.

        Folded from the messages, cached under .state/index/ and brought up to date on each
        look, so it costs only the messages new since the last one. Raise NoSuchThread.
        """
        tdir = self.files.thread_dir(thread)
        incarnation = self.incarnation(thread)
        with self._lock:
            board = self._boards.get(thread)
            path = self.files.root / ".state" / "index" / f"{thread}.tasks.json"
            if board is None:
                try:
                    board = Board.from_json(thread, loads(path.read_bytes()))
                except (OSError, ValueError):
                    board = Board()
            # `mailslot doctor --fix` rewrote seqs after a merge conflict (it leaves a mark).
            try:
                rewound = os.stat(self.files.root / ".state" / "rewound" / f"{thread}.json")
                mark = rewound.st_mtime_ns
            except OSError:
                mark = 0
            if (
                board.incarnation != incarnation
                or (board.seq and not exists(tdir, board.seq))
                or (thread in self._boards and board.rewound != mark)
            ):  # another thread, ahead of the folder, or rewritten: fold again from the start
                board = Board(incarnation=incarnation)
            board.rewound = mark
            start = board.seq
            limit = self.files.settings.task_max_attempts
            for page in self.log.pages(thread, tdir, board.seq):
                for m in page.messages:
                    board.add(m, limit)
                board.seq = page.cursor
                board.complete = page.pending is None
            self._boards[thread] = board
            if board.seq != start and time.monotonic() - board.saved > SAVE_EVERY_S:
                board.saved = time.monotonic()
                with contextlib.suppress(MailslotError, OSError):
                    self.files.dir(".state/index")
                    self.files.write_state_file(path, board.to_json())
            return board

    def task(self, thread: str, seq: int) -> Task:
        """Return task seq of thread; raise NoSuchMessage, or TaskError if it is not a task."""
        board = self.board(thread)
        task = board.tasks.get(seq)
        if task is not None:
            return task
        m = self.log.get(thread, seq)  # NoSuchMessage or Damaged if it is not a message
        if m.type == "task":  # published after the fold's head (or past a file arriving)
            task = self.board(thread).tasks.get(seq)
            if task is not None:
                return task
            raise TaskError(
                f"task {seq} of {thread!r} is behind a message still arriving; try again shortly"
            )
        raise TaskError(
            f"message {seq} of {thread!r} is a {m.type!r}, not a task: only messages of type "
            "'task' can be claimed"
        )

    # ------------------------------------------------------------------ leases

    def lease_of(self, task: Task) -> float:
        """Return the lease of task's claim in seconds: the claim's, the task's, or the root's."""
        return task.claim_lease_s or task.lease_s or self.files.settings.task_lease_s

    def _lease(self, task: Task) -> Lease:
        assert task.holder is not None
        return Lease(task.holder, task.pid, task.host, task.claimed_at, self.lease_of(task))

    def until(self, task: Task) -> float | None:
        """Return when task's lease runs out without a sign of work (epoch seconds), if held."""
        return self._until(task, self.board(task.thread))

    def gone(self, task: Task, *, stale_after: float = DEFAULT_STALE_AFTER) -> str | None:
        """Return why task's holder has lost it (dead, silent, out of lease), or None."""
        return self._gone(task, self.board(task.thread), stale_after=stale_after)

    def _until(self, task: Task, board: Board | None) -> float | None:
        """Return when task's lease runs out without a new sign of work (epoch), if held."""
        if task.status != CLAIMED or task.holder is None:
            return None
        sign = board.last_post.get(task.holder, 0.0) if board is not None else 0.0
        return _leases.until(self.agents, self._lease(task), sign)

    def _gone(
        self, task: Task, board: Board | None, *, stale_after: float = DEFAULT_STALE_AFTER
    ) -> str | None:
        """Return why task's holder has lost it (its process ended, no heartbeat, its lease
        ran out), or None while the claim holds."""
        if task.status != CLAIMED or task.holder is None:
            return None
        sign = board.last_post.get(task.holder, 0.0) if board is not None else 0.0
        return _leases.gone(self.agents, self._lease(task), sign, stale_after=stale_after)

    # ------------------------------------------------------------------ events

    def claim(
        self,
        thread: str,
        seq: int,
        *,
        agent: str,
        pid: int | None = None,
        lease_s: float | None = None,
        stale_after: float = DEFAULT_STALE_AFTER,
    ) -> Claim:
        """Make agent the one holder of task seq, or say who holds it and until when.

        The claim is a message of the thread (a `status` replying to the task), decided by the
        thread's order: the first claim while the task is open wins, on any number of
        machines. pid is the holder's process: when it dies the task is open again (at once on
        this machine, after stale_after elsewhere); without a pid (a person, a script) the
        claim lasts its lease. A claim by the holder renews it. Raise TaskError if the task is
        done, dead, not a task, or for other agents.
        """
        if lease_s is not None and _num(lease_s, 1, 86400) is None:
            raise TaskError(f"lease_s must be a number of seconds from 1 to 86400, not {lease_s!r}")
        for _ in range(5):  # a task given back just as we lost it is tried again
            task, until = self._snapshot(thread, seq)
            self._claimable(task, agent)
            if task.status == CLAIMED and task.holder != agent:
                self._settle(thread, stale_after=stale_after)  # a dead or stalled holder lets go
                task, until = self._snapshot(thread, seq)
                self._claimable(task, agent)
                if task.status == CLAIMED and task.holder != agent:
                    return Claim(False, task, until)
            if task.held_by(agent, pid) and not lease_s:
                return Claim(True, task, until)  # this process holds it already
            got = self._write_claim(thread, task, agent, pid, lease_s)
            if got is not None:
                return got
        task, until = self._snapshot(thread, seq)
        return Claim(False, task, until)

    def _snapshot(self, thread: str, seq: int) -> tuple[Task, float | None]:
        """Return a copy of task seq and its lease's end, from one fold of the thread."""
        with self._lock:
            board = self.board(thread)
            if seq not in board.tasks:
                self.task(thread, seq)  # raises if there is no such task, else folds it in
                board = self.board(thread)
            task = replace(board.tasks[seq])
            return task, self._until(task, board)

    def _write_claim(
        self, thread: str, task: Task, agent: str, pid: int | None, lease_s: float | None
    ) -> Claim | None:
        """Write agent's claim of task and return the answer; None if it should try again."""
        seq = task.seq

        def guard() -> None:
            now = self.board(thread).tasks[seq]
            if now.status != OPEN and not (now.status == CLAIMED and now.holder == agent):
                raise _Lost

        lease = lease_s or task.lease_s or self.files.settings.task_lease_s
        ev: dict[str, Any] = {"event": "claim", "lease_s": lease}
        if pid is not None:
            ev |= {"pid": pid, "host": HOST}
        verb = "renewed" if task.holder == agent else "claimed"
        written = None
        try:
            message = self.writer.append(
                thread, self.files.thread_dir(thread), sender=agent, to=(), type_="status",
                priority="normal", reply_to=seq, content=f"{verb} task {seq} (lease {lease:.0f} s)",
                meta={"task": ev}, key=None, guard=guard,
            )  # fmt: skip
            written = message.seq
            folded_through(lambda: self.board(thread), message.seq, self.files.settings.grace_s)
        except _Lost:
            pass
        now, until = self._snapshot(thread, seq)
        if now.status == CLAIMED and now.holder == agent:
            won = written is None or now.claim == written or task.holder == agent
            return Claim(won, now, until, written)
        self._claimable(now, agent)  # closed meanwhile: say so
        if now.status == CLAIMED:
            return Claim(False, now, until, written)
        return None  # open again already: try again

    def _claimable(self, task: Task, agent: str) -> None:
        where = f"task {task.seq} of {task.thread!r}"
        if not task.may_take(agent):
            raise TaskError(
                f"{where} is for {', '.join(task.to)}, not for {agent}; leave it to them"
            )
        if task.status == DONE:
            raise TaskError(
                f"{where} is done: {task.done_by} posted its result at seq {task.closed_by}; "
                "nothing to claim"
            )
        if task.status == DEAD:
            raise TaskError(
                f"{where} is dead after {task.failures} failed attempts; post it again as a new "
                "task to retry it"
            )

    def release(
        self,
        thread: str,
        seq: int,
        *,
        agent: str,
        reason: str | None = None,
        holder: str | None = None,
    ) -> Message:
        """Give task seq back without failing it; return the event. With holder, agent (a
        person) takes holder's claim back, recorded as agent's and naming holder. Raise
        TaskError unless agent (or holder) holds it."""
        task = self.task(thread, seq)
        whose = holder or agent
        if task.status != CLAIMED or task.holder != whose:
            held = f"{task.holder} holds it" if task.status == CLAIMED else f"it is {task.status}"
            who = "you do not" if whose == agent else f"{whose} does not"
            raise TaskError(f"{who} hold task {seq} of {thread!r} ({held}); nothing to give back")
        claim = task.claim

        def guard() -> None:
            now = self.board(thread).tasks[seq]
            if now.status != CLAIMED or now.holder != whose or now.claim != claim:
                raise TaskError(f"task {seq} of {thread!r} changed hands meanwhile; look again")

        ev: dict[str, Any] = {"event": "release"}
        if whose == agent:
            text = f"gave task {seq} back"
            to = task.to
        else:  # said as the person's own act, never written in the holder's name
            ev |= {"holder": whose, "claim": claim}
            text = f"took task {seq} back from {whose}; it is open again"
            to = tuple(dict.fromkeys((*task.to, whose)))
        text += f": {reason}" if reason else ""
        return self.writer.append(
            thread, self.files.thread_dir(thread), sender=agent, to=to, type_="status",
            priority="normal", reply_to=seq, content=text, meta={"task": ev}, key=None,
            guard=guard,
        )  # fmt: skip

    def check_reply(
        self, thread: str, sender: str, type_: str, reply_to: int | None
    ) -> tuple[str, ...]:
        """Return who must also be told of sender's result or error (the holder of the task a
        result closes under it); raise TaskError if it breaks a task rule, saying the fix.

        The rules: in a thread with unfinished tasks, a result or error replies to one of them
        (reply_to); one that replies to a task's claim, release or other reply means the task
        itself; a task addressed to others is closed only by them or its sender.
        """
        board = self.board(thread)
        did = "closes" if type_ == "result" else "fails an attempt of"
        if reply_to is None:
            unfinished = [t for t in board.tasks.values() if t.status in (OPEN, CLAIMED)]
            if not unfinished:
                return ()  # a result in a conversation about no task
            likely = (
                [t for t in unfinished if t.holder == sender]
                or [t for t in unfinished if t.may_take(sender)]
                or unfinished
            )
            t = likely[0]
            named = f"task {t.seq}" + (f" ({t.title})" if t.title else "")
            raise TaskError(
                f"a {type_} without reply_to {did} no task, and {thread!r} has {len(unfinished)} "
                f"unfinished: post it again with reply_to=<the task's seq> (reply_to={t.seq} for "
                f"{named}), or as type='message' if it is about no task"
            )
        task = board.tasks.get(reply_to)
        if task is None:
            try:
                m = self.log.get(thread, reply_to)
            except MailslotError:
                return ()  # unreadable now: the writer reports what it cannot store
            parent = board.tasks.get(m.reply_to) if m.reply_to is not None else None
            if parent is None:
                return ()  # a reply to a message that belongs to no task
            event = event_of(m)
            what = f"a status message ({event} of task {parent.seq})" if event else f"a {m.type}"
            kind = f"an {type_}" if type_ == "error" else f"a {type_}"
            raise TaskError(
                f"message {reply_to} of {thread!r} is {what}, not the task; {kind} {did} a "
                f"task only as a reply to the task itself: post it again with "
                f"reply_to={parent.seq}"
            )
        if sender != task.sender and not task.may_take(sender):
            raise TaskError(
                f"task {task.seq} of {thread!r} is for {', '.join(task.to)}, not for {sender}; "
                f"to tell them, post type='message' with reply_to={task.seq}"
            )
        if type_ == "result" and task.status == CLAIMED and task.holder not in (None, sender):
            return (task.holder,)  # closed under its holder: it is told
        return ()

    def _settle(
        self,
        thread: str,
        *,
        noticed_by: str | None = None,
        stale_after: float = DEFAULT_STALE_AFTER,
    ) -> list[Message]:
        """Write the events thread's tasks are owed: a reopen for each holder that died or
        stalled (dead past the maximum of attempts), and the notice of a task that died by an
        error. Return the events written; best effort (a read-only folder writes none)."""
        board = self.board(thread)
        out: list[Message] = []
        for task in list(board.tasks.values()):
            if task.status == CLAIMED:
                reason = self._gone(task, board, stale_after=stale_after)
                if reason is not None:
                    out += self._event(thread, task, reason, noticed_by)
            elif task.status == DEAD and not task.notified:
                out += self._event(thread, task, None, noticed_by)
        return out

    def _event(
        self, thread: str, task: Task, reason: str | None, noticed_by: str | None
    ) -> list[Message]:
        """Write a reopen or dead event for task (reason: why its holder lost it)."""
        limit = task.max_attempts or self.files.settings.task_max_attempts
        claim, holder = task.claim, task.holder
        dead = reason is None or task.failures + 1 >= limit
        failures = task.failures + (reason is not None)
        ev: dict[str, Any] = {"event": "dead" if dead else "reopen", "claim": claim}
        if reason is not None:
            ev |= {"holder": holder, "reason": reason}
        if noticed_by:
            ev["noticed_by"] = noticed_by
        name = f"task {task.seq} ({task.title})" if task.title else f"task {task.seq}"
        if reason is None:
            text = (
                f"{name} is dead: {failures} of {limit} attempts failed (the last error is seq "
                f"{task.last_error}); post it again as a new task to retry it."
            )
        elif dead:
            text = (
                f"{name} is dead: {holder} lost it ({reason}), and {failures} of {limit} "
                "attempts have failed; post it again as a new task to retry it."
            )
        else:
            text = (
                f"{name} is open again: {holder} lost it ({reason}); failed attempts: "
                f"{failures} of {limit}."
            )

        def guard() -> None:
            now = self.board(thread).tasks[task.seq]
            if reason is not None and (now.status != CLAIMED or now.claim != claim):
                raise _Lost  # someone else settled it, or its holder closed it meanwhile
            if reason is None and (now.status != DEAD or now.notified):
                raise _Lost

        try:
            message = self.writer.append(
                thread, self.files.thread_dir(thread), sender=SYSTEM,
                to=[task.sender] if dead else task.to, type_="status",
                priority="high" if dead else "normal", reply_to=task.seq, content=text,
                meta={"task": ev}, key=None, guard=guard,
            )  # fmt: skip
        except _Lost:
            return []
        except MailslotError as e:
            if (thread, task.seq, claim) not in self._warned:  # once, not every half second
                self._warned.add((thread, task.seq, claim))
                log.warning("could not record that task %d of %s %s: %s", task.seq, thread,
                            "is dead" if dead else "is open again", e)  # fmt: skip
            return []
        return [message]

    def settle(
        self,
        threads: Iterable[str] | None = None,
        *,
        noticed_by: str | None = None,
        stale_after: float = DEFAULT_STALE_AFTER,
    ) -> list[Message]:
        """Reopen the tasks whose holders died or stalled (default: in every thread).

        Each becomes a `reopen` event signed "mailslot" (`dead`, addressed to the task's sender,
        once its failed attempts reach the maximum), which wakes the agents waiting for work.
        Return the events written; on one machine each is written once, however many
        processes notice at the same time. Threads that vanished are skipped.
        """
        out: list[Message] = []
        for thread in self.files.thread_ids() if threads is None else threads:
            try:
                board = self.board(thread)
                if any(t.status in (CLAIMED, DEAD) for t in board.tasks.values()):
                    out += self._settle(thread, noticed_by=noticed_by, stale_after=stale_after)
            except MailslotError:
                continue
        return out
