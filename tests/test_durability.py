"""Stored means stored: the system calls a real `mailslot post` makes, in order, under strace.

A SIGKILL cannot lose the page cache, so the kill tests cannot see a missing fsync; the kernel's
record of the calls can. With fsync on (the default), the temp file is fsynced before it is
linked into place, and the thread folder after the link and before the seq is printed (post
returned). With "fsync": false, neither is synced.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import strace

from mailslot import Mailbox

CALLS = "fsync,fdatasync,link,linkat,rename,renameat,renameat2,write"
# strace -y: descriptors are shown with their paths, e.g. fsync(3</root/threads/t>) = 0.
LINE = re.compile(r"^\d+\s+(\w+)\((.*)\)\s+= (-?\d+)")


def _traced_post(root: Path, tmp_path: Path) -> list[tuple[str, str]]:
    """Run `mailslot post t hello` under strace; return its (call, arguments) in order."""
    log = tmp_path / "strace.log"
    argv = [sys.executable, "-m", "mailslot", "post", "t", "hello", "--root", str(root),
            "--as", "alice"]  # fmt: skip
    done = subprocess.run(
        [strace(), "-f", "-y", "-qq", "-s", "256", "-e", f"trace={CALLS}", "-o", str(log), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    calls = []
    for line in log.read_text().splitlines():
        m = LINE.match(line)
        if m and m.group(3) != "-1":
            calls.append((m.group(1), m.group(2)))
    return calls


def _index(calls: list[tuple[str, str]], what: str, where: str) -> int:
    """Return the index of the first call named what whose arguments contain where, or -1."""
    return next((i for i, (c, a) in enumerate(calls) if c == what and where in a), -1)


def _setup(root: Path, fsync: bool) -> Path:
    cfg = json.loads((root / "mailslot.json").read_text())
    (root / "mailslot.json").write_text(json.dumps({**cfg, "fsync": fsync}))
    Mailbox(root).create_thread("t", creator="alice")
    return root / "threads" / "t"


def test_a_post_syncs_the_file_before_linking_it_and_the_folder_before_returning(
    root: Path, tmp_path: Path
) -> None:
    tdir = _setup(root, fsync=True)
    calls = _traced_post(root, tmp_path)
    tmp = str(root / ".state" / "tmp")
    linked = _index(calls, "link", f'"{tdir}/000001.json"')
    if linked < 0:
        linked = _index(calls, "linkat", f'"{tdir}/000001.json"')
    assert linked >= 0, f"the message was not published with a link: {calls}"
    staged = calls[linked][1].split('"')[1]
    assert staged.startswith(tmp + "/"), "linked from the temp file"
    synced_file = [i for i, (c, a) in enumerate(calls) if c == "fsync" and f"<{staged}>" in a]
    assert synced_file and synced_file[0] < linked, "the temp file is fsynced before the link"
    synced_dir = _index(calls, "fsync", f"<{tdir}>")
    printed = next(i for i, (c, a) in enumerate(calls) if c == "write" and a.startswith("1<"))
    assert linked < synced_dir < printed, (
        "the folder is fsynced after the link, before post returns"
    )


def test_fsync_false_syncs_neither(root: Path, tmp_path: Path) -> None:
    tdir = _setup(root, fsync=False)
    calls = _traced_post(root, tmp_path)
    assert (
        _index(calls, "link", f'"{tdir}/000001.json"') >= 0
        or _index(calls, "linkat", f'"{tdir}/000001.json"') >= 0
    )
    synced = [a for c, a in calls if c in ("fsync", "fdatasync")]
    assert not [a for a in synced if str(root) in a], f"fsync: false, yet: {synced}"


def test_exclusive_create_syncs_the_message_and_the_folder(root: Path, tmp_path: Path) -> None:
    tdir = _setup(root, fsync=True)
    cfg = json.loads((root / "mailslot.json").read_text())
    (root / "mailslot.json").write_text(json.dumps({**cfg, "claim": "exclusive-create"}))
    calls = _traced_post(root, tmp_path)
    synced_file = _index(calls, "fsync", f"<{tdir}/000001.json>")
    synced_dir = _index(calls, "fsync", f"<{tdir}>")
    printed = next(i for i, (c, a) in enumerate(calls) if c == "write" and a.startswith("1<"))
    assert 0 <= synced_file < synced_dir < printed
