"""The agent-facing operations: one typed method per MCP tool, returning JSON-able dicts.

A ``Session`` is one agent's view of a mailbox. ``mailslot serve`` registers its public
methods as MCP tools (each docstring is the tool's description, so they stay short); tests and
scripts call them directly. Errors are the library's ``MailslotError`` subclasses; the server
turns them into text for the model in one place.
"""

from __future__ import annotations

import contextvars
import os
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from pydantic import Field

from mailslot.agent.inbox import Delivery
from mailslot.agent.offers import claim_task
from mailslot.agent.reading import Reading
from mailslot.agent.receipts import Receipts, Sent
from mailslot.agent.seat import Pace, Seat, client_slug
from mailslot.mailbox import Mailbox
from mailslot.store.errors import (
    InvalidMessage,
    MailslotError,
)
from mailslot.store.format import Message
from mailslot.store.presence import DEFAULT_STALE_AFTER
from mailslot.views import model as v
from mailslot.views.parameters import (
    AfterSeq,
    Agent,
    AgentName,
    Content,
    Description,
    Key,
    LeaseS,
    Limit,
    ListThread,
    Mine,
    MsgType,
    NextTask,
    Paths,
    Priority,
    ReplyTo,
    Since,
    State,
    Summary,
    TaskSeq,
    TaskStatus,
    ThreadId,
    To,
    Topic,
    UntilRead,
    WaitAfter,
    WaitThread,
    WaitTimeout,
)

TOOL_NAMES = (
    "thread_create", "thread_list", "thread_get", "thread_set_state",
    "msg_post", "msg_list", "msg_wait", "msg_search",
    "task_claim", "task_list", "files_reserve", "files_release",
    "agent_register", "agent_list", "bus_get_config",
)  # fmt: skip

DEFAULT_WAIT_S = 50.0
DEFAULT_WAIT_MAX_S = 600.0
PROGRESS_EVERY_S = 5.0
PAGE_DEFAULT = 50

#: Set by the server for the duration of one tool call: sends a progress notification.
PROGRESS: contextvars.ContextVar[Callable[[float, str], Awaitable[None]] | None] = (
    contextvars.ContextVar("mailslot_progress", default=None)
)


