"""A search query's text: read as FTS5 reads it, what is wrong with one, its words, snippets.

``since`` compares instants: both the filter and each message's ``created_at`` are read as ISO
8601 (a date alone is midnight UTC, a time without an offset is UTC). A message whose
``created_at`` cannot be read as a time is kept by every ``since``: it cannot be placed, and it
is not hidden.

Text is indexed with the ``unicode61`` tokenizer; characters of scripts written without spaces
(Chinese, Japanese, Korean) are indexed one by one and a query's runs of them become phrases,
so a word of any length is found where it occurs.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

SNIPPET_CHARS = 160
OPERATORS = ("AND", "OR", "NOT")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Scripts written without spaces between words: indexed a character at a time.
CJK = re.compile(
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


def spaced(text: str) -> str:
    """Return text with each CJK character as a token of its own."""
    return CJK.sub(lambda m: f" {m.group(0)} ", text)


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
        if CJK.match(ch):
            run.append(ch)
            continue
        flush()
        if ch == '"':
            quoted = not quoted
        out.append(ch)
    flush()
    return "".join(out)


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


@dataclass(frozen=True, slots=True)
class Query:
    """A checked search: its text, the filters that narrow it (after: since as an instant),
    and how many hits to return."""

    text: str
    thread: str | None
    sender: str | None
    type_: str | None
    to: str | None
    after: int | None
    limit: int
