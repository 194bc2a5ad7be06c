"""Reservations at edit time: `mailslot hook pre-tool` run as a real process with the inputs
Claude Code, Codex and Gemini CLI send before an edit, a write and a shell command
(tests/hook_inputs/), on a real repository and mailbox, with holders that are real processes;
and `mailslot mcp-config --hooks` installing it for the edit and shell tools alone."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import until

from mailslot import Mailbox
from mailslot.clients.edit_guard import TOOLS
from mailslot.clients.hook_configs import PRE_TOOL_MATCHERS
from mailslot.clients.launch import CLIENT_EVENTS
from mailslot.coordination.reservations import THREAD

INPUTS = Path(__file__).parent / "hook_inputs"
CLIENTS = ("claude-code", "codex", "gemini")
KINDS = ("edit", "write", "shell")
#: The cwd each recorded input was made in; its paths are moved into the test's repository.
RECORDED_CWD = {"claude-code": "/home/user/my-project", "codex": "/Users/example/project",
                "gemini": "/repo"}  # fmt: skip
CODEX = (Path(__file__).parent.parent / ".ci/node/node_modules/@openai/codex-linux-x64"
         / "vendor/x86_64-unknown-linux-musl/bin/codex")  # fmt: skip
REASON = "splitting the parser"


def input_file(client: str, kind: str) -> Path:
    return INPUTS / (
        f"{client}.pre-tool.json" if kind == "edit" else f"{client}.pre-tool.{kind}.json"
    )


def recorded(client: str, kind: str, repo: Path, command: str = "echo x > src/a.py") -> str:
    """Return client's recorded pre-tool input of kind, made in repo; a shell one runs command."""
    doc = json.loads(input_file(client, kind).read_text(encoding="utf-8"))
    doc = json.loads(json.dumps(doc).replace(RECORDED_CWD[client], str(repo)))
    if kind == "shell":
        doc["tool_input"]["command"] = command
    return json.dumps(doc)


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MAILSLOT_")}


def hook(client: str, agent: str, stdin: str, cwd: Path) -> str:
    """Run `python -m mailslot hook pre-tool` as the client does; return its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "mailslot", "hook", "pre-tool", "--client", client, "--as", agent],
        input=stdin, capture_output=True, text=True, timeout=60, env=env(), cwd=cwd,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    return done.stdout


def denial(out: str, client: str) -> str:
    """Return the reason of a refusal, checking it is exactly the client's deny shape."""
    doc = json.loads(out)
    if client == "gemini":
        assert set(doc) == {"decision", "reason"} and doc["decision"] == "deny"
        reason = doc["reason"]
    else:
        assert list(doc) == ["hookSpecificOutput"]
        said = doc["hookSpecificOutput"]
        assert set(said) == {"hookEventName", "permissionDecision", "permissionDecisionReason"}
        assert said["hookEventName"] == "PreToolUse" and said["permissionDecision"] == "deny"
        reason = said["permissionDecisionReason"]
    assert isinstance(reason, str) and reason
    return str(reason)


def reserve(repo: Path, paths: list[str], pid: int | None, **kw: Any) -> None:
    with Mailbox(repo / ".mailslot") as box:
        assert box.reservations.reserve(paths, agent="alice", pid=pid, **kw).granted


# ---------------------------------------------------------------------------- recorded inputs


def test_recorded_inputs_are_what_the_clients_send_before_a_tool() -> None:
    for client in CLIENTS:
        matcher = PRE_TOOL_MATCHERS[client]
        for kind in KINDS:
            doc = json.loads(input_file(client, kind).read_text(encoding="utf-8"))
            assert doc["hook_event_name"] == CLIENT_EVENTS[client]["pre-tool"]
            assert doc["cwd"] == RECORDED_CWD[client]
            name = doc["tool_name"]
            assert (TOOLS[client][name] == "shell") == (kind == "shell"), name
            if client == "claude-code":  # a list of exact names
                assert name in matcher.split("|")
            else:  # a regular expression
                assert re.search(matcher, name)
        for name in TOOLS[client]:  # the hook is installed for every tool it reads, and only
            assert (
                (name in matcher.split("|"))
                if client == "claude-code"
                else re.search(matcher, name)
            )
    assert not re.search(PRE_TOOL_MATCHERS["gemini"], "read_file")
    assert not re.search(PRE_TOOL_MATCHERS["codex"], "view_image")


