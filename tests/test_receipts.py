"""Receipts (issue 31): how far each recipient has got with a message, seen by its sender.

stored -> reported (a hook or a channel push told the agent) -> shown (a wait or read returned
it) -> answered (a reply from them). Real `mailslot serve` processes through the MCP client,
the real `mailslot hook` command, a second sshfs mount of the same folder, and two clones that
meet only through `mailslot sync` and a bare git remote.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import agent, call, until_async
from test_channels import channel_agent
from test_hooks import clean_env, recorded
from test_netfs import mounts  # noqa: F401  (a fixture: two sshfs mounts of one folder)
from test_sync import make_clone, remote, sync  # noqa: F401  (remote: a fixture)
from test_sync_coordination import daemons, start_sync  # noqa: F401  (daemons: a fixture)

from mailslot import Mailbox
from mailslot.agent.receipts import Receipt, Receipts, Sent, Stamps, ago
from mailslot.store.errors import MailslotError


@pytest.fixture
def box(tmp_path: Path) -> Mailbox:
    b = Mailbox.init(tmp_path / "box")
    for name in ("alice", "bob", "carol"):
        b.agents.register(name)
    b.create_thread("t", creator="alice")
    return b


def states(root: Path, seq: int, thread: str = "t") -> dict[str, str]:
    """Return recipient -> state of message seq, read afresh from the folder."""
    with Mailbox(root) as b:
        return {r.agent: r.state for r in Receipts(b).of(b.get(thread, seq))}


async def reach(root: Path, seq: int, want: dict[str, str], thread: str = "t") -> None:
    """Wait until the receipts of message seq are want (a server writes what a wait or read
    showed at most a second later)."""

    async def there() -> bool:
        return await anyio.to_thread.run_sync(states, root, seq, thread) == want

    await until_async(f"receipts of #{seq} at {want}", there)


def hook(root: Path, agent_name: str) -> str:
    """Run `mailslot hook session-start` for agent as Claude Code does; return its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "mailslot", "hook", "session-start", "--client", "claude-code",
         "--as", agent_name, "--root", str(root)],
        input=recorded("claude-code", "session-start", root.parent), capture_output=True,
        text=True, timeout=60, env=clean_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_receipt_moves_stored_reported_shown_answered_for_each_recipient(box: Mailbox) -> None:
    """alice asks bob and carol; bob is told by a hook, shown it by his wait, and answers;
    carol never looks. alice sees each step where she looks anyway: thread_get, msg_list,
    and her next wait (only when they moved)."""
    root = box.root

    async def main() -> None:
        async with agent(root, "alice") as a, agent(root, "bob") as b:
            posted = await call(a, "msg_post", thread="t", content="review?", to=["bob", "carol"])
            seq = posted["seq"]
            stored = (root / "threads" / "t" / f"{seq:06d}.json").read_bytes()
            got = await call(a, "thread_get", thread="t")
            assert got["receipts"] == {f"t#{seq}": {"bob": "stored", "carol": "stored"}}
            first = await call(a, "msg_wait", thread="t", timeout_s=0.1)
            assert first["receipts"] == {f"t#{seq}": {"bob": "stored", "carol": "stored"}}
            again = await call(a, "msg_wait", thread="t", timeout_s=0.1)
            assert "receipts" not in again, "told twice of receipts that did not move"

            assert "review?" in await anyio.to_thread.run_sync(hook, root, "bob")
            assert states(root, seq) == {"bob": "reported", "carol": "stored"}

            w = await call(b, "msg_wait", timeout_s=10)
            assert [m["seq"] for m in w["messages"]] == [seq]
            await reach(root, seq, {"bob": "shown", "carol": "stored"})
            page = await call(a, "msg_list", thread="t")
            mine = page["messages"][0]
            assert re.fullmatch(r"shown (just now|\d+ s ago)", mine["receipts"]["bob"]), mine
            assert mine["receipts"]["carol"] == "stored"
            moved = await call(a, "msg_wait", timeout_s=0.1)  # her inbox wait says so too
            assert moved["receipts"][f"t#{seq}"]["bob"].startswith("shown"), moved

            await call(b, "msg_post", thread="t", content="lgtm", reply_to=seq, to=["alice"])
            assert states(root, seq) == {"bob": "answered", "carol": "stored"}
            page = await call(a, "msg_list", thread="t")
            assert page["messages"][0]["receipts"] == {"bob": "answered", "carol": "stored"}
            assert (root / "threads" / "t" / f"{seq:06d}.json").read_bytes() == stored
            assert "receipts" not in page["messages"][1], "bob's reply is not alice's message"

    anyio.run(main)


