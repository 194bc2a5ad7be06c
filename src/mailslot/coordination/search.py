"""Search: ranked full-text search over every thread, with a cache the folder can always rebuild.

The folder stays the truth. The index is SQLite FTS5 (from the standard library) in
``.state/search/index.sqlite``, or, when the root is on a network mount (where SQLite's locks
are not reliable), in the user's cache folder keyed by the root. It is brought up to date at
query time from each thread's position in it, so freshness costs the new messages only; it
never records past a message still arriving, and it is rebuilt from scratch when it is missing
or damaged. Posting never touches it. Hits are read back from the message files, so what a
search returns is what the folder says.

Other writers rewrite the folder under the index: git checks out a branch with other messages
at the same seqs, a seq is taken again after its file was removed, ``mailslot doctor --fix``
moves one clone's messages to the end after a merge conflict, a thread is deleted and created
again. Per thread the index remembers its incarnation (``Threads.incarnation``), the identity
(inode, size, times) of the file at its place, doctor's rewind mark, and the files it stepped
over as damaged or missing; when one of them changed, it goes back to the last seq whose file
still holds the message indexed there (by id) and indexes from there again. Every hit is read
back and must be the message that was indexed (same id): a hit that is not makes its thread be
indexed again from below it and the query run again, so a stale index never returns a message
that does not hold what was matched.

``since`` compares instants: both the filter and each message's ``created_at`` are read as ISO
8601 (a date alone is midnight UTC, a time without an offset is UTC). A message whose
``created_at`` cannot be read as a time is kept by every ``since``: it cannot be placed, and it
is not hidden.

Text is indexed with the ``unicode61`` tokenizer; characters of scripts written without spaces
(Chinese, Japanese, Korean) are indexed one by one and a query's runs of them become phrases,
so a word of any length is found where it occurs.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

from mailslot.store.errors import InvalidMessage, MailslotError, NotFound, RootError
from mailslot.store.files import exists
from mailslot.store.format import Damage, Message, Page, loads, message_name
from mailslot.store.log import ThreadLog
from mailslot.store.threads import Threads
from mailslot.store.watch import filesystem_type, is_network_fs

log = logging.getLogger("mailslot")

SCHEMA = 2
TOKENIZER = "unicode61 remove_diacritics 2"
MAX_QUERY_CHARS = 1000
MAX_LIMIT = 100
SNIPPET_CHARS = 160
BUSY_MS = 10_000
HOLES_PER_GAP = 100  # missing seqs of one gap watched for a late file (git restoring them)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
SINCE_FORMS = (
    "e.g. 2026-12-01 (midnight UTC), 2026-12-01T09:30:00Z, 2026-12-01T11:30:00+02:00 or "
    "2026-12-01 09:30 (a time without an offset is UTC)"
)
# Scripts written without spaces between words: indexed a character at a time.
_CJK = re.compile(
    "[\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3190-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f]"
)
EXAMPLES = (
    'try: retries backoff (both words), "merge conflict" (a phrase), auth* (a prefix), '
    "schema OR migration, deploy NOT staging"
)


def instant(text: str) -> int | None:
    """Return the ISO 8601 date or time text as microseconds since 1970 UTC, or None if it is
    none; a date alone is midnight UTC, a time without an offset is UTC."""
    try:
        when = datetime.fromisoformat(text.strip().upper())
    except (ValueError, TypeError, AttributeError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - _EPOCH) // _MICROSECOND


def identity(path: Path | str) -> str:
    """Return what tells a file at path from another one there later ("" if there is none)."""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def spaced(text: str) -> str:
    """Return text with each CJK character as a token of its own."""
    return _CJK.sub(lambda m: f" {m.group(0)} ", text)


def fts_query(query: str) -> str:
    """Return query for FTS5: runs of CJK characters become phrases of single characters.

    Inside a quoted phrase the characters are only spaced (the phrase keeps them in order).
    """
    out: list[str] = []
    quoted = False
    run: list[str] = []

    def flush() -> None:
        if run:
            chars = " ".join(run)
            out.append(chars if quoted else f' "{chars}" ')
            run.clear()

    for ch in query:
        if _CJK.match(ch):
            run.append(ch)
            continue
        flush()
        if ch == '"':
            quoted = not quoted
        out.append(ch)
    flush()
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Hit:
    """One message a search found, with where the query matched."""

    message: Message
    snippet: str
    rank: float


@dataclass(frozen=True, slots=True)
class Results:
    """What a search found, best first, and what it could not read."""

    hits: list[Hit]
    total: int  # matches before the limit
    skipped: list[Damage]
    engine: str  # "fts5", or "scan" where SQLite has no FTS5


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


class Search:
    """The search index of a root, in this process."""

    def __init__(self, root: Path, log_: ThreadLog, threads: Threads) -> None:
        self.root = root
        self.log = log_
        self.threads = threads
        self.path = index_path(root)
        self.engine = "fts5" if fts5_available() else "scan"
        self._warned = False
        self._rewound = os.fspath(root / ".state" / "rewound")  # doctor's rewind marks

    # ------------------------------------------------------------------ the index

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
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

    def _remove(self) -> None:
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

    def _damage(self, con: sqlite3.Connection, thread: str | None) -> list[Damage]:
        """Return the damage the index stepped over (in thread, if given): every search says
        what it could not read, not only the one that first met it."""
        sql = "SELECT path, reason FROM holes WHERE reason IS NOT NULL"
        rows = (
            con.execute(f"{sql} AND thread = ? ORDER BY thread, seq", (thread,))
            if thread is not None
            else con.execute(f"{sql} ORDER BY thread, seq")
        )
        return [Damage(path, reason) for path, reason in rows]

    def _repair(self, con: sqlite3.Connection, stale: list[tuple[str, int]]) -> None:
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

    # ------------------------------------------------------------------ queries

    def search(
        self,
        query: str,
        *,
        thread: str | None = None,
        sender: str | None = None,
        type_: str | None = None,
        to: str | None = None,
        since: str | None = None,
        limit: int = 20,
    ) -> Results:
        """Return the messages matching query, best first; see the module docstring."""
        if not isinstance(query, str) or not query.strip():
            raise InvalidMessage(f"the query is empty; {EXAMPLES}")
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidMessage(
                f"the query is {len(query)} characters; at most {MAX_QUERY_CHARS}. {EXAMPLES}"
            )
        if "\0" in query:
            raise InvalidMessage(f"the query holds a NUL character; {EXAMPLES}")
        if type(limit) is not int or not 1 <= limit <= MAX_LIMIT:
            raise InvalidMessage(f"limit must be between 1 and {MAX_LIMIT}, not {limit!r}")
        if thread is not None:
            self.threads.files.thread_dir(thread)  # InvalidName or NoSuchThread, not "no match"
        after = None
        if since is not None:
            after = instant(since)
            if after is None:
                raise InvalidMessage(
                    f"since must be an ISO 8601 date or time, {SINCE_FORMS}; not {since!r}"
                )
        if self.engine == "scan":
            return self._scan(query, thread, sender, type_, to, after, limit)
        where: list[str] = ["fts MATCH ?"]
        args: list[Any] = [fts_query(query)]
        for column, value in (("m.thread", thread), ("m.sender", sender), ("m.type", type_)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if to is not None:
            where.append("(' ' || m.recipients || ' ') LIKE ? ESCAPE '\\'")
            args.append(
                "% " + to.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + " %"
            )
        if after is not None:  # a created_at that is no time cannot be placed: kept
            where.append("(m.created IS NULL OR m.created >= ?)")
            args.append(after)
        # Only fixed column names are joined in; every value, the query too, is a parameter.
        select = "SELECT m.thread, m.seq, m.mid, fts.rank FROM fts JOIN msgs m ON m.id = fts.rowid"
        order = "ORDER BY fts.rank, m.thread, m.seq LIMIT ?"  # rank: bm25, best first
        sql = " ".join([select, "WHERE", " AND ".join(where), order])
        count = " ".join(
            ["SELECT count(*) FROM fts JOIN msgs m ON m.id = fts.rowid WHERE", " AND ".join(where)]
        )
        for attempt in (1, 2):
            try:
                return self._query(query, thread, sql, count, args, limit)
            except sqlite3.OperationalError as e:
                raise MailslotError(
                    f"the search index {self.path} is busy ({e}); search again in a moment"
                ) from None
            except sqlite3.DatabaseError as e:
                if attempt == 2:
                    raise MailslotError(
                        f"the search index {self.path} cannot be read ({e}); delete it, and "
                        "the next search builds it again"
                    ) from None
                log.warning("search index %s is damaged (%s): rebuilding it", self.path, e)
                self._remove()
        raise AssertionError("unreachable")

    def _query(
        self, query: str, thread: str | None, sql: str, count: str, args: list[Any], limit: int
    ) -> Results:
        with self._connect() as con:
            for attempt in (1, 2):
                self.refresh(con)
                rows, total = self._match(con, query, sql, count, args, limit)
                hits, stale = self._read_back(rows, query, limit)
                if stale and attempt == 1:
                    # Rewritten under the index where no cheap check looks (a file below the
                    # newest edited in place): index those threads again, then ask again.
                    self._repair(con, stale)
                    continue
                # A stale hit left after that is a folder changing as we read: not a hit.
                total = max(len(hits), total - len(stale))
                return Results(hits, total, self._damage(con, thread), "fts5")
        raise AssertionError("unreachable")

    def _match(
        self, con: sqlite3.Connection, query: str, sql: str, count: str, args: list[Any], limit: int
    ) -> tuple[list[tuple[str, int, str, float]], int]:
        try:
            return self._run(con, sql, count, args, limit)
        except sqlite3.OperationalError as e:
            if "locked" in str(e):
                raise
            # Plain words such as auth.py or foo-bar are not FTS syntax: read them as
            # phrases. A query that uses quotes or parentheses meant its syntax: say why.
            if not re.search(r'["()]', query) and re.search(r"\w", query):
                args[0] = fts_query(lenient(query))
                with contextlib.suppress(sqlite3.OperationalError):
                    return self._run(con, sql, count, args, limit)
            problem = query_problem(query)
            if problem is not None:
                raise InvalidMessage(
                    f"cannot read the query {query[:80]!r}: {problem}; {EXAMPLES}"
                ) from None
            raise InvalidMessage(
                f"cannot read the query {query[:80]!r} ({e}); {EXAMPLES}; put words "
                'with - : ( ) * ^ in double quotes, e.g. "auth.py"'
            ) from None

    @staticmethod
    def _run(
        con: sqlite3.Connection, sql: str, count: str, args: list[Any], limit: int
    ) -> tuple[list[tuple[str, int, str, float]], int]:
        # A few more rows than asked: a hit whose file is gone since it was indexed is dropped.
        rows = con.execute(sql, [*args, limit + 10]).fetchall()
        if len(rows) < limit + 10:
            return rows, len(rows)  # all of them: no need to count
        return rows, int(con.execute(count, args).fetchone()[0])

    def _read_back(
        self, rows: list[tuple[str, int, str, float]], query: str, limit: int
    ) -> tuple[list[Hit], list[tuple[str, int]]]:
        """Return the hits read back from their files (the folder is the truth), and the rows
        whose file no longer holds the message that matched (gone, unreadable, another id)."""
        hits: list[Hit] = []
        stale: list[tuple[str, int]] = []
        for thread, seq, mid, rank in rows:
            if len(hits) >= limit:
                break
            try:
                m = self.log.get(thread, seq)
            except MailslotError:
                stale.append((thread, seq))
                continue
            if m.id != mid:
                stale.append((thread, seq))
                continue
            hits.append(Hit(m, snippet(m.content, query), float(rank)))
        return hits, stale

    def _scan(
        self,
        query: str,
        thread: str | None,
        sender: str | None,
        type_: str | None,
        to: str | None,
        after: int | None,
        limit: int,
    ) -> Results:
        """Search without an index (no FTS5 here): every word of the query must occur."""
        if not self._warned:
            self._warned = True
            why = (
                "MAILSLOT_SEARCH_ENGINE=scan"
                if os.environ.get("MAILSLOT_SEARCH_ENGINE") == "scan"
                else "this Python's SQLite has no FTS5"
            )
            log.warning("%s: searching by reading every message, without an index", why)
        words = [w.lower() for w in terms(query)]
        matches = scan_matcher(query)
        rows: list[tuple[str, int, str, float]] = []
        skipped: list[Damage] = []
        names = [thread] if thread is not None else self.threads.files.thread_ids()
        for name in names:
            try:
                tdir = self.threads.files.thread_dir(name)
            except (NotFound, RootError):
                continue  # removed since it was listed
            for page in self.log.pages(name, tdir, 0):
                skipped += page.skipped
                for m in page.messages:
                    if sender is not None and m.sender != sender:
                        continue
                    if type_ is not None and m.type != type_:
                        continue
                    if to is not None and to not in m.to:
                        continue
                    if after is not None:
                        created = instant(m.created_at)
                        if created is not None and created < after:
                            continue  # one that is no time cannot be placed: kept
                    text = " ".join(m.content.lower().split())
                    if matches(text):
                        rank = -float(sum(text.count(w) for w in words))
                        rows.append((m.thread, m.seq, m.id, rank))
        rows.sort(key=lambda r: (r[3], r[0], r[1]))
        hits, stale = self._read_back(rows, query, limit)
        return Results(hits, len(rows) - len(stale), skipped, "scan")


def lenient(query: str) -> str:
    """Return query with each word that is not an operator in double quotes (a prefix's * kept
    outside), so that words like auth.py or x-y read as themselves."""
    out = []
    for word in query.split():
        if word in ("AND", "OR", "NOT"):
            out.append(word)
            continue
        star = word.endswith("*") and len(word) > 1
        bare = word[:-1] if star else word
        bare = bare.replace('"', '""')
        out.append(f'"{bare}"' + ("*" if star else ""))
    return " ".join(out)


OPERATORS = ("AND", "OR", "NOT")


def query_problem(query: str) -> str | None:
    """Return what is wrong with a query FTS5 refused, in a model's words, or None if unsure."""
    if query.count('"') % 2:
        return 'a double quote is not closed: quote a phrase whole ("merge conflict") or drop it'
    bare = re.sub(r'"[^"]*"', ' "" ', query)  # phrases are words whatever they hold
    if bare.count("(") != bare.count(")"):
        return "a parenthesis is not closed: (schema OR migration) AND deploy, or drop them"
    parts = re.findall(r'""|[()]|[^\s()]+', bare)
    for left, right in itertools.pairwise(parts):
        bare_join = (left not in (*OPERATORS, "(", "NEAR") and right == "(") or (
            left == ")" and right not in (*OPERATORS, ")")
        )
        if bare_join:  # FTS5 joins a group to its neighbour only with an operator
            return (
                "put AND (or OR, NOT) between a group in parentheses and what stands beside "
                "it, e.g. (schema OR migration) AND deploy"
            )
    words = re.findall(r'""|[^\s()]+', bare)
    for at, word in enumerate(words):
        if word in OPERATORS:
            side = (words[at - 1] if at else None, words[at + 1] if at + 1 < len(words) else None)
            if any(w is None or w in OPERATORS for w in side):
                start = " (a query cannot start with NOT)" if word == "NOT" and not at else ""
                return (
                    f"{word} goes between two words, e.g. deploy {word} staging{start}; to "
                    f'find the word itself, write it in double quotes: "{word}"'
                )
        elif word.startswith("*"):
            return "* marks a prefix and goes right after letters, e.g. auth*, never alone"
        elif "^" in word:
            return '^ is search syntax; write the word in double quotes, e.g. "^x"'
    return None


