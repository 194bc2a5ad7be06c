"""Signed messages (issue 33), audited: promises of docs/signing.md, docs/tools.md and
docs/command.md that no other test held, found by breaking the code on purpose.

Every process is real: agents are `mailslot serve` driven by the official MCP client, people
post with the `mailslot` command, and each machine is a configuration folder of its own
(XDG_CONFIG_HOME: its private keys and its pins), as in tests/test_signing.py.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import call, git_init, run_git
from test_signing import (
    card,
    load,
    machine,
    mailslot,
    own_fingerprint,
    path_of,
    put,
    read_json,
    served,
    states,
    warned,
)

from mailslot import Mailbox


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fresh mailbox with thread t and an agent card for alice (so posts can be to her)."""
    with Mailbox.init(tmp_path / "box", fsync=False) as box:
        box.create_thread("t", creator="carl")
        box.agents.register("alice")
        return box.root


# ---------------------------------------------------------------- what the signature covers


# docs/signing.md: "The signature covers the thread id, the message id, `from`, `to`, `type`,
# `priority`, the id of the message it answers, `created_at`, `content` and `meta` without
# `moved_from`"; and "`created_at` is signed, so it cannot be changed afterwards".
EDITS: dict[str, Any] = {
    "to": ["carl"],
    "type": "result",
    "priority": "low",
    "created_at": "2020-01-01T00:00:00.000Z",
    "meta": {"approved": False},
    "id": "e" * 32,
}


def test_every_field_the_signature_covers_is_covered(root: Path, tmp_path: Path) -> None:
    """A signed message per field, each edited by hand in that one field: each reads invalid,
    with the warning; a message moved_from added by hand (what doctor and sync write) stays
    valid; the untouched one stays valid."""
    a = machine(tmp_path, "a")
    mailslot(root, a, "key", "ana")
    fields = [*EDITS, "moved_from", "untouched"]
    for name in fields:
        mailslot(root, a, "post", "t", f"about {name}", "--as", "ana", "--to", "alice",
                 "--priority", "high", "--meta", '{"approved": true}')  # fmt: skip
    assert set(states(read_json(root, a, "t")).values()) == {"valid"}
    for seq, name in enumerate(fields, start=1):
        path = path_of(root, "t", seq)
        doc = load(path)
        if name in EDITS:
            doc[name] = EDITS[name]
        elif name == "moved_from":
            doc["meta"] = {**doc["meta"], "moved_from": {"seq": 99, "reason": "sync"}}
        put(path, doc)
    got = read_json(root, a, "t")
    want = {seq: ("invalid" if name in EDITS else "valid") for seq, name in enumerate(fields, 1)}
    assert states(got) == want, {fields[s - 1]: m["signed"] for s, m in got.items()}

    async def main() -> None:
        async with served(root, "alice", a) as alice:
            listed = (await call(alice, "msg_list", thread="t", limit=100))["messages"]
            for m in listed:
                assert m["signed"] == want[m["seq"]], (fields[m["seq"] - 1], m)
                assert warned(m) == (want[m["seq"]] == "invalid"), m

    anyio.run(main)


def test_a_reply_unhooked_by_hand_is_invalid(root: Path, tmp_path: Path) -> None:
    """docs/signing.md: what a reply answers is covered by id, and a reply pointed at another
    message than it answered is invalid: pointed at none (reply_to set to null) too."""
    a = machine(tmp_path, "a")

    async def main() -> None:
        async with served(root, "bob", a) as bob:
            first = (await call(bob, "msg_post", thread="t", content="ship it?"))["seq"]
            reply = await call(bob, "msg_post", thread="t", content="yes", reply_to=first)
        path = path_of(root, "t", reply["seq"])
        assert load(path)["sig"]["reply_to"] == load(path_of(root, "t", first))["id"]
        assert "reply_to" not in load(path_of(root, "t", first))["sig"]  # only on a reply
        put(path, {**load(path), "reply_to": None})
        async with served(root, "alice", a) as alice:
            got = {m["seq"]: m for m in (await call(alice, "msg_list", thread="t"))["messages"]}
            assert states(got) == {first: "valid", reply["seq"]: "invalid"}
            assert warned(got[reply["seq"]])

    anyio.run(main)


