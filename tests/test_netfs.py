"""A shared network folder: one export mounted twice over sshfs (loopback), as two machines would.

inotify on mount A never sees a file created through mount B, and flock on A does not exclude
a writer on B: the waiter must fall back to polling by name, and the no-replace link claim must
keep concurrent writers on both mounts from losing or doubling messages. The fixture starts its
own sshd on 127.0.0.1 and mounts with sshfs; it skips with the reason where the machine cannot,
except under CI=true, where these tests must run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from helpers import (
    SSHD,
    check_thread,
    finish,
    loopback_sshd,
    require,
    spawn,
    start_together,
    wait_for_port,
)

from mailslot import Mailbox, StorageError
from mailslot.store import plan as _plan


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root to mount FUSE filesystems"
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse on this machine"
    if not (shutil.which("sshfs") and Path(SSHD).exists() and shutil.which("ssh-keygen")):
        return "needs Debian's openssh-server and sshfs (.ci/run installs them as root)"
    return None


@pytest.fixture(scope="module")
def mounts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    reason = _why_not()
    if reason:
        require(reason)
    base = tmp_path_factory.mktemp("sshfs")
    export, a, b = base / "export", base / "a", base / "b"
    for d in (export, a, b):
        d.mkdir()
    mounted: list[Path] = []
    with loopback_sshd(base) as sshd:
        try:
            for mnt in (a, b):
                opts = (
                    f"IdentityFile={sshd.key},port={sshd.port},StrictHostKeyChecking=no,"
                    "UserKnownHostsFile=/dev/null,LogLevel=ERROR"
                )
                result = subprocess.run(
                    ["sshfs", "-o", opts, f"{sshd.user}@127.0.0.1:{export}", str(mnt)],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                )
                if result.returncode != 0:
                    require(f"sshfs mount failed: {result.stderr.strip()}")
                mounted.append(mnt)
            yield a, b
        finally:
            for mnt in mounted:
                subprocess.run(["fusermount", "-u", "-z", str(mnt)], capture_output=True,
                               check=False)  # fmt: skip


def test_mounts_are_network_and_blind(mounts: tuple[Path, Path]) -> None:
    a, b = mounts
    box_a = Mailbox.init(a / "blind")
    assert box_a.wait_mode == "hybrid", "sshfs is a network mount: events plus polling"
    assert Mailbox(b / "blind").root != box_a.root


def test_waiter_on_a_wakes_for_a_write_through_b(mounts: tuple[Path, Path]) -> None:
    a, b = mounts
    box_a = Mailbox.init(a / "wake")
    box_a.create_thread("t", creator="alice")
    p = spawn("waiter", str(a / "wake"), "t", json.dumps({"t": 0}), "-", "3600", "auto")
    assert p.stdout is not None
    assert [p.stdout.readline().strip() for _ in "12"] == ["ready", "blocked"]
    Mailbox(b / "wake").post("t", "through b", sender="bob")
    (out,) = finish([p], timeout=30)  # woken by polling: no event crosses mounts, no re-check
    got = json.loads(out)
    assert [m["content"] for m in got["messages"]] == ["through b"]


def test_a_post_through_b_into_a_quiet_thread_is_found_by_the_news_not_the_sweep(
    mounts: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another machine's post into one of many quiet threads: no event crosses mounts, and
    with the sweep stopped only .state/news (shared by both mounts) can tell a on its next
    look; the kept wait returns it at once."""
    a, b = mounts
    with Mailbox.init(a / "news", fsync=False) as box:
        for i in range(276):
            box.create_thread(f"q{i:03d}", creator="alice")
    monkeypatch.setattr(_plan, "sweep_size", lambda threads, interval: 0)

    async def main() -> list[str]:
        with Mailbox(a / "news") as box_a:
            assert box_a.wait_mode == "hybrid"
            plan = box_a.wait_plan(None, {})
            assert (await box_a.run_wait(plan, 0.2)).timed_out
            Mailbox(b / "news").post("q200", "through b", sender="bob")
            got = await box_a.run_wait(plan, 10)
            return [m.content for m in got.messages]

    assert anyio.run(main) == ["through b"]


def test_writers_on_both_mounts_lose_nothing(mounts: tuple[Path, Path]) -> None:
    a, b = mounts
    Mailbox.init(a / "race").create_thread("race", creator="judge")
    go = a.parent / "go-race"
    each = 100
    procs = [
        spawn(
            "writer",
            str(mnt / "race"),
            "race",
            f"{mnt.name}{i}",
            str(each),
            "lock",
            "nofsync",
            str(go),
        )
        for mnt in (a, b)
        for i in range(2)
    ]
    start_together(procs, go)
    acked = {}
    for out in finish(procs):
        doc = json.loads(out)
        acked[doc["writer"]] = doc["acked"]
    check_thread(a / "race", "race", 4, each, acked)


# ---------------------------------------------------------------- SMB: no hard links


def _why_no_smb() -> str | None:
    if os.geteuid() != 0:
        return "needs root to run smbd on port 445 and mount FUSE filesystems"
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse on this machine"
    if not (shutil.which("smbd") and shutil.which("smbnetfs")):
        return "needs Debian's samba and smbnetfs (.ci/run installs them as root)"
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 445)) == 0:
            return "port 445 is already taken on this machine"
    return None


