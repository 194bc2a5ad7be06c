"""Search: ranked full-text search over every thread, with a cache the folder can always rebuild.

The folder stays the truth. The index is SQLite FTS5 (from the standard library) in
``.state/search/index.sqlite``, or, when the root is on a network mount (where SQLite's locks
are not reliable), in the user's cache folder keyed by the root. It is brought up to date at
query time from each thread's position in it, so freshness costs the new messages only; it
never records past a message still arriving, and it is rebuilt from scratch when it is missing
or damaged. Posting never touches it. Hits are read back from the message files, so what a
search returns is what the folder says.

Text is indexed with the ``unicode61`` tokenizer; characters of scripts written without spaces
(Chinese, Japanese, Korean) are indexed one by one and a query's runs of them become phrases,
so a word of any length is found where it occurs.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from mailslot._errors import InvalidMessage, MailslotError, NotFound, RootError
from mailslot._files import exists
from mailslot._format import Damage, Message
from mailslot._log import ThreadLog
from mailslot._threads import Threads
from mailslot._watch import filesystem_type, is_network_fs

log = logging.getLogger("mailslot")

SCHEMA = 1
TOKENIZER = "unicode61 remove_diacritics 2"
MAX_QUERY_CHARS = 1000
MAX_LIMIT = 100
SNIPPET_CHARS = 160
BUSY_MS = 10_000
# Scripts written without spaces between words: indexed a character at a time.
_CJK = re.compile(
    "[\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3190-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f]"
)
EXAMPLES = (
    'try: retries backoff (both words), "merge conflict" (a phrase), auth* (a prefix), '
    "schema OR migration, deploy NOT staging"
)


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
            con.execute("DROP TABLE IF EXISTS threads")
            con.execute("DROP TABLE IF EXISTS msgs")
            con.execute("DROP TABLE IF EXISTS fts")
            con.execute(
                "CREATE TABLE threads(thread TEXT PRIMARY KEY, incarnation TEXT, seq INTEGER)"
            )
            con.execute(
                "CREATE TABLE msgs(id INTEGER PRIMARY KEY, thread TEXT, seq INTEGER, sender TEXT,"
                " type TEXT, recipients TEXT, created_at TEXT, UNIQUE(thread, seq))"
            )
            con.execute(f"CREATE VIRTUAL TABLE fts USING fts5(body, tokenize='{TOKENIZER}')")
            con.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA),))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def refresh(self, con: sqlite3.Connection) -> list[Damage]:
        """Bring the index up to date with the folder: new messages of each thread, threads
        created again or removed. Return the damage stepped over."""
        skipped: list[Damage] = []
        known = {t: (inc, seq) for t, inc, seq in con.execute("SELECT * FROM threads")}
        present = list(self.threads.files.thread_ids())
        for gone in set(known) - set(present):
            self._drop(con, gone)
        for thread in present:
            try:
                tdir = self.threads.files.thread_dir(thread)
                incarnation = self.threads.incarnation(thread)
            except (NotFound, RootError):
                continue
            inc, seq = known.get(thread, ("", 0))
            if inc != incarnation and thread in known:
                self._drop(con, thread)
                seq = 0
            if not self._behind(thread, tdir, seq):
                continue
            skipped += self._index(con, thread, tdir, incarnation)
        return skipped

    def _behind(self, thread: str, tdir: Path, seq: int) -> bool:
        return exists(tdir, seq + 1) or self.log.listings.beyond(thread, tdir, seq + 1) is not None

    def _drop(self, con: sqlite3.Connection, thread: str) -> None:
        con.execute("BEGIN IMMEDIATE")
        con.execute(
            "DELETE FROM fts WHERE rowid IN (SELECT id FROM msgs WHERE thread = ?)", (thread,)
        )
        con.execute("DELETE FROM msgs WHERE thread = ?", (thread,))
        con.execute("DELETE FROM threads WHERE thread = ?", (thread,))
        con.execute("COMMIT")

    def _index(
        self, con: sqlite3.Connection, thread: str, tdir: Path, incarnation: str
    ) -> list[Damage]:
        """Index thread's messages past where the index is (one writer at a time)."""
        skipped: list[Damage] = []
        con.execute("BEGIN IMMEDIATE")  # writers of the index take turns; readers go on
        try:
            row = con.execute("SELECT seq FROM threads WHERE thread = ?", (thread,)).fetchone()
            seq = row[0] if row else 0
            for page in self.log.pages(thread, tdir, seq):
                skipped += page.skipped
                for m in page.messages:
                    cur = con.execute(
                        "INSERT OR IGNORE INTO msgs(thread, seq, sender, type, recipients,"
                        " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                        (thread, m.seq, m.sender, m.type, " ".join(m.to), m.created_at),
                    )
                    if cur.rowcount:
                        con.execute(
                            "INSERT INTO fts(rowid, body) VALUES (?, ?)",
                            (cur.lastrowid, spaced(m.content)),
                        )
                seq = page.cursor
            con.execute(
                "INSERT OR REPLACE INTO threads VALUES (?, ?, ?)", (thread, incarnation, seq)
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return skipped

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
        if since is not None:
            try:
                datetime.fromisoformat(since.replace("Z", "+00:00"))
            except (ValueError, AttributeError):
                raise InvalidMessage(
                    f"since must be an ISO date or time, e.g. 2026-12-01 or "
                    f"2026-12-01T09:30:00Z; not {since!r}"
                ) from None
        if self.engine == "scan":
            return self._scan(query, thread, sender, type_, to, since, limit)
        where, args = ["fts MATCH ?"], [fts_query(query)]
        for column, value in (("m.thread", thread), ("m.sender", sender), ("m.type", type_)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if to is not None:
            where.append("(' ' || m.recipients || ' ') LIKE ? ESCAPE '\\'")
            args.append(
                "% " + to.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + " %"
            )
        if since is not None:
            where.append("m.created_at >= ?")
            args.append(since)
        # Only fixed column names are joined in; every value, the query too, is a parameter.
        select = "SELECT m.thread, m.seq, fts.rank FROM fts JOIN msgs m ON m.id = fts.rowid"
        order = "ORDER BY fts.rank, m.thread, m.seq LIMIT ?"  # rank: bm25, best first
        sql = " ".join([select, "WHERE", " AND ".join(where), order])
        count = " ".join(
            ["SELECT count(*) FROM fts JOIN msgs m ON m.id = fts.rowid WHERE", " AND ".join(where)]
        )
        for attempt in (1, 2):
            try:
                return self._query(query, sql, count, args, limit)
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

    def _query(self, query: str, sql: str, count: str, args: list[str], limit: int) -> Results:
        with self._connect() as con:
            skipped = self.refresh(con)
            try:
                rows, total = self._run(con, sql, count, args, limit)
            except sqlite3.OperationalError as e:
                if "locked" in str(e):
                    raise
                # Plain words such as auth.py or foo-bar are not FTS syntax: read them as
                # phrases. A query that uses quotes or parentheses meant its syntax: say why.
                if not re.search(r'["()]', query) and re.search(r"\w", query):
                    args[0] = fts_query(lenient(query))
                    with contextlib.suppress(sqlite3.OperationalError):
                        rows, total = self._run(con, sql, count, args, limit)
                        return self._hits(rows, query, limit, skipped, "fts5", total)
                raise InvalidMessage(
                    f"cannot read the query {query[:80]!r} ({e}); {EXAMPLES}; put words "
                    'with - : ( ) * ^ in double quotes, e.g. "auth.py"'
                ) from None
        return self._hits(rows, query, limit, skipped, "fts5", total)

    @staticmethod
    def _run(
        con: sqlite3.Connection, sql: str, count: str, args: list[str], limit: int
    ) -> tuple[list[tuple[str, int, float]], int]:
        # A few more rows than asked: a hit whose file is gone since it was indexed is dropped.
        rows = con.execute(sql, [*args, limit + 10]).fetchall()
        if len(rows) < limit + 10:
            return rows, len(rows)  # all of them: no need to count
        return rows, int(con.execute(count, args).fetchone()[0])

    def _hits(
        self,
        rows: list[tuple[str, int, float]],
        query: str,
        limit: int,
        skipped: list[Damage],
        engine: str,
        total: int | None = None,
    ) -> Results:
        hits: list[Hit] = []
        for thread, seq, rank in rows:
            if len(hits) >= limit:
                break
            try:
                m = self.log.get(thread, seq)  # the folder is the truth: read it back
            except MailslotError:
                continue  # gone or changed since it was indexed
            hits.append(Hit(m, snippet(m.content, query), float(rank)))
        return Results(hits, len(rows) if total is None else total, skipped, engine)

    def _scan(
        self,
        query: str,
        thread: str | None,
        sender: str | None,
        type_: str | None,
        to: str | None,
        since: str | None,
        limit: int,
    ) -> Results:
        """Search without an index (no FTS5 here): every word of the query must occur."""
        if not self._warned:
            self._warned = True
            log.warning("this Python's SQLite has no FTS5: searching by reading every message")
        words = [w.lower() for w in terms(query)]
        rows: list[tuple[str, int, float]] = []
        names = [thread] if thread is not None else self.threads.files.thread_ids()
        for name in names:
            with contextlib.suppress(MailslotError):
                for m in self.log.messages(name):
                    if sender is not None and m.sender != sender:
                        continue
                    if type_ is not None and m.type != type_:
                        continue
                    if to is not None and to not in m.to:
                        continue
                    if since is not None and m.created_at < since:
                        continue
                    text = m.content.lower()
                    if words and all(w in text for w in words):
                        rows.append((m.thread, m.seq, -float(sum(text.count(w) for w in words))))
        rows.sort(key=lambda r: (r[2], r[0], r[1]))
        return self._hits(rows, query, limit, [], "scan")


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
