"""The loop guard: agents in a loop are refused their next post until a person writes.

Three rules, each counted in one thread over the last ``window_s`` seconds after its last
message from a person (a sender with no agent card: people post with the command and the
console and never register), and only of agents' messages and questions: tasks, results,
errors, status and state messages never count and are never refused, so a task drain of any
size never meets the guard, and a person is never refused.

- exchanges: two agents have exchanged ``exchanges`` messages. A's message is addressed to B
  when B is in its ``to`` or it replies to one of B's messages; both ways count, and so does a
  one-way stream (an agent flooding another).
- messages: agents together have posted ``messages`` (a storm of three or more, a flood).
- repeats: the agent's new post says to an agent what one of its last REPEATS posts said to
  it (whitespace aside). A retry with the post's idempotency key is not a repeat: publish
  answers it.

A refused post stores nothing and raises LoopRefused. The first refusal since the last
person's message leaves one ``status`` message in the thread, from the refused agent,
addressed to no one, with meta ``{"loop_guard": {...}}``, so that a person sees it; it counts
for nothing and lifts nothing, and it is decided under the thread's lock (Writer.append's
guard), so the writers of one machine leave it once.

Cost: this process keeps what it read of each thread (its messages and questions since the
last person's message), so a check reads only the messages new since its last look; a first
look reads back from the head, at most SCAN messages, and stops at a person's message, at one
older than the window, or once it has the ``messages`` limit's worth of messages and questions
(past that the storm rule refuses whatever the rest say). Never the whole thread. Two processes
posting at the same moment may both pass: the check is not made under the thread's lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from mailslot.coordination.board import SYSTEM
from mailslot.store.errors import InvalidName, LoopRefused, MailslotError
from mailslot.store.files import Files
from mailslot.store.format import Message, span
from mailslot.store.log import ThreadLog
from mailslot.store.names import check_name
from mailslot.store.publish import Writer
from mailslot.store.settings import LoopGuard

CONVERSATION = ("message", "question")  # the types the guard counts and refuses
SCAN = 1000  # the most messages a first look at a thread reads back from its head
REPEATS = 5  # an agent's own recent posts a new one is compared with
MAX_THREADS = 1024  # threads whose tail a process keeps


@dataclass(frozen=True, slots=True)
class _Said:
    """An agent's message or question, as the rules count it."""

    seq: int
    sender: str
    partners: frozenset[str]  # whom it addressed: its to, and the sender of what it replies to
    at: float  # its created_at, in epoch seconds
    digest: bytes  # its content, whitespace aside


@dataclass(slots=True)
class _Tail:
    """What this process read of a thread: up to upto, since the last person's message."""

    upto: int
    said: deque[_Said] = field(default_factory=lambda: deque(maxlen=SCAN))
    recorded: int = 0  # the seq of a refusal's record since the last person's message
    senders: dict[int, str] = field(default_factory=dict)  # seq -> sender, for replies


class _Recorded(Exception):
    """Another writer left the record first (raised under the thread's lock)."""


def _digest(content: str | bytes) -> bytes:
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
    said = " ".join(text.split()).encode("utf-8", "surrogatepass")  # bad text: the post says so
    return hashlib.blake2b(said, digest_size=16).digest()


