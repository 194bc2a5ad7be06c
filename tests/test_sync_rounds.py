"""`mailslot sync`: what a round costs. A round with nothing to remember writes no state.

The state index (`.state/sync/state.json`) holds a line per thread; rewriting it every round
made a quiet round O(threads) (bench/sync.py measured 13 ms a write at 1,000 threads beside a
5 ms round). Each write replaces the file (a new inode), so an unchanged inode is a round that
wrote nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from test_sync import make_clone, sync

from mailslot import Mailbox


@pytest.fixture
def remote(tmp_path: Path, git: dict[str, str]) -> Path:
    path = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(path)], env=git, check=True)
    return path


def _written(root: Path) -> tuple[int, int]:
    st = os.stat(root / ".state" / "sync" / "state.json")
    return st.st_ino, st.st_mtime_ns


def test_a_round_with_nothing_to_remember_writes_no_state(
    tmp_path: Path, git: dict[str, str], remote: Path
) -> None:
    a = make_clone(git, remote, tmp_path / "a", "alice")
    with Mailbox(a) as box:
        for i in range(30):
            box.create_thread(f"t{i}", creator="alice")
            box.post(f"t{i}", "hello", sender="alice")
    sync(git, a)
    before = _written(a)
    sync(git, a)  # nothing changed, here or there
    assert _written(a) == before
    with Mailbox(a) as box:
        box.post("t3", "one more", sender="alice")
    sync(git, a)  # a round that pushed: its thread's seq is remembered
    assert _written(a) != before
    state = json.loads((a / ".state" / "sync" / "state.json").read_text())
    assert state["known"]["t3"] == 2 and len(state["known"]) == 30
