"""Search: ranked full-text search over every thread, with a cache the folder can always rebuild.

The folder stays the truth. The index (``search_index``: SQLite FTS5 under ``.state/``) is
brought up to date with the folder at query time, so a message stored before a search is found;
where this Python's SQLite has no FTS5, the search reads every message instead
(``search_scan``). How a query's words, phrases and ``since`` are read: ``search_query``.

Hits are read back from the message files, so what a search returns is what the folder says.
Every hit must be the message that was indexed (same id): a hit that is not makes its thread be
indexed again from below it and the query run again, so a stale index never returns a message
that does not hold what was matched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailslot.coordination.search_index import Index, fts5_available
from mailslot.coordination.search_query import (
    EXAMPLES,
    Query,
    fts_query,
    instant,
    lenient,
    query_problem,
    snippet,
)
from mailslot.coordination.search_scan import scan
from mailslot.store.errors import InvalidMessage, MailslotError
from mailslot.store.format import Damage, Message
from mailslot.store.log import ThreadLog
from mailslot.store.threads import Threads

log = logging.getLogger("mailslot")

MAX_QUERY_CHARS = 1000
MAX_LIMIT = 100
SINCE_FORMS = (
    "e.g. 2026-12-01 (midnight UTC), 2026-12-01T09:30:00Z, 2026-12-01T11:30:00+02:00 or "
    "2026-12-01 09:30 (a time without an offset is UTC)"
)


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


class Search:
    """The search of a root, in this process: by its index, or by a scan where FTS5 is missing."""

    def __init__(self, root: Path, log_: ThreadLog, threads: Threads) -> None:
        self.root = root
        self.log = log_
        self.threads = threads
        self.index = Index(root, log_, threads)
        self.engine = "fts5" if fts5_available() else "scan"
        self._warned = False

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
        after = self._checked(query, thread, since, limit)
        q = Query(query, thread, sender, type_, to, after, limit)
        return self._scan(q) if self.engine == "scan" else self._indexed(q)

    def _checked(self, query: str, thread: str | None, since: str | None, limit: int) -> int | None:
        """Return since as an instant (None without one); raise InvalidMessage for a query,
        since or limit that cannot be used, InvalidName or NoSuchThread for thread."""
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
        return after

    def _indexed(self, q: Query) -> Results:
        """Search the index (rebuilt once if it is damaged)."""
        where, args = _filters(q)
        # Only fixed column names are joined in; every value, the query too, is a parameter.
        select = "SELECT m.thread, m.seq, m.mid, fts.rank FROM fts JOIN msgs m ON m.id = fts.rowid"
        order = "ORDER BY fts.rank, m.thread, m.seq LIMIT ?"  # rank: bm25, best first
        sql = " ".join([select, "WHERE", " AND ".join(where), order])
        count = " ".join(
            ["SELECT count(*) FROM fts JOIN msgs m ON m.id = fts.rowid WHERE", " AND ".join(where)]
        )
        for attempt in (1, 2):
            try:
                return self._query(q, sql, count, args)
            except sqlite3.OperationalError as e:
                raise MailslotError(
                    f"the search index {self.index.path} is busy ({e}); search again in a moment"
                ) from None
            except sqlite3.DatabaseError as e:
                if attempt == 2:
                    raise MailslotError(
                        f"the search index {self.index.path} cannot be read ({e}); delete it, and "
                        "the next search builds it again"
                    ) from None
                log.warning("search index %s is damaged (%s): rebuilding it", self.index.path, e)
                self.index.remove()
        raise AssertionError("unreachable")

    def _query(self, q: Query, sql: str, count: str, args: list[Any]) -> Results:
        with self.index.connect() as con:
            for attempt in (1, 2):
                self.index.refresh(con)
                rows, total = self._match(con, q.text, sql, count, args, q.limit)
                hits, stale = self._read_back(rows, q.text, q.limit)
                if stale and attempt == 1:
                    # Rewritten under the index where no cheap check looks (a file below the
                    # newest edited in place): index those threads again, then ask again.
                    self.index.repair(con, stale)
                    continue
                # A stale hit left after that is a folder changing as we read: not a hit.
                total = max(len(hits), total - len(stale))
                return Results(hits, total, self.index.damage(con, q.thread), "fts5")
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

    def _scan(self, q: Query) -> Results:
        """Search without an index (no FTS5 here): every word of the query must occur."""
        if not self._warned:
            self._warned = True
            why = (
                "MAILSLOT_SEARCH_ENGINE=scan"
                if os.environ.get("MAILSLOT_SEARCH_ENGINE") == "scan"
                else "this Python's SQLite has no FTS5"
            )
            log.warning("%s: searching by reading every message, without an index", why)
        rows, skipped = scan(self.log, self.threads, q)
        hits, stale = self._read_back(rows, q.text, q.limit)
        return Results(hits, len(rows) - len(stale), skipped, "scan")


def _filters(q: Query) -> tuple[list[str], list[Any]]:
    """Return the WHERE terms of an index query and their parameters (the query's first)."""
    where: list[str] = ["fts MATCH ?"]
    args: list[Any] = [fts_query(q.text)]
    for column, value in (("m.thread", q.thread), ("m.sender", q.sender), ("m.type", q.type_)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if (to := q.to) is not None:
        where.append("(' ' || m.recipients || ' ') LIKE ? ESCAPE '\\'")
        args.append("% " + to.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + " %")
    if q.after is not None:  # a created_at that is no time cannot be placed: kept
        where.append("(m.created IS NULL OR m.created >= ?)")
        args.append(q.after)
    return where, args
