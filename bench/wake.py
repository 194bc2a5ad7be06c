"""Wake: post→wake latency between two processes, and the idle CPU of a waiting process.

The publisher (this process) publishes; a waiter process blocked in ``Mailbox.wait`` prints
CLOCK_MONOTONIC (one clock for all processes) the moment it wakes; latency is that minus the
publisher's clock just before the publishing ``os.link()``, or before a whole ``post()``. The
floor is a raw inotify reader (ctypes, blocking ``read``) woken by the same links. Between
samples the publisher waits for the waiter's ack, then a random 2 ms to 2 ms + the poll
interval, so publishes hit random phases of a poll.
"""

from __future__ import annotations

import ctypes
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._util import SCRATCH, percentile, table
from mailslot import Mailbox

IN_CREATE = 0x100
IN_MOVED_TO = 0x80


def _raw_inotify_waiter(tdir: str, n: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init()
    libc.inotify_add_watch(fd, tdir.encode(), IN_CREATE | IN_MOVED_TO)
    print("ready", flush=True)
    for _ in range(n):
        os.read(fd, 4096)
        print(time.monotonic(), flush=True)


def _mailslot_waiter(root: str, mode: str, n: int) -> None:
    box = Mailbox(root, wait_mode=mode)
    cursor: dict[str, int] = {"w": 0}
    print("ready", flush=True)
    seen = 0
    while seen < n:
        got = box.wait("w", cursor, timeout=30)
        woke = time.monotonic()
        cursor = got.cursor
        seen += len(got.messages)
        print(woke, flush=True)
    box.close()


def _start(args: list[str]) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, "-m", "bench.wake", *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    return p


def _latencies(kind: str, n: int, via_post: bool) -> list[float]:
    """Return n wake latencies of a waiter of kind.

    Measured from the publishing os.link() of a message written beforehand (the instant it
    becomes visible), or with via_post from the start of a whole Mailbox.post() (fsync on).
    """
    with tempfile.TemporaryDirectory(dir=SCRATCH) as d:
        root = Path(d) / "box"
        box = Mailbox.init(root)
        box.create_thread("w", creator="bench")
        tdir = root / "threads" / "w"
        if kind == "raw inotify (floor)":
            p = _start(["raw", str(tdir), str(n)])
        else:
            p = _start(["mailslot", str(root), kind, str(n)])
        assert p.stdout is not None
        time.sleep(0.2)
        data = (
            b'{"id": "x", "from": "bench", "to": [], "type": "message", "priority": "normal", '
            b'"reply_to": null, "created_at": "2026-01-01T00:00:00.000Z", "content": "ping", '
            b'"meta": {}}\n'
        )
        out = []
        spread = 0.1 if kind == "poll" else 0.01  # hit random phases of the poll interval
        for seq in range(1, n + 1):
            time.sleep(random.uniform(0.002, 0.002 + spread))
            if via_post:
                t0 = time.monotonic()
                box.post("w", "ping", sender="bench")
            else:
                tmp = root / ".state" / "tmp" / f"bench.{seq}"
                tmp.write_bytes(data)
                t0 = time.monotonic()
                os.link(tmp, tdir / f"{seq:06d}.json")
                tmp.unlink()
            out.append(float(p.stdout.readline()) - t0)
        p.wait(30)
        p.stdout.close()
        return out


def _idle_cpu(mode: str, seconds: float) -> float:
    """Return the CPU share (percent of one core) of a process blocked in wait for seconds."""
    with tempfile.TemporaryDirectory(dir=SCRATCH) as d:
        root = Path(d) / "box"
        Mailbox.init(root).create_thread("w", creator="bench")
        p = _start(["mailslot", str(root), mode, "1"])
        time.sleep(0.5)
        tick = os.sysconf("SC_CLK_TCK")

        def cpu() -> float:
            fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / tick

        c0, t0 = cpu(), time.monotonic()
        time.sleep(seconds)
        c1, t1 = cpu(), time.monotonic()
        Mailbox(root).post("w", "bye", sender="bench")
        p.wait(30)
        assert p.stdout is not None
        p.stdout.close()
        return (c1 - c0) / (t1 - t0) * 100


def run(quick: bool) -> str:
    n = 60 if quick else 400
    rows = []
    floor = None
    kinds = [("raw inotify (floor)", False), ("native", False), ("poll", False), ("native", True)]
    for kind, via_post in kinds:
        samples = _latencies(kind, n if kind != "poll" else n // 4, via_post)
        p50, p99 = percentile(samples, 50) * 1e3, percentile(samples, 99) * 1e3
        floor = floor or p50
        label = {
            "raw inotify (floor)": "raw inotify read (floor)",
            "native": "mailslot native",
            "poll": "mailslot poll (0.1 s interval)",
        }[kind]
        label += ", from the start of post() (fsync on)" if via_post else ", from the link()"
        rows.append([label, str(len(samples)), f"{p50:.3f}", f"{p99:.3f}", f"{p50 / floor:.1f}×"])
    secs = 2.0 if quick else 5.0
    idle = [f"native {_idle_cpu('native', secs):.2f} %", f"poll {_idle_cpu('poll', secs):.2f} %"]
    return (
        table(["waiter woken", "samples", "p50 ms", "p99 ms", "p50 ÷ floor"], rows)
        + f"\n\nIdle CPU of a process blocked in wait ({secs:.0f} s, one core = 100 %): "
        + ", ".join(idle)
    )


if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) > 1 else "run"
    if role == "raw":
        _raw_inotify_waiter(sys.argv[2], int(sys.argv[3]))
    elif role == "mailslot":
        _mailslot_waiter(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        SCRATCH.mkdir(parents=True, exist_ok=True)
        print(run("--quick" in sys.argv))
