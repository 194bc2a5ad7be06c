"""Whole-file locks: the kernel's flock, released by the kernel when the holder dies.

mailslot runs on Linux and macOS, where flock is the lock every writer of a thread agrees on
(portalocker, which we used before, calls the same flock there; importing it cost every
`mailslot serve` start 5 ms, and 45 ms more where redis-py is installed, which it imports).
"""

from __future__ import annotations

import fcntl


def lock(fd: int) -> None:
    """Hold an exclusive lock on fd's file, waiting for it; raise OSError if it cannot be had."""
    fcntl.flock(fd, fcntl.LOCK_EX)


def try_lock(fd: int) -> bool:
    """Take an exclusive lock on fd's file if free; return False if another holds it.

    Raise OSError if the filesystem cannot lock at all.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def unlock(fd: int) -> None:
    """Let the lock on fd's file go."""
    fcntl.flock(fd, fcntl.LOCK_UN)
