"""Agents: their cards (committed, in agents/), and presence and name holds (per machine).

A card says who an agent is. Presence says whether its process lives and what it does: the
name is held by this process (a lock the kernel drops when it dies, see presence), and a
presence file under ``.state/presence/`` refreshed by a heartbeat tells other machines.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from mailslot.store.errors import (
    Damaged,
    InvalidMessage,
    InvalidName,
    InvalidState,
    MailslotError,
    NameTaken,
    NoSuchAgent,
    NotFound,
    RootError,
)
from mailslot.store.files import CLOEXEC, HOST, NOFOLLOW, Files, read_file, storage_error
from mailslot.store.format import AgentCard, Damage, check_content, dumps, loads, now_iso
from mailslot.store.names import check_name
from mailslot.store.presence import DEFAULT_STALE_AFTER, PRESENCE_STATUSES, NameHold, Presence
from mailslot.store.presence import effective as presence_of
from mailslot.store.signing import from_ssh_line

MAX_DESCRIPTION_CHARS = 2000
# Names agents cannot take: "mailslot" signs the notes `mailslot doctor` writes.
RESERVED_AGENTS = frozenset({"mailslot"})


def check_agent(name: object) -> str:
    """Return name if an agent may take it; raise InvalidName."""
    check_name(name, "agent name")
    if name in RESERVED_AGENTS:
        raise InvalidName(
            "agent name", name, "it is reserved for mailslot's own notes; pick another"
        )
    return str(name)


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _keys(value: object) -> tuple[dict[str, Any], ...]:
    """Return a card's key entries that hold an ed25519 public key (others are no key)."""
    if not isinstance(value, list):
        return ()
    return tuple(k for k in value if isinstance(k, dict) and from_ssh_line(k.get("key")))


def with_key(entries: list[Any], line: str | None) -> list[Any] | None:
    """Return a card's key entries with the public key line added for this host, or None if
    they hold it already (or line is no key). Entries that are not keys are kept as they are."""
    new = from_ssh_line(line)
    held = {from_ssh_line(e.get("key")) for e in entries if isinstance(e, dict)}
    if new is None or new in held:
        return None
    return [*entries, {"key": line, "host": HOST, "added_at": now_iso()}]


def card_keys(card: AgentCard) -> list[bytes]:
    """Return the raw public keys on a card."""
    return [k for k in (from_ssh_line(e["key"]) for e in card.keys) if k is not None]


