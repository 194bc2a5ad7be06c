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
# folder group-writable whatever the creator's umask (see _modes); absent or false: the umask.
SHARED = "group"


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
    ) -> Settings:
        """Return these settings with every non-None value replaced; raise ValueError if bad."""
        out = self
        if fsync is not None:
            if type(fsync) is not bool:
                raise ValueError("'fsync' must be true or false")
            out = replace(out, fsync=fsync)
        if lock is not None:
            if type(lock) is not bool:
                raise ValueError("'lock' must be true or false")
            out = replace(out, lock=lock)
        if max_content_bytes is not None:
            if type(max_content_bytes) is not int or max_content_bytes < 1:
                raise ValueError("'max_content_bytes' must be a whole number of bytes >= 1")
            out = replace(out, max_content_bytes=max_content_bytes)
        if wait_mode is not None:
            if wait_mode not in WAIT_MODES:
                raise ValueError(f"'wait_mode' must be one of {', '.join(WAIT_MODES)}")
            out = replace(out, wait_mode=str(wait_mode))
        if poll_interval is not None:
            if type(poll_interval) not in (int, float) or not 0.01 <= poll_interval <= 60:  # type: ignore[operator]
                raise ValueError("'poll_interval' must be a number of seconds from 0.01 to 60")
            out = replace(out, poll_interval=float(poll_interval))  # type: ignore[arg-type]
        if claim is not None:
            if claim not in CLAIMS:
                raise ValueError(f"'claim' must be one of {', '.join(CLAIMS)}")
            out = replace(out, claim=str(claim))
        if grace_s is not None:
            if type(grace_s) not in (int, float) or not 0 <= grace_s <= 3600:  # type: ignore[operator]
                raise ValueError("'grace_s' must be a number of seconds from 0 to 3600")
            out = replace(out, grace_s=float(grace_s))  # type: ignore[arg-type]
        if shared is not None:
            if shared is not False and shared != SHARED:
                raise ValueError(
                    f"'shared' must be \"{SHARED}\" (a mailbox the users of one group share: "
                    "`mailslot init --shared` sets it) or false (files as the umask makes them)"
                )
            out = replace(out, shared=shared == SHARED)
        if task_lease_s is not None:
            if type(task_lease_s) not in (int, float) or not 1 <= task_lease_s <= 86400:  # type: ignore[operator]
                raise ValueError("'task_lease_s' must be a number of seconds from 1 to 86400")
            out = replace(out, task_lease_s=float(task_lease_s))  # type: ignore[arg-type]
        if task_max_attempts is not None:
            if type(task_max_attempts) is not int or not 1 <= task_max_attempts <= 100:
                raise ValueError("'task_max_attempts' must be a whole number from 1 to 100")
            out = replace(out, task_max_attempts=task_max_attempts)
        if reservation_ttl_s is not None:
            if type(reservation_ttl_s) not in (int, float) or not 1 <= reservation_ttl_s <= 604800:  # type: ignore[operator]
                raise ValueError("'reservation_ttl_s' must be a number of seconds from 1 to 604800")
            out = replace(out, reservation_ttl_s=float(reservation_ttl_s))  # type: ignore[arg-type]
        return out


#: The keys mailslot.json may hold; others are ignored when read (`mailslot doctor` reports them).
KEYS = tuple(f.name for f in fields(Settings))


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