def _schema(title: str) -> dict[str, Any]:
    """Return the JSON schema titled title embedded in the Codex CLI binary."""
    data = CODEX.read_bytes()
    at = data.index(f'"title": "{title}"'.encode())
    start = data.rindex(b'{\n  "$schema"', 0, at)
    depth = 0
    for end in range(start, len(data)):
        depth += {ord("{"): 1, ord("}"): -1}.get(data[end], 0)
        if depth == 0:
            return dict(json.loads(data[start : end + 1]))
    raise AssertionError(f"no end to the schema {title}")


def test_codex_inputs_and_refusal_fit_its_schemas(
    repo: Path, holder: subprocess.Popen[bytes]
) -> None:
    if not CODEX.exists():
        pytest.skip("the Codex CLI 0.171 binary is not installed in .ci/node")
    import jsonschema

    reserve(repo, ["src/**"], holder.pid, reason=REASON)
    for kind in KINDS:
        stdin = recorded("codex", kind, repo)
        jsonschema.validate(json.loads(stdin), _schema("pre-tool-use.command.input"))
        out = hook("codex", "bob", stdin, repo)
        jsonschema.validate(json.loads(out), _schema("pre-tool-use.command.output"))
        assert REASON in denial(out, "codex")


# ---------------------------------------------------------------------------- holder and others


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("client", CLIENTS)
def test_another_agents_reservation_refuses_the_call_and_says_what_to_do(
    client: str, kind: str, repo: Path, holder: subprocess.Popen[bytes]
) -> None:
    reserve(repo, ["src/**"], holder.pid, reason=REASON)
    stdin = recorded(client, kind, repo)
    reason = denial(hook(client, "bob", stdin, repo), client)
    assert "src/a.py: reserved by alice (as src/**) until 20" in reason
    assert REASON in reason
    assert f"msg_post(thread='{THREAD}', to=['alice']" in reason
    assert f"msg_wait(thread='{THREAD}')" in reason and "files_reserve" in reason
    # The holder itself goes through; so does anyone once the path is not reserved.
    assert hook(client, "alice", stdin, repo) == ""
    assert hook(client, "bob", recorded(client, kind, repo.parent / "elsewhere"), repo) == ""


@pytest.mark.parametrize("client", CLIENTS)
def test_own_shared_and_unrelated_reservations_let_the_call_through(
    client: str, repo: Path, holder: subprocess.Popen[bytes]
) -> None:
    with Mailbox(repo / ".mailslot") as box:
        assert box.reservations.reserve(["src/a.py"], agent="alice", exclusive=False,
                                        pid=holder.pid).granted  # fmt: skip
        assert box.reservations.reserve(["docs/**"], agent="carol", pid=holder.pid).granted
        assert box.reservations.reserve(["src/a.py"], agent="bob", exclusive=False,
                                        pid=os.getpid()).granted  # fmt: skip
    for kind in KINDS:
        assert hook(client, "bob", recorded(client, kind, repo), repo) == ""
    # bob's own exclusive reservation of it: still through for bob, refused for dave.
    with Mailbox(repo / ".mailslot") as box:
        assert box.reservations.release(["src/a.py"], agent="alice")[0]
        assert box.reservations.reserve(["src/a.py"], agent="bob", pid=os.getpid()).granted
    assert hook(client, "bob", recorded(client, "edit", repo), repo) == ""
    assert "reserved by bob" in denial(hook(client, "dave", recorded(client, "edit", repo), repo),
                                       client)  # fmt: skip


@pytest.mark.parametrize("client", CLIENTS)
def test_a_dead_or_expired_holder_holds_nothing(
    client: str, repo: Path, holder: subprocess.Popen[bytes]
) -> None:
    reserve(repo, ["src/**"], holder.pid, reason=REASON)
    stdin = recorded(client, "write", repo)
    assert REASON in denial(hook(client, "bob", stdin, repo), client)
    holder.kill()
    holder.wait()
    assert hook(client, "bob", stdin, repo) == ""  # its process is gone: at once

    with Mailbox(repo / ".mailslot") as box:  # a person's reservation: no process, a TTL
        assert box.reservations.reserve(["src/a.py"], agent="carol", ttl_s=5).granted
        assert "reserved by carol" in denial(hook(client, "bob", stdin, repo), client)
        until("carol's reservation runs out", lambda: box.reservations.live() == [])
    assert hook(client, "bob", stdin, repo) == ""