def test_thread_get_shows_the_last_three_of_yours_to_someone(box: Mailbox) -> None:
    """thread_get: the receipts of your last three messages to someone, none of others'."""
    for i in range(4):
        box.publish("t", f"ask {i}", sender="alice", to=["bob"])
    box.publish("t", "to nobody", sender="alice")
    box.publish("t", "bob to alice", sender="bob", to=["alice"])

    async def main() -> dict[str, Any]:
        async with agent(box.root, "alice") as a:
            await call(a, "agent_register")
            return dict(await call(a, "thread_get", thread="t"))

    got = anyio.run(main)
    assert got["receipts"] == {f"t#{s}": {"bob": "stored"} for s in (2, 3, 4)}, got


def test_a_thread_read_or_wait_shows_and_a_post_alone_does_not(box: Mailbox) -> None:
    """bob's msg_list of the thread shows alice's message to him; carol's thread wait shows
    hers; bob posting in the thread shows him nothing."""
    root = box.root
    to_bob = box.publish("t", "for bob", sender="alice", to=["bob"]).seq
    to_carol = box.publish("t", "for carol", sender="alice", to=["carol"]).seq

    async def main() -> None:
        async with agent(root, "bob") as b, agent(root, "carol") as c:
            await call(b, "msg_post", thread="t", content="hello all")
            assert states(root, to_bob) == {"bob": "stored"}
            await call(b, "msg_list", thread="t")
            await reach(root, to_bob, {"bob": "shown"})
            assert states(root, to_carol) == {"carol": "stored"}  # a read by bob is bob's
            got = await call(c, "msg_wait", thread="t", after_seq=0, timeout_s=5)
            assert to_carol in [m["seq"] for m in got["messages"]]
            await reach(root, to_carol, {"carol": "shown"})

    anyio.run(main)


def test_the_command_shows_receipts_under_a_message_to_someone(box: Mailbox) -> None:
    """`mailslot read` prints a line of receipts under each message with recipients (what
    bob's server, another process, showed him), and --json carries them per recipient."""
    root = box.root
    seq = box.publish("t", "both of you", sender="alice", to=["bob", "carol"]).seq
    box.publish("t", "to nobody", sender="alice")

    async def main() -> None:
        async with agent(root, "bob") as b:
            await call(b, "msg_wait", timeout_s=10)
            await reach(root, seq, {"bob": "shown", "carol": "stored"})

    anyio.run(main)
    argv = [sys.executable, "-m", "mailslot", "read", "t", "--root", str(root)]
    text = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    lines = [line.strip() for line in text.splitlines()]
    assert re.fullmatch(r"↳ bob: shown (just now|\d+ s ago) · carol: stored", lines[2]), lines
    assert sum(line.startswith("↳") for line in lines) == 1, "a message to nobody has none"
    doc = json.loads(subprocess.run([*argv, "--json"], capture_output=True, text=True,
                                    timeout=60, check=True).stdout)  # fmt: skip
    first, second = doc["messages"]
    assert first["receipts"]["carol"] == {"state": "stored", "at": None}
    assert first["receipts"]["bob"]["state"] == "shown"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first["receipts"]["bob"]["at"])
    assert "receipts" not in second


def test_a_channel_push_reports(box: Mailbox) -> None:
    """carol's server pushes alice's message to her idle client: reported, not shown."""
    root = box.root

    async def main() -> None:
        async with channel_agent(root, "carol") as (_, ext):
            await until_async("carol's server up", lambda: _online(root, "carol"))
            seq = box.publish("t", "ping", sender="alice", to=["carol"]).seq
            await until_async("the push", lambda: _pushed(ext))

            async def reported() -> bool:
                return states(root, seq) == {"carol": "reported"}

            await until_async("carol's receipt says reported", reported)

    anyio.run(main)


