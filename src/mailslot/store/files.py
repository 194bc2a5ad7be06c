"""The file primitives every writer uses: the one place that knows how bytes reach the folder.

Temp files under ``.state/tmp/`` (named after host and pid, so a dead writer's leftovers are
recognised), fsync of files and folders, the per-thread lock, the no-replace claim of a seq
(``os.link``, or an exclusive create where hard links do not exist), atomic replacement of
mutable state files, and the safety checks on every folder a path goes through: no symlinks
inside a root, ever. Files are made with mode 0o666 and folders with 0o777, less the umask, and
given group access in a shared mailbox (see ``modes``).
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import logging
import os
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mailslot.store import flock as _flock
from mailslot.store import modes
from mailslot.store.errors import InvalidName, NoSuchThread, RootError, StorageError
from mailslot.store.format import Damage, dumps, message_name
from mailslot.store.names import check_name
from mailslot.store.presence import pid_alive
from mailslot.store.settings import Settings

log = logging.getLogger("mailslot")

STALE_TMP_SECONDS = 3600.0
HOST = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:64] or "host"
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_all(fd: int, size: int) -> bytes:
    """Read fd from where it stands to its end; size: what fstat said it holds (one read
    does when it still does: no buffered file object, whose set-up costs more system calls
    than the read)."""
    data = os.read(fd, size + 1)
    if len(data) == size:
        return data
    chunks = [data]  # grown or cut meanwhile: read on until the end
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def read_file(path: str) -> bytes:
    """Return the bytes of the file at path (following no symlink); raise OSError."""
    fd = os.open(path, os.O_RDONLY | CLOEXEC | NOFOLLOW)
    try:
        return read_all(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def storage_error(e: OSError, root: Path, doing: str, *, creating: bool = False) -> StorageError:
    """Return the StorageError that tells the user what a failed write means and what to do.

    Unless the root is being created, a root that no longer exists is said to be gone.
    """
    where = e.filename or root
    if not creating and not os.path.isdir(root):
        return StorageError(
            where,
            f"the mailbox at {root} is gone (removed, or its disk unmounted) while {doing}: "
            f"restore it, or run `mailslot init {root}` to start a new one",
            e.errno,
        )
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        msg = (
            f"no space left on the device holding {root} while {doing}; nothing was stored: "
            "free some space and retry"
        )
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        msg = (
            f"the mailbox at {root} is not writable ({e.strerror}: {where}) while {doing}; "
            f"nothing was stored: {_whose(Path(where), root)}"
        )
    else:
        msg = f"{doing} failed ({e.strerror or e}: {where}); nothing was stored"
    return StorageError(where, msg, e.errno)


def _whose(path: Path, root: Path) -> str:
    """Return what to do about a permission error on path: whose it is, if not ours."""
    for p in (path, path.parent):
        try:
            st = os.stat(p)
        except OSError:
            continue
        if st.st_uid != modes.euid():
            owner, me = modes.user_name(st.st_uid), modes.user_name(modes.euid())
            group = modes.group_name(st.st_gid)
            return (
                f"{p} belongs to {owner} (group {group}), and {me} may not write it. A mailbox "
                f"that several users share must be made shared by their group: {owner} runs "
                f"`mailslot init --shared {root}` (see `mailslot doctor`)"
            )
        break
    return "check the folder's permissions or mount options"


def exists(tdir: Path | str, seq: int) -> bool:
    """Return True if thread folder tdir has a file (of any kind) for seq."""
    return os.path.lexists(f"{os.fspath(tdir)}/{message_name(seq)}")  # no Path: a hot path


def tmp_writer(name: str, mtime: float, now: float) -> str | None:
    """Return who may still be writing the temp file name, or None if it is a leftover.

    A leftover is one older than an hour, or one whose writer (``<host>.<pid>.…``) is a dead
    process of this machine; anything else may be a writer at work, here or elsewhere.
    """
    parts = name.split(".")
    mine = len(parts) >= 3 and parts[0] == HOST and parts[1].isdigit()
    if now - mtime > STALE_TMP_SECONDS or (mine and not pid_alive(int(parts[1]))):
        return None
    if mine:
        return f"process {parts[1]} of this machine, which is running"
    if len(parts) >= 3 and parts[1].isdigit():
        return f"a writer on {parts[0]}, if it is still at work (the file is under an hour old)"
    return "a writer at work (the file is under an hour old)"


class Files:
    """The folder of one mailbox root as writers and readers touch it; safe across threads."""

    def __init__(self, root: Path, settings: Settings, read_only: str | None) -> None:
        self.root = root
        self.settings = settings
        #: Why this root must not be written to (made by a newer mailslot), or None.
        self.read_only = read_only
        self._reported: set[str] = set()
        self._valid: set[str] = set()  # folder names already checked as thread ids
        # Paths made once (the checks below still run on every call): joining Paths was a
        # tenth of a post's CPU.
        self._dirs: dict[str, tuple[Path, tuple[str, ...]]] = {}
        self._tdirs: dict[str, Path] = {}

    def check_not_symlink(self, path: Path) -> None:
        """Raise RootError if path is a symlink: mailslot never follows links inside a root."""
        if path.is_symlink():
            raise RootError(
                path,
                f"{path} is a symlink (to {os.readlink(path)}); mailslot never follows links "
                "inside a root: replace it with a real folder",
            )

    def dir(self, rel: str, *, create: bool = True) -> Path:
        """Return root/rel after checking that no part of it is a symlink; create it if asked.

        Checked on every call (a few lstat calls), not once: a folder swapped for a symlink
        after the mailbox was opened must not lead a write out of the root.
        """
        made = self._dirs.get(rel)
        if made is None:
            parts = Path(rel).parts
            steps = tuple(str(self.root.joinpath(*parts[: i + 1])) for i in range(len(parts)))
            made = self._dirs[rel] = (self.root / rel, steps)
        whole, steps = made
        for current in steps:
            try:
                mode = os.lstat(current).st_mode
            except FileNotFoundError:
                if not create:
                    return whole
                if self.read_only is not None:
                    raise RootError(self.root, self.read_only) from None
                try:
                    modes.mkdir(Path(current), self.settings.shared)
                except FileExistsError:
                    mode = os.lstat(current).st_mode  # made by someone else meanwhile
                except OSError as e:
                    try:  # made by someone else meanwhile, said otherwise (EPERM over sshfs)
                        mode = os.lstat(current).st_mode
                    except OSError:
                        raise storage_error(e, self.root, f"creating {current}") from None
                else:
                    continue
            except OSError as e:
                raise storage_error(e, self.root, f"looking at {current}") from None
            if stat.S_ISLNK(mode):
                self.check_not_symlink(Path(current))
            if not stat.S_ISDIR(mode):
                raise RootError(Path(current), f"{current} should be a folder but is a file")
        return whole

    def thread_dir(self, thread: str) -> Path:
        """Return the folder of an existing thread; raise InvalidName, NoSuchThread or RootError.

        Checked on every call (one lstat): a thread folder may vanish, or be swapped for a
        symlink, between two calls.
        """
        path = self._tdirs.get(thread)  # a name in it was checked already
        if path is None:
            check_name(thread, "thread id")
            if len(self._tdirs) >= 4096:  # a sweep over every thread keeps no more than this
                self._tdirs.clear()
            path = self._tdirs[thread] = self.root / "threads" / thread
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            mode = 0
        except OSError as e:
            raise RootError(path, f"cannot look at {path}: {e.strerror}") from None
        if stat.S_ISDIR(mode):
            return path
        if not os.path.isdir(self.root):  # not a missing thread: the whole mailbox is gone
            gone = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(self.root))
            raise storage_error(gone, self.root, f"looking for thread {thread!r}")
        self.check_not_symlink(self.root / "threads")
        self.check_not_symlink(path)
        known = self.thread_ids()
        raise NoSuchThread(thread, difflib.get_close_matches(thread, known, n=3, cutoff=0.6))

    def report(self, damage: Damage) -> Damage:
        """Log damage once per path and return it."""
        if damage.path not in self._reported:
            self._reported.add(damage.path)
            # `damaged` names the file for a front end that also reports it (the command).
            log.warning("skipping damaged file %s", damage, extra={"damaged": damage.path})
        return damage

    def sweep_tmp(self) -> list[Path]:
        """Remove temp files left by dead writers of this host, or older than an hour.

        Return the removed paths. A read-only root is left alone.
        """
        tmp = self.root / ".state" / "tmp"
        removed: list[Path] = []
        try:
            entries = list(os.scandir(tmp))
        except OSError:
            return removed
        now = time.time()
        for entry in entries:
            try:
                if tmp_writer(entry.name, entry.stat(follow_symlinks=False).st_mtime, now):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                continue
        return removed

    def tmp_name(self, suffix: str) -> Path:
        # Every write starts with a temp file: this is where a root we must not write stops it.
        if self.read_only is not None:
            raise RootError(self.root, self.read_only)
        return self.dir(".state/tmp") / f"{HOST}.{os.getpid()}.{secrets.token_hex(8)}.{suffix}"

    def mkdir(self, path: Path) -> None:
        """Create the folder path, shared with the group in a shared mailbox; raise OSError."""
        modes.mkdir(path, self.settings.shared)

    def create_file(self, path: Path, data: bytes, *, fsync: bool | None = None) -> None:
        """Create the new file path holding data (fsynced if the root says so); raise OSError.

        Mode 0o666 less the umask, and group read and write in a shared mailbox, set before the
        data is written: a file linked or renamed into place later already has its mode.
        """
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | CLOEXEC | NOFOLLOW, modes.FILE_MODE
        )
        try:
            if self.settings.shared:
                modes.share_fd(fd, path)
            write_all(fd, data)
            if self.settings.fsync if fsync is None else fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def write_tmp(self, data: bytes) -> Path:
        path = self.tmp_name("tmp")
        try:
            self.create_file(path, data)
        except OSError as e:
            with contextlib.suppress(OSError):
                path.unlink()
            raise storage_error(e, self.root, "writing the message") from None
        return path

    @contextlib.contextmanager
    def locked(self, thread: str) -> Iterator[None]:
        """Hold the thread's lock: a blocking exclusive flock, fair to waiting writers."""
        if not self.settings.lock:
            yield
            return
        # Lock files are never deleted: a writer blocked on a deleted file's lock would hold
        # a lock nobody else sees, and two writers would publish at once.
        path = self.dir(".state/locks") / f"{thread}.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | CLOEXEC | NOFOLLOW, modes.FILE_MODE)
        except OSError as e:
            raise storage_error(e, self.root, "opening the thread's lock file") from None
        if self.settings.shared:
            modes.share_fd(fd, path)  # every writer of the group opens it for writing
        try:
            try:
                _flock.lock(fd)
            except OSError as e:
                raise storage_error(e, self.root, "locking the thread's lock file") from None
            try:
                yield
            finally:
                _flock.unlock(fd)
        finally:
            os.close(fd)

    def no_link_error(self, target: Path, e: OSError) -> StorageError:
        return StorageError(
            target,
            f"cannot publish {target.name}: the filesystem refused a hard link ({e.strerror}). "
            "mailslot publishes with hard links because a link never replaces a message another "
            "writer just stored; either this folder is not writable, or it does not support hard "
            "links (an SMB share without unix extensions, FAT/exFAT): `mailslot doctor` tells "
            "which. Nothing was stored. Move the mailbox to a filesystem with hard links, or set "
            '"claim": "exclusive-create" in mailslot.json to publish with exclusive creates '
            "instead, accepting that some network clients (smbnetfs, for one) do not honour them "
            "across machines, so two writers there can overwrite each other without an error",
            e.errno,
        )

    def claim(self, tdir: Path, tmp: Path | None, data: bytes, head: Callable[[], int]) -> int:
        """Publish the message as the next free seq of the thread; return the seq.

        With the default "link" claim, tmp (written and fsynced) is hard-linked to the name,
        which fails if the name exists. With "exclusive-create", the name is created with
        O_EXCL and data written into it.
        """
        if tmp is None:
            return self.claim_exclusive(tdir, data, head)
        seq = head() + 1
        while True:
            target = tdir / message_name(seq)
            try:
                os.link(tmp, target)
            except FileExistsError:
                seq = head() + 1  # lost a race: take the next free one
                continue
            except PermissionError as e:
                if os.path.lexists(target):  # sshfs reports a lost race as EPERM
                    seq += 1
                    continue
                if e.errno == errno.EACCES:  # plainly not allowed to write here
                    raise storage_error(e, self.root, f"publishing {target.name}") from None
                raise self.no_link_error(target, e) from None
            except OSError as e:
                if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
                    raise self.no_link_error(target, e) from None
                raise storage_error(e, self.root, f"publishing {target.name}") from None
            return seq

    def claim_exclusive(self, tdir: Path, data: bytes, head: Callable[[], int]) -> int:
        seq = head() + 1
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | CLOEXEC | NOFOLLOW
        while True:
            target = tdir / message_name(seq)
            try:
                fd = os.open(target, flags, modes.FILE_MODE)
            except FileExistsError:
                seq = head() + 1
                continue
            except PermissionError as e:
                if os.path.lexists(target):
                    seq += 1
                    continue
                raise storage_error(e, self.root, f"publishing {target.name}") from None
            except OSError as e:
                raise storage_error(e, self.root, f"publishing {target.name}") from None
            try:
                if self.settings.shared:
                    modes.share_fd(fd, target)
                write_all(fd, data)
                if self.settings.fsync:
                    os.fsync(fd)
            except OSError as e:
                # The name is visible but holds a torn message: take it back, so the next
                # writer reuses the seq and readers (who wait on young files) never see it.
                with contextlib.suppress(OSError):
                    os.unlink(target)
                raise storage_error(e, self.root, f"writing {target.name}") from None
            finally:
                os.close(fd)
            return seq

    def replace_file(self, path: Path, data: bytes, doing: str) -> None:
        """Atomically replace a mutable file (an agent card): readers see old or new, whole.

        Fsynced (file and folder) unless the root says otherwise; raise StorageError.
        """
        tmp = self.tmp_name("put")
        try:
            self.create_file(tmp, data)
            os.replace(tmp, path)
            if self.settings.fsync:
                fsync_dir(path.parent)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise storage_error(e, self.root, doing) from None

    def write_state_file(self, path: Path, doc: dict[str, Any]) -> None:
        """Atomically replace a file under .state/ (mutable, rebuildable data only)."""
        tmp = self.tmp_name("state")
        try:
            self.create_file(tmp, dumps(doc), fsync=False)  # rebuildable: not worth an fsync
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise storage_error(e, self.root, f"writing {path.name}") from None

    def thread_ids(self) -> list[str]:
        """Return the ids of the thread folders, sorted (one listing; stray entries skipped)."""
        return sorted(self.thread_folders())

    def thread_folders(self) -> dict[str, int]:
        """Return the inode of each thread folder by id (one listing; stray entries skipped):
        a thread deleted and made again under its id has another."""
        path = self.root / "threads"
        self.check_not_symlink(path)
        try:
            with os.scandir(path) as entries:
                # is_dir without following links: a symlinked thread folder is not a thread.
                found = {e.name: e.inode() for e in entries if e.is_dir(follow_symlinks=False)}
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise RootError(path, f"cannot list {path}: {e.strerror}") from None
        for name in list(found):
            if name not in self._valid:
                try:
                    check_name(name)
                except InvalidName:
                    del found[name]
                    continue  # a stray folder; doctor reports it
                self._valid.add(name)
        return found
