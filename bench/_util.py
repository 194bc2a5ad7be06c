"""Small helpers shared by the benchmarks: timing, medians, tables."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Where benchmark folders are made: --dir, else $MAILSLOT_BENCH_DIR, else .bench-scratch/ in the
# working directory (on some shared machines /tmp is watched and file creation there is 25x
# slower than elsewhere on the same disk, which would measure the watcher, not mailslot).
SCRATCH = Path(os.environ.get("MAILSLOT_BENCH_DIR") or ".bench-scratch").resolve()


def timed(
    fn: Callable[[], object], repeats: int, warm: Callable[[], object] | None = None
) -> list[float]:
    """Return the wall time in seconds of each of repeats calls of fn (after warm(), if given)."""
    if warm is not None:
        warm()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def median_us(samples: list[float]) -> float:
    """Return the median of samples (seconds) in microseconds."""
    return statistics.median(samples) * 1e6


def percentile(samples: list[float], p: float) -> float:
    """Return the p-th percentile (0-100) of samples by nearest rank."""
    ordered = sorted(samples)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Return rows as a Markdown table with aligned columns."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join([line, sep, *body])


def run_writers(module: str, argvs: list[list[str]]) -> tuple[list[str], float]:
    """Run `python -m module *argv` writers released together; return their outputs and the
    seconds from release to the last one's end.

    Each writer prints "ready" once set up, waits for a line on stdin, works, and prints what
    it has to say on its last line.
    """
    here = Path(__file__).resolve().parent.parent
    procs = [
        subprocess.Popen([sys.executable, "-m", module, *argv], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, cwd=here)
        for argv in argvs
    ]  # fmt: skip
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    t0 = time.perf_counter()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=600)[0] for p in procs]
    return outs, time.perf_counter() - t0
