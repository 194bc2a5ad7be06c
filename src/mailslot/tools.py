"""The agent-facing operations: one typed method per MCP tool, returning JSON-able dicts.

A ``Session`` is one agent's view of a mailbox. ``mailslot serve`` registers its public
methods as MCP tools (each docstring is the tool's description, so they stay short); tests and
scripts call them directly. Errors are the library's ``MailslotError`` subclasses; the server
turns them into text for the model in one place.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field

from mailslot import __version__

# Re-exported: tools is the public home of the agent-facing operations, and the front doors
# (cli's `export`, stdio_server's transcript resource and prompt) import the transcripts here.
from mailslot.console.transcript import transcript_html as transcript_html
from mailslot.console.transcript import transcript_markdown as transcript_markdown
from mailslot.coordination.board import CLAIMED, STATUSES, Question, Task, iso, offer_of
from mailslot.coordination.leases import Activity
from mailslot.coordination.reading import Reading
from mailslot.coordination.reservations import Held, held_view
from mailslot.mailbox import Arrivals, Mailbox
from mailslot.store.errors import (
    InvalidMessage,
    InvalidName,
    MailslotError,
    NameTaken,
    NoSuchAgent,
    NotFound,
)
from mailslot.store.files import HOST
from mailslot.store.format import Damage, Message, Pending, ThreadInfo
from mailslot.store.names import check_name, slugify
from mailslot.store.presence import DEFAULT_STALE_AFTER, NameHold

TOOL_NAMES = (
    "thread_create", "thread_list", "thread_get", "thread_set_state",
    "msg_post", "msg_list", "msg_wait", "msg_search",
    "task_claim", "task_list", "files_reserve", "files_release",
    "agent_register", "agent_list", "bus_get_config",
)  # fmt: skip
SETTLE_EVERY_S = 0.5  # an inbox wait looks at the holders of tasks it could take this often
# A wait still blocked after this long says so in the agent's presence file; one that returns
# sooner writes nothing there (two file writes saved per message in a busy conversation).
MARK_WAITING_S = 0.5

DEFAULT_WAIT_S = 50.0
DEFAULT_WAIT_MAX_S = 600.0
PROGRESS_EVERY_S = 5.0
PAGE_DEFAULT = 50
PAGE_MAX = 200
PAGE_BUDGET_BYTES = 200_000  # content returned by one msg_list/msg_wait call, at most

#: Set by the server for the duration of one tool call: sends a progress notification.
PROGRESS: contextvars.ContextVar[Callable[[float, str], Awaitable[None]] | None] = (
    contextvars.ContextVar("mailslot_progress", default=None)
)

State = Literal["discuss", "implement", "review", "done", "closed", "archived"]
MsgType = Literal["message", "task", "result", "status", "error", "question"]
Priority = Literal["low", "normal", "high", "urgent"]
# Parameter types with the descriptions the model reads in each tool's input schema.
Topic = Annotated[str, Field(description="What the thread is about; same topic, same thread")]
Limit = Annotated[int, Field(ge=1, le=200)]
Summary = Annotated[str | None, Field(description="Markdown; typically when closing")]
Content = Annotated[str, Field(description="The message, usually Markdown")]
To = Annotated[list[str] | None, Field(description="Agents addressed (see agent_list)")]
ReplyTo = Annotated[
    int | None, Field(ge=1, description="Seq of the message answered; a result/error: the task's")
]
Key = Annotated[str | None, Field(description="A retry with the same key is stored once")]
AfterSeq = Annotated[int, Field(ge=0, description="Seq to read past; 0: from the start")]
WaitThread = Annotated[
    str | None, Field(description="Thread id or topic; omit to wait on your inbox (any thread)")
]
ThreadId = Annotated[str, Field(description="Thread id (or its topic)")]
WaitAfter = Annotated[
    int | None, Field(ge=0, description="Seq to wait past: next_after_seq of the last call")
]
WaitTimeout = Annotated[
    float | None,
    Field(gt=0, description="Seconds; default 50, capped at 600; many clients cut calls at 60"),
]
AgentName = Annotated[str | None, Field(description="Stable lowercase name; omit to keep yours")]
Description = Annotated[str | None, Field(description="What you do, for the other agents")]
TaskSeq = Annotated[int, Field(ge=1, description="Seq of the task message")]
LeaseS = Annotated[
    float | None,
    Field(ge=1, le=86400, description="Seconds without a sign of work before it is handed out"),
]
TaskStatus = Annotated[
    Literal["open", "claimed", "done", "dead", "all"] | None,
    Field(description="Default: all but done"),
]
Mine = Annotated[bool, Field(description="Only tasks you hold or can take")]
Agent = Annotated[str | None, Field(description="An agent's name")]
Paths = Annotated[
    list[str],
    Field(min_length=1, max_length=100, description="Repository-relative files, folders or globs"),
]
ListThread = Annotated[str | None, Field(description="Thread id or topic; omit for all threads")]

PROTOCOL = (
    "Join or start a thread with thread_create(topic) (the same topic is the same thread), "
    "catch up with msg_list, introduce yourself with msg_post, then loop on "
    "msg_wait(thread, after_seq=next_after_seq): it returns new messages, or status 'timeout' "
    "after about 50 s, and then you simply call it again. Delegate work with msg_post(type="
    "'task', to=[agent]); answer with type='result' and reply_to=<seq>. Move the thread along "
    "discuss -> implement -> review -> done -> closed with thread_set_state; close it with a "
    "summary. A task without `to` is for every agent (each inbox msg_wait() brings it): take it "
    "with task_claim before working on it; your result reply closes it."
)


def client_slug(client: str | None) -> str:
    """Return a readable agent name made from a client's name ('Claude Code' -> 'claude-code')."""
    slug = re.sub(r"[^a-z0-9]+", "-", (client or "").lower()).strip("-")
    slug = re.sub(r"-(mcp-client|client|mcp)$", "", slug)
    return slug[:40].strip("-") or "agent"


