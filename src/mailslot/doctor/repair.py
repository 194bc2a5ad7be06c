"""How doctor writes into a mailbox it repairs: its own temp files, puts, locks and notes.

Shared by the checks (``checks``, ``threads``) and the merge-conflict repair (``conflict``).
Every write goes through a fsynced temp file; a put either replaces a file (a repair of a file
that is already broken) or claims a free name with the same no-replace link as a post. What
doctor creates in a folder of a shared mailbox is given group access as a post's files are
(``store.modes``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mailslot.store import flock, modes
from mailslot.store.files import HOST
from mailslot.store.format import MESSAGE_KEYS, MESSAGE_NAME_RE, dumps, loads, now_iso
from mailslot.store.news import tell
from mailslot.store.positions import rewind_mark

DOCTOR = "mailslot"


def temp_path(tmpdir: Path, what: str, *, pid: int | None = None) -> Path:
    """Return a fresh name for a temp file of doctor's (pid: the writing process, default us).

    Named ``<host>.<pid>.doctor-<what>.<hex>`` like the store's own temp files, so that when
    doctor is killed mid-write the next sweep (Mailbox.sweep_tmp) sees a dead writer of this
    host and removes the file, instead of reporting it for an hour.
    """

    pid = os.getpid() if pid is None else pid
    return tmpdir / f"{HOST}.{pid}.doctor-{what}.{secrets.token_hex(6)}"


def note(message_id: str, detail: str, meta: dict[str, Any]) -> bytes:
    """Return the file of an ``error`` message from doctor with this id, text and meta."""
    doc: dict[str, Any] = dict(
        zip(
            MESSAGE_KEYS,
            (message_id, DOCTOR, [], "error", "normal", None, now_iso(), detail, meta),
            strict=True,
        )
    )
    return dumps(doc)


def placeholder(detail: str, meta: dict[str, Any]) -> bytes:
    """Return the file of a note from doctor with a fresh id."""
    return note("doctor-" + secrets.token_hex(13), detail, meta)


def put(path: Path, data: bytes, tmpdir: Path, *, replace: bool, fsync: bool = True) -> bool:
    """Write data at path via a fsynced temp file: replacing it, or only if the name is free.

    Return False if replace is off and the name is taken (another writer has it). fsync=False
    (a root that says ``"fsync": false``) skips the file's and the folder's fsync.
    """
    tmp = temp_path(tmpdir, "put")
    try:
        with tmp.open("xb") as out:
            if modes.shared_folder(tmpdir):
                modes.share_fd(out.fileno(), tmp)
            out.write(data)
            out.flush()
            if fsync:
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
            if fsync:
                fd = os.open(path.parent, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        if path.parent.parent.name == "threads" and MESSAGE_NAME_RE.fullmatch(path.name):
            tell(path.parents[2], path.parent.name)  # a moved or landed message: wake waiters
        return True
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


@contextlib.contextmanager
def thread_lock(locks: Path, thread: str) -> Iterator[None]:
    """Hold the thread's lock file, as Mailbox._locked does, so local writers wait for us."""
    # Lock files are never deleted: a writer blocked on a deleted file's lock would hold a lock
    # nobody else sees. If the lock cannot be opened, go on: the no-replace link claim is what
    # keeps seqs unique, the lock only keeps this machine's writers orderly.
    try:
        fd = os.open(locks / f"{thread}.lock", os.O_RDWR | os.O_CREAT, modes.FILE_MODE)
    except OSError:
        yield
        return
    if modes.shared_folder(locks):
        modes.share_fd(fd, locks / f"{thread}.lock")
    try:
        flock.lock(fd)
        try:
            yield
        finally:
            flock.unlock(fd)
    finally:
        os.close(fd)


def keep_copy(path: Path, quarantine: Path, thread: str) -> Path:
    """Keep a copy of path under .state/quarantine/<thread>/ and return where it went."""
    modes.makedirs(quarantine / thread, None)
    kept = quarantine / thread / f"{path.name}.{secrets.token_hex(4)}"
    os.link(path, kept)
    return kept


def mark_rewound(root: Path, thread: str, start: int, moved: dict[int, int], tmpdir: Path) -> None:
    """Tell this machine's readers of thread that its seqs from start on were rewritten.

    For a writer that rewrites published message files (doctor splitting a git merge conflict,
    a sync putting the remote's messages first), holding the thread's lock, so two rewrites of
    a thread keep both their marks. moved maps the old seq of every message this machine had
    at start or later (what its agents may have been shown) to the seq that message stands at
    after the rewrite: the same seq if it stays, and its seq there if it is already in the
    thread elsewhere (a copy); {} when which message stood where is not known (then agents may
    be shown some again, and miss none). A seq from start on that moved does not name holds
    what agents have not been shown.

    When: before the rewrite, if readers cannot read the rewritten seqs until it is done
    (doctor: the conflicted files stop them); then an agent waiting past start never meets a
    moved message before the mark, and if the rewrite puts a message elsewhere than said,
    call it again mapping each seq the first call named to where that message went, and
    every other seq from start on to itself (``doctor.conflict._split``). Otherwise after the
    rewrite: an agent that meets rewritten seqs before the mark may be shown those again, and
    misses nothing (before, it could be shown a seq's old message and miss its new one).

    Drops the thread's caches (``.state/index/<thread>.json`` and ``.tasks.json``, rebuilt
    from the files on the next look) and writes ``.state/rewound/<thread>.json`` (see
    ``store.positions.rewinds``): positions past start go back before it, once, so what now
    stands at those seqs is shown, except a message of moved an agent was shown at its old
    seq. The mark keeps the latest earlier rewinds, for agents not running meanwhile. Best
    effort, like every write under ``.state/``.
    """
    state = root / ".state"
    for cache in (f"{thread}.json", f"{thread}.tasks.json"):  # the summary and the tasks
        with contextlib.suppress(OSError):
            (state / "index" / cache).unlink()
    path = state / "rewound" / f"{thread}.json"
    try:
        before = loads(path.read_bytes())
    except (OSError, ValueError):
        before = None
    mark = rewind_mark(start, secrets.token_hex(8), moved, before)
    with contextlib.suppress(OSError):
        modes.makedirs(path.parent, None)
        put(path, json.dumps(mark).encode(), tmpdir, replace=True)
