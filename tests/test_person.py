"""The person's side of the command (issue 27): it ends cleanly when its reader goes away,
`mailslot ui` stops on one Ctrl-C with a page open, and it takes what the tools take.

Everything runs the real command as a subprocess, most of it in a real shell pipe.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import inotify_watches, until, watching

from mailslot import Mailbox

MAILSLOT = f"{shlex.quote(sys.executable)} -m mailslot"
BIG = "a long line of hello world text " * 12  # ~400 bytes a message


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "box"
    box = Mailbox.init(root, fsync=False)
    box.create_thread("t", creator="alice")
    for i in range(400):  # 400 x ~500 bytes: well past a pipe's 64 KiB buffer
        box.post("t", f"{i} {BIG}", sender="alice" if i % 2 else "bob")
    return root


def shell(script: str, root: Path, **kw: object) -> subprocess.Popen[str]:
    env = {**os.environ, "MAILSLOT_ROOT": str(root), "MAILSLOT_AGENT": "alice", "NO_COLOR": "1"}
    env.pop("PYTHONUNBUFFERED", None)  # as a person's shell runs it: stdout into a pipe is buffered
    return subprocess.Popen(
        ["bash", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kw,
    )  # type: ignore[call-overload]


def statuses(script: str, root: Path) -> tuple[list[int], str]:
    """Run script (a pipeline) in bash; return its PIPESTATUS and its stderr."""
    p = shell(f'{script}; echo "status ${{PIPESTATUS[*]}}" >&2', root)
    _, err = p.communicate(timeout=120)
    last = [line for line in err.splitlines() if line.startswith("status ")][-1]
    return [int(n) for n in last.split()[1:]], err.replace(last + "\n", "")


# ---------------------------------------------------------------- item 9: the reader goes away

READERS_GONE = [
    "read t --limit 1000",
    "read t --json --limit 1000",
    "tail -n 400",
    "tail --json -n 400",
    "tail -f -n 400",
    "search hello --limit 100",
    "search hello --json --limit 100",
    "doctor",
    "doctor --json",
    "threads",
    "export t",
    "tasks",
]


@pytest.mark.parametrize("command", READERS_GONE)
def test_a_command_whose_reader_is_gone_ends_quietly(root: Path, tmp_path: Path, command: str):
    # The reader closes its end before the command starts (a fifo orders the two), so the
    # command's first write finds no reader, however little it prints and however fast.
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    script = (
        f"{{ read -r _ < {shlex.quote(str(gate))}; exec {MAILSLOT} {command}; }}"
        f" | {{ exec 0<&-; echo go > {shlex.quote(str(gate))}; }}"
    )
    codes, err = statuses(script, root)
    assert err == "", f"`mailslot {command}` into a closed pipe said:\n{err}"
    assert codes == [141, 0], "ends as `cat` does when its reader left: 128 + SIGPIPE"


@pytest.mark.parametrize("command", ["read t --limit 1000", "tail -n 400", "search hello"])
def test_piped_into_head(root: Path, command: str) -> None:
    codes, err = statuses(f"{MAILSLOT} {command} | head -1", root)
    assert err == "", f"`mailslot {command} | head -1` said:\n{err}"
    # read and tail print ~200 KiB, which head leaves unread: they meet the closed pipe
    assert codes[1] == 0 and codes[0] in (0, 141)
    if command != "search hello":
        assert codes[0] == 141


def test_tail_follow_ends_at_the_next_message_after_its_reader_left(root: Path) -> None:
    # `tail -f | head -1`: the first new message reaches head, which exits; the next one finds
    # no reader, and tail -f ends quietly instead of following forever.
    pid, gone = root.parent / "pid", root.parent / "head-gone"
    p = shell(
        f"{{ echo $BASHPID > {pid}; exec {MAILSLOT} tail -f -n 0; }}"
        f' | {{ head -1; touch {gone}; }}; echo "status ${{PIPESTATUS[*]}}" >&2',
        root,
    )
    try:
        until("tail -f started", lambda: pid.exists() and pid.read_text().strip() != "")
        watching(int(pid.read_text()), root / "threads")
        box = Mailbox(root)
        box.post("t", "first", sender="bob")
        until("head got its line and left", gone.exists)
        box.post("t", "second", sender="bob")
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert out.startswith("t #401 bob") and "#402" not in out
    assert err == "status 141 0\n"


# ---------------------------------------------------------------- item 8: Ctrl-C stops the console


@contextlib.contextmanager
def console(root: Path) -> Iterator[tuple[subprocess.Popen[str], http.client.HTTPResponse]]:
    """Start `mailslot ui` and open its event stream, as a browser tab on the page does."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailslot", "ui", "--root", str(root), "--as", "dave"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    found = re.search(r"http://127\.0\.0\.1:(\d+)/\?token=(\S+)", proc.stdout.readline())
    assert found, proc.communicate(timeout=60)
    port, token = int(found.group(1)), found.group(2)
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Host": f"127.0.0.1:{port}", "Cookie": f"mailslot_token_{port}={token}"}
    con.request("GET", "/api/events", headers=headers)
    try:
        stream = con.getresponse()
        assert stream.status == 200 and stream.readline().startswith(b":")  # the stream is open
        yield proc, stream
    finally:
        con.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_one_ctrl_c_stops_the_console_with_a_page_open(root: Path) -> None:
    with console(root) as (proc, stream):
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)  # before: still serving, waiting on the tab
        assert (proc.returncode, err) == (0, "")
        stream.read()  # what it had sent, up to the stream's end (not the socket's timeout)
        assert stream.isclosed()


