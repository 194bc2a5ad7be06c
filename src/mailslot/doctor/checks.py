"""Checking a mailbox folder, and repairing what is safe to repair.

``diagnose`` looks at the root: its config, its .gitignore, what its filesystem can do, its
threads and messages (``doctor_threads``, where the repairs of messages are described), its
temp files, presence files and agent cards, and who may write it. What it finds goes into a
``doctor_report.Report``. How doctor writes is in ``repair``.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mailslot.doctor.repair import put, temp_path
from mailslot.doctor.report import YOURS, Finding, Report
from mailslot.doctor.threads import check_threads
from mailslot.store import flock, modes
from mailslot.store.errors import Damaged, InvalidName, MailslotError, NoSuchAgent
from mailslot.store.files import tmp_writer
from mailslot.store.format import FORMAT, dumps, loads
from mailslot.store.presence import DEFAULT_STALE_AFTER
from mailslot.store.roots import _git_top
from mailslot.store.settings import KEYS
from mailslot.store.watch import filesystem_type, is_network_fs

if TYPE_CHECKING:
    from mailslot.mailbox import Mailbox

NO_LINKS = (
    'hard links do not work here, so posts fail; "claim": "exclusive-create" would claim seqs '
    "with exclusive creates instead, which some network clients, such as smbnetfs, do not "
    "honour across machines"
)
NO_LINKS_TODO = (
    "move the mailbox to a filesystem with hard links, or accept that risk: set that claim in "
    "mailslot.json"
)
NO_LOCKS = (
    "file locks do not exclude here: the link claim still keeps messages safe, but writers "
    "collide more"
)
LEFT_TEMP = "left by a writer that was interrupted (it never became a message)"


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
        first = os.open(path, os.O_RDWR | os.O_CREAT, modes.FILE_MODE)
        if modes.shared_folder(locks):
            modes.share_fd(first, path)
        second = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        if not flock.try_lock(first):
            return False
        # Two locks on one file at once: locks do not exclude here.
        return not flock.try_lock(second)
    except OSError:
        return False
    finally:
        os.close(second)
        os.close(first)


def _check_config(root: Path, report: Report) -> bool:
    config = root / "mailslot.json"
    by_hand = "repair or restore it by hand (`git checkout` it if it is committed)"
    try:
        doc = loads(config.read_bytes())
    except FileNotFoundError:
        report.findings.append(Finding("config", str(config), "missing: not a mailbox root",
                                       todo=f"`mailslot init {root}` makes one"))  # fmt: skip
        return False
    except (OSError, ValueError) as e:
        report.findings.append(Finding("config", str(config), f"unreadable: {e}", todo=by_hand))
        return False
    fmt = doc.get("format") if isinstance(doc, dict) else None
    if fmt != FORMAT:
        newer = isinstance(fmt, int) and fmt > FORMAT
        report.findings.append(Finding(
            "format", str(config),
            f"format {fmt!r}: written by a newer mailslot" if newer
            else f"format {fmt!r} is not {FORMAT}",
            todo="upgrade mailslot before writing here (pip install -U mailslot)" if newer
            else by_hand,
        ))  # fmt: skip
        return False
    for key in doc:
        if key not in KEYS:
            near = difflib.get_close_matches(key, KEYS, n=1, cutoff=0.6)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            fix = f"rename it to {near[0]!r}" if near else f"use one of {', '.join(KEYS)}"
            report.findings.append(Finding(
                "config", str(config),
                f"unknown setting {key!r}{hint}: mailslot ignores it (a typo, or a setting of "
                "a newer mailslot)",
                todo=f"{fix} in mailslot.json, or remove it; --fix leaves the file alone",
            ))  # fmt: skip
    return True


def _check_gitignore(root: Path, report: Report, fix: bool) -> None:
    ignore = root / ".gitignore"
    try:
        ignored = ".state/" in ignore.read_text(encoding="utf-8").splitlines()
    except OSError:
        ignored = False
    if not ignored:
        finding = Finding(
            "gitignore",
            str(ignore),
            ".state/ is not ignored: per-machine files would be committed",
            fix="adds .state/ to .gitignore",
        )
        if fix:
            with ignore.open("a", encoding="utf-8") as out:
                if modes.shared_folder(root) and out.tell() == 0:  # made just now
                    modes.share_fd(out.fileno(), ignore)
                out.write("\n.state/\n")
            finding.fixed = "added .state/ to .gitignore"
        report.findings.append(finding)


def _check_filesystem(root: Path, report: Report, tmpdir: Path, locks: Path) -> None:
    """Probe whether hard links and file locks work under root, as writers need them to."""
    for d in (tmpdir, locks):
        with contextlib.suppress(OSError):
            modes.makedirs(d, None)
    if not os.access(tmpdir, os.W_OK | os.X_OK) or not os.access(locks, os.W_OK | os.X_OK):
        return  # another user's folders, closed to us: not the filesystem (_check_sharing)
    report.hard_links = _probe_links(tmpdir)
    report.locks = _probe_locks(locks)
    if not report.hard_links:
        report.findings.append(Finding("filesystem", str(root), NO_LINKS, todo=NO_LINKS_TODO))
    if not report.locks:
        report.findings.append(Finding("filesystem", str(root), NO_LOCKS, note=True,
                                       todo="a local disk has working locks"))  # fmt: skip


def _check_sharing(root: Path, report: Report, fix: bool, *, shared: bool) -> None:
    """Report files and folders that other users of the mailbox's group cannot write.

    A shared mailbox wants all of them group-writable (--fix gives that to what doctor's user
    may change). Any other mailbox is only looked at if several users use it: files of several
    owners, a folder set up for a group (setgid), or a user who owns nothing in it.
    """
    if modes.euid() < 0:
        return  # no Unix users here (Windows)
    found = modes.survey(root, shared=shared, fix=fix and shared)
    group, me, left = modes.group_name(found.group), modes.euid(), found.left
    owners = {modes.user_name(u) for u, paths in found.lacking.items() if set(paths) & set(left)}
    owners.discard("root")
    run_by = (
        f"run by {', '.join(sorted(owners))} (the owner) or by root" if owners else "run by root"
    )
    if shared:
        if found.fixed:
            lacked = f"{modes.entries(len(found.fixed))} lacked group access"
            finding = Finding("group access", str(root), lacked)
            finding.fixed = f"gave group {group} read and write (folders: rwx and setgid)"
            report.findings.append(finding)
        if left:
            detail = (
                f"{modes.entries(len(left))} of this shared mailbox without group read and "
                f"write (folders: rwx and setgid) or without the group {group}, such as "
                f"{left[0]}: other members of {group} cannot write them"
            )
            todo = f"`mailslot doctor --fix` or `mailslot init --shared`, {run_by}, gives access"
            report.findings.append(Finding("group access", str(root), detail, todo=todo))
        return
    users = ", ".join(sorted(modes.user_name(u) for u in found.owners))
    if len(found.owners) > 1:
        why = f"this mailbox is used by several users ({users})"
    elif me != 0 and me not in found.owners:
        why = f"{modes.user_name(me)} uses this mailbox of {users}"
    elif os.lstat(root).st_mode & stat.S_ISGID:
        why = f"this mailbox's folder is set up for group {group} (setgid)"
    else:
        return  # one user's mailbox: who else may write it is that user's umask's business
    if left:
        detail = (
            f"{why}, but it is not shared: {modes.entries(len(left))} (such as {left[0]}) "
            f"cannot be written by other members of group {group}, so their posts fail"
        )
        todo = f"make it shared: `mailslot init --shared {root}`, {run_by}"
        report.findings.append(Finding("not shared", str(root), detail, todo=todo))


def _check_temp_files(box: Mailbox, tmpdir: Path, report: Report, fix: bool) -> None:
    now = time.time()
    for entry in sorted(os.listdir(tmpdir)) if tmpdir.is_dir() else []:
        path = tmpdir / entry
        try:
            writer = tmp_writer(entry, path.lstat().st_mtime, now)
        except OSError:
            continue  # gone since the listing: its writer finished
        if writer is None:
            report.findings.append(Finding("temp file", str(path), LEFT_TEMP,
                                           fix="removes it (so does any mailslot that opens "
                                           "this mailbox)"))  # fmt: skip
        else:
            report.findings.append(Finding(
                "temp file", str(path), f"a message being written, perhaps: it may belong to "
                f"{writer}", todo="nothing to do: it is removed when its writer is gone, or "
                "after an hour", note=True))  # fmt: skip
    if fix:
        swept = {str(p) for p in box.sweep_tmp()}
        for f in report.findings:
            if f.kind == "temp file" and f.path in swept:
                f.fixed = "removed"


def _check_presence(
    box: Mailbox, root: Path, report: Report, fix: bool, stale_after: float, tmpdir: Path
) -> None:
    for p in box.agents.presences(stale_after=stale_after):
        path = root / ".state" / "presence" / f"{p.agent}.json"
        try:
            said = loads(path.read_bytes()).get("status")
        except (OSError, ValueError, AttributeError):
            said = None
        if said in ("online", "waiting") and p.status == "offline":
            finding = Finding(
                "stale presence", str(path), f"{p.agent} says {said}, but its process is gone "
                "(killed, or on a machine that stopped): readers already count it offline, "
                "which is normal", fix="marks the file offline", note=True,
            )  # fmt: skip
            if fix:
                doc = loads(path.read_bytes())
                doc["status"] = "offline"
                put(path, dumps(doc), tmpdir, replace=True)
                finding.fixed = "marked offline"
            report.findings.append(finding)


def _check_cards(box: Mailbox, root: Path, report: Report) -> None:
    agents = root / "agents"
    for entry in sorted(os.listdir(agents)) if agents.is_dir() else []:
        name = entry.removesuffix(".json")
        try:
            if name == entry:
                raise InvalidName("agent name", entry, "cards are named NAME.json")
            box.agents.card(name)
        except (InvalidName, NoSuchAgent) as e:  # not a card at all: a file someone put there
            report.findings.append(Finding("agent card", str(agents / entry),
                                           f"not an agent card ({e}); readers ignore it",
                                           todo=YOURS, note=True))  # fmt: skip
        except (Damaged, MailslotError) as e:
            report.findings.append(Finding(
                "agent card", str(agents / entry),
                f"{e.reason if isinstance(e, Damaged) else e}; agent lists skip it",
                todo=f"`mailslot register {name}` writes a new card (its fields are lost), or "
                "repair its JSON by hand; --fix leaves it",
            ))  # fmt: skip
    with contextlib.suppress(MailslotError):  # keys a card gained that this machine does not trust
        for c in box.trust.changes():
            report.findings.append(Finding(
                "agent key", str(agents / f"{c.name}.json"),
                f"holds {c.fingerprint} (host {c.host or '?'}, added {c.added_at or '?'}), which "
                f"this machine does not trust for {c.name}: its messages show `unknown key`",
                todo=f"`mailslot key {c.name} --trust {c.fingerprint}` if you expect it ({c.name} "
                "on a new machine); if not, someone who can write the folder may pose as "
                f"{c.name}", note=True,
            ))  # fmt: skip


def diagnose(root: Path, *, fix: bool = False, stale_after: float = DEFAULT_STALE_AFTER) -> Report:
    """Return what is wrong in the mailbox at root, repairing what is safe if fix is set."""
    from mailslot.mailbox import Mailbox  # the store's own view, for sweeping and presence

    root = root.resolve()
    report = Report(str(root), filesystem_type(root))
    report.network = is_network_fs(report.filesystem)
    git = _git_top(root)
    report.git_work_tree = str(git[0]) if git else None
    if not root.is_dir():
        made = f"`mailslot init {root}` makes a mailbox there"
        report.findings.append(Finding("root", str(root), "no such folder", todo=made))
        return report
    config_ok = _check_config(root, report)
    _check_gitignore(root, report, fix)
    state = root / ".state"
    tmpdir, locks, quarantine = state / "tmp", state / "locks", state / "quarantine"
    _check_filesystem(root, report, tmpdir, locks)
    check_threads(root, report, fix, (tmpdir, quarantine, locks))
    if not config_ok:
        return report
    try:
        box = Mailbox(root, sweep=False)  # a report changes nothing; --fix sweeps below
    except MailslotError as e:
        report.findings.append(Finding("root", str(root), str(e)))
        return report
    report.wait_mode = box.wait_mode
    _check_temp_files(box, tmpdir, report, fix)
    _check_presence(box, root, report, fix, stale_after, tmpdir)
    _check_cards(box, root, report)
    _check_sharing(root, report, fix, shared=box.settings.shared)  # last: sees what --fix made
    return report
