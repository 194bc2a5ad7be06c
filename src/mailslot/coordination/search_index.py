"""The search index: SQLite FTS5, a cache of the folder that it can always rebuild.

The index (from the standard library's sqlite3) is ``.state/search/index.sqlite``, or, when the
root is on a network mount (where SQLite's locks are not reliable), a file in the user's cache
folder keyed by the root. It is brought up to date at query time from each thread's position in
it, so freshness costs the new messages only; it never records past a message still arriving,
and it is rebuilt from scratch when it is missing or damaged. Posting never touches it.

Other writers rewrite the folder under the index: git checks out a branch with other messages
at the same seqs, a seq is taken again after its file was removed, ``mailslot doctor --fix``
moves one clone's messages to the end after a merge conflict, a thread is deleted and created
again. Per thread the index remembers its incarnation (``Threads.incarnation``), the identity
(inode, size, times) of the file at its place, doctor's rewind mark, and the files it stepped
over as damaged or missing; when one of them changed, it goes back to the last seq whose file
still holds the message indexed there (by id) and indexes from there again.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from mailslot.coordination.search_query import instant, spaced
from mailslot.store.errors import NotFound, RootError
from mailslot.store.files import exists
from mailslot.store.format import Damage, Message, Page, loads, message_name
from mailslot.store.log import ThreadLog
from mailslot.store.threads import Threads
from mailslot.store.watch import filesystem_type, is_network_fs

SCHEMA = 2
TOKENIZER = "unicode61 remove_diacritics 2"
BUSY_MS = 10_000
HOLES_PER_GAP = 100  # missing seqs of one gap watched for a late file (git restoring them)


def identity(path: Path | str) -> str:
    """Return what tells a file at path from another one there later ("" if there is none)."""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def index_path(root: Path) -> Path:
    """Return where the index of root lives: under .state/, or in the local cache folder when
    root is on a network mount."""
    if is_network_fs(filesystem_type(root)):
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        key = hashlib.sha256(str(root).encode()).hexdigest()[:16]
        return cache / "mailslot" / "search" / f"{key}.sqlite"
    return root / ".state" / "search" / "index.sqlite"


def fts5_available() -> bool:
    """Return True if this Python's SQLite has FTS5."""
    if os.environ.get("MAILSLOT_SEARCH_ENGINE") == "scan":
        return False
    try:
        con = sqlite3.connect(":memory:")
        try:
            con.execute("CREATE VIRTUAL TABLE t USING fts5(x)")
        finally:
            con.close()
    except sqlite3.Error:
        return False
    return True