def test_a_message_made_a_reply_by_hand_is_invalid(root: Path, tmp_path: Path) -> None:
    """docs/signing.md: the signature covers the id of the message it answers (none, for a
    message that answers nothing); guarantees.md: a reply pointed elsewhere is invalid. A
    standalone "yes" made by hand to answer "Shall we drop the database?" changes what it
    says: it must not read valid, and `mailslot verify` must fail."""
    a = machine(tmp_path, "a")
    mailslot(root, a, "key", "ana")
    mailslot(root, a, "post", "t", "Shall we drop the production database?", "--as", "carl")
    mailslot(root, a, "post", "t", "Shall we ship on Friday?", "--as", "carl")
    mailslot(root, a, "post", "t", "yes", "--as", "ana", "--reply-to", "2")
    mailslot(root, a, "post", "t", "yes", "--as", "ana")
    assert states(read_json(root, a, "t")) == {1: "unsigned", 2: "unsigned", 3: "valid",
                                               4: "valid"}  # fmt: skip
    path = path_of(root, "t", 4)
    put(path, {**load(path), "reply_to": 1})
    assert states(read_json(root, a, "t"))[4] == "invalid"
    assert mailslot(root, a, "verify", ok=False).returncode == 1


# ---------------------------------------------------------------- every read path is marked


def test_search_and_a_claimed_task_carry_signed(root: Path, tmp_path: Path) -> None:
    """docs/signing.md: every message the tools return (msg_search, the task task_claim hands
    out) carries `signed`, and `warning` when it is invalid."""
    a = machine(tmp_path, "a")

    async def main() -> None:
        async with served(root, "bob", a) as bob:
            task = await call(bob, "msg_post", thread="t", type="task",
                              content="port the zebra parser")  # fmt: skip
            note = await call(bob, "msg_post", thread="t", content="the zebra parser is slow")
        path = path_of(root, "t", note["seq"])
        put(path, {**load(path), "content": "the zebra parser is fine, skip review"})
        async with served(root, "alice", a) as alice:
            found = await call(alice, "msg_search", query="zebra")
            hits = {h["seq"]: h for h in found["hits"]}
            assert {s: h.get("signed") for s, h in hits.items()} == {
                task["seq"]: "valid",
                note["seq"]: "invalid",
            }
            assert warned(hits[note["seq"]]) and "warning" not in hits[task["seq"]]
            claimed = await call(alice, "task_claim", thread="t")
            assert claimed["claimed"] is True and claimed["seq"] == task["seq"]
            assert claimed["message"]["signed"] == "valid", claimed

    anyio.run(main)


def test_the_commands_json_carries_signed(root: Path, tmp_path: Path) -> None:
    """docs/signing.md: the command's `--json` carries `signed`: read, wait, tail, search."""
    a, b = machine(tmp_path, "a"), machine(tmp_path, "b")
    mailslot(root, a, "key", "ana")
    mailslot(root, a, "post", "t", "kiwi from ana", "--as", "ana")
    mailslot(root, b, "post", "t", "kiwi from ben", "--as", "ben")
    want = {1: "valid", 2: "unsigned"}
    assert states(read_json(root, a, "t")) == want
    waited = json.loads(mailslot(root, a, "wait", "t", "--after", "0", "--timeout", "5",
                                 "--json").stdout)  # fmt: skip
    assert {m["seq"]: m.get("signed") for m in waited["messages"]} == want
    tail = mailslot(root, a, "tail", "t", "--json").stdout.splitlines()
    assert {m["seq"]: m.get("signed") for m in map(json.loads, tail)} == want
    found = json.loads(mailslot(root, a, "search", "kiwi", "--json").stdout)
    assert {h["seq"]: h.get("signed") for h in found["hits"]} == want


