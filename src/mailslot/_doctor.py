"""Checking a mailbox folder, and repairing what is safe to repair.

Repairs never delete a message and never leave a gap (a gap is reported to every reader, and
writers never refill it): a corrupt message file is moved to ``.state/quarantine/`` and a
placeholder ``error`` message from ``mailslot`` takes its number, saying where the original
went; a missing seq gets the same kind of placeholder. A message file that git left with
merge-conflict markers (two clones both wrote that seq) is split back into its two messages:
one keeps the seq, the other is re-published at the end of the thread (see _resolve). That is
the one repair that rewrites a published message file, and only because git already did.
Everything else is reported only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import portalocker

from mailslot._conflict import conflict_sides
from mailslot._errors import MailslotError
from mailslot._files import HOST
from mailslot._format import (
    FORMAT,
    MESSAGE_KEYS,
    MESSAGE_NAME_RE,
    Message,
    dumps,
    loads,
    max_message_file_bytes,
    message_name,
    now_iso,
    parse_message,
)
from mailslot._names import NAME_PATTERN
from mailslot._presence import DEFAULT_STALE_AFTER
from mailslot._roots import _git_top
from mailslot._settings import Settings
from mailslot._watch import filesystem_type, is_network_fs

_NAME_RE = re.compile(NAME_PATTERN)
DOCTOR = "mailslot"
NO_LINKS = (
    "hard links do not work here, so posts fail: move the mailbox to a filesystem with hard "
    'links, or accept the risk with "claim": "exclusive-create" in mailslot.json (exclusive '
    "creates that some network clients, such as smbnetfs, do not honour across machines)"
)
NO_LOCKS = (
    "file locks do not exclude here: the link claim still keeps messages safe, but writers "
    "collide more"
)
GAP = (
    "missing while seq {head} exists: deleted, not synced yet, or lost in a merge. Readers wait "
    "for it for grace_s after a later file appeared, then report it and go on; restore it "
    "(git checkout / git log --all -- <path>) if you can, or --fix fills it with a placeholder"
)
SYMLINKED = "a thread folder that is a symlink is refused; replace it with a folder"
LEFT_TEMP = "left by a writer that was interrupted (it never became a message)"
CONFLICT = (
    "merge conflict: two clones both wrote seq {seq} and git joined their two messages into "
    "one file with conflict markers, which readers stop at; --fix keeps both: this seq keeps "
    "one of them (the same one on every machine), the other is re-published at the end of the "
    "thread with meta.moved_from, and the conflicted file goes to .state/quarantine/{thread}/"
)
CONFLICT_RECORD = (
    "merge conflict: two clones both created thread {thread} and git joined their two "
    "thread.json files into one with conflict markers; --fix keeps the record created first "
    "(the same on every machine) and moves the conflicted file to .state/quarantine/{thread}/"
)


@dataclass
class Finding:
    """One thing doctor noticed: what kind, where, what it means, and what --fix did."""

    kind: str
    path: str
    detail: str
    fixed: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the finding as a JSON-able dict."""
        return {"kind": self.kind, "path": self.path, "detail": self.detail, "fixed": self.fixed}