def test_a_second_ctrl_c_stops_it_quietly(root: Path) -> None:
    with console(root) as (proc, stream):
        proc.send_signal(signal.SIGINT)
        stream.read()  # the first was seen: it is stopping
        with contextlib.suppress(ProcessLookupError):  # unless it has stopped already
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert err == ""  # before: some 60 lines of uvicorn's traceback
    # 0, or the status of a process that Ctrl-C ended, if the second one lands after the clean-up
    assert proc.returncode in (0, -signal.SIGINT)


# ---------------------------------------------------------------- item 13: as the tools take it


def run(root: Path, script: str) -> subprocess.CompletedProcess[str]:
    p = shell(script, root)
    out, err = p.communicate(timeout=120)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


@pytest.mark.parametrize(
    ("command", "key"),
    [("threads", "threads"), ("agents", "agents"), ("reservations", "reservations")],
)
def test_a_list_in_json_is_an_object_with_its_items_under_a_named_key(
    tmp_path: Path, command: str, key: str
) -> None:
    root = tmp_path / "box"
    box = Mailbox.init(root, fsync=False)
    box.create_thread("t", creator="alice")
    box.agents.register("bob")
    box.reservations.reserve(["docs/"], agent="bob")
    script = (f"{MAILSLOT} {command} --json | {shlex.quote(sys.executable)} -c "
              f"'import json, sys; print(sorted(json.load(sys.stdin)[\"{key}\"][0]))'")  # fmt: skip
    got = run(root, script)
    assert got.returncode == 0 and got.stderr == "", got.stderr
    assert got.stdout.startswith("[")  # the first item's keys


def test_every_thread_argument_takes_a_topic(tmp_path: Path) -> None:
    # `mailslot post "Add login page" ...` resolves the topic as the tools' thread arguments do
    root = tmp_path / "box"
    box = Mailbox.init(root, fsync=False)
    box.create_thread("Add login page", creator="alice")
    topic = shlex.quote("Add login page")
    posted = run(root, f"{MAILSLOT} post {topic} 'the form is done' --type task")
    assert (posted.returncode, posted.stdout, posted.stderr) == (0, "1\n", "")
    assert [m.content for m in box.messages("add-login-page")] == ["the form is done"]
    for command in [
        f"read {topic}",
        f"tail {topic}",
        f"wait {topic} --after 0 --timeout 5",
        f"export {topic}",
        f"search form --thread {topic}",
        f"tasks {topic}",
    ]:
        got = run(root, f"{MAILSLOT} {command}")
        assert got.returncode == 0 and got.stderr == "", (command, got.stderr)
        assert "the form is done" in got.stdout or "form" in got.stdout, (command, got.stdout)
    claimed = run(root, f"{MAILSLOT} claim {topic} 1 --json")
    assert claimed.returncode == 0 and '"claimed": true' in claimed.stdout, claimed.stderr
    moved = run(root, f"{MAILSLOT} state {topic} review")
    assert moved.returncode == 0, moved.stderr
    assert box.thread("add-login-page").state == "review"
    # a topic of no thread: what to do, not "invalid thread id"
    missing = run(root, f"{MAILSLOT} post 'Add logout page' hi")
    assert missing.returncode == 1
    assert "no thread has the id or topic 'Add logout page'" in missing.stderr
    assert "mailslot thread 'Add logout page'" in missing.stderr
    assert box.threads() and [t.id for t in box.threads()] == ["add-login-page"]  # none made


