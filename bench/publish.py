"""Publish throughput: 1, 4 and 8 writer processes on one thread, beside the raw os.link floor."""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench._util import SCRATCH, table
from mailslot import Mailbox

BODY = "x" * 400


def _writer(root: str, name: str, count: int, fsync: bool, lock: bool, go: object) -> None:
    box = Mailbox(root, fsync=fsync, lock=lock)
    go.wait()  # type: ignore[attr-defined]
    for _ in range(count):
        box.post("bench", BODY, sender=name)


def _raw_writer(tdir: str, tmpdir: str, count: int, fsync: bool, go: object) -> None:
    """The floor: write+fsync a temp file, link it to the next free name, unlink; no checks."""
    data = (BODY + "\n").encode()
    go.wait()  # type: ignore[attr-defined]
    seq = 1
    for i in range(count):
        tmp = os.path.join(tmpdir, f"{os.getpid()}.{i}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
        os.close(fd)
        while True:
            try:
                os.link(tmp, os.path.join(tdir, f"{seq:06d}.json"))
                break
            except FileExistsError:
                seq += 1
        os.unlink(tmp)


def _run(procs: int, count: int, fsync: bool, kind: str) -> float:
    ctx = mp.get_context("fork")
    with tempfile.TemporaryDirectory(dir=SCRATCH) as d:
        root = Path(d) / "box"
        Mailbox.init(root).create_thread("bench", creator="bench")
        go = ctx.Event()
        if kind == "raw":
            tdir, tmpdir = root / "threads" / "bench", root / ".state" / "tmp"
            ps = [
                ctx.Process(target=_raw_writer, args=(str(tdir), str(tmpdir), count, fsync, go))
                for _ in range(procs)
            ]
        else:
            ps = [
                ctx.Process(
                    target=_writer, args=(str(root), f"w{i}", count, fsync, kind == "lock", go)
                )
                for i in range(procs)
            ]
        for p in ps:
            p.start()
        time.sleep(0.3)
        t0 = time.perf_counter()
        go.set()
        for p in ps:
            p.join()
        elapsed = time.perf_counter() - t0
        assert Mailbox(root).head("bench") == procs * count, "lost or doubled messages"
        return procs * count / elapsed


def run(quick: bool) -> str:
    """Return the throughput table; variants alternate and each figure is a median of runs."""
    count, repeats = (200, 1) if quick else (1000, 3)
    rows = []
    for fsync in (False, True):
        for procs in (1, 4, 8):
            runs: dict[str, list[float]] = {"raw": [], "lock": [], "nolock": []}
            for _ in range(repeats):
                for kind, samples in runs.items():
                    samples.append(_run(procs, count, fsync, kind))
            raw, locked, free = (statistics.median(runs[k]) for k in ("raw", "lock", "nolock"))
            rows.append(
                [
                    "on" if fsync else "off",
                    str(procs),
                    f"{raw:,.0f}",
                    f"{locked:,.0f}",
                    f"{locked / raw:.2f}",
                    f"{free:,.0f}",
                    f"{free / raw:.2f}",
                ]
            )
    return table(
        [
            "fsync",
            "writers",
            "raw link floor msg/s",
            "mailslot msg/s",
            "÷ floor",
            "mailslot, lock off",
            "÷ floor",
        ],
        rows,
    )


if __name__ == "__main__":
    import sys

    print(run("--quick" in sys.argv))