@dataclass
class Report:
    """What doctor found in a root, and what the filesystem under it can do."""

    root: str
    filesystem: str | None = None
    network: bool = False
    wait_mode: str | None = None
    hard_links: bool | None = None
    locks: bool | None = None
    threads: int = 0
    messages: int = 0
    findings: list[Finding] = field(default_factory=list)
    #: The top of the git work tree holding the root, if it is in one.
    git_work_tree: str | None = None

    @property
    def healthy(self) -> bool:
        """Return True if nothing is left unfixed."""
        return all(f.fixed for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-able dict."""
        return {
            "root": self.root,
            "healthy": self.healthy,
            "filesystem": self.filesystem,
            "network": self.network,
            "wait_mode": self.wait_mode,
            "hard_links": self.hard_links,
            "locks": self.locks,
            "threads": self.threads,
            "messages": self.messages,
            "git_work_tree": self.git_work_tree,
            "findings": [f.to_dict() for f in self.findings],
        }


def temp_path(tmpdir: Path, what: str, *, pid: int | None = None) -> Path:
    """Return a fresh name for a temp file of doctor's (pid: the writing process, default us).

    Named ``<host>.<pid>.doctor-<what>.<hex>`` like the store's own temp files, so that when
    doctor is killed mid-write the next sweep (Mailbox.sweep_tmp) sees a dead writer of this
    host and removes the file, instead of reporting it for an hour.
    """

    pid = os.getpid() if pid is None else pid
    return tmpdir / f"{HOST}.{pid}.doctor-{what}.{secrets.token_hex(6)}"


def _probe_links(tmp: Path) -> bool:
    a = temp_path(tmp, "probe")
    b = a.with_name(a.name + ".link")
    try:
        a.write_bytes(b"probe")
        os.link(a, b)
        ok = os.stat(a).st_nlink == 2
        try:
            os.link(a, b)
            ok = False  # a link onto an existing name must fail, or claims are unsafe
        except FileExistsError:
            pass
        return ok
    except OSError:
        return False
    finally:
        for p in (a, b):
            with contextlib.suppress(OSError):
                p.unlink()


def _probe_locks(locks: Path) -> bool:
    path = locks / "doctor-probe.lock"  # lock files are never deleted: this one stays too
    try:
        first = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        second = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        portalocker.lock(
            first, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING
        )
        try:
            portalocker.lock(
                second, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING
            )
        except portalocker.AlreadyLocked:
            return True
        return False  # two locks on one file at once: locks do not exclude here
    except portalocker.LockException:
        return False
    finally:
        os.close(second)
        os.close(first)


def _note(message_id: str, detail: str, meta: dict[str, Any]) -> bytes:
    doc: dict[str, Any] = dict(
        zip(
            MESSAGE_KEYS,
            (message_id, DOCTOR, [], "error", "normal", None, now_iso(), detail, meta),
            strict=True,
        )
    )
    return dumps(doc)


def _placeholder(detail: str, meta: dict[str, Any]) -> bytes:
    return _note("doctor-" + secrets.token_hex(13), detail, meta)


def _put(path: Path, data: bytes, tmpdir: Path, *, replace: bool) -> bool:
    """Write data at path via a fsynced temp file: replacing it, or only if the name is free.

    Return False if replace is off and the name is taken (another writer has it).
    """
    tmp = temp_path(tmpdir, "put")
    try:
        with tmp.open("xb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except PermissionError:
                if os.path.lexists(path):  # sshfs reports a lost link race as EPERM
                    return False
                raise
        with contextlib.suppress(OSError):
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return True
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


@contextlib.contextmanager
def _thread_lock(locks: Path, thread: str) -> Iterator[None]:
    """Hold the thread's lock file, as Mailbox._locked does, so local writers wait for us."""
    # Lock files are never deleted: a writer blocked on a deleted file's lock would hold a lock
    # nobody else sees. If the lock cannot be opened, go on: the no-replace link claim is what
    # keeps seqs unique, the lock only keeps this machine's writers orderly.
    try:
        fd = os.open(locks / f"{thread}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        portalocker.lock(fd, portalocker.LockFlags.EXCLUSIVE)
        try:
            yield
        finally:
            portalocker.unlock(fd)
    finally:
        os.close(fd)


def _quarantine(path: Path, quarantine: Path, thread: str) -> Path:
    """Keep a copy of path under .state/quarantine/<thread>/ and return where it went."""
    (quarantine / thread).mkdir(parents=True, exist_ok=True)
    kept = quarantine / thread / f"{path.name}.{secrets.token_hex(4)}"
    os.link(path, kept)
    return kept


def _message_limit(root: Path) -> int:
    """Return the size of the largest message file readers of root accept."""

    config = root / "mailslot.json"
    try:
        settings = Settings.from_json(loads(config.read_bytes()), config)
    except (OSError, ValueError, AttributeError, MailslotError):
        settings = Settings()  # _check_config reports the config; judge messages by defaults
    return max_message_file_bytes(settings.max_content_bytes)


def _check_config(root: Path, report: Report) -> bool:
    config = root / "mailslot.json"
    try:
        doc = loads(config.read_bytes())
    except FileNotFoundError:
        report.findings.append(Finding("config", str(config), "missing: not a mailbox root"))
        return False
    except (OSError, ValueError) as e:
        report.findings.append(Finding("config", str(config), f"unreadable: {e}"))
        return False
    fmt = doc.get("format") if isinstance(doc, dict) else None
    if fmt != FORMAT:
        detail = (
            f"format {fmt!r}: written by a newer mailslot; upgrade before writing here"
            if isinstance(fmt, int) and fmt > FORMAT
            else f"format {fmt!r} is not {FORMAT}"
        )
        report.findings.append(Finding("format", str(config), detail))  # fmt: skip
        return False
    return True


def _record_of(data: bytes) -> dict[str, Any]:
    """Return the thread record in data; raise ValueError if it is not one."""
    doc = loads(data)
    if not isinstance(doc, dict) or not isinstance(doc.get("topic"), str):
        raise ValueError("no topic")
    return doc


def _check_record(tdir: Path, report: Report, fix: bool, tmpdir: Path, quarantine: Path) -> None:
    thread = tdir.name
    record = tdir / "thread.json"
    try:
        data = record.read_bytes()
        sides = conflict_sides(data)
        if sides is None:
            _record_of(data)
            return
        readable: list[tuple[str, str, bytes]] = []
        for side in sides:
            with contextlib.suppress(ValueError):
                doc = _record_of(side)
                readable.append((str(doc.get("created_at", "")), str(doc.get("created_by", "")),
                                 side))  # fmt: skip
        if not readable:
            raise ValueError("a merge conflict where neither side is a thread record")
    except (OSError, ValueError) as e:
        finding = Finding("thread record", str(record), f"missing or unreadable ({e})")
        if fix:
            data = dumps(
                {"id": thread, "topic": thread, "created_by": DOCTOR, "created_at": now_iso()}
            )
            if record.exists():
                _quarantine(record, quarantine, thread)
            _put(record, data, tmpdir, replace=record.exists())
            finding.fixed = "wrote a new thread.json with the id as its topic"
        report.findings.append(finding)
        return
    finding = Finding("conflict", str(record), CONFLICT_RECORD.format(thread=thread))
    if fix:
        # The earliest record wins, ties broken by creator and then bytes: two machines
        # fixing the same conflict write the same file, so their next merge is clean.
        created_at, created_by, side = min(readable)
        kept = _quarantine(record, quarantine, thread)
        _put(record, side, tmpdir, replace=True)
        finding.fixed = (f"kept the record {created_by or '?'} made at {created_at or '?'}; "
                         f"the conflicted file is in {kept}")  # fmt: skip
    report.findings.append(finding)


@dataclass
class _Conflict:
    """A message file with conflict markers, its two sides, and what --fix decided."""

    seq: int
    path: Path
    sides: tuple[bytes, bytes]
    finding: Finding
    parsed: list[Message | str] = field(default_factory=list)  # per side: message, or why not
    stay: int | None = None  # the side that keeps the seq; None if neither side is readable
    done: list[str] = field(default_factory=list)  # what became of the other side

    def message(self, side: int) -> Message | None:
        """Return the message on side, or None if that side is not one."""
        m = self.parsed[side]
        return m if isinstance(m, Message) else None


def _runs(conflicts: list[_Conflict]) -> Iterator[list[_Conflict]]:
    """Yield the conflicts in runs of consecutive seqs (one divergence of two clones each)."""
    run: list[_Conflict] = []
    for c in conflicts:
        if run and c.seq != run[-1].seq + 1:
            yield run
            run = []
        run.append(c)
    if run:
        yield run


def _choose(conflicts: list[_Conflict], elsewhere: dict[str, int]) -> None:
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


def _moved_bytes(message: Message, seq: int, reply_to: int | None) -> bytes:
    """Return the file of message re-published away from seq, saying where it came from."""
    meta = dict(message.meta)
    moved: dict[str, Any] = {"seq": seq, "reason": "merge conflict"}
    if "moved_from" in meta:  # moved before: keep that record too, inside the new one
        moved["previous"] = meta["moved_from"]
    meta["moved_from"] = moved
    values = (message.id, message.sender, message.to, message.type, message.priority, reply_to,
              message.created_at, message.content, meta)  # fmt: skip
    return dumps(dict(zip(MESSAGE_KEYS, values, strict=True)))


def _append(tdir: Path, data: bytes, tmpdir: Path, head: int) -> int:
    """Publish data as the first free seq after head, as a post claims one; return the seq."""
    seq = head + 1
    while os.path.lexists(tdir / message_name(seq)):
        seq += 1  # a writer posted since the thread was scanned
    while not _put(tdir / message_name(seq), data, tmpdir, replace=False):
        seq += 1  # lost the seq to a writer that came in between: take the next one
    return seq


def _resolve(
    tdir: Path,
    conflicts: list[_Conflict],
    ids: dict[str, int],
    dirs: tuple[Path, Path, Path],
    report: Report,
) -> None:
    """Split each conflicted message file of a thread back into both of its messages.

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
    with _thread_lock(locks, thread):
        kept = {c.seq: _quarantine(c.path, quarantine, thread) for c in conflicts}
        head = max([*ids.values(), *kept])
        # Where each side's message at a conflicted seq is after the fix: (side, seq) -> seq.
        where: dict[tuple[int, int], int] = {}
        for c in conflicts:
            stay = c.message(c.stay) if c.stay is not None else None
            for side in (0, 1):
                m = c.message(side)
                if side == c.stay:
                    where[side, c.seq] = c.seq
                elif m is not None and m.id in ids:
                    where[side, c.seq] = ids[m.id]
                    c.done.append(f"{m.sender}'s {m.id} is already at seq {ids[m.id]}")
                elif m is not None and stay is not None and m.id == stay.id:
                    where[side, c.seq] = c.seq
                    c.done.append(f"both sides are {m.id}: kept one copy")
                elif m is not None:
                    # reply_to means "seq r as my clone saw it". Where r is a conflicted seq,
                    # this message answered its own side's message at r, which has moved if
                    # that side did (a whole reply chain moves together): follow it there. A
                    # reply into the shared history before the conflict needs nothing.
                    reply = m.reply_to and where.get((side, m.reply_to), m.reply_to)
                    head = _append(tdir, _moved_bytes(m, c.seq, reply), tmpdir, head)
                    where[side, c.seq] = ids[m.id] = head
                    report.messages += 1
                    c.done.append(f"moved {m.sender}'s {m.id} to seq {head}")
                elif stay is not None:
                    # This side is not a message: a note stands in for it at the end. Its id
                    # comes from the bad side's bytes, so two machines that both make it end
                    # up with one copy after their next merge and fix.
                    note_id = "doctor-" + hashlib.sha256(c.sides[side]).hexdigest()[:26]
                    if note_id not in ids:
                        text = (f"Two clones both wrote message {c.seq}, and one of the two "
                                f"was unreadable ({c.parsed[side]}); mailslot doctor kept the "
                                f"conflicted file at .state/quarantine/{thread}/"
                                f"{kept[c.seq].name} and put this note here.")  # fmt: skip
                        moved = {"seq": c.seq, "reason": "merge conflict"}
                        meta = {
                            "doctor": "quarantined",
                            "kept": str(kept[c.seq]),
                            "moved_from": moved,
                        }
                        head = _append(tdir, _note(note_id, text, meta), tmpdir, head)
                        ids[note_id] = head
                        report.messages += 1
                    where[side, c.seq] = ids[note_id]
                    c.done.append(f"its unreadable side is a note at seq {ids[note_id]}")
        for c in conflicts:
            stay = c.message(c.stay) if c.stay is not None else None
            if c.stay is None or stay is None:
                text = (f"Two clones both wrote message {c.seq}, and neither of the two is "
                        f"readable; mailslot doctor moved the conflicted file to "
                        f".state/quarantine/{thread}/{kept[c.seq].name} and put this note in "
                        "its place.")  # fmt: skip
                note = _placeholder(text, {"doctor": "quarantined", "kept": str(kept[c.seq])})
                _put(c.path, note, tmpdir, replace=True)
                c.finding.fixed = (f"neither side is readable: kept in {kept[c.seq]}; a "
                                   "placeholder holds its seq")  # fmt: skip
                continue
            # The one sanctioned rewrite of a message file: what git wrote becomes one side,
            # byte for byte as its clone published it, so that clone sees no change at all.
            _put(c.path, c.sides[c.stay], tmpdir, replace=True)
            ids.setdefault(stay.id, c.seq)
            c.finding.fixed = "; ".join([f"kept {stay.sender}'s {stay.id} here", *c.done,
                                         f"conflicted file in {kept[c.seq]}"])  # fmt: skip
    # The thread's summary cache (.state/index/) was built from what this clone had at these
    # seqs: drop it, and it is rebuilt from the files on the next look.
    with contextlib.suppress(OSError):
        (tdir.parent.parent / ".state" / "index" / f"{thread}.json").unlink()


def _check_thread(
    tdir: Path, report: Report, fix: bool, tmpdir: Path, quarantine: Path, locks: Path
) -> None:
    thread = tdir.name
    _check_record(tdir, report, fix, tmpdir, quarantine)
    limit = _message_limit(tdir.parent.parent)
    seqs: dict[int, str] = {}
    for entry in sorted(os.listdir(tdir)):
        m = MESSAGE_NAME_RE.fullmatch(entry)
        if entry == "thread.json":
            continue
        if not m or message_name(int(m.group(1))) != entry:
            report.findings.append(Finding("foreign file", str(tdir / entry),
                                           "not a message file; readers ignore it"))  # fmt: skip
            continue
        seqs[int(m.group(1))] = entry
    ids: dict[str, int] = {}
    conflicts: list[_Conflict] = []
    head = max(seqs, default=0)
    for seq in range(1, head + 1):
        path = tdir / message_name(seq)
        if seq not in seqs:
            finding = Finding("gap", str(path), GAP.format(seq=seq, head=head))
            if fix:
                text = (f"Message {seq} was missing from this thread; mailslot doctor put this "
                        "note in its place.")  # fmt: skip
                if _put(path, _placeholder(text, {"doctor": "gap"}), tmpdir, replace=False):
                    finding.fixed = "filled with a placeholder so readers can pass"
            report.findings.append(finding)
            continue
        report.messages += 1
        try:
            if path.is_symlink():
                raise ValueError("is a symlink; messages are real files")
            data = path.read_bytes()
            sides = conflict_sides(data)
            if sides is not None:
                finding = Finding("conflict", str(path), CONFLICT.format(seq=seq, thread=thread))
                conflicts.append(_Conflict(seq, path, sides, finding))
                report.findings.append(finding)
                continue
            if len(data) > limit:  # as Mailbox._load: readers skip it unread
                raise ValueError(f"is {len(data)} bytes, too large to be a message (limit {limit})")
            message = parse_message(data, thread, seq)
        except (OSError, ValueError) as e:
            finding = Finding("corrupt message", str(path), str(e))
            if fix:
                (quarantine / thread).mkdir(parents=True, exist_ok=True)
                kept = quarantine / thread / f"{path.name}.{secrets.token_hex(4)}"
                os.replace(path, kept) if path.is_symlink() else os.link(path, kept)
                text = (f"Message {seq} was unreadable ({e}); mailslot doctor moved it to "
                        f".state/quarantine/{thread}/{kept.name} and put this note in its "
                        "place.")  # fmt: skip
                _put(path, _placeholder(text, {"doctor": "quarantined", "kept": str(kept)}),
                     tmpdir, replace=True)  # fmt: skip
                finding.fixed = f"kept in {kept}; a placeholder holds its seq"
            report.findings.append(finding)
            continue
        if message.id in ids:
            again = f"same id as message {ids[message.id]} (a copy?)"
            report.findings.append(Finding("duplicate", str(path), again))
        ids[message.id] = seq
    if fix and conflicts:
        _resolve(tdir, conflicts, ids, (tmpdir, quarantine, locks), report)


def diagnose(root: Path, *, fix: bool = False, stale_after: float = DEFAULT_STALE_AFTER) -> Report:
    """Return what is wrong in the mailbox at root, repairing what is safe if fix is set."""
    from mailslot.mailbox import Mailbox  # the store's own view, for sweeping and presence

    root = root.resolve()
    report = Report(str(root), filesystem_type(root))
    report.network = is_network_fs(report.filesystem)
    git = _git_top(root)
    report.git_work_tree = str(git[0]) if git else None
    if not root.is_dir():
        report.findings.append(Finding("root", str(root), "no such folder: run mailslot init"))
        return report
    config_ok = _check_config(root, report)
    ignore = root / ".gitignore"
    try:
        ignored = ".state/" in ignore.read_text(encoding="utf-8").splitlines()
    except OSError:
        ignored = False
    if not ignored:
        finding = Finding(
            "gitignore", str(ignore), ".state/ is not ignored: per-machine files would be committed"
        )
        if fix:
            with ignore.open("a", encoding="utf-8") as out:
                out.write("\n.state/\n")
            finding.fixed = "added .state/ to .gitignore"
        report.findings.append(finding)
    state = root / ".state"
    tmpdir, locks, quarantine = state / "tmp", state / "locks", state / "quarantine"
    for d in (tmpdir, locks):
        with contextlib.suppress(OSError):
            d.mkdir(parents=True, exist_ok=True)
    report.hard_links = _probe_links(tmpdir)
    report.locks = _probe_locks(locks)
    if not report.hard_links:
        report.findings.append(Finding("filesystem", str(root), NO_LINKS))
    if not report.locks:
        report.findings.append(Finding("filesystem", str(root), NO_LOCKS))
    threads = root / "threads"
    for entry in sorted(os.listdir(threads)) if threads.is_dir() else []:
        tdir = threads / entry
        if tdir.is_symlink():
            report.findings.append(Finding("symlink", str(tdir), SYMLINKED))
        elif not (_NAME_RE.fullmatch(entry) and tdir.is_dir()):
            report.findings.append(Finding("foreign file", str(tdir), "not a thread; ignored"))
        else:
            report.threads += 1
            _check_thread(tdir, report, fix, tmpdir, quarantine, locks)
    if not config_ok:
        return report
    try:
        box = Mailbox(root, sweep=False)  # a report changes nothing; --fix sweeps below
    except MailslotError as e:
        report.findings.append(Finding("root", str(root), str(e)))
        return report
    report.wait_mode = box.wait_mode
    for entry in sorted(os.listdir(tmpdir)) if tmpdir.is_dir() else []:
        report.findings.append(Finding("temp file", str(tmpdir / entry), LEFT_TEMP))
    if fix:
        swept = {str(p) for p in box.sweep_tmp()}
        for f in report.findings:
            if f.kind == "temp file" and f.path in swept:
                f.fixed = "removed"
    for p in box.presences(stale_after=stale_after):
        path = root / ".state" / "presence" / f"{p.agent}.json"
        try:
            said = loads(path.read_bytes()).get("status")
        except (OSError, ValueError, AttributeError):
            said = None
        if said in ("online", "waiting") and p.status == "offline":
            finding = Finding(
                "stale presence", str(path), f"{p.agent} says {said} but its process is gone"
            )
            if fix:
                doc = loads(path.read_bytes())
                doc["status"] = "offline"
                _put(path, dumps(doc), tmpdir, replace=True)
                finding.fixed = "marked offline"
            report.findings.append(finding)
    for name in sorted(os.listdir(root / "agents")) if (root / "agents").is_dir() else []:
        with contextlib.suppress(MailslotError, ValueError):
            if name.endswith(".json"):
                box.agent(name[: -len(".json")])
                continue
        report.findings.append(Finding("agent card", str(root / "agents" / name),
                                       "not a readable agent card"))  # fmt: skip
    return report
