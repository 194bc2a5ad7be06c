"""Search without an index, where this Python's SQLite has no FTS5: read every message and test
its text against the query as FTS5 would read it."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NoReturn

from mailslot.coordination.search_query import (
    CJK,
    EXAMPLES,
    Query,
    instant,
    query_problem,
    terms,
)
from mailslot.store.errors import InvalidMessage, NotFound, RootError
from mailslot.store.format import Damage
from mailslot.store.log import ThreadLog
from mailslot.store.threads import Threads

Matcher = Callable[[str], bool]


def scan(
    log: ThreadLog, threads: Threads, q: Query
) -> tuple[list[tuple[str, int, str, float]], list[Damage]]:
    """Return (thread, seq, id, rank) of every message matching q's text and filters, best
    first, and what could not be read: every word of the query must occur."""
    words = [w.lower() for w in terms(q.text)]
    matches = scan_matcher(q.text)
    thread, sender, type_, to, after = q.thread, q.sender, q.type_, q.to, q.after
    rows: list[tuple[str, int, str, float]] = []
    skipped: list[Damage] = []
    names = [thread] if thread is not None else threads.files.thread_ids()
    for name in names:
        try:
            tdir = threads.files.thread_dir(name)
        except (NotFound, RootError):
            continue  # removed since it was listed
        for page in log.pages(name, tdir, 0):
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
    return rows, skipped


def scan_matcher(query: str) -> Matcher:
    """Return a test of a message's text (lowercased, spaces collapsed) for query as FTS5 reads
    it, for the scan where SQLite has no FTS5: words and "phrases" (each must occur), prefix*,
    NOT (binding tightest: ``a NOT b``), AND, OR (binding loosest), parentheses. Without a
    tokenizer a word matches where its text occurs. Raise InvalidMessage for a query it cannot
    read."""
    reader = _Reader(query)
    if (problem := query_problem(query)) is not None:  # what the index refuses, refused alike
        raise InvalidMessage(f"cannot read the query {query[:80]!r}: {problem}; {EXAMPLES}")
    match = reader.either()
    if reader.at < len(reader.tokens):
        reader.refuse(f"{reader.tokens[reader.at]} stands where no word was expected")
    return match


def whole(text: str, *, prefix: bool) -> Matcher:
    """Match text as the index's tokens do: whole words (a prefix* may end inside one),
    except in scripts written without spaces, whose characters are words of their own."""
    if not text or CJK.search(text):
        return lambda t: text in t
    edge = r"(?<![^\W_])"  # no letter or digit just before: a word starts here
    found = re.compile(edge + re.escape(text) + ("" if prefix else r"(?![^\W_])")).search
    return lambda t: found(t) is not None


class _Reader:
    """A query's tokens read from the left into a matcher: OR of ANDs of NOTs of words."""

    def __init__(self, query: str) -> None:
        self.query = query
        found = re.findall(r'"(?:[^"]|"")*"?|[()]|[^\s()"]+', query)
        # NEAR before a group is FTS5's (its words near each other: here, both occur); else a word
        pairs = zip(found, [*found[1:], None], strict=True)
        self.tokens = [t for t, nxt in pairs if (t, nxt) != ("NEAR", "(")]
        self.at = 0

    def refuse(self, what: str) -> NoReturn:  # what query_problem did not already refuse
        raise InvalidMessage(f"cannot read the query {self.query[:80]!r}: {what}; {EXAMPLES}")

    def peek(self) -> str | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self) -> str | None:
        self.at += 1
        return self.tokens[self.at - 1] if self.at <= len(self.tokens) else None

    def either(self) -> Matcher:
        parts = [self.both()]
        while self.peek() == "OR":
            self.take()
            parts.append(self.both())
        return parts[0] if len(parts) == 1 else lambda t: any(p(t) for p in parts)

    def both(self) -> Matcher:
        parts = [self.without()]
        while self.peek() not in (None, ")", "OR"):
            if self.peek() == "AND":
                self.take()
            parts.append(self.without())
        return parts[0] if len(parts) == 1 else lambda t: all(p(t) for p in parts)

    def without(self) -> Matcher:
        kept, dropped = self.one(), []
        while self.peek() == "NOT":
            self.take()
            dropped.append(self.one())
        return kept if not dropped else lambda t: kept(t) and not any(d(t) for d in dropped)

    def one(self) -> Matcher:
        token = self.take()
        if token is None:
            self.refuse("it ends where a word was expected")
        if token in ("AND", "OR", "NOT", ")"):
            self.refuse(f"{token} stands where a word was expected")
        if token == "(":  # noqa: S105 (a word of the query, not a password)
            inner = self.either()
            if self.take() != ")":
                self.refuse("a parenthesis is not closed")
            return inner
        if token.startswith('"'):
            if len(token) < 2 or not token.endswith('"'):
                self.refuse("a double quote is not closed")
            phrase = " ".join(token[1:-1].replace('""', '"').lower().split())
            return whole(phrase, prefix=False)
        word = token.lstrip("^").rstrip("*").lower()
        if not word:
            self.refuse(f"{token!r} is no word")
        return whole(word, prefix=token.endswith("*"))
