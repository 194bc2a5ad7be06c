"""The sync servers start: one per machine and root, shared by every local ``mailslot serve``.

A server asked for sync (``serve --sync``, or ``"sync": {"serve": true}`` in mailslot.json)
holds ``.state/sync/users.lock`` shared for its whole life, then looks at ``daemon.lock``: free,
it starts ``mailslot sync --served`` (detached, its output appended to ``sync.log``); held, a
sync of this root already runs on this machine and it starts nothing. That sync ends after the
round in which it can take users.lock alone: no server is left.

A server arriving while the sync stops is never left without one: the server holds users.lock
before it looks at daemon.lock, and the sync lets daemon.lock go before its last look at
users.lock. Either the server found daemon.lock free and started a sync, or it found it held,
and then the stopping sync's last look sees the server and goes on (unless the sync another
server started took daemon.lock first). Two servers starting at once may both start one: the
second to reach daemon.lock stops at once.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from mailslot.store.errors import MailslotError
from mailslot.sync.config import SyncConfig, load, state_dir

#: The log a served sync writes (its stdout and stderr), started over past this size.
LOG_MAX_BYTES = 1 << 20


class NotStarted(MailslotError):
    """Sync was asked for but cannot run for this root (no git, no remote): why, in words."""


def start(root: Path, *, asked: bool = False) -> int | None:
    """Start (or use) this machine's sync of root if asked here or in its settings.

    Return the fd that holds users.lock shared: the caller keeps it open until it exits (the
    sync ends about a round after the last one is closed). Return None if sync is not asked
    for; raise NotStarted (saying why) if it is and cannot run here.
    """
    root = root.resolve()
    if not (root / "mailslot.json").is_file():
        return None  # not a mailbox: the server says so as it starts, and nothing is made here
    try:
        config = load(root)
    except MailslotError as e:
        raise NotStarted(f"sync not started: {e}") from None
    if not (asked or config.serve):
        return None
    why = unavailable(root, config)
    if why:
        raise NotStarted(f"sync not started: {why}")
    held = None
    try:
        state = state_dir(root)
        held = os.open(state / "users.lock", os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(held, fcntl.LOCK_SH)  # a sync looking for servers holds it alone: briefly
        if not _running(state / "daemon.lock"):
            _spawn(root, state / "sync.log")
    except OSError as e:
        if held is not None:
            os.close(held)
        raise NotStarted(f"sync not started: {e}") from e
    return held


def unavailable(root: Path, config: SyncConfig) -> str | None:
    """Return why root cannot sync with the remote its settings name (None if it can)."""
    if shutil.which("git") is None:
        return "git is not installed (install git to sync)"
    remote = config.remote
    if "://" in remote or ":" in remote or Path(remote).exists():
        return None  # a URL or a path: git says at the first round if it cannot reach it
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") or k in _KEEP}
    if _git(root, env, "rev-parse", "--is-inside-work-tree") != "true":
        return (f"{root} is not in a git checkout and sync.remote {remote!r} is not a URL or "
                'a path: set "sync": {"remote": "..."} in mailslot.json')  # fmt: skip
    if _git(root, env, "remote", "get-url", remote) is None:
        return (f"the repository has no remote {remote!r}: add it (git remote add) or set "
                '"sync": {"remote": "..."} in mailslot.json')  # fmt: skip
    return None


_KEEP = ("GIT_CONFIG_GLOBAL", "GIT_CONFIG_NOSYSTEM")


def _git(root: Path, env: dict[str, str], *args: str) -> str | None:
    """Return what git printed, stripped, or None if it failed."""
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, env=env,  # noqa: S607
                              timeout=30, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.decode(errors="replace").strip() if done.returncode == 0 else None


def _running(lock: Path) -> bool:
    """Return True if a sync holds lock (this machine's sync of the root runs)."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # the probe is let go at once: the sync started next takes it
    return False


def _spawn(root: Path, log: Path) -> None:
    """Start `mailslot sync --served` for root, detached, its output appended to log."""
    try:
        if log.stat().st_size > LOG_MAX_BYTES:
            os.replace(log, log.with_name(log.name + ".1"))
    except OSError:
        pass
    argv = [sys.executable, "-m", "mailslot", "sync", "--root", str(root), "--served"]
    with open(log, "ab") as out, open(os.devnull, "rb") as nothing:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out.write(f"{stamp} started by mailslot serve (pid {os.getpid()})\n".encode())
        out.flush()
        child = subprocess.Popen(argv, stdin=nothing, stdout=out, stderr=out,
                                 start_new_session=True, close_fds=True)  # fmt: skip
    # Reaped when it ends, so no zombie of it lingers (and looks alive) while this server runs.
    threading.Thread(target=child.wait, name="mailslot-sync-reaper", daemon=True).start()