def test_tail_follow_takes_a_topic(tmp_path: Path) -> None:
    """`mailslot tail -f "Add login page"` follows that thread, as `tail` without -f reads it."""
    root = tmp_path / "box"
    box = Mailbox.init(root, fsync=False)
    box.create_thread("Add login page", creator="alice")
    box.create_thread("other", creator="alice")
    p = subprocess.Popen(
        [sys.executable, "-m", "mailslot", "tail", "-f", "-n", "0", "Add login page",
         "--root", str(root)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        folders = {(root / "threads" / t).stat().st_ino for t in ("", "add-login-page")}
        until("tail -f watching or gone",
              lambda: p.poll() is not None or bool(folders & inotify_watches(p.pid)))  # fmt: skip
        assert p.poll() is None, p.communicate(timeout=60)
        box.post("other", "elsewhere", sender="bob")
        box.post("add-login-page", "the form is done", sender="bob")
        assert p.stdout is not None
        heading, text = p.stdout.readline(), p.stdout.readline()
        assert heading.startswith("add-login-page #1 bob"), heading  # not other's
        assert text.strip() == "the form is done", text
    finally:
        p.kill()
        p.communicate()


def project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Return a git project with a mailbox, and an environment whose HOME is a scratch folder."""
    repo = tmp_path / "project"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    Mailbox.init(repo / ".mailslot", fsync=False)
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    env.pop("MAILSLOT_ROOT", None)
    return repo, env


def mailslot(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailslot", *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_init_says_what_to_do_next(tmp_path: Path) -> None:
    repo, env = project(tmp_path)
    got = mailslot(repo, env, "init", str(tmp_path / "other" / ".mailslot"))
    assert got.returncode == 0, got.stderr
    assert "next: connect an agent, e.g. `mailslot mcp-config claude-code --install`" in got.stdout


def test_hooks_without_agent_use_the_server_entrys_name(tmp_path: Path) -> None:
    repo, env = project(tmp_path)
    got = mailslot(repo, env, "mcp-config", "claude-code", "--hooks", "--json")
    assert got.returncode == 0, got.stderr  # before: "--hooks needs the agent's name"
    doc = json.loads(got.stdout)
    commands = [h["command"] for groups in doc["hooks"]["hooks"].values() for g in groups
                for h in g["hooks"]]  # fmt: skip
    assert doc["agent"] == "claude" and commands
    assert all(re.search(r"--as '?claude'?( |$)", c) for c in commands), commands


def test_an_install_that_changes_nothing_says_so(tmp_path: Path) -> None:
    repo, env = project(tmp_path)
    first = mailslot(repo, env, "mcp-config", "cursor", "--install")
    assert first.returncode == 0 and first.stdout.startswith("added mailslot"), first.stderr
    written = (repo / ".cursor" / "mcp.json").stat()
    again = mailslot(repo, env, "mcp-config", "cursor", "--install")
    assert again.returncode == 0, again.stderr
    assert "is already in" in again.stdout and "nothing changed" in again.stdout
    assert (repo / ".cursor" / "mcp.json").stat().st_mtime_ns == written.st_mtime_ns
    as_json = mailslot(repo, env, "mcp-config", "cursor", "--install", "--json")
    assert json.loads(as_json.stdout)["result"] == "unchanged"
