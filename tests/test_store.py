"""The store through its Python API: format, threads, messages, states, agents, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from mailslot import (
    Damaged,
    InvalidMessage,
    InvalidName,
    InvalidState,
    Mailbox,
    NoSuchAgent,
    NoSuchMessage,
    NoSuchThread,
    RootError,
    StorageError,
)
from mailslot.store.threads import CACHE_FROM

# ---------------------------------------------------------------- the folder


def test_init_writes_the_documented_layout(tmp_path: Path) -> None:
    box = Mailbox.init(tmp_path / "box")
    assert json.loads((box.root / "mailslot.json").read_text()) == {
        "format": 1,
        "fsync": True,
        "lock": True,
    }
    assert ".state/" in (box.root / ".gitignore").read_text().splitlines()
    assert (box.root / "threads").is_dir()
    assert (box.root / "agents").is_dir()
    assert Mailbox.init(tmp_path / "box").root == box.root, "init twice is harmless"


def test_message_file_is_canonical_json(box: Mailbox) -> None:
    seq = box.post("t", "héllo wörld ✓", sender="alice", to=["bob"], meta={"k": [1, 2]})
    raw = (box.root / "threads" / "t" / "000001.json").read_bytes()
    assert seq == 1
    text = raw.decode("utf-8")
    assert text.endswith("}\n")
    assert "héllo wörld ✓" in text, "non-ASCII text stays readable"
    doc = json.loads(text)
    assert list(doc) == [
        "id",
        "from",
        "to",
        "type",
        "priority",
        "reply_to",
        "created_at",
        "content",
        "meta",
    ]
    assert "seq" not in doc, "the seq is the file name, not repeated inside"
    assert doc["created_at"].endswith("Z")
    assert text == json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def test_file_names_widen_past_999999() -> None:
    from mailslot.store.format import MESSAGE_NAME_RE, message_name

    assert [message_name(s) for s in (1, 42, 999_999, 1_000_000)] == [
        "000001.json",
        "000042.json",
        "999999.json",
        "1000000.json",
    ]
    assert all(MESSAGE_NAME_RE.fullmatch(message_name(s)) for s in (1, 1_000_000))


# ---------------------------------------------------------------- threads


def test_same_topic_meets_in_one_thread(box: Mailbox) -> None:
    a = box.create_thread("Bus123", creator="alice")
    b = box.create_thread("bus123", creator="bob")
    c = box.create_thread("  BUS123 ", creator="bob")
    assert a.id == b.id == c.id == "bus123"
    assert b.created_by == "alice" and b.topic == "Bus123"


@pytest.mark.parametrize(
    ("topic", "slug"),
    [
        ("Fix the login bug!", "fix-the-login-bug"),
        ("Refactor: café_module v2.1", "refactor-cafe-module-v2-1"),
        ("CON", "con-thread"),
        ("数据库迁移", None),
    ],
)
def test_topic_slugs(box: Mailbox, topic: str, slug: str | None) -> None:
    info = box.create_thread(topic, creator="alice")
    if slug is None:
        assert info.id.startswith("t-") and len(info.id) == 14
        assert box.create_thread(topic, creator="bob").id == info.id
    else:
        assert info.id == slug
    assert info.topic == topic


def test_long_topics_that_share_a_start_stay_apart(box: Mailbox) -> None:
    start = "a very long topic about the architecture of the new storage engine and "
    a = box.create_thread(start + "its index", creator="alice")
    b = box.create_thread(start + "its cache", creator="alice")
    assert a.id != b.id
    assert len(a.id) <= 64 and len(b.id) <= 64


@pytest.mark.parametrize("topic", ["", "   ", "x" * 201, "bad\x00topic", "tab\tbed", "!!!"])
def test_unusable_topics_are_refused(box: Mailbox, topic: str) -> None:
    with pytest.raises(InvalidName, match="topic|thread id"):
        box.create_thread(topic, creator="alice")


def test_thread_info_tracks_state_participants_activity(box: Mailbox) -> None:
    box.post("t", "hi", sender="bob")
    box.post("t", "hey", sender="carol")
    info = box.thread("t")
    assert info.state == "discuss"
    assert info.head == 2
    assert info.participants == ["alice", "bob", "carol"]
    assert info.last_activity == box.get("t", 2).created_at
    assert [t.id for t in box.threads()] == ["t"]


def test_lifecycle_is_recorded_as_messages(box: Mailbox) -> None:
    for state in ("implement", "review", "implement", "review", "done"):
        box.set_state("t", state, sender="alice")
    seq = box.set_state("t", "closed", sender="bob", summary="Shipped in **v2**.")
    msg = box.get("t", seq)
    assert msg.type == "state"
    assert msg.meta == {"state": "closed", "previous": "done"}
    assert msg.content == "Shipped in **v2**."
    info = box.thread("t")
    assert (info.state, info.summary) == ("closed", "Shipped in **v2**.")
    with pytest.raises(InvalidState, match="already"):
        box.set_state("t", "closed", sender="bob")
    with pytest.raises(InvalidState, match="one of"):
        box.set_state("t", "finished", sender="bob")
    box.set_state("t", "archived", sender="bob")
    assert box.threads() == []
    assert [t.id for t in box.threads(include_archived=True)] == ["t"]
    assert [t.id for t in box.threads(state="archived")] == ["t"]


def test_state_index_is_a_rebuildable_cache(box: Mailbox) -> None:
    box.set_state("t", "review", sender="alice")
    assert Mailbox(box.root).thread("t").state == "review"
    index = box.root / ".state" / "index"
    assert not index.exists(), "a short thread is read again, not cached"
    for i in range(CACHE_FROM):
        box.post("t", f"m{i}", sender="alice")
    assert Mailbox(box.root).thread("t").state == "review"
    assert (index / "t.json").exists()
    for f in index.iterdir():
        f.unlink()
    fresh = Mailbox(box.root)
    assert fresh.thread("t").state == "review"
    # A cache that claims more than the folder holds (restored from an older copy) is rebuilt.
    (box.root / ".state" / "index" / "t.json").write_text(
        json.dumps(
            {"seq": 99, "state": "closed", "summary": "x", "participants": [], "last_activity": ""}
        )
    )
    assert Mailbox(box.root).thread("t").state == "review"


def test_unknown_thread_suggests_near_names(box: Mailbox) -> None:
    box.create_thread("bus123", creator="alice")
    with pytest.raises(NoSuchThread, match="did you mean 'bus123'") as e:
        box.post("bus124", "hi", sender="alice")
    assert isinstance(e.value, KeyError)
    assert e.value.thread == "bus124"


# ---------------------------------------------------------------- messages


def test_read_after_cursor_pages(box: Mailbox) -> None:
    for i in range(25):
        box.post("t", f"m{i}", sender="alice")
    page = box.read("t", 0, 10)
    assert [m.seq for m in page.messages] == list(range(1, 11))
    assert (page.cursor, page.has_more) == (10, True)
    page = box.read("t", 20, 10)
    assert [m.content for m in page.messages] == ["m20", "m21", "m22", "m23", "m24"]
    assert (page.cursor, page.has_more) == (25, False)
    assert box.read("t", 25).messages == []
    assert [m.seq for m in box.messages("t", 22)] == [23, 24, 25]
    assert box.head("t") == 25


def test_fields_round_trip(box: Mailbox) -> None:
    box.post("t", "question?", sender="alice", type="question")
    seq = box.post(
        "t",
        "do it",
        sender="alice",
        to=["bob"],
        type="task",
        priority="urgent",
        reply_to=1,
        meta={"files": ["a.py"], "n": 10**30, "f": 1.5, "none": None},
    )
    m = box.get("t", seq)
    assert (m.sender, m.to, m.type, m.priority, m.reply_to) == (
        "alice",
        ["bob"],
        "task",
        "urgent",
        1,
    )
    assert m.meta == {"files": ["a.py"], "n": 10**30, "f": 1.5, "none": None}
    d = m.to_dict()
    assert (d["thread"], d["seq"], d["from"]) == ("t", 2, "alice")


def test_idempotency_key_stores_once(box: Mailbox) -> None:
    first = box.post("t", "deploy", sender="alice", idempotency_key="deploy-42")
    box.post("t", "other", sender="bob")
    again = box.post("t", "deploy", sender="alice", idempotency_key="deploy-42")
    assert again == first
    assert box.head("t") == 2
    # The key belongs to its sender: another agent's same key is another message.
    assert box.post("t", "deploy", sender="bob", idempotency_key="deploy-42") == 3
    # Survives a fresh process (the marker lives in .state/keys/).
    assert Mailbox(box.root).post("t", "deploy", sender="alice", idempotency_key="deploy-42") == 1


def test_idempotency_after_crash_between_publish_and_marker(box: Mailbox) -> None:
    first = box.post("t", "deploy", sender="alice", idempotency_key="k")
    marker = next((box.root / ".state" / "keys" / "t").iterdir())
    doc = json.loads(marker.read_text())
    del doc["seq"]  # as if the writer died right after publishing
    marker.write_text(json.dumps(doc))
    assert Mailbox(box.root).post("t", "deploy", sender="alice", idempotency_key="k") == first
    assert box.head("t") == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"content": ""}, InvalidMessage, "empty"),
        ({"content": "x" * (256 * 1024 + 1)}, InvalidMessage, "over the limit"),
        ({"content": "bad \ud800 surrogate"}, InvalidMessage, "surrogate"),
        ({"content": b"\xff\xfe bytes"}, InvalidMessage, "UTF-8"),
        ({"content": 42}, InvalidMessage, "text"),
        ({"meta": "not an object"}, InvalidMessage, "JSON object"),
        ({"meta": {"x": float("nan")}}, InvalidMessage, "JSON"),
        ({"meta": {"x": {1, 2}}}, InvalidMessage, "not JSON"),
        ({"meta": {1: "int key"}}, InvalidMessage, "keys must be strings"),
        ({"meta": {"blob": "x" * 70_000}}, InvalidMessage, "over the limit"),
        ({"type": "state"}, InvalidMessage, "set_state"),
        ({"type": "shout"}, InvalidMessage, "type must be"),
        ({"priority": "asap"}, InvalidMessage, "priority"),
        ({"reply_to": 7}, NoSuchMessage, "no message 7"),
        ({"reply_to": 0}, InvalidMessage, "reply_to"),
        ({"to": ["carol"]}, NoSuchAgent, "known agents: alice, bob"),
        ({"to": ["../etc"]}, InvalidName, "agent name"),
        ({"sender": "Alice"}, InvalidName, "use 'alice'"),
        ({"idempotency_key": ""}, InvalidName, "key"),
        ({"idempotency_key": "k" * 201}, InvalidName, "key"),
    ],
)
def test_bad_posts_store_nothing(box: Mailbox, kwargs: dict, error: type, match: str) -> None:
    args = {"content": "hi", "sender": "alice", **kwargs}
    content = args.pop("content")
    with pytest.raises(error, match=match):
        box.post("t", content, **args)
    assert box.head("t") == 0
    assert not list((box.root / ".state" / "tmp").iterdir())


def test_deep_meta_is_refused(box: Mailbox) -> None:
    deep: dict = {}
    node = deep
    for _ in range(40):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(InvalidMessage, match="nested deeper"):
        box.post("t", "hi", sender="alice", meta=deep)


def test_content_limit_is_a_setting(root: Path) -> None:
    cfg = root / "mailslot.json"
    cfg.write_text(json.dumps({"format": 1, "max_content_bytes": 10}))
    box = Mailbox(root)
    box.create_thread("t", creator="alice")
    with pytest.raises(InvalidMessage, match="limit of 10 bytes"):
        box.post("t", "eleven char", sender="alice")
    assert Mailbox(root, max_content_bytes=100).post("t", "eleven char", sender="alice") == 1


def test_get_missing_message(box: Mailbox) -> None:
    box.post("t", "one", sender="alice")
    with pytest.raises(NoSuchMessage, match=r"messages are 1\.\.1"):
        box.get("t", 5)


# ---------------------------------------------------------------- damage on disk


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "not valid UTF-8 JSON"),
        (b'{"id": "x", "fr', "not valid UTF-8 JSON"),
        (b"\xff\xfe\x00", "not valid UTF-8 JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"hello": "world"}', "missing"),
        (b'{"seq": 99}', "missing"),
    ],
)
def test_corrupt_files_are_skipped_and_reported(
    box: Mailbox, payload: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    box.post("t", "before", sender="alice")
    bad = box.root / "threads" / "t" / "000002.json"
    bad.write_bytes(payload)
    box.post("t", "after", sender="bob")
    # Young, it may still be arriving (git, a sync tool): readers stop before it and say so.
    page = box.read("t")
    assert [m.content for m in page.messages] == ["before"] and page.cursor == 1
    assert page.pending is not None and page.pending.seq == 2 and not page.skipped
    assert box.thread("t").head == 3
    old = time.time() - box.settings.grace_s - 1
    os.utime(bad, (old, old))  # unchanged for longer than the grace period: damage
    page = box.read("t")
    assert [m.content for m in page.messages] == ["before", "after"]
    assert page.cursor == 3
    assert len(page.skipped) == 1 and reason in page.skipped[0].reason
    assert page.skipped[0].path.endswith("000002.json")
    assert "000002.json" in caplog.text
    with pytest.raises(Damaged, match="000002.json"):
        box.get("t", 2)
    assert box.thread("t").head == 3


def test_wrong_seq_or_thread_inside_is_skipped(box: Mailbox) -> None:
    box.post("t", "one", sender="alice")
    doc = json.loads((box.root / "threads" / "t" / "000001.json").read_text())
    (box.root / "threads" / "t" / "000002.json").write_text(json.dumps({**doc, "seq": 7}))
    (box.root / "threads" / "t" / "000003.json").write_text(json.dumps({**doc, "thread": "u"}))
    old = time.time() - box.settings.grace_s - 1
    for name in ("000002.json", "000003.json"):  # damage, not a file still being written
        os.utime(box.root / "threads" / "t" / name, (old, old))
    page = box.read("t")
    assert [m.seq for m in page.messages] == [1]
    assert ["seq 7" in page.skipped[0].reason, "thread 'u'" in page.skipped[1].reason] == [
        True,
        True,
    ]


def test_stray_files_and_folders_are_ignored(box: Mailbox) -> None:
    tdir = box.root / "threads" / "t"
    (tdir / "notes.txt").write_text("a person's note")
    (tdir / "7.json").write_text("{}")
    box.post("t", "one", sender="alice")
    (tdir / "000002.json").mkdir()
    (box.root / "threads" / "Not A Thread").mkdir()
    (box.root / "threads" / "README.md").write_text("hi")
    page = box.read("t")
    assert [m.seq for m in page.messages] == [1]
    assert "folder" in page.skipped[0].reason
    assert [t.id for t in box.threads()] == ["t"]


def test_symlinked_message_is_not_followed(box: Mailbox, tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"id": "x"}')
    (box.root / "threads" / "t" / "000001.json").symlink_to(secret)
    page = box.read("t")
    assert page.messages == [] and "symlink" in page.skipped[0].reason


def test_symlinked_thread_folder_is_refused(box: Mailbox, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (box.root / "threads" / "evil").symlink_to(outside)
    fresh = Mailbox(box.root)
    with pytest.raises(RootError, match="symlink"):
        fresh.post("evil", "hi", sender="alice")
    with pytest.raises(RootError, match="symlink"):
        fresh.read("evil")
    assert not list(outside.iterdir()), "nothing may be written outside the root"
    assert [t.id for t in fresh.threads()] == ["t"]


@pytest.mark.parametrize("sub", [".state", "threads", "agents"])
def test_symlinked_top_folders_are_refused(root: Path, tmp_path: Path, sub: str) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    target = root / sub
    os.rename(target, tmp_path / "moved")
    target.symlink_to(outside)
    with pytest.raises(RootError, match="symlink"):
        Mailbox(root)


def test_missing_thread_json_still_reads(box: Mailbox) -> None:
    box.post("t", "one", sender="bob")
    (box.root / "threads" / "t" / "thread.json").unlink()
    fresh = Mailbox(box.root)
    info = fresh.thread("t")
    assert (info.topic, info.head) == ("t", 1)
    assert [m.content for m in fresh.read("t").messages] == ["one"]


def test_damaged_agent_card(box: Mailbox) -> None:
    (box.root / "agents" / "bob.json").write_text("{not json")
    assert [c.name for c in box.agents.cards()] == ["alice"]
    with pytest.raises(Damaged, match="bob.json"):
        box.agents.card("bob")
    box.agents.register("bob", model="m")
    assert box.agents.card("bob").model == "m"


# ---------------------------------------------------------------- roots


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(RootError, match="mailslot init"):
        Mailbox(tmp_path / "nowhere")


def test_root_without_config(tmp_path: Path) -> None:
    with pytest.raises(RootError, match="not a mailbox"):
        Mailbox(tmp_path)


def test_root_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(RootError, match="is a file"):
        Mailbox(tmp_path / "f")
    with pytest.raises(RootError, match="is a file"):
        Mailbox.init(tmp_path / "f" / "box")


def test_future_format_is_read_only(root: Path) -> None:
    (root / "mailslot.json").write_text('{"format": 2}')
    box = Mailbox(root)
    assert box.read_only is not None and "upgrade mailslot" in box.read_only
    with pytest.raises(RootError, match="format 2.*upgrade"):
        box.create_thread("t", creator="alice")


@pytest.mark.parametrize(
    "content", ["{oops", "[]", '{"format": "1"}', '{"format": 1, "fsync": "yes"}']
)
def test_bad_config_is_refused(root: Path, content: str) -> None:
    (root / "mailslot.json").write_text(content)
    with pytest.raises(RootError, match="mailslot.json"):
        Mailbox(root)


def test_fsync_can_be_turned_off(tmp_path: Path) -> None:
    box = Mailbox.init(tmp_path / "scratch", fsync=False)
    assert box.settings.fsync is False
    assert Mailbox(box.root, fsync=True).settings.fsync is True


def test_read_only_root(small_fs: Path) -> None:
    box = Mailbox.init(small_fs / "box")
    box.agents.register("alice")
    box.create_thread("t", creator="alice")
    box.post("t", "written before", sender="alice")
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    ro = Mailbox(small_fs / "box")
    assert [m.content for m in ro.read("t").messages] == ["written before"]
    assert ro.thread("t").head == 1
    with pytest.raises(StorageError, match="not writable.*nothing was stored"):
        ro.post("t", "x", sender="alice")
    with pytest.raises(StorageError, match="not writable"):
        ro.create_thread("u", creator="alice")
    with pytest.raises(StorageError, match="not writable"):
        ro.agents.register("bob")


def test_full_disk_loses_nothing(small_fs: Path) -> None:
    box = Mailbox.init(small_fs / "box")
    box.create_thread("t", creator="alice")
    box.post("t", "first", sender="alice")
    filler = small_fs / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    with pytest.raises(StorageError, match="no space left.*nothing was stored"):
        box.post("t", "x" * 200_000, sender="alice")
    assert box.head("t") == 1
    assert [m.content for m in box.read("t").messages] == ["first"]
    assert not list((box.root / ".state" / "tmp").iterdir()), "no partial temp file left"
    filler.unlink()
    assert box.post("t", "x" * 200_000, sender="alice") == 2
    assert box.get("t", 2).content == "x" * 200_000


# ---------------------------------------------------------------- agents


def test_agent_cards(root: Path) -> None:
    box = Mailbox(root)
    card = box.agents.register(
        "coder", client="claude-code", model="opus", description="writes code"
    )
    assert json.loads((root / "agents" / "coder.json").read_text())["model"] == "opus"
    again = box.agents.register("coder", description="writes and tests code")
    assert (again.model, again.description) == ("opus", "writes and tests code")
    assert again.registered_at == card.registered_at
    assert [c.name for c in box.agents.cards()] == ["coder"]
    with pytest.raises(NoSuchAgent, match="known agents: coder"):
        box.agents.card("reviewer")
    with pytest.raises(InvalidName):
        box.agents.register("../../etc/passwd")
    with pytest.raises(InvalidMessage, match="at most"):
        box.agents.register("coder", description="x" * 2001)
