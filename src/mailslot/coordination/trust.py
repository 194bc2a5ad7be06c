"""Who wrote each message: its signature checked against the keys trusted for its sender.

Every message the Mailbox's reads return carries ``signed`` (store/signing.py):

- ``valid``: signed with a key this machine trusts for the sender;
- ``invalid``: the signature does not match the message: it was changed after it was signed,
  copied into another thread, or says it is from someone other than who signed it; or it
  answers a seq that does not hold the message it was signed as answering;
- ``unknown key``: the signature matches, with a key this machine does not trust for the
  sender: one not on the sender's card, or one the card gained after this machine pinned it;
- ``unsigned``: it has no signature.

Trusted keys are the pinned ones (store/keys.py): the keys on a sender's card the first time
this machine looks, then only what a person accepts. A key a card gains later is a key change
(``changes``): it may be the agent on a new machine, or someone who can write the folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, replace
from typing import NamedTuple, TypeVar

from mailslot.store.agents import Agents, card_keys
from mailslot.store.errors import MailslotError
from mailslot.store.files import Files
from mailslot.store.format import Message, Page
from mailslot.store.keys import KeyFileError, Keys, Pinned, Pins
from mailslot.store.log import ThreadLog
from mailslot.store.plan import Arrivals
from mailslot.store.signing import (
    INVALID,
    UNKNOWN_KEY,
    UNSIGNED,
    VALID,
    canonical,
    fingerprint,
    from_ssh_line,
    parse,
    raw_public,
    verify,
)

Read = TypeVar("Read", Page, Arrivals)
Ids = dict[tuple[str, int], str]  # a message's id by its thread and seq
CHECKED_MAX = 20_000  # signatures remembered as checked (a message's bytes and its signature)


class Verdict(NamedTuple):
    """What a message's signature says, and why when it is not valid."""

    state: str
    why: str = ""
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class KeyChange:
    """A key on a card that this machine does not trust for its owner."""

    name: str
    fingerprint: str
    host: str
    added_at: str

    def __str__(self) -> str:
        return (
            f"{self.name}'s card has a key this machine has not pinned: {self.fingerprint} "
            f"(added {self.added_at or 'at an unknown time'} for host {self.host or '?'}). If "
            f"you expect it ({self.name} started on a new machine), accept it with `mailslot "
            f"key {self.name} --trust {self.fingerprint}`; if not, someone who can write the "
            "folder may be posing as them: its messages show `unknown key`"
        )


