"""What of a remote's branch sync takes: only files of the mailbox layout, checked as local.

The branch holds the mailbox's ``threads/<id>/thread.json``, ``threads/<id>/<seq>.json`` and
``agents/<name>.json``, nothing else. A remote is not trusted: a path outside that layout, a
name a local writer could not use, a symlink, a submodule, a file over the size readers accept
or one that does not parse is reported (once, in ``mailslot sync --status``) and skipped,
never written. A message file that is skipped leaves its seq taken on the remote, so a note
from sync stands at that seq here instead, and readers never wait on a gap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailslot.doctor.repair import placeholder
from mailslot.store.errors import InvalidName
from mailslot.store.format import (
    MESSAGE_NAME_RE,
    loads,
    max_message_file_bytes,
    message_name,
    parse_message,
)
from mailslot.store.names import check_name
from mailslot.sync.git import Change

#: The largest thread record or agent card taken (readers read at most this much of one).
MAX_RECORD_BYTES = 64 * 1024
REGULAR = ("100644", "100755")


@dataclass(slots=True)
class Incoming:
    """The remote's new files, sorted by what they are, with what was refused and why."""

    messages: dict[str, dict[int, str]] = field(default_factory=dict)  # thread -> seq -> blob
    records: dict[str, str] = field(default_factory=dict)  # thread -> blob of thread.json
    cards: dict[str, str] = field(default_factory=dict)  # agent -> blob of its card
    refused: dict[str, str] = field(default_factory=dict)  # path -> why

    def blobs(self) -> list[str]:
        """Return every blob this takes, once."""
        out = {b for seqs in self.messages.values() for b in seqs.values() if b}
        return sorted(out | set(self.records.values()) | set(self.cards.values()))

    def message(self, thread: str, seq: int, blobs: dict[str, bytes]) -> tuple[bytes, str | None]:
        """Return (the file to land at seq, why it is a note to remark, or None)."""
        blob = self.messages[thread][seq]
        if not blob:  # refused (and remarked) in sort: a note holds its seq all the same
            return note(self.refused[f"threads/{thread}/{message_name(seq)}"]), None
        return check_message(blobs.get(blob, b""), thread, seq)


def _where(path: str) -> tuple[str, str, int | None]:
    """Return (kind, name, seq) for a layout path; raise ValueError saying why it is not one."""
    parts = path.split("/")
    if len(parts) == 2 and parts[0] == "agents" and parts[1].endswith(".json"):
        return "card", check_name(parts[1][: -len(".json")], "agent name"), None
    if len(parts) == 3 and parts[0] == "threads":
        thread = check_name(parts[1], "thread id")
        if parts[2] == "thread.json":
            return "record", thread, None
        m = MESSAGE_NAME_RE.fullmatch(parts[2])
        if m and message_name(int(m.group(1))) == parts[2] and int(m.group(1)) > 0:
            return "message", thread, int(m.group(1))
    raise ValueError("not a file of the mailbox layout")


def sort(changes: list[Change], sizes: dict[str, tuple[str, int]], limit: int) -> Incoming:
    """Sort what a diff brought into what sync may take; limit: the largest message file."""
    out = Incoming()
    for c in changes:
        if c.status == "D":
            continue  # messages are never deleted: a deletion on the remote is not followed
        try:
            kind, name, seq = _where(c.path)
        except (ValueError, InvalidName) as e:
            out.refused[c.path] = str(e)
            continue
        found = sizes.get(c.blob)
        most = limit if kind == "message" else MAX_RECORD_BYTES
        if c.mode not in REGULAR:
            out.refused[c.path] = "not a regular file (a symlink or a submodule)"
        elif found is None or found[0] != "blob":
            out.refused[c.path] = "its content is missing from what was fetched"
        elif found[1] > most:
            out.refused[c.path] = f"{found[1]} bytes, over the {most} readers accept"
        if c.path in out.refused:
            if kind == "message":  # its seq is taken there: a note takes it here
                out.messages.setdefault(name, {})[seq or 0] = ""
        elif kind == "message":
            out.messages.setdefault(name, {})[seq or 0] = c.blob
        elif kind == "record":
            out.records[name] = c.blob
        else:
            out.cards[name] = c.blob
    return out


def message_limit(max_content_bytes: int) -> int:
    """Return the largest message file taken from a remote (what local readers accept)."""
    return max_message_file_bytes(max_content_bytes)


def check_message(data: bytes, thread: str, seq: int) -> tuple[bytes, str | None]:
    """Return (the file to land, None) for a readable message, or (a note, why) for one that
    is not: the note holds its seq here, as the remote's file holds it there."""
    try:
        parse_message(data, thread, seq)
        return data, None
    except ValueError as e:
        why = f"not a readable message: {e}"
    return note(why), why


def note(why: str) -> bytes:
    """Return a note from sync standing at the seq of a file of the remote it did not take."""
    text = (f"The remote's branch holds an unreadable file at this seq ({why}); mailslot sync "
            "skipped it and put this note here.")  # fmt: skip
    return placeholder(text, {"sync": "skipped"})


def check_record(data: bytes, thread: str) -> str | None:
    """Return why data is not a thread record of thread, or None if it is one."""
    try:
        doc = loads(data)
    except ValueError as e:
        return f"not a thread record: {e}"
    if not isinstance(doc, dict) or not isinstance(doc.get("topic"), str):
        return "not a thread record with a topic"
    if doc.get("id") not in (None, thread):
        return f"a thread record of another thread ({doc.get('id')!r})"
    return None


def check_card(data: bytes, name: str) -> str | None:
    """Return why data is not an agent card of name, or None if it is one."""
    try:
        doc = loads(data)
    except ValueError as e:
        return f"not an agent card: {e}"
    if not isinstance(doc, dict):
        return "not an agent card (not a JSON object)"
    if doc.get("name") not in (None, name):
        return f"the card of another agent ({doc.get('name')!r})"
    return None
