"""Property tests: names validate consistently, any storable body round-trips exactly.

Each strategy builds inputs that reach the property (valid names, topics with a letter, bodies
with visible text) rather than filtering random text, so every example checks something.
"""

from __future__ import annotations

import re
import sys
import tempfile
import unicodedata
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailslot import InvalidMessage, InvalidName, Mailbox
from mailslot._names import NAME_PATTERN, check_name, slugify

NAME = re.compile(NAME_PATTERN)
# Windows device names, refused with any extension (README: "The folder").
DEVICES = {"con", "prn", "aux", "nul", "conin$", "conout$"} | {
    f"{d}{i}" for d in ("com", "lpt") for i in "0123456789¹²³"
}


def _refusal(name: str) -> str | None:
    """Return why the README says a name of the pattern is refused, or None if it is not."""
    if ".." in name:
        return "'..'"
    if name.endswith("."):
        return "end with '.'"
    if name.split(".")[0] in DEVICES:
        return "reserved device name"
    return None


# Names of the pattern, with the cases the README refuses drawn often enough to be met.
PATTERN_NAMES = st.from_regex(NAME_PATTERN, fullmatch=True) | st.builds(
    lambda stem, rest: stem + rest,
    st.sampled_from(["con", "aux", "nul", "lpt1", "com9", "a..b", "x", "t."]),
    st.from_regex(r"[a-z0-9._-]{0,8}", fullmatch=True),
).filter(lambda n: len(n) <= 64)


@given(PATTERN_NAMES)
def test_names_of_the_pattern_are_accepted_unless_the_readme_says_otherwise(name: str) -> None:
    why = _refusal(name)
    if why is None:
        assert check_name(name) == name
        assert "/" not in name and "\\" not in name and "\0" not in name
        assert not name.startswith(".")
    else:
        try:
            check_name(name)
        except InvalidName as e:
            assert why in str(e)
        else:
            raise AssertionError(f"{name!r} was accepted; the README refuses it ({why})")


# One character no name may hold, anywhere in it (an uppercase letter, a separator, a NUL,
# a non-ASCII look-alike, ...).
FORBIDDEN = st.characters(exclude_characters="abcdefghijklmnopqrstuvwxyz0123456789._-")


@given(st.from_regex(NAME_PATTERN, fullmatch=True), FORBIDDEN, st.integers(min_value=0))
def test_a_name_with_any_other_character_is_refused(name: str, bad: str, at: int) -> None:
    at %= len(name) + 1
    spoiled = name[:at] + bad + name[at:]
    try:
        check_name(spoiled)
    except InvalidName:
        return
    raise AssertionError(f"{spoiled!r} was accepted")


@given(st.text(max_size=80))
def test_any_accepted_text_is_a_safe_name(name: str) -> None:
    # Random text is almost never a name; this only guards the implication both ways.
    accepted = True
    try:
        check_name(name)
    except InvalidName:
        accepted = False
    assert accepted == (NAME.fullmatch(name) is not None and _refusal(name) is None)


# Topics as people write them: any letters, digits, marks, punctuation, symbols and spaces
# (no control, format or unassigned characters, which check_topic refuses), with at least one
# letter or digit.
TOPIC_CHARS = st.characters(categories=["L", "M", "N", "P", "S", "Zs"])
TOPICS = st.builds(
    lambda a, letter, b: a + letter + b,
    st.text(TOPIC_CHARS, max_size=90),
    st.characters(categories=["Lu", "Ll", "Lo", "Nd"]),
    st.text(TOPIC_CHARS, max_size=90),
)


@given(TOPICS)
def test_slug_is_always_a_valid_name_and_stable(topic: str) -> None:
    slug = slugify(topic)
    assert check_name(slug) == slug
    assert slugify(topic) == slug
    assert slugify(unicodedata.normalize("NFD", topic)) == slug, "normalisation does not matter"
    assert slugify(slug) == slug, "a thread id given as a topic is the same thread"


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)
# Text with something visible in it (blank content is refused); st.text never makes surrogates.
BODIES = st.builds(
    lambda a, visible, b: a + visible + b,
    st.text(),
    st.characters(exclude_categories=["Z", "Cc", "Cs"]).filter(lambda c: not c.isspace()),
    st.text(),
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(content=BODIES, meta=st.dictionaries(st.text(), JSON, max_size=5))
def test_bodies_round_trip_exactly(content: str, meta: dict) -> None:
    with tempfile.TemporaryDirectory() as d:
        box = Mailbox.init(Path(d) / "box", fsync=False)
        box.create_thread("t", creator="a")
        seq = box.post("t", content, sender="a", meta=meta)
        m = Mailbox(box.root).get("t", seq)
        assert m.content == content
        assert m.meta == meta


WHITESPACE = "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())


@given(st.text(st.sampled_from(WHITESPACE)))
def test_blank_bodies_are_refused_and_nothing_is_stored(blank: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        box = Mailbox.init(Path(d) / "box", fsync=False)
        box.create_thread("t", creator="a")
        try:
            box.post("t", blank, sender="a")
        except InvalidMessage:
            assert box.head("t") == 0
        else:
            raise AssertionError(f"blank content {blank!r} was stored")
