"""The library's one public front: a mailbox root of threads, each a folder of numbered messages.

``Mailbox`` holds the everyday verbs (post, read, wait, threads) and hands out the other
concepts as objects: ``box.tasks`` (``coordination/tasks.py``), ``box.reservations``
(``coordination/reservations.py``), ``box.agents`` (``store/agents.py``) and ``box.trust``
(``coordination/trust.py``: every message its reads return carries ``signed``), each documented
once, where it lives. Dependencies point one way (this front → coordination → the store);
docs/layout.md names what each module does.

Contract (design.md §2-3): a message is written and fsynced to a temp file under
``.state/tmp/``, then published with ``os.link`` onto the next free ``<seq>.json`` of its thread.
``link`` never replaces an existing name, so two writers can never overwrite each other, with
or without the thread's lock; the lock (a blocking, fair ``flock``) only keeps writers of one
machine from colliding. A published file is never modified again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailslot.coordination.board import Board, Question, Task
from mailslot.coordination.loops import Loops
from mailslot.coordination.reservations import Grant, Held, Reservations
from mailslot.coordination.tasks import Claim, Tasks
from mailslot.coordination.trust import Trust
from mailslot.store import positions
from mailslot.store.agents import Agents
from mailslot.store.errors import Damaged, InvalidState, MailslotError, RootError
from mailslot.store.feed import Feed
from mailslot.store.files import Files
from mailslot.store.format import (
    FORMAT,
    PRIORITIES,
    STATES,
    TYPES,
    AgentCard,
    Damage,
    Message,
    Page,
    Pending,
    ThreadInfo,
    check_content,
)
from mailslot.store.log import MAX_PAGE, ThreadLog
from mailslot.store.presence import NameHold, Presence
from mailslot.store.publish import Writer
from mailslot.store.roots import ROOT_DIRNAME, create, default_root, find_root, share
from mailslot.store.settings import DEFAULT_MAX_CONTENT, WAIT_MODES, Settings, load
from mailslot.store.threads import Threads
from mailslot.store.wait import Arrivals, Waiting, WaitPlan
from mailslot.store.watch import Watcher

if TYPE_CHECKING:
    from mailslot.coordination.search import Hit, Results, Search

__all__ = [
    "DEFAULT_MAX_CONTENT",
    "FORMAT",
    "MAX_PAGE",
    "PRIORITIES",
    "ROOT_DIRNAME",
    "STATES",
    "TYPES",
    "WAIT_MODES",
    "AgentCard",
    "Arrivals",
    "Board",
    "Claim",
    "Damage",
    "Damaged",
    "Grant",
    "Held",
    "Hit",
    "Mailbox",
    "Message",
    "NameHold",
    "Page",
    "Pending",
    "Presence",
    "Question",
    "Results",
    "Settings",
    "Task",
    "ThreadInfo",
    "default_root",
    "find_root",
]


def __getattr__(name: str) -> Any:
    """Hand out the search module's types on first use (it loads sqlite3)."""
    if name in ("Hit", "Results"):
        from mailslot.coordination import search as _search

        return getattr(_search, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Mailbox:
    """A mailbox root opened for reading and writing.

    Any number of Mailbox objects, in any number of processes, may use one root at once. An
    instance is safe to use from several threads. Opening sweeps temp files that dead writers
    left (``sweep=False`` to only look). Keyword arguments override the root's settings for
    this instance only (benchmarks and tests use ``fsync=False``, and ``lock=False`` to behave
    as on a network mount where locks do not reach).
    """

    def __init__(
        self,
        root: Path | str,
        *,
        fsync: bool | None = None,
        lock: bool | None = None,
        max_content_bytes: int | None = None,
        wait_mode: str | None = None,
        poll_interval: float | None = None,
        grace_s: float | None = None,
        sweep: bool = True,
    ) -> None:
        given = Path(root)
        if not given.exists():
            raise RootError(given, f"no mailbox at {given}: run `mailslot init {given}`")
        if not given.is_dir():
            raise RootError(given, f"{given} is a file, not a mailbox folder")
        self.root = given.resolve()
        self.settings, read_only = load(
            self.root, fsync=fsync, lock=lock, max_content_bytes=max_content_bytes,
            wait_mode=wait_mode, poll_interval=poll_interval, grace_s=grace_s,
        )  # fmt: skip
        #: Why this root must not be written to (made by a newer mailslot), or None.
        self.read_only = read_only
        self._files = Files(self.root, self.settings, read_only)
        #: What ``init(shared=True)`` did to share the root, a line each for a person.
        self.shared_changes: list[str] = []
        self._log = ThreadLog(self._files)
        self._threads = Threads(self._files, self._log)
        #: The agents: cards, presence, and the names this process holds.
        self.agents = Agents(self._files)
        #: Who wrote each message: signatures checked, keys pinned (coordination/trust.py).
        self.trust = Trust(self._files, self.agents, self._log)
        self._writer = Writer(
            self._files, self._log, self.agents, self._participants, self.trust.keys
        )
        self._waiting = Waiting(self._files, self._log)
        #: The loop guard: who is a person, and the posts of agents in a loop refused.
        self.loops = Loops(self._files, self._log, self._writer)
        #: The task boards: claim, release, settle (see coordination/tasks.py).
        self.tasks = Tasks(
            self._files, self._log, self.agents, self._writer, self._threads.incarnation
        )
        self._search: Search | None = None
        #: The file reservations: reserve, release, live (see coordination/reservations.py).
        self.reservations = Reservations(
            self._files, self._log, self.agents, self._writer, self._threads.create,
            self._threads.incarnation,
        )  # fmt: skip
        for sub in ("threads", "agents", ".state"):
            self._files.check_not_symlink(self.root / sub)
        if sweep and read_only is None:
            self.sweep_tmp()

    @classmethod
    def init(
        cls, root: Path | str, *, fsync: bool = True, lock: bool = True, shared: bool = False
    ) -> Mailbox:
        """Create a mailbox root at root (or open the one there) and return it.

        shared: the users of the root folder's group share it (``"shared": "group"``): every
        file and folder any mailslot process creates in it is group-writable, whatever the
        creator's umask. An existing mailbox is converted: what was done is in ``shared_changes``.
        """
        path = create(root, fsync=fsync, lock=lock, shared=shared)
        changes = share(path) if shared else []
        box = cls(path)
        box.shared_changes = changes
        return box

    def sweep_tmp(self) -> list[Path]:
        """Remove temp files left by dead writers of this host, or older than an hour.

        Return the removed paths. A read-only root is left alone.
        """
        return self._files.sweep_tmp()

    # ------------------------------------------------------------------ reading

    def head(self, thread: str, *, exact: bool = False) -> int:
        """Return the seq of the newest message in thread (0 if none); raise NoSuchThread.

        Cheap (no folder listing) unless exact: then it also sees past any gap that git or a
        sync tool left, however wide.
        """
        return self._log.head(thread, exact=exact)

    def settled(self, thread: str) -> None:
        """Return once no writer of this machine holds thread's lock: a rewrite of its seqs
        under way (`mailslot sync` bringing it in step) has finished and left its rewind mark,
        so a reader that found rewritten files sees the mark too. Best effort: a root with
        locks off, or a lock that cannot be taken, returns at once."""
        with contextlib.suppress(MailslotError), self._files.locked(thread):
            pass

    def read(self, thread: str, after: int = 0, limit: int = 100) -> Page:
        """Return up to limit messages with seq > after, in seq order.

        A file that is empty, half-written or missing while later seqs exist is pending for
        grace_s after its last change: the read stops before it and names it in Page.pending.
        After that it is stepped over, reported in Page.skipped and logged; so are files that
        cannot be read. Raise NoSuchThread, or InvalidMessage for a bad after/limit.
        """
        return self.trust.marked(self._log.read(thread, after, limit))

    def __iter__(self) -> Iterator[str]:
        """Iterate over thread ids."""
        return iter(self._files.thread_ids())

    def messages(self, thread: str, after: int = 0) -> Iterator[Message]:
        """Yield every readable message of thread with seq > after, in seq order."""
        return self._log.messages(thread, after)

    def get(self, thread: str, seq: int) -> Message:
        """Return message seq of thread; raise NoSuchThread, NoSuchMessage or Damaged."""
        return self.trust.mark(self._log.get(thread, seq))

    # ------------------------------------------------------------------ writing

    def post(
        self,
        thread: str,
        content: str | bytes,
        *,
        sender: str,
        to: list[str] | tuple[str, ...] = (),
        type: str = "message",
        priority: str = "normal",
        reply_to: int | None = None,
        meta: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        """Store a message in thread and return its seq; see publish() for the contract."""
        return self.publish(
            thread, content, sender=sender, to=to, type=type, priority=priority,
            reply_to=reply_to, meta=meta, idempotency_key=idempotency_key,
        ).seq  # fmt: skip

    def publish(
        self,
        thread: str,
        content: str | bytes,
        *,
        sender: str,
        to: list[str] | tuple[str, ...] = (),
        type: str = "message",
        priority: str = "normal",
        reply_to: int | None = None,
        meta: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Message:
        """Store a message in thread and return it as stored (with its seq and id).

        The message is on disk (fsynced, unless the root says ``fsync: false``) when this
        returns. With an idempotency_key, a retry by the same sender with the same key returns
        the first message instead of storing a duplicate. Raise NoSuchThread,
        NoSuchAgent (unknown recipient), InvalidName, InvalidMessage, StorageError or
        LoopRefused (an agent in a loop: coordination/loops.py); on any error nothing is stored.
        """
        self.loops.check(thread, sender, to, type, reply_to, content, idempotency_key)
        guard = None
        if type in ("result", "error"):  # the task rules (Tasks.check_reply), under the lock
            told = self.tasks.check_reply(thread, sender, type, reply_to)
            to = [*to, *(a for a in told if a not in to)]

            def guard() -> None:
                self.tasks.check_reply(thread, sender, type, reply_to)

        message = self._writer.post(
            thread, content, sender=sender, to=to, type=type, priority=priority,
            reply_to=reply_to, meta=meta, idempotency_key=idempotency_key, guard=guard,
        )  # fmt: skip
        if message.type == "error" and message.reply_to is not None:
            # A failed attempt may have been a task's last: tell its sender now.
            with contextlib.suppress(MailslotError):
                self.tasks.settle([thread], noticed_by=sender)
        return message

    # ------------------------------------------------------------------ threads

    def create_thread(self, topic: str, *, creator: str) -> ThreadInfo:
        """Return the thread for topic, creating it if it does not exist yet (get-or-create).

        The thread id is the topic's slug, so agents given the same topic meet in one thread.
        The folder appears with its thread.json already inside (it is renamed into place),
        and when two processes create it at once both get the same thread.
        """
        return self._threads.create(topic, creator=creator)

    def incarnation(self, thread: str) -> str:
        """Return a token that changes when thread is deleted and made again; raise NoSuchThread."""
        return self._threads.incarnation(thread)

    def resolve(self, thread: str) -> str:
        """Return the id of thread, given as an id or a topic (see Threads.resolve)."""
        return self._threads.resolve(thread)

    def thread(self, thread: str) -> ThreadInfo:
        """Return what is known of thread; raise NoSuchThread.

        State, participants and summary come from the messages; a cache under .state/index/
        means only messages new since the last look are read.
        """
        return self._threads.info(thread)

    def _participants(self, thread: str) -> tuple[str, ...]:
        """Return who created or wrote in thread, as far as its index knows; () if unknown."""
        try:
            return tuple(self._threads.info(thread).participants)
        except MailslotError:
            return ()

    def unanswered(self, thread: str, agent: str) -> tuple[list[int], int]:
        """Return (seqs, upto): the messages up to seq upto addressed to agent and not answered.

        "Answered" means agent posted a message whose reply_to is that seq. From the thread
        index, so it costs only the messages new since the last look. Raise NoSuchThread.
        """
        return self._threads.unanswered(thread, agent)

    def threads(
        self, *, state: str | None = None, include_archived: bool = False
    ) -> list[ThreadInfo]:
        """Return the threads, most recently active first, mailslot's own bookkeeping thread
        (file-reservations) after all the others; archived ones only if asked."""
        return self._threads.every(state=state, include_archived=include_archived)

    def set_state(self, thread: str, state: str, *, sender: str, summary: str | None = None) -> int:
        """Record a lifecycle change of thread as a `state` message and return its seq.

        The lifecycle is discuss -> implement -> review -> done -> closed; steps may be
        skipped, a thread may step back to reopen or rework, and `archived` is reachable from
        any state. A summary (Markdown) may go with any change, typically with `closed`.
        Raise InvalidState if state is unknown or already the thread's state.
        """
        if state not in STATES:
            raise InvalidState(f"state must be one of {', '.join(STATES)}; not {state!r}")
        current = self.thread(thread).state
        if state == current:
            raise InvalidState(f"thread {thread!r} is already in state {state!r}")
        content = check_content(summary or "", self.settings.max_content_bytes)
        message = self._writer.append(
            thread, self._files.thread_dir(thread), sender=sender, to=(), type_="state",
            priority="normal", reply_to=None, content=content,
            meta={"state": state, "previous": current}, key=None,
        )  # fmt: skip
        return message.seq

    # ------------------------------------------------------------------ search

    def search(
        self,
        query: str,
        *,
        thread: str | None = None,
        sender: str | None = None,
        type: str | None = None,
        to: str | None = None,
        since: str | None = None,
        limit: int = 20,
    ) -> Results:
        """Return the messages that match query (FTS5 syntax: words, "phrases", prefix*, AND,
        OR, NOT), best first, read back from their files; filters narrow it.

        The index is a cache (see coordination/search) brought up to date with the folder
        first, so a message stored before the call is found. Raise InvalidMessage for a query
        that cannot be read, with examples of what can.
        """
        if self._search is None:
            from mailslot.coordination.search import Search  # sqlite3: the first search's

            self._search = Search(self.root, self._log, self._threads)
        found = self._search.search(
            query, thread=thread, sender=sender, type_=type, to=to, since=since, limit=limit
        )
        hits = [replace(h, message=self.trust.mark(h.message)) for h in found.hits]
        return replace(found, hits=hits)

    # ------------------------------------------------------------------ positions

    def load_cursor(self, agent: str, key: str) -> Any:
        """Return what save_cursor stored for agent under key, or None."""
        return positions.load(self._files, agent, key)

    def save_cursor(self, agent: str, key: str, value: Any) -> None:
        """Remember a read position of agent under key (a thread id); never fails."""
        positions.save(self._files, agent, key, value)

    # ------------------------------------------------------------------ waiting

    @property
    def wait_mode(self) -> str:
        """Return how waits wake here: 'native' (file events), 'poll', or 'hybrid' (both).

        'auto' (the default setting) means native on a local disk and hybrid on a network
        mount (NFS, SMB/CIFS, sshfs and other FUSE or remote filesystems), where file events
        never report other machines' writes and only polling sees them. Native turns hybrid
        when the watch cannot be trusted (inotify limits reached); the watcher warns once.
        """
        return self._waiting.wait_mode

    @property
    def _watcher(self) -> Watcher | None:
        return self._waiting.watcher

    def cursor(self, threads: str | Iterable[str] | None = None) -> dict[str, int]:
        """Return the head seq of each thread (default: all): a cursor that means "from now"."""
        return self._waiting.cursor(threads)

    def wait(
        self,
        threads: str | Iterable[str] | None = None,
        after: int | Mapping[str, int] | None = None,
        *,
        to: str | None = None,
        timeout: float = 50.0,
        limit: int = 100,
    ) -> Arrivals:
        """Block until messages newer than the cursor exist, or timeout seconds pass.

        threads is one thread id, several, or None for every thread (threads created during
        the wait included). after is the seq to wait past (one thread), a cursor dict (as
        returned in Arrivals.cursor; threads missing from it start at 0), or None for "from
        now". With to=NAME only messages addressed to that agent are returned: its inbox.
        Returns at once if such messages already exist; a burst returns together, up to
        limit, in seq order per thread. A timeout returns empty Arrivals with timed_out=True.
        A message still arriving is waited for, and named in Arrivals.pending if time runs out.
        """
        return self.trust.marked(
            self._waiting.wait(threads, after, to=to, timeout=timeout, limit=limit)
        )

    async def wait_async(
        self,
        threads: str | Iterable[str] | None = None,
        after: int | Mapping[str, int] | None = None,
        *,
        to: str | None = None,
        timeout: float = 50.0,
        limit: int = 100,
        match: Callable[[Message], bool] | None = None,
    ) -> Arrivals:
        """Await what wait() returns, without blocking the event loop; cancellable at once.

        Cancelling the awaiting task ends the wait at its current await and leaves nothing
        behind (no subscription, no thread, no lock: a wait never holds a lock). match, if
        given, chooses the messages to return instead of to (an inbox with more in it).
        """
        got = await self._waiting.wait_async(
            threads, after, to=to, timeout=timeout, limit=limit, match=match
        )
        return self.trust.marked(got)

    def wait_plan(self, threads: str | Iterable[str] | None, after: Mapping[str, int], *,
                  to: str | None = None, limit: int = 100,
                  match: Callable[[Message], bool] | None = None) -> WaitPlan:  # fmt: skip
        """Return a wait to run again and again with run_wait, from after: it keeps its cursor,
        so a run looks only where something changed since the last (the first: everywhere)."""
        return self._waiting.plan(threads, after, to, 0, limit, match)

    async def run_wait(self, plan: WaitPlan, timeout: float) -> Arrivals:
        """Await plan's new messages for up to timeout seconds, as wait_async does."""
        return self.trust.marked(await self._waiting.run_async(plan, timeout))

    @property
    def changes(self) -> Feed:
        """Return the feed of threads that changed, as this process saw (store.feed)."""
        return self._waiting.feed

    def thread_names(self) -> list[str]:
        """Return the thread ids, sorted (threads/ listed again only when it changed)."""
        return self._waiting.names()

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Stop watching (the process's observer stops with its last user); safe to repeat."""
        self._waiting.close()

    def __enter__(self) -> Mailbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Mailbox({str(self.root)!r})"