def _epoch(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


class Loops:
    """The loop guard of a root (settings: ``"loop_guard"`` in mailslot.json)."""

    def __init__(self, files: Files, log: ThreadLog, writer: Writer) -> None:
        self.files = files
        self.log = log
        self.writer = writer
        self._tails: dict[str, _Tail] = {}
        self._lock = threading.Lock()

    def is_person(self, name: str) -> bool:
        """Return True if name (a valid name) has no agent card, or a person's card (which
        holds their key: ``mailslot key``): people post with the command or the console and
        never register; every agent has a card. mailslot's own notes (SYSTEM, which no agent
        may take) are no person's."""
        if name == SYSTEM:
            return False
        if not os.path.lexists(f"{self.files.root}/agents/{name}.json"):
            return True
        with contextlib.suppress(MailslotError):
            return self.writer.agents.card(name).person
        return False

    def check(
        self,
        thread: str,
        sender: str,
        to: object,
        type: str,
        reply_to: object,
        content: str | bytes,
        key: str | None,
    ) -> None:
        """Raise LoopRefused if sender's post would carry on a loop (after recording the first
        refusal since the last person's message in thread); return if it may go on.

        Anything the post itself refuses (a bad name, a missing thread) is left to it.
        """
        guard = self.files.settings.loop_guard
        if not guard.on or type not in CONVERSATION or self.files.read_only is not None:
            return
        if not isinstance(content, str | bytes):
            return  # the post says what is wrong
        try:
            check_name(sender, "agent name")
        except InvalidName:
            return
        if self.is_person(sender):
            return
        if key is not None and self.writer.retried(thread, sender, key) is not None:
            return  # a retry: the post answers with the first message, stores nothing
        names = [to] if isinstance(to, str) else to if isinstance(to, list | tuple) else []
        try:
            with self._lock:
                tail = self._refresh(thread, guard)
                target = self._sender_of(thread, tail, reply_to)
                partners = ({n for n in names if isinstance(n, str)} | {target}) - {sender, ""}
                refused = self._judge(tail, thread, sender, partners, content, guard)
                recorded = tail.recorded
        except MailslotError:
            return  # the post says what is wrong
        if refused is None:
            return
        error, why = refused
        if not recorded:
            self._record(thread, sender, error, why)
        raise error

    # ------------------------------------------------------------------ reading

    def _refresh(self, thread: str, guard: LoopGuard) -> _Tail:
        """Return thread's tail, brought up to its head (locked)."""
        tdir = self.files.thread_dir(thread)
        head = self.log.probe_head(thread, tdir, listing=False)  # no listing: a stat or two
        tail = self._tails.get(thread)
        people: dict[str, bool] = {}
        if tail is None or head < tail.upto or head - tail.upto > SCAN:
            if len(self._tails) >= MAX_THREADS:
                self._tails.clear()
            tail = self._tails[thread] = _Tail(head)
            horizon = time.time() - guard.window_s
            found: list[Message] = []
            need, talk = guard.messages or SCAN, 0  # past `messages` of them, the storm rule
            for seq in range(head, max(0, head - SCAN), -1):  # refuses whatever the rest say
                item = self.log.load(thread, tdir, seq)
                if isinstance(item, Message):
                    found.append(item)
                    talk += item.type in CONVERSATION
                    if _epoch(item.created_at) < horizon or self._lifts(item, people):
                        break
                    if talk >= need:
                        break
            for m in reversed(found):
                self._take(thread, tail, m, people)
            return tail
        for page in self.log.pages(thread, tdir, tail.upto):
            for m in page.messages:
                self._take(thread, tail, m, people)
            tail.upto = max(tail.upto, page.cursor)
        return tail

    def _lifts(self, m: Message, people: dict[str, bool]) -> bool:
        """Return True if m is a person's message (a refusal's record never is)."""
        if _is_record(m):
            return False
        if m.sender not in people:
            people[m.sender] = self.is_person(m.sender)
        return people[m.sender]

    def _take(self, thread: str, tail: _Tail, m: Message, people: dict[str, bool]) -> None:
        """Fold message m into tail."""
        tail.senders[m.seq] = m.sender
        if len(tail.senders) > 2 * SCAN:
            tail.senders = {s: n for s, n in tail.senders.items() if s > m.seq - SCAN}
        if _is_record(m):
            tail.recorded = m.seq
        elif self._lifts(m, people):
            tail.said.clear()
            tail.recorded = 0
        elif m.type in CONVERSATION:
            partners = {*m.to, self._sender_of(thread, tail, m.reply_to)} - {m.sender, ""}
            at = _epoch(m.created_at)
            tail.said.append(_Said(m.seq, m.sender, frozenset(partners), at, _digest(m.content)))

    def _sender_of(self, thread: str, tail: _Tail, seq: object) -> str:
        """Return who wrote message seq of thread ('' if none or unreadable)."""
        if type(seq) is not int or seq < 1:
            return ""
        name = tail.senders.get(seq)
        if name is None:
            item = self.log.load(thread, self.files.thread_dir(thread), seq)
            name = tail.senders[seq] = item.sender if isinstance(item, Message) else ""
        return name

    # ------------------------------------------------------------------ the rules

    def _judge(
        self,
        tail: _Tail,
        thread: str,
        sender: str,
        partners: set[str],
        content: str | bytes,
        guard: LoopGuard,
    ) -> tuple[LoopRefused, str] | None:
        """Return the refusal of sender's post (and why, for the record), or None."""
        now = time.time()
        said = [s for s in tail.said if s.at >= now - guard.window_s]
        window = span(guard.window_s)
        if guard.repeats:
            digest = _digest(content)
            mine = [s for s in said if s.sender == sender][-REPEATS:]
            same = next(
                (s for s in reversed(mine) if s.digest == digest and s.partners & partners), None
            )  # to one of the same agents: words said again to no one are no loop
            if same is not None:
                ago = span(now - same.at)
                why = f"{sender} posted the same content as its #{same.seq} ({ago} earlier) again"
                text = (
                    f"loop guard, thread {thread!r}: this is the same content as your "
                    f"#{same.seq} ({ago} ago), and no person has posted here since; this post "
                    "was not stored. Say what is new instead, or wait for a person to answer; "
                    f'"loop_guard": {{"repeats": false}} in {self._config()} turns this off'
                )
                return LoopRefused(text, thread=thread, rule="repeats", agents=[sender]), why
        if guard.exchanges:
            for other in sorted(partners):
                pair = [
                    s for s in said
                    if (s.sender == sender and other in s.partners)
                    or (s.sender == other and sender in s.partners)
                ]  # fmt: skip
                if len(pair) >= guard.exchanges:
                    took = span(now - min(s.at for s in pair))
                    if all(s.sender == sender for s in pair):
                        did = f"{sender} has sent {other} {len(pair)} messages"
                    else:
                        did = f"{sender} and {other} have exchanged {len(pair)} messages"
                    why = (f"{did} in {took} with no message from a person (the limit is "
                           f"{guard.exchanges} in {window})")  # fmt: skip
                    return self._refusal(thread, "exchanges", [sender, other], why, guard), why
        if guard.messages and len(said) >= guard.messages:
            counts = Counter(s.sender for s in said).most_common()
            who = ", ".join(f"{name} {n}" for name, n in counts[:4])
            more = f" and {len(counts) - 4} more" if len(counts) > 4 else ""
            why = (
                f"agents have posted {len(said)} messages and questions in "
                f"{span(now - min(s.at for s in said))} ({who}{more}) with no message from a "
                f"person (the limit is {guard.messages} in {window})"
            )
            agents = [name for name, _ in counts]
            return self._refusal(thread, "messages", agents, why, guard), why
        return None

    def _refusal(
        self, thread: str, rule: str, agents: list[str], why: str, guard: LoopGuard
    ) -> LoopRefused:
        limit = getattr(guard, rule)
        text = (
            f"loop guard, thread {thread!r}: {why}; this post was not stored. Stop here: "
            "summarise where you stand and wait for a person to answer, or ask a person to "
            "post in this thread (a person's message lifts the guard); to allow more, set "
            f'"loop_guard": {{"{rule}": {limit * 2}}} in {self._config()}'
        )
        return LoopRefused(text, thread=thread, rule=rule, agents=agents)

    def _config(self) -> Path:
        return self.files.root / "mailslot.json"

    # ------------------------------------------------------------------ the record

    def _record(self, thread: str, sender: str, error: LoopRefused, why: str) -> None:
        """Leave one status message saying a post was refused, unless one is there since the
        last person's message (decided under the thread's lock). Never fails."""
        guard = self.files.settings.loop_guard

        def first() -> None:
            with self._lock:
                if self._refresh(thread, guard).recorded:
                    raise _Recorded

        text = (
            f"Loop guard: a post by {sender} was refused: {why}. Agents' posts that carry "
            "on are refused until a person posts in this thread; a person's message lifts it."
        )
        meta = {"loop_guard": {"refused": sender, "rule": error.rule, "agents": error.agents}}
        with contextlib.suppress(_Recorded, MailslotError):
            self.writer.append(
                thread, self.files.thread_dir(thread), sender=sender, to=(), type_="status",
                priority="normal", reply_to=None, content=text, meta=meta, key=None,
                guard=first,
            )  # fmt: skip


def _is_record(m: Message) -> bool:
    """Return True if m is the record of a refusal (see Loops._record)."""
    return m.type == "status" and isinstance(m.meta.get("loop_guard"), dict)
