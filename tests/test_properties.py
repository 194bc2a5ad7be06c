"""Property tests: names validate consistently, any storable body round-trips exactly."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailslot import InvalidMessage, InvalidName, Mailbox
from mailslot._names import NAME_PATTERN, check_name, slugify

NAME = re.compile(NAME_PATTERN)


@given(st.text(max_size=80))
def test_check_name_accepts_only_safe_names(name: str) -> None:
    try:
        check_name(name)
    except InvalidName:
        return
    assert NAME.fullmatch(name)
    assert ".." not in name and "/" not in name and "\\" not in name and "\0" not in name
    assert not name.startswith(".")


@given(st.text(min_size=1, max_size=200))
def test_slug_is_always_a_valid_name_and_stable(topic: str) -> None:
    try:
        slug = slugify(topic)
    except InvalidName:
        return
    assert check_name(slug) == slug
    assert slugify(topic) == slug


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


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(content=st.text(min_size=1), meta=st.dictionaries(st.text(), JSON, max_size=5))
def test_bodies_round_trip_exactly(content: str, meta: dict) -> None:
    with tempfile.TemporaryDirectory() as d:
        box = Mailbox.init(Path(d) / "box", fsync=False)
        box.create_thread("t", creator="a")
        try:
            seq = box.post("t", content, sender="a", meta=meta)
        except InvalidMessage as e:
            # Only text that is not valid Unicode, or blank text, may be refused.
            assert "surrogate" in str(e) or not content.strip()
            assert box.head("t") == 0
            return
        m = Mailbox(box.root).get("t", seq)
        assert m.content == content
        assert m.meta == meta
