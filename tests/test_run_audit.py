"""An audit of `mailslot run` and the edit-time guard (issue 32): the promises tests/test_run.py
and tests/test_edit_guard.py left unheld.

`run` over ssh (README: "in tmux, over ssh or in a plain terminal"): a real sshd on loopback,
`ssh -tt` in a pexpect pseudo-terminal, the remote pty ssh allocates relayed by `run`. The rest
holds what a mutation audit of run, relay, nudge, edit_guard and shell_writes found no test for.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from helpers import Sshd, env_for, loopback_sshd, until

from mailslot import Mailbox
from mailslot.agent.notices import Notices

REPO = Path(__file__).resolve().parent.parent
REPL = str(Path(__file__).with_name("run_inputs") / "scripted_repl.py")
NUDGE = r"echo: (mailslot: [^\r\n]*)\r\n"


def post(root: Path, text: str, *, to: str = "bob") -> None:
    """Post as alice from another process, as a person would."""
    done = subprocess.run(
        [sys.executable, "-m", "mailslot", "post", "--root", str(root), "--as", "alice",
         "--to", to, "review", text], capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------- over ssh


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    base = tmp_path / "sshd"
    base.mkdir()
    with loopback_sshd(base) as server:
        yield server


def test_a_nudge_over_ssh_and_the_exit_status_comes_back(run_root: Path, sshd: Sshd) -> None:
    """ssh -tt gives the remote side a pty of its own; run relays it, the nudge crosses the
    connection, a resize of this terminal reaches the REPL through ssh and run, and the REPL's
    exit code is ssh's exit status."""
    # sshd starts the session with an environment of its own: name python, its path and the
    # mailbox on the command line, as a person would in a remote shell.
    remote = shlex.join(
        ["env", f"PYTHONPATH={REPO / 'src'}", f"MAILSLOT_ROOT={run_root}", "TERM=xterm-256color",
         sys.executable, "-m", "mailslot", "run", "--agent", "bob", "--", sys.executable, REPL]
    )  # fmt: skip
    child = pexpect.spawn(
        "ssh", ssh_args(sshd, remote), env=env_for(run_root), dimensions=(24, 80), timeout=60
    )
    try:
        child.expect("repl> ")
        child.sendline("env MAILSLOT_AGENT")
        child.expect("env bob")
        child.sendline("size")  # ssh sent this terminal's size to the remote pty, run passed it
        child.expect(r"size 24x80")
        child.setwinsize(31, 97)  # ssh's window-change -> the remote pty's SIGWINCH -> run
        child.sendline("size")
        child.expect(r"size 31x97")
        post(run_root, "please review #12")
        child.expect(NUDGE, timeout=60)
        assert child.match.group(1).decode() == (
            "mailslot: 1 new for you (from alice in review) - call msg_wait() to read them"
        )
        child.sendline("exit 3")
        child.expect(pexpect.EOF, timeout=60)
        child.close()
        assert child.exitstatus == 3, (child.exitstatus, child.signalstatus)
    finally:
        child.close(force=True)


def test_a_dropped_ssh_connection_ends_run_and_its_client(run_root: Path, sshd: Sshd) -> None:
    """The connection goes (the ssh client killed): the remote pty hangs up, and neither run
    nor the client is left behind."""
    marker = f"audit-{os.getpid()}-{id(run_root)}"  # the REPL ignores its arguments: a name to find
    remote = shlex.join(
        ["env", f"PYTHONPATH={REPO / 'src'}", f"MAILSLOT_ROOT={run_root}", sys.executable, "-m",
         "mailslot", "run", "--agent", "bob", "--", sys.executable, REPL, marker]
    )  # fmt: skip
    child = pexpect.spawn("ssh", ssh_args(sshd, remote), env=env_for(run_root), timeout=60)
    try:
        child.expect("repl> ")
        assert len(with_marker(marker)) >= 2  # run and the REPL, both with the marker in argv
        os.kill(child.pid, signal.SIGKILL)
        until("run and the REPL gone with the connection", lambda: with_marker(marker) == [], 60)
    finally:
        child.close(force=True)


