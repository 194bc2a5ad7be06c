"""The console: `mailslot ui`, a live page where a person watches the agents and steps in.

A Starlette app (Starlette and uvicorn come with the MCP SDK) serving the page's own assets
(``console/``) and a small JSON API over the mailbox, plus Server-Sent Events fed by the same
waits as ``msg_wait``. It listens on loopback only and trusts nothing: every request needs the
random token (given once in the printed URL, then kept in an HttpOnly, SameSite=Strict
cookie), the ``Host`` header must name the loopback address it listens on (no DNS rebinding),
a request that changes anything must come from the page's own origin, and a Content Security
Policy lets the page run only its own script. Message bodies are rendered by the same safe
Markdown renderer as the HTML export (everything else escaped); the page puts every other
field in with ``textContent``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from mailslot import __version__
from mailslot.agent.reading import Reading
from mailslot.agent.receipts import Receipt, Receipts, Stamps
from mailslot.coordination.reservations import held_view
from mailslot.mailbox import Mailbox
from mailslot.store.errors import MailslotError, NotFound, TaskError
from mailslot.store.format import STATES, Message, ThreadInfo
from mailslot.store.signing import INVALID, UNKNOWN_KEY
from mailslot.store.threads import BOOKKEEPING
from mailslot.store.wait import Arrivals
from mailslot.tools import Session
from mailslot.views.model import question_view, signature_warning, task_view, thread_view
from mailslot.views.transcript import markdown_html

COOKIE = "mailslot_token_{port}"  # by port: a browser sends 127.0.0.1's cookies to every port
PAGE = 50
# Unread counts read the messages after the person's position to leave out their own; past this
# many only the newest are looked at (older ones count as unread: a count, never a loss).
UNREAD_LOOK = 2000
# Marking a thread read records receipts of the messages to the person it passes: at most this
# many before the new position are read for them (older ones are left without one).
RECEIPT_LOOK = 300
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
Handler = Callable[[Request], Awaitable[Response]]


class Console:
    """What the app serves: one mailbox, seen by one person."""

    def __init__(self, box: Mailbox, person: str, port: int, token: str | None = None) -> None:
        self.box = box
        self.person = person
        self.port = port
        self.token = token or secrets.token_urlsafe(24)
        self.cookie = COOKIE.format(port=port)  # two consoles' logins must not replace each other
        self.hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}
        self.origins = {f"http://{h}" for h in self.hosts}
        self.reading = Reading(box)
        self.lock = threading.Lock()  # Reading is not thread-safe; endpoints run in threads
        self.people = Session(box)  # for agent_list: takes no name
        #: thread -> (created_at, looked at up to seq, the person's own seqs after some seq)
        self.own: dict[str, tuple[str, int, set[int]]] = {}
        self.closing = asyncio.Event()  # set when the server stops: event streams end

    # ------------------------------------------------------------------ security

    def guard(self, request: Request) -> Response | None:
        """Return the refusal of a request that is not the page's own, or None."""
        if request.headers.get("host", "") not in self.hosts:
            return PlainTextResponse("mailslot ui answers only on 127.0.0.1 or localhost", 403)
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("origin")
            if origin not in self.origins:
                return PlainTextResponse("cross-origin requests may not change anything", 403)
            # The media type itself, not a mention of it: `text/plain; x=application/json`
            # is a request any page may send without asking first.
            kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                return PlainTextResponse("send JSON", 415)
        if request.url.path == "/" and "token" in request.query_params:
            return None  # exchanged for the cookie below
        given = request.cookies.get(self.cookie, "")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return PlainTextResponse(
                "open the address `mailslot ui` printed (it carries the access token)", 403
            )
        return None

    def wrap(self, handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            refused = self.guard(request)
            if refused is not None:
                if request.url.path.startswith("/api/"):  # the page shows the reason
                    text = bytes(refused.body).decode()
                    return JSONResponse({"error": text}, refused.status_code)
                return refused
            try:
                response = await handler(request)
            except MailslotError as e:
                response = JSONResponse({"error": str(e)}, 404 if isinstance(e, NotFound) else 400)
            except (ValueError, KeyError, TypeError) as e:
                response = JSONResponse({"error": f"bad request: {e}"}, 400)
            response.headers["Content-Security-Policy"] = CSP
            response.headers["X-Content-Type-Options"] = "nosniff"
            response.headers["Referrer-Policy"] = "no-referrer"
            response.headers["Cache-Control"] = "no-store"
            return response

        return guarded

    # ------------------------------------------------------------------ the page

    async def asset(self, request: Request) -> Response:
        if request.url.path == "/" and "token" in request.query_params:
            if not hmac.compare_digest(request.query_params["token"].encode(), self.token.encode()):
                return PlainTextResponse("wrong token: open the address `mailslot ui` printed", 403)
            out = RedirectResponse("/", 303)
            out.set_cookie(self.cookie, self.token, httponly=True, samesite="strict", path="/")
            return out
        name, kind = ASSETS[request.url.path]
        body = resources.files("mailslot").joinpath("console", name).read_bytes()
        return Response(body, media_type=kind)

    # ------------------------------------------------------------------ the API

    async def me(self, request: Request) -> Response:
        return JSONResponse(
            {"person": self.person, "root": str(self.box.root), "version": __version__}
        )

    def _unread(self, info: ThreadInfo) -> int:
        """Return how many messages after the person's read position others wrote."""
        with self.lock:
            pos = self.reading.position(info.id, self.person)
            read = pos.read or 0
            if info.head <= read:
                return 0
            start = max(read, info.head - UNREAD_LOOK)
            born, upto, mine = self.own.get(info.id, ("", 0, set()))
            if born != info.created_at or upto < start:
                upto, mine = start, set()  # a new thread of that name, or looked at too long ago
            while upto < info.head:
                page = self.box.read(info.id, upto, 200)
                mine |= {m.seq for m in page.messages if m.sender == self.person}
                if page.cursor <= upto:
                    break  # a message still arriving: the rest counts as unread for now
                upto = page.cursor
            self.own[info.id] = (info.created_at, upto, {s for s in mine if s > read})
            return info.head - read - sum(1 for s in mine if read < s <= info.head)

    def thread_row(self, info: ThreadInfo) -> dict[str, Any]:
        """Return a thread as the page lists it: mailslot's own bookkeeping marked as such."""
        out = thread_view(info) | {"unread": self._unread(info)}
        if info.id in BOOKKEEPING:
            out["bookkeeping"] = True
        return out

    async def threads(self, request: Request) -> Response:
        state = request.query_params.get("state") or None
        archived = request.query_params.get("archived") in ("1", "true")

        def rows() -> list[dict[str, Any]]:
            infos = self.box.threads(state=state, include_archived=archived)
            return [self.thread_row(t) for t in infos]

        return JSONResponse({"threads": await asyncio.to_thread(rows)})

    def message_view(
        self, m: Message, receipts: Receipts | None = None, now: float | None = None
    ) -> dict[str, Any]:
        """Return a message as the page shows it; with receipts, each recipient's (one
        Receipts per request: it reads each agent's files once)."""
        view = {
            "thread": m.thread, "seq": m.seq, "from": m.sender, "to": m.to, "type": m.type,
            "priority": m.priority, "reply_to": m.reply_to, "created_at": m.created_at,
            "html": markdown_html(m.content), "meta": m.meta, "signed": m.signed,
        }  # fmt: skip
        if m.signed in (INVALID, UNKNOWN_KEY):
            view["warning"] = signature_warning(m)
        if receipts is not None and any(a != m.sender for a in m.to):
            now = time.time() if now is None else now
            view["receipts"] = [receipt_view(r, now) for r in receipts.of(m)]
        return view

    def message_views(self, messages: list[Message]) -> list[dict[str, Any]]:
        """Return messages as the page shows them, with their receipts (reads files: run it
        off the event loop)."""
        receipts, now = Receipts(self.box), time.time()
        return [self.message_view(m, receipts, now) for m in messages]

    async def thread(self, request: Request) -> Response:
        thread = request.path_params["thread"]
        limit = min(int(request.query_params.get("limit", PAGE)), 200)
        info = await asyncio.to_thread(self.box.thread, thread)
        before = request.query_params.get("before")
        end = info.head if before is None else int(before) - 1
        start = max(0, end - limit)
        page = await asyncio.to_thread(self.box.read, thread, start, max(1, end - start))
        messages = [m for m in page.messages if m.seq <= end]
        row = await asyncio.to_thread(self.thread_row, info)
        return JSONResponse(
            {
                "thread": row,
                "messages": await asyncio.to_thread(self.message_views, messages),
                "has_before": start > 0,
            }
        )

    async def read(self, request: Request) -> Response:
        thread = request.path_params["thread"]
        seq = int((await request.json())["seq"])
        await asyncio.to_thread(self.mark_read, thread, seq)
        return JSONResponse({"ok": True})

    def mark_read(self, thread: str, seq: int) -> None:
        """Move the person's read position in thread to seq, with a receipt of each message
        to them it passes (the last RECEIPT_LOOK before seq): the person is a recipient too."""
        with self.lock:
            pos = self.reading.position(thread, self.person)
            read = pos.read if pos.read is not None else 0
            start = max(read, seq - RECEIPT_LOOK)
            if start < seq:
                page = self.box.read(thread, start, seq - start)
                self.reading.receipts(self.person, [m for m in page.messages if m.seq <= seq])
            pos.shown(read, seq)
            self.reading.save(self.person)

    async def post(self, request: Request) -> Response:
        thread = request.path_params["thread"]
        doc = await request.json()
        message = await asyncio.to_thread(
            lambda: self.box.publish(
                thread,
                str(doc.get("content", "")),
                sender=self.person,
                to=list(doc.get("to") or []),
                type=str(doc.get("type") or "message"),
                priority=str(doc.get("priority") or "normal"),
                reply_to=doc.get("reply_to"),
            )
        )
        return JSONResponse({"seq": message.seq})

    async def state(self, request: Request) -> Response:
        thread = request.path_params["thread"]
        doc = await request.json()
        state = str(doc.get("state"))
        if state not in STATES:
            return JSONResponse({"error": f"state must be one of {', '.join(STATES)}"}, 400)
        seq = await asyncio.to_thread(
            self.box.set_state, thread, state, sender=self.person, summary=doc.get("summary")
        )
        return JSONResponse({"seq": seq})

    async def create(self, request: Request) -> Response:
        doc = await request.json()
        info = await asyncio.to_thread(
            self.box.create_thread, str(doc.get("topic", "")), creator=self.person
        )
        return JSONResponse({"thread": info.id})

    async def agents(self, request: Request) -> Response:
        return JSONResponse(await asyncio.to_thread(self.people.agent_list))

    async def tasks(self, request: Request) -> Response:
        def board() -> dict[str, Any]:
            found = self.box.tasks.overview(list(self.box), "all")
            return {
                "tasks": [task_view(self.box, t) for t in found.tasks],
                "counts": found.counts,
                "questions": [question_view(q) for q in found.questions],
            }

        return JSONResponse(await asyncio.to_thread(board))

    async def task(self, request: Request) -> Response:
        """Claim, give back or reopen (take from its holder) a task, as the person."""
        thread, seq = request.path_params["thread"], int(request.path_params["seq"])
        action = (await request.json()).get("action")

        def act() -> dict[str, Any]:
            if action == "claim":
                got = self.box.tasks.claim(thread, seq, agent=self.person)
                if not got.won:
                    raise TaskError(f"{got.task.holder} holds task {seq}; reopen it to take it")
                return {"event_seq": got.seq, "holder": self.person}
            if action in ("release", "reopen"):
                holder = None
                if action == "reopen":  # whoever holds it: recorded as the person's act
                    holder = self.box.tasks.task(thread, seq).holder
                event = self.box.tasks.release(thread, seq, agent=self.person, holder=holder)
                return {"event_seq": event.seq}
            raise TaskError(f"action must be claim, release or reopen, not {action!r}")

        return JSONResponse(await asyncio.to_thread(act))

    async def reservations(self, request: Request) -> Response:
        def held() -> list[dict[str, Any]]:
            reservations = self.box.reservations
            return [held_view(h, reservations.until(h)) for h in reservations.live()]

        return JSONResponse({"reservations": await asyncio.to_thread(held)})

    async def free(self, request: Request) -> Response:
        """Free a holder's reservation of a path as the person (recorded as theirs)."""
        doc = await request.json()
        holder, path = str(doc.get("holder") or ""), doc.get("path")
        if not holder or not isinstance(path, str):
            return JSONResponse({"error": "send the holder and the path to free"}, 400)
        released, _ = await asyncio.to_thread(
            self.box.reservations.release, [path], agent=self.person, holder=holder
        )  # one's own holder is one's own release (Reservations.release)
        if not released:
            return JSONResponse({"error": f"{holder} holds no reservation of {path} now"}, 409)
        return JSONResponse({"released": sorted({h.pattern for h in released})})

    async def search(self, request: Request) -> Response:
        query = request.query_params.get("q", "")
        thread = request.query_params.get("thread") or None
        found = await asyncio.to_thread(self.box.search, query, thread=thread, limit=50)
        hits = [
            {"thread": h.message.thread, "seq": h.message.seq, "from": h.message.sender,
             "type": h.message.type, "created_at": h.message.created_at, "snippet": h.snippet}
            for h in found.hits
        ]  # fmt: skip
        return JSONResponse({"hits": hits, "total": found.total})

    async def events(self, request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            cursor = await asyncio.to_thread(self.box.cursor)
            seen = ""
            stamps = Stamps(self.box.root)
            await asyncio.to_thread(stamps.changed)  # what is there now is no news
            quiet = 0.0
            yield ": mailslot events\n\n"
            while True:
                got = await self._unless_closing(
                    self.box.wait_async(None, cursor, timeout=1.0, limit=1000)
                )
                if got is None:
                    return  # the server is stopping: an open tab must not keep it running
                cursor = got.cursor
                for m in got.messages:
                    data = json.dumps({"thread": m.thread, "seq": m.seq, "from": m.sender})
                    yield f"event: message\ndata: {data}\n\n"
                agents = json.dumps(await asyncio.to_thread(self.people.agent_list))
                if agents != seen:
                    seen = agents
                    yield f"event: presence\ndata: {agents}\n\n"
                # Receipts move without a message: said when a file they come from changed
                # (and while a change may share a stamp with the last look: Stamps).
                if await asyncio.to_thread(stamps.changed):
                    yield "event: receipts\ndata: {}\n\n"
                quiet = 0.0 if got.messages else quiet + 1.0
                if quiet >= 15:
                    quiet = 0.0
                    yield ": keep-alive\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def _unless_closing(self, waiting: Awaitable[Arrivals]) -> Arrivals | None:
        """Return what waiting returns, or None (cancelling it) once the server stops."""
        task = asyncio.ensure_future(waiting)
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            await asyncio.wait({task, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            if not task.done() or self.closing.is_set():
                task.cancel()  # a wait is cancellable at once and leaves nothing behind
        return None if self.closing.is_set() else task.result()


def receipt_view(r: Receipt, now: float) -> dict[str, Any]:
    """Return a recipient's receipt as the page reads it: its state, when (ISO time, or None
    when not known) and the text a person reads ("shown 2 min ago")."""
    at = None
    if r.at is not None:
        at = datetime.fromtimestamp(r.at, UTC).isoformat(timespec="milliseconds")
        at = at.replace("+00:00", "Z")
    return {"agent": r.agent, "state": r.state, "at": at, "text": r.text(now)}


def run(console: Console, sock: socket.socket) -> None:
    """Serve console on sock until SIGINT or SIGTERM, then return.

    The first signal ends the event streams, which no browser tab ever closes, so the server
    stops at once instead of waiting on them for ever; a second forces it (uvicorn's rule).
    """
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            console.closing.set()
            await super().shutdown(sockets)

    config = uvicorn.Config(app(console), log_level="warning", lifespan="off")
    Server(config).run(sockets=[sock])


def app(console: Console) -> Starlette:
    """Return the Starlette app serving console."""
    w = console.wrap
    routes = [
        Route("/", w(console.asset)),
        Route("/app.js", w(console.asset)),
        Route("/app.css", w(console.asset)),
        Route("/api/me", w(console.me)),
        Route("/api/threads", w(console.threads)),
        Route("/api/threads", w(console.create), methods=["POST"]),
        Route("/api/threads/{thread}", w(console.thread)),
        Route("/api/threads/{thread}/read", w(console.read), methods=["POST"]),
        Route("/api/threads/{thread}/messages", w(console.post), methods=["POST"]),
        Route("/api/threads/{thread}/state", w(console.state), methods=["POST"]),
        Route("/api/agents", w(console.agents)),
        Route("/api/tasks", w(console.tasks)),
        Route("/api/tasks/{thread}/{seq:int}", w(console.task), methods=["POST"]),
        Route("/api/reservations", w(console.reservations)),
        Route("/api/reservations/release", w(console.free), methods=["POST"]),
        Route("/api/search", w(console.search)),
        Route("/api/events", w(console.events)),
    ]
    return Starlette(routes=routes)
