"""The store: a mailbox root of threads, each a folder of sequence-numbered JSON messages.

Contract (design.md §2-3): a message is written and fsynced to a temp file under
``.state/tmp/``, then published with ``os.link`` onto the next free ``<seq>.json`` of its thread.
``link`` never replaces an existing name, so two writers can never overwrite each other, with
or without the thread's lock; the lock (a blocking, fair ``flock``) only keeps writers of one
machine from colliding. A published file is never modified again. Readers find new messages
by opening ``seq+1``, ``seq+2``, ... until one is missing, so seqs are contiguous from 1 and a
message becomes visible whole or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import errno
import hashlib
import logging
import os
import secrets
import shutil
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import portalocker

from mailslot._errors import (
    InvalidMessage,
    InvalidName,
    InvalidState,
    MailslotError,
    NameTaken,
    NoSuchAgent,
    NoSuchMessage,
    NoSuchThread,
    NotFound,
    RootError,
    StorageError,
)
from mailslot._format import (
    FORMAT,
    MESSAGE_KEYS,
    PRIORITIES,
    STATES,
    TYPES,
    AgentCard,
    Damage,
    Message,
    Page,
    Pending,
    ThreadInfo,
    check_content,
    check_message_file,
    check_meta,
    dumps,
    loads,
    max_message_file_bytes,
    message_name,
    now_iso,
    parse_message,
)
from mailslot._log import DEFAULT_GRACE_S, Ages, Listings
from mailslot._names import check_key, check_name, check_topic, slugify
from mailslot._presence import (
    DEFAULT_STALE_AFTER,
    PRESENCE_STATUSES,
    NameHold,
    Presence,
    pid_alive,
)
from mailslot._presence import effective as presence_of
from mailslot._wait import (
    DISCOVERY_INTERVAL_S,
    SAFETY_RECHECK_S,
    WAIT_MODES,
    Arrivals,
    Watcher,
    filesystem_type,
    is_network_fs,
)

__all__ = [
    "FORMAT",
    "PRIORITIES",
    "STATES",
    "TYPES",
    "WAIT_MODES",
    "AgentCard",
    "Arrivals",
    "Damage",
    "Damaged",
    "Mailbox",
    "Message",
    "NameHold",
    "Page",
    "Pending",
    "Presence",
    "Settings",
    "ThreadInfo",
    "default_root",
    "find_root",
]

log = logging.getLogger("mailslot")

ROOT_DIRNAME = ".mailslot"
DEFAULT_MAX_CONTENT = 256 * 1024
MAX_DESCRIPTION_CHARS = 2000
MAX_PAGE = 1000
STALE_TMP_SECONDS = 3600.0
DEFAULT_POLL_INTERVAL = 0.1
# How a writer claims a seq: "link" publishes a finished file with a no-replace hard link (safe
# everywhere hard links exist); "exclusive-create" creates the final name with O_EXCL and
# writes into it, for filesystems without hard links, at a risk (see _no_link_error).
CLAIMS = ("link", "exclusive-create")
PENDING_RECHECK_S = 0.1
MAX_UNANSWERED = 1000  # per agent and thread, remembered by the thread index
CONFLICT_TEXT = (
    "holds a git merge conflict: two clones both wrote seq {seq}. Readers stop here until it is "
    "resolved; run `mailslot doctor --fix` (it keeps both messages), then commit the result"
)
_ID_NAMESPACE = uuid.UUID("6f1c1a8e-52a4-4e0c-9d0c-6d61696c736c")
_HOST = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:64] or "host"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class Damaged(MailslotError):
    """A file of the mailbox exists but cannot be read as what it should be."""

    def __init__(self, damage: Damage) -> None:
        self.path = Path(damage.path)
        self.reason = damage.reason
        super().__init__(f"{damage.path}: {damage.reason} (inspect it, or restore it from git)")


@dataclass(frozen=True, slots=True)
class Settings:
    """The settings of a mailbox, from its mailslot.json."""

    format: int = FORMAT
    fsync: bool = True
    lock: bool = True
    max_content_bytes: int = DEFAULT_MAX_CONTENT
    wait_mode: str = "auto"
    poll_interval: float = DEFAULT_POLL_INTERVAL
    claim: str = "link"
    #: Seconds an empty or half-written file, or a missing seq with later ones present, is
    #: waited for before readers report it and step past it (foreign writers: git, sync tools).
    grace_s: float = DEFAULT_GRACE_S

    @classmethod
    def from_json(cls, doc: dict[str, Any], path: Path) -> Settings:
        """Return settings read from a mailslot.json document; raise RootError if invalid."""
        fmt = doc.get("format")
        if type(fmt) is not int:
            raise RootError(path, f"{path} has no integer 'format'; it is not a mailslot config")
        out = cls(format=fmt)
        try:
            return out.with_overrides(
                fsync=doc.get("fsync"),
                lock=doc.get("lock"),
                max_content_bytes=doc.get("max_content_bytes"),
                wait_mode=doc.get("wait_mode"),
                poll_interval=doc.get("poll_interval"),
                claim=doc.get("claim"),
                grace_s=doc.get("grace_s"),
            )
        except ValueError as e:
            raise RootError(path, f"{path}: {e}") from None

    def with_overrides(
        self,
        *,
        fsync: object = None,
        lock: object = None,
        max_content_bytes: object = None,
        wait_mode: object = None,
        poll_interval: object = None,
        claim: object = None,
        grace_s: object = None,
    ) -> Settings:
        """Return these settings with every non-None value replaced; raise ValueError if bad."""
        out = self
        if fsync is not None:
            if type(fsync) is not bool:
                raise ValueError("'fsync' must be true or false")
            out = replace(out, fsync=fsync)
        if lock is not None:
            if type(lock) is not bool:
                raise ValueError("'lock' must be true or false")
            out = replace(out, lock=lock)
        if max_content_bytes is not None:
            if type(max_content_bytes) is not int or max_content_bytes < 1:
                raise ValueError("'max_content_bytes' must be a whole number of bytes >= 1")
            out = replace(out, max_content_bytes=max_content_bytes)
        if wait_mode is not None:
            if wait_mode not in WAIT_MODES:
                raise ValueError(f"'wait_mode' must be one of {', '.join(WAIT_MODES)}")
            out = replace(out, wait_mode=str(wait_mode))
        if poll_interval is not None:
            if type(poll_interval) not in (int, float) or not 0.01 <= poll_interval <= 60:  # type: ignore[operator]
                raise ValueError("'poll_interval' must be a number of seconds from 0.01 to 60")
            out = replace(out, poll_interval=float(poll_interval))  # type: ignore[arg-type]
        if claim is not None:
            if claim not in CLAIMS:
                raise ValueError(f"'claim' must be one of {', '.join(CLAIMS)}")
            out = replace(out, claim=str(claim))
        if grace_s is not None:
            if type(grace_s) not in (int, float) or not 0 <= grace_s <= 3600:  # type: ignore[operator]
                raise ValueError("'grace_s' must be a number of seconds from 0 to 3600")
            out = replace(out, grace_s=float(grace_s))  # type: ignore[arg-type]
        return out


@dataclass(slots=True)
class _Index:
    """What a thread's messages up to seq say; cached in .state/index/, rebuilt from messages."""

    seq: int = 0
    state: str = "discuss"
    summary: str | None = None
    participants: tuple[str, ...] = ()
    last_activity: str = ""
    incarnation: str = ""
    #: agent -> seqs of messages addressed to it that it has not answered (reply_to) yet.
    unanswered: dict[str, list[int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return the index as a JSON-able dict."""
        return {
            "seq": self.seq,
            "state": self.state,
            "summary": self.summary,
            "participants": list(self.participants),
            "last_activity": self.last_activity,
            "incarnation": self.incarnation,
            "unanswered": {a: list(s) for a, s in self.unanswered.items()},
        }

    def add(self, m: Message) -> None:
        """Take what message m says into the index."""
        if m.sender not in self.participants:
            self.participants = (*self.participants, m.sender)
        self.last_activity = m.created_at
        new_state = m.meta.get("state") if m.type == "state" else None
        if new_state in STATES:
            self.state = str(new_state)
            if new_state == "closed":
                self.summary = m.content or None
        if m.reply_to is not None and m.reply_to in self.unanswered.get(m.sender, ()):
            self.unanswered[m.sender].remove(m.reply_to)
        for agent in m.to:
            if agent != m.sender:
                seqs = self.unanswered.setdefault(agent, [])
                seqs.append(m.seq)
                del seqs[:-MAX_UNANSWERED]


# ---------------------------------------------------------------------------- finding roots


def _main_worktree(dotgit: Path) -> Path | None:
    """Return the main worktree of the linked worktree whose .git file is dotgit, if any."""
    try:
        text = dotgit.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not text.startswith("gitdir:"):
        return None
    gitdir = (dotgit.parent / text[len("gitdir:") :].strip()).resolve()
    try:
        common = (gitdir / (gitdir / "commondir").read_text(encoding="utf-8").strip()).resolve()
    except OSError:
        return None  # a submodule's .git file: it has no main worktree of its own
    if common.name != ".git":
        return None  # bare repository: no main worktree
    return common.parent


def _git_top(start: Path) -> tuple[Path, Path] | None:
    """Return (worktree top, main worktree top) of the git checkout holding start, if any."""
    for p in (start, *start.parents):
        dotgit = p / ".git"
        if dotgit.is_dir():
            return p, p
        if dotgit.is_file():
            main = _main_worktree(dotgit)
            return p, (main if main is not None else p)
    return None


def find_root(start: Path | str | None = None) -> Path:
    """Return the nearest mailbox root above start (default: the working directory).

    Walks up to the nearest ``.mailslot/`` folder the way git finds ``.git``. Inside a linked
    git worktree the walk starts from the same place in the main worktree, so agents in several
    worktrees of one repository share one mailbox. Raise RootError if there is none.
    """
    here = Path.cwd() if start is None else Path(start)
    here = here.resolve()
    git = _git_top(here)
    if git is not None and git[0] != git[1]:
        try:
            here = git[1] / here.relative_to(git[0])
        except ValueError:
            here = git[1]
    for p in (here, *here.parents):
        if (p / ROOT_DIRNAME).is_dir():
            return p / ROOT_DIRNAME
    raise RootError(
        here,
        f"no {ROOT_DIRNAME}/ folder in {here} or above: run `mailslot init` to create one, "
        "or pass --root / set MAILSLOT_ROOT",
    )


def default_root(start: Path | str | None = None) -> Path:
    """Return where `mailslot init` puts a new root: the main git worktree's top, else start."""
    here = (Path.cwd() if start is None else Path(start)).resolve()
    git = _git_top(here)
    return (git[1] if git is not None else here) / ROOT_DIRNAME


# ---------------------------------------------------------------------------- small helpers


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | _CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _storage_error(e: OSError, root: Path, doing: str) -> StorageError:
    """Return the StorageError that tells the user what a failed write means and what to do."""
    where = e.filename or root
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        msg = (
            f"no space left on the device holding {root} while {doing}; nothing was stored: "
            "free some space and retry"
        )
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        msg = (
            f"the mailbox at {root} is not writable ({e.strerror}: {where}) while {doing}; "
            "nothing was stored: check the folder's permissions or mount options"
        )
    else:
        msg = f"{doing} failed ({e.strerror or e}: {where}); nothing was stored"
    return StorageError(where, msg, e.errno)


# ---------------------------------------------------------------------------- the mailbox


class Mailbox:
    """A mailbox root opened for reading and writing.

    Any number of Mailbox objects, in any number of processes, may use one root at once. An
    instance is safe to use from several threads. Opening sweeps temp files that dead writers
    left (``sweep=False`` to only look). Keyword arguments override the root's settings for
    this instance only (benchmarks and tests use ``fsync=False``, and
    ``lock=False`` to behave as on a network mount where locks do not reach).
    """

    def __init__(
        self,
        root: Path | str,
        *,
        fsync: bool | None = None,
        lock: bool | None = None,
        max_content_bytes: int | None = None,
        wait_mode: str | None = None,
        poll_interval: float | None = None,
        grace_s: float | None = None,
        sweep: bool = True,
    ) -> None:
        given = Path(root)
        if not given.exists():
            raise RootError(given, f"no mailbox at {given}: run `mailslot init {given}`")
        if not given.is_dir():
            raise RootError(given, f"{given} is a file, not a mailbox folder")
        self.root = given.resolve()
        config = self.root / "mailslot.json"
        try:
            doc = loads(config.read_bytes())
        except FileNotFoundError:
            raise RootError(
                config, f"{self.root} is not a mailbox (no mailslot.json): run `mailslot init`"
            ) from None
        except (OSError, ValueError) as e:
            raise RootError(
                config, f"{config} cannot be read as JSON ({e}); fix or restore it"
            ) from None
        if not isinstance(doc, dict):
            raise RootError(config, f"{config} must hold a JSON object")
        try:
            self.settings = Settings.from_json(doc, config).with_overrides(
                fsync=fsync,
                lock=lock,
                max_content_bytes=max_content_bytes,
                wait_mode=wait_mode,
                poll_interval=poll_interval,
                grace_s=grace_s,
            )
        except ValueError as e:
            raise InvalidMessage(str(e)) from None
        #: Why this root must not be written to (made by a newer mailslot), or None.
        self.read_only: str | None = None
        if self.settings.format > FORMAT:
            self.read_only = (
                f"{config} is format {self.settings.format}, made by a newer mailslot; this one "
                f"knows format {FORMAT}, so it reads but will not write here: upgrade mailslot "
                "(pip install -U mailslot)"
            )
        self._heads: dict[str, int] = {}
        self._listings = Listings()
        self._ages = Ages()
        self._index: dict[str, _Index] = {}
        self._records: dict[str, dict[str, Any]] = {}
        self._incarnations: dict[str, tuple[tuple[int, int, int], str]] = {}
        self._reported: set[str] = set()
        self._mode: str | None = None
        self._presence_docs: dict[str, dict[str, Any]] = {}
        self._watcher: Watcher | None = None
        self._watch_lock = threading.Lock()
        for sub in ("threads", "agents", ".state"):
            self._check_not_symlink(self.root / sub)
        if sweep and self.read_only is None:
            self.sweep_tmp()

    # ------------------------------------------------------------------ creating a root

    @classmethod
    def init(cls, root: Path | str, *, fsync: bool = True, lock: bool = True) -> Mailbox:
        """Create a mailbox root at root (or open the one there) and return it."""
        path = Path(root)
        try:
            path.mkdir(parents=True, exist_ok=True)
            config = path / "mailslot.json"
            if not config.exists():
                doc = {"format": FORMAT, "fsync": fsync, "lock": lock}
                tmp = path / f".mailslot.json.{os.getpid()}.{secrets.token_hex(4)}"
                tmp.write_bytes(dumps(doc))
                try:
                    os.link(tmp, config)  # two inits racing: the first config wins
                except FileExistsError:
                    pass
                except OSError:
                    # No hard links here (an SMB share): create it exclusively instead. Posts
                    # will explain what that means for messages before any is stored.
                    with contextlib.suppress(FileExistsError), config.open("xb") as f:
                        f.write(dumps(doc))
                finally:
                    tmp.unlink()
            ignore = path / ".gitignore"
            if not ignore.exists():
                ignore.write_text(
                    "# mailslot: presence, cursors, locks and caches are per machine\n.state/\n",
                    encoding="utf-8",
                )
            for sub in ("threads", "agents", ".state/tmp", ".state/locks"):
                (path / sub).mkdir(parents=True, exist_ok=True)
        except FileExistsError as e:
            raise RootError(
                path, f"cannot create a mailbox at {path}: {e.filename} is a file"
            ) from None
        except NotADirectoryError:
            raise RootError(
                path, f"cannot create a mailbox at {path}: a parent is a file"
            ) from None
        except OSError as e:
            raise _storage_error(e, path, "creating the mailbox") from None
        return cls(path)

    # ------------------------------------------------------------------ paths and safety

    def _check_not_symlink(self, path: Path) -> None:
        if path.is_symlink():
            raise RootError(
                path,
                f"{path} is a symlink (to {os.readlink(path)}); mailslot never follows links "
                "inside a root: replace it with a real folder",
            )

    def _dir(self, rel: str, *, create: bool = True) -> Path:
        """Return root/rel after checking that no part of it is a symlink; create it if asked.

        Checked on every call (a few lstat calls), not once: a folder swapped for a symlink
        after the mailbox was opened must not lead a write out of the root.
        """
        current = self.root
        for part in Path(rel).parts:
            current = current / part
            try:
                mode = os.lstat(current).st_mode
            except FileNotFoundError:
                if not create:
                    return self.root / rel
                if self.read_only is not None:
                    raise RootError(self.root, self.read_only) from None
                try:
                    current.mkdir()
                except FileExistsError:
                    mode = os.lstat(current).st_mode  # made by someone else meanwhile
                except OSError as e:
                    raise _storage_error(e, self.root, f"creating {current}") from None
                else:
                    continue
            except OSError as e:
                raise _storage_error(e, self.root, f"looking at {current}") from None
            if stat.S_ISLNK(mode):
                self._check_not_symlink(current)
            if not stat.S_ISDIR(mode):
                raise RootError(current, f"{current} should be a folder but is a file")
        return self.root / rel

    def _thread_dir(self, thread: str) -> Path:
        """Return the folder of an existing thread; raise InvalidName, NoSuchThread or RootError.

        Checked on every call (one lstat): a thread folder may vanish, or be swapped for a
        symlink, between two calls.
        """
        check_name(thread, "thread id")
        path = self.root / "threads" / thread
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            mode = 0
        except OSError as e:
            raise RootError(path, f"cannot look at {path}: {e.strerror}") from None
        if stat.S_ISDIR(mode):
            return path
        self._check_not_symlink(self.root / "threads")
        self._check_not_symlink(path)
        known = self._thread_ids()
        raise NoSuchThread(thread, difflib.get_close_matches(thread, known, n=3, cutoff=0.6))

    def _report(self, damage: Damage) -> Damage:
        if damage.path not in self._reported:
            self._reported.add(damage.path)
            log.warning("skipping damaged file %s", damage)
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
            parts = entry.name.split(".")
            try:
                stale = now - entry.stat(follow_symlinks=False).st_mtime > STALE_TMP_SECONDS
                if len(parts) >= 3 and parts[0] == _HOST and parts[1].isdigit():
                    stale = stale or not pid_alive(int(parts[1]))
                if not stale:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                continue
        return removed

    def _tmp_name(self, suffix: str) -> Path:
        # Every write starts with a temp file: this is where a root we must not write stops it.
        if self.read_only is not None:
            raise RootError(self.root, self.read_only)
        return self._dir(".state/tmp") / f"{_HOST}.{os.getpid()}.{secrets.token_hex(8)}.{suffix}"

    def _write_tmp(self, data: bytes) -> Path:
        path = self._tmp_name("tmp")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC | _NOFOLLOW, 0o644)
            try:
                _write_all(fd, data)
                if self.settings.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                path.unlink()
            raise _storage_error(e, self.root, "writing the message") from None
        return path

    @contextlib.contextmanager
    def _locked(self, thread: str) -> Iterator[None]:
        """Hold the thread's lock: a blocking exclusive flock, fair to waiting writers."""
        if not self.settings.lock:
            yield
            return
        # Lock files are never deleted: a writer blocked on a deleted file's lock would hold
        # a lock nobody else sees, and two writers would publish at once.
        path = self._dir(".state/locks") / f"{thread}.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _CLOEXEC | _NOFOLLOW, 0o644)
        except OSError as e:
            raise _storage_error(e, self.root, "opening the thread's lock file") from None
        try:
            portalocker.lock(fd, portalocker.LockFlags.EXCLUSIVE)
            try:
                yield
            finally:
                portalocker.unlock(fd)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ head and reading

    @staticmethod
    def _exists(tdir: Path, seq: int) -> bool:
        return os.path.lexists(tdir / message_name(seq))

    def _probe_head(self, thread: str, tdir: Path) -> int:
        """Return the highest seq in the thread, probing with stat from the remembered hint.

        Costs O(new messages) from a good hint and O(log n) stats cold. It sees past gaps (a
        missing seq while later files exist, as git or a sync tool may leave them), so a writer
        never claims a seq inside a gap that readers may already have stepped over, and never
        acknowledges a message where readers cannot reach it. Listing the folder is needed only
        when it changed and the next names are missing (see Listings.beyond).
        """
        hint = self._heads.get(thread, 0)
        if hint and not self._exists(tdir, hint):
            hint = 0  # the folder went back in time (restored from git): search afresh
        if hint == 0:
            low, high = 0, 1
            while self._exists(tdir, high):
                low, high = high, high * 2
            while high - low > 1:  # invariant: low exists (or is 0), high does not
                mid = (low + high) // 2
                if self._exists(tdir, mid):
                    low = mid
                else:
                    high = mid
            hint = low
        while True:
            while self._exists(tdir, hint + 1):
                hint += 1
            beyond = self._listings.beyond(thread, tdir, hint + 1)
            if beyond is None:
                break
            hint = beyond
        self._heads[thread] = hint
        return hint

    def head(self, thread: str) -> int:
        """Return the seq of the newest message in thread (0 if none); raise NoSuchThread."""
        return self._probe_head(thread, self._thread_dir(thread))

    def _load(self, thread: str, tdir: Path, seq: int) -> Message | Damage | Pending | None:
        """Return message seq, why it cannot be read, or None if it is absent.

        An unreadable file that changed less than grace_s ago is Pending (still being written
        by git, a sync tool or an editor), and so is a file holding a git merge conflict (until
        `mailslot doctor --fix` resolves it); only an older one is Damage.
        """
        path = tdir / message_name(seq)
        try:
            fd = os.open(path, os.O_RDONLY | _CLOEXEC | _NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                return self._report(Damage(str(path), "is a symlink; messages are real files"))
            return self._report(Damage(str(path), f"cannot be opened: {e.strerror}"))
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                return self._report(Damage(str(path), "is a folder, not a message"))
            if not stat.S_ISREG(st.st_mode):
                return self._report(Damage(str(path), "is not a regular file"))
            size = st.st_size
            limit = max_message_file_bytes(self.settings.max_content_bytes)
            if size > limit:
                return self._report(
                    Damage(str(path), f"is {size} bytes, too large to be a message")
                )
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read()
        except OSError as e:
            return self._report(Damage(str(path), f"cannot be read: {e.strerror}"))
        finally:
            os.close(fd)
        try:
            return parse_message(data, thread, seq)
        except ValueError as e:
            return self._unreadable(thread, seq, path, st, data, str(e))

    def _unreadable(
        self, thread: str, seq: int, path: Path, st: os.stat_result, data: bytes, why: str
    ) -> Damage | Pending:
        since = self._ages.since(str(path), st)
        if data.startswith(b"<<<<<<< ") or b"\n<<<<<<< " in data:
            if str(path) not in self._reported:
                self._reported.add(str(path))
                log.warning("%s holds a git merge conflict; run `mailslot doctor --fix`", path)
            return Pending(thread, seq, str(path), CONFLICT_TEXT.format(seq=seq), since, True)
        grace = self.settings.grace_s
        if time.time() - since < grace:
            what = "is empty" if not data.strip() else f"is incomplete ({why})"
            return Pending(
                thread, seq, str(path),
                f"{what}; it may still be arriving (git, a sync tool, an editor): readers wait "
                f"for it up to {grace:g} s after its last change, then report it and go on",
                since,
            )  # fmt: skip
        return self._report(Damage(str(path), why))

    def _gap(self, thread: str, tdir: Path, first: int, nxt: int) -> Damage | Pending:
        """Return what the missing seqs first..nxt-1 (nxt has a file) mean for a reader now."""
        path = tdir / message_name(first)
        span = f"seq {first} is" if nxt == first + 1 else f"seqs {first}-{nxt - 1} are"
        try:
            later = tdir / message_name(nxt)
            since = self._ages.since(str(later), os.lstat(later), arrival=True)
        except OSError:
            since = time.time()  # the later file went away meanwhile: look again
        grace = self.settings.grace_s
        if time.time() - since < grace:
            return Pending(
                thread, first, str(path),
                f"{span} missing while seq {nxt} exists; it may still be arriving (git, a sync "
                f"tool): readers wait up to {grace:g} s, then report it and go on",
                since,
            )  # fmt: skip
        return self._report(
            Damage(
                str(path),
                f"missing: {span} absent while seq {nxt} exists (deleted, or lost in a sync or a "
                "merge); restore it from git if you can, or run `mailslot doctor --fix` to fill "
                "the gap with a placeholder",
            )
        )

    def _walk(self, thread: str, tdir: Path, after: int, limit: int) -> Page:
        """Read up to limit messages past after: the one loop every reader uses.

        Damage and gaps older than grace_s are stepped over and reported in Page.skipped; the
        walk stops before anything Pending and says so in Page.pending, so no reader (nor the
        thread index) ever passes a message that is still arriving.
        """
        messages: list[Message] = []
        skipped: list[Damage] = []
        pending: Pending | None = None
        seq = after
        while len(messages) < limit:
            item = self._load(thread, tdir, seq + 1)
            if item is None:
                nxt = self._listings.beyond(thread, tdir, seq + 1)
                if nxt is None:
                    break
                gap = self._gap(thread, tdir, seq + 1, nxt)
                if isinstance(gap, Pending):
                    pending = gap
                    break
                skipped.append(gap)
                seq = nxt - 1
                continue
            if isinstance(item, Pending):
                pending = item
                break
            seq += 1
            if isinstance(item, Damage):
                skipped.append(item)
            else:
                messages.append(item)
        has_more = (
            pending is None
            and len(messages) == limit
            and (
                self._exists(tdir, seq + 1)
                or self._listings.beyond(thread, tdir, seq + 1) is not None
            )
        )
        return Page(messages, seq, has_more, skipped, pending)

    def read(self, thread: str, after: int = 0, limit: int = 100) -> Page:
        """Return up to limit messages with seq > after, in seq order.

        A file that is empty, half-written or missing while later seqs exist is pending for
        grace_s after its last change: the read stops before it and names it in Page.pending.
        After that it is stepped over, reported in Page.skipped and logged; so are files that
        cannot be read. Raise NoSuchThread, or InvalidMessage for a bad after/limit.
        """
        tdir = self._thread_dir(thread)
        if type(after) is not int or after < 0:
            raise InvalidMessage(f"after must be a whole number >= 0, not {after!r}")
        if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
            raise InvalidMessage(f"limit must be between 1 and {MAX_PAGE}, not {limit!r}")
        page = self._walk(thread, tdir, after, limit)
        if page.cursor > self._heads.get(thread, 0):
            self._heads[thread] = page.cursor
        return page

    def __iter__(self) -> Iterator[str]:
        """Iterate over thread ids."""
        return iter(self._thread_ids())

    def messages(self, thread: str, after: int = 0) -> Iterator[Message]:
        """Yield every readable message of thread with seq > after, in seq order."""
        while True:
            page = self.read(thread, after, MAX_PAGE)
            yield from page.messages
            if page.cursor == after:
                return
            after = page.cursor

    def get(self, thread: str, seq: int) -> Message:
        """Return message seq of thread; raise NoSuchThread, NoSuchMessage or Damaged."""
        tdir = self._thread_dir(thread)
        if type(seq) is not int or seq < 1:
            raise InvalidMessage(f"seq must be a whole number >= 1, not {seq!r}")
        item = self._load(thread, tdir, seq)
        if item is None:
            raise NoSuchMessage(thread, seq, self._probe_head(thread, tdir))
        if isinstance(item, Damage):
            raise Damaged(item)
        if isinstance(item, Pending):
            raise Damaged(Damage(item.path, item.reason))
        return item

    # ------------------------------------------------------------------ writing

    def _check_recipients(self, to: object) -> list[str]:
        if isinstance(to, str):
            to = [to]
        if not isinstance(to, list | tuple):
            raise InvalidMessage(f"to must be a list of agent names, not {type(to).__name__}")
        names: list[str] = []
        for name in to:
            check_name(name, "agent name")
            if not os.path.lexists(self.root / "agents" / f"{name}.json"):
                raise NoSuchAgent(name, [c.name for c in self.agents()])
            if name not in names:
                names.append(name)
        return names

    def post(
        self,
        thread: str,
        content: str | bytes,
        *,
        sender: str,
        to: list[str] | tuple[str, ...] = (),
        type: str = "message",
        priority: str = "normal",
        reply_to: int | None = None,
        meta: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        """Store a message in thread and return its seq; see publish() for the contract."""
        return self.publish(
            thread, content, sender=sender, to=to, type=type, priority=priority,
            reply_to=reply_to, meta=meta, idempotency_key=idempotency_key,
        ).seq  # fmt: skip

    def publish(
        self,
        thread: str,
        content: str | bytes,
        *,
        sender: str,
        to: list[str] | tuple[str, ...] = (),
        type: str = "message",
        priority: str = "normal",
        reply_to: int | None = None,
        meta: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Message:
        """Store a message in thread and return it as stored (with its seq and id).

        The message is on disk (fsynced, unless the root says ``fsync: false``) when this
        returns. With an idempotency_key, a retry by the same sender with the same key returns
        the first message instead of storing a duplicate. Raise NoSuchThread,
        NoSuchAgent (unknown recipient), InvalidName, InvalidMessage or StorageError; on any
        error nothing is stored.
        """
        tdir = self._thread_dir(thread)
        if type == "state":
            raise InvalidMessage(
                "state messages are written by set_state(); use it to change state"
            )
        if type not in TYPES:
            raise InvalidMessage(f"type must be one of {', '.join(TYPES[:-1])}; not {type!r}")
        content = check_content(content, self.settings.max_content_bytes)
        if not content.strip():
            raise InvalidMessage("content is empty; write what you want to say")
        return self._publish(
            thread,
            tdir,
            sender=sender,
            to=to,
            type_=type,
            priority=priority,
            reply_to=reply_to,
            content=content,
            meta=meta,
            key=idempotency_key,
        )

    def _publish(
        self,
        thread: str,
        tdir: Path,
        *,
        sender: str,
        to: object,
        type_: str,
        priority: str,
        reply_to: object,
        content: str,
        meta: object,
        key: str | None,
    ) -> Message:
        check_name(sender, "agent name")
        if priority not in PRIORITIES:
            raise InvalidMessage(
                f"priority must be one of {', '.join(PRIORITIES)}; not {priority!r}"
            )
        recipients = self._check_recipients(to)
        if reply_to is not None:
            if type(reply_to) is not int or reply_to < 1:
                raise InvalidMessage(f"reply_to must be a message seq >= 1, not {reply_to!r}")
            if not self._exists(tdir, reply_to):
                raise NoSuchMessage(thread, reply_to, self._probe_head(thread, tdir))
        answered = reply_to if type(reply_to) is int else None
        meta = check_meta(meta)
        created_at = now_iso()
        if key is not None:
            check_key(key)
            message_id = uuid.uuid5(_ID_NAMESPACE, f"{thread}\0{sender}\0{key}").hex
        else:
            message_id = uuid.uuid4().hex
        doc = dict(
            zip(
                MESSAGE_KEYS,
                (
                    message_id,
                    sender,
                    recipients,
                    type_,
                    priority,
                    reply_to,
                    created_at,
                    content,
                    meta,
                ),
                strict=True,
            )
        )
        try:
            data = dumps(doc)
        except (ValueError, UnicodeEncodeError) as e:
            raise InvalidMessage(f"the message cannot be stored as JSON: {e}") from None
        check_message_file(data, self.settings.max_content_bytes)  # acknowledged => readable
        if self.read_only is not None:
            raise RootError(self.root, self.read_only)
        tmp = self._write_tmp(data) if self.settings.claim == "link" else None
        try:
            with self._locked(thread):
                if key is not None:
                    marker = self._dir(f".state/keys/{thread}") / (
                        hashlib.sha256(f"{sender}\0{key}".encode()).hexdigest()[:40] + ".json"
                    )
                    seen = self._find_keyed(thread, tdir, marker, message_id)
                    if seen is not None:
                        return self.get(thread, seen)
                    self._write_state_file(
                        marker, {"id": message_id, "after": self._probe_head(thread, tdir)}
                    )
                seq = self._claim(thread, tdir, tmp, data)
                if key is not None:
                    self._write_state_file(marker, {"id": message_id, "seq": seq, "after": seq - 1})
            if self.settings.fsync:
                try:
                    _fsync_dir(tdir)
                except OSError as e:
                    log.warning("fsync of %s failed after publishing seq %d: %s", tdir, seq, e)
            return Message(
                thread,
                seq,
                message_id,
                sender,
                recipients,
                type_,
                priority,
                answered,
                created_at,
                content,
                meta,
            )
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    tmp.unlink()

    def _no_link_error(self, target: Path, e: OSError) -> StorageError:
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

    def _claim(self, thread: str, tdir: Path, tmp: Path | None, data: bytes) -> int:
        """Publish the message as the next free seq of the thread; return the seq.

        With the default "link" claim, tmp (written and fsynced) is hard-linked to the name,
        which fails if the name exists. With "exclusive-create", the name is created with
        O_EXCL and data written into it.
        """
        if tmp is None:
            return self._claim_exclusive(thread, tdir, data)
        seq = self._probe_head(thread, tdir) + 1
        while True:
            target = tdir / message_name(seq)
            try:
                os.link(tmp, target)
            except FileExistsError:
                seq = self._probe_head(thread, tdir) + 1  # lost a race: take the next free one
                continue
            except PermissionError as e:
                if os.path.lexists(target):  # sshfs reports a lost race as EPERM
                    seq += 1
                    continue
                if e.errno == errno.EACCES:  # plainly not allowed to write here
                    raise _storage_error(e, self.root, f"publishing {target.name}") from None
                raise self._no_link_error(target, e) from None
            except OSError as e:
                if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
                    raise self._no_link_error(target, e) from None
                raise _storage_error(e, self.root, f"publishing {target.name}") from None
            self._heads[thread] = seq
            return seq

    def _claim_exclusive(self, thread: str, tdir: Path, data: bytes) -> int:
        seq = self._probe_head(thread, tdir) + 1
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC | _NOFOLLOW
        while True:
            target = tdir / message_name(seq)
            try:
                fd = os.open(target, flags, 0o644)
            except FileExistsError:
                seq = self._probe_head(thread, tdir) + 1
                continue
            except PermissionError as e:
                if os.path.lexists(target):
                    seq += 1
                    continue
                raise _storage_error(e, self.root, f"publishing {target.name}") from None
            except OSError as e:
                raise _storage_error(e, self.root, f"publishing {target.name}") from None
            try:
                _write_all(fd, data)
                if self.settings.fsync:
                    os.fsync(fd)
            except OSError as e:
                # The name is visible but holds a torn message: take it back, so the next
                # writer reuses the seq and readers (who wait on young files) never see it.
                with contextlib.suppress(OSError):
                    os.unlink(target)
                raise _storage_error(e, self.root, f"writing {target.name}") from None
            finally:
                os.close(fd)
            self._heads[thread] = seq
            return seq

    def _find_keyed(self, thread: str, tdir: Path, marker: Path, message_id: str) -> int | None:
        """Return the seq already stored under an idempotency marker, if the post happened."""
        try:
            doc = loads(marker.read_bytes())
            after = int(doc["after"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        seq = doc.get("seq")
        if type(seq) is int:
            item = self._load(thread, tdir, seq)
            if isinstance(item, Message) and item.id == message_id:
                return seq
        # A post that died between publishing and writing its seq: look for its message among
        # those that came after the marker was written.
        head = self._probe_head(thread, tdir)
        for s in range(max(after, 0) + 1, head + 1):
            item = self._load(thread, tdir, s)
            if isinstance(item, Message) and item.id == message_id:
                return s
        return None

    def _write_state_file(self, path: Path, doc: dict[str, Any]) -> None:
        """Atomically replace a file under .state/ (mutable, rebuildable data only)."""
        tmp = self._tmp_name("state")
        try:
            tmp.write_bytes(dumps(doc))
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise _storage_error(e, self.root, f"writing {path.name}") from None

    # ------------------------------------------------------------------ threads

    def _thread_ids(self) -> list[str]:
        path = self.root / "threads"
        self._check_not_symlink(path)
        try:
            names = os.listdir(path)
        except FileNotFoundError:
            return []
        except OSError as e:
            raise RootError(path, f"cannot list {path}: {e.strerror}") from None
        ids = []
        for name in names:
            try:
                check_name(name)
            except InvalidName:
                continue  # a stray file or folder; doctor reports it
            if (path / name).is_dir() and not (path / name).is_symlink():
                ids.append(name)
        return sorted(ids)

    def create_thread(self, topic: str, *, creator: str) -> ThreadInfo:
        """Return the thread for topic, creating it if it does not exist yet (get-or-create).

        The thread id is the topic's slug, so agents given the same topic meet in one thread.
        The folder appears with its thread.json already inside (it is renamed into place),
        and when two processes create it at once both get the same thread.
        """
        topic = check_topic(topic)
        thread = slugify(topic)
        check_name(creator, "agent name")
        threads = self._dir("threads")
        tdir = threads / thread
        if tdir.is_dir() or tdir.is_symlink():
            return self.thread(thread)
        stage = self._tmp_name("d")
        record = {"id": thread, "topic": topic, "created_by": creator, "created_at": now_iso()}
        try:
            stage.mkdir()
            fd = os.open(stage / "thread.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC)
            try:
                _write_all(fd, dumps(record))
                if self.settings.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.rename(stage, tdir)
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            else:
                if self.settings.fsync:
                    _fsync_dir(threads)
        except OSError as e:
            raise _storage_error(e, self.root, f"creating thread {thread!r}") from None
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return self.thread(thread)

    def incarnation(self, thread: str) -> str:
        """Return a token of this incarnation of thread: it changes if the thread is deleted
        and created again (it is made from the immutable thread.json). Raise NoSuchThread.
        """
        path = self._thread_dir(thread) / "thread.json"
        try:
            st = os.stat(path)
        except OSError:
            return ""
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._incarnations.get(thread)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            with open(path, "rb") as f:
                token = hashlib.sha256(f.read(MAX_PAGE * 64)).hexdigest()[:16]
        except OSError:
            return ""
        if cached is not None and cached[1] != token:
            self._records.pop(thread, None)  # a new thread under the old id
            self._index.pop(thread, None)
            self._listings.forget(thread)
            self._heads.pop(thread, None)
        self._incarnations[thread] = (key, token)
        return token

    def _record(self, thread: str, tdir: Path) -> dict[str, Any]:
        self.incarnation(thread)  # forgets what was cached of an earlier incarnation
        cached = self._records.get(thread)
        if cached is not None:
            return cached
        path = tdir / "thread.json"
        try:
            doc = loads(path.read_bytes())
            if not (isinstance(doc, dict) and isinstance(doc.get("topic"), str)):
                raise ValueError("it is not a thread record with a topic")
        except FileNotFoundError:
            self._report(Damage(str(path), "is missing; the thread's topic is unknown"))
            return {"id": thread, "topic": thread, "created_by": "", "created_at": ""}
        except (OSError, ValueError) as e:
            self._report(Damage(str(path), f"cannot be read: {e}"))
            return {"id": thread, "topic": thread, "created_by": "", "created_at": ""}
        record = {
            "id": thread,
            "topic": doc["topic"],
            "created_by": str(doc.get("created_by", "")),
            "created_at": str(doc.get("created_at", "")),
        }
        self._records[thread] = record
        return record

    def _load_index(self, thread: str, path: Path) -> _Index:
        cached = self._index.get(thread)
        if cached is not None:
            return replace(cached)
        try:
            doc = loads(path.read_bytes())
            index = _Index(
                seq=int(doc["seq"]),
                state=doc["state"] if doc["state"] in STATES else "discuss",
                summary=doc["summary"] if isinstance(doc["summary"], str) else None,
                participants=tuple(str(p) for p in doc["participants"]),
                last_activity=str(doc["last_activity"]),
                incarnation=str(doc["incarnation"]),
                unanswered={
                    str(a): [int(s) for s in seqs] for a, seqs in doc["unanswered"].items()
                },
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return _Index()
        return index

    def thread(self, thread: str) -> ThreadInfo:
        """Return what is known of thread; raise NoSuchThread.

        State, participants and summary come from the messages; a cache under .state/index/
        means only messages new since the last look are read.
        """
        tdir = self._thread_dir(thread)
        record = self._record(thread, tdir)
        index = self._current_index(thread, tdir)
        return ThreadInfo(
            id=thread,
            topic=record["topic"],
            created_by=record["created_by"],
            created_at=record["created_at"],
            state=index.state,
            head=max(index.seq, self._probe_head(thread, tdir)),
            participants=list(index.participants),
            last_activity=index.last_activity or record["created_at"],
            summary=index.summary,
        )

    def unanswered(self, thread: str, agent: str) -> tuple[list[int], int]:
        """Return (seqs, upto): the messages up to seq upto addressed to agent and not answered.

        "Answered" means agent posted a message whose reply_to is that seq. From the thread
        index, so it costs only the messages new since the last look. upto stops before
        anything still arriving. Raise NoSuchThread.
        """
        check_name(agent, "agent name")
        index = self._current_index(thread, self._thread_dir(thread))
        return list(index.unanswered.get(agent, ())), index.seq

    def _current_index(self, thread: str, tdir: Path) -> _Index:
        """Return the thread index brought up to date with the folder (and saved if it moved)."""
        record = self._record(thread, tdir)
        incarnation = self.incarnation(thread)
        ipath = self.root / ".state" / "index" / f"{thread}.json"
        index = self._load_index(thread, ipath)
        if index.incarnation != incarnation or (index.seq and not self._exists(tdir, index.seq)):
            index = _Index(incarnation=incarnation)  # another thread, or ahead of the folder
        start = index.seq
        if record["created_by"] and record["created_by"] not in index.participants:
            index.participants = (record["created_by"], *index.participants)
        while True:  # never past a pending file: the index would miss what it says for good
            page = self._walk(thread, tdir, index.seq, MAX_PAGE)
            for item in page.messages:
                index.add(item)
            moved, index.seq = page.cursor != index.seq, page.cursor
            if not moved or page.pending is not None or len(page.messages) < MAX_PAGE:
                break
        self._index[thread] = index
        if index.seq > self._heads.get(thread, 0):
            self._heads[thread] = index.seq
        if index.seq != start:
            with contextlib.suppress(MailslotError, OSError):
                self._dir(".state/index")
                self._write_state_file(ipath, index.to_json())
        return index

    def threads(
        self, *, state: str | None = None, include_archived: bool = False
    ) -> list[ThreadInfo]:
        """Return the threads, most recently active first; archived ones only if asked."""
        if state is not None and state not in STATES:
            raise InvalidState(f"state must be one of {', '.join(STATES)}; not {state!r}")
        out = []
        for thread in self._thread_ids():
            try:
                info = self.thread(thread)
            except NotFound:
                continue  # removed while we listed
            if state is not None and info.state != state:
                continue
            if state is None and info.state == "archived" and not include_archived:
                continue
            out.append(info)
        out.sort(key=lambda t: (t.last_activity, t.id), reverse=True)
        return out

    def set_state(self, thread: str, state: str, *, sender: str, summary: str | None = None) -> int:
        """Record a lifecycle change of thread as a `state` message and return its seq.

        The lifecycle is discuss -> implement -> review -> done -> closed; steps may be
        skipped, a thread may step back to reopen or rework, and `archived` is reachable from
        any state. A summary (Markdown) may go with any change, typically with `closed`.
        Raise InvalidState if state is unknown or already the thread's state.
        """
        if state not in STATES:
            raise InvalidState(f"state must be one of {', '.join(STATES)}; not {state!r}")
        current = self.thread(thread).state
        if state == current:
            raise InvalidState(f"thread {thread!r} is already in state {state!r}")
        content = check_content(summary or "", self.settings.max_content_bytes)
        message = self._publish(
            thread,
            self._thread_dir(thread),
            sender=sender,
            to=(),
            type_="state",
            priority="normal",
            reply_to=None,
            content=content,
            meta={"state": state, "previous": current},
            key=None,
        )
        return message.seq

    # ------------------------------------------------------------------ agents

    def register_agent(
        self,
        name: str,
        *,
        client: str | None = None,
        model: str | None = None,
        description: str | None = None,
    ) -> AgentCard:
        """Create or update the card of agent name and return it; None keeps a field as is."""
        check_name(name, "agent name")
        for field_name, value in (
            ("client", client),
            ("model", model),
            ("description", description),
        ):
            if value is not None and (
                not isinstance(value, str) or len(value) > MAX_DESCRIPTION_CHARS
            ):
                raise InvalidMessage(
                    f"{field_name} must be text of at most {MAX_DESCRIPTION_CHARS} characters"
                )
            if value is not None:
                check_content(value, MAX_DESCRIPTION_CHARS * 4)
        agents = self._dir("agents")
        path = agents / f"{name}.json"
        try:
            old: AgentCard | None = self.agent(name)
        except NoSuchAgent:
            old = None
        except Damaged:
            old = None  # a damaged card is replaced by a good one
        now = now_iso()
        card = AgentCard(
            name=name,
            client=client if client is not None else (old.client if old else None),
            model=model if model is not None else (old.model if old else None),
            description=description
            if description is not None
            else (old.description if old else None),
            registered_at=old.registered_at if old else now,
            updated_at=now,
        )
        tmp = self._tmp_name("card")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o644)
            try:
                _write_all(fd, dumps(card.to_dict()))
                if self.settings.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)  # a card is mutable: readers see the old or the new one whole
            if self.settings.fsync:
                _fsync_dir(agents)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise _storage_error(e, self.root, f"writing the card of {name!r}") from None
        return card

    def agent(self, name: str) -> AgentCard:
        """Return the card of agent name; raise NoSuchAgent or Damaged."""
        check_name(name, "agent name")
        path = self.root / "agents" / f"{name}.json"
        self._check_not_symlink(self.root / "agents")
        try:
            fd = os.open(path, os.O_RDONLY | _CLOEXEC | _NOFOLLOW)
        except FileNotFoundError:
            raise NoSuchAgent(name, self._agent_names()) from None
        except OSError as e:
            raise Damaged(Damage(str(path), f"cannot be opened: {e.strerror}")) from None
        try:
            with os.fdopen(fd, "rb") as f:
                doc = loads(f.read(64 * 1024))
            return AgentCard(
                name=name,
                client=_opt_str(doc.get("client")),
                model=_opt_str(doc.get("model")),
                description=_opt_str(doc.get("description")),
                registered_at=str(doc.get("registered_at", "")),
                updated_at=str(doc.get("updated_at", "")),
            )
        except (OSError, ValueError, AttributeError) as e:
            raise Damaged(self._report(Damage(str(path), f"is not an agent card: {e}"))) from None

    def _agent_names(self) -> list[str]:
        try:
            names = os.listdir(self.root / "agents")
        except OSError:
            return []
        out = []
        for n in names:
            if n.endswith(".json"):
                with contextlib.suppress(InvalidName):
                    out.append(check_name(n[: -len(".json")]))
        return sorted(out)

    def agents(self) -> list[AgentCard]:
        """Return every readable agent card, by name; damaged cards are logged and skipped."""
        cards = []
        for name in self._agent_names():
            with contextlib.suppress(NotFound, Damaged):
                cards.append(self.agent(name))
        return cards

    # ------------------------------------------------------------------ waiting

    @property
    def wait_mode(self) -> str:
        """Return how waits wake here: 'native' (file events), 'poll', or 'hybrid' (both).

        'auto' (the default setting) means native on a local disk and hybrid on a network
        mount (NFS, SMB/CIFS, sshfs and other FUSE or remote filesystems), where file events
        never report other machines' writes and only polling sees them. Native turns hybrid
        when the watch cannot be trusted (inotify limits reached); the watcher warns once.
        """
        if self._mode is None:
            mode = self.settings.wait_mode
            if mode == "auto":
                mode = "hybrid" if is_network_fs(filesystem_type(self.root)) else "native"
            self._mode = mode
        watcher = self._watcher
        if self._mode == "native" and watcher is not None and watcher.failure is not None:
            self._mode = "hybrid"  # events still wake where they work; polling covers the rest
        return self._mode

    def _subscribe(self, signal: Callable[[], None]) -> Callable[[], None]:
        """Have the process's watcher call signal on file events; return the unsubscriber."""
        if self.wait_mode == "poll":
            return lambda: None
        with self._watch_lock:
            if self._watcher is None:
                try:
                    # Not created here: a wait never writes, and the watcher waits for threads/
                    # to appear (and follows it when git or `mailslot init` replaces it).
                    self._watcher = Watcher.acquire(self._dir("threads", create=False))
                except OSError as e:  # no file events at all (limits are the watcher's to report)
                    log.warning("file events unavailable (%s); polling %s as well", e, self.root)
                    self._mode = "hybrid"
                    return lambda: None
            return self._watcher.subscribe(signal)

    def cursor(self, threads: str | Iterable[str] | None = None) -> dict[str, int]:
        """Return the head seq of each thread (default: all): a cursor that means "from now"."""
        if threads is None:
            names = self._thread_ids()
        else:
            names = [threads] if isinstance(threads, str) else list(threads)
        return {t: self.head(t) for t in names}

    def _wait_plan(
        self,
        threads: str | Iterable[str] | None,
        after: int | Mapping[str, int] | None,
        to: str | None,
        timeout: float,
        limit: int,
    ) -> _WaitPlan:
        if to is not None:
            check_name(to, "agent name")
        if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
            raise InvalidMessage(f"limit must be between 1 and {MAX_PAGE}, not {limit!r}")
        if not isinstance(timeout, int | float) or timeout < 0 or timeout != timeout:
            raise InvalidMessage(f"timeout must be a number of seconds >= 0, not {timeout!r}")
        names = (
            None if threads is None else ([threads] if isinstance(threads, str) else list(threads))
        )
        for name in names or ():
            self._thread_dir(name)
        if after is None:
            cursor = self.cursor(names)
        elif isinstance(after, Mapping):
            cursor = {}
            for name, seq in after.items():
                check_name(name, "thread id")
                if type(seq) is not int or seq < 0:
                    raise InvalidMessage(f"cursor of {name!r} must be a seq >= 0, not {seq!r}")
                cursor[name] = seq
        else:
            if names is None or len(names) != 1:
                raise InvalidMessage(
                    "after=<seq> needs exactly one thread; pass a dict for several"
                )
            if type(after) is not int or after < 0:
                raise InvalidMessage(f"after must be a whole number >= 0, not {after!r}")
            cursor = {names[0]: after}
        for name in names or ():
            cursor.setdefault(name, 0)
        return _WaitPlan(self, names, cursor, to, limit)

    def _tick(self, plan: _WaitPlan) -> float:
        if any(not p.blocked for p in plan.pending.values()):
            # Something is still arriving: look again soon, both to read it once it is whole
            # and to step past it once its grace period is over.
            return min(PENDING_RECHECK_S, self.settings.poll_interval)
        if self.wait_mode != "native":
            return self.settings.poll_interval
        # Right after a new thread appears, re-check often: its first message may land before
        # the observer has added a watch for its folder.
        return 0.05 if plan.fresh_until > time.monotonic() else SAFETY_RECHECK_S

    def wait(
        self,
        threads: str | Iterable[str] | None = None,
        after: int | Mapping[str, int] | None = None,
        *,
        to: str | None = None,
        timeout: float = 50.0,
        limit: int = 100,
    ) -> Arrivals:
        """Block until messages newer than the cursor exist, or timeout seconds pass.

        threads is one thread id, several, or None for every thread (threads created during
        the wait included). after is the seq to wait past (one thread), a cursor dict (as
        returned in Arrivals.cursor; threads missing from it start at 0), or None for "from
        now". With to=NAME only messages addressed to that agent are returned: its inbox.
        Returns at once if such messages already exist; a burst returns together, up to
        limit, in seq order per thread. A timeout returns empty Arrivals with timed_out=True.
        """
        plan = self._wait_plan(threads, after, to, timeout, limit)
        flag = threading.Event()
        unsubscribe = self._subscribe(flag.set)
        try:
            deadline = time.monotonic() + timeout
            while True:
                flag.clear()  # before checking: an event during the check is not lost
                if plan.check():
                    return plan.result(timed_out=False)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return plan.result(timed_out=True)
                flag.wait(min(remaining, self._tick(plan)))
        finally:
            unsubscribe()

    async def wait_async(
        self,
        threads: str | Iterable[str] | None = None,
        after: int | Mapping[str, int] | None = None,
        *,
        to: str | None = None,
        timeout: float = 50.0,
        limit: int = 100,
    ) -> Arrivals:
        """Await what wait() returns, without blocking the event loop; cancellable at once.

        Cancelling the awaiting task ends the wait at its current await and leaves nothing
        behind (no subscription, no thread, no lock: a wait never holds a lock).
        """
        plan = self._wait_plan(threads, after, to, timeout, limit)
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()

        def signal() -> None:  # runs on the observer thread: only hand over to the loop
            loop.call_soon_threadsafe(woken.set)

        unsubscribe = self._subscribe(signal)
        try:
            deadline = time.monotonic() + timeout
            while True:
                woken.clear()
                if plan.check():
                    return plan.result(timed_out=False)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return plan.result(timed_out=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(remaining, self._tick(plan)))
        finally:
            unsubscribe()

    # ------------------------------------------------------------------ presence and cursors

    def hold_name(
        self, name: str, *, client: str | None = None, stale_after: float = DEFAULT_STALE_AFTER
    ) -> NameHold:
        """Take agent name for this process and mark it online; return the hold.

        The name stays held until the hold is released (release_name) or the process dies.
        Raise NameTaken if a live process on this machine holds it, or a process on another
        machine refreshed it within stale_after seconds.
        """
        check_name(name, "agent name")
        if self.read_only is not None:
            raise RootError(self.root, self.read_only)
        path = self._dir(".state/presence") / f"{name}.lock"
        try:
            st = os.stat(self.root)
            hold = NameHold.try_take(name, path, f"{st.st_dev:x}:{st.st_ino:x}")
        except OSError as e:
            raise _storage_error(e, self.root, f"taking the name {name!r}") from None
        current = self.presence(name, stale_after=stale_after)
        if hold is None or (current.status != "offline" and current.host != _HOST):
            if hold is not None:
                hold.release()
            who = f"pid {current.pid} on {current.host}" if current.pid else "another process"
            if current.client:
                who += f", client {current.client}"
            raise NameTaken(name, who)
        self._presence_docs[name] = {"client": client, "started": now_iso()}
        try:
            self.set_presence(name, "online")
        except MailslotError:
            hold.release()
            raise
        return hold

    def release_name(self, hold: NameHold) -> None:
        """Mark the held name offline (a clean exit) and let it go."""
        if hold.held:
            with contextlib.suppress(MailslotError):
                self.set_presence(hold.name, "offline")
        hold.release()

    def set_presence(
        self,
        name: str,
        status: str,
        *,
        waiting_on: str | None = None,
        last_active: float | None = None,
    ) -> None:
        """Write this process's presence for name (a heartbeat); status online/waiting/offline.

        last_active is when the agent last did something (epoch seconds; default now).
        """
        if status not in PRESENCE_STATUSES:
            raise InvalidState(f"presence must be one of {', '.join(PRESENCE_STATUSES)}")
        known = self._presence_docs.setdefault(name, {"client": None, "started": now_iso()})
        doc = {
            "agent": name,
            "status": status,
            "client": known["client"],
            "pid": os.getpid(),
            "host": _HOST,
            "started": known["started"],
            "last_seen": now_iso(),
            "last_seen_epoch": time.time(),
            "waiting_on": waiting_on,
            "last_active_epoch": time.time() if last_active is None else last_active,
        }
        self._write_state_file(self._dir(".state/presence") / f"{name}.json", doc)

    def presence(self, name: str, *, stale_after: float = DEFAULT_STALE_AFTER) -> Presence:
        """Return what is known of agent name's presence (offline if never seen or gone)."""
        check_name(name, "agent name")
        try:
            doc = loads((self.root / ".state" / "presence" / f"{name}.json").read_bytes())
        except (OSError, ValueError):
            return Presence(agent=name, status="offline")
        if not isinstance(doc, dict):
            return Presence(agent=name, status="offline")
        return presence_of(doc, name, _HOST, stale_after)

    def presences(self, *, stale_after: float = DEFAULT_STALE_AFTER) -> list[Presence]:
        """Return the presence of every agent that ever had a presence file, by name."""
        try:
            names = os.listdir(self.root / ".state" / "presence")
        except OSError:
            return []
        out = []
        for n in sorted(names):
            if n.endswith(".json"):
                with contextlib.suppress(InvalidName):
                    out.append(
                        self.presence(check_name(n[: -len(".json")]), stale_after=stale_after)
                    )
        return out

    def load_cursor(self, agent: str, key: str) -> Any:
        """Return what save_cursor stored for agent under key, or None."""
        check_name(agent, "agent name")
        try:
            return loads((self.root / ".state" / "cursors" / agent / f"{key}.json").read_bytes())
        except (OSError, ValueError):
            return None

    def save_cursor(self, agent: str, key: str, value: Any) -> None:
        """Remember a read position of agent under key (a thread id, or '_inbox')."""
        check_name(agent, "agent name")
        with contextlib.suppress(MailslotError):  # a cursor is a convenience, never a failure
            self._write_state_file(self._dir(f".state/cursors/{agent}") / f"{key}.json", value)

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Stop watching (the process's observer stops with its last user); safe to repeat."""
        with self._watch_lock:
            watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.release()

    def __enter__(self) -> Mailbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Mailbox({str(self.root)!r})"


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


class _WaitPlan:
    """The state of one wait: which threads, the cursor, and what was found so far."""

    def __init__(
        self,
        box: Mailbox,
        threads: list[str] | None,
        cursor: dict[str, int],
        to: str | None,
        limit: int,
    ) -> None:
        self.box = box
        self.threads = threads
        self.cursor = cursor
        self.to = to
        self.limit = limit
        self.messages: list[Message] = []
        self.skipped: list[Damage] = []
        self.pending: dict[str, Pending] = {}
        self.known: set[str] = set(cursor)
        self.listed_at = 0.0
        self.fresh_until = 0.0

    def _names(self) -> list[str]:
        if self.threads is not None:
            return self.threads
        now = time.monotonic()
        if self.box.wait_mode == "native" or now - self.listed_at >= DISCOVERY_INTERVAL_S:
            self.listed_at = now
            listed = self.box._thread_ids()
            new = set(listed) - self.known
            if new:
                self.known.update(new)
                self.fresh_until = now + 1.0
            return sorted(self.known)
        return sorted(self.known)

    def check(self) -> bool:
        """Read whatever is new past the cursor; return True if it found messages to return."""
        box = self.box
        for thread in self._names():
            if len(self.messages) >= self.limit:
                break
            tdir = box.root / "threads" / thread
            seq = self.cursor.get(thread, 0)
            # The common case costs a stat of the next name and one of the folder.
            if (
                not box._exists(tdir, seq + 1)
                and box._listings.beyond(thread, tdir, seq + 1) is None
            ):
                self.pending.pop(thread, None)
                continue
            try:
                while len(self.messages) < self.limit:
                    page = box.read(thread, seq, self.limit - len(self.messages))
                    self.skipped.extend(page.skipped)
                    for m in page.messages:
                        if self.to is None or self.to in m.to:
                            self.messages.append(m)
                    if page.pending is not None:
                        self.pending[thread] = page.pending
                    else:
                        self.pending.pop(thread, None)
                    if page.cursor == seq or page.pending is not None:
                        seq = page.cursor
                        break
                    seq = page.cursor
            except (NotFound, RootError):
                continue  # removed or replaced while we waited: nothing to read there
            self.cursor[thread] = seq
        return bool(self.messages)

    def result(self, *, timed_out: bool) -> Arrivals:
        return Arrivals(
            list(self.messages),
            dict(self.cursor),
            timed_out,
            list(self.skipped),
            list(self.pending.values()),
        )
