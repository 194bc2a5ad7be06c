"""`mailslot sync`: keep this mailbox and a git remote in step (see docs/sync.md)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from mailslot.commands.declare import EXIT_ERROR, EXIT_OK, Here, arg, command, print_json
from mailslot.mailbox import Mailbox
from mailslot.store.errors import MailslotError, RootError


def _root(args: argparse.Namespace, here: Here) -> Path:
    """Return the root to sync; in a git checkout without one, make it (a fresh clone)."""
    try:
        return here.root(args)
    except RootError:
        from mailslot.store import roots

        inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"],  # noqa: S607
                                capture_output=True, text=True)  # fmt: skip
        if inside.stdout.strip() != "true":
            raise
        made = roots.create(roots.default_root())
        print(f"no mailbox here yet: made {made} to receive the remote's", file=sys.stderr)
        return made


@command(
    "sync",
    help="keep this mailbox and a git remote in step (a branch of its own)",
    args=[
        arg("--once", action="store_true", help="one round, then exit (CI jobs, cloud agents)"),
        arg("--status", action="store_true",
            help="show the remote, the last round, what waits to be pushed, the last error"),
        arg("--remote", help="a remote name or URL (default: sync.remote, else origin)"),
        arg("--branch", help="the branch the mailbox travels on (default: mailslot)"),
        arg("--served", action="store_true", help=argparse.SUPPRESS),
    ],
)  # fmt: skip
def cmd_sync(args: argparse.Namespace, here: Here) -> int:
    from mailslot.sync import config as _config  # loads git plumbing only for this command
    from mailslot.sync.daemon import Daemon, servers_left, try_lock
    from mailslot.sync.engine import Sync

    root = _root(args, here)
    cfg = _config.load(root, remote=args.remote, branch=args.branch)
    if args.status:
        return _status(root, args.json)
    sync = Sync(Mailbox(root), cfg)
    if args.once:
        try:
            sync.round(None)
        except MailslotError as e:
            print(f"mailslot sync: {e}", file=sys.stderr)
            return EXIT_ERROR
        doc = sync.status.doc
        if args.json:
            print_json(doc)
        else:
            print(f"in step with {cfg.remote} ({cfg.branch}); "
                  f"{doc.get('pending', 0)} message(s) wait to be pushed")  # fmt: skip
        return EXIT_OK
    while True:
        fd = try_lock(sync.dir / "daemon.lock")
        if fd is None:
            if args.served:
                return EXIT_OK  # another sync of this machine serves this root
            pid = sync.status.doc.get("pid")
            print(f"mailslot sync: another sync of {root} runs on this machine (pid {pid}); "
                  "this one stops", file=sys.stderr)  # fmt: skip
            return EXIT_ERROR
        daemon = Daemon(sync, served=args.served)
        try:
            daemon.run()
        finally:
            os.close(fd)
        if daemon.stop.is_set() or not (args.served and servers_left(sync.dir)):
            return EXIT_OK  # stopped by a signal, or no server left
        # A server came as this one stopped: go on (unless another sync took over).


def _status(root: Path, as_json: bool) -> int:
    from mailslot.sync.config import state_dir
    from mailslot.sync.state import read_status

    doc = read_status(state_dir(root) / "status.json")
    if as_json:
        print_json(doc)
        return EXIT_OK
    if not doc:
        print("never synced: run `mailslot sync` (or `mailslot sync --once`)")
        return EXIT_OK
    print(status_text(doc))
    return EXIT_OK


def status_text(doc: dict[str, object]) -> str:
    """Return the status a person reads, a line per fact."""
    lines = [f"remote: {doc.get('remote')} (branch {doc.get('branch')}), "
             f"this machine: {doc.get('machine')}"]  # fmt: skip
    pid = doc.get("pid")
    alive = isinstance(pid, int) and doc.get("running") and _alive(pid)
    lines.append(f"sync: running (pid {pid})" if alive else "sync: not running")
    lines.append(f"last round: {doc.get('last_round') or 'never'}"
                 f"{_ago(doc.get('last_ok'), ', last in step ')}")  # fmt: skip
    lines.append(f"waiting to be pushed: {doc.get('pending', 0)} message(s)"
                 f"{_ago(doc.get('oldest_pending'), ', the oldest posted ')}")  # fmt: skip
    waiting = doc.get("waiting")
    if isinstance(waiting, dict):
        lines += [f"  {t}: {why}" for t, why in waiting.items()]
    if doc.get("last_error"):
        lines.append(f"last error ({doc.get('error_at')}): {doc.get('last_error')}")
    remarks = doc.get("remarks")
    if isinstance(remarks, list) and remarks:
        lines.append("remarks:")
        lines += [f"  {r.get('at')}: {r.get('text')}" for r in remarks[-5:] if isinstance(r, dict)]
    return "\n".join(lines)


def status_line(doc: dict[str, object]) -> str:
    """Return the status in one line (doctor's): the remote, the last round, the last error."""
    pid = doc.get("pid")
    alive = isinstance(pid, int) and doc.get("running") and _alive(pid)
    error = doc.get("last_error")
    in_step = _ago(doc.get("last_ok"), ", last in step ")
    return "; ".join([
        f"with {doc.get('remote')} (branch {doc.get('branch')}), "
        + (f"running (pid {pid})" if alive else "not running"),
        f"last round {doc.get('last_round') or 'never'}{in_step}",
        f"{doc.get('pending', 0)} message(s) wait to be pushed",
        f"last error ({doc.get('error_at')}): {error}" if error else "no error",
    ])  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ago(stamp: object, prefix: str) -> str:
    if not isinstance(stamp, str):
        return ""
    try:
        then = time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    except ValueError:
        return ""
    return f"{prefix}{max(0, int(time.time() - then))} s ago"