class Index:
    """The search index of a root, in this process: kept up to date with the folder."""

    def __init__(self, root: Path, log_: ThreadLog, threads: Threads) -> None:
        self.log = log_
        self.threads = threads
        self.path = index_path(root)
        self._rewound = os.fspath(root / ".state" / "rewound")  # doctor's rewind marks

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """Open the index, creating it (and its tables) if it is not there."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(self.path, timeout=BUSY_MS / 1000, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise RootError(self.path, f"cannot open the search index {self.path}: {e}") from None
        try:
            con.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
            # Set once in the file; a process creating it at this moment makes this "locked".
            with contextlib.suppress(sqlite3.OperationalError):
                con.execute("PRAGMA journal_mode = WAL")
            con.execute("PRAGMA synchronous = NORMAL")  # a cache: a lost commit is re-indexed
            self._schema(con)
            yield con
        finally:
            con.close()

    def remove(self) -> None:
        """Delete the index (with its journal files): the next search builds it again."""
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.unlink(f"{self.path}{suffix}")

    def _schema(self, con: sqlite3.Connection) -> None:
        con.execute("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT)")
        row = con.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is not None and row[0] == str(SCHEMA):
            return
        con.execute("BEGIN IMMEDIATE")
        row = con.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is not None and row[0] == str(SCHEMA):  # another process made it meanwhile
            con.execute("COMMIT")
            return
        try:
            for table in ("threads", "msgs", "holes", "fts"):
                con.execute(f"DROP TABLE IF EXISTS {table}")
            # How far each thread is indexed, and what shows the folder changed under that:
            # the thread's incarnation, the identity of the file at seq, doctor's rewind mark.
            con.execute(
                "CREATE TABLE threads(thread TEXT PRIMARY KEY, incarnation TEXT, seq INTEGER,"
                " head TEXT, rewound TEXT)"
            )
            # mid: the message's id, to tell it from another one at its seq later; created:
            # created_at in microseconds since 1970 UTC, NULL where it is not a time.
            con.execute(
                "CREATE TABLE msgs(id INTEGER PRIMARY KEY, thread TEXT, seq INTEGER, mid TEXT,"
                " sender TEXT, type TEXT, recipients TEXT, created INTEGER, UNIQUE(thread, seq))"
            )
            # Seqs stepped over (damaged, or missing while later ones exist), with their file's
            # identity then: one that changes (repaired, restored from git) is read again.
            con.execute(
                "CREATE TABLE holes(thread TEXT, seq INTEGER, key TEXT, path TEXT, reason TEXT,"
                " PRIMARY KEY(thread, seq))"
            )
            con.execute(f"CREATE VIRTUAL TABLE fts USING fts5(body, tokenize='{TOKENIZER}')")
            con.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA),))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def refresh(self, con: sqlite3.Connection) -> None:
        """Bring the index up to date with the folder: new messages of each thread, threads
        created again or removed, seqs whose files changed since they were indexed."""
        known = {
            row[0]: row[1:]
            for row in con.execute("SELECT thread, incarnation, seq, head, rewound FROM threads")
        }
        holes: dict[str, dict[int, str]] = {}
        for thread, seq, key in con.execute("SELECT thread, seq, key FROM holes"):
            holes.setdefault(thread, {})[seq] = key
        present = list(self.threads.files.thread_ids())
        for gone in set(known) - set(present):
            self._drop(con, gone)
        for thread in present:
            try:
                tdir = self.threads.files.thread_dir(thread)
                incarnation = self.threads.incarnation(thread)
            except (NotFound, RootError):
                continue
            state = known.get(thread)
            if state is None or self._changed(thread, tdir, incarnation, state, holes):
                self._index(con, thread, tdir, incarnation)

    def _changed(
        self,
        thread: str,
        tdir: Path,
        incarnation: str,
        state: tuple[str, int, str, str],
        holes: dict[str, dict[int, str]],
    ) -> bool:
        """Return True if thread has news for the index: a few stats when it has none."""
        inc, seq, head, rewound = state
        base = f"{os.fspath(tdir)}/"  # plain strings: this runs for every thread at every search
        return (
            inc != incarnation
            or rewound != identity(f"{self._rewound}/{thread}.json")
            or (seq > 0 and identity(f"{base}{seq:06d}.json") != head)
            or any(identity(f"{base}{s:06d}.json") != k for s, k in holes.get(thread, {}).items())
            or exists(tdir, seq + 1)
            or self.log.listings.beyond(thread, tdir, seq + 1) is not None
        )

    def _mark(self, thread: str) -> Path:
        """Return where `mailslot doctor --fix` marks the seq it rewrote thread from."""
        return Path(self._rewound, f"{thread}.json")

    def _rewound_from(self, thread: str) -> int:
        """Return the first seq doctor's rewind mark says it rewrote (1 if it cannot be read)."""
        try:
            return max(1, int(loads(self._mark(thread).read_bytes())["from"]))
        except (OSError, ValueError, KeyError, TypeError):
            return 1

    def _drop(self, con: sqlite3.Connection, thread: str) -> None:
        con.execute("BEGIN IMMEDIATE")
        try:
            self._cut(con, thread, 0)
            con.execute("DELETE FROM threads WHERE thread = ?", (thread,))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    @staticmethod
    def _cut(con: sqlite3.Connection, thread: str, seq: int) -> None:
        """Forget what the index holds of thread past seq."""
        con.execute(
            "DELETE FROM fts WHERE rowid IN (SELECT id FROM msgs WHERE thread = ? AND seq > ?)",
            (thread, seq),
        )
        con.execute("DELETE FROM msgs WHERE thread = ? AND seq > ?", (thread, seq))
        con.execute("DELETE FROM holes WHERE thread = ? AND seq > ?", (thread, seq))

    def _index(self, con: sqlite3.Connection, thread: str, tdir: Path, incarnation: str) -> None:
        """Index thread from the last seq where the folder still holds what the index does, up
        to its newest message or one still arriving (one writer at a time)."""
        con.execute("BEGIN IMMEDIATE")  # writers of the index take turns; readers go on
        try:
            row = con.execute(
                "SELECT incarnation, seq, head, rewound FROM threads WHERE thread = ?", (thread,)
            ).fetchone()
            mark = identity(self._mark(thread))
            seq = 0  # a thread new to the index, or created again under its id
            if row is not None and row[0] == incarnation:
                seq = row[1]
                if mark and mark != row[3]:  # doctor rewrote seqs after a merge conflict
                    seq = min(seq, self._rewound_from(thread) - 1)
                if seq and identity(tdir / message_name(seq)) != row[2]:
                    seq = self._agreed(con, thread, tdir, seq)  # removed, replaced, checked out
            self._cut(con, thread, seq)
            self._fill(con, thread, tdir)
            for page in self.log.pages(thread, tdir, seq):
                self._add(con, thread, tdir, seq, page)
                seq = page.cursor
            con.execute(
                "INSERT OR REPLACE INTO threads VALUES (?, ?, ?, ?, ?)",
                (thread, incarnation, seq, self._head(con, thread, tdir, seq), mark),
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def _agreed(self, con: sqlite3.Connection, thread: str, tdir: Path, top: int) -> int:
        """Return the highest seq up to top whose file holds the message indexed there (0 if
        none): what git or doctor rewrote lies above it. Reads files from top down."""
        rows = con.execute(
            "SELECT seq, mid FROM msgs WHERE thread = ? AND seq <= ? ORDER BY seq DESC",
            (thread, top),
        ).fetchall()
        for seq, mid in rows:
            item = self.log.load(thread, tdir, seq)
            if isinstance(item, Message) and item.id == mid:
                return int(seq)
        return 0

    def _head(self, con: sqlite3.Connection, thread: str, tdir: Path, seq: int) -> str:
        """Return the identity of the file at seq, the index's place in thread: "" (look again
        next time) if it no longer holds the message just indexed there."""
        if seq == 0:
            return ""
        key = identity(tdir / message_name(seq))  # before reading: a later change shows
        row = con.execute(
            "SELECT mid FROM msgs WHERE thread = ? AND seq = ?", (thread, seq)
        ).fetchone()
        if row is None:
            return key  # a hole, watched as one
        item = self.log.load(thread, tdir, seq)
        return key if isinstance(item, Message) and item.id == row[0] else ""

    @staticmethod
    def _put(con: sqlite3.Connection, m: Message) -> None:
        cur = con.execute(
            "INSERT OR IGNORE INTO msgs(thread, seq, mid, sender, type, recipients, created)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (m.thread, m.seq, m.id, m.sender, m.type, " ".join(m.to), instant(m.created_at)),
        )
        if cur.rowcount:
            con.execute(
                "INSERT INTO fts(rowid, body) VALUES (?, ?)", (cur.lastrowid, spaced(m.content))
            )

    def _add(
        self, con: sqlite3.Connection, thread: str, tdir: Path, after: int, page: Page
    ) -> None:
        """Index a page read past after, and watch the seqs it stepped over."""
        for m in page.messages:
            self._put(con, m)
        why = {int(Path(d.path).name[:-5]): d for d in page.skipped if d.path.endswith(".json")}
        done = [after, *(m.seq for m in page.messages), page.cursor + 1]
        for low, high in itertools.pairwise(done):
            for seq in range(low + 1, min(high, low + 1 + HOLES_PER_GAP)):
                d = why.get(seq)
                con.execute(
                    "INSERT OR REPLACE INTO holes VALUES (?, ?, ?, ?, ?)",
                    (thread, seq, identity(tdir / message_name(seq)),
                     d.path if d else None, d.reason if d else None),
                )  # fmt: skip

    def _fill(self, con: sqlite3.Connection, thread: str, tdir: Path) -> None:
        """Read again the stepped-over seqs of thread whose files changed (repaired, restored)."""
        for seq, key in con.execute(
            "SELECT seq, key FROM holes WHERE thread = ?", (thread,)
        ).fetchall():
            now = identity(tdir / message_name(seq))
            if now == key:
                continue
            item = self.log.load(thread, tdir, seq)
            if isinstance(item, Message):
                self._put(con, item)
                con.execute("DELETE FROM holes WHERE thread = ? AND seq = ?", (thread, seq))
            elif isinstance(item, Damage):
                con.execute(
                    "UPDATE holes SET key = ?, path = ?, reason = ? WHERE thread = ? AND seq = ?",
                    (now, item.path, item.reason, thread, seq),
                )
            elif item is None:  # missing (again): reported with the gap it belongs to
                con.execute("UPDATE holes SET key = '' WHERE thread = ? AND seq = ?", (thread, seq))
            # Pending: still being written; its key stays, so the next search looks again.

    def damage(self, con: sqlite3.Connection, thread: str | None) -> list[Damage]:
        """Return the damage the index stepped over (in thread, if given): every search says
        what it could not read, not only the one that first met it."""
        sql = "SELECT path, reason FROM holes WHERE reason IS NOT NULL"
        rows = (
            con.execute(f"{sql} AND thread = ? ORDER BY thread, seq", (thread,))
            if thread is not None
            else con.execute(f"{sql} ORDER BY thread, seq")
        )
        return [Damage(path, reason) for path, reason in rows]

    def repair(self, con: sqlite3.Connection, stale: list[tuple[str, int]]) -> None:
        """Index again, from below the lowest stale hit, each thread whose hits were not what
        was indexed (a rewrite no cheap check saw)."""
        lowest: dict[str, int] = {}
        for thread, seq in stale:
            lowest[thread] = min(seq, lowest.get(thread, seq))
        for thread, seq in sorted(lowest.items()):
            try:
                tdir = self.threads.files.thread_dir(thread)
            except (NotFound, RootError):
                self._drop(con, thread)
                continue
            con.execute("BEGIN IMMEDIATE")
            try:
                below = self._agreed(con, thread, tdir, seq)
                self._cut(con, thread, below)
                con.execute(
                    "UPDATE threads SET seq = min(seq, ?), head = '' WHERE thread = ?",
                    (below, thread),
                )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
