"""Files that git left with merge-conflict markers, split back into the two files it merged.

When two clones both write ``threads/<id>/000042.json`` (or both create the same thread) and
one merges the other, git reports an add/add conflict and writes one file holding both: lines
the two share appear once, lines that differ sit in blocks::

    <<<<<<< ours-label
    lines only ours has
    ||||||| base-label        (merge.conflictStyle=diff3 or zdiff3 only; empty for add/add)
    lines of the common base
    =======
    lines only theirs has
    >>>>>>> theirs-label

Markers are seven characters by default (more with the ``conflict-marker-size`` attribute;
every marker of one block has the length of its opening one). A canonical mailslot file never
has a line starting with ``<``, ``|``, ``=`` or ``>`` (it is indented JSON, and newlines inside
strings are escaped), so such lines are markers, not content.

``mailslot doctor --fix`` splits such a file back into both of its messages (``resolve``; a
conflicted ``thread.json`` keeps its earliest record, ``resolve_record``). That is the one repair
that rewrites a published message file, and only because git already did.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mailslot.doctor.repair import keep_copy, mark_rewound, note, placeholder, put, thread_lock
from mailslot.store.format import Message, dumps, loads, message_name, parse_message
from mailslot.store.roots import _git_top

_MIN_MARKER = 7
_KINDS = frozenset(b"<|=>")
_NAMES = {ord("<"): "<<<<<<<", ord("|"): "|||||||", ord("="): "=======", ord(">"): ">>>>>>>"}


def _marker(line: bytes) -> tuple[int, int] | None:
    """Return (kind byte, length) if line is a conflict marker line, else None."""
    if len(line) < _MIN_MARKER or line[0] not in _KINDS:
        return None
    body = line.rstrip(b"\r\n")
    kind = body[0]
    n = len(body) - len(body.lstrip(bytes([kind])))
    if n < _MIN_MARKER:
        return None
    rest = body[n:]
    if kind == ord("="):
        return (kind, n) if not rest.strip() else None
    # "<<<<<<< label", or no label at all (git merge-file without -L writes none).
    return (kind, n) if not rest or rest[:1] in (b" ", b"\t") else None


def conflict_sides(data: bytes) -> tuple[bytes, bytes] | None:
    """Return (ours, theirs) rebuilt from a file with git conflict markers; None if it has none.

    Each side is the common lines plus that side's blocks, with the line endings the file has
    (CRLF stays CRLF); diff3 base sections are dropped. A file counts as conflicted when a line
    opens a block (``<<<<<<< ``); after that every marker must be well formed, or ValueError
    says which line is wrong. Costs one substring search for a file without markers.
    """
    if b"<<<<<<<" not in data:
        return None
    lines = data.split(b"\n")
    # split() drops the newlines; put them back (the last piece has none, and may be empty).
    pieces = [line + b"\n" for line in lines[:-1]]
    if lines[-1]:
        pieces.append(lines[-1])
    if not any((m := _marker(p)) is not None and m[0] == ord("<") for p in pieces):
        return None  # "<<<<<<<" only inside a line: no conflict
    ours: list[bytes] = []
    theirs: list[bytes] = []
    state = "common"  # common -> ours -> (base ->) theirs -> common
    size = 0
    opened = 0
    for number, piece in enumerate(pieces, start=1):
        m = _marker(piece)
        if m is not None and state != "common" and m[1] != size:
            m = None  # a marker of another length inside a block is content of that block
        if m is None:
            if state in ("common", "ours"):
                ours.append(piece)
            if state in ("common", "theirs"):
                theirs.append(piece)
            continue
        kind, n = m
        where = f"line {number}: {_NAMES[kind]}"
        if state == "common":
            if kind != ord("<"):
                raise ValueError(f"malformed merge conflict markers: {where} outside a block")
            state, size, opened = "ours", n, number
        elif kind == ord("<"):
            raise ValueError(
                f"malformed merge conflict markers: {where} inside the block opened on line "
                f"{opened}"
            )
        elif state == "ours" and kind == ord("|"):
            state = "base"
        elif state in ("ours", "base") and kind == ord("="):
            state = "theirs"
        elif state == "theirs" and kind == ord(">"):
            state = "common"
        else:
            raise ValueError(
                f"malformed merge conflict markers: {where} out of order in the block opened on "
                f"line {opened}"
            )
    if state != "common":
        raise ValueError(
            f"malformed merge conflict markers: the file ends inside the block opened on line "
            f"{opened}"
        )
    return b"".join(ours), b"".join(theirs)


def record_of(data: bytes) -> dict[str, Any]:
    """Return the thread record in data; raise ValueError if it is not one."""
    doc = loads(data)
    if not isinstance(doc, dict) or not isinstance(doc.get("topic"), str):
        raise ValueError("no topic")
    return doc


def earliest_record(sides: tuple[bytes, bytes]) -> tuple[str, str, bytes]:
    """Return (created_at, created_by, bytes) of the side of a conflicted thread.json that wins.

    Raise ValueError if neither side is a thread record.
    """
    readable: list[tuple[str, str, bytes]] = []
    for side in sides:
        with contextlib.suppress(ValueError):
            doc = record_of(side)
            readable.append((str(doc.get("created_at", "")), str(doc.get("created_by", "")),
                             side))  # fmt: skip
    if not readable:
        raise ValueError("a merge conflict where neither side is a thread record")
    # The earliest record wins, ties broken by creator and then bytes: two machines
    # fixing the same conflict write the same file, so their next merge is clean.
    return min(readable)


def resolve_record(
    record: Path, winner: tuple[str, str, bytes], tmpdir: Path, quarantine: Path
) -> str:
    """Put the winning side in place of a conflicted thread.json; return what was done."""
    created_at, created_by, side = winner
    kept = keep_copy(record, quarantine, record.parent.name)
    put(record, side, tmpdir, replace=True)
    return (f"kept the record {created_by or '?'} made at {created_at or '?'}; "
            f"the conflicted file is in {kept}")  # fmt: skip


@dataclass
class Conflict:
    """A message file with conflict markers, its two sides, and what resolve decided."""

    seq: int
    path: Path
    sides: tuple[bytes, bytes]
    parsed: list[Message | str] = field(default_factory=list)  # per side: message, or why not
    stay: int | None = None  # the side that keeps the seq; None if neither side is readable
    done: list[str] = field(default_factory=list)  # what became of the other side
    fixed: str | None = None  # what resolve did, in a line

    def message(self, side: int) -> Message | None:
        """Return the message on side, or None if that side is not one."""
        m = self.parsed[side]
        return m if isinstance(m, Message) else None


def _runs(conflicts: list[Conflict]) -> Iterator[list[Conflict]]:
    """Yield the conflicts in runs of consecutive seqs (one divergence of two clones each)."""
    run: list[Conflict] = []
    for c in conflicts:
        if run and c.seq != run[-1].seq + 1:
            yield run
            run = []
        run.append(c)
    if run:
        yield run


def _choose(conflicts: list[Conflict], elsewhere: dict[str, int]) -> None:
    """Set each conflict's stay: the same side for a whole run, picked by the two messages."""
    for run in _runs(conflicts):
        side = 0
        for c in run:
            a, b = c.message(0), c.message(1)
            if a is not None and b is not None:
                # By the two messages, never by which clone is "ours": every machine that
                # fixes this merge keeps the same side.
                side = int((a.created_at, a.id, c.sides[0]) > (b.created_at, b.id, c.sides[1]))
                break
        for c in run:
            readable = [i for i in (0, 1) if c.message(i) is not None]
            # A side already stored elsewhere in the thread (published by an earlier fix that
            # was interrupted) must not keep this seq as well, or it would be there twice.
            fresh = [i for i in readable if getattr(c.message(i), "id", None) not in elsewhere]
            usable = fresh or readable
            c.stay = side if side in usable else (usable[0] if usable else None)