def _report_trouble(out: dict[str, Any], skipped: list[Damage], pending: list[Pending]) -> None:
    """Tell the model what a read stepped over, and what it stopped before."""
    if skipped:
        out["unreadable"] = [str(d) for d in skipped]
    if pending:
        out["pending"] = [
            {"thread": p.thread, "seq": p.seq, "why": p.reason}
            | ({"do": "ask a person to run `mailslot doctor --fix`"} if p.blocked else {})
            for p in pending
        ]


def message_view(m: Message) -> dict[str, Any]:
    """Return a message as the model sees it: no empty fields, no internal id."""
    out: dict[str, Any] = {"thread": m.thread, "seq": m.seq, "from": m.sender}
    if m.to:
        out["to"] = m.to
    out["type"] = m.type
    if m.priority != "normal":
        out["priority"] = m.priority
    if m.reply_to is not None:
        out["reply_to"] = m.reply_to
    out["created_at"] = m.created_at
    out["content"] = m.content
    if m.meta:
        out["meta"] = m.meta
    return out


def task_view(box: Mailbox, t: Task) -> dict[str, Any]:
    """Return a task as the model sees it: status, holder and lease, attempts."""
    out: dict[str, Any] = {"thread": t.thread, "seq": t.seq, "from": t.sender}
    if t.to:
        out["to"] = list(t.to)
    out["title"] = t.title
    out["status"] = t.status
    if t.status == CLAIMED:
        out["holder"] = t.holder
        until = box.tasks.until(t)
        if until is not None:
            out["until"] = iso(until)
    if t.attempts:
        out["attempts"] = t.attempts
    if t.failures:
        out["failed"] = t.failures
    if t.closed_by is not None:
        out["result"] = t.closed_by
    if t.priority != "normal":
        out["priority"] = t.priority
    out["created_at"] = t.created_at
    return out


@dataclass(frozen=True, slots=True)
class TaskBoard:
    """The tasks of some threads with a status, oldest first, their counts, open questions."""

    tasks: list[Task]
    counts: dict[str, int]
    questions: list[Question]


def thread_id(box: Mailbox, thread: str) -> str:
    """Return the thread id meant by thread: an id, or a topic (resolved as thread_create
    resolves it, without creating). Raise InvalidName if it is neither a valid id nor the
    topic of a thread; a valid id of no thread is returned as is (its reader says so).
    """
    threads = box.root / "threads"
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


def task_board(
    box: Mailbox, threads: list[str], status: str | None = None, *, mine: str | None = None
) -> TaskBoard:
    """Return the tasks of threads with status (None: all but done; "all": all), oldest first,
    the count of each status, and the questions nobody has answered; skip vanished threads.

    mine: only the tasks that agent holds or can take now and the questions others asked it
    or anyone (counted so too).
    """
    tasks: list[Task] = []
    questions: list[Question] = []
    for name in threads:
        try:
            board = box.tasks.board(name)
        except MailslotError:
            continue  # removed while listing
        tasks += board.tasks.values()
        questions += board.questions.values()
    if mine is not None:
        tasks = [t for t in tasks if (t.status == CLAIMED and t.holder == mine) or t.open_to(mine)]
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
    return TaskBoard(shown, counts, questions)


def question_view(q: Question) -> dict[str, Any]:
    """Return an unanswered question as the model and scripts see it."""
    return (
        {"thread": q.thread, "seq": q.seq, "from": q.sender}
        | ({"to": list(q.to)} if q.to else {})
        | {"title": q.title, "created_at": q.created_at}
    )


def thread_view(t: ThreadInfo) -> dict[str, Any]:
    """Return a thread as the model sees it."""
    out = {
        "thread": t.id,
        "topic": t.topic,
        "state": t.state,
        "head": t.head,
        "participants": t.participants,
        "last_activity": t.last_activity,
    }
    if t.summary:
        out["summary"] = t.summary
        if t.summary_state != t.state:
            out["summary_from"] = t.summary_state  # given when the thread was in that state
    if not t.complete:
        out["complete"] = False  # still being indexed: state and participants may lag
    return out


