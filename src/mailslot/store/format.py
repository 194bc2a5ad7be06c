"""On-disk format version 1: messages, thread records and agent cards as JSON."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mailslot.store.errors import InvalidMessage

FORMAT = 1
TYPES = ("message", "task", "result", "status", "error", "question", "state")
PRIORITIES = ("low", "normal", "high", "urgent")
STATES = ("discuss", "implement", "review", "done", "closed", "archived")
# Key order of a message file; the seq is the file name and is not repeated inside.
MESSAGE_KEYS = (
    "id",
    "from",
    "to",
    "type",
    "priority",
    "reply_to",
    "created_at",
    "content",
    "meta",
)
MAX_META_BYTES = 64 * 1024
MAX_META_DEPTH = 32
# Deepest nesting any file mailslot reads may have (a message with meta at its own limit is
# ~34 deep). json.loads recurses once per level, so an unbounded file could exhaust the stack.
MAX_JSON_DEPTH = 64
# What a message file holds besides content and meta: keys, indentation, id, sender, type,
# timestamps and recipients (~72 bytes each; about 900 fit).
MESSAGE_FIXED_BYTES = 64 * 1024
# Room for meta as written: check_meta measures it compact, the file indents it. Meta of a
# usual shape grows up to ~4x; one nested 30 deep can grow ~40x and is refused at publish.
MESSAGE_META_ROOM = 8 * MAX_META_BYTES
MESSAGE_NAME_RE = re.compile(r"(\d{6,})\.json")


def now_iso() -> str:
    """Return the current UTC time as ISO-8601 with milliseconds and a Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def span(seconds: float) -> str:
    """Return a duration as a person says it ("40 s", "20 min", "3 h", "2 days")."""
    s = max(0.0, seconds)
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.0f} h"
    return f"{s / 86400:.0f} days"


def message_name(seq: int) -> str:
    """Return the file name of message seq: zero-padded to six digits, wider past 999999."""
    return f"{seq:06d}.json"