def test_every_read_of_the_library_marks_signed(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mailbox.py: every message Mailbox's reads return carries `signed` (docs/api.md lists
    them): read, get, wait, wait_async, search."""
    a = machine(tmp_path, "a")
    mailslot(root, a, "key", "ana")
    mailslot(root, a, "post", "t", "quokka from ana", "--as", "ana")
    mailslot(root, a, "post", "t", "quokka from carl", "--as", "carl")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(a))
    want = {1: "valid", 2: "unsigned"}
    with Mailbox(root) as box:
        assert {m.seq: m.signed for m in box.read("t").messages} == want
        assert {s: box.get("t", s).signed for s in want} == want
        assert {m.seq: m.signed for m in box.wait("t", 0, timeout=5).messages} == want
        waited = anyio.run(lambda: box.wait_async("t", 0, timeout=5))
        assert {m.seq: m.signed for m in waited.messages} == want
        found = box.search("quokka")
        assert {h.message.seq: h.message.signed for h in found.hits} == want


def test_export_json_carries_signed(root: Path, tmp_path: Path) -> None:
    """docs/signing.md: the command's `--json` carries `signed`: `mailslot export --json` too
    (it listed box.messages(), which is not marked, until e930d80)."""
    a = machine(tmp_path, "a")
    mailslot(root, a, "key", "ana")
    mailslot(root, a, "post", "t", "exported", "--as", "ana")
    doc = json.loads(mailslot(root, a, "export", "t", "--json").stdout)
    assert [m.get("signed") for m in doc["messages"]] == ["valid"]


# ---------------------------------------------------------------- the terminal's badges


def test_read_shows_each_badge_beside_the_sender(root: Path, tmp_path: Path) -> None:
    """docs/command.md: `mailslot read` shows `✓ signed`, `✗ INVALID SIGNATURE`,
    `? unknown key` or `unsigned` beside the sender."""
    a, b = machine(tmp_path, "a"), machine(tmp_path, "b")
    own_fingerprint(root, a, "ana")
    mailslot(root, a, "post", "t", "one", "--as", "ana")  # valid
    mailslot(root, a, "post", "t", "two", "--as", "ana")  # edited below: invalid
    mailslot(root, a, "post", "t", "three", "--as", "carl")  # unsigned
    assert states(read_json(root, a, "t")) == {1: "valid", 2: "valid", 3: "unsigned"}  # pinned
    own_fingerprint(root, b, "ana")  # a key ana's card gains later, on machine b
    mailslot(root, b, "post", "t", "four", "--as", "ana")  # unknown key on machine a
    path = path_of(root, "t", 2)
    put(path, {**load(path), "content": "two, edited"})
    text = mailslot(root, a, "read", "t", env={**os.environ, "NO_COLOR": "1"}).stdout
    heads = {int(m[1]): m[0] for m in re.finditer(r"^#(\d+) .*$", text, re.M)}
    badges = {1: "ana ✓ signed", 2: "ana ✗ INVALID SIGNATURE", 3: "carl unsigned",
              4: "ana ? unknown key"}  # fmt: skip
    for seq, badge in badges.items():
        assert f"#{seq} {badge}" in heads[seq], (seq, text)


# ---------------------------------------------------------------- pins: per machine, per mailbox


def test_pins_are_per_mailbox_and_the_same_mailbox_by_another_path(
    root: Path, tmp_path: Path
) -> None:
    """docs/signing.md: pins live in pins/<mailbox>/<name>.json. Two mailboxes each with a
    'bob' of its own (keys of different machines) are both valid on one reader; and the same
    mailbox reached through a symlink keeps what was pinned (a key its card gained later is
    still unknown there, not pinned as a first sight)."""
    reader, a, b, later = (machine(tmp_path, n) for n in ("r", "a", "b", "later"))
    with Mailbox.init(tmp_path / "other", fsync=False) as other:
        other.create_thread("t", creator="carl")
    for box, config in ((root, a), (other.root, b)):
        own_fingerprint(box, config, "bob")
        mailslot(box, config, "post", "t", "bob here", "--as", "bob")
    assert states(read_json(root, reader, "t")) == {1: "valid"}
    assert states(read_json(other.root, reader, "t")) == {1: "valid"}

    fp = own_fingerprint(root, later, "bob")
    mailslot(root, later, "post", "t", "bob, from a new machine", "--as", "bob")
    assert len(card(root, "bob")["keys"]) == 2
    link = tmp_path / "link"
    link.symlink_to(root)
    for where in (root, link):
        assert states(read_json(where, reader, "t")) == {1: "valid", 2: "unknown key"}, where
    mailslot(link, reader, "key", "bob", "--trust", fp)
    assert states(read_json(root, reader, "t")) == {1: "valid", 2: "valid"}


def test_verify_since_counts_a_key_accepted_here(git: dict[str, str], tmp_path: Path) -> None:
    """docs/signing.md: `verify --since REV` trusts the keys the cards held at REV *plus what
    this machine pinned*: a key alice's card gained after REV, accepted here on purpose with
    `mailslot key alice --trust`, is valid, and --strict passes; on a machine that did not
    accept it, it is an unknown key and --strict fails."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git_init(git, repo, "carol")
    a, b, ci = machine(tmp_path, "a"), machine(tmp_path, "b"), machine(tmp_path, "ci")
    with Mailbox.init(repo / ".mailslot", fsync=False) as box:
        box.create_thread("t", creator="carol")
        root = box.root
    own_fingerprint(root, a, "alice")
    mailslot(root, a, "post", "t", "from alice's first machine", "--as", "alice", env=git)
    run_git(git, repo, "add", "-A")
    run_git(git, repo, "commit", "-q", "-m", "alice's first key")
    rev = run_git(git, repo, "rev-parse", "HEAD").strip()
    fp = own_fingerprint(root, b, "alice")  # her second machine: a key the card gains
    mailslot(root, b, "post", "t", "from alice's second machine", "--as", "alice", env=git)
    run_git(git, repo, "add", "-A")
    run_git(git, repo, "commit", "-q", "-m", "alice's second key")
    mailslot(root, a, "key", "alice", "--trust", fp, env=git)  # accepted on machine a
    done = mailslot(root, a, "verify", "--since", rev, "--strict", env=git, ok=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == (
        "checked 1 message: 1 valid, 0 invalid, 0 with an unknown key, 0 unsigned"
    )
    other = mailslot(root, ci, "verify", "--since", rev, "--strict", env=git, ok=False)
    assert other.returncode == 1 and "(#2 from alice): unknown key" in other.stdout


def test_verify_since_checks_a_message_file_that_appeared_uncommitted(
    git: dict[str, str], tmp_path: Path
) -> None:
    """docs/signing.md: `verify --since REV` checks the message files that changed *or
    appeared* since REV: one not committed yet (a CI job's work tree, a hand-made file) too."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git_init(git, repo, "carol")
    a = machine(tmp_path, "a")
    with Mailbox.init(repo / ".mailslot", fsync=False) as box:
        box.create_thread("t", creator="carol")
        root = box.root
    own_fingerprint(root, a, "alice")
    mailslot(root, a, "post", "t", "the build is green", "--as", "alice", env=git)
    run_git(git, repo, "add", "-A")
    run_git(git, repo, "commit", "-q", "-m", "the transcript")
    forged = load(path_of(root, "t", 1))
    put(path_of(root, "t", 2), {**forged, "id": "f" * 32, "content": "ship without review"})
    assert "?? .mailslot/threads/t/000002.json" in run_git(
        git, repo, "status", "--porcelain", "-uall"
    )
    done = mailslot(root, a, "verify", "--since", "HEAD", env=git, ok=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith("threads/t/000002.json (#2 from alice): invalid: ")
    assert done.stdout.splitlines()[-1] == (
        "checked 1 message: 0 valid, 1 invalid, 0 with an unknown key, 0 unsigned"
    )


# ---------------------------------------------------------------- mailslot key


def test_key_without_a_name_is_for_who_you_post_as(root: Path, tmp_path: Path) -> None:
    """docs/signing.md: `mailslot key` makes the key of the name you post as: `--as`,
    `$MAILSLOT_AGENT`, else your user name."""
    a = machine(tmp_path, "a")

    def key(env: dict[str, str]) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "mailslot", "key", "--json", "--root", str(root)],
            capture_output=True, text=True, timeout=120, check=False,
            env={**env, "XDG_CONFIG_HOME": str(a)},
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return dict(json.loads(done.stdout))

    plain = {k: v for k, v in os.environ.items() if k != "MAILSLOT_AGENT"}
    assert key({**plain, "MAILSLOT_AGENT": "erin"})["name"] == "erin"
    assert card(root, "erin")["person"] is True
    me = key(plain)["name"]
    assert me in (getpass.getuser(), re.sub(r"[^a-z0-9_-]+", "-", getpass.getuser().lower()))
    assert (a / "mailslot" / "keys" / me).exists()


def test_a_person_with_a_key_on_a_second_machine_stays_a_person(root: Path, tmp_path: Path) -> None:
    """docs/signing.md: `mailslot key` puts your key on a person's card (`"person": true`: you
    stay a person); the same person making a key on another machine adds it to that card, and
    the card stays a person's (for the loop guard too)."""
    a, b = machine(tmp_path, "a"), machine(tmp_path, "b")
    own_fingerprint(root, a, "ana")
    assert card(root, "ana")["person"] is True
    fp = own_fingerprint(root, b, "ana")
    doc = card(root, "ana")
    assert len(doc["keys"]) == 2 and doc.get("person") is True, doc
    rows = json.loads(mailslot(root, b, "key", "--list", "--json").stdout)["keys"]
    assert [r["person"] for r in rows if r["fingerprint"] == fp] == [True]


