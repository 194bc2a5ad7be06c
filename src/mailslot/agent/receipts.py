"""Receipts: how far each recipient of a message has got with it, read from what is there.

For each message with recipients, per recipient, the furthest of:

- ``stored``: the message is in the thread (every recipient starts here);
- ``reported``: a hook or a channel push told the agent it is there (``.state/notified/``);
- ``shown``: a wait or a read returned it to the agent (the receipts its server keeps with its
  read position in ``.state/cursors/``, by message id; an older one by the position alone);
- ``answered``: the agent posted a reply to it (``reply_to``), read from the thread itself.

Nothing new is written for them: they are what the recipient's own server, hooks and replies
already record, and they never go into a message file or git history. The server writes a
position at most a second after a wait, so a receipt is at most that late. Other machines'
receipts come through ``mailslot sync``'s heartbeat (``sync/peers``), landed in
``.state/receipts/<machine>.json``; on a shared folder every machine reads the same ``.state/``.
Times are this machine's clock (a peer's are carried as ages); a receipt is a report, never a
rule: nothing is refused or held for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mailslot.coordination.board import iso
from mailslot.store.errors import MailslotError
from mailslot.store.format import Message, loads, span
from mailslot.store.positions import Position

if TYPE_CHECKING:
    from mailslot.agent.seat import Pace
    from mailslot.mailbox import Mailbox

STATES = ("stored", "reported", "shown", "answered")
#: How often a wait for a receipt looks again (receipts live in .state/, which no watch sees).
POLL_S = 0.25
MAX_LANDED_BYTES = 4 * 1024 * 1024
#: The messages per thread a session follows the receipts of (its last ones with recipients).
MAX_SENT = 3
#: What sync's heartbeat carries of an agent's receipts: threads shown something this recently,
#: at most this many per agent (the heartbeat is one small file).
OUT_AGE_S = 86400.0
OUT_THREADS = 64
#: A file written this soon after a look may share the time stamp the look saw (a file system
#: with a coarse clock): until a look is this far past every stamp, Stamps says "changed" again.
SETTLE_NS = 2_000_000_000


@dataclass(frozen=True, slots=True)
class Receipt:
    """How far agent has got with one message: a state of STATES, and when (epoch seconds on
    this machine's clock; None when not known, such as a message answered)."""

    agent: str
    state: str
    at: float | None = None

    def reached(self, state: str) -> bool:
        """Return True if this receipt is at state or past it."""
        return STATES.index(self.state) >= STATES.index(state)

    def text(self, now: float) -> str:
        """Return the receipt as a person reads it: "shown 2 min ago"."""
        return self.state if self.at is None else f"{self.state} {ago(now - self.at)}"


def ago(seconds: float) -> str:
    """Return an age as a person says it ("just now", "40 s ago", "2 min ago", "3 h ago")."""
    return "just now" if seconds < 1 else f"{span(seconds)} ago"


def _steps(value: object) -> list[tuple[int, float]]:
    if not isinstance(value, list):
        return []
    out = []
    for step in value:
        with contextlib.suppress(TypeError, ValueError):
            seq, at = step
            if type(seq) is int and type(at) in (int, float):
                out.append((seq, float(at)))
    return sorted(out)


_Stamp = tuple[str, int, int]  # path, inode, modification time (ns)


class Stamps:
    """Whether the files receipts come from changed since last asked, told by stats alone (a
    few per agent, nothing read): each agent's folder of read positions (a position written
    replaces a file there) and its notices file, other machines' landed receipts (unless
    landed is False), and the folders of threads (a reply answers; a thread made again is
    another folder). Every write there replaces a file, so its folder's stamp moves."""

    def __init__(self, root: os.PathLike[str] | str, *, landed: bool = True) -> None:
        self.root = os.fspath(root)
        self.landed = landed
        self._last: list[_Stamp] | None = None
        self._at = 0  # when the last look began (time.time_ns)

    def changed(self, agents: Iterable[str] | None = None, threads: Iterable[str] = ()) -> bool:
        """Return True if a file the receipts of agents (None: every agent) in threads come
        from changed since the last call, or may have (a stamp too new to trust; the first
        call). Ask before reading, so that what changes during the read is told next time."""
        at, now = time.time_ns(), self._look(agents, threads)
        moved = now != self._last or any(ns >= self._at - SETTLE_NS for _, _, ns in now)
        self._last, self._at = now, at
        return moved

    def _look(self, agents: Iterable[str] | None, threads: Iterable[str]) -> list[_Stamp]:
        state = os.path.join(self.root, ".state")
        paths = [os.path.join(self.root, "threads", t) for t in threads]
        if self.landed:
            paths.append(os.path.join(state, "receipts"))
        if agents is None:
            paths.append(os.path.join(state, "notified"))
            with contextlib.suppress(OSError), os.scandir(os.path.join(state, "cursors")) as found:
                paths += [e.path for e in found]
        else:
            for agent in sorted(set(agents)):
                paths.append(os.path.join(state, "cursors", agent))
                paths.append(os.path.join(state, "notified", f"{agent}.json"))
        out = []
        for path in paths:
            try:
                st = os.stat(path, follow_symlinks=False)
                out.append((path, st.st_ino, st.st_mtime_ns))
            except OSError:
                out.append((path, 0, 0))
        return sorted(out)


class Receipts:
    """Receipts of messages of a mailbox, read once per call (each agent's files read once)."""

    def __init__(self, box: Mailbox) -> None:
        self.box = box
        self.fresh()

    def fresh(self) -> None:
        """Forget what was read: the next look reads every file again."""
        self._positions: dict[tuple[str, str], Position | None] = {}
        self._reported: dict[str, dict[str, Any]] = {}
        self._unanswered: dict[tuple[str, str], tuple[set[int], int]] = {}
        self._landed: dict[str, dict[str, Any]] | None = None

    def of(self, m: Message) -> list[Receipt]:
        """Return a receipt per recipient of m (its sender left out), in the order of m.to."""
        return [self._one(m, agent) for agent in dict.fromkeys(m.to) if agent != m.sender]

    def texts(self, m: Message, now: float | None = None) -> dict[str, str]:
        """Return recipient -> its receipt as a person reads it, for a view."""
        now = time.time() if now is None else now
        return {r.agent: r.text(now) for r in self.of(m)}

    def json(self, m: Message) -> dict[str, Any]:
        """Return {"receipts": recipient -> {"state", "at" (ISO time or null)}} for m, or {}
        if it has no recipient (what `--json` prints beside a message)."""
        got = self.of(m)
        if not got:
            return {}
        return {"receipts": {r.agent: {"state": r.state, "at": None if r.at is None else iso(r.at)}
                             for r in got}}  # fmt: skip

    def _one(self, m: Message, agent: str) -> Receipt:
        try:
            seqs, upto = self._answers(m.thread, agent)
            if m.seq <= upto and m.seq not in seqs:
                return Receipt(agent, "answered")
        except MailslotError:
            pass  # the thread is gone or unreadable: what else is known still stands
        shown = self._shown(m, agent)
        if shown is not None:
            return Receipt(agent, "shown", shown or None)
        reported = self._reported_at(m, agent)
        if reported is not None:
            return Receipt(agent, "reported", reported or None)
        return Receipt(agent, "stored")

    def _answers(self, thread: str, agent: str) -> tuple[set[int], int]:
        key = (thread, agent)
        if key not in self._unanswered:
            seqs, upto = self.box.unanswered(thread, agent)
            self._unanswered[key] = (set(seqs), upto)
        return self._unanswered[key]

    def _position(self, thread: str, agent: str) -> Position | None:
        key = (thread, agent)
        if key not in self._positions:
            pos = None
            with contextlib.suppress(MailslotError):
                doc = self.box.load_cursor(agent, thread)
                if isinstance(doc, dict):
                    pos = Position.from_json(doc, self.box.incarnation(thread))
            self._positions[key] = pos
        return self._positions[key]

    def _shown(self, m: Message, agent: str) -> float | None:
        """Return when m was shown to agent (0.0: shown, time unknown), or None if not."""
        landed = self._landed_of(agent, m.thread)
        at = landed.get("shown", {}).get(m.id) if landed else None
        pos = self._position(m.thread, agent)
        if pos is not None and m.id in pos.receipts:
            here = pos.receipts[m.id]
            at = here if at is None else min(at, here)
        if at is not None:
            return float(at)
        if pos is not None and (
            (pos.inbox is not None and m.seq <= pos.inbox_seen) or pos.was_shown(m.seq)
        ):
            return 0.0  # passed by the inbox or a thread read, its receipt no longer kept
        return None

    def _reported_at(self, m: Message, agent: str) -> float | None:
        """Return when a hook or push told agent of m (0.0: time unknown), or None."""
        if agent not in self._reported:
            doc: Any = None
            with contextlib.suppress(OSError, ValueError):
                doc = loads((self.box.root / ".state" / "notified" / f"{agent}.json").read_bytes())
            self._reported[agent] = doc if isinstance(doc, dict) else {}
        doc = self._reported[agent]
        found = []
        landed = self._landed_of(agent, m.thread)
        if landed:
            found += [at for seq, at in _steps([landed.get("reported")]) if seq >= m.seq]
        steps = doc.get("reported_at")
        if isinstance(steps, dict):
            found += [at for seq, at in _steps(steps.get(m.thread)) if seq >= m.seq][:1]
        reported = doc.get("reported")
        upto = reported.get(m.thread) if isinstance(reported, dict) else None
        if found:
            return min(found)
        return 0.0 if type(upto) is int and upto >= m.seq else None

    def _landed_of(self, agent: str, thread: str) -> dict[str, Any] | None:
        """Return what other machines' heartbeats said of agent in thread (sync/peers)."""
        if self._landed is None:
            self._landed = landed(self.box.root)
        return self._landed.get(agent, {}).get(thread)

    async def until(
        self, m: Message, state: str, timeout: float, pace: Pace | None = None
    ) -> list[Receipt]:
        """Wait until every recipient of m is at state or past it, or timeout; return the
        receipts then. Receipts are files under .state/ that no watch sees: looked at every
        POLL_S (a few stats; files read again only when one changed: Stamps)."""
        deadline = time.monotonic() + timeout
        stamps, agents, got = Stamps(self.box.root), [a for a in m.to if a != m.sender], []
        while True:
            if stamps.changed(agents, [m.thread]):
                self.fresh()
                got = self.of(m)
            left = deadline - time.monotonic()
            if all(r.reached(state) for r in got) or left <= 0:
                return got
            step = POLL_S if pace is None else min(POLL_S, pace.limit(timeout - left))
            await asyncio.sleep(max(0.01, min(step, left)))
            if pace is not None:
                await pace.progress(timeout - left, f"{m.thread}#{m.seq}")


class Sent:
    """What one session posted to someone, and the receipts it last told the agent of: a wait
    says when they moved (a recipient was shown one, or answered it), never the same twice."""

    def __init__(self, box: Mailbox) -> None:
        self.box = box
        self._sent: dict[str, list[Message]] = {}  # thread -> the last MAX_SENT messages
        self._told: dict[str, tuple[str, ...]] = {}  # "thread#seq" -> the states told
        self._stamps: dict[str | None, Stamps] = {}  # texts' thread -> its files' last look

    def add(self, m: Message) -> None:
        """Follow m's receipts if it has a recipient besides its sender."""
        if any(a != m.sender for a in m.to):
            its = [x for x in self._sent.get(m.thread, []) if x.id != m.id] + [m]
            for old in its[:-MAX_SENT]:  # followed no longer: forget what was told of it
                self._told.pop(f"{old.thread}#{old.seq}", None)
            self._sent[m.thread] = its[-MAX_SENT:]

    def texts(self, thread: str | None = None) -> dict[str, dict[str, str]]:
        """Return "thread#seq" -> recipient -> receipt, for this session's messages (in thread,
        or all) whose receipts moved since the last call; answered by all, they are dropped.
        Nothing is read unless a file receipts come from changed (Stamps; a message newly
        followed was just posted: its thread's stamp moved)."""
        threads = [thread] if thread is not None else list(self._sent)
        agents = {a for t in threads for m in self._sent.get(t, ()) for a in m.to}
        stamps = self._stamps.setdefault(thread, Stamps(self.box.root))
        if not agents or not stamps.changed(agents, threads):
            return {}
        receipts, now, out = Receipts(self.box), time.time(), {}
        for t in threads:
            for m in list(self._sent.get(t, ())):
                got = receipts.of(m)
                key, states = f"{m.thread}#{m.seq}", tuple(r.state for r in got)
                if states != self._told.get(key):
                    self._told[key] = states
                    out[key] = {r.agent: r.text(now) for r in got}
                if all(r.state == "answered" for r in got):
                    self._sent[t].remove(m)
                    self._told.pop(key, None)
        return out

    def recent(self, thread: str, me: str | None, among: int = 100) -> dict[str, Any]:
        """Return {"receipts": ...} for me's last MAX_SENT messages to someone among the last
        `among` of thread ("thread#seq" -> recipient -> receipt), or {} if there are none."""
        if me is None:
            return {}
        head = self.box.head(thread)
        page = self.box.read(thread, max(0, head - among), among)
        receipts, now = Receipts(self.box), time.time()
        mine = known(page.messages, me)[-MAX_SENT:]
        out = {f"{m.thread}#{m.seq}": receipts.texts(m, now) for m in mine}
        return {"receipts": out} if out else {}

    def mine(self, me: str) -> Callable[[Message], dict[str, str]]:
        """Return what a page shows of a message's receipts: me's own messages' alone."""
        receipts, now = Receipts(self.box), time.time()
        return lambda m: receipts.texts(m, now) if m.sender == me else {}


def _shown_in(path: str) -> dict[str, float]:
    """Return the receipts (message id -> when shown) of the read position stored at path (a
    file of .state/cursors/, taken for its own incarnation), or {} if it cannot be read."""
    with contextlib.suppress(OSError, ValueError), open(path, "rb") as f:
        doc = loads(f.read(1 << 20))
        if isinstance(doc, dict):
            return Position.from_json(doc, str(doc.get("incarnation") or "?")).receipts
    return {}


def outgoing(root: os.PathLike[str] | str, agents: Iterable[str], now: float) -> dict[str, Any]:
    """Return the receipts of agents (this machine's live ones) that sync's heartbeat carries
    to other machines: agent -> thread -> {"shown": {message id: age}, "reported": [seq, age]},
    ages in seconds (a peer's clock is not trusted), from the last OUT_THREADS threads each
    agent was shown something in within OUT_AGE_S."""
    out: dict[str, Any] = {}
    for agent in sorted(agents):
        threads: dict[str, Any] = {}
        folder = os.path.join(root, ".state", "cursors", agent)
        with contextlib.suppress(OSError):
            found = [e for e in os.scandir(folder) if e.name.endswith(".json")]
            found.sort(key=lambda e: e.stat().st_mtime, reverse=True)
            for entry in found[:OUT_THREADS]:
                if now - entry.stat().st_mtime > OUT_AGE_S:
                    break
                kept = {k: round(now - v, 1) for k, v in _shown_in(entry.path).items()
                        if now - v <= OUT_AGE_S}  # fmt: skip
                if kept:
                    threads[entry.name[: -len(".json")]] = {"shown": kept}
        with contextlib.suppress(OSError, ValueError, AttributeError):
            path = os.path.join(root, ".state", "notified", f"{agent}.json")
            with open(path, "rb") as f:
                steps = loads(f.read(1 << 20)).get("reported_at")
            for thread, its in (steps if isinstance(steps, dict) else {}).items():
                last = _steps(its)[-1:]
                if last and now - last[0][1] <= OUT_AGE_S:
                    threads.setdefault(thread, {})["reported"] = [last[0][0], now - last[0][1]]
        if threads:
            out[agent] = threads
    return out


def incoming(doc: Any, now: float) -> dict[str, Any]:
    """Return what outgoing() made on another machine, ages turned into times on this
    machine's clock; what cannot be read is left out."""
    out: dict[str, Any] = {}
    if not isinstance(doc, dict):
        return out
    for agent, threads in doc.items():
        if not isinstance(threads, dict):
            continue
        for thread, its in threads.items():
            if not isinstance(its, dict):
                continue
            got: dict[str, Any] = {}
            shown = its.get("shown")
            if isinstance(shown, dict):
                got["shown"] = {k: now - v for k, v in shown.items()
                                if isinstance(k, str) and type(v) in (int, float)}  # fmt: skip
            steps = _steps([its.get("reported")])
            if steps:
                got["reported"] = [steps[0][0], now - steps[0][1]]
            out.setdefault(str(agent), {})[str(thread)] = got
    return out


def landed(root: os.PathLike[str] | str) -> dict[str, dict[str, Any]]:
    """Return agent -> thread -> what other machines' sync heartbeats said of its receipts:
    {"shown": {message id: when}, "reported": [seq, when]} (when on this machine's clock)."""
    out: dict[str, dict[str, Any]] = {}
    folder = os.path.join(root, ".state", "receipts")
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if not entry.name.endswith(".json"):
                continue
            try:
                with open(entry.path, "rb") as f:
                    doc = loads(f.read(MAX_LANDED_BYTES))
                agents = doc["agents"]
                for agent, threads in agents.items():
                    for thread, its in threads.items():
                        _merge(out.setdefault(agent, {}).setdefault(thread, {}), its)
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue  # being written, or not ours: the next look reads it
    return out


def _merge(into: dict[str, Any], its: Any) -> None:
    if not isinstance(its, dict):
        return
    shown = its.get("shown")
    if isinstance(shown, dict):
        mine = into.setdefault("shown", {})
        for mid, at in shown.items():
            if isinstance(mid, str) and type(at) in (int, float):
                mine[mid] = min(float(at), mine.get(mid, float(at)))
    steps = _steps([its.get("reported")])
    if steps and (not into.get("reported") or steps[-1][0] > into["reported"][0]):
        into["reported"] = list(steps[-1])


def known(messages: Iterable[Message], me: str) -> list[Message]:
    """Return those of messages that me sent to someone: the ones with receipts to show."""
    return [m for m in messages if m.sender == me and any(a != me for a in m.to)]
