"""Tasks: claimed by one agent, leased, handed out again when the holder dies or stalls.

A task and everything that happens to it are messages of its thread, whose fold is the
thread's board (``board`` says which messages, and that the first claim made while the task is
open wins). On one machine a claim is decided under the thread's lock (fold to the head, then
append), so a loser writes nothing and is told who holds the task; across machines on a
network mount, where locks do not exclude, the order of the log decides (design.md §1.8).

A claim holds while its holder's process lives (its presence: the pid on this machine at once,
the heartbeat elsewhere) and shows a sign of work (a tool call, or a message in the thread)
within the lease. When it does not, whichever live process looks first (an inbox wait, a task
list, a claim) writes a ``reopen`` event signed ``mailslot`` (``dead`` once the failed attempts
reach the maximum, addressed to the task's sender), and that event wakes the waiting agents.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from mailslot.coordination import leases as _leases
from mailslot.coordination.board import (
    CLAIMED,
    DEAD,
    DONE,
    OPEN,
    SYSTEM,
    Board,
    Task,
    TaskBoard,
    _num,
    event_of,
    fold,
    folded_through,
)
from mailslot.coordination.leases import Lease
from mailslot.store.agents import Agents
from mailslot.store.errors import MailslotError, TaskError
from mailslot.store.files import HOST, Files
from mailslot.store.format import Message
from mailslot.store.log import ThreadLog
from mailslot.store.presence import DEFAULT_STALE_AFTER
from mailslot.store.publish import Writer

log = logging.getLogger("mailslot")


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
            board = fold(self.files, self.log, thread, tdir, incarnation, board)
            self._boards[thread] = board
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
            _claimable(task, agent)
            if task.status == CLAIMED and task.holder != agent:
                self._settle(thread, stale_after=stale_after)  # a dead or stalled holder lets go
                task, until = self._snapshot(thread, seq)
                _claimable(task, agent)
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
            board = folded_through(lambda: self.board(thread), written, self.files.settings.grace_s)
            with self._lock:  # answered from that fold: no second one
                now, until = replace(board.tasks[seq]), self._until(board.tasks[seq], board)
        except _Lost:
            now, until = self._snapshot(thread, seq)
        if now.status == CLAIMED and now.holder == agent:
            won = written is None or now.claim == written or task.holder == agent
            return Claim(won, now, until, written)
        _claimable(now, agent)  # closed meanwhile: say so
        if now.status == CLAIMED:
            return Claim(False, now, until, written)
        return None  # open again already: try again

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

    def overview(
        self, threads: list[str], status: str | None = None, *, mine: str | None = None
    ) -> TaskBoard:
        """Return the tasks of threads with status (None: all but done; "all": all), oldest first,
        the count of each status, and the questions nobody has answered; skip vanished threads.

        mine: only the tasks that agent holds or can take now and the questions others asked it
        or anyone (counted so too).
        """
        boards = []
        for name in threads:
            with contextlib.suppress(MailslotError):  # removed while listing
                boards.append(self.board(name))
        return TaskBoard.of(boards, status, mine=mine)


def _claimable(task: Task, agent: str) -> None:
    """Raise TaskError, saying why, unless agent may claim task (it may be held)."""
    where = f"task {task.seq} of {task.thread!r}"
    if not task.may_take(agent):
        raise TaskError(f"{where} is for {', '.join(task.to)}, not for {agent}; leave it to them")
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