def moved_bytes(
    message: Message, seq: int, reply_to: int | None, reason: str = "merge conflict"
) -> bytes:
    """Return the file of message re-published away from seq, saying where it came from
    (reason: "merge conflict" for doctor, "sync" when the remote's order moved it)."""
    meta = dict(message.meta)
    moved: dict[str, Any] = {"seq": seq, "reason": reason}
    first = meta.get("moved_from")
    # Moved before: keep where it first stood, one level deep however often it moves (a chain
    # of records grew a level a move, and a message a busy sync moved 60 times nested past
    # what readers accept: it read as damaged). Older files may hold such a chain: its end.
    while isinstance(first, dict) and isinstance(first.get("previous"), dict):
        first = first["previous"]
    if isinstance(first, dict):
        moved["previous"] = {k: first[k] for k in ("seq", "reason") if k in first}
    meta["moved_from"] = moved
    # The signature stays: it covers neither the seq nor moved_from (store/signing.py).
    return dumps(replace(message, meta=meta, reply_to=reply_to).file_doc())


def _append(tdir: Path, data: bytes, tmpdir: Path, head: int, *, dry: bool = False) -> int:
    """Publish data as the first free seq after head, as a post claims one; return the seq
    (dry: only return the seq it would take now)."""
    seq = head + 1
    while os.path.lexists(tdir / message_name(seq)):
        seq += 1  # a writer posted since the thread was scanned
    while not dry and not put(tdir / message_name(seq), data, tmpdir, replace=False):
        seq += 1  # lost the seq to a writer that came in between: take the next one
    return seq