def dumps(obj: dict[str, Any]) -> bytes:
    """Return the canonical bytes of a JSON document: 2-space indent, UTF-8, newline."""
    return (json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _check_depth(doc: Any) -> None:
    """Raise ValueError if doc nests deeper than MAX_JSON_DEPTH; level by level, no recursion."""
    level = [doc] if type(doc) is dict or type(doc) is list else []
    depth = 0
    while level:
        depth += 1
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
        level = [
            v
            for c in level
            for v in (c.values() if type(c) is dict else c)
            if type(v) is dict or type(v) is list
        ]


def loads(data: bytes | str) -> Any:
    """Return the JSON value in data; raise ValueError on anything that is not strict JSON.

    Bounded for hostile input: nesting deeper than MAX_JSON_DEPTH is a ValueError, and neither
    RecursionError nor MemoryError escapes.
    """
    # The depth is checked on the parsed value, not by scanning the text first: a string-aware
    # scan in Python costs more than json.loads itself on a long message, while walking the
    # containers costs next to nothing. json.loads stops a hostile depth with RecursionError
    # at the interpreter's recursion limit, long before the stack runs out.
    try:
        doc = json.loads(
            data.decode("utf-8") if isinstance(data, bytes | bytearray) else data,
            parse_constant=_reject_constant,
        )
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except MemoryError:
        raise ValueError(f"too large to parse ({len(data)} bytes)") from None
    _check_depth(doc)
    return doc


def max_message_file_bytes(max_content_bytes: int) -> int:
    """Return the size of the largest message file a mailbox with this content limit accepts.

    Writers refuse to publish a larger file (check_message_file) and readers refuse to read
    one, from this same number, so a message that was acknowledged can always be read. Room is
    kept for content at its limit escaped at worst (6 bytes a control character, ``\\u0001``),
    meta of a usual shape at its limit as indented, and about 900 recipients.
    """
    return 6 * max_content_bytes + MESSAGE_META_ROOM + MESSAGE_FIXED_BYTES


def check_message_file(data: bytes, max_content_bytes: int) -> bytes:
    """Return data, a serialised message, if readers accept its size; raise InvalidMessage."""
    limit = max_message_file_bytes(max_content_bytes)
    if len(data) > limit:
        raise InvalidMessage(
            f"the message would be a {len(data)}-byte file, over the {limit} bytes readers "
            "accept (content and meta grow when written as JSON: a control character takes 6 "
            "bytes, nested meta is indented); nothing was stored. Split it into several "
            "messages, make meta smaller or flatter, or store the data in a file and send its path"
        )
    return data


@dataclass(frozen=True, slots=True)
class Message:
    """One published message; seq and thread come from where the file lies."""

    thread: str
    seq: int
    id: str
    sender: str
    to: list[str]
    type: str
    priority: str
    reply_to: int | None
    created_at: str
    content: str
    meta: dict[str, Any] = field(default_factory=dict)
    #: The file's ``sig`` object as written (None: the file has none); store/signing.py.
    sig: Any = None
    #: What the signature says here (store/signing.py: valid, invalid, unsigned, unknown key),
    #: once a reader checked it (Mailbox's reads do); None if nobody did.
    signed: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the message as JSON-able dict, with thread and seq first."""
        out: dict[str, Any] = {
            "thread": self.thread,
            "seq": self.seq,
            "id": self.id,
            "from": self.sender,
            "to": list(self.to),
            "type": self.type,
            "priority": self.priority,
            "reply_to": self.reply_to,
            "created_at": self.created_at,
            "content": self.content,
            "meta": self.meta,
        }
        if self.signed is not None:
            out["signed"] = self.signed
        return out

    def file_doc(self, reply_to: int | None = None) -> dict[str, Any]:
        """Return the message file's content: format v1's keys in their fixed order, then its
        signature if it has one; reply_to: another seq (a moved reply's), default its own."""
        reply = self.reply_to if reply_to is None else reply_to
        values = (self.id, self.sender, self.to, self.type, self.priority, reply,
                  self.created_at, self.content, self.meta)  # fmt: skip
        doc = dict(zip(MESSAGE_KEYS, values, strict=True))
        if self.sig is not None:
            doc["sig"] = self.sig
        return doc


def check_content(content: object, limit: int) -> str:
    """Return content if it is storable text within limit bytes; raise InvalidMessage."""
    if isinstance(content, bytes | bytearray):
        try:
            content = bytes(content).decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidMessage(
                f"content is not valid UTF-8 (byte {e.start}); send text encoded as UTF-8"
            ) from None
    if not isinstance(content, str):
        raise InvalidMessage(f"content must be text, not {type(content).__name__}")
    try:
        size = len(content.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise InvalidMessage(
            f"content holds an unpaired surrogate at character {e.start}; send valid Unicode text"
        ) from None
    if size > limit:
        raise InvalidMessage(
            f"content is {size} bytes, over the limit of {limit} bytes; split it into several "
            "messages or store the data in a file and send its path"
        )
    return content


def check_meta(meta: object) -> dict[str, Any]:
    """Return meta if it is a JSON object within the size and depth limits; raise InvalidMessage."""
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise InvalidMessage(f"meta must be a JSON object, not {type(meta).__name__}")
    stack: list[tuple[object, int]] = [(meta, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_META_DEPTH:
            raise InvalidMessage(f"meta is nested deeper than {MAX_META_DEPTH} levels")
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise InvalidMessage(f"meta keys must be strings, not {type(k).__name__}")
                stack.append((v, depth + 1))
        elif isinstance(value, list | tuple):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise InvalidMessage(f"meta holds {value}, which JSON cannot represent")
        elif value is not None and not isinstance(value, str | int | float | bool):
            raise InvalidMessage(f"meta holds a {type(value).__name__}, which is not JSON")
    try:
        size = len(json.dumps(meta, ensure_ascii=False, allow_nan=False).encode("utf-8"))
    except (UnicodeEncodeError, ValueError) as e:
        raise InvalidMessage(f"meta is not storable JSON: {e}") from None
    if size > MAX_META_BYTES:
        raise InvalidMessage(f"meta is {size} bytes, over the limit of {MAX_META_BYTES} bytes")
    return meta


def parse_message(data: bytes, thread: str, seq: int) -> Message:
    """Return the message stored in data; raise ValueError saying what is wrong with it."""
    try:
        doc = loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"not valid UTF-8 JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"a message must be a JSON object, found {type(doc).__name__}")
    missing = [k for k in MESSAGE_KEYS if k not in doc]
    if missing:
        raise ValueError(f"not a mailslot message: missing {', '.join(missing)}")
    if "seq" in doc and doc["seq"] != seq:
        raise ValueError(f"says seq {doc['seq']!r} but its file name says {seq}")
    if "thread" in doc and doc["thread"] != thread:
        raise ValueError(f"says thread {doc['thread']!r} but lies in thread {thread!r}")
    checks = (
        isinstance(doc["id"], str)
        and isinstance(doc["from"], str)
        and isinstance(doc["to"], list)
        and all(isinstance(t, str) for t in doc["to"])
        and doc["type"] in TYPES
        and doc["priority"] in PRIORITIES
        and (doc["reply_to"] is None or type(doc["reply_to"]) is int)
        and isinstance(doc["created_at"], str)
        and isinstance(doc["content"], str)
        and isinstance(doc["meta"], dict)
    )
    if not checks:
        raise ValueError("a field has the wrong type or an unknown value")
    if b"\\ud" in data or b"\\uD" in data:  # escaped surrogates: a lone one is no text
        try:
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                "holds an unpaired surrogate (\\ud800-\\udfff), which is no text"
            ) from None
    return Message(
        thread=thread,
        seq=seq,
        id=doc["id"],
        sender=doc["from"],
        to=doc["to"],
        type=doc["type"],
        priority=doc["priority"],
        reply_to=doc["reply_to"],
        created_at=doc["created_at"],
        content=doc["content"],
        meta=doc["meta"],
        sig=doc.get("sig"),
    )


@dataclass(frozen=True, slots=True)
class ThreadInfo:
    """What is known of a thread: its record plus what its messages say."""

    id: str
    topic: str
    created_by: str
    created_at: str
    state: str
    head: int
    participants: list[str]
    last_activity: str
    summary: str | None
    #: The state the summary was given with: not the current state once a thread moved on
    #: (a closed thread reopened keeps its old summary, from before).
    summary_state: str | None = None
    #: False while a long thread seen for the first time on this machine is still being
    #: indexed: state and participants then come from its newest and oldest messages read so
    #: far (each look reads a few thousand more).
    complete: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Return the thread as a JSON-able dict."""
        out: dict[str, Any] = {
            "id": self.id,
            "topic": self.topic,
            "state": self.state,
            "head": self.head,
            "participants": list(self.participants),
            "created_by": self.created_by,
            "created_at": self.created_at,
            "last_activity": self.last_activity,
            "summary": self.summary,
            "summary_state": self.summary_state,
        }
        if not self.complete:
            out["complete"] = False
        return out


@dataclass(frozen=True, slots=True)
class AgentCard:
    """An agent's card: who it is, as it described itself."""

    name: str
    client: str | None
    model: str | None
    description: str | None
    registered_at: str
    updated_at: str
    #: The public keys its messages are signed with, one per machine it runs on:
    #: ``{"key": "ssh-ed25519 AAAA... name@host", "host": ..., "added_at": ...}``.
    keys: tuple[dict[str, Any], ...] = ()
    #: A person's card (``mailslot key``): it holds their key; they stay a person, not an agent.
    person: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return the card as a JSON-able dict (the file's content)."""
        out: dict[str, Any] = {
            "name": self.name,
            "client": self.client,
            "model": self.model,
            "description": self.description,
            "registered_at": self.registered_at,
            "updated_at": self.updated_at,
        }
        if self.keys:
            out["keys"] = [dict(k) for k in self.keys]
        if self.person:
            out["person"] = True
        return out


@dataclass(frozen=True, slots=True)
class Damage:
    """A file in the mailbox that could not be read, and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Pending:
    """A message a reader waits for rather than stepping past it.

    ``reason`` says what is wrong; ``since`` is when it started to look that way (epoch s);
    ``blocked`` is True when time will not resolve it (a merge conflict needs
    ``mailslot doctor --fix``), so waiters should not poll it fast.
    """

    thread: str
    seq: int
    path: str
    reason: str
    since: float
    blocked: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"

    def to_dict(self) -> dict[str, object]:
        """Return the pending message as a JSON-able dict."""
        return {
            "thread": self.thread,
            "seq": self.seq,
            "path": self.path,
            "reason": self.reason,
            "blocked": self.blocked,
        }


@dataclass(frozen=True, slots=True)
class Page:
    """Messages read after a cursor: pass cursor as after= to continue."""

    messages: list[Message]
    cursor: int
    has_more: bool
    skipped: list[Damage] = field(default_factory=list)
    #: The message the read stopped before because it is still arriving, if any.
    pending: Pending | None = None