def scan_matcher(query: str) -> Callable[[str], bool]:
    """Return a test of a message's text (lowercased, spaces collapsed) for query as FTS5 reads
    it, for the scan where SQLite has no FTS5: words and "phrases" (each must occur), prefix*,
    NOT (binding tightest: ``a NOT b``), AND, OR (binding loosest), parentheses. Without a
    tokenizer a word matches where its text occurs. Raise InvalidMessage for a query it cannot
    read."""
    found = re.findall(r'"(?:[^"]|"")*"?|[()]|[^\s()"]+', query)
    # NEAR before a group is FTS5's (its words near each other: here, both occur); else a word
    pairs = zip(found, [*found[1:], None], strict=True)
    tokens = [t for t, nxt in pairs if (t, nxt) != ("NEAR", "(")]
    at = 0
    if (problem := query_problem(query)) is not None:  # what the index refuses, refused alike
        raise InvalidMessage(f"cannot read the query {query[:80]!r}: {problem}; {EXAMPLES}")

    def whole(text: str, *, prefix: bool) -> Callable[[str], bool]:
        """Match text as the index's tokens do: whole words (a prefix* may end inside one),
        except in scripts written without spaces, whose characters are words of their own."""
        if not text or _CJK.search(text):
            return lambda t: text in t
        edge = r"(?<![^\W_])"  # no letter or digit just before: a word starts here
        found = re.compile(edge + re.escape(text) + ("" if prefix else r"(?![^\W_])")).search
        return lambda t: found(t) is not None

    def refuse(what: str) -> NoReturn:  # what query_problem above did not already refuse
        raise InvalidMessage(f"cannot read the query {query[:80]!r}: {what}; {EXAMPLES}")

    def peek() -> str | None:
        return tokens[at] if at < len(tokens) else None

    def take() -> str | None:
        nonlocal at
        at += 1
        return tokens[at - 1] if at <= len(tokens) else None

    def either() -> Callable[[str], bool]:
        parts = [both()]
        while peek() == "OR":
            take()
            parts.append(both())
        return parts[0] if len(parts) == 1 else lambda t: any(p(t) for p in parts)

    def both() -> Callable[[str], bool]:
        parts = [without()]
        while peek() not in (None, ")", "OR"):
            if peek() == "AND":
                take()
            parts.append(without())
        return parts[0] if len(parts) == 1 else lambda t: all(p(t) for p in parts)

    def without() -> Callable[[str], bool]:
        kept, dropped = one(), []
        while peek() == "NOT":
            take()
            dropped.append(one())
        return kept if not dropped else lambda t: kept(t) and not any(d(t) for d in dropped)

    def one() -> Callable[[str], bool]:
        token = take()
        if token is None:
            refuse("it ends where a word was expected")
        if token in ("AND", "OR", "NOT", ")"):
            refuse(f"{token} stands where a word was expected")
        if token == "(":  # noqa: S105 (a word of the query, not a password)
            inner = either()
            if take() != ")":
                refuse("a parenthesis is not closed")
            return inner
        if token.startswith('"'):
            if len(token) < 2 or not token.endswith('"'):
                refuse("a double quote is not closed")
            phrase = " ".join(token[1:-1].replace('""', '"').lower().split())
            return whole(phrase, prefix=False)
        word = token.lstrip("^").rstrip("*").lower()
        if not word:
            refuse(f"{token!r} is no word")
        return whole(word, prefix=token.endswith("*"))

    match = either()
    if at < len(tokens):
        refuse(f"{tokens[at]} stands where no word was expected")
    return match


def terms(query: str) -> list[str]:
    """Return the words of a query, without FTS operators, quotes and prefixes."""
    words = re.findall(r"[^\s\"()*^:+]+", query)
    return [w for w in words if w not in ("AND", "OR", "NOT", "NEAR")]


def snippet(content: str, query: str) -> str:
    """Return a short excerpt of content around the first match of query, matches in «»."""
    words = sorted({w for w in terms(query) if w}, key=len, reverse=True)
    flat = " ".join(content.split())
    if not words:
        return flat[:SNIPPET_CHARS]
    pattern = re.compile("|".join(re.escape(w) for w in words), re.IGNORECASE)
    first = pattern.search(flat)
    start = max(0, (first.start() if first else 0) - SNIPPET_CHARS // 3)
    piece = flat[start : start + SNIPPET_CHARS]
    marked = pattern.sub(lambda m: f"«{m.group(0)}»", piece)
    return ("…" if start else "") + marked + ("…" if start + SNIPPET_CHARS < len(flat) else "")
