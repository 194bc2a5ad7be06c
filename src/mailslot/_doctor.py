"""Checking a mailbox folder, and repairing what is safe to repair.

Repairs never delete a message and never leave a gap (readers stop at the first missing seq,
and a writer would refill it): a corrupt message file is moved to ``.state/quarantine/`` and a
placeholder ``error`` message from ``mailslot`` takes its number, saying where the original
went; a missing seq gets the same kind of placeholder. Everything else is reported only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import portalocker

from mailslot._errors import MailslotError
from mailslot._format import (
    FORMAT,
    MESSAGE_KEYS,
    MESSAGE_NAME_RE,
    dumps,
    loads,
    message_name,
    now_iso,
    parse_message,
)
from mailslot._names import NAME_PATTERN
from mailslot._presence import DEFAULT_STALE_AFTER
from mailslot._wait import filesystem_type, is_network_fs

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
SYMLINKED = "a thread folder that is a symlink is refused; replace it with a folder"
LEFT_TEMP = "left by a writer that was interrupted (it never became a message)"


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
            "findings": [f.to_dict() for f in self.findings],
        }


def _probe_links(tmp: Path) -> bool:
    a = tmp / f"doctor.{os.getpid()}.{secrets.token_hex(4)}"
    b = a.with_suffix(".link")
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


def _placeholder(detail: str, meta: dict[str, Any]) -> bytes:
    doc: dict[str, Any] = dict(
        zip(
            MESSAGE_KEYS,
            ("doctor-" + secrets.token_hex(13), DOCTOR, [], "error", "normal", None, now_iso(),
             detail, meta),
            strict=True,
        )
    )  # fmt: skip
    return dumps(doc)


def _put(path: Path, data: bytes, tmpdir: Path, *, replace: bool) -> bool:
    """Write data at path via a temp file: replacing it, or only if the name is free."""
    tmp = tmpdir / f"doctor.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    tmp.write_bytes(data)
    try:
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _check_config(root: Path, report: Report) -> bool:
    config = root / "mailslot.json"
    try:
        doc = json.loads(config.read_text(encoding="utf-8"))
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


def _check_thread(tdir: Path, report: Report, fix: bool, tmpdir: Path, quarantine: Path) -> None:
    thread = tdir.name
    record = tdir / "thread.json"
    try:
        doc = loads(record.read_bytes())
        if not isinstance(doc, dict) or not isinstance(doc.get("topic"), str):
            raise ValueError("no topic")
    except (OSError, ValueError) as e:
        finding = Finding("thread record", str(record), f"missing or unreadable ({e})")
        if fix:
            data = dumps(
                {"id": thread, "topic": thread, "created_by": DOCTOR, "created_at": now_iso()}
            )
            if record.exists():
                (quarantine / thread).mkdir(parents=True, exist_ok=True)
                os.link(record, quarantine / thread / f"thread.json.{secrets.token_hex(4)}")
            _put(record, data, tmpdir, replace=record.exists())
            finding.fixed = "wrote a new thread.json with the id as its topic"
        report.findings.append(finding)
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
    head = max(seqs, default=0)
    for seq in range(1, head + 1):
        path = tdir / message_name(seq)
        if seq not in seqs:
            finding = Finding(
                "gap", str(path), "missing: readers stop here and never see later messages"
            )
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
            message = parse_message(path.read_bytes(), thread, seq)
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


def diagnose(root: Path, *, fix: bool = False, stale_after: float = DEFAULT_STALE_AFTER) -> Report:
    """Return what is wrong in the mailbox at root, repairing what is safe if fix is set."""
    from mailslot.mailbox import Mailbox  # the store's own view, for sweeping and presence

    root = root.resolve()
    report = Report(str(root), filesystem_type(root))
    report.network = is_network_fs(report.filesystem)
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
            _check_thread(tdir, report, fix, tmpdir, quarantine)
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
            said = json.loads(path.read_text(encoding="utf-8")).get("status")
        except (OSError, ValueError, AttributeError):
            said = None
        if said in ("online", "waiting") and p.status == "offline":
            finding = Finding(
                "stale presence", str(path), f"{p.agent} says {said} but its process is gone"
            )
            if fix:
                doc = json.loads(path.read_text(encoding="utf-8"))
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