async def _online(root: Path, name: str) -> bool:
    return Mailbox(root).agents.presence(name).status != "offline"


async def _pushed(ext: Any) -> bool:
    return bool(ext.got)


def test_waiting_until_a_message_is_read(box: Mailbox) -> None:
    """msg_wait(thread, until_read=seq) returns "read" once every recipient was shown it by
    another process, "timeout" while one has not, and says when there is nothing to wait for."""
    root = box.root

    async def main() -> None:
        async with agent(root, "alice") as a, agent(root, "bob") as b:
            seq = (await call(a, "msg_post", thread="t", content="q", to=["bob"]))["seq"]
            early = await call(a, "msg_wait", thread="t", until_read=seq, timeout_s=0.5)
            assert early["status"] == "timeout" and early["receipts"] == {"bob": "stored"}
            assert "until_read=" in early["hint"]
            async with anyio.create_task_group() as tg:
                done: dict[str, Any] = {}

                async def wait() -> None:
                    done.update(await call(a, "msg_wait", thread="t", until_read=seq,
                                           timeout_s=60))  # fmt: skip

                tg.start_soon(wait)
                await anyio.sleep(0.5)
                assert not done, "returned before bob read it"
                await call(b, "msg_wait", timeout_s=10)
            assert done["status"] == "read", done
            assert done["receipts"]["bob"].startswith("shown"), done
            alone = (await call(a, "msg_post", thread="t", content="note to self"))["seq"]
            got = await call(a, "msg_wait", thread="t", until_read=alone, timeout_s=5)
            assert got["status"] == "read" and "no recipients" in got["note"], got
            assert got["waited_s"] < 5
            with pytest.raises(Exception, match="until_read needs a thread"):
                await call(a, "msg_wait", until_read=seq, timeout_s=1)

    anyio.run(main)


def test_broken_receipt_files_read_as_not_yet_and_nothing_fails(box: Mailbox) -> None:
    """A cursor, a notices file or a landed receipts file that is empty, half-written or
    not ours: the receipt says no more than it knows, and nothing raises."""
    seq = box.publish("t", "q", sender="alice", to=["bob"]).seq
    state = box.root / ".state"
    for path, text in [
        (state / "cursors" / "bob" / "t.json", '{"incarnation": "x", "shown_at": {"a": "b"'),
        (state / "notified" / "bob.json", '{"reported": {"t": "many"}, "reported_at": 7}'),
        (state / "receipts" / "laptop.json", '{"agents": {"bob": ["t"]}}'),
        (state / "receipts" / "ci.json", ""),
    ]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert states(box.root, seq) == {"bob": "stored"}
    (state / "cursors" / "bob" / "t.json").write_text("[]")
    (state / "notified" / "bob.json").write_text(json.dumps({"reported": {"t": seq}}))
    assert states(box.root, seq) == {"bob": "reported"}
    os.remove(box.root / "threads" / "t" / "thread.json")
    try:
        got = states(box.root, seq)
    except MailslotError:
        return  # the thread itself is unreadable now: said so by the read, not by receipts
    assert got == {"bob": "reported"}


