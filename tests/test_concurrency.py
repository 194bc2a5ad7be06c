"""Many OS processes writing and reading one thread: nothing lost, nothing doubled, nothing torn."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest
from helpers import check_thread, finish, spawn, start_together

from mailslot import Mailbox

WRITERS = 8
EACH = 500


@pytest.mark.parametrize("lock", ["lock", "nolock"])
def test_eight_writers_and_a_reader(root: Path, lock: str) -> None:
    box = Mailbox(root)
    box.create_thread("race", creator="judge")
    go = root.parent / "go"
    writers = [
        spawn("writer", str(root), "race", f"w{n}", str(EACH), lock, "fsync", str(go))
        for n in range(WRITERS)
    ]
    reader = spawn("reader", str(root), "race", str(WRITERS * EACH), str(go))
    start_together([*writers, reader], go)
    outs = finish(writers)
    acked = {}
    for out in outs:
        doc = json.loads(out)
        acked[doc["writer"]] = doc["acked"]
    (reader_out,) = finish([reader])
    seen = json.loads(reader_out)
    assert "damage" not in seen
    assert seen["seen"] == list(range(1, WRITERS * EACH + 1)), "reader skipped or repeated"
    assert seen["reads"] > 1, "the reader should have read while writers were still writing"
    check_thread(root, "race", WRITERS, EACH, acked)
    assert not list((root / ".state" / "tmp").iterdir()), "temp files left behind"


def test_sigkilled_writers_leave_no_trace(root: Path) -> None:
    box = Mailbox(root)
    box.create_thread("crash", creator="judge")
    rng = random.Random(1234)
    acked: list[int] = []
    for k in range(41):
        if k < 40:  # killed wherever it is: in a post, between posts, opening the root
            p = spawn("forever", str(root), "crash", f"victim{k}")
            said = "ready"
        else:  # and one certainly killed mid-post: its temp file written, the lock held
            p = spawn("stall", str(root), "crash", f"victim{k}")
            said = "staged"
        try:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == said
            time.sleep(rng.uniform(0.0, 0.05))
        finally:
            p.send_signal(signal.SIGKILL)
            out, _ = p.communicate(timeout=30)
        acked += [int(line) for line in out.split() if line.isdigit()]
        # No gap later posts cannot pass, no stuck lock: a survivor posts right away.
        seq = box.post("crash", "survivor", sender="judge")
        assert seq == box.head("crash")
    messages = list(box.messages("crash"))
    seqs = [m.seq for m in messages]
    assert seqs == list(range(1, box.head("crash") + 1)), (
        "a killed writer left a torn or missing file"
    )
    assert set(acked) <= set(seqs), "a message acknowledged before the kill is missing"
    for k in range(40):
        mine = [m.meta["i"] for m in messages if m.sender == f"victim{k}"]
        assert mine == list(range(len(mine))), f"victim{k}: a message doubled or lost its place"
    leftovers = list((root / ".state" / "tmp").iterdir())
    assert leftovers, "the writer killed mid-post left its temp file"
    Mailbox(root)  # the next process to open the root sweeps what the dead writers left
    assert not list((root / ".state" / "tmp").iterdir()), f"not swept: {leftovers}"


def test_dead_lock_holder_does_not_block_writers(box: Mailbox) -> None:
    lock_file = box.root / ".state" / "locks" / "t.lock"
    holder = spawn("hold_lock", str(lock_file))
    result: list[int] = []
    poster = threading.Thread(target=lambda: result.append(box.post("t", "hi", sender="bob")))
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        poster.start()
        poster.join(0.3)
        assert poster.is_alive(), "post must wait for the lock held by another process"
        assert result == [] and not (box.root / "threads" / "t" / "000001.json").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.communicate(timeout=10)
        if poster.ident is not None:
            poster.join(10)
    assert result == [1]


def test_stale_temp_files_are_swept(root: Path) -> None:
    tmp = root / ".state" / "tmp"
    dead = spawn("hold_lock", str(root / "x.lock"))
    dead.kill()
    dead.communicate(timeout=10)
    import socket

    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:64]
    stale = tmp / f"{host}.{dead.pid}.abcdef.tmp"
    stale.write_text("half a message")
    live = tmp / f"{host}.{os.getpid()}.abcdef.tmp"
    live.write_text("being written")
    old = tmp / "otherhost.1.abcdef.tmp"
    old.write_text("ancient")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    Mailbox(root)  # opening sweeps
    assert not stale.exists()
    assert not old.exists()
    assert live.exists(), "a live writer's temp file must never be removed"


def test_processes_creating_one_topic_meet_in_one_thread(root: Path) -> None:
    go = root.parent / "go-create"
    procs = [spawn("create", str(root), "Join Bus123", f"agent{i}", str(go)) for i in range(8)]
    start_together(procs, go)
    infos = [json.loads(out) for out in finish(procs)]
    assert {i["id"] for i in infos} == {"join-bus123"}
    creators = {i["created_by"] for i in infos}
    assert len(creators) == 1, "every process sees the one thread that won"
    assert [p.name for p in (root / "threads").iterdir()] == ["join-bus123"]
    record = json.loads((root / "threads" / "join-bus123" / "thread.json").read_text())
    assert record["created_by"] in creators and record["topic"] == "Join Bus123"
    assert not list((root / ".state" / "tmp").iterdir()), "losers cleaned up their staging"


def test_exclusive_create_claims_on_a_local_disk(root: Path) -> None:
    """The risk-accepting claim for filesystems without hard links still holds where O_EXCL
    is honoured (any local disk): no loss, no duplicate, and readers never see a torn file."""
    cfg = json.loads((root / "mailslot.json").read_text())
    (root / "mailslot.json").write_text(json.dumps({**cfg, "claim": "exclusive-create"}))
    box = Mailbox(root)
    assert box.settings.claim == "exclusive-create"
    box.create_thread("excl", creator="judge")
    go = root.parent / "go-excl"
    writers = [spawn("writer", str(root), "excl", f"w{n}", "200", "lock", "nofsync", str(go))
               for n in range(8)]  # fmt: skip
    reader = spawn("reader", str(root), "excl", str(8 * 200), str(go))
    start_together([*writers, reader], go)
    acked = {json.loads(out)["writer"]: json.loads(out)["acked"] for out in finish(writers)}
    (reader_out,) = finish([reader])
    assert "damage" not in json.loads(reader_out)
    check_thread(root, "excl", 8, 200, acked)


def test_young_unreadable_files_are_not_yet_there(root: Path) -> None:
    import os

    cfg = json.loads((root / "mailslot.json").read_text())
    (root / "mailslot.json").write_text(json.dumps({**cfg, "claim": "exclusive-create"}))
    box = Mailbox(root)
    box.create_thread("t", creator="a")
    box.post("t", "one", sender="a")
    half = root / "threads" / "t" / "000002.json"
    half.write_text('{"id": "x", "fr')  # a writer is halfway through
    page = box.read("t")
    assert [m.seq for m in page.messages] == [1] and page.cursor == 1 and not page.skipped
    old = time.time() - 60
    os.utime(half, (old, old))  # a writer that died halfway, long ago: that is damage
    page = box.read("t")
    assert page.cursor == 2 and "not valid" in page.skipped[0].reason


def test_a_writer_that_lost_the_race_takes_the_next_seq(
    box: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A race in slow motion: other writers stored seqs 2 and 3 after this one found the head
    (1). Its link to 2 fails instead of replacing that message, and it takes seq 4."""
    for i in range(3):
        box.post("t", f"m{i}", sender="alice")
    real = box._log.probe_head
    looks: list[int] = []

    def stale_once(thread: str, tdir: Path, **kw: bool) -> int:
        looks.append(1)
        return 1 if len(looks) == 1 else real(thread, tdir, **kw)

    monkeypatch.setattr(box._log, "probe_head", stale_once)
    assert box.post("t", "late", sender="bob") == 4
    assert len(looks) >= 2, "the claim looked for the head again after losing"
    fresh = Mailbox(box.root)
    assert [(m.seq, m.content) for m in fresh.messages("t")] == [
        (1, "m0"), (2, "m1"), (3, "m2"), (4, "late")
    ]  # fmt: skip
