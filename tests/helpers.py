"""Helpers for tests that run real worker processes (tests/workers.py)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
from mcp import StdioServerParameters, types
from mcp.client import Client

from mailslot import Mailbox

WORKERS = Path(__file__).with_name("workers.py")


def require(reason: str) -> NoReturn:
    """Skip the test for reason (what this machine lacks); under CI=true fail instead.

    CI must not go green without the tests that matter most (network folders, the independent
    MCP client, real git), so there a missing tool is an error that says what is missing.
    """
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true requires this test to run", pytrace=False)
    pytest.skip(reason)


def strace() -> str:
    """Return the path of a strace that can trace here; skip (fail under CI) where there is
    none or ptrace is refused."""
    found = shutil.which("strace")
    if found is None:
        require("needs strace (.ci/run installs it as root)")
    probe = subprocess.run([found, "-qq", "-e", "trace=none", "true"], capture_output=True)
    if probe.returncode != 0:
        require(f"strace cannot trace here (ptrace refused?): {probe.stderr.decode().strip()}")
    return found


def until(what: str, check: Callable[[], bool], within: float = 30) -> None:
    """Return once check() is true; fail saying what did not happen if it is not within time."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within} s")
        time.sleep(0.01)


async def until_async(what: str, check: Callable[[], Awaitable[bool]], within: float = 30) -> None:
    """Return once await check() is true; fail saying what did not happen if not within time."""
    import anyio

    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within} s")
        await anyio.sleep(0.02)


def inotify_watches(pid: int) -> set[int]:
    """Return the inodes process pid holds inotify watches on, from /proc/<pid>/fdinfo."""
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return inodes  # exited
    for fd in fds:
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text(errors="replace")
        except OSError:
            continue  # closed meanwhile
        for line in text.splitlines():
            if line.startswith("inotify wd:"):
                inodes.update(int(x[4:], 16) for x in line.split() if x.startswith("ino:"))
    return inodes


def watching(pid: int, folder: Path) -> None:
    """Return once process pid watches folder with inotify.

    A wait takes its "from now" snapshot before it starts watching, so a message posted after
    this returns is one the waiter must wake for.
    """
    inode = folder.stat().st_ino
    until(f"process {pid} watching {folder}", lambda: inode in inotify_watches(pid))


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
    """Wait for workers; return each one's stdout; fail with its stderr if it failed or did
    not finish within timeout seconds (each). Whatever happens, no worker outlives the call."""
    outs = []
    try:
        for p in procs:
            try:
                out, err = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
                pytest.fail(f"worker {p.args[2:4]} did not finish within {timeout} s: {err}")
            assert p.returncode == 0, f"worker exited {p.returncode}: {err}"
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return outs


def check_thread(
    root: Path, thread: str, writers: int, each: int, acked: dict[str, list[int]]
) -> None:
    """Assert the thread holds exactly writers*each intact messages, each once, in writer order."""
    box = Mailbox(root)
    tdir = root / "threads" / thread
    names = sorted(p.name for p in tdir.iterdir() if p.name != "thread.json")
    assert names == [f"{s:06d}.json" for s in range(1, writers * each + 1)], "gap or stray file"
    messages = list(box.messages(thread))
    assert [m.seq for m in messages] == list(range(1, writers * each + 1))
    by_writer: dict[str, list[tuple[int, int]]] = {}
    for m in messages:
        assert m.content == f"{m.meta['writer']} says {m.meta['i']}"
        assert m.sender == m.meta["writer"]
        by_writer.setdefault(m.sender, []).append((m.meta["i"], m.seq))
    assert sorted(by_writer) == sorted(acked)
    for writer, pairs in by_writer.items():
        assert [i for i, _ in pairs] == list(range(each)), f"{writer}: lost, doubled or reordered"
        assert [s for _, s in pairs] == acked[writer], f"{writer}: acked seqs differ from stored"


#: The handshake-era initialize request, as id 1.
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"},
    },
}


