"""News: which threads mailslot's writers just wrote, in one file every waiter can read.

Every writer of messages (a post, a message moved by ``doctor --fix``, messages landed by
``mailslot sync``) appends the thread's id and a newline to ``.state/news`` once the message
file is in place, before it says the message is stored. A waiting process reads what was
added since its last look: one ``stat`` when nothing was. So a wait sees every message that
was stored before it began, from any process on any machine sharing the folder, even one whose
file event is still on its way, and a poll tick finds a quiet thread's message at once instead
of when the sweep comes round to it.

The file is a hint, as file events are (design.md §4): the message files are the facts. A line
lost (a read-only folder, NFS appends from two machines that overwrite each other) costs
latency, never a message; a line that does not read as a thread id, or a file cut short, means
any thread may have changed. Writers start a new file past ``NEWS_MAX`` bytes by removing the
old one; a reader holds the old one open and reads it to its end before it moves on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path

from mailslot.store import modes
from mailslot.store.names import NAME_PATTERN
from mailslot.store.watch import filesystem_type, is_network_fs

log = logging.getLogger("mailslot")

NEWS = ".state/news"
NEWS_MAX = 1 << 20  # bytes (tens of thousands of posts) before a writer starts the file again
_LINE = re.compile(rb"(" + NAME_PATTERN.encode() + rb")\n")


#: root -> (the file's path; on a local disk: appends with O_APPEND; a shared folder: the
#: file is the group's)
_kind: dict[Path, tuple[str, bool, bool]] = {}


def tell(root: Path, thread: str) -> None:
    """Append thread to root's news; never raise (news is a hint: the message is stored).

    O_APPEND on a local disk, where it makes concurrent appends whole lines. Not on a network
    mount: there it is not atomic between machines anyway, and over smbnetfs (SMB through
    FUSE) one O_APPEND open fails with EIO and leaves every later call on the mount failing
    too. There a writer appends at the end it finds; two that race may lose a line, which
    costs latency only. The file is opened for each line, never held open (an open file would
    keep the disk from being remounted read-only or unmounted). A line written to a file
    another writer removed meanwhile (past NEWS_MAX) is written again to the new one: a reader
    that moved on to it would not read the old one again.
    """
    line = thread.encode() + b"\n"
    try:
        kind = _kind.get(root)
        if kind is None:
            local = not is_network_fs(filesystem_type(root))
            news = root / NEWS
            kind = _kind[root] = (str(news), local, modes.shared_folder(news.parent))
        path, local, shared = kind
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if local else 0)
        for _ in range(2):
            fd = os.open(path, flags, 0o666)
            try:
                if shared:
                    modes.share_fd(fd, path)  # every member of the group tells news here
                if not local:
                    os.lseek(fd, 0, os.SEEK_END)
                os.write(fd, line)
                st = os.fstat(fd)
            finally:
                os.close(fd)
            if st.st_nlink == 0:  # removed before the line was in: tell the file there is now
                continue
            if st.st_size > NEWS_MAX:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # readers holding it read it to its end
            return
    except OSError as e:  # a read-only folder, no .state/ yet, a full disk
        log.debug("news of %s not told: %s", thread, e)


class NewsReader:
    """One process's place in a root's news (``Waiting`` keeps one)."""

    def __init__(self, root: Path) -> None:
        self.path = root / NEWS
        self._fd: int | None = None
        self._ino: int | None = None
        self._at = 0  # bytes of the open file read (up to a whole line)
        self._started = False
        self._warned = False

    def read(self) -> set[str] | None:
        """Return the threads told since the last read, or None if any thread may have
        changed (a line that is not a thread id; the file cut short or gone unread).

        The first read only finds the end: what was told before it is for the caller's first
        look, which covers every thread."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        except OSError as e:
            self._failed(e)
            return set()
        if not self._started:
            self._started = True
            self._open(st, at_end=True)
            return set()
        if st is not None and st.st_ino == self._ino and st.st_size == self._at:
            return set()  # the one stat of a look where nothing was told
        told: set[str] | None = set()
        if self._fd is not None:
            told = self._drain()
        if st is not None and st.st_ino != self._ino:  # a new file: read it from its start
            self._open(st, at_end=False)
            more = self._drain() if self._fd is not None else set()
            told = None if told is None or more is None else told | more
        return told

    def _open(self, st: os.stat_result | None, *, at_end: bool) -> None:
        self.close()
        if st is None:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return  # gone meanwhile: the next read finds the new one
        got = os.fstat(fd)
        self._fd, self._ino = fd, got.st_ino
        self._at = got.st_size if at_end else 0

    def _drain(self) -> set[str] | None:
        """Read the open file from where we are to its last whole line."""
        assert self._fd is not None
        try:
            size = os.fstat(self._fd).st_size
            if size < self._at:  # cut short: whatever was between is unknown
                self._at = size
                return None
            data = os.pread(self._fd, size - self._at, self._at)
        except OSError as e:  # not a file (a folder in its place), an I/O error: events and
            self._failed(e)  # sweeps still find every message, as where news is never told
            return set()
        whole = data.rfind(b"\n") + 1
        self._at += whole
        told: set[str] = set()
        pos = 0
        while pos < whole:
            m = _LINE.match(data, pos)
            if m is None:
                return None  # a torn or foreign line: it may have named any thread
            told.add(m.group(1).decode())
            pos = m.end()
        return told

    def _failed(self, e: OSError) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "%s cannot be read (%s): waits find new messages by file events and polling "
                "alone; remove it if it is not a file",
                self.path,
                e.strerror or e,
            )

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = self._ino = None
        self._at = 0
