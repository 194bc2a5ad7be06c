"""Cold paths and caches: what a fresh clone, a long thread or many threads cost must not make
an answer wrong. (How fast they are is measured in bench/, not asserted here.)
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from mailslot import Mailbox


def test_a_long_thread_seen_first_is_right_at_once_and_complete_soon(root: Path) -> None:
    box = Mailbox(root, fsync=False)
    box.create_thread("big", creator="alice")
    for i in range(3000):
        box.post("big", f"m{i}", sender=f"agent{i % 5}")
    box.set_state("big", "review", sender="alice")
    box.post("big", "last word", sender="zed")
    shutil.rmtree(root / ".state")  # a fresh clone: nothing indexed on this machine

    fresh = Mailbox(root)
    info = fresh.create_thread("big", creator="someone")
    assert (info.head, info.state) == (3002, "review")  # read from the newest messages
    assert "zed" in info.participants
    for _ in range(200):  # each look indexes a little more
        info = fresh.thread("big")
        if info.complete:
            break
    assert info.complete and info.state == "review"
    assert sorted(info.participants) == sorted(["alice", "zed", *(f"agent{i}" for i in range(5))])
    assert Mailbox(root).thread("big").complete  # and the index on disk says so too


def test_unanswered_reads_a_long_thread_to_the_end(root: Path) -> None:
    box = Mailbox(root, fsync=False)
    box.agents.register("bob")
    box.create_thread("big", creator="alice")
    task = box.post("big", "an old task", sender="alice", to=["bob"], type="task")
    for i in range(2000):
        box.post("big", f"m{i}", sender="alice")
    shutil.rmtree(root / ".state")
    seqs, upto = Mailbox(root).unanswered("big", "bob")
    assert (seqs, upto) == ([task], 2001)


def test_the_thread_list_follows_changes_behind_its_cache(root: Path) -> None:
    box = Mailbox(root)
    for topic in ("one", "two", "three"):
        box.create_thread(topic, creator="alice")
    old = time.time() - 5
    for topic in ("one", "two", "three"):  # folders unchanged for a while: cached
        os.utime(root / "threads" / topic, (old, old))
    assert {t.id: t.head for t in box.threads()} == {"one": 0, "two": 0, "three": 0}
    other = Mailbox(root)
    other.post("two", "hello", sender="bob")  # another process: the folder's mtime moves
    assert {t.id: t.head for t in box.threads()}["two"] == 1
    # A file still being written is never cached: once complete it shows without any change
    # to the folder itself.
    half = root / "threads" / "one" / "000001.json"
    half.write_text("")
    later = old + 1  # still long ago: the folder's listing would be cached if it could be
    os.utime(root / "threads" / "one", (later, later))
    assert {t.id: t.head for t in box.threads()}["one"] == 1
    assert box.threads(state="closed") == []
    closing = Mailbox(root)
    closing.post("three", "x", sender="alice")  # seq 1 of "three", written properly
    tdir_one = root / "threads" / "one"
    data = (root / "threads" / "three" / "000001.json").read_text()
    half.write_text(data.replace('"type": "message"', '"type": "state"').replace(
        '"meta": {}', '"meta": {"state": "closed", "previous": "discuss"}'))  # fmt: skip
    os.utime(tdir_one, (later, later))
    assert [t.id for t in box.threads(state="closed")] == ["one"]