def test_stamps_say_when_a_file_receipts_come_from_changed(box: Mailbox) -> None:
    """Stamps (what the console's receipts event, sync's heartbeat and waits ask before reading):
    a position, a notice, a landed receipt or a message in the thread is a change; nothing
    written is none; a stamp as new as the last look is not trusted (a coarse clock)."""
    root, scope = box.root, (["bob"], ["t"])
    box.save_cursor("bob", "t", {"incarnation": box.incarnation("t")})
    box.save_cursor("carol", "t", {"incarnation": box.incarnation("t")})
    for name in ("notified", "receipts"):
        (root / ".state" / name).mkdir(exist_ok=True)

    def settled(stamps: Stamps, *asked: Any) -> bool:
        """Age every stamp a minute (as after a quiet minute); return what a second ask says."""
        old = time.time() - 60
        for path in [
            root / "threads" / "t",
            *(root / ".state").glob("*/*"),
            *(root / ".state").glob("*"),
        ]:
            os.utime(path, (old, old), follow_symlinks=False)
        stamps.changed(*asked)
        return stamps.changed(*asked)

    def write(path: Path) -> None:
        path.with_suffix(".tmp").write_text("{}")
        os.replace(path.with_suffix(".tmp"), path)  # as every .state/ file is written

    stamps = Stamps(root)
    assert stamps.changed(*scope), "the first ask"
    assert not settled(stamps, *scope)
    box.save_cursor("bob", "t", {"incarnation": box.incarnation("t"), "read": 1})
    assert stamps.changed(*scope)
    assert stamps.changed(*scope), "a stamp as new as the last look may hide a second write"
    assert not settled(stamps, *scope)
    box.save_cursor("carol", "t", {"incarnation": box.incarnation("t"), "read": 1})
    assert not stamps.changed(*scope), "carol is not asked about"
    box.post("t", "an answer", sender="bob")
    assert stamps.changed(*scope)
    assert not settled(stamps, *scope)
    write(root / ".state" / "notified" / "bob.json")
    assert stamps.changed(*scope)
    assert not settled(stamps, *scope)
    write(root / ".state" / "receipts" / "far.json")
    assert stamps.changed(*scope)

    everyone, here = Stamps(root), Stamps(root, landed=False)
    assert not settled(everyone) and not settled(here, ["bob"])
    write(root / ".state" / "receipts" / "far.json")
    assert everyone.changed() and not here.changed(["bob"]), "landed=False: not landed ones"
    assert not settled(everyone)
    box.save_cursor("carol", "t", {"incarnation": box.incarnation("t"), "read": 2})
    assert everyone.changed(), "None: every agent"
    assert not settled(everyone)
    box.save_cursor("dave", "t", {"incarnation": box.incarnation("t")})
    assert everyone.changed(), "an agent's first position"


def test_a_wait_with_nothing_new_reads_no_receipt_file(box: Mailbox) -> None:
    """Sent.texts (after every msg_wait) reads positions only when a stamp of the files they
    come from moved: bob's position changed in place (no stamp moves; nothing of ours writes
    so) is not read until its folder's stamp moves, as a position written does move it."""
    root = box.root
    m = box.get("t", box.post("t", "review?", sender="alice", to=["bob"]))
    box.save_cursor("bob", "t", {"incarnation": box.incarnation("t")})
    sent = Sent(box)
    sent.add(m)
    assert sent.texts("t") == {f"t#{m.seq}": {"bob": "stored"}}
    old = time.time() - 60
    for path in (root / "threads" / "t", root / ".state" / "cursors" / "bob"):
        os.utime(path, (old, old))  # a quiet minute: stamps are trusted
    assert sent.texts("t") == {}
    assert sent.texts("t") == {}
    position = root / ".state" / "cursors" / "bob" / "t.json"
    doc = {"incarnation": box.incarnation("t"), "shown_at": {m.id: time.time()}}
    position.write_text(json.dumps(doc))  # in place: its folder's stamp stays
    assert sent.texts("t") == {}, "read although no stamp moved"
    os.utime(root / ".state" / "cursors" / "bob")  # what a position written by replace does
    assert sent.texts("t") == {f"t#{m.seq}": {"bob": "shown just now"}}
    assert sent.texts(None) == {}, "told once"
    sent.add(box.get("t", box.post("t", "and this?", sender="alice", to=["bob"])))
    assert list(sent.texts(None)) == [f"t#{m.seq + 1}"], "a message newly followed is told"


def test_a_receipt_reads_as_a_person_says_it() -> None:
    assert [ago(s) for s in (0.2, 40, 125, 3 * 3600 + 5, 2 * 86400)] == [
        "just now", "40 s ago", "2 min ago", "3 h ago", "2 days ago"]  # fmt: skip
    assert Receipt("bob", "shown", 1000.0).text(1120.0) == "shown 2 min ago"
    assert Receipt("bob", "answered").text(5.0) == "answered"
    assert Receipt("bob", "shown").reached("reported")
    assert not Receipt("bob", "reported").reached("shown")


# ---------------------------------------------------------------- across mounts and machines


