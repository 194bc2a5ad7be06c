"""`mailslot run`'s terminal: a client started in a pseudo-terminal that is relayed as it is.

The person's terminal goes into raw mode, so every key (Ctrl-C and Ctrl-Z too) reaches the
client as the byte it is; the client's output is written back byte for byte (colours, cursor
moves and the alternate screen untouched). The window size follows the real terminal's
(SIGWINCH), SIGTERM, SIGHUP and SIGINT sent to `run` are passed on to the client, and `run`
ends with the client's exit status (128 + N when a signal N ended it). What the relay may add
(a nudge typed into the client) is decided by a `Beside` (`clients/nudge.py`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import struct
import sys
import termios
import time
import tty
from collections.abc import Callable
from typing import Any, Protocol

TICK_S = 0.25  # how often the relay looks beside the bytes (nudges) when nothing is relayed
PASSED_ON = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class Beside(Protocol):
    """What runs beside the relay: it sees every byte each way and may type into the client."""

    def typed(self, data: bytes, now: float) -> bytes:
        """Return what of the person's keys goes on to the client (a chord may be kept)."""

    def output(self, data: bytes, now: float) -> None:
        """See what the client wrote to the terminal."""

    def resize(self, rows: int, cols: int) -> None:
        """See the window take a new size."""

    def tick(self, now: float, send: Callable[[bytes], None]) -> None:
        """Look, and type into the client with send if it is time to."""


def window_size(fd: int) -> tuple[int, int] | None:
    """Return the (rows, cols) of the terminal at fd, or None if it is not one."""
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return (rows, cols) if rows and cols else None


def exit_code(status: int) -> int:
    """Return the exit code a shell gives for a wait status: the code, or 128 + the signal."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            data = data[os.write(fd, data) :]
        except InterruptedError:
            continue
        except BlockingIOError:
            select.select([], [fd], [], 1.0)


def run(argv: list[str], env: dict[str, str], beside: Beside) -> int:
    """Run argv in a pseudo-terminal relayed to this one; return its exit code.

    Raise FileNotFoundError if argv[0] cannot be found (nothing was started then).
    """
    import ptyprocess  # only `mailslot run` loads it

    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    size = window_size(stdin) or window_size(stdout) or (24, 80)
    proc = ptyprocess.PtyProcess.spawn(argv, env=env, dimensions=size)
    beside.resize(*size)
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    pending: list[int] = []

    def caught(signum: int, _frame: object) -> None:
        pending.append(signum)

    old_wakeup = signal.set_wakeup_fd(wake_w)
    old = {s: signal.signal(s, caught) for s in (*PASSED_ON, signal.SIGWINCH)}
    saved = None
    if os.isatty(stdin):
        saved = termios.tcgetattr(stdin)
        tty.setraw(stdin)
    try:
        _relay(proc.fd, stdin, stdout, wake_r, pending, beside, proc)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSAFLUSH, saved)
        signal.set_wakeup_fd(old_wakeup)
        for s, handler in old.items():
            signal.signal(s, handler)
        os.close(wake_r)
        os.close(wake_w)
    _, status = os.waitpid(proc.pid, 0)
    with contextlib.suppress(OSError):
        os.close(proc.fd)
    return exit_code(status)


def _relay(
    child: int, stdin: int, stdout: int, wake: int, pending: list[int], beside: Beside, proc: Any
) -> None:
    """Relay bytes both ways until the client's side of the terminal closes."""
    reading_stdin = True

    def send(data: bytes) -> None:
        _write_all(child, data)

    while True:
        watch = [child, wake] + ([stdin] if reading_stdin else [])
        try:
            ready, _, _ = select.select(watch, [], [], TICK_S)
        except InterruptedError:
            ready = []
        now = time.monotonic()
        if wake in ready:
            with contextlib.suppress(OSError):
                os.read(wake, 512)
        while pending:
            signum = pending.pop(0)
            if signum == signal.SIGWINCH:
                size = window_size(stdin) or window_size(stdout)
                if size is not None:
                    proc.setwinsize(*size)
                    beside.resize(*size)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signum)
        if child in ready:
            try:
                data = os.read(child, 65536)
            except OSError:  # EIO: every holder of the client's side closed it
                data = b""
            if not data:
                return
            _write_all(stdout, data)
            beside.output(data, now)
        if stdin in ready:
            data = os.read(stdin, 65536)
            if not data:
                reading_stdin = False  # no more keys: the client goes on until it ends
            else:
                keys = beside.typed(data, now)
                if keys:
                    send(keys)
        beside.tick(now, send)