def test_a_post_as_a_served_agent_on_its_machine_signs_as_it(root: Path, tmp_path: Path) -> None:
    """docs/signing.md: the same user on the same machine is the same signer: `mailslot post
    --as bob` on bob's machine signs with the key bob's server made there (valid); on
    another machine, with no key of bob's, it is unsigned."""
    a, b = machine(tmp_path, "a"), machine(tmp_path, "b")

    async def main() -> None:
        async with served(root, "bob", a) as bob:
            await call(bob, "msg_post", thread="t", content="from bob's server")

    anyio.run(main)
    mailslot(root, a, "post", "t", "from bob's shell", "--as", "bob")
    mailslot(root, b, "post", "t", "from someone else's machine", "--as", "bob")
    assert load(path_of(root, "t", 2))["sig"]["key"] == load(path_of(root, "t", 1))["sig"]["key"]
    assert states(read_json(root, b, "t")) == {1: "valid", 2: "valid", 3: "unsigned"}


def test_key_list_shows_each_keys_host_and_time(root: Path, tmp_path: Path) -> None:
    a = machine(tmp_path, "a")
    own_fingerprint(root, a, "ana")
    [entry] = card(root, "ana")["keys"]
    listing = mailslot(root, a, "key", "--list").stdout
    [row] = [line for line in listing.splitlines() if line.startswith("ana ")]
    assert entry["host"] in row and entry["added_at"] in row, listing


def test_trusting_a_key_first_keeps_the_cards_first_sight(root: Path, tmp_path: Path) -> None:
    """docs/signing.md: the first time this machine checks a message from someone, the keys
    on their card are pinned; accepting a key on purpose adds it. A machine whose first act is
    to accept bob's second key (a teammate sent the fingerprint) must still trust his first."""
    a, b, fresh = machine(tmp_path, "a"), machine(tmp_path, "b"), machine(tmp_path, "fresh")
    own_fingerprint(root, a, "bob")
    mailslot(root, a, "post", "t", "from bob's first machine", "--as", "bob")
    fp = own_fingerprint(root, b, "bob")
    mailslot(root, b, "post", "t", "from bob's second machine", "--as", "bob")
    assert states(read_json(root, machine(tmp_path, "other"), "t")) == {1: "valid", 2: "valid"}
    mailslot(root, fresh, "key", "bob", "--trust", fp)
    assert states(read_json(root, fresh, "t")) == {1: "valid", 2: "valid"}
