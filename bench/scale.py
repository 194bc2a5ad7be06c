"""Scale: head lookup, read-after-cursor and post at 1k/10k/100k messages in one thread.

design.md promises O(new messages) for these, never O(thread size); a directory listing, the
thing we avoid, is measured beside them as the reference.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bench._util import SCRATCH, median_us, table, timed
from mailslot import Mailbox


def build(root: Path, n: int) -> Mailbox:
    box = Mailbox.init(root, fsync=False)
    box.create_thread("big", creator="bench")
    box.post("big", "x" * 400, sender="bench")
    tdir = root / "threads" / "big"
    data = (tdir / "000001.json").read_bytes()
    for seq in range(2, n + 1):  # the same bytes as a real post, written directly for speed
        (tdir / f"{seq:06d}.json").write_bytes(data)
    return box


def run(sizes: list[int], repeats: int) -> tuple[str, dict[str, dict[int, float]]]:
    results: dict[str, dict[int, float]] = {}
    for n in sizes:
        with tempfile.TemporaryDirectory(dir=SCRATCH) as d:
            root = Path(d) / "box"
            box = build(root, n)
            tdir = root / "threads" / "big"
            row = {
                "head, cold (new process, O(log n) stats)": median_us(
                    timed(lambda: Mailbox(root).head("big"), repeats)
                ),
                "head, warm (probe from hint)": median_us(timed(lambda: box.head("big"), repeats)),
                "read 1 new after cursor": median_us(
                    timed(lambda: box.read("big", n - 1, 10), repeats)
                ),
                "read 10 new after cursor": median_us(
                    timed(lambda: box.read("big", n - 10, 10), repeats)
                ),
                "post (fsync off)": median_us(
                    timed(lambda: box.post("big", "y" * 400, sender="bench"), repeats)
                ),
                "thread info (cached index)": median_us(
                    timed(
                        lambda: box.thread("big"), repeats, warm=lambda: box.unanswered("big", "x")
                    )
                ),
                "reference: list the folder": median_us(timed(lambda: os.listdir(tdir), repeats)),
            }
            for k, v in row.items():
                results.setdefault(k, {})[n] = v
    headers = [
        "operation (µs, median)",
        *[f"{n:,}" for n in sizes],
        f"{sizes[-1]:,} / {sizes[0]:,}",
    ]
    rows = [
        [k, *[f"{v[n]:.1f}" for n in sizes], f"{v[sizes[-1]] / v[sizes[0]]:.2f}×"]
        for k, v in results.items()
    ]
    return table(headers, rows), results


def many_threads(counts: list[int], repeats: int) -> str:
    """Return the cost of listing threads (with state, head, participants) as threads multiply."""
    results: dict[str, dict[int, float]] = {}
    for n in counts:
        with tempfile.TemporaryDirectory(dir=SCRATCH) as d:
            root = Path(d) / "box"
            box = Mailbox.init(root, fsync=False)
            for i in range(n):
                t = box.create_thread(f"topic {i}", creator="bench").id
                box.post(t, "x" * 400, sender="bench")
            box.threads()  # builds the per-thread index files under .state/index/
            row = {
                "thread list, same process (cached)": median_us(timed(box.threads, repeats)),
                "thread list, new process (index files)": median_us(
                    timed(lambda: Mailbox(root).threads(), repeats)
                ),
            }
            for k, v in row.items():
                results.setdefault(k, {})[n] = v
    headers = ["operation (µs, median)", *[f"{n:,} threads" for n in counts], "per thread"]
    rows = [
        [k, *[f"{v[n]:,.0f}" for n in counts], f"{v[counts[-1]] / counts[-1]:.1f} µs"]
        for k, v in results.items()
    ]
    return table(headers, rows)


if __name__ == "__main__":
    import sys

    quick = "--quick" in sys.argv
    text, _ = run([1000, 10000] if quick else [1000, 10000, 100000], 20 if quick else 50)
    print(text)
