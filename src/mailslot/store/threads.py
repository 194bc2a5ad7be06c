"""Threads: creating them, what they are (record and incarnation), and the index of their state.

A thread is a folder under ``threads/`` with an immutable ``thread.json``. What its messages
say (state, summary, participants, who was addressed and has not answered) is kept in a
per-machine index under ``.state/index/``, brought up to date from the log on each look, so
only new messages are read; the index never records past a message still arriving.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mailslot.store.errors import InvalidName, InvalidState, MailslotError, NotFound, RootError
from mailslot.store.files import Files, exists, fsync_dir, storage_error
from mailslot.store.format import (
    STATES,
    Damage,
    Message,
    Pending,
    ThreadInfo,
    dumps,
    loads,
    now_iso,
)
from mailslot.store.log import RACY_S, ThreadLog
from mailslot.store.names import check_name, check_topic, slugify

MAX_UNANSWERED = 10_000  # per agent and thread, remembered by the thread index
INDEX_PAGE = 256
#: Messages: the caches under .state/index/ are written for threads at least this long (a
#: shorter one is read again sooner than its cache is written: a mailbox of many short
#: threads would write a file for each at an agent's first look).
CACHE_FROM = 8
# A first look at a long thread (a fresh clone) indexes it for this long, then reads its
# newest messages backwards for this long; the rest is indexed over the next looks.
INDEX_BUDGET_S = 0.02
TAIL_BUDGET_S = 0.01
#: The thread of file reservations (`coordination/reservations.py` keeps it).
RESERVATIONS = "file-reservations"
#: Threads mailslot keeps for its own bookkeeping: listed after every conversation, however
#: recent, and readable by id like any thread.
BOOKKEEPING = frozenset({RESERVATIONS})


@dataclass(slots=True)
class _Index:
    """What a thread's messages up to seq say; cached in .state/index/, rebuilt from messages."""

    seq: int = 0
    state: str = "discuss"
    summary: str | None = None
    summary_state: str | None = None  # the state the summary was given with
    participants: tuple[str, ...] = ()
    last_activity: str = ""
    incarnation: str = ""
    #: agent -> seqs of messages addressed to it that it has not answered (reply_to) yet.
    unanswered: dict[str, list[int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return the index as a JSON-able dict."""
        return {
            "seq": self.seq,
            "state": self.state,
            "summary": self.summary,
            "summary_state": self.summary_state,
            "participants": list(self.participants),
            "last_activity": self.last_activity,
            "incarnation": self.incarnation,
            "unanswered": {a: list(s) for a, s in self.unanswered.items()},
        }

    def add(self, m: Message) -> None:
        """Take what message m says into the index."""
        if m.sender not in self.participants:
            self.participants = (*self.participants, m.sender)
        self.last_activity = m.created_at
        new_state = m.meta.get("state") if m.type == "state" else None
        if new_state in STATES:
            self.state = str(new_state)
            if m.content:  # the latest summary given, with any change of state
                self.summary, self.summary_state = m.content, self.state
        if m.reply_to is not None and m.reply_to in self.unanswered.get(m.sender, ()):
            self.unanswered[m.sender].remove(m.reply_to)
        for agent in m.to:
            if agent != m.sender:
                seqs = self.unanswered.setdefault(agent, [])
                seqs.append(m.seq)
                del seqs[:-MAX_UNANSWERED]


class Threads:
    """The threads of a root; safe to use from several threads."""

    def __init__(self, files: Files, log: ThreadLog) -> None:
        self.files = files
        self.log = log
        self._index: dict[str, _Index] = {}
        self._listed: dict[str, tuple[tuple[int, int], ThreadInfo]] = {}
        self._unsettled: set[str] = set()
        self._records: dict[str, dict[str, Any]] = {}
        self._incarnations: dict[str, tuple[tuple[int, int, int], str]] = {}

    def resolve(self, thread: str) -> str:
        """Return the thread id meant by thread: an id, or a topic (resolved as create resolves
        it, without creating). Raise InvalidName if it is neither a valid id nor the topic of a
        thread; a valid id of no thread is returned as is (its reader says so).
        """
        threads = self.files.root / "threads"
        try:
            check_name(thread, "thread id")
        except InvalidName as e:
            invalid: InvalidName | None = e
        else:
            invalid = None
            if (threads / thread).is_dir():
                return thread
        try:
            slug = slugify(thread)
        except InvalidName:
            slug = thread
        if slug != thread and (threads / slug).is_dir():
            return slug
        if invalid is not None:
            raise invalid  # neither an id nor the topic of a thread
        return thread

    def create(self, topic: str, *, creator: str) -> ThreadInfo:
        """Return the thread for topic, creating it if it does not exist yet (get-or-create).

        The thread id is the topic's slug, so agents given the same topic meet in one thread.
        The folder appears with its thread.json already inside (it is renamed into place),
        and when two processes create it at once both get the same thread.
        """
        topic = check_topic(topic)
        thread = slugify(topic)
        check_name(creator, "agent name")
        threads = self.files.dir("threads")
        tdir = threads / thread
        if tdir.is_dir() or tdir.is_symlink():
            return self.info(thread)
        stage = self.files.tmp_name("d")
        record = {"id": thread, "topic": topic, "created_by": creator, "created_at": now_iso()}
        try:
            self.files.mkdir(stage)  # the thread's folder: its mode is set before it appears
            self.files.create_file(stage / "thread.json", dumps(record))
            try:
                os.rename(stage, tdir)
            except OSError as e:
                # Another creator won. Over sshfs that reads EPERM, not EEXIST: look.
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY) and not tdir.is_dir():
                    raise
            else:
                if self.files.settings.fsync:
                    fsync_dir(threads)
        except OSError as e:
            raise storage_error(e, self.files.root, f"creating thread {thread!r}") from None
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return self.info(thread)

    def incarnation(self, thread: str) -> str:
        """Return a token of this incarnation of thread: it changes if the thread is deleted
        and created again (it is made from the immutable thread.json). Raise NoSuchThread.
        """
        path = self.files.thread_dir(thread) / "thread.json"
        try:
            st = os.stat(path)
        except OSError:
            return ""
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._incarnations.get(thread)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            with open(path, "rb") as f:
                token = hashlib.sha256(f.read(64 * 1024)).hexdigest()[:16]
        except OSError:
            return ""
        if cached is not None and cached[1] != token:
            self._records.pop(thread, None)  # a new thread under the old id
            self._index.pop(thread, None)
            self.log.forget(thread)
        self._incarnations[thread] = (key, token)
        return token

    def _record(self, thread: str, tdir: Path) -> dict[str, Any]:
        self.incarnation(thread)  # forgets what was cached of an earlier incarnation
        cached = self._records.get(thread)
        if cached is not None:
            return cached
        path = tdir / "thread.json"
        try:
            doc = loads(path.read_bytes())
            if not (isinstance(doc, dict) and isinstance(doc.get("topic"), str)):
                raise ValueError("it is not a thread record with a topic")
        except FileNotFoundError:
            self.files.report(Damage(str(path), "is missing; the thread's topic is unknown"))
            return {"id": thread, "topic": thread, "created_by": "", "created_at": ""}
        except (OSError, ValueError) as e:
            self.files.report(Damage(str(path), f"cannot be read: {e}"))
            return {"id": thread, "topic": thread, "created_by": "", "created_at": ""}
        record = {
            "id": thread,
            "topic": doc["topic"],
            "created_by": str(doc.get("created_by", "")),
            "created_at": str(doc.get("created_at", "")),
        }
        self._records[thread] = record
        return record

    def _load_index(self, thread: str, path: Path) -> _Index:
        cached = self._index.get(thread)
        if cached is not None:
            return replace(cached)
        try:
            doc = loads(path.read_bytes())
            index = _Index(
                seq=int(doc["seq"]),
                state=doc["state"] if doc["state"] in STATES else "discuss",
                summary=doc["summary"] if isinstance(doc["summary"], str) else None,
                summary_state=doc["summary_state"] if doc["summary_state"] in STATES else None,
                participants=tuple(str(p) for p in doc["participants"]),
                last_activity=str(doc["last_activity"]),
                incarnation=str(doc["incarnation"]),
                unanswered={
                    str(a): [int(s) for s in seqs] for a, seqs in doc["unanswered"].items()
                },
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return _Index()
        return index

    def info(self, thread: str) -> ThreadInfo:
        """Return what is known of thread; raise NoSuchThread.

        State, participants and summary come from the messages; a cache under .state/index/
        means only messages new since the last look are read. A long thread never indexed on
        this machine (a fresh clone) is indexed a time budget per look, oldest first, while
        its newest messages are read backwards for its current state: the answer then says
        complete=False until the index has caught up.
        """
        tdir = self.files.thread_dir(thread)
        record = self._record(thread, tdir)
        index = self.current_index(thread, tdir, budget_s=INDEX_BUDGET_S)
        # No listing for this answer: the look-ahead sees the gaps sync tools leave, and a
        # writer or reader lists the folder whenever it must see further.
        head = max(index.seq, self.log.probe_head(thread, tdir, listing=False))
        info = ThreadInfo(
            id=thread,
            topic=record["topic"],
            created_by=record["created_by"],
            created_at=record["created_at"],
            state=index.state,
            head=head,
            participants=list(index.participants),
            last_activity=index.last_activity or record["created_at"],
            summary=index.summary,
            summary_state=index.summary_state,
        )
        if head > index.seq and thread not in self._unsettled:
            info = self._with_tail(info, tdir, index.seq, head)
        return info

    def _with_tail(self, info: ThreadInfo, tdir: Path, indexed: int, head: int) -> ThreadInfo:
        """Return info completed from the newest messages past what the index has read.

        Reads backwards from head for a time budget: the newest state message found is the
        thread's state; if the budget ends before reaching the index, the answer is marked
        incomplete (the state may be older news).
        """
        deadline = time.monotonic() + TAIL_BUDGET_S
        participants = list(info.participants)
        state, last_activity = None, ""
        summary: tuple[str, str] | None = None
        seq = head
        pending = False
        while seq > indexed and time.monotonic() < deadline:
            item = self.log.load(info.id, tdir, seq)
            seq -= 1
            if isinstance(item, Pending):
                pending = True  # it may say something once whole: this answer is not final
            if not isinstance(item, Message):
                continue
            last_activity = last_activity or item.created_at
            if item.sender not in participants:
                participants.append(item.sender)
            new_state = item.meta.get("state") if item.type == "state" else None
            if new_state in STATES:
                state = state or str(new_state)
                if summary is None and item.content:
                    summary = (item.content, str(new_state))
        return replace(
            info,
            state=state or info.state,
            summary=summary[0] if summary else info.summary,
            summary_state=summary[1] if summary else info.summary_state,
            participants=participants,
            last_activity=last_activity or info.last_activity,
            complete=seq <= indexed and not pending,
        )

    def unanswered(self, thread: str, agent: str) -> tuple[list[int], int]:
        """Return (seqs, upto): the messages up to seq upto addressed to agent and not answered.

        "Answered" means agent posted a message whose reply_to is that seq. From the thread
        index, so it costs only the messages new since the last look. upto stops before
        anything still arriving. Raise NoSuchThread.
        """
        check_name(agent, "agent name")
        index = self.current_index(thread, self.files.thread_dir(thread))
        return list(index.unanswered.get(agent, ())), index.seq

    def current_index(self, thread: str, tdir: Path, *, budget_s: float | None = None) -> _Index:
        """Return the thread index brought up to date with the folder (and saved if it moved).

        With budget_s, stop reading new messages after about that long (the index goes on from
        there next time); without, read to the end.
        """
        deadline = None if budget_s is None else time.monotonic() + budget_s
        record = self._record(thread, tdir)
        incarnation = self.incarnation(thread)
        ipath = self.files.root / ".state" / "index" / f"{thread}.json"
        index = self._load_index(thread, ipath)
        if index.incarnation != incarnation or (index.seq and not exists(tdir, index.seq)):
            index = _Index(incarnation=incarnation)  # another thread, or ahead of the folder
        start = index.seq
        if record["created_by"] and record["created_by"] not in index.participants:
            index.participants = (record["created_by"], *index.participants)
        page = None
        for page in self.log.pages(thread, tdir, index.seq, INDEX_PAGE):
            for item in page.messages:
                index.add(item)
            index.seq = page.cursor
            if deadline is not None and time.monotonic() > deadline:
                break
        if page is not None and page.pending is not None:
            self._unsettled.add(thread)  # time alone may change what it says: never cached
        else:
            self._unsettled.discard(thread)
        self._index[thread] = index
        if index.seq > self.log.heads.get(thread, 0):
            self.log.heads[thread] = index.seq
        if index.seq != start and index.seq >= CACHE_FROM:  # a short thread: read it again
            with contextlib.suppress(MailslotError, OSError):
                self.files.dir(".state/index")
                self.files.write_state_file(ipath, index.to_json())
        return index

    def every(
        self, *, state: str | None = None, include_archived: bool = False
    ) -> list[ThreadInfo]:
        """Return the threads, most recently active first, mailslot's own bookkeeping threads
        (BOOKKEEPING) after all the others; archived ones only if asked."""
        if state is not None and state not in STATES:
            raise InvalidState(f"state must be one of {', '.join(STATES)}; not {state!r}")
        out = []
        for thread, key in self._folders():
            cached = self._listed.get(thread)
            if cached is not None and cached[0] == key:
                info = cached[1]
            else:
                try:
                    info = self.info(thread)
                except NotFound:
                    continue  # removed while we listed
                # A folder that has not changed since well before this look holds the same
                # messages (published files never change); one that changed within RACY_S may
                # change again without its mtime moving, and a thread still settling (a file
                # arriving, an index still catching up) changes with time alone.
                settled = info.complete and thread not in self._unsettled
                if settled and time.time() - key[1] / 1e9 > RACY_S:
                    self._listed[thread] = (key, info)
            if state is not None and info.state != state:
                continue
            if state is None and info.state == "archived" and not include_archived:
                continue
            out.append(info)
        out.sort(key=lambda t: (t.id not in BOOKKEEPING, t.last_activity, t.id), reverse=True)
        return out

    def _folders(self) -> list[tuple[str, tuple[int, int]]]:
        """Return (id, (inode, mtime_ns)) of each thread folder: one listing, one lstat each."""
        path = self.files.root / "threads"
        self.files.check_not_symlink(path)
        try:
            entries = list(os.scandir(path))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise RootError(path, f"cannot list {path}: {e.strerror}") from None
        out = []
        for entry in entries:
            try:
                check_name(entry.name)
            except InvalidName:
                continue  # a stray file or folder; doctor reports it
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                out.append((entry.name, (st.st_ino, st.st_mtime_ns)))
        return out
