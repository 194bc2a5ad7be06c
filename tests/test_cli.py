"""The mailslot command: root discovery (incl. git worktrees), verbs, JSON output, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailslot import Mailbox, RootError, default_root, find_root
from mailslot.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def test_find_root_walks_up(tmp_path: Path) -> None:
    Mailbox.init(tmp_path / ".mailslot")
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    assert find_root(deep) == tmp_path / ".mailslot"
    with pytest.raises(RootError, match="mailslot init"):
        find_root(tmp_path.parent)


def test_worktrees_share_the_main_mailbox(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "src" / "x.py").write_text("x = 1\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "init")
    git(repo, "worktree", "add", "-q", str(tmp_path / "feature"), "-b", "feature")
    assert default_root(repo / "src") == repo / ".mailslot"
    assert default_root(tmp_path / "feature" / "src") == repo / ".mailslot"
    Mailbox.init(default_root(tmp_path / "feature"))
    assert find_root(tmp_path / "feature" / "src") == repo / ".mailslot"
    assert find_root(repo / "src") == repo / ".mailslot"
    # Even when the worktree checks out its own copy of the transcripts, the live mailbox is
    # the main worktree's.
    Mailbox.init(tmp_path / "feature" / ".mailslot")
    assert find_root(tmp_path / "feature" / "src") == repo / ".mailslot"


def test_env_and_flag_choose_the_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(capsys, "init", str(a))[0] == 0
    assert run(capsys, "init", str(b))[0] == 0
    monkeypatch.setenv("MAILSLOT_ROOT", str(a))
    monkeypatch.setenv("MAILSLOT_AGENT", "alice")
    assert run(capsys, "thread", "env topic")[0] == 0
    assert run(capsys, "thread", "flag topic", "--root", str(b))[0] == 0
    assert [t.id for t in Mailbox(a).threads()] == ["env-topic"]
    assert [t.id for t in Mailbox(b).threads()] == ["flag-topic"]


@pytest.fixture
def env_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "box"
    Mailbox.init(root)
    monkeypatch.setenv("MAILSLOT_ROOT", str(root))
    monkeypatch.setenv("MAILSLOT_AGENT", "alice")
    return root


def test_a_conversation(env_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "register", "bob", "--model", "gpt", "--description", "reviews")[0] == 0
    code, out, _ = run(capsys, "thread", "Release 2.0", "--json")
    assert code == 0 and json.loads(out)["id"] == "release-2-0"
    assert (
        run(capsys, "post", "release-2-0", "please review", "--to", "bob", "--type", "task")[1]
        == "1\n"
    )
    code, out, _ = run(
        capsys,
        "post",
        "release-2-0",
        "looks good",
        "--as",
        "bob",
        "--reply-to",
        "1",
        "--priority",
        "high",
        "--meta",
        '{"ok": true}',
        "--json",
    )
    doc = json.loads(out)
    assert (doc["seq"], doc["from"], doc["reply_to"], doc["meta"]) == (2, "bob", 1, {"ok": True})
    assert run(capsys, "state", "release-2-0", "closed", "--summary", "shipped")[0] == 0
    code, out, _ = run(capsys, "read", "release-2-0")
    assert "#1 alice → bob [task]" in out and "please review" in out
    assert "#2 bob !high (re #1)" in out
    assert "discuss → closed" in out and "shipped" in out
    code, out, _ = run(capsys, "read", "release-2-0", "--after", "1", "--limit", "1", "--json")
    doc = json.loads(out)
    assert [m["seq"] for m in doc["messages"]] == [2] and doc["has_more"] and doc["cursor"] == 2
    code, out, _ = run(capsys, "threads", "--json")
    assert json.loads(out)["threads"][0]["state"] == "closed"
    code, out, _ = run(capsys, "threads")
    assert "release-2-0" in out and "closed" in out
    code, out, _ = run(capsys, "agents", "--json")
    assert [a["agent"] for a in json.loads(out)["agents"]] == ["bob"]


def test_post_from_stdin(env_root: Path) -> None:
    Mailbox(env_root).create_thread("t", creator="alice")
    env = {**os.environ, "MAILSLOT_ROOT": str(env_root), "MAILSLOT_AGENT": "alice"}
    result = subprocess.run(
        [sys.executable, "-m", "mailslot", "post", "t", "-"],
        input="from a pipe ✓\n\nsecond paragraph\n".encode(),
        capture_output=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # The one final newline `echo` adds is dropped, as $(...) drops it; the rest is kept.
    assert Mailbox(env_root).get("t", 1).content == "from a pipe ✓\n\nsecond paragraph"
    bad = subprocess.run(
        [sys.executable, "-m", "mailslot", "post", "t", "-"],
        input=b"\xff\xfe not utf-8",
        capture_output=True,
        env=env,
        check=False,
    )
    assert bad.returncode == 1
    assert bad.stderr.decode().startswith("mailslot: content is not valid UTF-8")
    assert Mailbox(env_root).head("t") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["post", "nope", "hi"], "no thread 'nope'"),
        (["read", "../../etc"], "invalid thread id"),
        (["thread", "!!!"], "at least one letter or digit"),
        (["post", "t", "hi", "--to", "ghost"], "no agent 'ghost'"),
        (["post", "t", "hi", "--meta", "{bad"], "--meta is not JSON"),
        (["post", "t", "hi", "--as", "Bad Name"], "invalid agent name"),
    ],
)
def test_errors_are_one_line_and_exit_1(
    env_root: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    Mailbox(env_root).create_thread("t", creator="alice")
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == ""
    assert err.startswith("mailslot: ") and message in err and err.count("\n") == 1


def test_no_root_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MAILSLOT_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "threads")
    assert code == 1 and "mailslot init" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["post"])
    assert e.value.code == 2


def test_python_dash_m_and_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mailslot", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("mailslot ")


@pytest.mark.parametrize(
    ("argv", "byte"),
    [
        ([b"search", b"\xff"], 0xFF),
        ([b"search", b"hi", b"--from", b"ab\xffc"], 0xFF),
        ([b"search", b"hi", b"--to", b"\xfe"], 0xFE),
        ([b"post", b"t", b"caf\xe9"], 0xE9),
        ([b"read", b"t", b"--as", b"\xff"], 0xFF),
        # after characters of more than one byte: the byte named is the bad one itself
        ([b"post", b"t", b"\xc3\xa9t\xc3\xa9 \xff"], 0xFF),
        # a --root on the line excuses only its own value
        ([b"post", b"--root", b"{root}", b"t", b"caf\xe9"], 0xE9),
        ([b"post", b"--root={root}", b"t", b"caf\xe9"], 0xE9),
    ],
)
def test_arguments_that_are_not_utf8_are_a_usage_error(
    env_root: Path, argv: list[bytes], byte: int
) -> None:
    argv = [a.replace(b"{root}", os.fsencode(env_root)) for a in argv]
    box = Mailbox(env_root)
    box.create_thread("t", creator="alice")
    box.post("t", "hi there", sender="alice")
    before = sorted(p.name for p in (env_root / "threads" / "t").iterdir())
    env = {**os.environ, "MAILSLOT_ROOT": str(env_root), "MAILSLOT_AGENT": "alice"}
    p = subprocess.run([sys.executable.encode(), b"-m", b"mailslot", *argv],
                       capture_output=True, env=env, check=False)  # fmt: skip
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert "Traceback" not in err and f"is not valid UTF-8 (byte 0x{byte:02x})" in err
    assert "UTF-8 text" in err
    assert sorted(q.name for q in (env_root / "threads" / "t").iterdir()) == before


@pytest.mark.parametrize("joined", [False, True])
def test_a_root_path_that_is_not_utf8_works(tmp_path: Path, joined: bool) -> None:
    root = os.fsencode(tmp_path) + b"/box\xff"
    given = [b"--root=" + root] if joined else [b"--root", root]
    p = subprocess.run([sys.executable.encode(), b"-m", b"mailslot", b"init", *given],
                       capture_output=True, check=False)  # fmt: skip
    assert p.returncode == 0, p.stderr.decode()
    assert os.path.isdir(root + b"/threads")