def test_a_receipt_is_true_on_a_second_mount(mounts: tuple[Path, Path]) -> None:  # noqa: F811
    """bob's server works through one sshfs mount, alice reads receipts through the other."""
    a, b = mounts
    with Mailbox.init(a / "receipts") as box:
        for name in ("alice", "bob"):
            box.agents.register(name)
        box.create_thread("t", creator="alice")
        seq = box.publish("t", "over the wire", sender="alice", to=["bob"]).seq

    async def main() -> None:
        async with agent(b / "receipts", "bob") as bob:
            got = await call(bob, "msg_wait", timeout_s=10)
            assert [m["seq"] for m in got["messages"]] == [seq]

            async def shown() -> bool:
                return states(a / "receipts", seq) == {"bob": "shown"}

            await until_async("bob's receipt seen through the other mount", shown)

    anyio.run(main)


def two_clones(tmp_path: Path, git: dict[str, str], bare: Path) -> tuple[Path, Path, int]:
    """Return clones a and b of bare, both synced, with alice's message to bob (its seq)."""
    a = make_clone(git, bare, tmp_path / "a", "alice")
    b = make_clone(git, bare, tmp_path / "b", "bob")
    with Mailbox(a) as box:
        box.agents.register("alice")
        box.agents.register("bob")
        box.create_thread("t", creator="alice")
        seq = box.publish("t", "from a", sender="alice", to=["bob"]).seq
    sync(git, a)
    sync(git, b)
    return a, b, seq


def test_a_receipt_travels_between_clones_through_sync(
    tmp_path: Path,
    git: dict[str, str],
    remote: Path,  # noqa: F811
) -> None:
    """alice posts on clone a; bob's server on clone b is shown it; after b's and a's sync
    rounds, alice's receipt on a says shown, and a later answer says answered."""
    a, b, seq = two_clones(tmp_path, git, remote)

    async def main() -> None:
        async with agent(b, "bob") as bob:
            got = await call(bob, "msg_wait", timeout_s=10)
            assert [m["seq"] for m in got["messages"]] == [seq]
            assert states(a, seq) == {"bob": "stored"}  # nothing crossed yet
            await anyio.to_thread.run_sync(sync, git, b)  # the heartbeat carries receipts
            await anyio.to_thread.run_sync(sync, git, a)  # and they land on a
            assert states(a, seq) == {"bob": "shown"}
            landed = json.loads(next((a / ".state" / "receipts").glob("*.json")).read_text())
            assert "bob" in landed["agents"], landed
            await call(bob, "msg_post", thread="t", content="done", reply_to=seq)
            await anyio.to_thread.run_sync(sync, git, b)
        await anyio.to_thread.run_sync(sync, git, a)
        assert states(a, seq) == {"bob": "answered"}

    anyio.run(main)


def test_running_syncs_carry_a_receipt_that_moved_long_before_the_next_heartbeat(
    tmp_path: Path,
    git: dict[str, str],
    remote: Path,  # noqa: F811
    daemons: dict[Path, subprocess.Popen[str]],  # noqa: F811
) -> None:
    """With heartbeats an hour apart, a receipt that moved still reaches the other clone: a
    running sync pushes moved receipts on their own (at most every 10 s)."""
    a = make_clone(git, remote, tmp_path / "a", "alice")
    b = make_clone(git, remote, tmp_path / "b", "bob")
    for root in (a, b):
        doc = json.loads((root / "mailslot.json").read_text())
        doc["sync"] = {"heartbeat_s": 3600, "max_look_s": 1, "look_s": 0.5}
        (root / "mailslot.json").write_text(json.dumps(doc))
    with Mailbox(a) as box:
        box.agents.register("bob")
        box.create_thread("t", creator="alice")
        seq = box.publish("t", "from a", sender="alice", to=["bob"]).seq
    sync(git, a)

    async def main() -> None:
        async with agent(b, "bob") as bob:
            start_sync(git, b, daemons)
            start_sync(git, a, daemons)

            async def arrived() -> bool:
                return Mailbox(b).head("t") >= seq

            await until_async("alice's message on b", arrived, 60)
            await anyio.sleep(1)  # the heartbeat of bob coming goes out first, without it
            got = await call(bob, "msg_wait", timeout_s=10)
            assert [m["seq"] for m in got["messages"]] == [seq]

            async def shown() -> bool:
                return await anyio.to_thread.run_sync(states, a, seq) == {"bob": "shown"}

            await until_async("bob's receipt on a, an hour before the next heartbeat", shown, 90)

    anyio.run(main)
