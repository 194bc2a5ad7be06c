"""One thread brought in step with the remote: its new messages landed, ours moved after them.

The remote's order decides (first pushed keeps its seqs, as for a task claim): the messages
the remote has after what both sides share take their seqs here too, and this clone's messages
that were not pushed yet move after them, in their order, unchanged but for
``meta.moved_from`` (``{"seq": old, "reason": "sync"}``) and a ``reply_to`` that followed a
moved message. Everything happens under the thread's lock, so local writers wait, and every
file is written through a fsynced temp file: new names with the no-replace link a post uses,
new names from the lowest seq up (a round cut short, by a full disk, leaves no gap), then
rewritten ones with an atomic rename, from the highest seq down. A round killed at any point
leaves each message at least once; the next round finds the copies by their ids and keeps
the first, so nothing is lost and nothing stays twice. Readers of this machine that had been
shown the moved messages are sent back to where the rewrite began (a rewind mark, as after
``mailslot doctor --fix``), and are not shown a moved message again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mailslot.doctor.conflict import moved_bytes
from mailslot.doctor.repair import mark_rewound, placeholder, put
from mailslot.store.errors import MailslotError
from mailslot.store.files import Files
from mailslot.store.format import Message, message_name, parse_message

#: Seqs a writer may have skipped: the local head is looked for this far past a missing file.
LOOK_AHEAD = 16


class NotReady(MailslotError):
    """A local file of the thread is still being written (or unreadable): try next round."""


@dataclass(slots=True)
class Outcome:
    """What bringing one thread in step did."""

    known: int  # the seq up to which this clone and the remote now agree
    push: list[tuple[int, bytes]] = field(default_factory=list)  # ours, not yet on the remote
    landed: int = 0  # the remote's messages written here
    moved: dict[int, int] = field(default_factory=dict)  # ours that moved: old seq -> new seq
    #: Where each message this clone had after the shared seqs stands now (old seq -> seq),
    #: those that stayed and those the remote already had included: the rewind mark's map.
    where: dict[int, int] = field(default_factory=dict)
    claims: list[Message] = field(default_factory=list)  # our task claims that moved


def place(files: Files, path: Path, data: bytes, *, replace: bool) -> bool:
    """Write data at path through a temp file (fsynced if the root says so): replacing it, or
    only if the name is free (False if another writer has it). Doctor's put, with the root's
    fsync setting."""
    return put(path, data, files.dir(".state/tmp"), replace=replace, fsync=files.settings.fsync)


def local_after(tdir: Path, known: int) -> list[tuple[int, bytes]]:
    """Return this clone's message files after seq known, in order, as bytes.

    Looks LOOK_AHEAD names past a missing seq, as a writer does, so a gap a foreign writer
    left does not hide what lies after it. Raise NotReady at a file that is empty or does not
    parse yet: what follows it waits for the next round.
    """
    out: list[tuple[int, bytes]] = []
    seq, misses = known + 1, 0
    while misses <= LOOK_AHEAD:
        try:
            with open(tdir / message_name(seq), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            misses += 1
            seq += 1
            continue
        except OSError as e:
            raise NotReady(f"{tdir.name}/{message_name(seq)} cannot be read: {e.strerror}") from e
        if misses:
            raise NotReady(f"thread {tdir.name} has a gap before {message_name(seq)}")
        try:
            parse_message(data, tdir.name, seq)
        except ValueError as e:
            raise NotReady(f"{tdir.name}/{message_name(seq)} is not readable yet: {e}") from e
        out.append((seq, data))
        seq += 1
    return out


def _ids(files: dict[int, bytes], thread: str) -> dict[int, Message]:
    return {s: parse_message(b, thread, s) for s, b in files.items()}


def integrate(files: Files, tdir: Path, known: int, remote: dict[int, bytes]) -> Outcome:
    """Bring thread folder tdir in step with the remote's messages after seq known.

    remote maps each seq the remote has after known to its (checked) file. The caller holds
    the thread's lock. Return what was landed, moved, and what of ours is left to push.
    """
    thread = tdir.name
    local = local_after(tdir, known)
    shared = known
    for seq, data in local:  # what both already have (a push whose answer was lost)
        if remote.get(seq) != data:
            break
        shared = seq
    rest = {s: b for s, b in remote.items() if s > shared}
    ours = {s: b for s, b in local if s > shared}
    if not rest:
        return Outcome(known=shared, push=list(ours.items()))
    final, out = _order(thread, shared, rest, ours)
    if _write(files, tdir, final, ours, rest, out):
        mark_rewound(files.root, thread, shared + 1, out.where, files.dir(".state/tmp"))
    return out


def _order(
    thread: str, shared: int, rest: dict[int, bytes], ours: dict[int, bytes]
) -> tuple[dict[int, bytes], Outcome]:
    """Return the thread's files after shared as they must be (the remote's first, then ours
    in their order, moved), and the outcome that says what moved and what is left to push."""
    taken = {m.id: s for s, m in _ids(rest, thread).items()}
    keep: list[tuple[int, Message, bytes]] = []
    where: dict[int, str] = {}  # our old seq -> the id that stood there
    for seq, data in ours.items():
        m = parse_message(data, thread, seq)
        where[seq] = m.id
        if m.id in taken or any(m.id == k[1].id for k in keep):
            continue  # already the remote's, or a copy an interrupted round left
        keep.append((seq, m, data))
    top = max(rest)
    final = dict(rest)
    new_seq = {m.id: top + i for i, (_, m, _) in enumerate(keep, start=1)}
    out = Outcome(known=top)
    for seq, m, data in keep:
        target = new_seq[m.id]
        if target == seq:
            final[target] = data
            continue
        reply = m.reply_to
        if reply is not None and reply > shared and where.get(reply) in new_seq:
            reply = new_seq[where[reply]]
        final[target] = moved_bytes(m, seq, reply, "sync")
        out.moved[seq] = target
        if m.type == "status" and isinstance(m.meta.get("task"), dict):
            out.claims.append(m)
    out.push = [(s, final[s]) for s in sorted(final) if s > top]
    out.where = {s: new_seq.get(i, taken.get(i, s)) for s, i in where.items()}
    for seq in ours:  # a seq the remote skipped (it has later ones): ours moved, a note stays
        if seq <= top and seq not in final:
            final[seq] = placeholder(
                f"The remote has no message {seq} in this thread (it has later ones); this "
                "clone's message that stood here moved to the end of the thread.",
                {"sync": "gap"},
            )
    return final, out


def _write(
    files: Files,
    tdir: Path,
    final: dict[int, bytes],
    ours: dict[int, bytes],
    rest: dict[int, bytes],
    out: Outcome,
) -> bool:
    """Write final over the thread (new names lowest seq first, then rewritten ones highest
    first: see the module docstring); return True if a file was rewritten."""
    head = max(ours, default=0)
    rewritten = False
    new = sorted(s for s in final if s > head)
    for seq in new + sorted((s for s in final if s <= head), reverse=True):
        data = final[seq]
        if ours.get(seq) == data:
            continue
        path = tdir / message_name(seq)
        if seq > head:
            if not place(files, path, data, replace=False):
                raise NotReady(f"a writer took {tdir.name}/{path.name} meanwhile")
        else:
            place(files, path, data, replace=True)
            rewritten = True
        out.landed += seq in rest
    return rewritten
