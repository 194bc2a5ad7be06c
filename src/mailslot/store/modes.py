"""Who may read and write what mailslot creates: the creator's umask, or a group that shares it.

Every file mailslot creates is made with mode 0o666 and every folder with 0o777, both masked by
the creator's umask, so the user decides (a team with umask 002 in a setgid folder can share a
mailbox as it is). A mailbox made with ``mailslot init --shared`` records ``"shared": "group"``
in mailslot.json: whatever any mailslot process creates in it is then made group-readable and
-writable right after it is created, whatever the creator's umask, and folders also get the
setgid bit, so what is created in them belongs to the folder's group (as git does with
``core.sharedRepository=group``). A file written as a temp file gets its mode before it is
renamed or linked into place, so no other process ever sees it without group access.

This module only uses the standard library: ``files`` and ``presence`` (which ``files``
imports) both use it.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("mailslot")

FILE_MODE = 0o666  # masked by the umask: whether the group or others may write is the user's
FOLDER_MODE = 0o777
GROUP_FILE = 0o660  # what a shared mailbox adds to a file: read and write for owner and group
GROUP_FOLDER = 0o770 | stat.S_ISGID  # ... and to a folder: rwx, and setgid to pass its group on
_warned: set[str] = set()


def _lacking(mode: int) -> int:
    """Return the mode bits a shared mailbox wants that mode lacks."""
    wanted = GROUP_FOLDER if stat.S_ISDIR(mode) else GROUP_FILE
    return wanted & ~mode


def _not_shared(path: object, e: OSError) -> None:
    # The write itself succeeded and what it stored is safe; only other users of the group may
    # be unable to write it. Not a failure of the write: said once, and doctor lists such files.
    if str(path) not in _warned:
        _warned.add(str(path))
        log.warning(
            "cannot give the group access to %s (%s): other users of this shared mailbox may "
            "be unable to write it; `mailslot doctor` lists such files",
            path,
            e.strerror or e,
        )


def share_fd(fd: int, path: object) -> None:
    """Give the open file fd (at path) group read and write, if it is ours and lacks them."""
    try:
        st = os.fstat(fd)
        lacking = _lacking(st.st_mode)
        if lacking and st.st_uid == euid():
            os.fchmod(fd, stat.S_IMODE(st.st_mode) | lacking)
    except OSError as e:
        _not_shared(path, e)


def share_path(path: Path | str) -> None:
    """Give path group read and write (a folder: rwx and setgid); symlinks are left alone."""
    try:
        st = os.lstat(path)
        lacking = 0 if stat.S_ISLNK(st.st_mode) else _lacking(st.st_mode)
        if lacking:
            os.chmod(path, stat.S_IMODE(st.st_mode) | lacking)
    except OSError as e:
        _not_shared(path, e)


def shared_folder(folder: Path | str) -> bool:
    """Return True if folder is one of a shared mailbox's folders: setgid and group-writable.

    For writers that do not read mailslot.json (doctor's repairs): in a shared mailbox every
    folder is, because mailslot makes them so and ``init --shared`` converts old ones.
    """
    try:
        mode = os.lstat(folder).st_mode
    except OSError:
        return False
    return stat.S_ISDIR(mode) and not _lacking(mode)


def mkdir(path: Path, shared: bool) -> None:
    """Create the folder path (mode 0o777 less the umask), shared with the group if asked.

    Raise OSError as os.mkdir does (FileExistsError if it is there already).
    """
    os.mkdir(path, FOLDER_MODE)
    if shared:
        share_path(path)


def makedirs(path: Path, shared: bool | None) -> None:
    """Create path and its missing parents (as ``mkdir -p``); nothing if it exists.

    shared None: each new folder is shared if the folder it is made in is (doctor's way).
    """
    if path.is_dir():
        return
    makedirs(path.parent, shared)
    try:
        mkdir(path, shared_folder(path.parent) if shared is None else shared)
    except FileExistsError:
        if not path.is_dir():  # a file; a folder means another process made it meanwhile
            raise


def entries(n: int) -> str:
    """Return "1 file or folder" or "N files and folders"."""
    return "1 file or folder" if n == 1 else f"{n} files and folders"


def euid() -> int:
    """Return the effective user id of this process (-1 where there are none: Windows)."""
    return os.geteuid() if hasattr(os, "geteuid") else -1


def user_name(uid: int) -> str:
    """Return the login name of uid, or the number as text."""
    try:
        import pwd  # Unix only: imported here so that importing mailslot works everywhere

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)


def group_name(gid: int) -> str:
    """Return the name of group gid, or the number as text."""
    try:
        import grp  # Unix only, as pwd

        return grp.getgrgid(gid).gr_name
    except (ImportError, KeyError):
        return str(gid)


@dataclass
class Sharing:
    """How the files and folders of a root stand towards its group (see survey)."""

    group: int
    owners: set[int] = field(default_factory=set)
    #: Files and folders another member of the group cannot write (or, in a shared mailbox,
    #: that lack what sharing gives: g+rw, folders g+rwxs, the root's group), by owner.
    lacking: dict[int, list[Path]] = field(default_factory=dict)
    #: Those that were fixed (their modes or group changed), when fixing was asked.
    fixed: list[Path] = field(default_factory=list)

    @property
    def left(self) -> list[Path]:
        """Return what still lacks group access, after any fixing."""
        done = set(self.fixed)
        return [p for paths in self.lacking.values() for p in paths if p not in done]


def _group_can_write(st: os.stat_result, gid: int, *, shared: bool) -> bool:
    """Return True if a member of group gid may write the entry st; shared: as sharing wants."""
    if shared:
        return st.st_gid == gid and not _lacking(st.st_mode)
    world = 0o003 if stat.S_ISDIR(st.st_mode) else 0o002  # a folder: write and search
    if st.st_mode & world == world:
        return True
    return st.st_gid == gid and not _lacking(st.st_mode) & 0o030


def survey(root: Path, *, shared: bool, fix: bool) -> Sharing:
    """Return who owns the files and folders under root and which the group cannot write.

    An entry another group member can write is one of the root's group with group write (a
    folder also group search), or world-writable. shared also asks for setgid on folders. With
    fix, each entry this process may change (its own, or any as root) gets what it lacks: the
    root folder's group, g+rw, and for a folder g+rwx and setgid. Symlinks are left alone
    (mailslot refuses them). Entries that vanish meanwhile are skipped.
    """
    try:
        gid = os.lstat(root).st_gid
    except OSError:
        return Sharing(group=-1)
    out = Sharing(group=gid)
    me = euid()
    for path in _tree(root):
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode):
            continue
        out.owners.add(st.st_uid)
        if _group_can_write(st, gid, shared=shared):
            continue
        out.lacking.setdefault(st.st_uid, []).append(path)
        if fix and (st.st_uid == me or me == 0):
            try:
                if st.st_gid != gid:
                    os.chown(path, -1, gid)  # the owner may if in that group; root may
                # chown clears setgid on some systems: set the mode after it.
                os.chmod(path, stat.S_IMODE(st.st_mode) | _lacking(st.st_mode))
            except OSError:
                continue
            out.fixed.append(path)
    return out


def _tree(root: Path) -> Iterator[Path]:
    """Yield root and every path under it, folders before what is in them (no symlinks followed)."""
    yield root
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            yield Path(folder) / name