@pytest.fixture(scope="module")
def smb_mounts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    reason = _why_no_smb()
    if reason:
        require(reason)
    base = tmp_path_factory.mktemp("smb")
    export = base / "export"
    export.mkdir()
    for d in ("run", "lock", "state", "cache", "private"):
        (base / d).mkdir()
    conf = base / "smb.conf"
    conf.write_text(
        "[global]\n  interfaces = lo\n  bind interfaces only = yes\n  smb ports = 445\n"
        "  map to guest = Bad User\n  server role = standalone server\n"
        "  load printers = no\n  disable spoolss = yes\n"
        f"  pid directory = {base}/run\n  lock directory = {base}/lock\n"
        f"  state directory = {base}/state\n  cache directory = {base}/cache\n"
        f"  private dir = {base}/private\n  log file = {base}/log.%m\n"
        f"[mbox]\n  path = {export}\n  guest ok = yes\n  read only = no\n  force user = root\n"
    )
    # A session of its own (made by us: smbd's own setsid would fail in it, hence
    # --no-process-group): on shutdown smbd signals its whole process group, which must not be
    # the test runner's.
    smbd = subprocess.Popen(
        ["smbd", "--foreground", "--no-process-group", "-s", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    mounted: list[Path] = []
    try:
        wait_for_port(445, smbd, "smbd")
        shares = []
        for name in ("a", "b"):
            home = base / f"home-{name}"
            (home / ".smb").mkdir(parents=True)
            cfg = home / ".smb" / "smbnetfs.conf"
            cfg.write_text('auth "127.0.0.1" "guest" ""\nhost 127.0.0.1 visible=true\n')
            cfg.chmod(0o600)
            mnt = base / f"mnt-{name}"
            mnt.mkdir()
            result = subprocess.run(["smbnetfs", str(mnt), "-o", f"config={cfg}"],
                                    env={**os.environ, "HOME": str(home)}, capture_output=True,
                                    text=True, timeout=30, check=False)  # fmt: skip
            if result.returncode != 0:
                require(f"smbnetfs mount failed: {result.stderr.strip()}")
            mounted.append(mnt)
            share = mnt / "127.0.0.1" / "mbox"
            deadline = time.monotonic() + 20
            while not share.is_dir():
                if time.monotonic() > deadline:
                    require("the SMB share did not appear under the smbnetfs mount")
                time.sleep(0.2)
            shares.append(share)
        yield shares[0], shares[1]
    finally:
        for mnt in mounted:
            subprocess.run(["fusermount", "-u", "-z", str(mnt)], capture_output=True, check=False)
        smbd.terminate()
        smbd.communicate(timeout=10)


def test_smb_without_hard_links_refuses_and_explains(smb_mounts: tuple[Path, Path]) -> None:
    from mailslot.doctor.checks import diagnose

    a, _ = smb_mounts
    box = Mailbox.init(a / "refuse")
    box.create_thread("t", creator="alice")
    with pytest.raises(StorageError, match='refused a hard link.*"claim": "exclusive-create"'):
        box.post("t", "would be unsafe", sender="alice")
    assert box.head("t") == 0, "nothing was stored"
    report = diagnose(box.root)
    assert report.hard_links is False and report.network is True
    assert any("claim" in f.detail for f in report.findings if f.kind == "filesystem")


def test_smb_exclusive_create_accepts_the_risk(smb_mounts: tuple[Path, Path]) -> None:
    a, b = smb_mounts
    box = Mailbox.init(a / "excl")
    cfg = json.loads((box.root / "mailslot.json").read_text())
    (box.root / "mailslot.json").write_text(json.dumps({**cfg, "claim": "exclusive-create"}))
    box = Mailbox(box.root)
    box.create_thread("t", creator="alice")
    # Writers on one mount: the share honours O_EXCL among them, so nothing is lost.
    go = a / "go-excl"
    procs = [spawn("writer", str(box.root), "t", f"w{i}", "40", "lock", "nofsync", str(go))
             for i in range(2)]  # fmt: skip
    start_together(procs, go)
    acked = {json.loads(out)["writer"]: json.loads(out)["acked"] for out in finish(procs)}
    check_thread(box.root, "t", 2, 40, acked)
    # A waiter on mount A wakes for a write made through mount B (polling: no events cross).
    p = spawn("waiter", str(box.root), "t", json.dumps({"t": 80}), "-", "3600", "auto")
    assert p.stdout is not None
    assert [p.stdout.readline().strip() for _ in "12"] == ["ready", "blocked"]
    Mailbox(b / "excl").post("t", "through b", sender="bob")
    (out,) = finish([p], timeout=30)
    assert [m["content"] for m in json.loads(out)["messages"]] == ["through b"]


def test_a_reader_whose_clock_is_ahead_still_waits_for_a_file_being_written(
    mounts: tuple[Path, Path],
) -> None:
    """On a network mount the server stamps file times: a reader whose clock runs two minutes
    ahead must not take a file still being written for old damage (faketime shifts only the
    reader's clock)."""
    if shutil.which("faketime") is None:
        require("needs Debian's faketime (.ci/run installs it as root)")
    a, b = mounts
    box = Mailbox.init(a / "skew")
    box.create_thread("t", creator="alice")
    box.post("t", "one", sender="alice")
    (b / "skew" / "threads" / "t" / "000002.json").write_bytes(b"")  # a writer on b, halfway
    script = (
        "import json, sys\nfrom mailslot import Mailbox\n"
        "page = Mailbox(sys.argv[1]).read('t')\n"
        "print(json.dumps({'seqs': [m.seq for m in page.messages], 'skipped': len(page.skipped),"
        " 'pending': page.pending.seq if page.pending else None}))\n"
    )
    done = subprocess.run(
        ["faketime", "-f", "+120s", sys.executable, "-c", script, str(a / "skew")],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert json.loads(done.stdout) == {"seqs": [1], "skipped": 0, "pending": 2}, done.stderr
