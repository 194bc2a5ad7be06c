"""A mailbox's settings: mailslot.json, read once when a root is opened."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from mailslot.store.errors import InvalidMessage, RootError
from mailslot.store.format import FORMAT, loads

DEFAULT_MAX_CONTENT = 256 * 1024
DEFAULT_GRACE_S = 10.0
DEFAULT_POLL_INTERVAL = 0.1
DEFAULT_TASK_LEASE_S = 300.0
DEFAULT_TASK_MAX_ATTEMPTS = 3
DEFAULT_RESERVATION_TTL_S = 3600.0
WAIT_MODES = ("auto", "native", "poll")
# How a writer claims a seq: "link" publishes a finished file with a no-replace hard link (safe
# everywhere hard links exist); "exclusive-create" creates the final name with O_EXCL and
# writes into it, for filesystems without hard links, at a risk (see Files.no_link_error).
CLAIMS = ("link", "exclusive-create")
# Who may write what mailslot creates: "group" (`mailslot init --shared`) makes every file and
# folder group-writable whatever the creator's umask (see modes); absent or false: the umask.
SHARED = "group"


@dataclass(frozen=True, slots=True)
class LoopGuard:
    """The loop guard's limits ("loop_guard" in mailslot.json; coordination/loops.py).

    Counted in a thread over the last window_s seconds after its last message from a person,
    of agents' messages and questions only: exchanges between two agents (0: not limited),
    messages of all agents together (0: not limited), and an agent's repeated content.
    """

    on: bool = True
    exchanges: int = 20
    messages: int = 50
    window_s: float = 600.0
    repeats: bool = True

    @classmethod
    def parse(cls, value: object) -> LoopGuard:
        """Return the guard "loop_guard" holds (true, false or an object); raise ValueError."""
        if type(value) is bool:
            return cls(on=value)
        if not isinstance(value, dict):
            raise ValueError(
                "'loop_guard' must be false (off), true (the defaults) or an object such as "
                '{"exchanges": 20, "messages": 50, "window_s": 600, "repeats": true}'
            )
        unknown = sorted(set(value) - {"exchanges", "messages", "window_s", "repeats"})
        if unknown:
            raise ValueError(
                f"'loop_guard' has no key {unknown[0]!r}; its keys are exchanges, messages, "
                "window_s and repeats"
            )
        limits: dict[str, int] = {}
        default = cls()
        for key in ("exchanges", "messages"):
            n = value.get(key, getattr(default, key))
            if type(n) is not int or not 0 <= n <= 100_000:
                raise ValueError(
                    f"'loop_guard.{key}' must be a whole number from 0 (no limit) to 100000"
                )
            limits[key] = n
        return cls(
            exchanges=limits["exchanges"],
            messages=limits["messages"],
            window_s=_seconds(
                "loop_guard.window_s", value.get("window_s", default.window_s), 1, 86400
            ),
            repeats=_flag("loop_guard.repeats", value.get("repeats", default.repeats)),
        )


@dataclass(frozen=True, slots=True)
class Settings:
    """The settings of a mailbox, from its mailslot.json."""

    format: int = FORMAT
    fsync: bool = True
    lock: bool = True
    max_content_bytes: int = DEFAULT_MAX_CONTENT
    wait_mode: str = "auto"
    poll_interval: float = DEFAULT_POLL_INTERVAL
    claim: str = "link"
    #: Seconds an empty or half-written file, or a missing seq with later ones present, is
    #: waited for before readers report it and step past it (foreign writers: git, sync tools).
    grace_s: float = DEFAULT_GRACE_S
    #: True if the mailbox is shared by the users of a group ("shared": "group").
    shared: bool = False
    #: Seconds a claimed task stays with a live holder that shows no sign of work (a task's
    #: or a claim's own lease_s wins over it).
    task_lease_s: float = DEFAULT_TASK_LEASE_S
    #: Failed attempts (an error reply, a holder that died or stalled) after which a task is
    #: dead; a task's own max_attempts wins over it.
    task_max_attempts: int = DEFAULT_TASK_MAX_ATTEMPTS
    #: Seconds a file reservation stays with a live holder that shows no sign of work (a
    #: request's own ttl_s wins over it).
    reservation_ttl_s: float = DEFAULT_RESERVATION_TTL_S
    #: When agents in a loop are refused their next post (see LoopGuard).
    loop_guard: LoopGuard = LoopGuard()
    #: Refuse a post whose sender has no key on the posting machine (store/signing.py).
    require_signed: bool = False

    @classmethod
    def from_json(cls, doc: dict[str, Any], path: Path) -> Settings:
        """Return settings read from a mailslot.json document; raise RootError if invalid."""
        fmt = doc.get("format")
        if type(fmt) is not int:
            raise RootError(path, f"{path} has no integer 'format'; it is not a mailslot config")
        out = cls(format=fmt)
        try:
            return out.with_overrides(
                fsync=doc.get("fsync"),
                lock=doc.get("lock"),
                max_content_bytes=doc.get("max_content_bytes"),
                wait_mode=doc.get("wait_mode"),
                poll_interval=doc.get("poll_interval"),
                claim=doc.get("claim"),
                grace_s=doc.get("grace_s"),
                shared=doc.get("shared"),
                task_lease_s=doc.get("task_lease_s"),
                task_max_attempts=doc.get("task_max_attempts"),
                reservation_ttl_s=doc.get("reservation_ttl_s"),
                loop_guard=doc.get("loop_guard"),
                require_signed=doc.get("require_signed"),
            )
        except ValueError as e:
            raise RootError(path, f"{path}: {e}") from None

    def with_overrides(
        self,
        *,
        fsync: object = None,
        lock: object = None,
        max_content_bytes: object = None,
        wait_mode: object = None,
        poll_interval: object = None,
        claim: object = None,
        grace_s: object = None,
        shared: object = None,
        task_lease_s: object = None,
        task_max_attempts: object = None,
        reservation_ttl_s: object = None,
        loop_guard: object = None,
        require_signed: object = None,
    ) -> Settings:
        """Return these settings with every non-None value replaced; raise ValueError if bad."""
        changes: dict[str, Any] = {}
        if fsync is not None:
            changes["fsync"] = _flag("fsync", fsync)
        if lock is not None:
            changes["lock"] = _flag("lock", lock)
        if max_content_bytes is not None:
            if type(max_content_bytes) is not int or max_content_bytes < 1:
                raise ValueError("'max_content_bytes' must be a whole number of bytes >= 1")
            changes["max_content_bytes"] = max_content_bytes
        if wait_mode is not None:
            changes["wait_mode"] = _one_of("wait_mode", wait_mode, WAIT_MODES)
        if poll_interval is not None:
            changes["poll_interval"] = _seconds("poll_interval", poll_interval, 0.01, 60)
        if claim is not None:
            changes["claim"] = _one_of("claim", claim, CLAIMS)
        if grace_s is not None:
            changes["grace_s"] = _seconds("grace_s", grace_s, 0, 3600)
        if shared is not None:
            changes["shared"] = _shared(shared)
        if task_lease_s is not None:
            changes["task_lease_s"] = _seconds("task_lease_s", task_lease_s, 1, 86400)
        if task_max_attempts is not None:
            if type(task_max_attempts) is not int or not 1 <= task_max_attempts <= 100:
                raise ValueError("'task_max_attempts' must be a whole number from 1 to 100")
            changes["task_max_attempts"] = task_max_attempts
        if reservation_ttl_s is not None:
            changes["reservation_ttl_s"] = _seconds(
                "reservation_ttl_s", reservation_ttl_s, 1, 604800
            )
        if loop_guard is not None:
            changes["loop_guard"] = LoopGuard.parse(loop_guard)
        if require_signed is not None:
            changes["require_signed"] = _flag("require_signed", require_signed)
        return replace(self, **changes)


def _flag(key: str, value: object) -> bool:
    """Return value if it is true or false; raise ValueError naming key if not."""
    if type(value) is not bool:
        raise ValueError(f"'{key}' must be true or false")
    return value


def _one_of(key: str, value: object, choices: tuple[str, ...]) -> str:
    """Return value if it is one of choices; raise ValueError naming key and them if not."""
    if value not in choices:
        raise ValueError(f"'{key}' must be one of {', '.join(choices)}")
    return str(value)


def _seconds(key: str, value: object, low: float, high: float) -> float:
    """Return value as seconds if it is a number from low to high; raise ValueError if not."""
    if type(value) not in (int, float) or not low <= value <= high:  # type: ignore[operator]
        raise ValueError(f"'{key}' must be a number of seconds from {low} to {high}")
    return float(value)  # type: ignore[arg-type]


def _shared(value: object) -> bool:
    """Return True for "group", False for false; raise ValueError for anything else."""
    if value is not False and value != SHARED:
        raise ValueError(
            f"'shared' must be \"{SHARED}\" (a mailbox the users of one group share: "
            "`mailslot init --shared` sets it) or false (files as the umask makes them)"
        )
    return value == SHARED


#: The keys mailslot.json may hold; others are ignored when read (`mailslot doctor` reports them).
#: "sync" is read by `mailslot sync` alone (mailslot.sync.config), never by the store.
KEYS = (*(f.name for f in fields(Settings)), "sync")


def load(root: Path, **overrides: Any) -> tuple[Settings, str | None]:
    """Return the settings of the mailbox at root (with overrides) and why it is read-only.

    The second value is None unless the root was made by a newer mailslot. Raise RootError if
    mailslot.json is missing or unreadable, InvalidMessage if an override is invalid.
    """
    config = root / "mailslot.json"
    try:
        doc = loads(config.read_bytes())
    except FileNotFoundError:
        raise RootError(
            config, f"{root} is not a mailbox (no mailslot.json): run `mailslot init`"
        ) from None
    except (OSError, ValueError) as e:
        raise RootError(
            config, f"{config} cannot be read as JSON ({e}); fix or restore it"
        ) from None
    if not isinstance(doc, dict):
        raise RootError(config, f"{config} must hold a JSON object")
    try:
        settings = Settings.from_json(doc, config).with_overrides(**overrides)
    except ValueError as e:
        raise InvalidMessage(str(e)) from None
    read_only = None
    if settings.format > FORMAT:
        read_only = (
            f"{config} is format {settings.format}, made by a newer mailslot; this one "
            f"knows format {FORMAT}, so it reads but will not write here: upgrade mailslot "
            "(pip install -U mailslot)"
        )
    return settings, read_only
