"""Publish: one writer's latency, and 1, 4 and 8 writer processes, beside the raw os.link floor."""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench._util import SCRATCH, percentile, table
from mailslot import Mailbox

BODY = "x" * 400


def _writer(
    root: str, name: str, count: int, fsync: bool, lock: bool, go: object, thread: str
) -> None:
    box = Mailbox(root, fsync=fsync, lock=lock)
    go.wait()  # type: ignore[attr-defined]
    for _ in range(count):
        box.post(thread, BODY, sender=name)


def raw_publish(tmpdir: str, tdir: str, seq: int, data: bytes, fsync: bool) -> int:
    """The floor: write (and fsync) a temp file, link it to the next free name from seq,
    unlink it; no validation, no lock. Return the seq it got."""
    tmp = os.path.join(tmpdir, f"raw.{os.getpid()}.{seq}")
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
    return seq


def _raw_writer(tdir: str, tmpdir: str, count: int, fsync: bool, go: object) -> None:
    data = (BODY + "\n").encode()
    go.wait()  # type: ignore[attr-defined]
    seq = 1
    for _ in range(count):
        seq = raw_publish(tmpdir, tdir, seq, data, fsync) + 1


def _run(procs: int, count: int, fsync: bool, kind: str, separate: bool = False) -> float:
    """Return messages/s of procs writers (on one thread, or one thread each when separate)."""
    ctx = mp.get_context("fork")
    with tempfile.TemporaryDirectory(dir=SCRATCH) as d:
        root = Path(d) / "box"
        box = Mailbox.init(root)
        names = [f"t{i}" if separate else "bench" for i in range(procs)]
        for name in set(names):
            box.create_thread(name, creator="bench")
        go = ctx.Event()
        tmpdir = str(root / ".state" / "tmp")
        if kind == "raw":
            ps = [
                ctx.Process(
                    target=_raw_writer,
                    args=(str(root / "threads" / names[i]), tmpdir, count, fsync, go),
                )
                for i in range(procs)
            ]
        else:
            ps = [
                ctx.Process(
                    target=_writer,
                    args=(str(root), f"w{i}", count, fsync, kind == "lock", go, names[i]),
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
        stored = sum(Mailbox(root).head(name) for name in set(names))
        assert stored == procs * count, "lost or doubled messages"
        return procs * count / elapsed


def latency(fsync: bool, n: int) -> tuple[list[float], list[float]]:
    """Return per-message seconds of one writer: raw link floor, and Mailbox.post, alternating."""
    with tempfile.TemporaryDirectory(dir=SCRATCH) as d:
        root = Path(d) / "box"
        box = Mailbox.init(root, fsync=fsync)
        box.create_thread("lat", creator="bench")
        box.create_thread("raw", creator="bench")
        tdir, tmpdir = root / "threads" / "raw", root / ".state" / "tmp"
        data = (BODY + "\n").encode()
        raw, ours = [], []
        for i in range(1, n + 1):
            t0 = time.perf_counter()
            raw_publish(str(tmpdir), str(tdir), i, data, fsync)
            raw.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            box.post("lat", BODY, sender="bench")
            ours.append(time.perf_counter() - t0)
        return raw, ours


def run(quick: bool) -> str:
    """Return the latency and throughput tables; each figure beside its floor from this run."""
    count, repeats = (80, 1) if quick else (1000, 3)
    lat_rows = []
    for fsync in (False, True):
        raw, ours = latency(fsync, 100 if quick else 1000)
        lat_rows.append(
            [
                "on" if fsync else "off",
                f"{percentile(raw, 50) * 1e6:.0f} / {percentile(raw, 99) * 1e6:.0f}",
                f"{percentile(ours, 50) * 1e6:.0f} / {percentile(ours, 99) * 1e6:.0f}",
                f"{percentile(ours, 50) / percentile(raw, 50):.2f}",
            ]
        )
    rows = []
    configs = [(fsync, procs, False) for fsync in (False, True) for procs in (1, 4, 8)]
    configs += [(fsync, procs, True) for fsync in (False, True) for procs in (4, 8)]
    for fsync, procs, separate in configs:
        runs: dict[str, list[float]] = {"raw": [], "lock": [], "nolock": []}
        for _ in range(repeats):
            for kind, samples in runs.items():
                samples.append(_run(procs, count, fsync, kind, separate))
        raw, locked, free = (statistics.median(runs[k]) for k in ("raw", "lock", "nolock"))
        rows.append(
            [
                "on" if fsync else "off",
                f"{procs}{' (own threads)' if separate else ''}",
                f"{raw:,.0f}",
                f"{locked:,.0f}",
                f"{locked / raw:.2f}",
                f"{free:,.0f}",
                f"{free / raw:.2f}",
            ]
        )
    return (
        table(
            ["fsync", "raw link floor p50 / p99 µs", "Mailbox.post p50 / p99 µs", "÷ floor"],
            lat_rows,
        )
        + "\n\n"
        + table(
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
    )


if __name__ == "__main__":
    import sys

    print(run("--quick" in sys.argv))