class _Split:
    """One thread's conflicted files being split, under its lock: where each side went."""

    def __init__(
        self, tdir: Path, tmpdir: Path, ids: dict[str, int], kept: dict[int, Path], dry: bool
    ) -> None:
        self.dry = dry  # only decide where each side would go, publishing nothing
        self.tdir = tdir
        self.thread = tdir.name
        self.tmpdir = tmpdir
        self.ids = ids  # message id -> its seq in the thread, kept up to date
        self.kept = kept  # conflicted seq -> where its conflicted file was copied
        self.head = max([*ids.values(), *kept])
        self.published = 0  # messages appended to the thread
        # Where each side's message at a conflicted seq is after the fix: (side, seq) -> seq.
        self.where: dict[tuple[int, int], int] = {}

    def _append(self, data: bytes) -> int:
        self.head = _append(self.tdir, data, self.tmpdir, self.head, dry=self.dry)
        self.published += 1
        return self.head

    def place(self, c: Conflict, side: int) -> None:
        """Decide where side's message at c.seq lives, re-publishing it at the end if it moves."""
        stay = c.message(c.stay) if c.stay is not None else None
        m = c.message(side)
        if side == c.stay:
            self.where[side, c.seq] = c.seq
        elif m is not None and m.id in self.ids:
            self.where[side, c.seq] = self.ids[m.id]
            c.done.append(f"{m.sender}'s {m.id} is already at seq {self.ids[m.id]}")
        elif m is not None and stay is not None and m.id == stay.id:
            self.where[side, c.seq] = c.seq
            c.done.append(f"both sides are {m.id}: kept one copy")
        elif m is not None:
            # reply_to means "seq r as my clone saw it". Where r is a conflicted seq, this
            # message answered its own side's message at r, which has moved if that side did
            # (a whole reply chain moves together): follow it there. A reply into the shared
            # history before the conflict needs nothing.
            reply = m.reply_to and self.where.get((side, m.reply_to), m.reply_to)
            self.where[side, c.seq] = self.ids[m.id] = self._append(moved_bytes(m, c.seq, reply))
            c.done.append(f"moved {m.sender}'s {m.id} to seq {self.head}")
        elif stay is not None:
            self.where[side, c.seq] = self._note_for(c, side)
            c.done.append(f"its unreadable side is a note at seq {self.where[side, c.seq]}")

    def _note_for(self, c: Conflict, side: int) -> int:
        """Return the seq of the note standing in for an unreadable side, appending it once."""
        # Its id comes from the bad side's bytes, so two machines that both make it end up
        # with one copy after their next merge and fix.
        note_id = "doctor-" + hashlib.sha256(c.sides[side]).hexdigest()[:26]
        if note_id not in self.ids:
            text = (f"Two clones both wrote message {c.seq}, and one of the two was unreadable "
                    f"({c.parsed[side]}); mailslot doctor kept the conflicted file at "
                    f".state/quarantine/{self.thread}/{self.kept[c.seq].name} and put this "
                    "note here.")  # fmt: skip
            moved = {"seq": c.seq, "reason": "merge conflict"}
            meta = {"doctor": "quarantined", "kept": str(self.kept[c.seq]), "moved_from": moved}
            self.ids[note_id] = self._append(note(note_id, text, meta))
        return self.ids[note_id]

    def settle(self, c: Conflict) -> None:
        """Replace the conflicted file by the side that stays, or by a note if neither can."""
        kept = self.kept[c.seq]
        stay = c.message(c.stay) if c.stay is not None else None
        if c.stay is None or stay is None:
            text = (f"Two clones both wrote message {c.seq}, and neither of the two is "
                    f"readable; mailslot doctor moved the conflicted file to "
                    f".state/quarantine/{self.thread}/{kept.name} and put this note in "
                    "its place.")  # fmt: skip
            put(c.path, placeholder(text, {"doctor": "quarantined", "kept": str(kept)}),
                self.tmpdir, replace=True)  # fmt: skip
            c.fixed = f"neither side is readable: kept in {kept}; a placeholder holds its seq"
            return
        # The one sanctioned rewrite of a message file: what git wrote becomes one side,
        # byte for byte as its clone published it, so that clone sees no change at all.
        put(c.path, c.sides[c.stay], self.tmpdir, replace=True)
        self.ids.setdefault(stay.id, c.seq)
        c.fixed = "; ".join([f"kept {stay.sender}'s {stay.id} here", *c.done,
                             f"conflicted file in {kept}"])  # fmt: skip


