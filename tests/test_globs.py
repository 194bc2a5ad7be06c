"""Reservation patterns: normalize refuses what cannot be meant, overlaps is exact.

overlaps is checked against brute force over every path of a small universe that is deep and
varied enough to hold a shared path for any two of the small patterns drawn, and matches
against a regular-expression reference built independently from the rules.
"""

from __future__ import annotations

import fnmatch
import functools
import itertools
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailslot.coordination.globs import covers_whole_repo, matches, normalize, overlaps
from mailslot.store.errors import InvalidName

# --- normalize -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("README.md", "README.md"),
        ("src/store/**", "src/store/**"),
        ("docs/", "docs/**"),
        ("./a//b/", "a/b/**"),
        ("a/./b", "a/b"),
        ("a/**/**/b", "a/**/b"),
        ("**/**", "**"),
        ("**/", "**"),
        (".", "**"),
        ("./", "**"),
        ("./.", "**"),
        ("*", "*"),
        ("*.md", "*.md"),
        ("src/**/*.py", "src/**/*.py"),
        ("a b/c d.txt", "a b/c d.txt"),
        (".github/workflows/", ".github/workflows/**"),
        ("a" * 1024, "a" * 1024),
    ],
)
def test_normalize_canonicalises(raw: str, canonical: str) -> None:
    assert normalize(raw) == canonical
    assert normalize(canonical) == canonical


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (1, "must be a string, not int"),
        (None, "must be a string, not NoneType"),
        (b"a", "must be a string, not bytes"),
        ("", "empty"),
        (" a", "whitespace"),
        ("a\n", "whitespace"),
        ("a\x00b", "NUL or control character"),
        ("a\x1bb", "NUL or control character"),
        ("/etc/passwd", "drop the leading /"),
        ("//x", "drop the leading /"),
        ("~/x", "home folder"),
        ("~", "home folder"),
        ("C:\\x", "drive letter"),
        ("c:/x", "drive letter"),
        ("a\\b", "use / between folders"),
        ("..", "'..' would leave the repository"),
        ("../x", "'..' would leave the repository"),
        ("a/../b", "'..' would leave the repository"),
        ("a**b", "'**' must be a whole segment"),
        ("***", "'**' must be a whole segment"),
        ("src/**.py", "'**' must be a whole segment"),
        ("[ab].py", "character classes"),
        ("a]", "character classes"),
        ("a" * 1025, "over 1024 characters"),
        ("a" * 1023 + "/", "over 1024 characters"),  # it would become ...a/**
    ],
)
def test_normalize_refuses_with_a_reason(raw: object, reason: str) -> None:
    with pytest.raises(InvalidName, match=re.escape(reason)) as caught:
        normalize(raw)
    assert caught.value.kind == "path"


def test_functions_normalize_their_patterns() -> None:
    assert matches("docs/", "docs/a.md")
    assert overlaps("./src//", "src/x.py")
    assert covers_whole_repo(".")
    with pytest.raises(InvalidName):
        overlaps("/abs", "x")
    with pytest.raises(InvalidName, match="'..'"):
        matches("a", "a/../b")
    with pytest.raises(InvalidName, match="drop the leading /"):
        matches("a", "/a")
    with pytest.raises(InvalidName, match="empty"):
        matches("a", "./")


# --- overlaps, matches, covers_whole_repo: the cases the design names --------------------------