def _check_waits(wait_default: float, wait_max: float) -> None:
    if not 0 < wait_default <= wait_max:
        raise InvalidMessage(
            f"the default wait ({wait_default:g} s) must be above 0 and at most the maximum "
            f"wait ({wait_max:g} s): give `mailslot serve` a --wait-default within --wait-max"
        )


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
        (0: at once); reading.on_due is then called, and the owner calls flush_positions()
        within save_every.
        """
        _check_waits(wait_default, wait_max)
        self.box = box
        self.client = client
        self.lang = lang
        self.wait_default = wait_default
        self.wait_max = wait_max
        self.stale_after = stale_after
        self.progress_every = progress_every
        self._reading = Reading(box, save_every=save_every)
        self._delivery = Delivery(box, self._reading, stale_after=stale_after)
        self._sent = Sent(box)  # this session's messages to someone, and their receipts
        self._seat = Seat(box, client=client, stale_after=stale_after, on_rename=self._renamed)
        self._activity = self._seat.activity
        self._joined: set[str] = set()  # threads this session has joined (see _join)
        #: The pinned name this session could not take because another live session held it.
        self.fallback_from: str | None = None
        if agent is not None:
            if strict_name:
                self._seat.take(agent)
            elif self._seat.take_free(agent) != agent:
                self.fallback_from = agent

    # ------------------------------------------------------------------ identity

    @property
    def agent(self) -> str | None:
        """Return this session's agent name, or None until one is needed."""
        return self._seat.name

    @property
    def last_active(self) -> float:
        """Return when a tool was last called (epoch seconds)."""
        return self._seat.last_active

    def me(self) -> str:
        """Return the agent name, taking one made from the client's name if there is none yet."""
        return self._seat.name or self._seat.take_free(client_slug(self.client))

    def _renamed(self) -> None:
        """What was read so far belongs to the old name; the new one has joined nothing yet."""
        self.save_positions()
        self._reading.forget()
        self._joined.clear()
        self._delivery.forget()  # what it may take differs too

    def _tid(self, thread: str) -> str:
        return self.box.resolve(thread)

    def heartbeat(self) -> None:
        """Refresh this agent's presence (call every stale_after/3 seconds)."""
        self._seat.heartbeat()
        self.save_positions()

    def touch(self) -> None:
        """Note a tool call: a sign of work, written to the presence file when a short lease
        or TTL this process holds needs it there sooner than the heartbeat (see leases)."""
        self._seat.touch()

    def _show_status(self) -> None:
        """Bring the presence file's status up to date if it says otherwise."""
        if self._seat.show_status():
            self.save_positions()

    @property
    def reading(self) -> Reading:
        """Return what this agent was shown of each thread, as this session knows it now."""
        return self._reading

    def waiting_for(self, m: Message) -> bool:
        """Return True if this agent is blocked in a wait that will return m."""
        return self._seat.waiting_for(m)

    def close(self) -> None:
        """Save read positions, give back this session's tasks and file reservations, mark
        this agent offline and let its name go."""
        if self.agent is not None:
            self.save_positions()
            self._seat.leave()

    # ------------------------------------------------------------------ threads

    def thread_create(self, topic: Topic) -> dict[str, Any]:
        """Join the thread for a topic, creating it if needed; returns its id and head seq."""
        me = self.me()
        info = self.box.create_thread(topic, creator=me)
        self._join(info.id)
        open_tasks = sum(t.open_to(me) for t in self.box.tasks.board(info.id).tasks.values())
        return v.created_view(info, open_tasks)

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
        return v.threads_view(
            self.box.threads(state=state, include_archived=include_archived), limit
        )

    def thread_get(self, thread: ThreadId) -> dict[str, Any]:
        """Get one thread: topic, state, head, participants, summary, your messages' receipts."""
        info = self.box.thread(self._tid(thread))
        return v.thread_view(info) | self._sent.recent(info.id, self.agent)

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
        next_task: NextTask = False,
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
        self._sent.add(msg)
        # Posting moves no read position: a message another agent posted just before this
        # one has not been shown yet. Waits never return an agent's own messages instead.
        retried = msg.seq if idempotency_key else 0  # gets the task the first call took
        nxt = self._claim(thread, None, None, retried) if next_task else None  # 1 call a task
        return v.posted_view(msg, to or [], reply_to, nxt, self.box, self.stale_after)

    def save_positions(self, *, now: bool = True) -> None:
        """Write read positions changed since the last save (see Reading.save)."""
        if self.agent is not None:
            self._reading.save(self.agent, now=now)

    def flush_positions(self) -> None:
        """Write the positions whose write save_positions(now=False) left for later."""
        if self.agent is not None:
            self._reading.flush(self.agent)

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
            return v.past_head_view(thread, after_seq, head)
        page = self.box.read(thread, after_seq, limit)
        out = v.page_view(thread, page, self._sent.mine(self.me()))
        self._reading.position(thread, self.me()).shown(after_seq, out["next_after_seq"])
        self._reading.receipts(self.me(), page.messages[: len(out["messages"])])
        self.save_positions(now=False)
        return out

    async def msg_wait(
        self,
        thread: WaitThread = None,
        after_seq: WaitAfter = None,
        timeout_s: WaitTimeout = None,
        until_read: UntilRead = None,
    ) -> dict[str, Any]:
        """Block until new messages arrive, then return them; on status 'timeout', call again."""
        me = self.me()
        timeout = self.wait_default if timeout_s is None else min(timeout_s, self.wait_max)
        thread = self._tid(thread) if thread is not None else None
        if thread is None and (after_seq is not None or until_read is not None):
            name = "after_seq" if after_seq is not None else "until_read"
            raise InvalidMessage(f"{name} needs a thread; omit both to wait on your inbox")
        begun = time.monotonic()
        try:
            with self._seat.waiting(thread or "inbox"):
                if thread is not None and until_read is not None:
                    m = self.box.get(thread, until_read)
                    got = await Receipts(self.box).until(m, "shown", timeout, self._pace())
                    return v.read_view(m, got, time.monotonic() - begun)
                if thread is not None:
                    out = await self._wait_thread(me, thread, after_seq, timeout)
                else:
                    out = await self._wait_inbox(me, timeout)
        finally:
            self._show_status()
        out["waited_s"] = round(time.monotonic() - begun, 1)
        if timeout_s is not None and timeout_s > self.wait_max:  # said, never silently cut
            cap = f"timeout_s capped at {self.wait_max:g} (this server's maximum wait)"
            out["note"] = f"{out['note']}; {cap}" if "note" in out else cap
        return v.waited_view(out, thread, self._sent.texts(thread))

    async def _wait_thread(
        self, me: str, thread: str, after_seq: int | None, timeout: float
    ) -> dict[str, Any]:
        got, past = await self._delivery.thread(me, thread, after_seq, timeout, self._pace())
        views, _ = v.fit(got.messages)
        nxt = got.mark(len(views))
        self.save_positions(now=False)
        return v.thread_waited_view(views, nxt, past, got.arrivals)

    async def _wait_inbox(self, me: str, timeout: float) -> dict[str, Any]:
        got = await self._delivery.inbox(me, timeout, self._pace())
        views, cut = v.fit(got.messages, lambda m: v.inbox_view(self._delivery.offer(me, m), m))
        got.mark(len(views))
        self.save_positions(now=False)
        out: dict[str, Any] = {"status": "messages" if views else "timeout", "messages": views}
        if cut is not None or self._reading.owes or got.more:
            out["has_more"] = True  # more is there now (tasks for anyone come one at a time)
        v.trouble(out, got.arrivals.skipped, got.arrivals.pending)
        return out

    def _pace(self) -> Pace:
        return Pace(self._seat, self.progress_every, PROGRESS.get(), self._show_status)

    # ------------------------------------------------------------------ tasks

    def task_claim(
        self,
        thread: ThreadId,
        seq: TaskSeq = None,
        lease_s: LeaseS = None,
        release: Annotated[bool, Field(description="True gives back a task you hold")] = False,
    ) -> dict[str, Any]:
        """Take a task so you alone do it, or see who holds it; your result reply closes it."""
        thread, me = self._tid(thread), self.me()
        if release:
            if seq is None:
                raise InvalidMessage("release needs the seq of the task you give back")
            event = self.box.tasks.release(thread, seq, agent=me)
            self._activity.drop(("task", thread, seq))
            return {"released": True, "thread": thread, "seq": seq, "event_seq": event.seq}
        self._join(thread)
        return self._claim(thread, seq, lease_s)

    def _claim(
        self, thread: str, seq: int | None, lease_s: float | None, after: int = 0
    ) -> dict[str, Any]:
        """Claim task seq of thread (None: the next one open to this agent) and say how it went."""
        got = claim_task(self.box, thread, self.me(), seq, lease_s, self.stale_after, after)
        if got is None:
            return v.no_task_view(thread)
        if got.won:
            self._activity.hold(("task", thread, got.task.seq), self.box.tasks.lease_of(got.task))
        return v.claim_view(got, self.box.get(thread, got.task.seq) if seq is None else None)

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
        board = self.box.tasks.overview(threads, status, mine=me if mine else None)
        return v.board_view(self.box, board, limit)

    # ------------------------------------------------------------------ file reservations

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
        for h in grant.held:
            self._activity.hold(("files", h.pattern, 0), h.ttl_s)
        return v.grant_view(self.box, grant)

    def files_release(
        self,
        paths: Annotated[list[str] | None, Field(description="Omit to release all yours")] = None,
    ) -> dict[str, Any]:
        """Give back your reservations of paths (all of yours when omitted)."""
        released, not_held = self.box.reservations.release(paths, agent=self.me())
        for h in released:
            self._activity.drop(("files", h.pattern, 0))
        return v.released_view(released, not_held)

    # ------------------------------------------------------------------ search

    def msg_search(
        self,
        query: Annotated[str, Field(description='Words, "a phrase", prefix*, OR, NOT')],
        thread: ListThread = None,
        sender: Agent = None,
        type: MsgType | None = None,
        to: Agent = None,
        since: Since = None,
        limit: Annotated[int, Field(ge=1, le=100)] = 20,
    ) -> dict[str, Any]:
        """Search all threads' messages, best matches first, with their content."""
        found = self.box.search(
            query, thread=self._tid(thread) if thread is not None else None, sender=sender,
            type=type, to=to, since=since, limit=limit,
        )  # fmt: skip
        return v.results_view(found)

    # ------------------------------------------------------------------ agents and config

    def agent_register(
        self,
        name: AgentName = None,
        model: Annotated[str | None, Field(description="e.g. claude-sonnet-4")] = None,
        description: Description = None,
        dnd: Annotated[bool | None, Field(description="Do not disturb: hold hooks, pushes")] = None,
    ) -> dict[str, Any]:
        """Choose your agent name and describe yourself to the other agents."""
        if name is not None and name != self.agent:
            self._seat.take(name)
        me = self.me()
        card = self.box.agents.register(
            me, client=self.client, model=model, description=description
        )
        return v.registered_view(self.box, me, card, dnd)

    def agent_list(self) -> dict[str, Any]:
        """List agents: status (online, waiting, idle, offline), since, and what they wait on."""
        cards = self.box.agents.cards()
        seen = self.box.agents.presences(stale_after=self.stale_after)
        return {"agents": v.agents_view(cards, seen, self.agent, self.box)}

    def bus_get_config(self) -> dict[str, Any]:
        """Get this bus's settings: your name, language, limits, and how to collaborate."""
        me = self.me()  # the name this session posts under, taken now if need be
        return v.config_view(self.box, me, self.fallback_from, self.lang, self.wait_default,
                           self.wait_max)  # fmt: skip
