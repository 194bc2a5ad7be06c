"""The pre-commit guard in real repositories: installing it beside other hooks, and commits
refused, or let through, by the reservations of agents in other worktrees.

Real `git`, real hooks and real processes (the reservation holder is one), no mocks. Without
git the tests skip and say why, except under CI=true, where that fails them.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import git_init, run_git

from mailslot import Mailbox
from mailslot.clients.guard import (
    BEGIN,
    CHAINED,
    END,
    GuardError,
    check,
    hooks_dir,
    install,
    report,
    staged,
    uninstall,
)

# ---------------------------------------------------------------- helpers


@pytest.fixture
def env(git: dict[str, str]) -> dict[str, str]:
    """Return the git environment without any MAILSLOT_ or repository variable of the caller."""
    return {k: v for k, v in git.items()
            if not k.startswith("MAILSLOT_") and k not in ("GIT_DIR", "GIT_INDEX_FILE",
                                                           "GIT_WORK_TREE")}  # fmt: skip


def make_repo(env: dict[str, str], path: Path, mailbox: bool = True) -> Path:
    """Return a repository with a first commit of src/a.py, src/b.py and (if asked) a mailbox."""
    (path / "src").mkdir(parents=True)
    git_init(env, path, "tester")
    (path / "src" / "a.py").write_text("a = 1\n")
    (path / "src" / "b.py").write_text("b = 1\n")
    (path / "README").write_text("a project\n")
    if mailbox:
        Mailbox.init(path / ".mailslot").close()
        assert ".state/" in (path / ".mailslot" / ".gitignore").read_text()
    run_git(env, path, "add", "-A")
    run_git(env, path, "commit", "-q", "-m", "start")
    return path


@pytest.fixture
def repo(env: dict[str, str], tmp_path: Path) -> Path:
    return make_repo(env, tmp_path / "repo")


@pytest.fixture
def holder() -> Iterator[subprocess.Popen[bytes]]:
    """Return a live process for a reservation to be held by; killed at the end."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield p
    if p.poll() is None:
        p.kill()
    p.wait()


