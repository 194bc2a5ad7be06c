"""A message moved again and again (by sync or doctor) stays readable and says where it began."""

from __future__ import annotations

from pathlib import Path

from mailslot import Mailbox
from mailslot.doctor.conflict import moved_bytes
from mailslot.store.format import MAX_JSON_DEPTH, loads


def test_a_message_moved_a_hundred_times_reads_and_names_its_first_seq(tmp_path: Path) -> None:
    box = Mailbox.init(tmp_path / "box", fsync=False)
    box.create_thread("t", creator="alice")
    seq = box.post("t", "moved about", sender="alice", meta={"tag": "x"})
    tdir = tmp_path / "box" / "threads" / "t"
    m = box.get("t", seq)
    for n in range(2 * MAX_JSON_DEPTH):  # a busy sync moves one message this often and more
        path = tdir / f"{seq + n + 1:06d}.json"
        path.write_bytes(moved_bytes(m, seq + n, None, reason="sync"))
        m = box.get("t", seq + n + 1)  # each move reads the last: a damaged file raises here
    doc = loads((tdir / f"{seq + 2 * MAX_JSON_DEPTH:06d}.json").read_bytes())
    moved = doc["meta"]["moved_from"]
    assert moved["seq"] == seq + 2 * MAX_JSON_DEPTH - 1 and moved["reason"] == "sync"
    assert moved["previous"] == {"seq": seq, "reason": "sync"}, moved
    assert doc["meta"]["tag"] == "x"


def test_a_chain_left_by_an_older_version_ends_in_its_first_record(tmp_path: Path) -> None:
    box = Mailbox.init(tmp_path / "box", fsync=False)
    box.create_thread("t", creator="alice")
    chain = {"seq": 9, "reason": "sync", "previous": {"seq": 5, "reason": "merge conflict"}}
    seq = box.post("t", "old chain", sender="alice", meta={"moved_from": chain})
    doc = loads(moved_bytes(box.get("t", seq), 12, None, reason="sync"))
    assert doc["meta"]["moved_from"] == {
        "seq": 12, "reason": "sync", "previous": {"seq": 5, "reason": "merge conflict"},
    }  # fmt: skip