def ssh_args(sshd: Sshd, remote: str) -> list[str]:
    quiet = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]  # fmt: skip
    where = ["-i", str(sshd.key), "-p", str(sshd.port), f"{sshd.user}@127.0.0.1"]
    return ["-tt", "-F", "/dev/null", *quiet, *where, remote]


def with_marker(marker: str) -> list[int]:
    """Return the pids of the processes (not the ssh client) whose argv holds marker."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in argv and Path(argv[0].decode(errors="replace")).name != "ssh":
            found.append(int(proc.name))
    return found


# ---------------------------------------------------------------------------- the relay


def start(
    root: Path, *options: str, program: list[str] | None = None, env: dict[str, str] | None = None
) -> pexpect.spawn:
    argv = ["-m", "mailslot", "run", *options, "--", *(program or [sys.executable, REPL])]
    child = pexpect.spawn(
        sys.executable, argv, env=env or env_for(root), dimensions=(24, 80), timeout=60
    )
    child.expect("repl> ")
    return child


def test_sighup_is_passed_on_and_run_ends_with_128_plus_1(run_root: Path) -> None:
    child = start(run_root, "--agent", "bob")
    try:
        os.kill(child.pid, signal.SIGHUP)  # the REPL does not catch it: it ends by it
        child.expect(pexpect.EOF)
        child.close()
        assert (child.exitstatus, child.signalstatus) == (128 + signal.SIGHUP, None)
    finally:
        child.close(force=True)


def test_the_terminal_leaves_raw_mode_when_run_ends(run_root: Path) -> None:
    """run puts the person's terminal in raw mode; once the client ends it is as it was."""
    run = shlex.join([sys.executable, "-m", "mailslot", "run", "--", sys.executable, REPL])
    child = pexpect.spawn("sh", ["-c", f"{run}; stty -a; echo stty-done"], env=env_for(run_root),
                          dimensions=(24, 80), timeout=60)  # fmt: skip
    try:
        child.expect("repl> ")
        child.sendline("exit 0")
        child.expect("stty-done")
        modes = child.before.decode(errors="replace").split()
        for mode in ("icanon", "echo", "isig", "icrnl", "opost"):
            assert mode in modes and f"-{mode}" not in modes, (mode, modes)
    finally:
        child.close(force=True)


def test_the_agent_is_the_option_then_the_environment_then_the_clients_name(
    run_root: Path, tmp_path: Path
) -> None:
    def agent(*options: str, env: dict[str, str] | None = None, program: str = "") -> str:
        prog = [program or sys.executable, REPL]
        child = start(run_root, *options, program=prog, env=env)
        try:
            child.sendline("env MAILSLOT_AGENT")
            child.expect(r"env ([a-z0-9_-]+)\r\n")
            return str(child.match.group(1).decode())
        finally:
            child.close(force=True)

    named = env_for(run_root) | {"MAILSLOT_AGENT": "carol"}
    assert agent("--agent", "bob", env=named) == "bob"
    assert agent(env=named) == "carol"
    codex = tmp_path / "bin" / "codex"  # a program called codex: mcp-config's agent `codex`
    codex.parent.mkdir()
    codex.symlink_to(sys.executable)
    assert agent(program=str(codex)) == "codex"


# ---------------------------------------------------------------------------- when to type


def mailslot_typed(child: pexpect.spawn, within: float) -> bool:
    """Return True if a nudge is typed (echoed by the terminal) within seconds."""
    return child.expect([r"mailslot: ", pexpect.TIMEOUT], timeout=within) == 0