def raw_serve(root: Path, agent: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailslot", "serve", "--root", str(root), "--agent", agent],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,  # read_line() selects on the pipe: nothing may wait in a buffer of ours
    )
    assert proc.stdin is not None
    for line in (INITIALIZE, {"jsonrpc": "2.0", "method": "notifications/initialized"}):
        proc.stdin.write((json.dumps(line) + "\n").encode())
    proc.stdin.flush()
    return proc


def read_line(proc: subprocess.Popen[bytes], within: float = 30) -> bytes:
    """Return the next line proc writes to stdout; b"" if it closed it; fail if none comes in
    time. proc must be started with bufsize=0: a line already read into a buffer would be
    invisible to select()."""
    import select

    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], within)
    assert ready, f"no line from process {proc.pid} within {within} s"
    return proc.stdout.readline()


def answer(proc: subprocess.Popen[bytes], want_id: int, within: float = 30) -> dict[str, Any]:
    """Return the server's reply to request want_id; fail (not hang) if none comes in time."""
    deadline = time.monotonic() + within
    while True:
        left = max(0.0, deadline - time.monotonic())
        line = read_line(proc, left)
        assert line, "the server closed its output"
        doc = json.loads(line)
        if doc.get("id") == want_id:
            return dict(doc)


def run_git(env: dict[str, str], repo: Path, *args: str, ok: bool = True) -> str:
    """Run git in repo; return its stdout; fail with its output unless it succeeded (or not ok)."""
    done = subprocess.run(["git", "-C", str(repo), *args], env=env, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    if ok:
        assert done.returncode == 0, f"git {' '.join(args)}: {done.stdout}{done.stderr}"
    else:
        assert done.returncode != 0, f"git {' '.join(args)} should have failed: {done.stdout}"
    return done.stdout


def git_init(env: dict[str, str], repo: Path, who: str) -> None:
    """Make repo (an existing folder) a git repository on main that commits as who."""
    run_git(env, repo, "init", "-q", "-b", "main")
    run_git(env, repo, "config", "user.name", who)
    run_git(env, repo, "config", "user.email", f"{who}@example.org")


SERVE = [sys.executable, "-m", "mailslot", "serve"]


def params(root: Path, *args: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=SERVE[0],
        args=[*SERVE[1:], "--root", str(root), *args],
        # The SDK passes servers only a safe subset of the environment; PYTHONPATH goes along
        # so the suite can be pointed at another source tree (a mutation run, an old release),
        # and XDG_CONFIG_HOME so a served agent's key is the test session's (conftest.py).
        env=server_env(),
    )


def server_env() -> dict[str, str]:
    """Return what a served process is given of the environment (see params)."""
    passed = {k: os.environ[k] for k in ("PYTHONPATH", "XDG_CONFIG_HOME") if k in os.environ}
    return {"PYTHONDONTWRITEBYTECODE": "1"} | passed


@asynccontextmanager
async def agent(root: Path, name: str, mode: str = "auto") -> AsyncIterator[Client]:
    async with Client(params(root, "--agent", name), mode=mode, cache=None) as c:
        yield c


async def call(c: Client, tool: str, **args: Any) -> Any:
    result = await c.call_tool(tool, args)
    assert isinstance(result.content[0], types.TextContent)
    assert not result.is_error, result.content[0].text
    return json.loads(result.content[0].text)


def spawn_call(function: str, *args: str) -> subprocess.Popen[str]:
    """Start a separate OS process that runs workers.<function>(*args) (for entry points
    added after the role table of tests/workers.py's main block)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import workers; "
        f"workers.{function}(*sys.argv[2:])"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(WORKERS.parent), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def waiting(root: Path, name: str) -> bool:
    """Return True if agent name's serve says it is blocked in an inbox wait."""
    try:
        doc = json.loads((root / ".state" / "presence" / f"{name}.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(doc.get("status") == "waiting" and doc.get("waiting_on") == "inbox")


def no_loop_guard(root: Path) -> Path:
    """Turn the loop guard off in root's mailslot.json and return root: for a test whose burst
    of one agent's posts, far past what agents in a loop may post, is the point and not a loop
    (docs/coordination.md#loops). A Mailbox opened before keeps the settings it read."""
    config = Path(root) / "mailslot.json"
    doc = json.loads(config.read_text(encoding="utf-8"))
    config.write_text(json.dumps({**doc, "loop_guard": False}), encoding="utf-8")
    return Path(root)


def documentation() -> str:
    """Return the README and every docs/ page as one text, README first: all the docs promise."""
    repo = Path(__file__).resolve().parent.parent
    pages = [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]
    return "\n\n".join(page.read_text(encoding="utf-8") for page in pages)


SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, server: subprocess.Popen[bytes], name: str, log: Path | None = None
) -> None:
    """Return once server listens on port of 127.0.0.1; require() it if it never does, with
    what it said on its stderr (a pipe), or in log."""
    deadline = time.monotonic() + 15
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline or server.poll() is not None:
            if server.poll() is None:
                server.terminate()
            err = server.communicate(timeout=10)[1] if server.stderr else b""
            if log is not None and log.exists():
                err += log.read_bytes()
            require(f"{name} did not start: {err.decode(errors='replace').strip()}")
        time.sleep(0.05)


@dataclass(frozen=True, slots=True)
class Sshd:
    """A running loopback sshd: who logs in (this process's user), where, with which key."""

    port: int
    key: Path  # the client's private key
    user: str

    def ssh_command(self) -> str:
        """Return the ssh command for GIT_SSH_COMMAND: this key, no host key checks, no noise."""
        return (f"ssh -i {self.key} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                f"-o BatchMode=yes -o LogLevel=ERROR -p {self.port}")  # fmt: skip

    def url(self, path: Path) -> str:
        """Return the ssh:// URL of path on this machine, through this sshd."""
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"


@contextmanager
def loopback_sshd(base: Path) -> Iterator[Sshd]:
    """Run an sshd of the test's own on 127.0.0.1 (a free port, generated keys, files in base),
    which lets this process's user in with the key it yields; require() it where it cannot."""
    if not (Path(SSHD).exists() and shutil.which("ssh-keygen") and shutil.which("ssh")):
        require("needs Debian's openssh-server and openssh-client (.ci/run installs them)")
    key, hostkey = base / "key", base / "hostkey"
    for k in (key, hostkey):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k)], check=True)
    (base / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
    port = free_port()
    config = base / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {hostkey}\n"
        f"AuthorizedKeysFile {base / 'authorized_keys'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\n"
        f"UsePAM no\nPidFile {base / 'sshd.pid'}\nSubsystem sftp internal-sftp\n"
        # git over ssh opens a connection per fetch and push, many at once: let them all in,
        # and spare the CPU the post-quantum key exchange (twice the cost of a connection).
        "MaxStartups 200\nUseDNS no\nKexAlgorithms curve25519-sha256\n"
    )
    with suppress(OSError):
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory (root)
    log = base / "sshd.log"  # a file, not a pipe: a busy sshd would fill a pipe nobody reads
    with log.open("wb") as err:
        sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=err)
    try:
        wait_for_port(port, sshd, "sshd", log)
        yield Sshd(port, key, pwd.getpwuid(os.geteuid()).pw_name)
    finally:
        if sshd.poll() is None:
            sshd.terminate()
        sshd.communicate(timeout=10)


def env_for(root: Path) -> dict[str, str]:
    """Return this environment for `mailslot run` on root in a terminal: MAILSLOT_ROOT set,
    the rest of MAILSLOT_* left out, an xterm TERM (tests/test_run.py, test_run_audit.py)."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith("MAILSLOT_")}
    return keep | {"MAILSLOT_ROOT": str(root), "TERM": "xterm-256color"}
