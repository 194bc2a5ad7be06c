"""News (store/news.py): writers tell which thread they wrote in .state/news; every look of a
wait reads what was told since, so a wait sees a message stored before it began even where no
file event and no sweep has named its thread yet.

Real files and real processes: posts come from ``mailslot post`` subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from mailslot import Mailbox
from mailslot.doctor.repair import put
from mailslot.store import news as _news
from mailslot.store import plan as _plan
from mailslot.store.news import NEWS, NewsReader, tell


def _post(root: Path, thread: str, text: str, to: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "mailslot", "post", "--root", str(root), "--as", "lead",
         "--to", to, thread, text],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def _mailbox(root: Path, threads: int, mode: str = "poll") -> None:
    with Mailbox.init(root, fsync=False) as box:
        box.agents.register("lead")
        box.agents.register("bob")
        for i in range(threads):
            box.create_thread(f"t{i:03d}", creator="lead")
    config = root / "mailslot.json"
    doc = json.loads(config.read_text())
    doc.update(wait_mode=mode, poll_interval=0.1)
    config.write_text(json.dumps(doc))


def test_a_kept_wait_sees_a_post_from_another_process_that_no_sweep_has_reached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Poll mode over more threads than a tick looks at, with the sweep stopped: only the news
    can bring a quiet thread's new message to the next run of a kept inbox wait (without it,
    the run times out empty)."""
    root = tmp_path / "box"
    _mailbox(root, 300)
    monkeypatch.setattr(_plan, "sweep_size", lambda threads, interval: 0)

    async def main() -> list[tuple[str, str]]:
        with Mailbox(root) as box:
            plan = box.wait_plan(None, {}, to="bob")
            first = await box.run_wait(plan, 0.2)
            assert first.messages == [] and first.timed_out
            _post(root, "t150", "look here", "bob")
            _post(root, "t007", "and here", "bob")
            got = await box.run_wait(plan, 3)
            return sorted((m.thread, m.content) for m in got.messages)

    assert anyio.run(main) == [("t007", "and here"), ("t150", "look here")]


def test_the_first_read_finds_the_end_and_later_reads_what_each_process_told(
    tmp_path: Path,
) -> None:
    root = tmp_path / "box"
    _mailbox(root, 3)
    _post(root, "t000", "before", "bob")
    reader = NewsReader(root)
    assert reader.read() == set()  # what came before is the first look's, which sees all
    assert reader.read() == set()
    _post(root, "t001", "one", "bob")
    _post(root, "t002", "two", "bob")
    _post(root, "t001", "three", "bob")
    assert reader.read() == {"t001", "t002"}
    assert reader.read() == set()
    reader.close()


def test_a_line_still_being_written_waits_and_a_foreign_line_means_any_thread(
    tmp_path: Path,
) -> None:
    root = tmp_path / "box"
    _mailbox(root, 1)
    path = root / NEWS
    reader = NewsReader(root)
    reader.read()
    with open(path, "ab") as f:
        f.write(b"t000\nt0")
    assert reader.read() == {"t000"}
    with open(path, "ab") as f:
        f.write(b"01\n")
    assert reader.read() == {"t001"}
    with open(path, "ab") as f:
        f.write(b"\x00\x00\x00\x00\n")  # an NFS hole, an editor's bytes: it said something
    assert reader.read() is None
    assert reader.read() == set()  # once: the reader is past it
    with open(path, "ab") as f:
        f.write(b"../etc\n")
    assert reader.read() is None


def test_a_file_cut_short_means_any_thread(tmp_path: Path) -> None:
    root = tmp_path / "box"
    _mailbox(root, 2)
    tell(root, "t000")
    reader = NewsReader(root)
    reader.read()
    tell(root, "t001")
    os.truncate(root / NEWS, 3)
    assert reader.read() is None
    tell(root, "t000")
    assert reader.read() == {"t000"}  # on from where it was cut


def test_a_file_started_again_is_read_to_its_end_and_the_new_one_from_its_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writers remove the file past NEWS_MAX; a reader still holding it reads the rest of it,
    then the new file from its first line: every thread told, and never 'any thread'."""
    root = tmp_path / "box"
    _mailbox(root, 40)
    monkeypatch.setattr(_news, "NEWS_MAX", 50)
    reader = NewsReader(root)
    tell(root, "t000")
    reader.read()
    inodes = set()
    told: set[str] = set()
    for i in range(40):
        tell(root, f"t{i:03d}")
        if (root / NEWS).exists():
            inodes.add((root / NEWS).stat().st_ino)
        if i % 7 == 0:
            got = reader.read()
            assert got is not None
            told |= got
    got = reader.read()
    assert got is not None
    told |= got
    assert told == {f"t{i:03d}" for i in range(40)}
    assert len(inodes) > 1  # it did start again (more than once)


def test_a_post_to_a_folder_where_news_cannot_be_written_is_stored_all_the_same(
    tmp_path: Path,
) -> None:
    root = tmp_path / "box"
    _mailbox(root, 1)
    (root / NEWS).mkdir()  # not a file: every append fails
    reader = NewsReader(root)
    reader.read()
    _post(root, "t000", "stored", "bob")
    assert [m.content for m in Mailbox(root).messages("t000")] == ["stored"]
    assert reader.read() == set()  # nothing to read, and no "any thread" on every look


def test_doctor_and_sync_tell_the_messages_they_write_and_nothing_else(tmp_path: Path) -> None:
    """doctor's put writes every message a fix moves and every message sync lands."""
    root = tmp_path / "box"
    _mailbox(root, 2)
    reader = NewsReader(root)
    reader.read()
    tmpdir = root / ".state" / "tmp"
    record = (root / "threads" / "t000" / "thread.json").read_bytes()
    put(root / "threads" / "t000" / "thread.json", record, tmpdir, replace=True, fsync=False)
    assert reader.read() == set()
    message = json.dumps(
        {"id": "m1", "from": "lead", "to": ["bob"], "type": "message", "priority": "normal",
         "reply_to": None, "created_at": "2026-12-05T00:00:00.000Z", "content": "landed",
         "meta": {}}
    ).encode()  # fmt: skip
    assert put(root / "threads" / "t001" / "000001.json", message, tmpdir, replace=False)
    assert reader.read() == {"t001"}
