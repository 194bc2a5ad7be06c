"""A REPL for tests/test_run.py: it prints a prompt, echoes each line, and answers a few.

`size` prints the terminal's size as the REPL sees it, `env NAME` a variable, `exit N` ends
with code N, Ctrl-C (SIGINT from the terminal) prints "interrupted" and the prompt again, end
of input exits 0.
"""

from __future__ import annotations

import os
import signal
import sys

PROMPT = "repl> "


def interrupted(_signum: int, _frame: object) -> None:
    print(f"\ninterrupted\n{PROMPT}", end="", flush=True)


def main() -> int:
    signal.signal(signal.SIGINT, interrupted)
    while True:
        print(PROMPT, end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            return 0
        line = line.rstrip("\n")
        if line == "size":
            size = os.get_terminal_size(sys.stdin.fileno())
            print(f"size {size.lines}x{size.columns}", flush=True)
        elif line.startswith("env "):
            print(f"env {os.environ.get(line.split()[1], '-')}", flush=True)
        elif line.startswith("exit "):
            return int(line.split()[1])
        else:
            print(f"echo: {line}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
