"""A thread's task board: its tasks and open questions, folded from its messages in seq order.

A task is a message of type ``task``. Everything that happens to it is a message of its thread
that replies to it (``reply_to`` = the task's seq), so the transcript shows who took what:

- a claim, a release, a reopen or a dead notice is a ``status`` message whose ``meta.task``
  says which (``{"event": "claim", "lease_s": 300, "pid": 4242, "host": "box"}``); a release
  naming a holder and its claim (``{"event": "release", "holder": "bob", "claim": 7}``) is a
  person taking that claim back as themselves: the task is open again, no attempt failed;
- a ``result`` reply closes the task; an ``error`` reply from its holder is a failed attempt.

A task's state is a fold of those messages in seq order (``Board``), so every process on every
machine derives the same answer from the same folder. The first claim made while the task is
open wins; a claim that lands after another is void. A process keeps its boards, and caches
them under ``.state/index/`` for the next process (``fold``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from mailslot.store.errors import MailslotError
from mailslot.store.files import HOST, Files, exists
from mailslot.store.format import Message, loads
from mailslot.store.log import ThreadLog
from mailslot.store.threads import CACHE_FROM

OPEN, CLAIMED, DONE, DEAD = "open", "claimed", "done", "dead"
STATUSES = (OPEN, CLAIMED, DONE, DEAD)
EVENTS = ("claim", "release", "reopen", "dead")
SYSTEM = "mailslot"  # signs the events a live process writes for a holder that is gone
SAVE_EVERY_S = 2.0  # a board's cache on disk is rewritten at most this often,
SAVE_SHARE = 100  # and a big board's at most 1/SAVE_SHARE of the time (a busy thread's tasks)
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
    save_s: float = 0.0  # how long the last save of the cache took
    rewound: int = 0  # the mtime of the thread's rewind mark when the fold began (see below)
    #: The tasks that may be open (each added when it came or opened again; open_tasks()
    #: drops the others), so finding the open ones does not cost every task the thread had.
    opened: dict[int, None] = field(default_factory=dict)
    jumbled: bool = False  # a task opened again after newer ones: opened is out of order

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
            self.opened[m.seq] = None
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
        if task is not None:
            _reply(task, m, at, task.max_attempts or max_attempts)
            if task.status == OPEN and task.seq not in self.opened:
                self.opened[task.seq] = None
                self.jumbled = True

    def open_tasks(self) -> Iterator[Task]:
        """Yield the open tasks, oldest first, as far as the caller reads them; those found
        closed or claimed on the way leave opened."""
        if self.jumbled:
            self.opened = dict.fromkeys(sorted(self.opened))
            self.jumbled = False
        gone: list[int] = []
        try:
            for seq in list(self.opened):  # a copy (of keys alone): a fold may run meanwhile
                task = self.tasks[seq]
                if task.status == OPEN:
                    yield task
                else:
                    gone.append(seq)
        finally:
            for seq in gone:  # unless a fold meanwhile opened it again
                if self.tasks[seq].status != OPEN:
                    self.opened.pop(seq, None)

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
                opened={t.seq: None for t in tasks if t.thread == thread and t.status == OPEN},
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return cls()


def _reply(task: Task, m: Message, at: float, limit: int) -> None:
    """Take what reply m (sent at epoch seconds at) says of task into it; limit: the task's
    maximum of failed attempts."""
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


def fold(
    files: Files,
    log: ThreadLog,
    thread: str,
    tdir: Path,
    incarnation: str,
    board: Board | None,
) -> Board:
    """Return thread's board brought up to date with its folder tdir, going on from board
    (this process's; None: the cache under .state/index/, if usable); rewrite that cache for
    a thread of CACHE_FROM messages or more, at most every SAVE_EVERY_S and at most 1/SAVE_SHARE
    of the time its last save took."""
    path = f"{files.root}/.state/index/{thread}.tasks.json"  # strings: a fold per claim
    known = board is not None
    if board is None:
        try:
            with open(path, "rb") as f:
                board = Board.from_json(thread, loads(f.read()))
        except (OSError, ValueError):
            board = Board()
    # `mailslot doctor --fix` rewrote seqs after a merge conflict (it leaves a mark).
    try:
        rewound = os.stat(f"{files.root}/.state/rewound/{thread}.json")
        mark = rewound.st_mtime_ns
    except OSError:
        mark = 0
    if (
        board.incarnation != incarnation
        or (board.seq and not exists(tdir, board.seq))
        or (known and board.rewound != mark)
    ):  # another thread, ahead of the folder, or rewritten: fold again from the start
        board = Board(incarnation=incarnation)
    board.rewound = mark
    start = board.seq
    limit = files.settings.task_max_attempts
    for page in log.pages(thread, tdir, board.seq):
        for m in page.messages:
            board.add(m, limit)
        board.seq = page.cursor
        board.complete = page.pending is None
    now = time.monotonic()
    if (
        board.seq != start
        and board.seq >= CACHE_FROM
        and now - board.saved > max(SAVE_EVERY_S, SAVE_SHARE * board.save_s)
    ):
        with contextlib.suppress(MailslotError, OSError):
            files.dir(".state/index")
            files.write_state_file(Path(path), board.to_json())
        board.saved = time.monotonic()
        board.save_s = board.saved - now
    return board


@dataclass(frozen=True, slots=True)
class TaskBoard:
    """The tasks of some threads with a status, oldest first, their counts, open questions."""

    tasks: list[Task]
    counts: dict[str, int]
    questions: list[Question]

    @classmethod
    def of(cls, boards: list[Board], status: str | None, *, mine: str | None) -> TaskBoard:
        """Return the tasks of boards with status (see Tasks.overview), and their questions."""
        tasks: list[Task] = [t for b in boards for t in b.tasks.values()]
        questions: list[Question] = [q for b in boards for q in b.questions.values()]
        if mine is not None:
            tasks = [
                t for t in tasks if (t.status == CLAIMED and t.holder == mine) or t.open_to(mine)
            ]
            questions = [q for q in questions if q.sender != mine and (not q.to or mine in q.to)]
        counts = {s: sum(t.status == s for t in tasks) for s in STATUSES}
        if status == "all":
            wanted = list(STATUSES)
        else:
            wanted = [s for s in STATUSES if s != "done"] if status is None else [status]
        shown = sorted(
            (t for t in tasks if t.status in wanted), key=lambda t: (t.created_at, t.thread, t.seq)
        )
        questions.sort(key=lambda q: (q.created_at, q.thread, q.seq))
        return cls(shown, counts, questions)
