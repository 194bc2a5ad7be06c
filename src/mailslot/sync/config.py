"""How a mailbox syncs: the ``"sync"`` object of mailslot.json, and where sync keeps its state.

::

    "sync": {"remote": "origin", "branch": "mailslot", "serve": false, "look_s": 2,
             "max_look_s": 30, "push_delay_s": 0.3, "heartbeat_s": 60}

``remote`` is a remote name of the repository the mailbox lives in, or a URL or path (for a
mailbox outside any repository, which then gets a private one under ``.state/sync/``).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from mailslot.store.errors import RootError
from mailslot.store.files import HOST
from mailslot.store.format import loads

_REF_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_LIMITS = {
    "look_s": (0.2, 3600.0),
    "max_look_s": (0.2, 86400.0),
    "push_delay_s": (0.0, 60.0),
    "heartbeat_s": (1.0, 86400.0),
}


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """The sync settings of a mailbox (see the module docstring)."""

    remote: str = "origin"
    branch: str = "mailslot"
    serve: bool = False  # `mailslot serve` starts (or uses) this machine's sync
    look_s: float = 2.0  # how often the remote is looked at while things happen
    max_look_s: float = 30.0  # ... and at most this seldom while nothing does
    push_delay_s: float = 0.3  # local posts gathered this long before a push
    heartbeat_s: float = 60.0  # how often this machine's live agents are announced

    @property
    def silent_after_s(self) -> float:
        """Seconds without a heartbeat after which another machine's agents are gone."""
        return 3 * self.heartbeat_s + self.max_look_s

    def with_overrides(self, **given: Any) -> SyncConfig:
        """Return these settings with every non-None value given replaced; raise ValueError."""
        changes: dict[str, Any] = {}
        for name, value in given.items():
            if value is None:
                continue
            if name in ("remote", "branch"):
                if not isinstance(value, str) or not value.strip():
                    raise ValueError(f"'sync.{name}' must be a non-empty string")
                if name == "branch" and not _REF_PART.fullmatch(value):
                    raise ValueError("'sync.branch' must be a plain branch name like mailslot")
                changes[name] = value.strip()
            elif name == "serve":
                if not isinstance(value, bool):
                    raise ValueError("'sync.serve' must be true or false")
                changes[name] = value
            elif name in _LIMITS:
                low, high = _LIMITS[name]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"'sync.{name}' must be a number of seconds")
                if not low <= value <= high:
                    raise ValueError(f"'sync.{name}' must be from {low} to {high} seconds")
                changes[name] = float(value)
            else:
                known = ", ".join(f.name for f in fields(self))
                raise ValueError(f"'sync' has no setting {name!r} (known: {known})")
        return replace(self, **changes)


def load(root: Path, **overrides: Any) -> SyncConfig:
    """Return the sync settings of root (mailslot.json), with overrides; raise RootError."""
    path = root / "mailslot.json"
    try:
        doc = loads(path.read_bytes())  # bounded: a hostile file is a ValueError, no more
    except (OSError, ValueError):
        doc = {}  # opening the mailbox says what is wrong with it
    given = doc.get("sync", {}) if isinstance(doc, dict) else {}
    if not isinstance(given, dict):
        raise RootError(path, f"{path}: 'sync' must be an object of settings")
    try:
        return SyncConfig().with_overrides(**given).with_overrides(**overrides)
    except ValueError as e:
        raise RootError(path, f"{path}: {e}") from None
    except TypeError as e:
        raise RootError(path, f"{path}: {e}") from None


def state_dir(root: Path) -> Path:
    """Return .state/sync/ of root, made if missing."""
    path = root / ".state" / "sync"
    path.mkdir(parents=True, exist_ok=True)
    return path


def machine_id(root: Path) -> str:
    """Return this machine's name on the remote (its host and a random part, kept in .state)."""
    path = state_dir(root) / "machine"
    try:
        known = path.read_text().strip()
        if _REF_PART.fullmatch(known):
            return known
    except OSError:
        pass
    host = re.sub(r"[^A-Za-z0-9._-]", "-", HOST).strip(".-")[:40] or "host"
    made = f"{host}-{secrets.token_hex(3)}"
    path.write_text(made + "\n")
    return made