class Agents:
    """The agents of a root: cards, presence, and names held by this process."""

    def __init__(self, files: Files) -> None:
        self.files = files
        self._presence_docs: dict[str, dict[str, Any]] = {}

    def register(
        self,
        name: str,
        *,
        client: str | None = None,
        model: str | None = None,
        description: str | None = None,
        key: str | None = None,
        person: bool | None = None,
    ) -> AgentCard:
        """Create or update the card of agent name and return it; None keeps a field as is.

        key, an OpenSSH public key line, is added to the card's keys (for this host) unless
        there; person marks a person's card (``mailslot key``), who stays a person.
        """
        check_agent(name)
        for field_name, value in (
            ("client", client),
            ("model", model),
            ("description", description),
        ):
            if value is not None and (
                not isinstance(value, str) or len(value) > MAX_DESCRIPTION_CHARS
            ):
                raise InvalidMessage(
                    f"{field_name} must be text of at most {MAX_DESCRIPTION_CHARS} characters"
                )
            if value is not None:
                check_content(value, MAX_DESCRIPTION_CHARS * 4)
        agents = self.files.dir("agents")
        path = agents / f"{name}.json"
        try:
            old: AgentCard | None = self.card(name)
        except NoSuchAgent:
            old = None
        except Damaged:
            old = None  # a damaged card is replaced by a good one
        now = now_iso()
        keys = list(old.keys) if old else []
        if key is not None:
            keys = with_key(keys, key) or keys
        card = AgentCard(
            name=name,
            client=client if client is not None else (old.client if old else None),
            model=model if model is not None else (old.model if old else None),
            description=description
            if description is not None
            else (old.description if old else None),
            registered_at=old.registered_at if old else now,
            updated_at=now,
            keys=tuple(keys),
            person=person if person is not None else (old.person if old else False),
        )
        # A card is mutable: readers see the old or the new one whole.
        self.files.replace_file(path, dumps(card.to_dict()), f"writing the card of {name!r}")
        return card

    def card(self, name: str) -> AgentCard:
        """Return the card of agent name; raise NoSuchAgent or Damaged."""
        check_name(name, "agent name")
        path = self.files.root / "agents" / f"{name}.json"
        self.files.check_not_symlink(self.files.root / "agents")
        try:
            fd = os.open(path, os.O_RDONLY | CLOEXEC | NOFOLLOW)
        except FileNotFoundError:
            raise NoSuchAgent(name, self.names()) from None
        except OSError as e:
            raise Damaged(Damage(str(path), f"cannot be opened: {e.strerror}")) from None
        try:
            with os.fdopen(fd, "rb") as f:
                doc = loads(f.read(64 * 1024))
            return AgentCard(
                name=name,
                client=_opt_str(doc.get("client")),
                model=_opt_str(doc.get("model")),
                description=_opt_str(doc.get("description")),
                registered_at=str(doc.get("registered_at", "")),
                updated_at=str(doc.get("updated_at", "")),
                keys=_keys(doc.get("keys")),
                person=doc.get("person") is True,
            )
        except (OSError, ValueError, AttributeError) as e:
            # Raised, not logged: the caller hears of it once; cards() logs what it steps over.
            raise Damaged(Damage(str(path), f"is not an agent card: {e}")) from None

    def names(self) -> list[str]:
        try:
            names = os.listdir(self.files.root / "agents")
        except OSError:
            return []
        out = []
        for n in names:
            if n.endswith(".json"):
                with contextlib.suppress(InvalidName):
                    out.append(check_name(n[: -len(".json")]))
        return sorted(out)

    def cards(self) -> list[AgentCard]:
        """Return every readable agent card, by name; damaged cards are logged and skipped."""
        cards = []
        for name in self.names():
            try:
                cards.append(self.card(name))
            except NotFound:
                continue  # removed since the listing
            except Damaged as e:
                self.files.report(Damage(str(e.path), e.reason))
        return cards

    def hold_name(
        self, name: str, *, client: str | None = None, stale_after: float = DEFAULT_STALE_AFTER
    ) -> NameHold:
        """Take agent name for this process and mark it online; return the hold.

        The name stays held until the hold is released (release_name) or the process dies.
        Raise NameTaken if a live process on this machine holds it, or a process on another
        machine refreshed it within stale_after seconds (or sync did, for another clone's
        agent: its presence file says ``"via": "sync"``, even from a clone on this host).
        """
        check_agent(name)
        if self.files.read_only is not None:
            raise RootError(self.files.root, self.files.read_only)
        path = self.files.dir(".state/presence") / f"{name}.lock"
        try:
            st = os.stat(self.files.root)
            hold = NameHold.try_take(
                name, path, f"{st.st_dev:x}:{st.st_ino:x}", shared=self.files.settings.shared
            )
        except OSError as e:
            raise storage_error(e, self.files.root, f"taking the name {name!r}") from None
        current = self.presence(name, stale_after=stale_after)
        synced = (self.presence_doc(name) or {}).get("via") == "sync"
        if hold is None or (current.status != "offline" and (current.host != HOST or synced)):
            if hold is not None:
                hold.release()
            who = f"pid {current.pid} on {current.host}" if current.pid else "another process"
            if current.client:
                who += f", client {current.client}"
            raise NameTaken(name, who)
        self._presence_docs[name] = {"client": client, "started": now_iso()}
        try:
            self.set_presence(name, "online")
        except MailslotError:
            hold.release()
            raise
        return hold

    def release_name(self, hold: NameHold) -> None:
        """Mark the held name offline (a clean exit) and let it go."""
        if hold.held:
            with contextlib.suppress(MailslotError):
                self.set_presence(hold.name, "offline")
        hold.release()

    def set_presence(
        self,
        name: str,
        status: str,
        *,
        waiting_on: str | None = None,
        last_active: float | None = None,
        waiting_since: float | None = None,
    ) -> None:
        """Write this process's presence for name (a heartbeat); status online/waiting/offline.

        last_active is when the agent last did something (epoch seconds; default now);
        waiting_since when it began waiting on waiting_on.
        """
        if status not in PRESENCE_STATUSES:
            raise InvalidState(f"presence must be one of {', '.join(PRESENCE_STATUSES)}")
        known = self._presence_docs.setdefault(name, {"client": None, "started": now_iso()})
        doc = {
            "agent": name,
            "status": status,
            "client": known["client"],
            "pid": os.getpid(),
            "host": HOST,
            "started": known["started"],
            "last_seen": now_iso(),
            "last_seen_epoch": time.time(),
            "waiting_on": waiting_on,
            "waiting_since_epoch": waiting_since if waiting_on is not None else None,
            "last_active_epoch": time.time() if last_active is None else last_active,
        }
        self.files.write_state_file(self.files.dir(".state/presence") / f"{name}.json", doc)

    def presence(self, name: str, *, stale_after: float = DEFAULT_STALE_AFTER) -> Presence:
        """Return what is known of agent name's presence (offline if never seen or gone)."""
        check_name(name, "agent name")
        try:
            doc = loads((self.files.root / ".state" / "presence" / f"{name}.json").read_bytes())
        except (OSError, ValueError):
            return Presence(agent=name, status="offline")
        if not isinstance(doc, dict):
            return Presence(agent=name, status="offline")
        return presence_of(doc, name, HOST, stale_after)

    def presence_doc(self, name: str) -> dict[str, Any] | None:
        """Return agent name's presence file as written (None if missing or unreadable)."""
        try:  # a string path: every claim's answer reads its holder's
            doc = loads(read_file(f"{self.files.root}/.state/presence/{name}.json"))
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def presences(self, *, stale_after: float = DEFAULT_STALE_AFTER) -> list[Presence]:
        """Return the presence of every agent that ever had a presence file, by name."""
        try:
            names = os.listdir(self.files.root / ".state" / "presence")
        except OSError:
            return []
        out = []
        for n in sorted(names):
            if n.endswith(".json"):
                with contextlib.suppress(InvalidName):
                    out.append(
                        self.presence(check_name(n[: -len(".json")]), stale_after=stale_after)
                    )
        return out
