"""Validation of names before any path is built from them, and topic slugs."""

from __future__ import annotations

import hashlib
import re
import unicodedata

from mailslot.store.errors import InvalidName

NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"
_NAME_RE = re.compile(NAME_PATTERN)
# Windows refuses these as file names with any extension ("aux.json" too); a folder shared
# with a Windows machine must never contain them.
_RESERVED = frozenset(
    ["con", "prn", "aux", "nul", "conin$", "conout$"]
    + [f"com{i}" for i in "0123456789¹²³"]
    + [f"lpt{i}" for i in "0123456789¹²³"]
)
MAX_TOPIC_CHARS = 200
MAX_KEY_CHARS = 200
_SLUG_WIDTH = 64


def check_name(name: object, kind: str = "name") -> str:
    """Return name if it is a valid thread id or agent name; raise InvalidName otherwise."""
    if not isinstance(name, str):
        raise InvalidName(kind, name, f"must be a string, not {type(name).__name__}")
    if not _NAME_RE.fullmatch(name):
        lowered = name.strip().lower()
        hint = f"; use {lowered!r}" if _NAME_RE.fullmatch(lowered) else ""
        raise InvalidName(
            kind,
            name,
            "use 1-64 characters: lowercase letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit{hint}",
        )
    if ".." in name:
        raise InvalidName(kind, name, "'..' is not allowed in names")
    if name.endswith("."):
        raise InvalidName(kind, name, "a name may not end with '.'")
    if name.split(".")[0] in _RESERVED:
        raise InvalidName(kind, name, "this is a reserved device name on Windows")
    return name


def check_topic(topic: object) -> str:
    """Return the topic stripped of outer whitespace; raise InvalidName if unusable."""
    if not isinstance(topic, str):
        raise InvalidName("topic", topic, f"must be a string, not {type(topic).__name__}")
    stripped = topic.strip()
    if not stripped:
        raise InvalidName("topic", topic, "a topic needs at least one visible character")
    if len(stripped) > MAX_TOPIC_CHARS:
        raise InvalidName("topic", topic, f"at most {MAX_TOPIC_CHARS} characters")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn") for c in stripped):
        raise InvalidName(
            "topic", topic, "control, format or unassigned characters are not allowed"
        )
    if not any(c.isalnum() for c in stripped):
        raise InvalidName("topic", topic, "a topic needs at least one letter or digit")
    return stripped


def slugify(topic: str) -> str:
    """Return the thread id for a topic: the same topic always gives the same id.

    Case, accents and punctuation do not matter ("Bus 123", "bus-123" and "BUS_123!" meet in
    thread 'bus-123'). A topic without any Latin letter or digit gets 't-' plus a hash of its
    normalised text; a topic whose slug would pass 64 characters, or that lost letters with no
    Latin form, is cut and given a hash suffix so different topics do not meet by accident.
    """
    topic = check_topic(topic)
    folded = unicodedata.normalize("NFKD", topic.casefold())
    unmarked = "".join(c for c in folded if not unicodedata.combining(c))
    ascii_only = unmarked.encode("ascii", "ignore").decode()
    # A letter with no Latin form (Greek, Cyrillic, CJK, ...) is dropped from the slug; then the
    # hash keeps look-alikes apart: "bυs123" (Greek upsilon) must not meet "bs123" or "bus123".
    lost = any(c.isalnum() and not c.isascii() for c in unmarked)
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_only.replace("_", "-")).strip("-")
    digest = hashlib.sha256(unicodedata.normalize("NFKC", topic.casefold()).encode()).hexdigest()
    if not slug:
        slug = f"t-{digest[:12]}"
    elif len(slug) > _SLUG_WIDTH or lost:
        slug = f"{slug[: _SLUG_WIDTH - 9].rstrip('-')}-{digest[:8]}"
    if slug in _RESERVED:  # "CON" is a fine topic but not a folder name on Windows
        slug = f"{slug}-thread"
    return check_name(slug, "thread id")


def check_key(key: object) -> str:
    """Return an idempotency key if usable; raise InvalidName otherwise."""
    if not isinstance(key, str) or not key:
        raise InvalidName("idempotency key", key, "must be a non-empty string")
    if len(key) > MAX_KEY_CHARS:
        raise InvalidName("idempotency key", key, f"at most {MAX_KEY_CHARS} characters")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in key):
        raise InvalidName("idempotency key", key, "control characters are not allowed")
    return key
