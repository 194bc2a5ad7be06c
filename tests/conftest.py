"""Shared fixtures: real temp roots, and real worker processes started in lock step."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import require

from mailslot import Mailbox

# Keys and pins (store/keys.py) live in the user's configuration folder: nothing of the tests
# lands in a real home (each test also gets its own: see machine_config).
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="mailslot-test-config-")


@pytest.fixture(autouse=True)
def machine_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Give each test a configuration folder of its own (its machine's keys and pins), shared
    by every process it starts: a key an earlier test made does not sign this test's posts."""
    path = tmp_path_factory.mktemp("config")
    before = os.environ["XDG_CONFIG_HOME"]
    os.environ["XDG_CONFIG_HOME"] = str(path)
    yield path
    os.environ["XDG_CONFIG_HOME"] = before


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Return the path of a fresh, durable (fsync on) mailbox root."""
    Mailbox.init(tmp_path / "box")
    return tmp_path / "box"


@pytest.fixture
def run_root(tmp_path: Path) -> Path:
    """Return a mailbox root with a thread 'review' (by alice) and an agent bob: the mailbox
    `mailslot run` nudges bob of (tests/test_run.py, tests/test_run_audit.py)."""
    box = Mailbox.init(tmp_path / "box")
    box.create_thread("review", creator="alice")
    box.agents.register("bob")
    return box.root


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """Return a git repository with a mailbox at its top and a file src/a.py (the edit-time
    guard's tests)."""
    top = tmp_path / "repo"
    (top / "src").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(top)], check=True, timeout=120)
    (top / "src" / "a.py").write_text("def a():\n    return 1\n")
    Mailbox.init(top / ".mailslot")
    return top


@pytest.fixture
def holder() -> Iterator[subprocess.Popen[bytes]]:
    """Return a live process for alice's reservations to be held by."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def box(root: Path) -> Iterator[Mailbox]:
    """Return an open mailbox on a fresh root, with a thread 't' and agents alice and bob."""
    with Mailbox(root) as b:
        b.agents.register("alice")
        b.agents.register("bob")
        b.create_thread("t", creator="alice")
        yield b


@pytest.fixture(autouse=True)
def no_thread_leak() -> Iterator[None]:
    """Fail a test that leaves Python threads running (observers, workers)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2.0
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not extra, f"threads leaked: {extra}"


@pytest.fixture
def git(tmp_path: Path) -> dict[str, str]:
    """Return an environment for running git, isolated from the user's configuration."""
    if shutil.which("git") is None:
        require("needs the git command")
    home = tmp_path / "home"
    home.mkdir()
    return {**os.environ, "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0",
            "LC_ALL": "C"}  # fmt: skip


def mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        require(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """Return a 2 MB tmpfs of the test's own (to fill up, or remount read-only)."""
    mnt = tmp_path / "mnt"
    mount_tmpfs(mnt, "2m")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)
