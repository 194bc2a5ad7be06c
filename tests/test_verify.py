"""`mailslot verify` and `mailslot key` in a real git repository (issue 33).

A mailbox is committed next to code; agents post through real `mailslot serve` processes and a
person through `mailslot post` after `mailslot key`. Then history is changed the ways a
transcript is forged: a commit that edits a message, an amended commit, a fork's branch merged
in with a key of its own on a card. Every command runs as a separate process, and each machine
is its own configuration folder ($XDG_CONFIG_HOME: its private keys and its pins).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import call, git_init, require, run_git
from mcp import StdioServerParameters
from mcp.client import Client

# ---------------------------------------------------------------- helpers


def machine(path: Path) -> Path:
    """Return a fresh configuration folder: a machine of its own (no keys, no pins)."""
    path.mkdir(parents=True)
    return path


def mailslot(
    env: dict[str, str], config: Path, cwd: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run `mailslot ARGS` in cwd as a separate process on machine config."""
    return subprocess.run([sys.executable, "-m", "mailslot", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False,
                          env={**env, "XDG_CONFIG_HOME": str(config)})  # fmt: skip


def ok(done: subprocess.CompletedProcess[str]) -> str:
    """Return a command's stdout; fail with what it said unless it exited 0."""
    assert done.returncode == 0, f"exit {done.returncode}: {done.stdout}{done.stderr}"
    return done.stdout


@asynccontextmanager
async def served(root: Path, name: str, config: Path) -> AsyncIterator[Client]:
    """Run `mailslot serve --agent name` on machine config, driven by the official client.

    The SDK gives a server only a safe subset of the environment: XDG_CONFIG_HOME is passed
    explicitly, so its key is made and pinned on that machine.
    """
    env = {"PYTHONDONTWRITEBYTECODE": "1", "XDG_CONFIG_HOME": str(config)}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    server = StdioServerParameters(command=sys.executable, env=env,
                                   args=["-m", "mailslot", "serve", "--root", str(root),
                                         "--agent", name])  # fmt: skip
    async with Client(server, mode="auto", cache=None) as c:
        yield c


def message_file(repo: Path, thread: str, seq: int) -> Path:
    return repo / ".mailslot" / "threads" / thread / f"{seq:06d}.json"


def edit(path: Path, **changes: Any) -> None:
    """Rewrite a message file with changes, as a person with an editor would."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc.update(changes)
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def card_fingerprints(env: dict[str, str], config: Path, repo: Path) -> dict[str, list[str]]:
    """Return the fingerprints of the keys on each card, as `mailslot key --list --json` says."""
    rows = json.loads(ok(mailslot(env, config, repo, "key", "--list", "--json")))["keys"]
    out: dict[str, list[str]] = {}
    for r in rows:
        out.setdefault(r["name"], []).append(r["fingerprint"])
    return out


def trust_command(lines: list[str], name: str) -> list[str]:
    """Return the arguments of the `mailslot key ... --trust ...` command that lines tell a
    person to run for name's new key."""
    found = [line.split("`")[1].split()[1:] for line in lines if f"`mailslot key {name} " in line]
    assert len(found) == 1, lines
    return found[0]


ALL_VALID = "checked 4 messages: 4 valid, 0 invalid, 0 with an unknown key, 0 unsigned"

# ---------------------------------------------------------------- the repository


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Return (repository, its machine) made once: code, then a mailbox committed next to it.

    Thread 'release': #1 alice, #2 bob answering #1 (both through `mailslot serve`), #3 carol,
    a person, answering #2 through `mailslot post` after `mailslot key carol`. Thread 'notes':
    #1 alice. Two commits: the code, then the mailbox. The `git` fixture is per test; this
    one's environment is the same isolation (HOME of its own, no global or system config).
    """
    if shutil.which("git") is None:
        require("needs the git command")
    base = tmp_path_factory.mktemp("verify")
    home = base / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}  # fmt: skip
    config = machine(base / "machine")
    repo = base / "repo"
    (repo / "src").mkdir(parents=True)
    git_init(env, repo, "carol")
    (repo / "src" / "app.py").write_text("print('hello')\n")
    run_git(env, repo, "add", "-A")
    run_git(env, repo, "commit", "-q", "-m", "code")
    ok(mailslot(env, config, repo, "init"))
    root = repo / ".mailslot"

    async def agents() -> None:
        async with served(root, "alice", config) as alice, served(root, "bob", config) as bob:
            thread = (await call(alice, "thread_create", topic="release"))["thread"]
            assert thread == "release"
            await call(alice, "msg_post", thread="release", content="the build is green")
            await call(bob, "msg_post", thread="release", content="tagging v1", reply_to=1)
            await call(alice, "thread_create", topic="notes")
            await call(alice, "msg_post", thread="notes", content="remember the changelog")

    anyio.run(agents)
    assert "made carol's key" in ok(mailslot(env, config, repo, "key", "carol"))
    ok(mailslot(env, config, repo, "post", "release", "approved", "--as", "carol",
                "--reply-to", "2"))  # fmt: skip
    run_git(env, repo, "add", "-A")
    run_git(env, repo, "commit", "-q", "-m", "the release thread")
    return repo, config


@pytest.fixture
def repo(made: tuple[Path, Path], tmp_path: Path) -> Path:
    """Return a copy of the made repository of this test's own (same machine, its own pins)."""
    copy = tmp_path / "repo"
    shutil.copytree(made[0], copy, symlinks=True)
    return copy


@pytest.fixture
def config(made: tuple[Path, Path]) -> Path:
    """Return the machine the made repository's agents and person posted from."""
    return made[1]


# ---------------------------------------------------------------- a clean transcript


def test_every_post_is_signed_and_verifies(git: dict[str, str], repo: Path, config: Path) -> None:
    for thread, seq, sender in [("release", 1, "alice"), ("release", 2, "bob"),
                                ("release", 3, "carol"), ("notes", 1, "alice")]:  # fmt: skip
        doc = json.loads(message_file(repo, thread, seq).read_text())
        assert doc["from"] == sender
        assert doc["sig"]["alg"] == "ed25519", (thread, seq)
    reply = json.loads(message_file(repo, "release", 3).read_text())["sig"]
    assert reply["reply_to"] == json.loads(message_file(repo, "release", 2).read_text())["id"]
    # Each served agent made its key on its machine when it took its name, as carol did hers.
    keys = config / "mailslot" / "keys"
    assert all(stat.S_IMODE((keys / n).stat().st_mode) == 0o600 for n in ("alice", "bob", "carol"))
    # Nothing private went into the repository: the cards hold public lines only.
    tracked = run_git(git, repo, "ls-files").split()
    assert not any("PRIVATE KEY" in (repo / f).read_text(errors="replace") for f in tracked)
    cards = {f: json.loads((repo / f).read_text()) for f in tracked if "/agents/" in f}
    assert sorted(cards) == [f".mailslot/agents/{n}.json" for n in ("alice", "bob", "carol")]
    assert all(c["keys"][0]["key"].startswith("ssh-ed25519 ") for c in cards.values())
    assert cards[".mailslot/agents/carol.json"].get("person") is True
    assert not cards[".mailslot/agents/alice.json"].get("person")

    done = mailslot(git, config, repo, "verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ALL_VALID + "\n"
    # Another machine (a CI runner, a new clone) trusts the cards on first sight: all valid.
    ci = machine(repo.parent / "ci")
    assert ok(mailslot(git, ci, repo, "verify")) == ALL_VALID + "\n"


# ---------------------------------------------------------------- history changed


def test_a_commit_editing_a_message_fails_naming_it(
    git: dict[str, str], repo: Path, config: Path
) -> None:
    before = run_git(git, repo, "rev-parse", "HEAD").strip()
    edit(message_file(repo, "release", 2), content="tagging v2")
    run_git(git, repo, "commit", "-q", "-am", "tidy the transcript")
    done = mailslot(git, config, repo, "verify")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("threads/release/000002.json (#2 from bob): invalid: ")
    assert "changed after it was signed" in lines[0]
    assert lines[-1] == "checked 4 messages: 3 valid, 1 invalid, 0 with an unknown key, 0 unsigned"
    # --since a revision before the edit checks the edited message, and only it.
    since = mailslot(git, config, repo, "verify", "--since", before)
    assert since.returncode == 1
    assert since.stdout.splitlines()[0] == lines[0]
    assert since.stdout.splitlines()[-1] == (
        "checked 1 message: 0 valid, 1 invalid, 0 with an unknown key, 0 unsigned"
    )
    # Since the edit itself, nothing changed: nothing is checked.
    assert ok(mailslot(git, config, repo, "verify", "--since", "HEAD")) == (
        "checked 0 messages: 0 valid, 0 invalid, 0 with an unknown key, 0 unsigned\n"
    )


def test_an_amended_commit_fails_naming_it(git: dict[str, str], repo: Path, config: Path) -> None:
    original = run_git(git, repo, "rev-parse", "HEAD").strip()
    edit(message_file(repo, "release", 3), content="approved, and ship on Friday")
    run_git(git, repo, "commit", "-q", "-a", "--amend", "--no-edit")
    assert run_git(git, repo, "rev-parse", "HEAD").strip() != original  # history rewritten
    assert run_git(git, repo, "status", "--porcelain", "--", ".mailslot") == ""
    done = mailslot(git, config, repo, "verify")
    assert done.returncode == 1
    assert done.stdout.startswith("threads/release/000003.json (#3 from carol): invalid: ")
    # The rewritten commit is the one a reviewer asks about: --since its parent checks it.
    since = mailslot(git, config, repo, "verify", "--since", "HEAD~1")
    assert since.returncode == 1
    assert "(#3 from carol): invalid" in since.stdout
    assert "checked 4 messages: 3 valid, 1 invalid" in since.stdout


def fork_and_merge(git: dict[str, str], repo: Path, config: Path, forge_bob: bool) -> str:
    """Clone repo as a fork on a machine of its own; there, put a new key on alice's card and
    post as alice with it (and, if forge_bob, a message made to say it is from bob); merge the
    fork's branch into repo. Return repo's HEAD before the merge."""
    # This machine looks at the mailbox first, as it does in use: alice's first key is pinned.
    assert ok(mailslot(git, config, repo, "verify")) == ALL_VALID + "\n"
    fork = repo.parent / "fork"
    run_git(git, repo.parent, "clone", "-q", str(repo), str(fork))
    git_init(git, fork, "mallory")
    elsewhere = machine(repo.parent / "mallory-machine")
    ok(mailslot(git, elsewhere, fork, "key", "alice"))  # a second key on alice's card
    ok(mailslot(git, elsewhere, fork, "post", "release", "bob approved it too", "--as", "alice"))
    if forge_bob:
        ok(mailslot(git, elsewhere, fork, "key", "mallory"))
        ok(mailslot(git, elsewhere, fork, "post", "release", "LGTM, ship it", "--as", "mallory"))
        edit(message_file(fork, "release", 5), **{"from": "bob"})
    run_git(git, fork, "add", "-A")
    run_git(git, fork, "commit", "-q", "-m", "review notes")
    before = run_git(git, repo, "rev-parse", "HEAD").strip()
    run_git(git, repo, "pull", "-q", "--no-rebase", str(fork), "main")
    return before


def test_a_merged_fork_with_a_forged_message_fails(
    git: dict[str, str], repo: Path, config: Path
) -> None:
    fork_and_merge(git, repo, config, forge_bob=True)
    done = mailslot(git, config, repo, "verify")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("threads/release/000004.json (#4 from alice): unknown key: ")
    assert "which this machine does not trust for alice" in lines[0]
    assert lines[1].startswith("threads/release/000005.json (#5 from bob): invalid: ")
    assert "or not written by bob" in lines[1]
    new_key = card_fingerprints(git, config, repo)["alice"][1]
    assert trust_command(lines, "alice") == ["key", "alice", "--trust", new_key]
    # mallory's card is new here and trusted on first sight; alice's new key is not.
    assert lines[-1] == "checked 6 messages: 4 valid, 1 invalid, 1 with an unknown key, 0 unsigned"


def test_since_trusts_only_the_cards_at_the_revision(
    git: dict[str, str], repo: Path, config: Path
) -> None:
    before = fork_and_merge(git, repo, config, forge_bob=False)
    ci = machine(repo.parent / "ci")  # a machine that never saw the mailbox: nothing pinned
    # Trust on first sight pins the merged card, fork's key and all: why --since exists.
    assert ok(mailslot(git, ci, repo, "verify")).splitlines()[-1] == (
        "checked 5 messages: 5 valid, 0 invalid, 0 with an unknown key, 0 unsigned"
    )
    for where in (machine(repo.parent / "ci2"), config):
        done = mailslot(git, where, repo, "verify", "--since", before)
        assert done.returncode == 0, done.stdout + done.stderr  # nothing invalid
        lines = done.stdout.splitlines()
        assert lines[0].startswith("threads/release/000004.json (#4 from alice): unknown key: ")
        assert trust_command(lines, "alice")[-1].startswith("SHA256:")
        assert lines[-1] == (
            "checked 1 message: 0 valid, 0 invalid, 1 with an unknown key, 0 unsigned"
        )
        strict = mailslot(git, where, repo, "verify", "--since", before, "--strict")
        assert strict.returncode == 1
        assert strict.stdout.splitlines()[0] == lines[0]


def test_json(git: dict[str, str], repo: Path, config: Path) -> None:
    before = fork_and_merge(git, repo, config, forge_bob=True)
    done = mailslot(git, config, repo, "verify", "--json", "--since", before)
    assert done.returncode == 1
    doc = json.loads(done.stdout)
    assert sorted(doc) == ["counts", "key_changes", "messages", "ok", "unreadable"]
    # At the revision mallory had no card: their key is unknown too.
    assert doc["counts"] == {"valid": 0, "invalid": 1, "unknown key": 1, "unsigned": 0}
    assert doc["ok"] is False
    assert doc["unreadable"] == []
    first, second = doc["messages"]
    assert {k: v for k, v in first.items() if k != "why"} == {
        "file": "threads/release/000004.json", "thread": "release", "seq": 4, "from": "alice",
        "signed": "unknown key"}  # fmt: skip
    assert first["why"].startswith("signed with SHA256:")
    assert (second["seq"], second["from"], second["signed"]) == (5, "bob", "invalid")
    assert len(doc["key_changes"]) == 2  # alice's new key, and mallory's
    assert trust_command(doc["key_changes"], "alice")[1:3] == ["alice", "--trust"]
    assert trust_command(doc["key_changes"], "mallory")[1:3] == ["mallory", "--trust"]
    clean = json.loads(ok(mailslot(git, config, repo, "verify", "--json", "release", "--since",
                                   "HEAD")))  # fmt: skip
    assert clean["ok"] is True and clean["messages"] == [] and sum(clean["counts"].values()) == 0


def test_threads_named_limit_the_check(git: dict[str, str], repo: Path, config: Path) -> None:
    edit(message_file(repo, "notes", 1), content="forget the changelog")
    assert ok(mailslot(git, config, repo, "verify", "release")) == (
        "checked 3 messages: 3 valid, 0 invalid, 0 with an unknown key, 0 unsigned\n"
    )
    done = mailslot(git, config, repo, "verify", "notes")
    assert done.returncode == 1
    assert done.stdout.startswith("threads/notes/000001.json (#1 from alice): invalid: ")
    assert done.stdout.endswith(
        "checked 1 message: 0 valid, 1 invalid, 0 with an unknown key, 0 unsigned\n"
    )
    both = mailslot(git, config, repo, "verify", "notes", "release")
    assert both.returncode == 1 and "checked 4 messages: 3 valid, 1 invalid" in both.stdout
    missing = mailslot(git, config, repo, "verify", "nosuch")
    assert missing.returncode == 1 and "no thread 'nosuch'" in missing.stderr


def test_unsigned_fails_only_when_required(git: dict[str, str], repo: Path, config: Path) -> None:
    ok(mailslot(git, config, repo, "post", "release", "an unsigned word", "--as", "dave"))
    assert "sig" not in json.loads(message_file(repo, "release", 4).read_text())
    done = mailslot(git, config, repo, "verify")
    assert done.returncode == 0
    assert (
        done.stdout == "checked 5 messages: 4 valid, 0 invalid, 0 with an unknown key, 1 unsigned\n"
    )
    strict = mailslot(git, config, repo, "verify", "--strict")
    assert strict.returncode == 1
    assert strict.stdout.startswith("threads/release/000004.json (#4 from dave): unsigned: ")
    settings = repo / ".mailslot" / "mailslot.json"
    settings.write_text(json.dumps({**json.loads(settings.read_text()), "require_signed": True}))
    required = mailslot(git, config, repo, "verify")
    assert required.returncode == 1
    assert required.stdout == strict.stdout
    refused = mailslot(git, config, repo, "post", "release", "again", "--as", "dave")
    assert refused.returncode == 1 and "`mailslot key dave`" in refused.stderr
    ok(mailslot(git, config, repo, "key", "dave"))
    ok(mailslot(git, config, repo, "post", "release", "signed now", "--as", "dave"))
    assert "checked 6 messages: 5 valid" in mailslot(git, config, repo, "verify").stdout


@pytest.mark.parametrize("damage", ["empty", "half", "missing"])
def test_an_unreadable_file_is_not_checked_and_fails(
    git: dict[str, str], repo: Path, config: Path, damage: str
) -> None:
    """An empty or half-written file (as git or a sync tool leaves one for a moment), or one
    deleted from the middle of a thread, is reported once, and verify fails."""
    path = message_file(repo, "release", 2)
    data = path.read_bytes()
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    done = mailslot(git, config, repo, "verify")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(str(path))
    assert lines[0].endswith("could not be read, so it was not checked")
    assert len([line for line in lines if "not checked" in line]) == 1
    # What comes after it is still checked: #3 of release, and notes.
    assert lines[-1] == ("checked 3 messages: 3 valid, 0 invalid, 0 with an unknown key, "
                         "0 unsigned, 1 unreadable")  # fmt: skip
    doc = json.loads(mailslot(git, config, repo, "verify", "--json").stdout)
    assert doc["ok"] is False and doc["unreadable"][0].startswith(str(path))
    assert doc["counts"]["valid"] == 3


def test_since_needs_a_revision_and_git(git: dict[str, str], repo: Path, config: Path) -> None:
    bad = mailslot(git, config, repo, "verify", "--since", "no-such-rev")
    assert bad.returncode != 0 and bad.stdout == ""
    assert "no-such-rev" in bad.stderr and "revision" in bad.stderr
    assert "Traceback" not in bad.stderr
    option = mailslot(git, config, repo, "verify", "--since=--output=x")
    assert option.returncode != 0 and not (repo / "x").exists()
    outside = repo.parent / "plain"
    outside.mkdir()
    ok(mailslot(git, config, outside, "init"))
    done = mailslot(git, config, outside, "verify", "--since", "HEAD")
    assert done.returncode == 2
    assert "--since needs the mailbox in a git repository" in done.stderr
    assert ok(mailslot(git, config, outside, "verify")).startswith("checked 0 messages")


# ---------------------------------------------------------------- mailslot key


def test_key_is_made_once_outside_the_mailbox(git: dict[str, str], repo: Path) -> None:
    here = machine(repo.parent / "laptop")
    first = mailslot(git, here, repo, "key", "erin", "--json")
    doc = json.loads(ok(first))
    assert doc["new"] is True and doc["name"] == "erin"
    private = Path(doc["path"])
    assert private == here / "mailslot" / "keys" / "erin"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(private.parent.stat().st_mode) == 0o700
    assert repo.resolve() not in private.resolve().parents
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        require("needs ssh-keygen (openssh-client)")
    listed = subprocess.run([keygen, "-lf", f"{private}.pub"], capture_output=True, text=True,
                            check=True).stdout.split()  # fmt: skip
    assert listed[1] == doc["fingerprint"] and listed[-1] == "(ED25519)"
    assert doc["key"].split()[:2] == private.with_name("erin.pub").read_text().split()[:2]
    # The public half is on erin's card, a person's; ssh-keygen reads the private half too.
    card = json.loads((repo / ".mailslot" / "agents" / "erin.json").read_text())
    assert card["person"] is True and [k["key"] for k in card["keys"]] == [doc["key"]]
    derived = subprocess.run([keygen, "-yf", str(private)], capture_output=True, text=True,
                             check=True).stdout.split()  # fmt: skip
    assert derived[:2] == doc["key"].split()[:2]

    again = ok(mailslot(git, here, repo, "key", "erin"))
    assert again.splitlines()[0] == f"found erin's key: {doc['fingerprint']}"
    assert f"private: {private} " in again
    card_again = json.loads((repo / ".mailslot" / "agents" / "erin.json").read_text())
    assert card_again["keys"] == card["keys"]
    # The person's name comes from --as (else $MAILSLOT_AGENT, else the OS user) too.
    assert ok(mailslot(git, here, repo, "key", "--as", "erin")).startswith("found erin's key")
    ok(mailslot(git, here, repo, "post", "release", "signed by erin", "--as", "erin"))
    assert "sig" in json.loads(message_file(repo, "release", 4).read_text())


def test_key_list_and_trust(git: dict[str, str], repo: Path, config: Path) -> None:
    fork_and_merge(git, repo, config, forge_bob=False)
    listed = ok(mailslot(git, config, repo, "key", "--list")).splitlines()
    alice = [line for line in listed if line.startswith("alice ")]
    old, new = card_fingerprints(git, config, repo)["alice"]
    assert len(alice) == 2
    assert old in alice[0] and alice[0].endswith(" trusted")
    assert new in alice[1] and alice[1].endswith(" NOT TRUSTED HERE")
    assert any(line.startswith("carol ") and line.endswith(" trusted") for line in listed)
    told = trust_command(listed, "alice")
    assert told == ["key", "alice", "--trust", new]

    wrong = mailslot(git, config, repo, "key", "alice", "--trust", "SHA256:nosuchkey")
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert f"alice's card has no key SHA256:nosuchkey (its keys: {old}, {new})" in wrong.stderr
    nobody = mailslot(git, config, repo, "key", "zed", "--trust", new)
    assert nobody.returncode == 1 and "zed's card has no key" in nobody.stderr

    # The command the list printed is the one that accepts the key.
    assert ok(mailslot(git, config, repo, *told)) == (f"trusted {new} for alice on this machine\n")
    relisted = ok(mailslot(git, config, repo, "key", "--list", "--json"))
    rows = [r for r in json.loads(relisted)["keys"] if r["name"] == "alice"]
    assert [r["trusted"] for r in rows] == [True, True]
    assert ok(mailslot(git, config, repo, "verify")) == (
        "checked 5 messages: 5 valid, 0 invalid, 0 with an unknown key, 0 unsigned\n"
    )
