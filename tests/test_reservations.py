"""File reservations: raced by real processes, freed when holders die, through MCP and the command.

Each racing process reports when it believed it held what; the test checks those beliefs
against each other on the machine's monotonic clock, not only what the folder says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import pytest
from helpers import agent, call, until
from mcp import types
from test_netfs import mounts  # noqa: F401  (the sshfs fixture: two mounts of one export)

from mailslot import Mailbox
from mailslot.coordination.globs import overlaps
from mailslot.coordination.reservations import THREAD
from mailslot.store.errors import InvalidMessage, InvalidName
from mailslot.store.format import MESSAGE_KEYS, dumps, now_iso

RACER = """
import json, os, random, sys, time
from pathlib import Path
from mailslot import Mailbox
root, name, rounds, lock, go = sys.argv[1:]
box = Mailbox(root, lock=lock == "lock")
rng = random.Random(name)
overlapping = ["src/**", "src/a.py", "src/*.py", "src/**/*.py", "docs/", "docs/x.md", "*.md"]
print("ready", flush=True)
while not Path(go).exists():
    time.sleep(0.001)
held, granted = [], []
for r in range(int(rounds)):
    if r % 2:  # a disjoint round: every process its own folder
        paths = [f"{name}/r{r}/**"]
    else:
        paths = rng.sample(overlapping, 2)
    grant = box.reservations.reserve(paths, agent=name, pid=os.getpid())
    if grant.granted:
        start = time.monotonic()
        time.sleep(rng.random() * 0.01)
        end = time.monotonic()  # still held: the release below comes after
        box.reservations.release(paths, agent=name)
        held.append([paths, start, end])
    granted.append([r, grant.granted])
print(json.dumps({"held": held, "granted": granted}), flush=True)
"""


def race(roots: list[Path], go: Path, rounds: int, lock: str) -> None:
    """Race one process per root (roots may repeat) and check what each believed it held."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(r), f"w{i}", str(rounds), lock, str(go)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i, r in enumerate(roots)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    go.touch()
    reports = {f"w{i}": json.loads(p.communicate(timeout=240)[0]) for i, p in enumerate(procs)}
    spans = [(name, paths, s, e) for name, rep in reports.items() for paths, s, e in rep["held"]]
    for i, (a, pa, sa, ea) in enumerate(spans):
        for b, pb, sb, eb in spans[i + 1 :]:
            if a != b and sa < eb and sb < ea:  # held at the same moment...
                assert not any(overlaps(x, y) for x in pa for y in pb), (a, pa, b, pb)
    for name, rep in reports.items():  # ...and nobody competes for a folder of its own
        assert all(ok for r, ok in rep["granted"] if r % 2), name
    assert any(ok for rep in reports.values() for r, ok in rep["granted"] if r % 2 == 0)
    with Mailbox(roots[0]) as box:
        assert box.reservations.live() == []  # everyone released what it held


@pytest.mark.parametrize("lock", ["lock", "nolock"])
def test_racing_processes_never_both_hold_overlapping_paths(tmp_path: Path, lock: str) -> None:
    root = tmp_path / "box"
    Mailbox.init(root)
    race([root] * 8, tmp_path / "go", 30, lock)


