"""`mailslot run`: a client in a relayed pseudo-terminal, nudged when news comes while it idles.

Everything runs for real: `python -m mailslot run` in a pexpect pseudo-terminal around a
scripted REPL (tests/run_inputs/scripted_repl.py, which echoes each line it reads: a nudge
typed into it comes back as "echo: mailslot: ..."), posts from other processes, tmux, and the
real Claude Code, Codex and Gemini CLI from npm.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pyte
import pytest
from helpers import env_for, require, until

from mailslot import Mailbox
from mailslot.agent.notices import Notices

REPO = Path(__file__).resolve().parent.parent
REPL = str(Path(__file__).with_name("run_inputs") / "scripted_repl.py")
BIN = REPO / ".ci" / "node" / "node_modules" / ".bin"
NUDGE = r"echo: (mailslot: [^\r\n]*)\r\n"
QUIET_WINDOW = 6  # seconds a test watches for a nudge that must not come (settle+quiet+typing)


@pytest.fixture
def repl(run_root: Path) -> Iterator[pexpect.spawn]:
    child = start(run_root, "--agent", "bob")
    yield child
    child.close(force=True)


def start(root: Path, *options: str, program: list[str] | None = None) -> pexpect.spawn:
    argv = ["-m", "mailslot", "run", *options, "--", *(program or [sys.executable, REPL])]
    child = pexpect.spawn(sys.executable, argv, env=env_for(root), dimensions=(24, 80), timeout=30)
    child.expect("repl> ")
    return child


def post(root: Path, text: str, *, to: str = "bob") -> None:
    """Post as alice from another process, as a person would."""
    done = subprocess.run(
        [sys.executable, "-m", "mailslot", "post", "--root", str(root), "--as", "alice",
         "--to", to, "review", text], capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def no_nudge(child: pexpect.spawn) -> None:
    """Hold that no nudge is typed while the test watches (long past settle, quiet, typing)."""
    got = child.expect([r"mailslot: ", pexpect.TIMEOUT], timeout=QUIET_WINDOW)
    assert got == 1, f"a nudge was typed: {child.before!r}{child.after!r}"


def test_a_nudge_comes_when_news_arrives_and_the_agent_idles(
    run_root: Path, repl: pexpect.spawn
) -> None:
    post(run_root, "please review #12")
    repl.expect(NUDGE, timeout=15)
    line = repl.match.group(1).decode()
    assert line == "mailslot: 1 new for you (from alice in review) - call msg_wait() to read them"
    # Marked reported: hooks and pushes do not tell it again, and nor does run.
    assert Notices(Mailbox(run_root), "bob").new() == []
    no_nudge(repl)


def test_never_while_a_line_is_half_typed(run_root: Path, repl: pexpect.spawn) -> None:
    repl.send("abc")
    post(run_root, "please review #12")
    no_nudge(repl)
    repl.send("\r")
    repl.expect("echo: abc\r\n")  # the person's line, whole, and the nudge after it
    repl.expect(NUDGE, timeout=15)


def test_what_the_terminal_reports_of_itself_is_no_typing(
    run_root: Path, repl: pexpect.spawn
) -> None:
    repl.send("\x1b[I\x1b[<35;10;5M\x1b[O")  # focus in, a mouse move, focus out
    post(run_root, "please review #12")
    repl.expect(r"echo: [^\r\n]*mailslot: 1 new for you", timeout=15)  # after the reports


def test_a_burst_is_one_nudge_and_the_gap_holds_the_next(
    run_root: Path, repl: pexpect.spawn
) -> None:
    box = Mailbox(run_root)
    time.sleep(3)  # the REPL idle (past --quiet) before the burst begins, so it could be split
    for i in range(5):  # a burst spread over a second: several of run's looks see part of it
        box.post("review", f"part {i}", sender="alice", to=["bob"])
        time.sleep(0.25)
    repl.expect(NUDGE, timeout=15)
    assert repl.match.group(1).decode().startswith("mailslot: 5 new for you (from alice in review)")
    post(run_root, "one more")  # within the gap (30 s by default): no second nudge yet
    no_nudge(repl)


def test_no_nudge_under_do_not_disturb_then_once_it_is_lifted(
    run_root: Path, repl: pexpect.spawn
) -> None:
    def dnd(*flags: str) -> None:
        subprocess.run([sys.executable, "-m", "mailslot", "dnd", "--root", str(run_root), "bob",
                        *flags], check=True, capture_output=True)  # fmt: skip

    dnd()
    post(run_root, "please review #12")
    no_nudge(repl)
    dnd("--off")
    repl.expect(NUDGE, timeout=15)
    assert "1 new for you" in repl.match.group(1).decode()


def test_the_pause_chord_holds_nudges_until_pressed_again(
    run_root: Path, repl: pexpect.spawn
) -> None:
    repl.send("\x1dp")  # Ctrl-] p: pause
    repl.expect("\x1b]2;mailslot: nudges paused\x07")
    post(run_root, "please review #12")
    no_nudge(repl)
    repl.send("\x1dp")
    repl.expect("\x1b]2;mailslot: nudges on\x07")
    repl.expect(NUDGE, timeout=15)
    repl.send("\x1d\x1d")  # Ctrl-] twice types one
    repl.sendline("")
    repl.expect("echo: \x1d\r\n")


def test_the_terminal_is_relayed_size_keys_signals_and_exit_status(
    run_root: Path, repl: pexpect.spawn
) -> None:
    repl.send("xyz\r")  # raw mode: only the client's terminal echoes, once
    repl.expect("echo: xyz\r\n")
    assert repl.before.count(b"xyz") == 1, repl.before
    repl.sendline("size")
    repl.expect(r"size 24x80")
    repl.setwinsize(33, 101)
    repl.sendline("size")
    repl.expect(r"size 33x101")
    repl.sendcontrol("c")  # a byte in raw mode: the REPL's terminal makes it its SIGINT
    repl.expect("interrupted")
    repl.sendline("env MAILSLOT_AGENT")  # the client's own `mailslot serve` is the same agent
    repl.expect("env bob")
    repl.sendline("exit 3")
    repl.expect(pexpect.EOF)
    repl.close()
    assert repl.exitstatus == 3

    other = start(run_root)  # SIGTERM to run reaches the client; its end is run's: 128 + 15
    other.sendline("env MAILSLOT_AGENT")  # no --agent: the program's name
    other.expect("env python")
    os.kill(other.pid, signal.SIGINT)  # passed on, as SIGTERM is
    other.expect("interrupted")
    os.kill(other.pid, signal.SIGTERM)
    other.expect(pexpect.EOF)
    other.close()
    assert other.exitstatus == 128 + signal.SIGTERM

    gone = subprocess.run(
        [sys.executable, "-m", "mailslot", "run", "--", str(run_root / "none")],
        env=env_for(run_root), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert gone.returncode == 127 and "cannot run" in gone.stderr, gone.stderr


def test_a_nudge_in_tmux(run_root: Path, tmp_path: Path) -> None:
    if shutil.which("tmux") is None:
        require("needs tmux (.ci/run installs it)")
    sock = str(tmp_path / "tmux.sock")
    run = [sys.executable, "-m", "mailslot", "run", "--agent", "bob", "--", sys.executable, REPL]
    tmux = ["tmux", "-S", sock]
    subprocess.run([*tmux, "-f", "/dev/null", "new-session", "-d", "-x", "100", "-y", "30",
                    "-e", f"MAILSLOT_ROOT={run_root}", *run], check=True)  # fmt: skip
    try:

        def pane() -> str:
            shown = subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True)
            return shown.stdout

        until("the REPL's prompt in the tmux pane", lambda: "repl>" in pane())
        post(run_root, "please review #12")
        until("the nudge in the tmux pane", lambda: "echo: mailslot: 1 new for you" in pane())
    finally:
        subprocess.run([*tmux, "kill-server"], check=False, capture_output=True)


def test_mcp_config_prints_the_run_line(run_root: Path) -> None:
    for client, agent, program in (("claude-code", "claude", "claude"), ("codex", "codex",
                                   "codex"), ("gemini", "ann", "gemini")):  # fmt: skip
        extra = ["--agent", agent] if agent == "ann" else []
        done = subprocess.run(
            [sys.executable, "-m", "mailslot", "mcp-config", client, "--root", str(run_root),
             *extra], capture_output=True, text=True, check=True,
        )  # fmt: skip
        want = f"to wake {agent} when idle: mailslot run --agent {agent} -- {program}"
        assert want in done.stderr, done.stderr
        doc = subprocess.run(
            [sys.executable, "-m", "mailslot", "mcp-config", client, "--root", str(run_root),
             "--json", *extra], capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert json.loads(doc.stdout)["run"] == want.removeprefix(f"to wake {agent} when idle: ")


# ---------------------------------------------------------------------- the real clients


class Screen(pyte.Screen):
    def select_graphic_rendition(self, *attrs: int, **kwargs: object) -> None:
        if not kwargs.get("private"):
            super().select_graphic_rendition(*attrs)


def first_screen(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Return the screen a program shows in a 30x100 terminal once it shows something and
    wrote nothing for 8 s (answering the terminal queries a real terminal answers, as pyte
    does)."""
    child = pexpect.spawn(argv[0], argv[1:], cwd=str(cwd), env=env, dimensions=(30, 100))
    screen = Screen(100, 30)
    screen.write_process_input = lambda data: child.send(data)
    stream = pyte.ByteStream(screen)
    last = time.monotonic()
    deadline = last + 90

    def settled() -> bool:  # something on screen, and nothing written for 8 s
        shown = any(line.strip() for line in screen.display)
        return (shown and time.monotonic() - last >= 8) or time.monotonic() > deadline

    try:
        while not settled():
            try:
                stream.feed(child.read_nonblocking(65536, timeout=0.2))
                last = time.monotonic()
            except pexpect.TIMEOUT:
                pass
            except pexpect.EOF:
                break
    finally:
        child.close(force=True)
    return "\n".join(line.rstrip() for line in screen.display).strip()