OVERLAP_CASES = [
    ("src/**", "src/a.py", True),
    ("*.md", "docs/x.md", False),  # '*' stays within the top level
    ("**/*.md", "docs/x.md", True),
    ("*.md", "README.md", True),
    ("a/b/", "a/b/c", True),
    ("a/b", "a/b/c", True),  # a path also covers what is below it: a/b may be a folder
    ("a/b/c", "a/b", True),
    ("src/*.py", "src/*.md", False),
    ("src/a*.py", "src/*b.py", True),  # src/ab.py
    ("**", "x", True),
    ("**", "deep/down/file.txt", True),
    ("**", "*.md", True),
    ("x/**/y", "x/y", True),  # '**' may stand for no segment
    ("x/**/y", "x/a/b/y", True),
    ("x/**/y", "x/a/b/z", True),  # x/a/b/z/y: x/a/b/z may be a folder
    ("x/**/y", "z/y", False),
    ("a?c", "abc", True),
    ("a?c", "ac", False),
    ("docs/**", "src/**", False),
    ("docs", "docs/**", True),
    ("docs/**", "docs", True),
    ("src/*", "src/a/b.py", True),  # reserving src/a reserves what is in it
    ("*", "docs/x.md", True),  # likewise: every top-level name matches '*'
    ("*/*.py", "src/a.py", True),
    ("*/*.py", "a.py", True),  # a.py/b.py: a.py may be a folder
    ("*/*.py", "a.py/b.md", False),
    ("src/*/test_*.py", "src/**/test_a.py", True),
    ("src/*/x", "src/x", True),  # src/x/x
    ("src/*/x", "lib/x", False),
    ("**/a/b", "**/b/a", True),  # a/b/a
    ("a/a/a", "**/b/b", True),  # a/a/a/b/b: deeper than either pattern
    ("a/**/b", "b/**/a", False),
    ("README.md", "readme.md", False),  # case-sensitive, as git compares paths
    ("*.py", "*.PY", False),
    ("a*", "*b", True),
    ("a*", "b*", False),
    ("*a", "*b", False),
    ("a*b*c", "*c", True),
    ("a*b*c", "?*", True),
    ("??", "a*b*c", False),
    ("???", "a*b*c", True),
    ("a*?*c", "a?c", True),
    ("a*?*c", "ac", False),
    # A name is never '.' or '..': globs that share only those names do not overlap.
    (".?", "?.", False),
    (".*", "*.", True),  # '.x.'
    ("?", ".*", False),  # their one shared name would be '.'
    ("??", ".*", True),  # '.a'
    ("??", ".?", True),  # '.a'
    ("?", ".?", False),
    ("a/.?", "a/?.", False),
    ("*", ".*", True),  # '*' matches hidden names
    ("?", "*", True),
]


@pytest.mark.parametrize(("a", "b", "expected"), OVERLAP_CASES)
def test_overlaps_named_cases(a: str, b: str, expected: bool) -> None:
    assert overlaps(a, b) is expected
    assert overlaps(b, a) is expected


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("src/store", "src/store", True),
        ("src/store", "src/store/x.py", True),
        ("src/store", "src/storex/y.py", False),
        ("src/store", "src", False),
        ("src/*", "src/a/b.py", True),
        ("src/*", "src", False),
        ("*.md", "README.md", True),
        ("*.md", "docs/x.md", False),
        ("**/*.md", "docs/x.md", True),
        ("**/*.md", "x.md", True),
        ("docs/**", "docs", True),
        ("x/**/y", "x/y", True),
        ("x/**/y", "x/a/y/z", True),
        ("a?c", "abc", True),
        ("a?c", "ac", False),
        ("*", ".hidden", True),
        ("*.py", "a*b.py", True),
        ("a", "./a//b", True),  # the path is tidied the same way as a pattern
        ("src/a.py", "src/a?py", False),  # a character in a path is only itself
        ("src/a?py", "src/a.py", True),
    ],
)
def test_matches_named_cases(pattern: str, path: str, expected: bool) -> None:
    assert matches(pattern, path) is expected


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("**", True),
        (".", True),
        ("*", True),  # every path sits in a top-level name, which '*' matches
        ("**/*", True),
        ("*/**", True),
        ("**/*?", True),
        ("?*", True),
        ("*/*", False),  # not the files at the top level
        ("?", False),
        ("a*", False),
        ("??*", False),
        ("src/**", False),
        ("**/x", False),
    ],
)
def test_covers_whole_repo(pattern: str, expected: bool) -> None:
    assert covers_whole_repo(pattern) is expected


def test_long_patterns_stay_polynomial() -> None:
    # Runs that nearly fit everywhere are where a naive backtracking search goes exponential.
    a, b = "a*" * 100 + "b", "*a" * 100 + "c"
    assert overlaps("/".join(["**", a] * 3), "/".join(["**", b] * 3))  # a/a/a/b/b/b
    assert not overlaps("/".join([a] * 3), "/".join([b] * 3))
    assert not overlaps("*" + "a" * 500 + "b", "?" * 1020 + "c")
    assert overlaps("*" + "a" * 500 + "?", "?" * 1020 + "a")
    assert not matches("*" + "a" * 500 + "b", "a" * 1000)
    assert overlaps("x/" * 300 + "y", "**/" + "x/" * 300 + "z")  # x^300/y/x^300/z
    assert not overlaps("x/" * 300 + "y", "x/" * 300 + "z")
    assert matches("/".join(["**", "a*"] * 300)[:1023], "/".join(["a"] * 1000))


# --- against brute force ----------------------------------------------------------------------

# Patterns: 1-3 segments from these. A shared path, if any, never needs more segments than the
# two patterns have non-'**' segments together (6), and a name from 'a', 'b', 'ab' serves as a
# shared name for any two of these segments; the universe has all of them and then some.
SEGMENTS = ["a", "b", "*", "?", "**", "a*", "*b"]
NAMES = ["a", "b", "ab", "ba"]
DEPTH = 6
UNIVERSE = [
    "/".join(names)
    for depth in range(1, DEPTH + 1)
    for names in itertools.product(NAMES, repeat=depth)
]


