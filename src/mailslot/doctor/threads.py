"""Doctor's checks of threads and their messages, and the repairs that are safe.

Repairs never delete a message and never leave a gap (a gap is reported to every reader, and
writers never refill it): a corrupt message file is moved to ``.state/quarantine/`` and a
placeholder ``error`` message from ``mailslot`` takes its number, saying where the original
went; a missing seq gets the same kind of placeholder. A message file that git left with
merge-conflict markers (two clones both wrote that seq) is split back into its two messages:
one keeps the seq, the other is re-published at the end of the thread (``conflict.resolve``).
That is the one repair that rewrites a published message file, and only because git already
did. Everything else is reported only. How doctor writes is in ``repair``.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from mailslot.doctor.conflict import (
    Conflict,
    conflict_sides,
    earliest_record,
    record_of,
    resolve,
    resolve_record,
)
from mailslot.doctor.repair import DOCTOR, keep_copy, placeholder, put
from mailslot.doctor.report import YOURS, Finding, Report
from mailslot.store import modes
from mailslot.store.errors import MailslotError
from mailslot.store.format import (
    MESSAGE_NAME_RE,
    Message,
    dumps,
    loads,
    max_message_file_bytes,
    message_name,
    now_iso,
    parse_message,
)
from mailslot.store.names import NAME_PATTERN
from mailslot.store.settings import Settings

_NAME_RE = re.compile(NAME_PATTERN)
GAP = (
    "missing while seq {head} exists: deleted, not synced yet, or lost in a merge. Readers wait "
    "for it for grace_s after a later file appeared, then report it and go on"
)
GAP_TODO = "restore it from git if you can (`git log --all -- {path}`)"
CONFLICT = (
    "merge conflict: two clones both wrote seq {seq} and git joined their two messages into "
    "one file with conflict markers, which readers stop at"
)
CONFLICT_FIX = (
    "keeps both: this seq keeps one of them (the same one on every machine), the other is "
    "re-published at the end of the thread with meta.moved_from, and the conflicted file goes "
    "to .state/quarantine/{thread}/"
)
CONFLICT_RECORD = (
    "merge conflict: two clones both created thread {thread} and git joined their two "
    "thread.json files into one with conflict markers"
)
CONFLICT_RECORD_FIX = (
    "keeps the record created first (the same on every machine) and moves the conflicted file "
    "to .state/quarantine/{thread}/"
)


def _message_limit(root: Path) -> int:
    """Return the size of the largest message file readers of root accept."""

    config = root / "mailslot.json"
    try:
        settings = Settings.from_json(loads(config.read_bytes()), config)
    except (OSError, ValueError, AttributeError, MailslotError):
        settings = Settings()  # _check_config reports the config; judge messages by defaults
    return max_message_file_bytes(settings.max_content_bytes)


def _check_record(tdir: Path, report: Report, fix: bool, tmpdir: Path, quarantine: Path) -> None:
    thread = tdir.name
    record = tdir / "thread.json"
    try:
        data = record.read_bytes()
        sides = conflict_sides(data)
        if sides is None:
            record_of(data)
            return
        winner = earliest_record(sides)
    except (OSError, ValueError) as e:
        finding = Finding("thread record", str(record), f"missing or unreadable ({e})",
                          fix="writes a new thread.json with the id as its topic")  # fmt: skip
        if fix:
            data = dumps(
                {"id": thread, "topic": thread, "created_by": DOCTOR, "created_at": now_iso()}
            )
            if record.exists():
                keep_copy(record, quarantine, thread)
            put(record, data, tmpdir, replace=record.exists())
            finding.fixed = "wrote a new thread.json with the id as its topic"
        report.findings.append(finding)
        return
    finding = Finding("conflict", str(record), CONFLICT_RECORD.format(thread=thread),
                      fix=CONFLICT_RECORD_FIX.format(thread=thread))  # fmt: skip
    if fix:
        finding.fixed = resolve_record(record, winner, tmpdir, quarantine)
    report.findings.append(finding)


def _message_files(tdir: Path, report: Report) -> dict[int, str]:
    """Return the thread's message files by seq, reporting every other file in its folder."""
    seqs: dict[int, str] = {}
    for entry in sorted(os.listdir(tdir)):
        m = MESSAGE_NAME_RE.fullmatch(entry)
        if entry == "thread.json":
            continue
        if not m or message_name(int(m.group(1))) != entry:
            digits = re.fullmatch(r"0*([1-9][0-9]{0,17})\.json", entry)
            like = message_name(int(digits.group(1))) if digits else None
            named = f" (message files are named like {like})" if like else ""
            report.findings.append(Finding("foreign file", str(tdir / entry),
                                           f"not a message file{named}; readers ignore it",
                                           todo=YOURS, note=True))  # fmt: skip
            continue
        seqs[int(m.group(1))] = entry
    return seqs