def test_a_busy_client_that_redraws_every_second_is_not_nudged(run_root: Path) -> None:
    """Quiet output for 2 s (--quiet) is what says a turn is over: a client that writes a
    spinner every 0.7 s for 12 s gets nothing typed until it stops."""
    spin = (
        "import sys, time\nprint('repl> ', flush=True)\nend = time.monotonic() + 12\n"
        "while time.monotonic() < end:\n    sys.stdout.write('|/-\\\\'[int(end * 4) % 4] + '\\b')\n"
        "    sys.stdout.flush()\n    time.sleep(0.7)\nprint('spin-done', flush=True)\n"
        "time.sleep(120)\n"
    )
    child = start(run_root, "--agent", "bob", program=[sys.executable, "-c", spin])
    try:
        post(run_root, "please review #12")
        got = child.expect([r"mailslot: ", "spin-done"], timeout=90)
        assert got == 1, f"a nudge was typed while the client wrote: {child.before!r}"
        assert mailslot_typed(child, 60), "no nudge once the client went quiet"
    finally:
        child.close(force=True)


def test_keys_hold_the_nudge_even_when_no_line_is_half_typed(run_root: Path) -> None:
    """'you pressed no key for 3 s': Ctrl-U (an empty line, nothing echoed) every half second
    keeps the nudge back; it comes once the keys stop."""
    child = start(run_root, "--agent", "bob")
    try:
        post(run_root, "please review #12")
        end = time.monotonic() + 8
        while time.monotonic() < end:
            child.sendcontrol("u")
            assert not mailslot_typed(child, 0.5), f"typed while keys came: {child.before!r}"
        assert mailslot_typed(child, 60)
    finally:
        child.close(force=True)


def test_ctrl_c_ends_a_half_typed_line(run_root: Path) -> None:
    child = start(run_root, "--agent", "bob")
    try:
        child.send("abc")
        child.sendcontrol("c")  # the REPL's terminal drops "abc": no line is half typed now
        child.expect("interrupted")
        post(run_root, "please review #12")
        child.expect(NUDGE, timeout=60)
    finally:
        child.close(force=True)


def test_a_line_begun_after_an_enter_in_one_read_is_half_typed(run_root: Path) -> None:
    """Keys that come in one read (fast typing, a paste): a line, Enter, and the start of the
    next; that start is half typed, and no nudge goes over it."""
    child = start(run_root, "--agent", "bob")
    try:
        child.send("xyz\rab")
        child.expect("echo: xyz\r\n")
        post(run_root, "please review #12")
        assert not mailslot_typed(child, 8), f"typed over a half typed line: {child.before!r}"
        child.send("\r")
        child.expect("echo: ab\r\n")
        child.expect(NUDGE, timeout=60)
    finally:
        child.close(force=True)


def test_a_trickle_of_news_is_nudged_while_it_goes_on(run_root: Path) -> None:
    """A burst is gathered for at most 3 s: news every quarter second for up to 40 s does not
    hold the nudge back until it stops."""
    child = start(run_root, "--agent", "bob")
    box = Mailbox(run_root)
    try:
        time.sleep(3)  # idle before the news begins
        posted = 0
        while posted < 160:
            box.post("review", f"part {posted}", sender="alice", to=["bob"])
            posted += 1
            if child.expect([NUDGE, pexpect.TIMEOUT], timeout=0.25) == 0:
                break
        else:
            pytest.fail("no nudge while news kept coming")
        assert " new for you (from alice in review)" in child.match.group(1).decode()
    finally:
        child.close(force=True)


def test_news_in_two_threads_of_one_burst_is_all_told(run_root: Path) -> None:
    """After a first nudge, news that comes in one thread and then another within a burst is
    all named (none is left news that no nudge ever tells)."""
    box = Mailbox(run_root)
    box.create_thread("other", creator="alice")
    child = start(run_root, "--agent", "bob", "--gap", "1")
    try:
        post(run_root, "first")
        child.expect(NUDGE, timeout=60)
        time.sleep(3)  # past the gap and --quiet again
        for thread in ("review", "other", "other", "other"):
            box.post(thread, "more", sender="alice", to=["bob"])
            time.sleep(0.3)  # news seen over several of run's looks, within one burst
        until("every piece of news told", lambda: Notices(box, "bob").new() == [], 60)
    finally:
        child.close(force=True)