class Session:
    """One agent's tools over a mailbox; the agent's name is taken on first need."""

    def __init__(
        self,
        box: Mailbox,
        *,
        agent: str | None = None,
        client: str | None = None,
        lang: str | None = None,
        wait_default: float = DEFAULT_WAIT_S,
        wait_max: float = DEFAULT_WAIT_MAX_S,
        stale_after: float = DEFAULT_STALE_AFTER,
        progress_every: float = PROGRESS_EVERY_S,
        strict_name: bool = False,
        save_every: float = 0.0,
    ) -> None:
        """Open a session; with agent, take that name now.

        If a live process holds agent, take the first free variant (agent-2, agent-3, ...)
        and remember it in fallback_from, unless strict_name, which raises NameTaken instead:
        two sessions of one client in one project share one pinned name.

        save_every: read positions moved by reads and waits are written at most this often
        (0: at once); on_positions_due is then called, and the owner calls flush_positions()
        within save_every.
        """
        if not 0 < wait_default <= wait_max:
            raise InvalidMessage(
                f"the default wait ({wait_default:g} s) must be above 0 and at most the maximum "
                f"wait ({wait_max:g} s): give `mailslot serve` a --wait-default within --wait-max"
            )
        self.box = box
        self.client = client
        self.lang = lang
        self.wait_default = wait_default
        self.wait_max = wait_max
        self.stale_after = stale_after
        self.progress_every = progress_every
        self.last_active = time.time()  # when a tool was last called (see touch)
        self._activity = Activity()  # this process's holds: when touch() writes presence
        # What _settle knows of each thread's board: the head it was read at, and whether others
        # held tasks this agent could take there. A board changes only with a message of its
        # thread, so a quiet thread without such a task is not read again.
        self._boards: dict[str, tuple[int, bool]] = {}
        self._reading = Reading(box)
        self._joined: set[str] = set()  # threads this session has joined (see _join)
        self._hold: NameHold | None = None
        self._waits = 0
        self._waiting_on: str | None = None
        self._status_written = "online"  # the status the presence file has from this session
        self.save_every = save_every
        self._saved_at = -save_every  # monotonic time of the last write of positions
        self._due = False  # moved positions wait for their write (see save_every)
        self.on_positions_due: Callable[[], None] = lambda: None
        #: The pinned name this session could not take because another live session held it.
        self.fallback_from: str | None = None
        if agent is not None:
            if strict_name:
                self._take(agent)
            elif self._take_free(agent) != agent:
                self.fallback_from = agent

    # ------------------------------------------------------------------ identity

    @property
    def agent(self) -> str | None:
        """Return this session's agent name, or None until one is needed."""
        return self._hold.name if self._hold is not None else None

    def _take(self, name: str) -> None:
        taken = time.time()
        hold = self.box.agents.hold_name(name, client=self.client, stale_after=self.stale_after)
        self._activity.written = taken  # its presence says active since (at least) then
        if self._hold is not None:  # a rename: what was read so far belongs to the old name
            self.save_positions()
            self._reading.forget()
            self._joined.clear()  # the new name has joined nothing yet
            self._boards.clear()  # what it may take differs too
            self._activity.holds.clear()  # and holds nothing
            self.box.agents.release_name(self._hold)
        self._hold = hold
        try:
            card = self.box.agents.card(name)
        except NoSuchAgent:
            card = None
        except MailslotError:
            card = None
        if card is None or (self.client and card.client != self.client):
            self.box.agents.register(name, client=self.client)

    def me(self) -> str:
        """Return the agent name, taking one made from the client's name if there is none yet."""
        if self._hold is not None:
            return self._hold.name
        return self._take_free(client_slug(self.client))

    def _take_free(self, base: str) -> str:
        """Take base, or its first free numbered variant; return the name taken."""
        for n in range(1, 100):
            name = base if n == 1 else f"{base[:60]}-{n}"
            try:
                self._take(name)
            except NameTaken:
                continue
            return name
        raise NameTaken(base, "and 98 numbered variants")

    def _tid(self, thread: str) -> str:
        return thread_id(self.box, thread)

    def heartbeat(self) -> None:
        """Refresh this agent's presence (call every stale_after/3 seconds)."""
        if self._hold is not None:
            self._write_presence()
            self.save_positions()
            self._forget_lost_holds()

    def touch(self) -> None:
        """Note a tool call: a sign of work, written to the presence file when a short lease
        or TTL this process holds needs it there sooner than the heartbeat (see _leases)."""
        self.last_active = time.time()
        if self._hold is not None and self._activity.due(self.last_active):
            self._write_presence()

    def _write_presence(self) -> None:
        assert self._hold is not None
        status = "waiting" if self._waits else "online"
        active = self.last_active
        self.box.agents.set_presence(
            self._hold.name, status, waiting_on=self._waiting_on, last_active=active
        )
        self._status_written = status
        self._activity.written = active

    def _forget_lost_holds(self) -> None:
        """Forget the remembered holds this process no longer has (closed, lost, expired)."""
        me, pid = self._hold.name if self._hold else None, os.getpid()
        files: list[Held] | None = None
        for key in list(self._activity.holds):
            try:
                if key[0] == "task":
                    t = self.box.tasks.board(key[1]).tasks.get(key[2])
                    ours = t is not None and t.held_by(me, pid)
                else:
                    if files is None:
                        files = self.box.reservations.live(stale_after=self.stale_after)
                    ours = any(
                        (h.pattern, h.holder, h.pid, h.host) == (key[1], me, pid, HOST)
                        for h in files
                    )
            except NotFound:
                ours = False  # its thread is gone
            except MailslotError:
                continue  # unreadable now: keep it (a write too many costs less than a loss)
            if not ours:
                self._activity.drop(key)

    def _show_status(self) -> None:
        """Bring the presence file's status up to date if it says otherwise."""
        if self._status_written != ("waiting" if self._waits else "online"):
            self.heartbeat()

    @property
    def reading(self) -> Reading:
        """Return what this agent was shown of each thread, as this session knows it now."""
        return self._reading

    def waiting_for(self, m: Message) -> bool:
        """Return True if this agent is blocked in a wait that will return m."""
        on = self._waiting_on
        return bool(self._waits) and (on == "inbox" or on == m.thread)

    def close(self) -> None:
        """Save read positions, give back this session's tasks and file reservations, mark
        this agent offline and let its name go."""
        if self._hold is not None:
            self.save_positions()
            self._give_back_tasks()
            with contextlib.suppress(MailslotError):
                mine = [h for h in self.box.reservations.live() if h.holder == self._hold.name]
                if any(h.pid == os.getpid() for h in mine):
                    self.box.reservations.release([h.pattern for h in mine if h.pid == os.getpid()],
                                     agent=self._hold.name)  # fmt: skip
            self.box.agents.release_name(self._hold)
            self._hold = None

    def _give_back_tasks(self) -> None:
        """Release the tasks this process holds: a clean exit (an IDE restart) fails no
        attempt, as task_claim(release=true) would not; a crash still does."""
        assert self._hold is not None
        me = self._hold.name
        for key in [k for k in self._activity.holds if k[0] == "task"]:
            thread, seq = str(key[1]), int(key[2])
            with contextlib.suppress(MailslotError):
                t = self.box.tasks.board(thread).tasks.get(seq)
                if t is not None and t.held_by(me, os.getpid()):
                    self.box.tasks.release(thread, seq, agent=me, reason="its server stopped")
            self._activity.drop(key)

    # ------------------------------------------------------------------ threads

    def thread_create(
        self,
        topic: Topic,
    ) -> dict[str, Any]:
        """Join the thread for a topic, creating it if needed; returns its id and head seq."""
        me = self.me()
        info = self.box.create_thread(topic, creator=me)
        self._join(info.id)
        out = thread_view(info)
        out["hint"] = (
            f"read history with msg_list(thread='{info.id}', after_seq=0), then "
            f"msg_wait(thread='{info.id}', after_seq={info.head})"
        )
        open_tasks = sum(t.open_to(me) for t in self.box.tasks.board(info.id).tasks.values())
        if open_tasks:
            out["open_tasks"] = open_tasks
            out["hint"] += f"; {open_tasks} open tasks: msg_wait() hands them to you"
        return out

    def _join(self, thread: str) -> None:
        """Take part in thread: its tasks for anyone come to this agent's inbox."""
        if thread in self._joined:
            return  # once per session and thread: posting pays no position look-up
        try:
            if self._reading.join(thread, self.me()):
                self.save_positions(now=False)
            self._joined.add(thread)
        except MailslotError:
            pass  # gone meanwhile: the caller's own call reports it

    def thread_list(
        self,
        state: Annotated[State | None, Field(description="Only threads in this state")] = None,
        include_archived: Annotated[bool, Field(description="Archived ones too")] = False,
        limit: Limit = PAGE_DEFAULT,
    ) -> dict[str, Any]:
        """List threads, newest activity first (mailslot's file-reservations last), with heads."""
        infos = self.box.threads(state=state, include_archived=include_archived)
        out: dict[str, Any] = {
            "threads": [thread_view(t) for t in infos[:limit]],
            "total": len(infos),
        }
        if len(infos) > limit:
            out["hint"] = f"showing {limit} of {len(infos)}; filter by state or raise limit"
        return out

    def thread_get(self, thread: ThreadId) -> dict[str, Any]:
        """Get one thread: topic, state, head seq, participants, summary."""
        return thread_view(self.box.thread(self._tid(thread)))

    def thread_set_state(
        self,
        thread: ThreadId,
        state: State,
        summary: Summary = None,
    ) -> dict[str, Any]:
        """Move a thread along discuss → implement → review → done → closed, or to archived."""
        thread = self._tid(thread)
        seq = self.box.set_state(thread, state, sender=self.me(), summary=summary)
        return {"thread": thread, "state": state, "seq": seq}

    # ------------------------------------------------------------------ messages

    def msg_post(
        self,
        thread: ThreadId,
        content: Content,
        type: MsgType = "message",
        to: To = None,
        reply_to: ReplyTo = None,
        priority: Priority = "normal",
        meta: Annotated[dict[str, Any] | None, Field(description="JSON kept as is")] = None,
        idempotency_key: Key = None,
    ) -> dict[str, Any]:
        """Post a message to a thread; returns its seq and id."""
        thread = self._tid(thread)
        self._join(thread)
        msg = self.box.publish(
            thread, content, sender=self.me(), to=to or [], type=type, priority=priority,
            reply_to=reply_to, meta=meta, idempotency_key=idempotency_key,
        )  # fmt: skip
        if type in ("result", "error") and reply_to is not None:
            self._activity.drop(("task", thread, reply_to))  # closed, or a failed attempt
        # Posting moves no read position: a message another agent posted just before this
        # one has not been shown yet. Waits never return an agent's own messages instead.
        out: dict[str, Any] = {"thread": thread, "seq": msg.seq, "id": msg.id}
        if told := [a for a in msg.to if a not in (to or [])]:
            out["note"] = (
                f"{', '.join(told)} held task {reply_to}: your result closes it, and {told[0]} "
                "is told (added to `to`)"
            )
        return out

    def save_positions(self, *, now: bool = True) -> None:
        """Write read positions changed since the last save to .state/cursors/ (best effort).

        now=False (after a read or a wait) may leave the write to flush_positions(), within
        save_every: a busy conversation writes them once a second, not once per message.
        """
        if self.agent is None:
            return
        at = time.monotonic()
        if not now and at - self._saved_at < self.save_every:
            if not self._due:
                self._due = True
                self.on_positions_due()
            return
        self._saved_at = at
        self._due = False
        self._reading.save(self.agent)

    def flush_positions(self) -> None:
        """Write the positions whose write save_positions(now=False) left for later."""
        if self._due:
            self.save_positions()

    def _page(
        self,
        messages: list[Message],
        view: Callable[[Message], dict[str, Any]] = message_view,
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Return the views that fit the size budget, and the seq of the last one if cut."""
        views: list[dict[str, Any]] = []
        size = 0
        for m in messages:
            size += len(m.content.encode("utf-8"))
            if views and size > PAGE_BUDGET_BYTES:
                return views, views[-1]["seq"]
            views.append(view(m))
        return views, None

    def msg_list(
        self,
        thread: ThreadId,
        after_seq: AfterSeq = 0,
        limit: Limit = PAGE_DEFAULT,
    ) -> dict[str, Any]:
        """Read a thread's messages with seq > after_seq, oldest first, one page at a time."""
        thread = self._tid(thread)
        head = self.box.head(thread)
        if after_seq > head:
            head = self.box.head(thread, exact=True)  # see past any gap before saying so
        if after_seq > head:
            return {
                "messages": [], "next_after_seq": head, "has_more": False,
                "hint": f"after_seq {after_seq} is past the newest message ({head}); "
                f"wait for new ones with msg_wait(thread='{thread}', after_seq={head})",
            }  # fmt: skip
        page = self.box.read(thread, after_seq, limit)
        views, cut = self._page(page.messages)
        cursor = cut if cut is not None else page.cursor
        more = page.has_more or cut is not None
        out: dict[str, Any] = {"messages": views, "next_after_seq": cursor, "has_more": more}
        if more:
            out["hint"] = f"more: call msg_list(thread='{thread}', after_seq={cursor})"
        _report_trouble(out, page.skipped, [page.pending] if page.pending else [])
        if page.pending is not None and not more:
            out["hint"] = f"call msg_list(thread='{thread}', after_seq={cursor}) again shortly"
        self._reading.position(thread, self.me()).shown(after_seq, cursor)
        self.save_positions(now=False)
        return out

    async def msg_wait(
        self,
        thread: WaitThread = None,
        after_seq: WaitAfter = None,
        timeout_s: WaitTimeout = None,
    ) -> dict[str, Any]:
        """Block until new messages arrive, then return them; on status 'timeout', call again."""
        me = self.me()
        timeout = self.wait_default if timeout_s is None else min(timeout_s, self.wait_max)
        thread = self._tid(thread) if thread is not None else None
        if thread is None and after_seq is not None:
            raise InvalidMessage("after_seq needs a thread; omit both to wait on your inbox")
        begun = time.monotonic()
        self._waits += 1
        self._waiting_on = thread or "inbox"
        try:
            if thread is not None:
                out = await self._wait_thread(me, thread, after_seq, timeout)
            else:
                out = await self._wait_inbox(me, timeout)
        finally:
            self._waits -= 1
            if not self._waits:
                self._waiting_on = None
            self._show_status()
        again = (
            f"msg_wait(thread='{thread}', after_seq={out['next_after_seq']})"
            if thread is not None
            else "msg_wait() again"
        )
        out["waited_s"] = round(time.monotonic() - begun, 1)
        if timeout_s is not None and timeout_s > self.wait_max:  # said, never silently cut
            cap = f"timeout_s capped at {self.wait_max:g} (this server's maximum wait)"
            out["note"] = f"{out['note']}; {cap}" if "note" in out else cap
        if not out["messages"]:
            out["hint"] = f"no new message yet; call {again}"
        else:
            out["hint"] = f"reply with msg_post, then {again}"
        return out

    async def _wait_thread(
        self, me: str, thread: str, after_seq: int | None, timeout: float
    ) -> dict[str, Any]:
        # A missing thread fails now, not after the timeout; "from now" is past every gap.
        head = self.box.head(thread, exact=after_seq is None)
        pos = self._reading.position(thread, self.agent)
        if after_seq is not None and after_seq > head:
            head = self.box.head(thread, exact=True)  # see past any gap before saying so
        past = after_seq is not None and after_seq > head
        if past:  # waiting past seqs that do not exist yet would skip them when they come
            after_seq = head
        start = after_seq if after_seq is not None else (pos.read if pos.read is not None else head)
        inbox = pos.inbox_seen

        # Skipped: the agent's own messages, and (when continuing from its own position)
        # messages to it that its inbox already returned.
        def keep(m: Message) -> bool:
            seen = after_seq is None and me in m.to and m.seq <= inbox
            return m.sender != me and not seen

        got, messages = await self._waiting([thread], {thread: start}, None, timeout, keep)
        views, cut = self._page(messages)
        nxt = cut if cut is not None else got.cursor[thread]
        pos.shown(start, nxt)
        self.save_positions(now=False)
        out: dict[str, Any] = {"status": "messages" if views else "timeout", "messages": views}
        if past:
            out["note"] = f"after_seq was past the newest message ({head}): waited from {head}"
        out["next_after_seq"] = nxt
        _report_trouble(out, got.skipped, got.pending)
        return out

    async def _wait_inbox(self, me: str, timeout: float) -> dict[str, Any]:
        cursor = self._reading.inbox_cursor(me)

        def match(m: Message) -> bool:  # what an inbox wait wakes for
            if me in m.to:
                return True
            if m.to:
                return False
            return offer_of(m, me) is not None  # a task for anyone, in any thread

        def keep(m: Message) -> bool:  # of those, what it returns: tasks only while open,
            # nothing a thread wait returned
            try:
                shown = self._reading.position(m.thread, self.agent).was_shown(m.seq)
            except MailslotError:  # removed meanwhile: the wait reports what it meets
                shown = False
            return m.sender != me and not shown and self._offered(me, m)

        owed = self._reading.owed(me)
        gone = {(m.thread, m.seq) for m in owed if not keep(m)}  # claimed or closed meanwhile
        owed = [m for m in owed if (m.thread, m.seq) not in gone]
        if owed:  # due from before this agent's first look: return them at once, with
            # whatever else is there now (a look, no wait), not a call later
            got, now = await self._waiting(None, cursor, me, 0, keep, match=match)
            due = {(m.thread, m.seq) for m in owed}
            messages = owed + [m for m in now if (m.thread, m.seq) not in due]
        else:
            got, messages = await self._waiting(
                None, cursor, me, timeout, keep, match=match, settle=True
            )
        views, cut = self._page(messages, lambda m: self._inbox_view(me, m))
        shown = {(m.thread, m.seq) for m in messages[: len(views)]} | gone
        self._reading.inbox_shown(messages, shown, got.cursor, self.agent)
        self.save_positions(now=False)
        out: dict[str, Any] = {"status": "messages" if views else "timeout", "messages": views}
        if cut is not None or self._reading.owes:
            out["has_more"] = True
        _report_trouble(out, got.skipped, got.pending)
        return out

    def _offered(self, me: str, m: Message) -> bool:
        """Return False for a task (or the reopening of one) that me cannot take now."""
        seq = offer_of(m, me)
        if seq is None:
            return True
        try:
            task = self.box.tasks.task(m.thread, seq)
        except MailslotError:
            return m.type == "task"  # unreadable now: show the task itself, as any message
        return task.open_to(me)

    def _inbox_view(self, me: str, m: Message) -> dict[str, Any]:
        """Return a message as the inbox shows it: a task (or its reopening) with its status."""
        seq = offer_of(m, me)
        if seq is None:
            return message_view(m)
        try:
            task = self.box.tasks.task(m.thread, seq)
            view = message_view(m if m.type == "task" else self.box.get(m.thread, seq))
        except MailslotError:
            return message_view(m)
        info: dict[str, Any] = {"status": task.status}
        if m.seq != seq:
            info["reopened"] = m.seq
        if task.failures:
            info["failed"] = task.failures
        info["take_it"] = f"task_claim(thread='{m.thread}', seq={seq})"
        view["task"] = info
        return view

    def _settle(self, me: str, heads: dict[str, int]) -> bool:
        """Hand out again the tasks in the threads of heads whose holders died or stalled;
        return True if tasks me could take are held by others (so that their holders are
        watched).

        heads: how far the caller has seen each thread (threads that came during a wait
        included); a board is read again only where that moved or others held tasks
        (O(threads) dict look-ups, not board reads, per call).
        """
        held = []
        for thread, at in sorted(heads.items()):
            known = self._boards.get(thread)
            if known is not None and known == (at, False):
                continue  # nothing new there, and nothing held by others to watch
            try:
                board = self.box.tasks.board(thread)
            except MailslotError:
                self._boards.pop(thread, None)
                continue
            others = any(
                t.status == CLAIMED and t.holder != me and t.may_take(me)
                for t in board.tasks.values()
            )
            self._boards[thread] = (at, others)
            if others:
                held.append(thread)
        if held and self.box.read_only is None:
            self.box.tasks.settle(held, noticed_by=me, stale_after=self.stale_after)
        return bool(held)

    async def _waiting(
        self,
        threads: list[str] | None,
        cursor: dict[str, int],
        to: str | None,
        timeout: float,
        keep: Callable[[Message], bool],
        *,
        match: Callable[[Message], bool] | None = None,
        settle: bool = False,
    ) -> tuple[Arrivals, list[Message]]:
        """Wait until messages that keep() accepts arrive; return the last arrivals and them.

        settle: while others hold tasks this agent could take in the threads of the cursor
        (as it grows), their holders are looked at every SETTLE_EVERY_S, and a dead or stalled
        one's task is reopened (an event that ends this wait with the task).
        """
        report = PROGRESS.get()
        begun = time.monotonic()
        reported = begun
        skipped = []
        while True:
            watch = settle and self._settle(self.me(), cursor)
            left = timeout - (time.monotonic() - begun)
            step = min(left, self.progress_every, SETTLE_EVERY_S if watch else left)
            if (every := self._activity.every()) is not None:
                self.touch()  # blocked in a call is at work: short holds stay held meanwhile
                step = min(step, every)
            if time.monotonic() - begun >= MARK_WAITING_S:
                self._show_status()  # still blocked: say "waiting"
            else:
                step = min(step, MARK_WAITING_S - (time.monotonic() - begun))
            got = await self.box.wait_async(
                threads, cursor, to=to, timeout=max(0.0, step), limit=PAGE_DEFAULT, match=match
            )
            cursor = got.cursor
            skipped += got.skipped
            messages = [m for m in got.messages if keep(m)]
            if messages or left <= step:
                break
            now = time.monotonic()
            if report is not None and now - reported >= self.progress_every - 0.01:
                reported = now
                waited = now - begun
                await report(
                    waited, f"waiting on {threads[0] if threads else 'inbox'}: {waited:.0f}s"
                )
        return Arrivals(got.messages, cursor, got.timed_out, skipped, got.pending), messages

    # ------------------------------------------------------------------ tasks

    def task_claim(
        self,
        thread: ThreadId,
        seq: TaskSeq,
        lease_s: LeaseS = None,
        release: Annotated[bool, Field(description="True gives back a task you hold")] = False,
    ) -> dict[str, Any]:
        """Take a task so you alone do it, or see who holds it; your result reply closes it."""
        thread = self._tid(thread)
        me = self.me()
        if release:
            event = self.box.tasks.release(thread, seq, agent=me)
            self._activity.drop(("task", thread, seq))
            return {"released": True, "thread": thread, "seq": seq, "event_seq": event.seq}
        self._join(thread)
        got = self.box.tasks.claim(
            thread, seq, agent=me, pid=os.getpid(), lease_s=lease_s, stale_after=self.stale_after
        )
        task = got.task
        out: dict[str, Any] = {"claimed": got.won, "thread": thread, "seq": seq}
        until = iso(got.until) if got.until is not None else None
        if got.won:
            lease = task.claim_lease_s or task.lease_s or self.box.settings.task_lease_s
            self._activity.hold(("task", thread, seq), lease)
            out["until"] = until
            out["attempt"] = task.attempts
            if task.failures:
                out["failed_before"] = task.failures
            out["hint"] = (
                f"work on it, then msg_post(thread='{thread}', type='result', reply_to={seq}, "
                "content=...) closes it (type='error' if it failed); task_claim(release=true) "
                "gives it back; any mailslot call before the lease ends keeps it yours"
            )
        else:
            out["holder"] = task.holder
            out["until"] = until
            out["hint"] = (
                f"{task.holder} holds it; it is handed out again (msg_wait brings it) if "
                f"{task.holder}'s process ends or shows no sign of work until {until}; "
                "take another task"
            )
        return out

    def task_list(
        self,
        thread: ListThread = None,
        status: TaskStatus = None,
        mine: Mine = False,
        limit: Limit = PAGE_DEFAULT,
    ) -> dict[str, Any]:
        """List tasks (open, claimed by whom until when, done, dead) and unanswered questions."""
        me = self.me()
        threads = [self._tid(thread)] if thread is not None else list(self.box)
        if thread is not None:
            self.box.thread(threads[0])  # a missing thread fails here, with its readable error
        if self.box.read_only is None:
            self.box.tasks.settle(threads, noticed_by=me, stale_after=self.stale_after)
        board = task_board(self.box, threads, status, mine=me if mine else None)
        shown, questions = board.tasks, board.questions
        out: dict[str, Any] = {
            "tasks": [task_view(self.box, t) for t in shown[:limit]],
            "counts": board.counts,
            "questions": [question_view(q) for q in questions[:limit]],
        }
        if len(shown) > limit or len(questions) > limit:
            out["hint"] = f"showing {limit} of each; filter by thread or status, or raise limit"
        return out

    # ------------------------------------------------------------------ file reservations

    def _held(self, held: list[Held]) -> list[dict[str, Any]]:
        return [held_view(h, self.box.reservations.until(h)) for h in held]

    def files_reserve(
        self,
        paths: Paths,
        exclusive: Annotated[bool, Field(description="False: others may share them")] = True,
        ttl_s: Annotated[
            float | None, Field(ge=1, le=604800, description="Seconds without work before it ends")
        ] = None,
        reason: Annotated[str | None, Field(description="Shown to others")] = None,
    ) -> dict[str, Any]:
        """Reserve paths you will edit (e.g. src/x/**); on overlap, refused with who holds them."""
        me = self.me()
        grant = self.box.reservations.reserve(
            paths, agent=me, exclusive=exclusive, ttl_s=ttl_s, reason=reason,
            pid=os.getpid(), stale_after=self.stale_after,
        )  # fmt: skip
        if not grant.granted:
            holders = sorted({h.holder for h in grant.conflicts})
            return {
                "granted": False,
                "conflicts": self._held(grant.conflicts),
                "hint": f"leave these paths to {', '.join(holders)}, or ask them with "
                f"msg_post(to={holders!r}); reserve the paths you can have on their own",
            }
        for h in grant.held:
            self._activity.hold(("files", h.pattern, 0), h.ttl_s)
        out: dict[str, Any] = {"granted": True, "reserved": self._held(grant.held)}
        if grant.whole_repo:
            out["note"] = "this reserves the whole repository: no other agent may edit anything"
        out["hint"] = (
            "edit them, then files_release(paths); they stay yours while you keep working "
            "(any mailslot call renews them) and end when your session ends"
        )
        return out

    def files_release(
        self,
        paths: Annotated[list[str] | None, Field(description="Omit to release all yours")] = None,
    ) -> dict[str, Any]:
        """Give back your reservations of paths (all of yours when omitted)."""
        released, not_held = self.box.reservations.release(paths, agent=self.me())
        for h in released:
            self._activity.drop(("files", h.pattern, 0))
        out: dict[str, Any] = {"released": sorted({h.pattern for h in released})}
        if not_held:
            out["not_held"] = not_held
            out["hint"] = "you held no reservation of these patterns: nothing to give back"
        elif not released:
            out["hint"] = "you held no reservations: nothing to give back"
        return out

    # ------------------------------------------------------------------ search

    def msg_search(
        self,
        query: Annotated[str, Field(description='Words, "a phrase", prefix*, OR, NOT')],
        thread: ListThread = None,
        sender: Agent = None,
        type: MsgType | None = None,
        to: Agent = None,
        since: Annotated[
            str | None,
            Field(
                description="ISO date or time, e.g. 2026-12-01 or 2026-12-01T09:30+02:00 "
                "(UTC if no offset)"
            ),
        ] = None,
        limit: Annotated[int, Field(ge=1, le=100)] = 20,
    ) -> dict[str, Any]:
        """Search all threads' messages, best matches first, with their content."""
        found = self.box.search(
            query, thread=self._tid(thread) if thread is not None else None, sender=sender,
            type=type, to=to, since=since, limit=limit,
        )  # fmt: skip
        views, cut = self._page([h.message for h in found.hits])
        for view, hit in zip(views, found.hits, strict=False):
            view["snippet"] = hit.snippet
        out: dict[str, Any] = {"hits": views, "total": found.total}
        if cut is not None:
            rest = found.hits[len(views) :]
            out["hint"] = (
                f"{len(rest)} more hits did not fit; read them with msg_list(thread, after_seq="
                "seq-1, limit=1): " + ", ".join(f"{h.message.thread}#{h.message.seq}" for h in rest)
            )
        elif found.total > len(views):
            out["hint"] = f"showing {len(views)} of {found.total}; raise limit or add filters"
        if not views:
            out["hint"] = "no match; try fewer words, a prefix (auth*), or OR between words"
        _report_trouble(out, found.skipped, [])
        return out

    # ------------------------------------------------------------------ agents and config

    def agent_register(
        self,
        name: AgentName = None,
        model: Annotated[str | None, Field(description="e.g. claude-sonnet-4")] = None,
        description: Description = None,
    ) -> dict[str, Any]:
        """Choose your agent name and describe yourself to the other agents."""
        if name is not None and name != self.agent:
            self._take(name)
        me = self.me()
        card = self.box.agents.register(
            me, client=self.client, model=model, description=description
        )
        return {"agent": me, **{k: v for k, v in card.to_dict().items() if k != "name"}}

    def agent_list(self) -> dict[str, Any]:
        """List agents: status (online, waiting, idle, offline), since, and what they wait on."""
        cards = {c.name: c for c in self.box.agents.cards()}
        seen = {p.agent: p for p in self.box.agents.presences(stale_after=self.stale_after)}
        agents = []
        for name in sorted(set(cards) | set(seen)):
            card, p = cards.get(name), seen.get(name)
            entry: dict[str, Any] = {"agent": name, "status": p.status if p else "offline"}
            if p and p.status != "offline" and p.started:
                entry["since"] = p.started
            if p and p.last_seen:
                entry["last_seen"] = p.last_seen
            if p and p.waiting_on:
                entry["waiting_on"] = p.waiting_on
            for key in ("client", "model", "description"):
                value = getattr(card, key) if card else None
                if value:
                    entry[key] = value
            if name == self.agent:
                entry["you"] = True
            agents.append(entry)
        return {"agents": agents}

    def bus_get_config(self) -> dict[str, Any]:
        """Get this bus's settings: your name, language, limits, and how to collaborate."""
        s = self.box.settings
        return {
            "agent": self.me(),  # the name this session posts under, taken now if need be
            **(
                {
                    "note": f"'{self.fallback_from}' was in use by another session, so you are "
                    f"'{self.me()}'"
                }
                if self.fallback_from
                else {}
            ),
            "preferred_language": self.lang,
            "root": str(self.box.root),
            "version": __version__,
            "wait": {
                "default_s": self.wait_default,
                "max_s": self.wait_max,
                "mode": self.box.wait_mode,
                "poll_interval_s": s.poll_interval,
            },
            "limits": {"max_content_bytes": s.max_content_bytes, "page_max": PAGE_MAX},
            "protocol": PROTOCOL,
        }