def _gap(path: Path, seq: int, head: int, fix: bool, tmpdir: Path) -> Finding:
    """Return the finding for a missing seq, filled with a placeholder if fix is set."""
    finding = Finding("gap", str(path), GAP.format(seq=seq, head=head),
                      fix="fills it with a placeholder that says it was missing",
                      todo=GAP_TODO.format(path=path))  # fmt: skip
    if fix:
        text = (f"Message {seq} was missing from this thread; mailslot doctor put this "
                "note in its place.")  # fmt: skip
        if put(path, placeholder(text, {"doctor": "gap"}), tmpdir, replace=False):
            finding.fixed = "filled with a placeholder so readers can pass"
    return finding


def _read(path: Path, seq: int, limit: int) -> Message | tuple[bytes, bytes]:
    """Return the message at path, or the two sides git merged into it; raise if neither."""
    if path.is_symlink():
        raise ValueError("is a symlink; messages are real files")
    data = path.read_bytes()
    sides = conflict_sides(data)
    if sides is not None:
        return sides
    if len(data) > limit:  # as Mailbox._load: readers skip it unread
        raise ValueError(f"is {len(data)} bytes, too large to be a message (limit {limit})")
    return parse_message(data, path.parent.name, seq)


def _set_aside(path: Path, seq: int, error: Exception, tmpdir: Path, quarantine: Path) -> str:
    """Move a corrupt message file to quarantine, put a placeholder at its seq; say so."""
    thread = path.parent.name
    modes.makedirs(quarantine / thread, None)
    kept = quarantine / thread / f"{path.name}.{secrets.token_hex(4)}"
    os.replace(path, kept) if path.is_symlink() else os.link(path, kept)
    text = (f"Message {seq} was unreadable ({error}); mailslot doctor moved it to "
            f".state/quarantine/{thread}/{kept.name} and put this note in its "
            "place.")  # fmt: skip
    put(path, placeholder(text, {"doctor": "quarantined", "kept": str(kept)}),
        tmpdir, replace=True)  # fmt: skip
    return f"kept in {kept}; a placeholder holds its seq"


def _check_thread(tdir: Path, report: Report, fix: bool, dirs: tuple[Path, Path, Path]) -> None:
    tmpdir, quarantine, _ = dirs
    thread = tdir.name
    _check_record(tdir, report, fix, tmpdir, quarantine)
    limit = _message_limit(tdir.parent.parent)
    seqs = _message_files(tdir, report)
    ids: dict[str, int] = {}
    conflicts: list[tuple[Conflict, Finding]] = []
    head = max(seqs, default=0)
    for seq in range(1, head + 1):
        path = tdir / message_name(seq)
        if seq not in seqs:
            report.findings.append(_gap(path, seq, head, fix, tmpdir))
            continue
        report.messages += 1
        try:
            got = _read(path, seq, limit)
        except (OSError, ValueError) as e:
            finding = Finding("corrupt message", str(path), str(e),
                              fix="moves it to .state/quarantine/ and puts a placeholder at its "
                              "seq")  # fmt: skip
            if fix:
                finding.fixed = _set_aside(path, seq, e, tmpdir, quarantine)
            report.findings.append(finding)
            continue
        if not isinstance(got, Message):
            finding = Finding("conflict", str(path), CONFLICT.format(seq=seq),
                              fix=CONFLICT_FIX.format(thread=thread))  # fmt: skip
            conflicts.append((Conflict(seq, path, got), finding))
            report.findings.append(finding)
            continue
        if got.id in ids:
            again = f"same id as message {ids[got.id]} (a copy?); readers show both"
            report.findings.append(Finding("duplicate", str(path), again, note=True,
                                           todo="nothing to do: a published message is never "
                                           "deleted, so --fix leaves it"))  # fmt: skip
        ids[got.id] = seq
    if fix and conflicts:
        report.messages += resolve(tdir, [c for c, _ in conflicts], ids, dirs)
        for c, finding in conflicts:
            finding.fixed = c.fixed


def check_threads(root: Path, report: Report, fix: bool, dirs: tuple[Path, Path, Path]) -> None:
    """Check each thread folder under root (dirs: tmp, quarantine, locks); repair if fix."""
    threads = root / "threads"
    for entry in sorted(os.listdir(threads)) if threads.is_dir() else []:
        tdir = threads / entry
        if tdir.is_symlink():
            report.findings.append(Finding("symlink", str(tdir), "a thread folder that is a "
                                           "symlink: readers refuse it",
                                           todo="replace it with a folder"))  # fmt: skip
        elif not (_NAME_RE.fullmatch(entry) and tdir.is_dir()):
            report.findings.append(Finding("foreign file", str(tdir), "not a thread; readers "
                                           "ignore it", todo=YOURS, note=True))  # fmt: skip
        else:
            report.threads += 1
            _check_thread(tdir, report, fix, dirs)