def resolve(
    tdir: Path, conflicts: list[Conflict], ids: dict[str, int], dirs: tuple[Path, Path, Path]
) -> int:
    """Split each conflicted message file of a thread back into both of its messages.

    Return how many messages were appended to the thread; each conflict's ``fixed`` says
    what became of it. ids maps the id of every readable message of the thread to its seq,
    and is kept up to date; dirs are the root's temp, quarantine and lock folders.

    Which side keeps the seq is decided per run of consecutive conflicted seqs (both clones
    posted from the same head on), not per file: the side whose first message has the
    smaller (created_at, id) keeps all its seqs, and the other side's messages are
    re-published after the thread's head, in their order. The choice depends only on the two
    messages, never on which clone is "ours", so two machines that fix the same merge write the
    same files and their next merge is clean. Keeping whole sides keeps each clone's
    conversation together, and the kept side's reply_to values stay true without touching its
    bytes (a choice per file could leave a kept reply pointing at the other clone's message
    that took its parent's seq).

    Every re-published message is claimed with the same no-replace link as a post, under the
    thread's lock, and all of them before any conflicted file is replaced: a fix killed at any
    point loses nothing, and the next run finds the messages it already moved by their ids.

    Left as it is: when one clone posted more than the other, its extra messages merge cleanly
    after the run and stay where they are. If the other clone's side keeps the run, a reply
    among those extras that pointed into the run now points at the kept side's message: those
    files are not conflicted, and only git's history tells which clone wrote them.
    """
    tmpdir, quarantine, locks = dirs
    thread = tdir.name
    for c in conflicts:
        for data in c.sides:
            try:
                c.parsed.append(parse_message(data, thread, c.seq))
            except ValueError as e:
                c.parsed.append(str(e))
    _choose(conflicts, ids)
    with thread_lock(locks, thread):
        kept = {c.seq: keep_copy(c.path, quarantine, thread) for c in conflicts}
        return _split(tdir, conflicts, ids, kept, tmpdir)


def _split(
    tdir: Path, conflicts: list[Conflict], ids: dict[str, int], kept: dict[int, Path], tmpdir: Path
) -> int:
    """Split the conflicts of resolve, holding the thread's lock; return what it appended.

    Agents of this machine may have read past these seqs when they held this clone's
    messages; the other clone's stand there after the split. Their positions go back
    (repair.mark_rewound), and skip what they were shown where it now is. The mark is
    written before anything moves, from a dry run of the split, so an agent waiting past
    these seqs never meets a moved message before the mark that says where it came from; if
    a writer took a seq meanwhile, a second mark says where things went instead.
    """
    root = tdir.parent.parent
    local = _local_side(root)
    plan = _Split(tdir, tmpdir, dict(ids), kept, dry=True)
    for c in conflicts:
        for side in (0, 1):
            plan.place(c, side)
        c.done.clear()
    start, planned = _where_now(conflicts, plan, local)
    mark_rewound(root, tdir.name, start, planned, tmpdir)
    split = _Split(tdir, tmpdir, ids, kept, dry=False)
    for c in conflicts:
        for side in (0, 1):
            split.place(c, side)
    for c in conflicts:
        split.settle(c)
    where = _where_now(conflicts, split, local)[1]
    if any(where[old] != new for old, new in planned.items()):
        # What the first mark said stands at planned[old] is at where[old]; every other seq
        # from start on holds what an agent may have been shown there since the split.
        again = {seq: seq for seq in range(start, split.head + 1)}
        mark_rewound(
            root, tdir.name, start, again | {planned[o]: where[o] for o in planned}, tmpdir
        )
    return split.published


def _local_side(root: Path) -> int | None:
    """Return the side of a conflicted file that holds this clone's messages, which its agents
    may have been shown: 0 ("ours"), or None during a rebase (its "ours" is the branch this
    clone is rebased onto, checked out before this clone's posts are replayed, so agents here
    may have been shown either side)."""
    top = _git_top(root.resolve())
    if top is None:
        return 0
    gitdir = top[0] / ".git"
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if gitdir.is_file():  # a linked worktree or a submodule: "gitdir: <path>"
            gitdir = top[0] / gitdir.read_text(encoding="utf-8").removeprefix("gitdir:").strip()
    rebasing = (gitdir / "rebase-merge").is_dir() or (gitdir / "rebase-apply" / "rebasing").exists()
    return None if rebasing else 0


def _where_now(
    conflicts: list[Conflict], split: _Split, local: int | None
) -> tuple[int, dict[int, int]]:
    """Return the first rewritten seq, and where each message this clone had from there on
    stands now (see repair.mark_rewound): the local side's at the conflicted seqs (none when
    local is None: which one agents were shown is unknown), and every other seq as it is (a
    file the fix did not rewrite holds what it held whenever an agent was shown it)."""
    start = min(c.seq for c in conflicts)
    where = {seq: seq for seq in range(start, split.head + 1)}
    for c in conflicts:
        del where[c.seq]
        if local is not None and c.message(local) is not None:
            where[c.seq] = split.where[local, c.seq]
    return start, where