def test_a_holder_through_mailslot_serve_refuses_until_it_is_killed(repo: Path) -> None:
    """The reservation a model made with files_reserve holds while its server lives."""
    from helpers import answer, raw_serve

    serve = raw_serve(repo / ".mailslot", "alice")
    try:
        assert serve.stdin is not None
        arguments = {"paths": ["src/"], "reason": REASON}
        call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                "params": {"name": "files_reserve", "arguments": arguments}}  # fmt: skip
        serve.stdin.write((json.dumps(call) + "\n").encode())
        serve.stdin.flush()
        got = json.loads(answer(serve, 7)["result"]["content"][0]["text"])
        assert got["granted"] is True, got
        stdin = recorded("claude-code", "edit", repo)
        assert REASON in denial(hook("claude-code", "bob", stdin, repo), "claude-code")
    finally:
        serve.kill()
        serve.communicate()
    assert hook("claude-code", "bob", stdin, repo) == ""


def test_codex_patches_that_move_or_delete_a_reserved_file_are_refused(
    repo: Path, holder: subprocess.Popen[bytes]
) -> None:
    reserve(repo, ["src/a.py"], holder.pid, reason=REASON)
    doc = json.loads(recorded("codex", "edit", repo))
    for patch in (
        "*** Begin Patch\n*** Update File: old.py\n*** Move to: src/a.py\n@@\n-a\n+b\n"
        "*** End Patch\n",
        "*** Begin Patch\n*** Delete File: src/a.py\n*** End Patch\n",
    ):
        doc["tool_input"]["command"] = patch
        assert REASON in denial(hook("codex", "bob", json.dumps(doc), repo), "codex")
    doc["tool_input"]["command"] = "*** Begin Patch\n*** Add File: src/b.py\n+x\n*** End Patch\n"
    assert hook("codex", "bob", json.dumps(doc), repo) == ""


def test_do_not_disturb_does_not_lift_the_guard(
    repo: Path, holder: subprocess.Popen[bytes]
) -> None:
    with Mailbox(repo / ".mailslot") as box:
        box.agents.register("bob")
    done = subprocess.run([sys.executable, "-m", "mailslot", "dnd", "bob"], capture_output=True,
                          text=True, timeout=60, cwd=repo, env=env())  # fmt: skip
    assert done.returncode == 0, done.stderr
    reserve(repo, ["src/**"], holder.pid, reason=REASON)
    assert REASON in denial(hook("gemini", "bob", recorded("gemini", "edit", repo), repo), "gemini")


# ---------------------------------------------------------------------------- shell commands


DENIED = ["echo x > src/a.py", "sed -i s/a/b/ src/a.py", "mv tmp src/a.py", "cp x src/a.py",
          "rm src/a.py", "tee src/a.py", "echo x >> src/a.py", "make 2> src/a.py",
          "git status && touch src/a.py", "cat x | tee -a src/a.py", "cd src; truncate -s 0 a.py",
          "ln -sf x src/a.py", "mv src/a.py elsewhere.py", "rm -rf src", "cp x a.py src/",
          "bash -lc 'echo 1 > src/a.py'", "sudo rm -f src/*.py",
          "rm {REPO}/src/a.py", "dd if=x of=src/a.py", "install -m 644 x src/a.py",
          "false || rm src/a.py", "echo x &> src/a.py", "env X=1 tee src/a.py"]  # fmt: skip
ALLOWED = ["cat src/a.py", "grep x src/a.py", "git status", "echo x > other.py",
           "sed s/a/b/ src/a.py", "cp src/a.py /tmp/copy.py", "echo x > /dev/null",
           "cat <<EOF > notes.txt\nrm src/a.py\nEOF", "echo 'rm src/a.py'", "echo x # > src/a.py",
           "ls -la src 2>&1 | head"]  # fmt: skip


@pytest.mark.parametrize("command", DENIED)
def test_shell_commands_that_write_a_reserved_file_are_refused(
    command: str, repo: Path, holder: subprocess.Popen[bytes]
) -> None:
    reserve(repo, ["src/a.py"], holder.pid, reason=REASON)
    command = command.replace("{REPO}", str(repo))
    reason = denial(hook("claude-code", "bob", recorded("claude-code", "shell", repo, command),
                         repo), "claude-code")  # fmt: skip
    assert reason.startswith("mailslot: This command was not run")
    assert "reserved by alice" in reason and REASON in reason