def commit(
    env: dict[str, str], tree: Path, *args: str, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Run `git commit -q -m ...` in tree with extra environment; return what happened."""
    return subprocess.run(["git", "-C", str(tree), "commit", "-q", "-m", "change", *args],
                          env={**env, **extra}, capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip


def change(env: dict[str, str], tree: Path, path: str) -> None:
    """Change the file at path in tree and stage it."""
    with (tree / path).open("a") as f:
        f.write("# changed\n")
    run_git(env, tree, "add", "--", path)


def head(env: dict[str, str], tree: Path) -> str:
    return run_git(env, tree, "rev-parse", "HEAD").strip()


def blocks(hook: Path) -> int:
    text = hook.read_text()
    assert text.count(BEGIN) == text.count(END)
    return text.count(BEGIN)


def executable(path: Path) -> bool:
    return bool(path.stat().st_mode & stat.S_IXUSR)


# ---------------------------------------------------------------- installing


def test_install_creates_the_hook_and_twice_is_once(env: dict[str, str], repo: Path) -> None:
    hook = repo / ".git" / "hooks" / "pre-commit"
    assert hooks_dir(repo, env=env) == hook.parent
    said = install(repo, env=env)
    assert str(hook) in said
    assert executable(hook) and blocks(hook) == 1
    first = hook.read_bytes()
    assert first.startswith(b"#!/bin/sh\n")
    assert sys.executable.encode() in first and b"guard check" in first
    assert "already" in install(repo, env=env)
    assert hook.read_bytes() == first
    assert "deleted" in uninstall(repo, env=env)
    assert not hook.exists()
    assert "not installed" in uninstall(repo, env=env)


def test_a_shell_hook_keeps_running_and_is_left_as_it_was(
    env: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    log = tmp_path / "hook.log"
    hook = repo / ".git" / "hooks" / "pre-commit"
    own = f'#!/usr/bin/env bash\nset -e\necho "own hook ran" >> "{log}"\nexit "${{FAIL:-0}}"\n'
    hook.write_text(own)
    hook.chmod(0o750)
    assert "ahead of its own lines" in install(repo, env=env)
    assert "already" in install(repo, env=env)
    assert blocks(hook) == 1 and executable(hook)
    assert stat.S_IMODE(hook.stat().st_mode) == 0o750
    text = hook.read_text()
    assert text.startswith("#!/usr/bin/env bash\n" + BEGIN) and text.endswith(own.split("\n", 1)[1])

    change(env, repo, "README")
    before = head(env, repo)
    refused = commit(env, repo, FAIL="3")
    assert refused.returncode != 0 and head(env, repo) == before, "its failure still refuses"
    done = commit(env, repo)
    assert done.returncode == 0, done.stderr
    assert head(env, repo) != before
    assert log.read_text() == "own hook ran\n" * 2

    assert "the rest of it is as it was" in uninstall(repo, env=env)
    assert hook.read_text() == own and stat.S_IMODE(hook.stat().st_mode) == 0o750
    assert "not in" in uninstall(repo, env=env)
    assert hook.read_text() == own


def test_a_python_hook_is_chained_and_put_back(
    env: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    log = tmp_path / "hook.log"
    hooks = repo / ".git" / "hooks"
    hook = hooks / "pre-commit"
    own = (b"#!/usr/bin/env python3\nimport os, sys\n"
           b"with open(%r, 'a') as f:\n    f.write('python hook ran\\n')\n"
           b"sys.exit(int(os.environ.get('FAIL', '0')))\n" % str(log).encode())  # fmt: skip
    hook.write_bytes(own)
    hook.chmod(0o700)
    assert CHAINED in install(repo, env=env)
    assert (hooks / CHAINED).read_bytes() == own
    assert hook.read_text().startswith("#!/bin/sh\n") and blocks(hook) == 1
    assert "already" in install(repo, env=env)
    assert blocks(hook) == 1 and (hooks / CHAINED).read_bytes() == own

    change(env, repo, "README")
    before = head(env, repo)
    refused = commit(env, repo, FAIL="3")
    assert refused.returncode != 0 and head(env, repo) == before, "its failure still refuses"
    done = commit(env, repo)
    assert done.returncode == 0, done.stderr
    assert log.read_text() == "python hook ran\n" * 2

    assert "put the chained hook back" in uninstall(repo, env=env)
    assert hook.read_bytes() == own and stat.S_IMODE(hook.stat().st_mode) == 0o700
    assert not (hooks / CHAINED).exists()
    assert "not in" in uninstall(repo, env=env)
    assert hook.read_bytes() == own


def test_the_check_runs_before_a_hook_that_ends_in_exec(
    env: dict[str, str], repo: Path, holder: subprocess.Popen[bytes]
) -> None:
    """As pre-commit's and husky's hooks do: a block appended after them would never run."""
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/bash\nexec true\n")
    hook.chmod(0o755)
    install(repo, env=env)
    with Mailbox(repo / ".mailslot") as box:
        assert box.reservations.reserve(["src/b.py"], agent="bob", pid=holder.pid).granted
    change(env, repo, "src/b.py")
    refused = commit(env, repo, MAILSLOT_AGENT="alice")
    assert refused.returncode == 1 and "bob" in refused.stderr
    uninstall(repo, env=env)
    assert hook.read_text() == "#!/bin/bash\nexec true\n"
    assert commit(env, repo, MAILSLOT_AGENT="alice").returncode == 0


def test_a_hook_git_ignores_stays_ignored(env: dict[str, str], repo: Path, tmp_path: Path) -> None:
    """A hook that is not executable never ran: chained, it still does not run."""
    log = tmp_path / "hook.log"
    hook = repo / ".git" / "hooks" / "pre-commit"
    own = f"#!/bin/sh\necho ran >> '{log}'\nexit 1\n"
    hook.write_text(own)
    hook.chmod(0o644)
    install(repo, env=env)
    change(env, repo, "README")
    done = commit(env, repo)
    assert done.returncode == 0, done.stderr
    assert not log.exists()
    uninstall(repo, env=env)
    assert hook.read_text() == own and stat.S_IMODE(hook.stat().st_mode) == 0o644


def test_core_hooks_path_is_honoured(
    env: dict[str, str], repo: Path, holder: subprocess.Popen[bytes]
) -> None:
    run_git(env, repo, "config", "core.hooksPath", ".githooks")
    run_git(env, repo, "worktree", "add", "-q", str(repo.parent / "wt"), "-b", "other")
    assert hooks_dir(repo, env=env) == repo / ".githooks"
    assert hooks_dir(repo / "src", env=env) == repo / ".githooks"
    # A relative hooksPath is, as git runs hooks, from the top of each worktree.
    assert hooks_dir(repo.parent / "wt", env=env) == repo.parent / "wt" / ".githooks"
    install(repo / "src", env=env)  # from a subfolder: still the folder git uses
    assert blocks(repo / ".githooks" / "pre-commit") == 1
    assert not (repo / ".git" / "hooks" / "pre-commit").exists()
    with Mailbox(repo / ".mailslot") as box:
        assert box.reservations.reserve(["src/"], agent="bob", pid=holder.pid).granted
    change(env, repo, "src/a.py")
    refused = commit(env, repo, MAILSLOT_AGENT="alice")
    assert refused.returncode == 1 and "bob" in refused.stderr
    uninstall(repo, env=env)
    assert not (repo / ".githooks" / "pre-commit").exists()


def test_a_damaged_block_is_not_guessed_at(env: dict[str, str], repo: Path) -> None:
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text(f"#!/bin/sh\n{BEGIN}\necho half of it\n")
    hook.chmod(0o755)
    with pytest.raises(GuardError, match="by hand"):
        install(repo, env=env)
    with pytest.raises(GuardError, match="by hand"):
        uninstall(repo, env=env)
    assert hook.read_text() == f"#!/bin/sh\n{BEGIN}\necho half of it\n"


# ---------------------------------------------------------------- checking


def test_staged_paths_include_deletions_and_both_sides_of_renames(
    env: dict[str, str], repo: Path
) -> None:
    run_git(env, repo, "mv", "src/a.py", "src/moved.py")
    run_git(env, repo, "rm", "-q", "README")
    (repo / "src" / "new name.py").write_text("x = 1\n")
    change(env, repo, "src/b.py")
    run_git(env, repo, "add", "-A", "src")
    assert sorted(staged(repo, env=env)) == [
        "README", "src/a.py", "src/b.py", "src/moved.py", "src/new name.py",
    ]  # fmt: skip
    assert sorted(staged(repo / "src", env=env))[0] == "README"  # from the top, not the cwd


def test_check_reads_who_commits_and_reports(
    env: dict[str, str], repo: Path, holder: subprocess.Popen[bytes]
) -> None:
    with Mailbox(repo / ".mailslot") as box:
        assert box.reservations.reserve(
            ["src/*.py"], agent="bob", pid=holder.pid, reason="refactor"
        ).granted
        assert box.reservations.reserve(["README"], agent="carol", exclusive=False).granted
    change(env, repo, "src/b.py")
    change(env, repo, "README")
    nobody = check(repo, env=env)
    assert nobody.agent is None and nobody.refused
    assert [(c.path, c.held.holder, c.held.pattern) for c in nobody.conflicts] == [
        ("src/b.py", "bob", "src/*.py")
    ]  # carol's is shared: it never refuses
    assert check(repo, "bob", env=env).conflicts == []
    assert check(repo, env={**env, "MAILSLOT_AGENT": "bob"}).agent == "bob"
    run_git(env, repo, "config", "mailslot.agent", "bob")
    assert check(repo, env=env).agent == "bob" and not check(repo, env=env).refused
    assert check(repo, "alice", env=env).refused
    assert check(repo, "alice", env={**env, "MAILSLOT_GUARD": "OFF"}).skipped

    text = report(nobody.conflicts)
    line = text.splitlines()[1]
    assert "src/b.py" in line and "bob" in line and "src/*.py" in line and "refactor" in line
    assert "since" in line and "until" in line
    assert "mailslot post file-reservations" in text and "--to bob" in text
    assert "MAILSLOT_GUARD=0 git commit" in text and "--no-verify" in text
    assert report([]) == ""


def test_a_repository_without_a_mailbox_passes(env: dict[str, str], tmp_path: Path) -> None:
    plain = make_repo(env, tmp_path / "plain", mailbox=False)
    change(env, plain, "src/a.py")
    verdict = check(plain, "alice", env=env)
    assert not verdict.refused and verdict.root is None and verdict.skipped
    install(plain, env=env)
    done = commit(env, plain)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


# ---------------------------------------------------------------- two worktrees, two agents


def test_the_guard_between_two_worktrees(
    env: dict[str, str], repo: Path, holder: subprocess.Popen[bytes]
) -> None:
    wt = repo.parent / "alice-wt"
    run_git(env, repo, "worktree", "add", "-q", str(wt), "-b", "alice")
    install(wt, env=env)  # hooks are the repository's: one install serves both worktrees
    assert blocks(repo / ".git" / "hooks" / "pre-commit") == 1
    alice = {"MAILSLOT_AGENT": "alice"}
    root = repo / ".mailslot"
    with Mailbox(root) as box:
        grant = box.reservations.reserve(
            ["src/b.py"], agent="bob", pid=holder.pid, reason="splitting b"
        )
        assert grant.granted

    # Alice, in the other worktree, may not commit bob's file.
    change(env, wt, "src/b.py")
    before = head(env, wt)
    refused = commit(env, wt, **alice)
    assert refused.returncode == 1 and head(env, wt) == before
    assert "src/b.py" in refused.stderr and "bob" in refused.stderr
    assert "splitting b" in refused.stderr and "MAILSLOT_GUARD=0" in refused.stderr
    assert check(wt, env={**env, **alice}).root == root.resolve()

    # ... unless she says so: for one command, or as git skips any hook.
    assert commit(env, wt, **alice, MAILSLOT_GUARD="0").returncode == 0
    change(env, wt, "src/b.py")
    assert commit(env, wt, **alice, MAILSLOT_GUARD="off").returncode == 0
    change(env, wt, "src/b.py")
    assert commit(env, wt, "--no-verify", **alice).returncode == 0
    assert head(env, wt) != before

    # Other files pass; a commit of both is refused for the reserved one.
    change(env, wt, "src/a.py")
    assert commit(env, wt, **alice).returncode == 0
    change(env, wt, "src/a.py")
    change(env, wt, "src/b.py")
    both = commit(env, wt, **alice)
    assert both.returncode == 1 and "src/b.py" in both.stderr and "src/a.py:" not in both.stderr
    run_git(env, wt, "restore", "--staged", "src/b.py")
    assert commit(env, wt, **alice).returncode == 0

    # Bob commits his own file, in the main worktree.
    change(env, repo, "src/b.py")
    done = commit(env, repo, MAILSLOT_AGENT="bob")
    assert done.returncode == 0, done.stderr

    # Once bob releases it, alice's commit passes.
    change(env, wt, "src/b.py")
    assert commit(env, wt, **alice).returncode == 1
    with Mailbox(root) as box:
        released, _ = box.reservations.release(agent="bob")
        assert [h.pattern for h in released] == ["src/b.py"]
    done = commit(env, wt, **alice)
    assert done.returncode == 0, done.stderr

    # A reservation ends with its holder's process.
    with Mailbox(root) as box:
        assert box.reservations.reserve(["src/"], agent="bob", pid=holder.pid).granted
    change(env, wt, "src/b.py")
    assert commit(env, wt, **alice).returncode == 1
    holder.kill()
    holder.wait()
    done = commit(env, wt, **alice)
    assert done.returncode == 0, done.stderr

    # A shared reservation keeps others from reserving exclusively, not from committing.
    with Mailbox(root) as box:
        assert box.reservations.reserve(
            ["src/b.py"], agent="bob", exclusive=False, ttl_s=600
        ).granted
    change(env, wt, "src/b.py")
    done = commit(env, wt, **alice)
    assert done.returncode == 0, done.stderr

    # Without a name, every exclusive reservation counts, a person's (no process) too.
    with Mailbox(root) as box:
        assert box.reservations.reserve(["src/a.py"], agent="carol", ttl_s=600).granted
    change(env, wt, "src/a.py")
    assert commit(env, wt).returncode == 1
    assert commit(env, wt, MAILSLOT_AGENT="carol").returncode == 0


# ---------------------------------------------------------------- names git quotes

#: Files whose names git quotes in its plain output ("odd/caf\303\251.py" with core.quotePath,
#: the default; names with quotes, control characters or backslashes always), and the pattern
#: that reserves each (patterns hold no control character: a '?' stands for it).
ODD = {
    "odd/café ☕.py": "odd/café ☕.py",
    "odd/日本語.md": "odd/日本語.md",
    'odd/say "hi".txt': 'odd/say "hi".txt',
    "odd/tab\there.txt": "odd/tab?here.txt",
    "odd/new\nline.txt": "odd/new?line.txt",
    "odd/back\\slash.txt": "odd/back?slash.txt",
}


@pytest.mark.parametrize("quote_path", ["true", "false"])
def test_the_guard_reads_names_git_quotes(
    env: dict[str, str], repo: Path, holder: subprocess.Popen[bytes], quote_path: str
) -> None:
    run_git(env, repo, "config", "core.quotePath", quote_path)
    install(repo, env=env)
    (repo / "odd").mkdir()
    free = 'free "é"\tx.txt'  # quoted by git too, and reserved by nobody
    for name in [*ODD, free]:
        (repo / name).write_text("x = 1\n")
    run_git(env, repo, "add", "--", "odd", free)
    with Mailbox(repo / ".mailslot") as box:
        assert box.reservations.reserve(list(ODD.values()), agent="bob", pid=holder.pid).granted
    assert sorted(staged(repo, env=env)) == sorted([*ODD, free])
    verdict = check(repo, "alice", env=env)
    assert sorted(c.path for c in verdict.conflicts) == sorted(ODD)
    assert all(ODD[c.path] == c.held.pattern for c in verdict.conflicts)

    before = head(env, repo)
    refused = commit(env, repo, MAILSLOT_AGENT="alice")
    assert refused.returncode == 1 and head(env, repo) == before, refused.stderr
    lines = refused.stderr.splitlines()
    for name in ODD:  # each on a line of its own, a control character escaped, not obeyed
        shown = name if name.isprintable() else json.dumps(name, ensure_ascii=False)
        assert any(line.startswith(f"  {shown}: reserved by bob") for line in lines), (
            name,
            refused.stderr,
        )

    run_git(env, repo, "restore", "--staged", "--", "odd")
    done = commit(env, repo, MAILSLOT_AGENT="alice")
    assert done.returncode == 0, done.stderr
    assert run_git(env, repo, "show", "-z", "--name-only", "--format=", "HEAD") == f"{free}\0"
    run_git(env, repo, "add", "--", "odd")
    done = commit(env, repo, MAILSLOT_AGENT="bob")  # bob's own reservations never block him
    assert done.returncode == 0, done.stderr