def test_racing_on_two_sshfs_mounts_never_double_holds(
    mounts: tuple[Path, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    """4 processes on each of two mounts of one export, where locks do not exclude across
    mounts: the thread's order decides; then a holder on one mount is killed."""
    a, b = mounts
    Mailbox.init(a / "reservations")
    race([a / "reservations", b / "reservations"] * 4, tmp_path / "go", 10, "lock")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(a / "reservations")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        other = Mailbox(b / "reservations")
        assert not other.reservations.reserve(["src/db.py"], agent="bob", pid=os.getpid()).granted
    finally:
        holder.kill()
        holder.communicate()
    # On one machine the pid says at once; another machine waits out the heartbeat timeout.
    assert other.reservations.reserve(["src/db.py"], agent="bob", pid=os.getpid()).granted


HOLDER = """
import os, sys, time
from mailslot import Mailbox
box = Mailbox(sys.argv[1])
assert box.reservations.reserve(["src/**"], agent="alice", pid=os.getpid()).granted
print("held", flush=True)
time.sleep(120)
"""


def test_a_killed_holder_frees_its_paths_at_once(tmp_path: Path) -> None:
    box = Mailbox.init(tmp_path / "box")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert box.reservations.reserve(["src/store/**"], agent="alice", pid=holder.pid).granted
        refused = box.reservations.reserve(["src/store/db.py"], agent="bob", pid=os.getpid())
        assert not refused.granted and [h.holder for h in refused.conflicts] == ["alice"]
    finally:
        holder.kill()
        holder.wait()
    assert box.reservations.live() == []  # gone from the live view at once
    assert box.reservations.reserve(["src/store/db.py"], agent="bob", pid=os.getpid()).granted
    ended = [m for m in box.messages(THREAD) if "expire" in m.meta]
    assert len(ended) == 1 and ended[0].sender == "mailslot"
    assert f"pid {holder.pid}" in ended[0].content and "src/store/**" in ended[0].content


def test_a_silent_holder_loses_its_paths_after_the_ttl(tmp_path: Path) -> None:
    box = Mailbox.init(tmp_path / "box")
    assert box.reservations.reserve(
        ["a.txt"], agent="alice", ttl_s=1
    ).granted  # a person: no process
    assert not box.reservations.reserve(["a.txt"], agent="bob").granted
    until("the TTL ran out", lambda: box.reservations.live() == [], within=10)
    assert box.reservations.reserve(["a.txt"], agent="bob").granted
    assert box.reservations.reserve(
        ["a.txt"], agent="bob", ttl_s=600
    ).granted  # renewed by reserving again
    [held] = box.reservations.live()
    assert held.ttl_s == 600 and held.holder == "bob"


def test_shared_reservations_keep_out_only_exclusive_ones(tmp_path: Path) -> None:
    box = Mailbox.init(tmp_path / "box")
    assert box.reservations.reserve(["docs/"], agent="alice", exclusive=False).granted
    assert box.reservations.reserve(["docs/intro.md"], agent="bob", exclusive=False).granted
    refused = box.reservations.reserve(["docs/intro.md"], agent="carol")
    assert not refused.granted
    assert sorted(h.holder for h in refused.conflicts) == ["alice", "bob"]
    assert box.reservations.reserve(["src/"], agent="carol").granted
    assert not box.reservations.reserve(["src/x.py"], agent="alice", exclusive=False).granted


def test_all_or_nothing_and_clear_answers(tmp_path: Path) -> None:
    box = Mailbox.init(tmp_path / "box")
    assert box.reservations.reserve(["README.md"], agent="alice").granted
    refused = box.reservations.reserve(["docs/**", "README.md"], agent="bob")
    assert not refused.granted and [h.pattern for h in refused.conflicts] == ["README.md"]
    assert box.reservations.reserve(
        ["docs/guide.md"], agent="carol"
    ).granted  # bob got no part of it
    released, not_held = box.reservations.release(["README.md", "src/"], agent="alice")
    assert [h.pattern for h in released] == ["README.md"] and not_held == ["src/**"]
    assert box.reservations.release(agent="alice") == ([], [])
    whole = box.reservations.reserve(["**"], agent="dave")
    assert not whole.granted  # carol holds docs/guide.md
    box.reservations.release(agent="carol")
    whole = box.reservations.reserve(["."], agent="dave")
    assert whole.granted and whole.whole_repo and [h.pattern for h in whole.held] == ["**"]


@pytest.mark.parametrize(
    ("paths", "error"),
    [
        (["../secrets"], InvalidName),
        (["/etc/passwd"], InvalidName),
        (["src\\x.py"], InvalidName),
        (["a/**b"], InvalidName),
        ([""], InvalidName),
        ([], InvalidMessage),
        (["x"] * 0 + [f"f{i}" for i in range(101)], InvalidMessage),
        ([42], InvalidName),
    ],
)
def test_paths_that_leave_the_repository_are_refused(
    tmp_path: Path, paths: list[object], error: type[Exception]
) -> None:
    box = Mailbox.init(tmp_path / "box")
    with pytest.raises(error):
        box.reservations.reserve(paths, agent="alice")  # type: ignore[arg-type]
    assert box.reservations.live() == []


def test_reserve_and_release_through_mcp(tmp_path: Path) -> None:
    root = tmp_path / "box"
    Mailbox.init(root)

    async def main() -> None:
        async with agent(root, "alice") as alice, agent(root, "bob") as bob:
            got = await call(alice, "files_reserve", paths=["src/store/**"], reason="refactor")
            assert got["granted"] is True
            [held] = got["reserved"]
            assert (held["path"], held["holder"], held["reason"]) == (
                "src/store/**",
                "alice",
                "refactor",
            )
            assert "until" in held and "since" in held
            no = await call(bob, "files_reserve", paths=["src/store/db.py", "docs/"])
            assert no["granted"] is False and "reserved" not in no
            [c] = no["conflicts"]
            assert (c["path"], c["holder"], c["reason"]) == ("src/store/**", "alice", "refactor")
            assert "alice" in no["hint"]
            bad = await bob.call_tool("files_reserve", {"paths": ["../x"]})
            assert bad.is_error and isinstance(bad.content[0], types.TextContent)
            assert "leave the repository" in bad.content[0].text
            nothing = await call(bob, "files_release", paths=["src/store/**"])
            assert nothing["released"] == [] and nothing["not_held"] == ["src/store/**"]
            assert (await call(alice, "files_release"))["released"] == ["src/store/**"]
            assert (await call(bob, "files_reserve", paths=["src/store/db.py"]))["granted"]
        # bob's server has exited: its reservation ends with it
        with Mailbox(root) as box:
            assert box.reservations.live() == []

    anyio.run(main)


def run(root: Path, *args: str, who: str = "bob") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailslot", *args, "--root", str(root)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "MAILSLOT_AGENT": who},
    )  # fmt: skip


def test_the_commands(tmp_path: Path) -> None:
    root = tmp_path / "box"
    Mailbox.init(root)
    got = run(root, "reserve", "src/", "README.md", "--reason", "release prep", "--ttl", "900")
    assert got.returncode == 0 and "reserved src/**, README.md until" in got.stdout
    lost = run(root, "reserve", "src/cli.py", who="carol")
    assert lost.returncode == 1 and "refused: bob holds src/**" in lost.stderr
    assert "(release prep)" in lost.stderr
    table = run(root, "reservations").stdout
    assert "src/**" in table and "bob" in table and "release prep" in table
    doc = json.loads(run(root, "reservations", "--json").stdout)["reservations"]
    assert [(h["path"], h["holder"], h["exclusive"]) for h in doc] == [
        ("src/**", "bob", True), ("README.md", "bob", True)
    ]  # fmt: skip
    wrong = run(root, "release", "docs/", who="bob")
    assert wrong.returncode == 1 and "not yours: docs/**" in wrong.stderr
    assert run(root, "release", "--json").stdout.count("src/**") == 1
    assert run(root, "reservations").stdout.strip() == "no reservations"
    bad = run(root, "reserve", "../up")
    assert bad.returncode == 1 and "leave the repository" in bad.stderr


# ------------------------------------------------------- the fold of events as clones leave them

# (rule, the messages of the reservations thread in seq order as (sender, meta), what is held
# then as (holder, pattern, seq of its request)). Each row fails when its rule is broken.
# fmt: off
LEDGERS = [
    ("a release that names paths frees only the sender's own",
     [("alice", {"reserve": {"paths": ["docs/**"]}}), ("bob", {"reserve": {"paths": ["src/**"]}}),
      ("bob", {"release": {"paths": ["docs/**", "src/**"]}})],
     [("alice", "docs/**", 1)]),
    ("a release that names paths frees only those paths",
     [("bob", {"reserve": {"paths": ["src/**", "lib/**"]}}),
      ("bob", {"release": {"paths": ["src/**"]}})],
     [("bob", "lib/**", 1)]),
    ("a release of all frees only the sender's own",
     [("alice", {"reserve": {"paths": ["docs/**"]}}), ("bob", {"reserve": {"paths": ["src/**"]}}),
      ("bob", {"release": None})],
     [("alice", "docs/**", 1)]),
    ("of two overlapping requests the first by seq wins",
     [("bob", {"reserve": {"paths": ["src/**"]}}), ("alice", {"reserve": {"paths": ["src/a.py"]}})],
     [("bob", "src/**", 1)]),
    ("an expiry of an earlier request leaves the renewed one",
     [("bob", {"reserve": {"paths": ["src/**"]}}), ("bob", {"reserve": {"paths": ["src/**"]}}),
      ("mailslot", {"expire": {"reservation": 1, "holder": "bob"}})],
     [("bob", "src/**", 2)]),
    ("a release naming a holder frees that holder's, whoever writes it",
     [("bob", {"reserve": {"paths": ["src/**", "lib/**"]}}),
      ("dave", {"release": {"paths": ["src/**"], "holder": "bob"}})],
     [("bob", "lib/**", 1)]),
    ("a release naming a holder frees none of the sender's own",
     [("dave", {"reserve": {"paths": ["docs/**"]}}), ("bob", {"reserve": {"paths": ["src/**"]}}),
      ("dave", {"release": {"paths": None, "holder": "bob"}})],
     [("dave", "docs/**", 1)]),
    ("an expiry signed by an agent is not mailslot's",
     [("bob", {"reserve": {"paths": ["src/**"]}}),
      ("alice", {"expire": {"reservation": 1, "holder": "bob"}})],
     [("bob", "src/**", 1)]),
]
# fmt: on


@pytest.mark.parametrize(("rule", "events", "want"), LEDGERS, ids=[r for r, _, _ in LEDGERS])
def test_the_ledger_of_events_as_clones_leave_them(
    tmp_path: Path, rule: str, events: list[tuple[str, dict]], want: list[tuple]
) -> None:
    """Messages written straight into the thread's folder, as another machine's mailslot or a
    merge of clones leaves them, folded by a reader that took no part."""
    box = Mailbox.init(tmp_path / "box")
    assert box.create_thread(THREAD, creator="alice").id == THREAD
    tdir = tmp_path / "box" / "threads" / THREAD
    for seq, (sender, meta) in enumerate(events, start=1):
        doc = dict(zip(MESSAGE_KEYS, (
            uuid.uuid4().hex, sender, [], "status", "normal", None, now_iso(), f"event {seq}",
            meta,
        ), strict=True))  # fmt: skip
        (tdir / f"{seq:06d}.json").write_bytes(dumps(doc))
    with Mailbox(tmp_path / "box") as reader:
        held = reader.reservations.live()  # by people (no process): each holds for its TTL, 3600 s
    assert sorted((h.holder, h.pattern, h.seq) for h in held) == sorted(want), rule


# ------------------------------------------------------- a person frees a reservation as themselves


def test_a_person_frees_an_agents_reservation_as_themselves(tmp_path: Path) -> None:
    """`mailslot release PATH --holder bob` frees what bob's live server holds: the event is the
    person's own (from dave, to bob, naming bob), never written in bob's name."""
    root = tmp_path / "box"
    Mailbox.init(root)

    async def main() -> None:
        async with agent(root, "bob") as bob:
            assert (await call(bob, "files_reserve", paths=["src/**", "docs/"]))["granted"]
            freed = run(root, "release", "src/", "--holder", "bob", who="dave")
            assert freed.returncode == 0, freed.stderr
            assert "freed bob's reservation of src/** (recorded as freed by dave)" in freed.stdout
            with Mailbox(root) as box:
                assert [(h.holder, h.pattern) for h in box.reservations.live()] == [
                    ("bob", "docs/**")
                ]
                event = box.get(THREAD, box.head(THREAD))
                assert (event.sender, event.to) == ("dave", ["bob"])
                assert event.meta["release"] == {"paths": ["src/**"], "holder": "bob"}
                assert "bob" not in {box.get(THREAD, s).sender for s in range(2, box.head(THREAD))}
            # Someone else's paths are not the person's to give back without --holder.
            mine = run(root, "release", "docs/", who="dave")
            assert mine.returncode == 1 and "not yours: docs/**" in mine.stderr
            gone = run(root, "release", "src/", "--holder", "bob", "--json", who="dave")
            assert gone.returncode == 1
            assert json.loads(gone.stdout) == {"released": [], "not_held": ["src/**"],
                                               "holder": "bob"}  # fmt: skip
            assert (await call(bob, "files_reserve", paths=["docs/x.md"]))["granted"]
            every = run(root, "release", "--holder", "bob", who="dave")  # all of bob's
            assert every.returncode == 0, every.stderr
            with Mailbox(root) as box:
                assert box.reservations.live() == []
                event = box.get(THREAD, box.head(THREAD))
                assert (event.sender, event.content) == ("dave", "freed all of bob's reservations")

    anyio.run(main)


# ------------------------------------------------------------ mailslot's own bookkeeping thread


def test_the_reservations_thread_is_listed_after_every_conversation(tmp_path: Path) -> None:
    """A reservation newer than every message does not put file-reservations at the top of
    `mailslot threads` or thread_list; it is last, and still read by its id."""
    root = tmp_path / "box"
    with Mailbox.init(root) as box:
        box.create_thread("Plan the release", creator="alice")
        seq = box.post("plan-the-release", "who takes the changelog?", sender="alice")
        posted = box.get("plan-the-release", seq).created_at
        # Times have milliseconds: the newer thread must not share the post's, or the order
        # between the two falls to their ids.
        until("the clock moved past the post", lambda: now_iso() > posted)
        box.create_thread("Fix the flaky test", creator="carol")
    assert run(root, "reserve", "src/", who="bob").returncode == 0
    listed = run(root, "threads", "--json").stdout
    doc = json.loads(listed)
    rows = doc["threads"] if isinstance(doc, dict) else doc
    assert [t["id"] if "id" in t else t["thread"] for t in rows] == [
        "fix-the-flaky-test", "plan-the-release", THREAD
    ]  # fmt: skip
    table = run(root, "threads").stdout.splitlines()
    assert table[-1].startswith(THREAD), table
    assert "reserves src/**" in run(root, "read", THREAD).stdout

    async def main() -> None:
        async with agent(root, "alice") as alice:
            got = await call(alice, "thread_list")
            assert [t["thread"] for t in got["threads"]][-1] == THREAD
            assert got["threads"][0]["thread"] == "fix-the-flaky-test"
            assert len((await call(alice, "msg_list", thread=THREAD))["messages"]) == 1

    anyio.run(main)
