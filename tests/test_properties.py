"""Property tests: names validate consistently, any storable body round-trips exactly, and
Markdown renders to inert HTML (real links with hostile text and addresses included).

Each strategy builds inputs that reach the property (valid names, topics with a letter, bodies
with visible text) rather than filtering random text, so every example checks something.
"""

from __future__ import annotations

import html.parser
import re
import sys
import tempfile
import unicodedata
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailslot import InvalidMessage, InvalidName, Mailbox
from mailslot.store.names import NAME_PATTERN, check_name, slugify
from mailslot.views.transcript import markdown_html

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


# ---------------------------------------------------------------- Markdown renders inert

# The tags and attributes markdown_html may make; anything else came from a message.
ALLOWED = {"p": set(), "br": set(), "strong": set(), "em": set(), "code": {"class"},
           "pre": set(), "ul": set(), "ol": {"start"}, "li": set(), "a": {"href"}}  # fmt: skip
# What attackers and accidents put in messages: markup, quotes that would end an attribute,
# entities, other schemes, and Markdown's own punctuation.
HOSTILE = ["<img src=x onerror=alert(1)>", "<script>alert(1)</script>", "<a href=", '"', "'",
           '" onmouseover="alert(1)', "' onfocus='alert(1)", "<", ">", "&", "&lt;", "&#x27;",
           "&quot;", "javascript:alert(1)", "data:text/html,<b>", "*", "**", "_", "`", "```",
           "- ", "1. ", "[", "]", "(", ")", "](", " ", "\0"]  # fmt: skip


def _pieces(exclude: str) -> st.SearchStrategy[str]:
    """Return text made of hostile pieces and random characters, none of them in exclude."""
    piece = st.sampled_from([p for p in HOSTILE if not set(p) & set(exclude)]) | st.text(
        st.characters(exclude_characters=exclude), max_size=3
    )
    return st.lists(piece, max_size=8).map("".join)


# A link's text may hold anything but what ends it (`]`, a line break) or restyles it
# (code spans, emphasis), so what is shown can be compared with what was written.
LINK_TEXT = _pieces("]\n`*_\0").filter(bool)
# An address: http or https in any case, then anything but whitespace and parentheses (and
# backticks: a code span is read before links, as in CommonMark).
URL = st.builds(
    lambda scheme, rest: scheme + rest,
    st.sampled_from(["https://", "http://", "HTTPS://", "Http://"]),
    _pieces("`\0").map(lambda s: re.sub(r"[\s()]", "", s)).filter(bool),
)
# Text around a link on its line that neither opens another link, nor a code span or fence.
AROUND = _pieces("[\n`~\0")


class _Rendered(html.parser.HTMLParser):
    """The tags of rendered HTML, and the text (entities decoded) inside each <a>."""

    def __init__(self, rendered: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.links: list[tuple[str | None, str]] = []
        self._inside = False
        self.feed(rendered)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))
        if tag == "a":
            self.links.append((dict(attrs).get("href"), ""))
            self._inside = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._inside = False

    def handle_data(self, data: str) -> None:
        if self._inside:
            href, text = self.links[-1]
            self.links[-1] = (href, text + data)

    def check_inert(self) -> None:
        """Fail on a tag or attribute markdown_html does not make, or a link not to http(s)."""
        for tag, attrs in self.tags:
            assert tag in ALLOWED and {a for a, _ in attrs} <= ALLOWED[tag], (tag, attrs)
            for name, value in attrs:
                if name == "href":
                    assert value and value.lower().startswith(("http://", "https://")), value


@settings(max_examples=300, deadline=None)
@given(before=AROUND, text=LINK_TEXT, url=URL, after=AROUND)
def test_a_link_keeps_hostile_text_and_address_as_written(
    before: str, text: str, url: str, after: str
) -> None:
    """`[text](url)` is one <a> whose href is url and whose text is text, whatever they hold:
    no quote ends the attribute, no markup in the text becomes a tag."""
    rendered = _Rendered(markdown_html(f"{before}[{text}]({url}){after}"))
    rendered.check_inert()
    assert rendered.links == [(url, text)]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        _pieces("")
        | st.builds("[{}]({})".format, LINK_TEXT, URL)
        | st.builds("[{}]({}{})".format, LINK_TEXT,
                    st.sampled_from(["javascript:", "JavaScript:", "data:", "vbscript:",
                                     "file://", "//", " https://", "https:"]), AROUND),
        max_size=12,
    ).map("".join)
)  # fmt: skip
def test_markdown_never_lets_markup_through(text: str) -> None:
    """Hostile pieces, links to http(s) and links to other schemes, mixed on and across lines:
    only markdown_html's own tags come out, and a link only ever goes to http or https."""
    rendered = _Rendered(markdown_html(text))
    rendered.check_inert()
    assert len(rendered.links) <= text.count("](")