class Trust:
    """The signatures of a root's messages, checked on this machine."""

    def __init__(self, files: Files, agents: Agents, log: ThreadLog) -> None:
        self.files = files
        self.agents = agents
        self.log = log
        self.keys = Keys()
        self.pins = Pins(files.root)
        self._cards: dict[str, tuple[tuple[int, int, int], list[bytes]]] = {}
        #: Keys to trust instead of first sight's (`mailslot verify --since`: the cards' keys
        #: at a revision): with them, nothing new is pinned, and what was pinned still counts.
        self.fixed: dict[str, frozenset[bytes]] | None = None
        self._checked: dict[tuple[str, bytes], bool] = {}

    def card_keys(self, name: str) -> list[bytes]:
        """Return the keys on name's card (none if it has no readable card); cached."""
        try:
            st = os.stat(f"{self.files.root}/agents/{name}.json")
        except OSError:
            return []
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        hit = self._cards.get(name)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        try:
            keys = card_keys(self.agents.card(name))
        except MailslotError:
            keys = []
        self._cards[name] = (stamp, keys)
        return keys

    def trusted(self, name: str) -> Pinned:
        """Return the keys trusted for name here, pinning its card's keys on first sight."""
        pinned = self.pins.get(name)
        if self.fixed is not None:
            return Pinned(self.fixed.get(name, frozenset()) | (pinned.keys if pinned else set()))
        if pinned is not None:  # pinned already: the card is not looked at (one stat, not three)
            return pinned
        card = self.card_keys(name)
        try:
            return self.pins.first(name, card)
        except (KeyFileError, ValueError):
            return Pinned(frozenset(card), "the pins could not be written: the card is trusted")

    def check(
        self, m: Message, seen: dict[str, Pinned] | None = None, ids: Ids | None = None
    ) -> Verdict:
        """Return what m's signature says (see the module docstring); seen, if given, keeps the
        keys trusted per sender for the next checks (one read's messages: one look each), and
        ids the id of each message of the read by thread and seq (a reply's answered one is
        looked up there before its file is read)."""
        if m.sig is None:
            return Verdict(UNSIGNED)
        got = parse(m.sig)
        if isinstance(got, str):
            return Verdict(INVALID, got)
        key, value, reply_id = got
        if reply_id is None and m.reply_to is not None:
            why = f"it was signed answering nothing, and answers #{m.reply_to} now"
            return Verdict(INVALID, why, key)
        if reply_id is not None and m.reply_to is None:
            return Verdict(INVALID, "it was signed as an answer, and answers nothing now", key)
        if reply_id is not None and m.reply_to is not None:
            answered = (ids or {}).get((m.thread, m.reply_to)) or self._id_at(m.thread, m.reply_to)
            if reply_id and answered is not None and answered != reply_id:
                why = f"it answers #{m.reply_to}, which is not the message it was signed answering"
                return Verdict(INVALID, why, key)
        data = canonical(m, reply_id)
        memo = (m.sig.get("value"), hashlib.sha256(data).digest())
        ok = self._checked.get(memo)
        if ok is None:
            ok = verify(key, value, data)
            if len(self._checked) >= CHECKED_MAX:
                self._checked.clear()
            self._checked[memo] = ok
        if not ok:
            why = (f"its signature does not match it: changed after it was signed, moved from "
                   f"another thread, or not written by {m.sender}")  # fmt: skip
            return Verdict(INVALID, why, key)
        trusted = seen.get(m.sender) if seen is not None else None
        if trusted is None:
            trusted = self.trusted(m.sender)
            if seen is not None:
                seen[m.sender] = trusted
        if key in trusted.keys:
            return Verdict(VALID, key=key)
        why = (f"signed with {fingerprint(key)}, which this machine does not trust for "
               f"{m.sender}")  # fmt: skip
        return Verdict(UNKNOWN_KEY, why, key)

    def _id_at(self, thread: str, seq: int) -> str | None:
        with contextlib.suppress(MailslotError):
            return self.log.get(thread, seq).id
        return None

    def mark(
        self, m: Message, seen: dict[str, Pinned] | None = None, ids: Ids | None = None
    ) -> Message:
        """Return m with ``signed`` set."""
        return replace(m, signed=self.check(m, seen, ids).state)

    def marked(self, got: Read) -> Read:
        """Return a page or arrivals of a read with ``signed`` set on each message."""
        seen: dict[str, Pinned] = {}
        ids = {(m.thread, m.seq): m.id for m in got.messages}
        return replace(got, messages=[self.mark(m, seen, ids) for m in got.messages])

    def changes(self) -> list[KeyChange]:
        """Return the keys on cards that this machine does not trust for their owners (a card
        seen for the first time pins its keys now)."""
        out = []
        for name in self.agents.names():
            try:
                card = self.agents.card(name)
            except MailslotError:
                continue  # gone, or damaged: doctor and agent lists say so, once
            trusted = self.trusted(card.name).keys
            for entry in card.keys:
                key = from_ssh_line(entry.get("key"))
                if key is not None and key not in trusted:
                    host, added = entry.get("host"), entry.get("added_at")
                    out.append(KeyChange(card.name, fingerprint(key), str(host or ""),
                                         str(added or "")))  # fmt: skip
        return out

    def accept(self, name: str, fp: str) -> bytes:
        """Trust the key with fingerprint fp on name's card from now on; return it. Raise
        MailslotError if the card holds no such key."""
        for key in self.card_keys(name):
            if fingerprint(key) == fp:
                self.trusted(name)  # first sight first: the card's keys as they are, then fp
                self.pins.accept(name, key)
                return key
        have = ", ".join(fingerprint(k) for k in self.card_keys(name)) or "none"
        raise MailslotError(f"{name}'s card has no key {fp} (its keys: {have})")

    def own(self, name: str, *, person: bool | None = None) -> str:
        """Make sure name has a key here, on its card and trusted here; return its public line.

        What a process acting as name does before it signs: its own key is the one this
        machine trusts first.
        """
        raw = raw_public(self.keys.ensure(name))  # made here if name has no key yet
        line = self.keys.public_line(name)
        assert line is not None
        if raw not in self.card_keys(name) or person is not None:
            self.agents.register(name, key=line, person=person)
        if raw not in self.trusted(name).keys:
            self.pins.accept(name, raw)
        return line