#: What tells a program it runs in CI (the clients read them through is-in-ci and ci-info).
CI_VARIABLES = {"CI", "CONTINUOUS_INTEGRATION", "BUILD_NUMBER", "RUN_ID", "GITHUB_ACTIONS",
                "GITLAB_CI", "BUILDKITE", "CIRCLECI", "TRAVIS", "JENKINS_URL"}  # fmt: skip


@pytest.mark.parametrize("name", ["claude", "codex", "gemini"])
def test_a_real_client_shows_the_same_first_screen_under_run(name: str, tmp_path: Path) -> None:
    path = BIN / name
    if not (path.exists() and shutil.which("node")):
        require(f"needs node and the real `{name}` (.ci/run installs it into .ci/node/)")
    box = Mailbox.init(tmp_path / "project" / ".mailslot")
    box.create_thread("review", creator="alice")
    box.agents.register(name)
    box.post("review", "news for the agent: a nudge typed into this screen would change it",
             sender="alice", to=[name])  # fmt: skip
    # A client's own screen can differ from one start to the next (a line drawn as it exits):
    # the pair is taken again, up to three times; a difference run makes is there every time.
    for attempt in range(3):
        screens = []
        for wrapped in (False, True):
            # A fresh home each time, its two names as long as each other (the same wraps).
            home = tmp_path / str(attempt) / f"home-{'b' if wrapped else 'a'}"
            (home / ".codex").mkdir(parents=True)
            # A person's terminal: no CI variables (CI=true makes the clients skip their screens).
            keep = {k: v for k, v in os.environ.items()
                    if not k.startswith("MAILSLOT_") and k not in CI_VARIABLES}  # fmt: skip
            env = keep | {
                "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                "CODEX_HOME": str(home / ".codex"), "TERM": "xterm-256color",
                "DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                "MAILSLOT_ROOT": str(box.root),
            }  # fmt: skip
            run = [sys.executable, "-m", "mailslot", "run", "--quiet", "0.5", "--"]
            argv = [*run, str(path)] if wrapped else [str(path)]
            screens.append(first_screen(argv, tmp_path / "project", env))
        bare, under_run = screens
        assert bare, f"{name} showed nothing ({under_run!r} under run)"
        if screens[1] == screens[0].replace("home-a", "home-b"):
            break
    assert under_run == bare.replace("home-a", "home-b")
    assert Notices(box, name).new(), "nothing was typed, so the news is still news"
