"""Repository-relative path patterns for file reservations, and whether two of them overlap.

A pattern names files the way a reservation means them: `README.md`, `docs/` (a folder),
`src/**/*.py`. `*` is any run of characters inside one name, `?` is one character, and `**`
is a whole segment standing for zero or more folders. A pattern also covers everything below
what it matches, because reserving a folder reserves its contents: `src/store` and `src/*` both
cover `src/store/x.py`, while `*.md` covers `README.md` but not `docs/x.md`. Matching is
case-sensitive, as git compares paths, and `*` and `?` match a leading '.' too.

Overlap is decided on the patterns alone, with no filesystem access, so a reservation can be
refused before the files it names exist.
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata

from mailslot.store.errors import InvalidName

MAX_PATTERN_CHARS = 1024
WHOLE_REPO = "**"
_DRIVE_RE = re.compile(r"[A-Za-z]:")
_WILD = "*?"
# Stands in a witness name for "any character no glob names"; patterns never contain it.
_FRESH = "\0"


def _bad(pattern: object, reason: str) -> InvalidName:
    return InvalidName("path", pattern, reason)


def normalize(pattern: object) -> str:
    """Return the canonical form of a reservation pattern; raise InvalidName if unusable.

    Empty and '.' segments are dropped, a trailing '/' becomes '/**' (the folder and all in
    it), repeated '**' collapse, and '.' alone is the whole repository, '**'. The same files
    written two ways then compare equal, and the result is what a reservation should store.
    """
    if not isinstance(pattern, str):
        raise _bad(pattern, f"must be a string, not {type(pattern).__name__}")
    if not pattern:
        raise _bad(pattern, "empty: name a file, a folder (docs/) or a glob (src/**/*.py)")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise _bad(pattern, f"over {MAX_PATTERN_CHARS} characters")
    if pattern != pattern.strip():
        raise _bad(
            pattern,
            "leading or trailing whitespace is almost always a mistake: remove it",
        )
    if any(unicodedata.category(c) == "Cc" for c in pattern):
        raise _bad(pattern, "contains a NUL or control character")
    if pattern.startswith("/"):
        raise _bad(pattern, "paths are relative to the repository's top: drop the leading /")
    if pattern.startswith("~"):
        raise _bad(pattern, "'~' is a home folder: give the path from the repository's top instead")
    if _DRIVE_RE.match(pattern):
        raise _bad(
            pattern, "a drive letter makes the path absolute: give it from the repository's top"
        )
    if "\\" in pattern:
        raise _bad(pattern, "use / between folders, not \\")
    if "[" in pattern or "]" in pattern:
        raise _bad(
            pattern,
            "character classes [...] are not supported: use ? for one character or * for any "
            "run (put ? in place of a [ or ] that is part of a file name)",
        )
    segments: list[str] = []
    for segment in pattern.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            raise _bad(pattern, "'..' would leave the repository: give the path from its top")
        if "**" in segment and segment != "**":
            raise _bad(
                pattern, "'**' must be a whole segment, e.g. src/**/x.py; use * inside a name"
            )
        if segment == "**" and segments and segments[-1] == "**":
            continue
        segments.append(segment)
    if pattern.endswith("/") and segments and segments[-1] != "**":
        segments.append("**")
    result = "/".join(segments) or WHOLE_REPO
    if len(result) > MAX_PATTERN_CHARS:  # 'docs/' grew to 'docs/**'
        raise _bad(pattern, f"over {MAX_PATTERN_CHARS} characters")
    return result


@functools.lru_cache(maxsize=1024)
def _segments(pattern: str) -> tuple[str, ...]:
    """Return the segments of a pattern with '**' appended: the pattern and all below it."""
    segments = tuple(normalize(pattern).split("/"))
    return segments if segments[-1] == "**" else (*segments, "**")


def _is_universal(glob: str) -> bool:
    """Return whether a one-segment glob matches every name: '*', '*?' and the like."""
    return "*" in glob and set(glob) <= set(_WILD) and glob.count("?") <= 1


def covers_whole_repo(pattern: str) -> bool:
    """Return whether a pattern matches every path of the repository.

    True for '**' and '.', and also for '*' or '**/*': every path sits in a top-level name that
    '*' matches, and a pattern covers everything below what it matches.
    """
    globs = [s for s in _segments(pattern) if s != "**"]
    return not globs or (len(globs) == 1 and _is_universal(globs[0]))


def _path_names(path: str) -> list[str]:
    """Return the names of a concrete repository-relative path; raise InvalidName if unusable."""
    if path.startswith("/"):
        raise _bad(path, "paths are relative to the repository's top: drop the leading /")
    names = [name for name in path.split("/") if name not in ("", ".")]
    if ".." in names:
        raise _bad(path, "'..' would leave the repository: give the path from its top")
    if not names:
        raise _bad(path, "empty: give a file's path from the repository's top")
    return names


def _chars_meet(g: str, t: str, t_is_glob: bool) -> bool:
    return g == "?" or g == t or (t_is_glob and t == "?")


def _glob_match(glob: str, text: str, text_is_glob: bool = False) -> bool:
    """Return whether glob matches text; with text_is_glob, a '?' in text is any character.

    Greedy with backtracking to the last '*': placing each run between stars at its leftmost
    fit is never worse, since a run fitting at a position depends on that position alone.
    Quadratic at worst, never exponential.
    """
    g = t = 0
    star = -1
    resume = 0
    while t < len(text):
        if g < len(glob) and glob[g] == "*":
            star, resume = g, t
            g += 1
        elif g < len(glob) and _chars_meet(glob[g], text[t], text_is_glob):
            g += 1
            t += 1
        elif star >= 0:
            g = star + 1
            resume += 1
            t = resume
        else:
            return False
    return all(c == "*" for c in glob[g:])


def _fixed_ends_meet(a: str, b: str, from_end: bool) -> bool:
    """Return whether two star-free runs agree where both have a character, aligned at one end."""
    if from_end:
        a, b = a[::-1], b[::-1]
    return all(x == y or "?" in (x, y) for x, y in zip(a, b, strict=False))


@functools.lru_cache(maxsize=4096)
def _names_meet(g: str, h: str) -> bool:
    """Return whether some file name (not '', '.' or '..') matches both one-segment globs."""
    if "*" in g and "*" in h:
        # Both stars absorb each other's middles: only the star-free ends must agree, and the
        # stars can pad the name to any length, so it is never '.' or '..'.
        return _fixed_ends_meet(g.split("*")[0], h.split("*")[0], False) and _fixed_ends_meet(
            g.split("*")[-1], h.split("*")[-1], True
        )
    if "*" in h:
        g, h = h, g
    # h has no star: every name it matches has exactly len(h) characters.
    if not _glob_match(g, h, text_is_glob=True):
        return False
    if len(h) > 2:
        return True
    # Short enough that the only shared names might be '.' or '..': try them all. g matched a
    # text of len(h) characters, so it has at most that many literal characters too.
    alphabet = {c for c in g + h if c not in _WILD} | {_FRESH}
    return any(
        name not in (".", "..") and _glob_match(g, name) and _glob_match(h, name)
        for name in ("".join(chars) for chars in itertools.product(alphabet, repeat=len(h)))
    )


def matches(pattern: str, path: str) -> bool:
    """Return whether a pattern covers a file's repository-relative path, such as 'a/b/c.py'.

    It does if it matches the path or any folder the path is in: 'src/store' and 'src/*' cover
    'src/store/x.py'. The pattern is normalized first; a bad pattern or path raises InvalidName.
    """
    segments = _segments(pattern)
    end = len(segments)

    def skip_stars(states: set[int]) -> set[int]:
        more = set(states)
        for i in sorted(states):
            while i < end and segments[i] == "**":
                i += 1
                more.add(i)
        return more

    states = skip_stars({0})
    for name in _path_names(path):
        after: set[int] = set()
        for i in states - {end}:
            if segments[i] == "**":
                after.add(i)  # '**' absorbs this name and may absorb more
            elif _glob_match(segments[i], name):
                after.add(i + 1)
        states = skip_stars(after)
    return end in states


def overlaps(a: str, b: str) -> bool:
    """Return whether some path is covered by both patterns, each normalized first.

    Exact on the patterns, whether or not such a file exists: 'src/**' and 'src/a.py' overlap,
    '*.md' and 'docs/x.md' do not. A walk over pairs of segment positions, where '**' may
    stand for no segment or absorb one that the other pattern's segment matches.
    """
    first, second = _segments(a), _segments(b)
    goal = (len(first), len(second))
    seen = {(0, 0)}
    todo = [(0, 0)]
    while todo:
        i, j = todo.pop()
        if (i, j) == goal:
            return True
        x = first[i] if i < goal[0] else None
        y = second[j] if j < goal[1] else None
        steps = []
        if x == "**":
            steps.append((i + 1, j))  # a's '**' stands for no segment
        if y == "**":
            steps.append((i, j + 1))
        if x is not None and y is not None:
            if x == "**" and y != "**" and _names_meet(y, "*"):
                steps.append((i, j + 1))  # a's '**' absorbs the segment b's glob names
            elif y == "**" and x != "**" and _names_meet(x, "*"):
                steps.append((i + 1, j))
            elif "**" not in (x, y) and _names_meet(x, y):
                steps.append((i + 1, j + 1))
        for step in steps:
            if step not in seen:
                seen.add(step)
                todo.append(step)
    return False