def _reference_name_regex(glob: str) -> str:
    """Translate one name's glob the way fnmatch does, but without '[' and never across '/'."""
    return "".join({"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c)) for c in glob)


@functools.cache
def _reference_regex(pattern: str) -> re.Pattern[str]:
    """Return a regex for '/' + path: the pattern's segments, then anything below them."""
    parts = []
    for segment in [*pattern.split("/"), "**"]:
        parts.append("(?:/[^/]+)*" if segment == "**" else "/" + _reference_name_regex(segment))
    return re.compile("".join(parts))


def _reference_matches(pattern: str, path: str) -> bool:
    return _reference_regex(pattern).fullmatch("/" + path) is not None


@functools.cache
def _covered(pattern: str) -> int:
    """Return the universe paths the pattern covers, as bits."""
    bits = 0
    for k, path in enumerate(UNIVERSE):
        if _reference_matches(pattern, path):
            bits |= 1 << k
    return bits


def _raw_patterns() -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3).map("/".join)


patterns = _raw_patterns().map(normalize)


@settings(max_examples=200, deadline=None)
@given(patterns, patterns)
@example("a/a/a", "**/b/b")  # shared only by a/a/a/b/b and deeper
def test_overlaps_agrees_with_brute_force(a: str, b: str) -> None:
    shared = _covered(a) & _covered(b)
    assert overlaps(a, b) == bool(shared), f"{a!r} {b!r}"
    assert overlaps(b, a) == overlaps(a, b)


def test_overlaps_agrees_with_brute_force_on_every_pair() -> None:
    # All 385 distinct patterns, all pairs: about 500 of them share only paths of 5 or more
    # segments, so a universe 4 deep would wrongly call them disjoint.
    every = sorted(
        {normalize("/".join(s)) for n in (1, 2, 3) for s in itertools.product(SEGMENTS, repeat=n)}
    )
    wrong = [
        (a, b) for a in every for b in every if overlaps(a, b) != bool(_covered(a) & _covered(b))
    ]
    assert not wrong, wrong[:5]


@settings(max_examples=300, deadline=None)
@given(patterns, st.sampled_from(UNIVERSE))
def test_matches_agrees_with_reference(pattern: str, path: str) -> None:
    assert matches(pattern, path) == _reference_matches(pattern, path)
    if matches(pattern, path):
        assert overlaps(pattern, path)


@settings(max_examples=200, deadline=None)
@given(patterns)
def test_covers_whole_repo_agrees_with_brute_force(pattern: str) -> None:
    assert covers_whole_repo(pattern) == (_covered(pattern) == (1 << len(UNIVERSE)) - 1)


@given(patterns)
def test_a_pattern_overlaps_itself_and_the_whole_repo(pattern: str) -> None:
    assert overlaps(pattern, pattern)
    assert overlaps(pattern, "**")
    assert normalize(pattern) == pattern


# --- one name: globs over a tiny alphabet, with '.' so that '.' and '..' come up --------------

GLOBS = st.text(alphabet="a.*?", min_size=1, max_size=3).filter(
    lambda g: "**" not in g and g not in (".", "..")
)
EVERY_GLOB = [
    "".join(chars)
    for n in (1, 2, 3)
    for chars in itertools.product("a.*?", repeat=n)
    if "**" not in "".join(chars) and "".join(chars) not in (".", "..")
]
# Two globs of at most 3 characters that share a name share one of at most 5 characters; 'b' is
# in no glob and stands for any other character. '.' and '..' are never names.
SHORT_NAMES = [
    name
    for n in range(1, 7)
    for name in map("".join, itertools.product("a.b", repeat=n))
    if name not in (".", "..")
]


def test_one_name_globs_overlap_exactly() -> None:
    named = {g: {name for name in SHORT_NAMES if fnmatch.fnmatchcase(name, g)} for g in EVERY_GLOB}
    wrong = [
        (g, h)
        for g in EVERY_GLOB
        for h in EVERY_GLOB
        if overlaps(g, h) != bool(named[g] & named[h])
    ]
    assert not wrong, wrong[:5]


@given(GLOBS, st.sampled_from(SHORT_NAMES))
def test_one_name_matches_agrees_with_fnmatch(glob: str, name: str) -> None:
    # fnmatchcase is the reference for one name: the globs have no '[' and names no '/'.
    assert _reference_matches(glob, name) == fnmatch.fnmatchcase(name, glob)
    assert matches(glob, name) == fnmatch.fnmatchcase(name, glob)