CLAUDE_LIKE = """\
import sys, time
def show(busy):
    sys.stdout.write("\\x1b[2J\\x1b[H> repl> \\x1b[20;1H" + ("esc to interrupt" if busy else "")
                     + "\\x1b[24;1H? for shortcuts\\x1b[1;9H")
    sys.stdout.write("\\x1b]2;%s\\x07" % ("busy" if busy else "prompt"))
    sys.stdout.flush()
show(True)
time.sleep(10)
show(False)
time.sleep(120)
"""


def test_a_known_client_showing_esc_to_interrupt_is_not_nudged(
    run_root: Path, tmp_path: Path
) -> None:
    """For claude, codex and gemini the screen decides: their prompt's hint at the bottom and
    no "esc to interrupt" (a turn that shows it may be quiet). A program called claude that
    draws both, quiet, gets nothing typed until the busy line goes."""
    claude = tmp_path / "bin" / "claude"
    claude.parent.mkdir()
    claude.write_text(f"#!{sys.executable}\n{CLAUDE_LIKE}")
    claude.chmod(0o755)
    box = Mailbox(run_root)
    box.agents.register("claude")
    child = start(run_root, program=[str(claude)])
    try:
        box.post("review", "please review #12", sender="alice", to=["claude"])
        got = child.expect([r"mailslot: ", "\x1b]2;prompt\x07"], timeout=90)
        assert got == 1, f"a nudge was typed over a running turn: {child.before!r}"
        assert mailslot_typed(child, 60), "no nudge once the prompt was idle"
    finally:
        child.close(force=True)


# ---------------------------------------------------------------------------- at edit time


def reserve(repo: Path, pattern: str, pid: int) -> None:
    with Mailbox(repo / ".mailslot") as box:
        assert box.reservations.reserve([pattern], agent="alice", pid=pid, reason="audit").granted


def pre_tool(doc: dict[str, object], cwd: Path, home: Path | None = None) -> str:
    """Run `mailslot hook pre-tool` as Claude Code does (from cwd); return its stdout."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith("MAILSLOT_")}
    done = subprocess.run(
        [sys.executable, "-m", "mailslot", "hook", "pre-tool", "--client", "claude-code",
         "--as", "bob"], input=json.dumps(doc), capture_output=True, text=True, timeout=120,
        cwd=cwd, env=keep | ({"HOME": str(home)} if home else {}),
    )  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


def shell(command: str, cwd: Path) -> dict[str, object]:
    return {"hook_event_name": "PreToolUse", "cwd": str(cwd), "tool_name": "Bash",
            "tool_input": {"command": command}}  # fmt: skip


def refused(out: str) -> bool:
    if not out:
        return False
    said = json.loads(out)["hookSpecificOutput"]
    return bool(said["permissionDecision"] == "deny" and "reserved by alice" in out)


def test_paths_are_taken_from_the_hook_inputs_cwd(
    repo: Path, holder: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    """The client says where the call runs (cwd); the hook process may be started elsewhere."""
    reserve(repo, "src/a.py", holder.pid)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert refused(pre_tool(shell("rm a.py", repo / "src"), elsewhere))
    assert refused(pre_tool(shell("rm src/a.py", repo), elsewhere))
    assert not refused(pre_tool(shell("rm a.py", repo), elsewhere))


@pytest.mark.parametrize(
    "command",
    ["sed -i -e s/a/b/ src/a.py", "sed -Ei s/a/b/ src/a.py", "sed --in-place=.bak s/a/b/ src/a.py",
     "rm -f -- src/a.py", "timeout 5 rm src/a.py", "cd src && sed -i s/a/b/ a.py"],
)  # fmt: skip
def test_more_shell_forms_of_the_writes_the_docs_name(
    command: str, repo: Path, holder: subprocess.Popen[bytes]
) -> None:
    reserve(repo, "src/a.py", holder.pid)
    assert refused(pre_tool(shell(command, repo), repo)), command


def test_a_path_from_the_home_folder_is_read_as_the_shell_reads_it(
    repo: Path, holder: subprocess.Popen[bytes]
) -> None:
    reserve(repo, "src/a.py", holder.pid)
    home = repo.parent  # ~/repo/src/a.py is the reserved file
    assert refused(pre_tool(shell("rm ~/repo/src/a.py", repo), repo, home=home))
