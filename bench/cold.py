"""Cold paths and many threads: a fresh clone's first look at a long thread, the thread list at
10,000 threads, and what an idle poll-mode inbox waiter costs as idle threads multiply.

Each is measured beside its reference in the same run: reading every message of the thread
(what a first look cost before the index was built a time budget per look), and a bare listing
of threads/.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
from pathlib import Path

from bench._util import SCRATCH, median_us, table, timed
from bench.scale import build
from mailslot import Mailbox


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def first_look(n: int, repeats: int) -> list[list[str]]:
    """Return rows: a first thread_create of an n-message thread on a fresh clone, and refs."""
    with tempfile.TemporaryDirectory(dir=SCRATCH) as d:
        root = Path(d) / "box"
        build(root, n).set_state("big", "review", sender="bench")

        def fresh_create() -> None:
            shutil.rmtree(root / ".state", ignore_errors=True)
            Mailbox(root, sweep=False).create_thread("big", creator="bench")

        def fresh_full_index() -> None:
            shutil.rmtree(root / ".state", ignore_errors=True)
            Mailbox(root, sweep=False).unanswered("big", "bench")

        def listing() -> None:
            os.listdir(root / "threads" / "big")

        create = median_us(timed(fresh_create, repeats)) / 1000
        full = median_us(timed(fresh_full_index, max(1, repeats // 3))) / 1000
        ref = median_us(timed(listing, repeats)) / 1000
    return [
        [f"first thread_create of a {n:,}-message thread (fresh clone)", f"{create:.1f}", "1.00×"],
        ["reference: reading every message (the whole index)", f"{full:.1f}",
         f"{full / create:.1f}×"],
        ["reference: one listing of the thread's folder", f"{ref:.1f}", f"{ref / create:.2f}×"],
    ]  # fmt: skip


def thread_list(n: int, repeats: int) -> list[list[str]]:
    """Return rows: listing n threads warm and from a new process, beside a bare listing."""
    with tempfile.TemporaryDirectory(dir=SCRATCH) as d:
        root = Path(d) / "box"
        box = Mailbox.init(root, fsync=False)
        for i in range(n):
            t = box.create_thread(f"topic {i}", creator="bench").id
            if i % 10 == 0:
                box.post(t, "x" * 400, sender="bench")
        old = 1_000_000_000  # folders unchanged for a long time, as in a quiet mailbox
        for entry in os.scandir(root / "threads"):
            os.utime(entry.path, (old, old))
        box.threads()
        warm = median_us(timed(box.threads, repeats)) / 1000
        new = median_us(timed(lambda: Mailbox(root, sweep=False).threads(), max(1, repeats // 3)))
        ref = median_us(timed(lambda: os.listdir(root / "threads"), repeats)) / 1000
    return [
        [f"thread list at {n:,} threads, warm (same process)", f"{warm:.1f}", "1.00×"],
        [f"thread list at {n:,} threads, new process (index files)", f"{new / 1000:.1f}",
         f"{new / 1000 / warm:.1f}×"],
        [f"reference: one listing of threads/ ({n:,} entries)", f"{ref:.1f}",
         f"{ref / warm:.2f}×"],
    ]  # fmt: skip


def idle_poll(counts: list[int], seconds: float) -> list[list[str]]:
    """Return rows: CPU of an idle poll-mode inbox waiter (steady state) at each thread count,
    waiting from cursor() ("from now") and from an empty cursor ({}: every thread from seq 0)."""
    rows, base = [], None
    for n in counts:
        with tempfile.TemporaryDirectory(dir=SCRATCH) as d:
            box = Mailbox.init(Path(d) / "box", fsync=False)
            box.agents.register("other")
            for i in range(n):
                t = box.create_thread(f"t{i}", creator="bench").id
                if i % 10 == 0:  # quiet threads with old news for someone else
                    box.post(t, "x" * 400, sender="bench", to=["other"])
            waiter = Mailbox(Path(d) / "box", wait_mode="poll", poll_interval=0.1)
            for label, cursor in (("cursor()", waiter.cursor()), ("an empty cursor {}", {})):
                spent = {}
                for length in (1.0, 1.0 + seconds):  # the difference leaves out the first look
                    c = _cpu()
                    waiter.wait(None, cursor, to="nobody", timeout=length)
                    spent[length] = _cpu() - c
                share = 100 * (spent[1.0 + seconds] - spent[1.0]) / seconds
                base = base if base is not None else max(share, 0.01)
                what = f"idle poll-mode inbox waiter from {label}, {n:,} threads (% of a core)"
                rows.append([what, f"{share:.2f}", f"{share / base:.1f}×"])
    return rows


def run(quick: bool) -> str:
    """Return the section's table."""
    n = 20_000 if quick else 100_000
    rows = first_look(n, 3 if quick else 7)
    rows += thread_list(2_000 if quick else 10_000, 5 if quick else 15)
    rows += idle_poll([100, 2_000] if quick else [100, 10_000], 3.0 if quick else 10.0)
    return table(["operation", "ms (or %)", "ratio to the first row of its group"], rows)


if __name__ == "__main__":
    import sys

    SCRATCH.mkdir(parents=True, exist_ok=True)
    print(run("--quick" in sys.argv))
