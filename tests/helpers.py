"""Helpers for tests that run real worker processes (tests/workers.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

WORKERS = Path(__file__).with_name("workers.py")


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start tests/workers.py with args as a separate OS process."""
    return subprocess.Popen(
        [sys.executable, str(WORKERS), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def start_together(procs: list[subprocess.Popen[str]], go: Path) -> None:
    """Wait until every worker printed 'ready', then release them all at once via go."""
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        assert line == "ready", (
            f"worker failed to start: {line!r} {p.stderr.read() if p.stderr else ''}"
        )
    go.touch()


def finish(procs: list[subprocess.Popen[str]], timeout: float = 240) -> list[str]:
    """Wait for workers; return each one's stdout; fail with its stderr if it failed."""
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, f"worker exited {p.returncode}: {err}"
        outs.append(out)
    return outs