@pytest.mark.parametrize("command", ALLOWED)
def test_shell_commands_that_only_read_or_write_elsewhere_go_through(
    command: str, repo: Path, holder: subprocess.Popen[bytes]
) -> None:
    reserve(repo, ["src/a.py"], holder.pid, reason=REASON)
    assert hook("claude-code", "bob", recorded("claude-code", "shell", repo, command), repo) == ""


@pytest.mark.parametrize("client", ["codex", "gemini"])
def test_each_clients_shell_tool_is_read(
    client: str, repo: Path, holder: subprocess.Popen[bytes]
) -> None:
    reserve(repo, ["src/a.py"], holder.pid, reason=REASON)
    for command in ("sed -i s/a/b/ src/a.py", "rm src/a.py"):
        denial(hook(client, "bob", recorded(client, "shell", repo, command), repo), client)
    assert hook(client, "bob", recorded(client, "shell", repo, "cat src/a.py"), repo) == ""


def test_gemini_runs_a_command_in_the_folder_it_names(
    repo: Path, holder: subprocess.Popen[bytes]
) -> None:
    reserve(repo, ["src/a.py"], holder.pid, reason=REASON)
    doc = json.loads(recorded("gemini", "shell", repo, "rm a.py"))
    assert hook("gemini", "bob", json.dumps(doc), repo) == ""
    doc["tool_input"]["dir_path"] = "src"
    denial(hook("gemini", "bob", json.dumps(doc), repo), "gemini")


# ---------------------------------------------------------------------------- installed


def mailslot(cwd: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailslot", *args], capture_output=True, text=True, timeout=60,
        cwd=cwd, env=env() | {"HOME": str(home)},
    )  # fmt: skip


SETTINGS = {"claude-code": ".claude/settings.json", "codex": ".codex/hooks.json",
            "gemini": ".gemini/settings.json"}  # fmt: skip
OTHER = {"claude-code": "Bash", "codex": "^Bash$", "gemini": "run_shell_command"}


@pytest.mark.parametrize("client", CLIENTS)
def test_mcp_config_hooks_installs_the_pre_tool_hook_and_keeps_the_users(
    client: str, repo: Path, tmp_path: Path, holder: subprocess.Popen[bytes]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    event = CLIENT_EVENTS[client]["pre-tool"]
    theirs = {"matcher": OTHER[client], "hooks": [{"type": "command", "command": "lint.sh"}]}
    # Claude Code's go to settings.local.json when they hold this machine's paths.
    places = [
        SETTINGS[client],
        *([".claude/settings.local.json"] if client == "claude-code" else []),
    ]
    for place in places:
        (repo / place).parent.mkdir(exist_ok=True)
        (repo / place).write_text(json.dumps({"hooks": {event: [theirs]}}, indent=2) + "\n")
    done = mailslot(repo, home, "mcp-config", client, "--install", "--hooks", "--agent", "bob")
    assert done.returncode == 0, done.stderr
    [line] = [x for x in done.stdout.splitlines() if f"{event} hooks (agent 'bob') in " in x]
    path = Path(line.rsplit(" in ", 1)[1])
    assert path in [repo / place for place in places], line
    text = path.read_text()
    groups = json.loads(re.sub(r"^\s*//.*$", "", text, flags=re.M))["hooks"][event]
    assert groups[0] == theirs  # the user's hook stays, first
    [ours] = groups[1:]
    assert ours["matcher"] == PRE_TOOL_MATCHERS[client]
    [handler] = ours["hooks"]
    assert handler["type"] == "command" and "hook pre-tool" in handler["command"]
    assert f"--client {client}" in handler["command"] and "--as bob" in handler["command"]

    # The installed line is what the client runs: through a shell, in the project.
    reserve(repo, ["src/**"], holder.pid, reason=REASON)
    stdin = recorded(client, "edit", repo)
    ran = subprocess.run(handler["command"], shell=True, input=stdin, capture_output=True,  # noqa: S602
                         text=True, timeout=60, cwd=repo, env=env())  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert REASON in denial(ran.stdout, client)
