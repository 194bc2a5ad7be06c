"""Search: real folders, real processes, the real command and real `mailslot serve` processes.

The index is a cache in .state/search (or the user's cache folder for a network root) that
every search brings up to date from the folder: a message another process posted is found by
the next search, whatever became of the index in between (deleted, emptied, garbage), and
the hits are read back from the message files, each once.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import agent, call, git_init, no_loop_guard, run_git
from mcp import types
from mcp.client import Client
from test_netfs import mounts  # noqa: F401  (the sshfs fixture: two mounts of one export)

from mailslot import Mailbox
from mailslot.coordination.search_index import index_path
from mailslot.store.errors import InvalidMessage, InvalidName, MailslotError, NoSuchThread

EXAMPLE = '"merge conflict"'  # every refusal of a query shows how to write one
SERVE_ENV = {"PYTHONDONTWRITEBYTECODE": "1"}

POSTER = """
import sys, time
from pathlib import Path
from mailslot import Mailbox
root, thread, writer, count, go = sys.argv[1:]
box = Mailbox(root, fsync=False)
print("ready", flush=True)
while go != "-" and not Path(go).exists():
    time.sleep(0.001)
for j in range(int(count)):
    box.post(thread, f"concurrent {writer} item uniq{writer}n{j}", sender=writer)
print("done", flush=True)
"""

QUERIER = """
import json, random, sys, time
from pathlib import Path
from mailslot import Mailbox
root, name, go, stop = sys.argv[1:]
box = Mailbox(root)
rng = random.Random(name)
print("ready", flush=True)
while not Path(go).exists():
    time.sleep(0.001)
queries, last = 0, 0
while True:
    stopping = Path(stop).exists()
    found = box.search("concurrent", limit=100)
    keys = [(h.message.thread, h.message.seq) for h in found.hits]
    assert len(keys) == len(set(keys)), f"a hit twice: {keys}"
    assert found.total >= last, f"total went back from {last} to {found.total}"
    assert all("concurrent" in h.message.content for h in found.hits)
    last = found.total
    w = rng.randrange(4)
    box.search(rng.choice([f"uniq{w}*", f"w{w} item", f'"concurrent w{w}"', "item OR x"]))
    queries += 2
    if stopping:
        break
print(json.dumps({"queries": queries, "last": last}), flush=True)
"""


# ---------------------------------------------------------------- helpers


def mailbox(root: Path) -> Mailbox:
    # Hundreds of posts from one agent in a second: a storm to the loop guard, not searched here.
    box = Mailbox(no_loop_guard(Mailbox.init(root).root))
    for name in ("alice", "bob", "carol"):
        box.agents.register(name)
    return box


def cli(
    root: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailslot", "search", "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def python_c(script: str, *args: str) -> subprocess.Popen[str]:
    """Start script as a separate OS process with args."""
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def keys(found: Any) -> list[tuple[str, int]]:
    return [(h.message.thread, h.message.seq) for h in found.hits]


def set_config(root: Path, **settings: Any) -> None:
    config = root / "mailslot.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **settings}))


def write_message(
    path: Path, content: str, sender: str = "alice", created_at: str = "2026-01-01T00:00:00.000Z"
) -> None:
    """Write a message file as another tool (a sync, a git checkout) would."""
    doc = {"id": os.urandom(16).hex(), "from": sender, "to": [], "type": "message",
           "priority": "normal", "reply_to": None, "created_at": created_at,
           "content": content, "meta": {}}  # fmt: skip
    path.write_text(json.dumps(doc))


async def refused(c: Client, tool: str, **args: Any) -> str:
    """Call tool; assert the server answered with a tool error; return its text."""
    result = await c.call_tool(tool, args)
    assert isinstance(result.content[0], types.TextContent)
    assert result.is_error, f"{tool}({args}) should have failed: {result.content[0].text}"
    return result.content[0].text


# ---------------------------------------------------------------- 1. fresh without a reindex


def test_found_right_after_another_process_posts(tmp_path: Path) -> None:
    box = mailbox(tmp_path / "box")
    box.create_thread("t", creator="alice")
    box.post("t", "an old message about giraffes", sender="alice")
    assert keys(box.search("giraffes")) == [("t", 1)]
    assert box.search("zebra").total == 0  # the index exists and is up to date
    for n in range(1, 4):
        subprocess.run([sys.executable, "-c", POSTER.replace("concurrent", "zebra"),
                        str(box.root), "t", "bob", "1", "-"], check=True, capture_output=True,
                       timeout=60)  # fmt: skip
        found = box.search("zebra")  # the same Mailbox, no reindex call
        assert found.total == n
        assert [h.message.content for h in found.hits] == [
            "zebra bob item uniqbobn0" for _ in range(n)
        ]
        assert found.engine == "fts5"
    # ...and a Mailbox of another process, on the first search it ever makes
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from mailslot import Mailbox; "
         "print(Mailbox(sys.argv[1]).search('zebra').total)", str(box.root)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "3"


def test_found_through_mcp_after_another_serve_posts(tmp_path: Path) -> None:
    box = mailbox(tmp_path / "box")
    box.create_thread("plans", creator="alice")

    async def main() -> None:
        async with agent(box.root, "alice") as a, agent(box.root, "bob") as b:
            first = await call(a, "msg_search", query="okapi")
            assert first["hits"] == [] and first["total"] == 0 and "hint" in first
            posted = await call(b, "msg_post", thread="plans", content="the okapi ships Friday",
                                to=["alice"])  # fmt: skip
            found = await call(a, "msg_search", query="okapi")
            assert found["total"] == 1
            [hit] = found["hits"]
            assert (hit["thread"], hit["seq"], hit["from"]) == ("plans", posted["seq"], "bob")
            assert hit["content"] == "the okapi ships Friday"
            assert hit["to"] == ["alice"]
            assert "«okapi»" in hit["snippet"]
            # the serve that posted finds it too, and a filter through MCP narrows
            assert (await call(b, "msg_search", query="okapi", sender="alice"))["total"] == 0
            assert (await call(b, "msg_search", query="okapi", sender="bob"))["total"] == 1

    anyio.run(main)


# (query, the seqs it finds among OPERATOR_TEXTS), alike from the index and from the scan
OPERATOR_TEXTS = ["deploy to prod", "deploy to staging", "rollback staging", "auth.py fixed",
                  "NEAR the edge"]  # fmt: skip
OPERATOR_QUERIES = [
    ("deploy", {1, 2}),
    ("deploy staging", {2}),
    ("deploy AND staging", {2}),
    ("deploy NOT staging", {1}),
    ("staging NOT deploy", {3}),
    ("deploy OR rollback", {1, 2, 3}),
    ("(deploy OR rollback) AND staging", {2, 3}),
    ("(deploy OR rollback) NOT staging", {1}),
    ('"to prod"', {1}),
    ('"prod to"', set()),
    ("roll*", {3}),
    ("deplo", set()),  # a word is found whole, as the index's tokens are
    ("deplo*", {1, 2}),
    ("ploy*", set()),  # a prefix starts a word
    ('"o pro"', set()),
    ("auth.py", {4}),
    ("deploy or prod", set()),  # lowercase: a word that must occur, not an operator
    ("NEAR", {5}),  # a word, unless a group follows it (the scan refused it as no word)
    ("edge NOT NEAR", set()),
    ("edge NOT prod", {5}),
    ("NEAR(deploy prod)", {1}),
]


@pytest.mark.parametrize("engine", ["fts5", "scan"])
def test_operators_mean_the_same_in_the_index_and_the_scan(
    tmp_path: Path, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NOT excludes, OR joins, a phrase keeps its order, parentheses group: the scan used where
    SQLite lacks FTS5 reads a query as the index does (it once ignored NOT and OR)."""
    if engine == "scan":
        monkeypatch.setenv("MAILSLOT_SEARCH_ENGINE", "scan")
    box = mailbox(tmp_path / "box")
    box.create_thread("t", creator="alice")
    for text in OPERATOR_TEXTS:
        box.post("t", text, sender="alice")
    assert box.search("deploy").engine == engine
    for query, want in OPERATOR_QUERIES:
        assert {seq for _, seq in keys(box.search(query))} == want, query
    for query, why in [
        ("NOT staging", "cannot start with NOT"),
        ("deploy AND", "AND goes between two words"),
        ("(deploy OR rollback) staging", "put AND (or OR, NOT) between a group"),
        ("deploy (prod)", "put AND (or OR, NOT) between a group"),
        ('"to prod', "a double quote is not closed"),
        ("(deploy OR prod", "a parenthesis is not closed"),
    ]:
        with pytest.raises(InvalidMessage, match=re.escape(why)):
            box.search(query)
    done = cli(box.root, "deploy NOT staging", "--json")
    assert done.returncode == 0, done.stderr
    assert [h["seq"] for h in json.loads(done.stdout)["hits"]] == [1]


# ---------------------------------------------------------------- 2. filters


@pytest.mark.parametrize("engine", ["fts5", "scan"])
def test_filters_narrow_exactly(
    tmp_path: Path, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same filters, from the index and from the scan used where SQLite lacks FTS5."""
    if engine == "scan":
        monkeypatch.setenv("MAILSLOT_SEARCH_ENGINE", "scan")  # the command inherits it too
    box = mailbox(tmp_path / "box")
    for t in ("red", "blue"):
        box.create_thread(t, creator="alice")
    plan = [  # thread, sender, type, to
        ("red", "alice", "message", []),
        ("red", "bob", "status", ["alice"]),
        ("red", "carol", "question", ["alice", "bob"]),
        ("blue", "alice", "message", ["carol"]),
        ("blue", "bob", "message", []),
        ("blue", "carol", "status", ["bob"]),
        ("red", "alice", "question", ["carol"]),
        ("blue", "bob", "message", ["alice"]),
    ]
    for i, (t, sender, type_, to) in enumerate(plan):
        box.post(t, f"walrus report {i}", sender=sender, type=type_, to=to)
        time.sleep(0.005)  # distinct created_at for the since filter
    box.post("red", "nothing to see", sender="alice")
    everything = [m for t in ("red", "blue") for m in box.messages(t) if "walrus" in m.content]
    assert box.search("walrus", limit=100).total == len(plan)
    assert box.search("walrus").engine == engine

    def expect(pred: Any, **kw: Any) -> None:
        found = box.search("walrus", limit=100, **kw)
        want = sorted((m.thread, m.seq) for m in everything if pred(m))
        assert sorted(keys(found)) == want, kw
        assert found.total == len(want), kw
        assert all(pred(h.message) for h in found.hits)

    expect(lambda m: m.thread == "red", thread="red")
    expect(lambda m: m.thread == "blue", thread="blue")
    for name in ("alice", "bob", "carol"):
        expect(lambda m, n=name: m.sender == n, sender=name)
        expect(lambda m, n=name: n in m.to, to=name)
    for type_ in ("message", "status", "question"):
        expect(lambda m, t=type_: m.type == t, type=type_)
    middle = sorted(m.created_at for m in everything)[4]
    expect(lambda m: m.created_at >= middle, since=middle)
    expect(lambda m: True, since="2000-01-01")
    expect(lambda m: False, since="2999-01-01")
    expect(lambda m: m.thread == "blue" and m.sender == "bob" and m.type == "message",
           thread="blue", sender="bob", type="message")  # fmt: skip
    expect(lambda m: False, to="ali")  # a recipient is a whole name, not a part of one
    expect(lambda m: False, sender="nobody")

    limited = box.search("walrus", limit=3)
    assert len(limited.hits) == 3 and limited.total == len(plan)
    assert keys(limited) == keys(box.search("walrus", limit=100))[:3]
    for bad in (0, -1, 101, True):
        with pytest.raises(InvalidMessage, match="limit"):
            box.search("walrus", limit=bad)

    # the command applies the same filters
    done = cli(box.root, "walrus", "--from", "carol", "--type", "status", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert [(h["thread"], h["seq"]) for h in doc["hits"]] == [("blue", 3)]
    assert doc["total"] == 1
    done = cli(box.root, "walrus", "--limit", "2", "--to", "alice")
    assert done.returncode == 0, done.stderr
    assert "1 more: raise --limit" in done.stdout


# ---------------------------------------------------------------- 3. ranking


def test_three_mentions_rank_before_one(tmp_path: Path) -> None:
    box = mailbox(tmp_path / "box")
    box.create_thread("t", creator="alice")
    one = box.post(
        "t", "the deploy failed yesterday, see the attached logs and call me", sender="bob"
    )
    box.post("t", "lunch is at noon on friday near the lake with the whole team", sender="bob")
    three = box.post(
        "t", "deploy failed; deploy again after the deploy logs are checked", sender="bob"
    )
    box.post("t", "an unrelated note about coffee beans and grinders in the kitchen", sender="bob")
    found = box.search("deploy")
    assert [h.message.seq for h in found.hits] == [three, one]
    assert found.hits[0].rank < found.hits[1].rank  # bm25: lower is better
    assert found.hits[0].snippet.count("«deploy»") == 3


# ---------------------------------------------------------------- 4. scripts


TEXTS = {
    "zh": "我们明天需要讨论数据库迁移方案然后部署",
    "ja": "データベースの移行はあしたの午後に行います",
    "ko": "내일 데이터베이스 마이그레이션 계획을 논의합니다",
    "ru": "Завтра обсудим миграцию базы данных перед выпуском",
    "en": "tomorrow we discuss the database migration plan",
}


@pytest.mark.parametrize(
    ("query", "lang", "marked"),
    [
        ("数据", "zh", "«数据»"),  # a two-character word inside a sentence without spaces
        ("迁移方案", "zh", "«迁移方案»"),
        ("移行", "ja", "«移行»"),  # kanji
        ("データ", "ja", "«データ»"),  # katakana
        ("あした", "ja", "«あした»"),  # hiragana
        ("데이터베이스", "ko", "«데이터베이스»"),
        ("마이그레이션", "ko", "«마이그레이션»"),
        ("миграцию", "ru", "«миграцию»"),
        ("МИГРАЦИЮ", "ru", "«миграцию»"),
        ("базы данных", "ru", "«базы» «данных»"),
        ('"базы данных"', "ru", "«базы» «данных»"),
    ],
)
def test_scripts_without_spaces_and_cyrillic(
    tmp_path: Path, query: str, lang: str, marked: str
) -> None:
    box = mailbox(tmp_path / "box")
    box.create_thread("t", creator="alice")
    seqs = {k: box.post("t", text, sender="alice") for k, text in TEXTS.items()}
    found = box.search(query)
    assert [h.message.seq for h in found.hits] == [seqs[lang]], query
    assert marked in found.hits[0].snippet.replace("МИГРАЦИЮ", "миграцию")


def test_cjk_characters_out_of_order_do_not_match(tmp_path: Path) -> None:
    box = mailbox(tmp_path / "box")
    box.create_thread("t", creator="alice")
    box.post("t", TEXTS["zh"], sender="alice")
    assert box.search("据数").total == 0  # the characters, but not this word
    assert box.search("数据 部署").total == 1  # two words, AND-ed


# ---------------------------------------------------------------- 5. hostile queries


HOSTILE = ['"unbalanced quote', "*", "(", "NEAR(", "x" * 10_000, "nul\0byte", "", "   ", "\t\n"]


@pytest.fixture
def searched(tmp_path: Path) -> Mailbox:
    box = mailbox(tmp_path / "box")
    box.create_thread("t", creator="alice")
    box.post("t", "the schema migration needs a review", sender="alice", to=["bob"])
    box.post("t", "auth.py and foo-bar changed", sender="bob")
    return box


@pytest.mark.parametrize("query", HOSTILE, ids=lambda q: repr(q[:20]))
def test_hostile_query_is_a_clear_error_in_the_library(searched: Mailbox, query: str) -> None:
    with pytest.raises(InvalidMessage) as raised:
        searched.search(query)
    assert EXAMPLE in str(raised.value)
    assert searched.search("schema").total == 1  # and nothing stuck


def test_hostile_query_is_one_line_and_exit_1_from_the_command(searched: Mailbox) -> None:
    for query in HOSTILE:
        if "\0" in query:
            continue  # no argv can hold a NUL
        done = cli(searched.root, query)
        assert done.returncode == 1, (query[:20], done.stdout, done.stderr)
        lines = done.stderr.splitlines()
        assert len(lines) == 1, (query[:20], done.stderr)
        assert lines[0].startswith("mailslot: ") and EXAMPLE in lines[0]
        assert "Traceback" not in done.stderr and done.stdout == ""


def test_hostile_query_is_a_tool_error_through_mcp(searched: Mailbox) -> None:
    async def main() -> None:
        async with agent(searched.root, "alice") as a:
            for query in HOSTILE:
                text = await refused(a, "msg_search", query=query)
                assert EXAMPLE in text, (query[:20], text)
            assert (await call(a, "msg_search", query="schema"))["total"] == 1

    anyio.run(main)


@pytest.mark.parametrize(
    ("query", "want"),
    [
        ("auth.py", 1),  # plain words with punctuation are read as phrases
        ("foo-bar", 1),
        ("body:schema", 1),  # the index's one column: a column filter that works
        ("thread:x", 0),  # no such column: read as words, not an error
        ("sender:alice", 0),
        ("{body}:schema", 1),
        ("schema AND review", 1),
        ("schema NOT review", 0),
        ("(schema OR nothing) AND migration", 1),
        ("migr*", 1),
        ('"schema migration"', 1),
    ],
)
def test_column_syntax_and_operators_do_not_crash(searched: Mailbox, query: str, want: int) -> None:
    assert searched.search(query).total == want


@pytest.mark.parametrize(
    "filters",
    [
        {"sender": 'alice" OR "1'},
        {"sender": "alice' OR '1'='1"},
        {"sender": "%"},
        {"type": "message' OR 1=1 --"},
        {"to": "%"},
        {"to": "_ob"},
        {"to": "b%"},
        {"to": "\\"},
    ],
)
def test_filter_values_are_values_not_syntax(searched: Mailbox, filters: dict[str, str]) -> None:
    assert searched.search("schema OR auth", **filters).hits == []


NO_TIMES = ["' OR 1=1 --", "yesterday", ")", '"', "", "2026-13-01", "2026-03-10T25:00Z",
            "15:00", "2026-03-10T15:00:00+25:00"]  # fmt: skip


def test_since_that_is_no_time_is_refused_saying_what_is(searched: Mailbox) -> None:
    """A since that is no time is refused with examples of what is, never read as a string
    to compare with (which would answer 'no match' or everything)."""
    for since in NO_TIMES:
        with pytest.raises(InvalidMessage, match="since") as raised:
            searched.search("schema OR auth", since=since)
        assert "2026-12-01T09:30:00Z" in str(raised.value) and "UTC" in str(raised.value)
        done = cli(searched.root, "schema", "--since", since)
        assert done.returncode == 1 and done.stdout == "", (since, done.stdout, done.stderr)
        assert len(done.stderr.splitlines()) == 1 and "since" in done.stderr, since
    assert searched.search("schema OR auth", since="2000-01-01").total == 2  # nothing stuck

    async def main() -> None:
        async with agent(searched.root, "alice") as a:
            for since in NO_TIMES:
                text = await refused(a, "msg_search", query="schema", since=since)
                assert "2026-12-01T09:30:00Z" in text, (since, text)
            assert (await call(a, "msg_search", query="schema", since="2000-01-01"))["total"] == 1

    anyio.run(main)


CREATED = {  # seq: created_at as its file says it
    1: "2026-03-10T14:59:59.999Z",
    2: "2026-03-10T15:00:00.000Z",
    3: "2026-03-10T15:00:00.001Z",
    4: "2026-03-10T16:30:00.000+02:00",  # 14:30 UTC: before 15:00, though its text sorts after
    5: "2026-03-11T00:00:00.000Z",
    6: "not a time",  # cannot be placed in time: kept by every since, never hidden
    7: "",
}
UNPLACED = {6, 7}
FIFTEEN_UTC = [  # 2026-03-10 15:00:00 UTC, written every way people write it
    "2026-03-10T15:00:00Z", "2026-03-10T15:00:00.000Z", "2026-03-10T15:00:00+00:00",
    "2026-03-10T17:00:00+02:00", "2026-03-10T10:00:00-05:00", "2026-03-11T00:00:00+09:00",
    "2026-03-10 15:00:00", "2026-03-10 15:00", "20260310T150000Z", "2026-03-10T15:00",
    "2026-03-10t15:00:00z", " 2026-03-10T15:00:00Z ",
]  # fmt: skip
SINCE_CASES = [
    *((since, {2, 3, 5}) for since in FIFTEEN_UTC),
    ("2026-03-10", {1, 2, 3, 4, 5}),  # a date alone: midnight UTC
    ("20260310", {1, 2, 3, 4, 5}),
    ("2026-03-11", {5}),
    ("2026-03-10T15:00:00.001Z", {3, 5}),
    ("2026-03-10T14:30:00Z", {1, 2, 3, 4, 5}),
    ("2026-03-10T14:30:00.001Z", {1, 2, 3, 5}),
    ("2026-03-12", set()),
    ("0001-01-01T00:00:00+05:00", {1, 2, 3, 4, 5}),
    ("9999-12-31T23:59:59-05:00", set()),
]


@pytest.mark.parametrize("engine", ["fts5", "scan"])
def test_since_compares_instants_not_text(
    tmp_path: Path, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if engine == "scan":
        monkeypatch.setenv("MAILSLOT_SEARCH_ENGINE", "scan")
    box = mailbox(tmp_path / "box")
    box.create_thread("t", creator="alice")
    for seq, created_at in CREATED.items():
        write_message(box.root / "threads" / "t" / f"{seq:06d}.json", f"quokka {seq}",
                      created_at=created_at)  # fmt: skip
    assert box.search("quokka").engine == engine
    wrong = []
    for since, want in SINCE_CASES:
        got = {h.message.seq for h in box.search("quokka", since=since).hits}
        if got != want | UNPLACED:
            wrong.append((since, sorted(got)))
    assert wrong == []
    for since, want in SINCE_CASES[:: len(SINCE_CASES) // 4]:  # the command reads it the same
        done = cli(box.root, "quokka", "--since", since, "--json")
        assert done.returncode == 0, done.stderr
        assert {h["seq"] for h in json.loads(done.stdout)["hits"]} == want | UNPLACED, since


def test_since_through_mcp_reads_an_offset(tmp_path: Path) -> None:
    box = mailbox(tmp_path / "box")
    box.create_thread("t", creator="alice")
    for seq, created_at in CREATED.items():
        write_message(box.root / "threads" / "t" / f"{seq:06d}.json", f"quokka {seq}",
                      created_at=created_at)  # fmt: skip

    async def main() -> None:
        async with agent(box.root, "alice") as a:
            found = await call(a, "msg_search", query="quokka", since="2026-03-10T17:00:00+02:00")
            assert sorted(h["seq"] for h in found["hits"]) == [2, 3, 5, 6, 7]
            [tool] = [t for t in (await a.list_tools()).tools if t.name == "msg_search"]
            said = json.dumps(tool.input_schema["properties"]["since"])
            assert "UTC if no offset" in said and "+02:00" in said  # the model is told how

    anyio.run(main)
    helped = subprocess.run([sys.executable, "-m", "mailslot", "search", "--help"],
                            capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    assert "UTC where no offset" in " ".join(helped.stdout.split())


BAD_THREADS = ["x) OR (y", "../t", "T", "t' OR '1'='1", "no-such-thread"]


def test_thread_filter_must_name_a_thread(searched: Mailbox) -> None:
    """An invalid or unknown thread is a clear error, as for every other call taking a thread
    (box.messages, msg_list, msg_search), not a silent 'no match'."""
    with pytest.raises(InvalidName):
        next(searched.messages("x) OR (y"))  # what the rest of the library does
    silent = []
    for thread in BAD_THREADS:
        try:
            found = searched.search("schema", thread=thread)
        except (InvalidName, NoSuchThread) as e:
            assert "thread" in str(e)
        else:
            silent.append((thread, found.total))
    done = cli(searched.root, "schema", "--thread", "x) OR (y")
    if done.returncode != 1:
        silent.append(("command --thread 'x) OR (y'", done.stdout.strip()))
    else:
        # The command reads a thread as an id or a topic, as the tools do (issue 27, item 13).
        assert "no thread has the id or topic 'x) OR (y'" in done.stderr, done.stderr
        assert len(done.stderr.splitlines()) == 1
    assert silent == [], "an unusable thread filter answered 'no match' instead of an error"


def test_thread_filter_must_name_a_thread_through_mcp(searched: Mailbox) -> None:
    async def main() -> None:
        async with agent(searched.root, "alice") as a:
            for thread in BAD_THREADS:
                if thread in ("T", "../t"):  # MCP reads a thread as an id or a topic: these
                    found = await call(a, "msg_search", query="schema", thread=thread)
                    assert found["total"] == 1  # are topics whose slug is t, as in msg_list
                    continue
                text = await refused(a, "msg_search", query="schema", thread=thread)
                assert "thread" in text, text
            ok = await call(a, "msg_search", query="schema", thread="t")
            assert ok["total"] == 1

    anyio.run(main)


# ---------------------------------------------------------------- 6. the index is a cache


def damage(path: Path, how: str) -> None:
    if how == "deleted":
        path.unlink()
    elif how == "emptied":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(random.Random(1).randbytes(path.stat().st_size or 4096))
    elif how == "state-removed":
        shutil.rmtree(path.parent.parent.parent / ".state")
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["deleted", "emptied", "garbage", "state-removed"])
def test_damaged_index_is_rebuilt_under_a_running_serve(tmp_path: Path, how: str) -> None:
    box = mailbox(tmp_path / "box")
    box.create_thread("t", creator="alice")
    for i in range(50):
        box.post("t", f"heron sighting {i}", sender="alice")
    path = index_path(box.root)
    assert path == box.root / ".state" / "search" / "index.sqlite"

    async def main() -> None:
        async with agent(box.root, "alice") as a:
            assert (await call(a, "msg_search", query="heron", limit=100))["total"] == 50
            assert path.exists()
            damage(path, how)
            box.post("t", "heron after the damage", sender="bob")
            found = await call(a, "msg_search", query="heron", limit=100)
            assert found["total"] == 51
            seqs = [h["seq"] for h in found["hits"]]
            assert sorted(seqs) == list(range(1, 52))
            # again, between two library queries of this process
            damage(path, how)
            assert box.search("heron", limit=100).total == 51
            damage(path, how)
            assert (await call(a, "msg_search", query="sighting", limit=100))["total"] == 50
            await call(a, "msg_post", thread="t", content="heron again")  # serve still fine
            assert box.search('"heron again"').total == 1

    anyio.run(main)


def test_one_damaged_page_of_the_index_is_rebuilt_not_an_error(tmp_path: Path) -> None:
    """Damage that SQLite notices only while the search reads the index (not while opening
    it) must also be repaired by a rebuild, not break the search that noticed it."""
    box = mailbox(tmp_path / "box")
    box.create_thread("t", creator="alice")
    for i in range(200):
        box.post("t", f"message {i} about schema migration and word{i} " + "filler " * 30,
                 sender="alice")  # fmt: skip
    assert box.search("schema").total == 200
    path = index_path(box.root)
    good = path.read_bytes()
    failures = []
    for page in range(1, len(good) // 4096):
        data = bytearray(good)
        data[page * 4096 : (page + 1) * 4096] = random.Random(page).randbytes(4096)
        path.write_bytes(bytes(data))
        try:
            total = Mailbox(box.root).search("schema").total
        except Exception as e:
            failures.append(f"page {page}: {type(e).__name__}: {e}")
        else:
            if total != 200:
                failures.append(f"page {page}: total {total}")
    assert failures == []


# ---------------------------------------------------------------- 7. concurrency


def test_queries_and_posts_race(tmp_path: Path) -> None:
    """8 processes search in a loop, from the first one (no index yet), while 4 post."""
    box = mailbox(tmp_path / "box")
    for t in ("a", "b"):
        box.create_thread(t, creator="alice")
    go, stop = tmp_path / "go", tmp_path / "stop"
    writers, each = 4, 25
    posters = [
        python_c(POSTER, str(box.root), "ab"[w % 2], f"w{w}", str(each), str(go))
        for w in range(writers)
    ]
    queriers = [python_c(QUERIER, str(box.root), f"q{q}", str(go), str(stop)) for q in range(8)]
    procs = posters + queriers
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready", p.stderr.read() if p.stderr else ""
        assert not index_path(box.root).exists()
        go.touch()
        for p in posters:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0 and out.strip() == "done", err
        time.sleep(0.3)  # let the queriers search a while after the last post too
        stop.touch()
        reports = []
        for p in queriers:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0, err
            assert "Traceback" not in err, err
            reports.append(json.loads(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert all(r["queries"] > 0 for r in reports)
    # each querier's last search, made after every post, saw every message
    assert [r["last"] for r in reports] == [writers * each] * 8
    found = box.search("concurrent", limit=100)
    assert found.total == writers * each
    assert len(set(keys(found))) == writers * each
    assert Counter(h.message.sender for h in found.hits) == {f"w{w}": each for w in range(writers)}
    for w in range(writers):
        assert box.search(f"w{w}", limit=100).total == each
        for j in range(each):
            assert box.search(f"uniqw{w}n{j}").total == 1


STAMPEDE = """
import json, sys, time
from pathlib import Path
from mailslot import Mailbox
root, rounds, gate = sys.argv[1:]
print("ready", flush=True)
for r in range(int(rounds)):
    while not Path(f"{gate}{r}").exists():
        time.sleep(0.0005)
    try:
        print(json.dumps(Mailbox(root).search("stampede", limit=1).total), flush=True)
    except Exception as e:
        print(json.dumps(f"{type(e).__name__}: {e}"), flush=True)
"""


def test_first_searches_of_many_processes_at_once(tmp_path: Path) -> None:
    """Processes that find no index and search at the same moment each get every hit: none
    fails while another creates the index, none drops the tables another is reading."""
    box = mailbox(tmp_path / "box")
    box.create_thread("t", creator="alice")
    for i in range(300):
        box.post("t", f"stampede {i}", sender="alice")
    rounds, gate = 12, tmp_path / "go"
    procs = [python_c(STAMPEDE, str(box.root), str(rounds), str(gate)) for _ in range(12)]
    answers: list[Any] = []
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for r in range(rounds):
            shutil.rmtree(box.root / ".state" / "search", ignore_errors=True)
            Path(f"{gate}{r}").touch()
            for p in procs:
                assert p.stdout is not None
                answers.append(json.loads(p.stdout.readline()))
        for p in procs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    wrong = Counter(a for a in answers if a != 300)
    assert wrong == Counter(), f"of {len(answers)} first searches: {wrong}"


# ---------------------------------------------------------------- 8. pending and damaged files


def test_pending_file_is_not_indexed_until_it_is_complete(tmp_path: Path) -> None:
    box = mailbox(tmp_path / "box")
    box.create_thread("t", creator="alice")
    for i in range(6):
        box.post("t", f"alpha {i}", sender="alice")
    slow = Mailbox(box.root, grace_s=60)  # the writer of 000007.json is still at it
    pending = box.root / "threads" / "t" / "000007.json"
    pending.write_bytes(b"")
    found = slow.search("alpha", limit=100)
    assert [h.message.seq for h in found.hits] == [1, 2, 3, 4, 5, 6]
    assert found.skipped == []
    write_message(pending, "alpha seven arrives")  # the writer finished
    found = slow.search("alpha", limit=100)
    assert sorted(h.message.seq for h in found.hits) == [1, 2, 3, 4, 5, 6, 7]
    assert slow.search("seven").total == 1
    assert Mailbox(box.root).search("seven").total == 1


def test_garbage_file_past_grace_is_skipped_and_reported(tmp_path: Path) -> None:
    box = mailbox(tmp_path / "box")
    box.create_thread("t", creator="alice")
    set_config(box.root, grace_s=0.5)
    box = Mailbox(box.root)
    for i in range(3):
        box.post("t", f"beta {i}", sender="alice")
    tdir = box.root / "threads" / "t"
    (tdir / "000004.json").write_bytes(b'{"from": "alice", "content": "beta torn')
    write_message(tdir / "000005.json", "beta five after the garbage")
    (tdir / "000006.json").write_bytes(b"\x00garbage\xff" * 10)
    time.sleep(0.8)
    found = box.search("beta", limit=100)
    assert sorted(h.message.seq for h in found.hits) == [1, 2, 3, 5]
    assert sorted(Path(d.path).name for d in found.skipped) == ["000004.json", "000006.json"]
    assert all(d.reason for d in found.skipped)
    box.post("t", "beta seven", sender="bob")
    assert sorted(h.message.seq for h in box.search("beta", limit=100).hits) == [1, 2, 3, 5, 7]
    # the command still prints the hits
    done = cli(box.root, "beta", "--json")
    assert done.returncode == 0, done.stderr
    assert sorted(h["seq"] for h in json.loads(done.stdout)["hits"]) == [1, 2, 3, 5, 7]


def test_empty_file_young_is_not_a_hit_even_with_low_grace(tmp_path: Path) -> None:
    box = mailbox(tmp_path / "box")
    box.create_thread("t", creator="alice")
    set_config(box.root, grace_s=5)
    box = Mailbox(box.root)
    box.post("t", "gamma one", sender="alice")
    (box.root / "threads" / "t" / "000002.json").write_bytes(b"")
    found = box.search("gamma")
    assert keys(found) == [("t", 1)] and found.skipped == []
    assert cli(box.root, "gamma", "--json").returncode == 0


# ---------------------------------------------------------------- 9. without FTS5


def test_scan_fallback_finds_the_same_and_warns_once(tmp_path: Path) -> None:
    box = mailbox(tmp_path / "box")
    for t in ("x", "y"):
        box.create_thread(t, creator="alice")
    texts = ["the schema migration is done", "migration of the schema failed twice",
             "schema only", "migration only", "Schema and MIGRATION shouted"]  # fmt: skip
    for i, text in enumerate(texts):
        box.post("xy"[i % 2], text, sender="alice")
    fts = cli(box.root, "schema migration", "--json")
    scan = cli(box.root, "schema migration", "--json", env={"MAILSLOT_SEARCH_ENGINE": "scan"})
    assert fts.returncode == 0 and scan.returncode == 0, (fts.stderr, scan.stderr)
    fts_doc, scan_doc = json.loads(fts.stdout), json.loads(scan.stdout)
    assert (fts_doc["engine"], scan_doc["engine"]) == ("fts5", "scan")
    hits = {(h["thread"], h["seq"]) for h in fts_doc["hits"]}
    assert hits == {(h["thread"], h["seq"]) for h in scan_doc["hits"]}
    assert len(hits) == 3 and scan_doc["total"] == fts_doc["total"] == 3
    assert fts.stderr == ""
    assert len(scan.stderr.splitlines()) == 1, scan.stderr
    assert "MAILSLOT_SEARCH_ENGINE=scan: searching by reading every message" in scan.stderr
    assert "no FTS5" not in scan.stderr  # this SQLite has it: the warning says why it scans
    # once per process, however many searches it makes
    code = (
        "import sys, logging; logging.basicConfig(); from mailslot import Mailbox; "
        "b = Mailbox(sys.argv[1]); "
        "print([b.search(q).total for q in ('schema', 'migration', 'schema migration')])"
    )
    done = subprocess.run([sys.executable, "-c", code, str(box.root)], capture_output=True,
                          text=True, timeout=60, check=True,
                          env={**os.environ, "MAILSLOT_SEARCH_ENGINE": "scan"})  # fmt: skip
    assert done.stdout.strip() == "[4, 4, 3]"
    assert done.stderr.count("searching by reading every message") == 1


# ---------------------------------------------------------------- 10. where the index lives


def test_index_lives_under_state_and_nothing_under_threads(tmp_path: Path) -> None:
    box = mailbox(tmp_path / "box")
    box.create_thread("t", creator="alice")
    box.post("t", "ibis", sender="alice")
    before = sorted(p.relative_to(box.root) for p in (box.root / "threads").rglob("*"))
    assert box.search("ibis").total == 1
    path = index_path(box.root)
    assert path == box.root / ".state" / "search" / "index.sqlite"
    assert path.is_file() and path.stat().st_size > 0
    after = sorted(p.relative_to(box.root) for p in (box.root / "threads").rglob("*"))
    assert after == before
    assert ".state" in (box.root / ".gitignore").read_text()  # the cache is never committed


def test_index_of_a_network_root_lives_in_the_local_cache(
    mounts: tuple[Path, Path],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = mounts
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    box = mailbox(a / "search")
    box.create_thread("t", creator="alice")
    box.post("t", "pelican on the mount", sender="alice")
    assert box.search("pelican").total == 1
    path = index_path(box.root)
    assert path.is_relative_to(cache / "mailslot" / "search") and path.is_file()
    assert not (box.root / ".state" / "search").exists()
    # the other mount of the same export: posts seen there are found here
    Mailbox(b / "search").post("t", "pelican through b", sender="bob")
    assert box.search("pelican").total == 2
    # and through the command, with the cache where the environment says
    done = cli(box.root, "pelican", "--json", env={"XDG_CACHE_HOME": str(cache)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["total"] == 2
    assert not (box.root / ".state" / "search").exists()
    assert not any(p.suffix == ".sqlite" for p in box.root.rglob("*"))


def test_query_errors_are_mailslot_errors(searched: Mailbox) -> None:
    """Whatever a hostile query does, callers catching MailslotError catch it."""
    for query in [*HOSTILE, "NEAR(a b", "a OR", ")", "^", "AND", '"', "+"]:
        with pytest.raises(MailslotError):
            searched.search(query)


# ---------------------------------------------------------------- 11. the folder rewritten


def hit_texts(box: Mailbox, query: str) -> list[tuple[int, str]]:
    """Return (seq, content) of every hit of query in thread t, each checked against its file."""
    found = box.search(query, limit=100)
    assert found.total == len(found.hits), query
    for h in found.hits:
        assert query in h.message.content, f"{query!r} hit a message without it: {h.message}"
    return sorted((h.message.seq, h.message.content) for h in found.hits)


def test_a_seq_taken_again_after_the_newest_file_was_removed(tmp_path: Path) -> None:
    """The newest file is removed (a checkout of an older branch does that) and a post takes
    its seq again: the index holds the old message there and must notice the new one."""
    box = mailbox(tmp_path / "box")
    box.create_thread("t", creator="alice")
    box.post("t", "aardvark first", sender="alice")
    box.post("t", "badger second", sender="alice")
    assert hit_texts(box, "badger") == [(2, "badger second")]
    (box.root / "threads" / "t" / "000002.json").unlink()
    assert box.post("t", "capybara takes seq two", sender="bob") == 2
    assert hit_texts(box, "capybara") == [(2, "capybara takes seq two")]
    assert hit_texts(box, "badger") == []
    assert hit_texts(box, "aardvark") == [(1, "aardvark first")]
    # a process that never searched before sees the same, from the same index file
    assert keys(Mailbox(box.root).search("capybara")) == [("t", 2)]


def test_a_message_rewritten_in_the_middle_is_never_a_wrong_hit(tmp_path: Path) -> None:
    """A file below the newest one is rewritten in place (an editor, a bad merge): the hit for
    its old words is read back, is not what was indexed, and the thread is indexed again."""
    box = mailbox(tmp_path / "box")
    box.create_thread("t", creator="alice")
    for word in ("dingo", "emu", "ferret"):
        box.post("t", f"{word} sighted", sender="alice")
    assert hit_texts(box, "emu") == [(2, "emu sighted")]
    write_message(box.root / "threads" / "t" / "000002.json", "gecko sighted instead")
    assert hit_texts(box, "emu") == []  # not the message now at seq 2, which lacks the word
    assert hit_texts(box, "gecko") == [(2, "gecko sighted instead")]
    assert hit_texts(box, "sighted") == [(1, "dingo sighted"), (2, "gecko sighted instead"),
                                         (3, "ferret sighted")]  # fmt: skip


def test_two_messages_rewritten_in_the_middle_are_both_found_at_once(tmp_path: Path) -> None:
    """Two files below the newest are rewritten in place: the one search that meets both stale
    hits indexes the thread again from below the lower one, so it returns both new messages
    (going back only below the higher one would leave the lower one out of this answer)."""
    box = mailbox(tmp_path / "box")
    box.create_thread("t", creator="alice")
    for word in ("ibis", "jackal", "koala", "lemur", "marmot"):
        box.post("t", f"{word} sighted", sender="alice")
    assert len(hit_texts(box, "sighted")) == 5
    write_message(box.root / "threads" / "t" / "000002.json", "newt sighted instead")
    write_message(box.root / "threads" / "t" / "000004.json", "otter sighted instead")
    assert hit_texts(box, "sighted") == [
        (1, "ibis sighted"), (2, "newt sighted instead"), (3, "koala sighted"),
        (4, "otter sighted instead"), (5, "marmot sighted"),
    ]  # fmt: skip


def test_a_thread_deleted_and_created_again_is_searched_afresh(tmp_path: Path) -> None:
    box = mailbox(tmp_path / "box")
    box.create_thread("t", creator="alice")
    for i in range(3):
        box.post("t", f"ocelot {i}", sender="alice")
    assert box.search("ocelot").total == 3
    shutil.rmtree(box.root / "threads" / "t")
    other = Mailbox(box.root)  # another process creates it again under the same id
    other.create_thread("t", creator="bob")
    other.post("t", "panther in the new thread", sender="bob")
    # the new message first: a hit for the old words would also show the index is stale
    assert hit_texts(box, "panther") == [(1, "panther in the new thread")]
    assert hit_texts(box, "ocelot") == []


def test_a_gap_after_the_indexed_place_is_waited_for_then_indexed(tmp_path: Path) -> None:
    """Seq 3 is missing while seq 4 exists (a sync still arriving): the index never passes it,
    and both are found once 3 arrives."""
    box = mailbox(tmp_path / "box")
    box.create_thread("t", creator="alice")
    box.post("t", "heron one", sender="alice")
    box.post("t", "heron two", sender="alice")
    slow = Mailbox(box.root, grace_s=60)
    assert slow.search("heron").total == 2
    tdir = box.root / "threads" / "t"
    write_message(tdir / "000004.json", "heron four arrived early")
    found = slow.search("heron")
    assert sorted(h.message.seq for h in found.hits) == [1, 2] and found.skipped == []
    write_message(tdir / "000003.json", "heron three arrived late")
    assert hit_texts(slow, "heron") == [(1, "heron one"), (2, "heron two"),
                                        (3, "heron three arrived late"),
                                        (4, "heron four arrived early")]  # fmt: skip
    assert hit_texts(slow, "late") == [(3, "heron three arrived late")]


def test_a_damaged_file_repaired_later_is_found(tmp_path: Path) -> None:
    """A file stepped over as damage (and a seq stepped over as missing) is reported by every
    search, and found once git restores it, without indexing the thread again."""
    box = mailbox(tmp_path / "box")
    box.create_thread("t", creator="alice")
    set_config(box.root, grace_s=0.2)
    box = Mailbox(box.root)
    box.post("t", "ibex one", sender="alice")
    tdir = box.root / "threads" / "t"
    (tdir / "000002.json").write_bytes(b"\x00garbage")
    write_message(tdir / "000004.json", "ibex four after a lost seq")
    time.sleep(0.5)  # past grace: seq 2 is damage, seq 3 a gap
    for _ in range(2):  # every search says what it could not read, not only the first
        found = box.search("ibex")
        assert sorted(h.message.seq for h in found.hits) == [1, 4]
        assert sorted(Path(d.path).name for d in found.skipped) == ["000002.json", "000003.json"]
    write_message(tdir / "000002.json", "ibex two restored")
    write_message(tdir / "000003.json", "ibex three restored")
    found = box.search("restored")
    assert sorted(h.message.seq for h in found.hits) == [2, 3] and found.skipped == []
    assert box.search("ibex").total == 4


def test_git_checkout_between_branches_changes_what_is_found(
    git: dict[str, str], tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git_init(git, repo, "x")
    box = mailbox(repo / ".mailslot")
    box.create_thread("t", creator="alice")
    box.post("t", "shared jackal", sender="alice")

    def commit(branch: str, *texts: str) -> None:
        run_git(git, repo, "checkout", "-q", "-b", branch, "main")
        for text in texts:
            Mailbox(box.root).post("t", text, sender="alice")
        run_git(git, repo, "add", "-A")
        run_git(git, repo, "commit", "-q", "-m", branch)

    run_git(git, repo, "add", "-A")
    run_git(git, repo, "commit", "-q", "-m", "main")
    commit("long", "kestrel two", "kestrel three")
    commit("short", "lemur two")
    commit("same", "marmot two", "marmot three")
    expect = {
        "long": {"kestrel": [2, 3], "lemur": [], "marmot": []},
        "short": {"kestrel": [], "lemur": [2], "marmot": []},
        "same": {"kestrel": [], "lemur": [], "marmot": [2, 3]},
    }
    for branch in ("long", "short", "long", "same", "long", "same", "short"):
        run_git(git, repo, "checkout", "-q", branch)
        for word, seqs in expect[branch].items():
            assert [s for s, _ in hit_texts(box, word)] == seqs, (branch, word)
        assert [s for s, _ in hit_texts(box, "jackal")] == [1]


def test_doctor_fix_after_a_merge_conflict_is_searched_as_it_now_is(
    git: dict[str, str], tmp_path: Path
) -> None:
    """Two clones post at seqs 3 and 4; one has also posted a 5th and searched. It pulls the
    other and runs doctor --fix: the other clone's messages keep 3 and 4, its own move to 6
    and 7, and its 5th stays (so the file at the index's place is unchanged: only doctor's
    rewind mark says what changed)."""
    origin = repo_with_thread(git, tmp_path / "origin")
    a = git_clone(git, origin, tmp_path / "a", "alice")
    b = git_clone(git, origin, tmp_path / "b", "bob")
    with Mailbox(b / ".mailslot") as theirs:  # bob posts first: his side keeps the seqs
        theirs.post("t", "bison from bob", sender="bob")
        theirs.post("t", "buffalo from bob", sender="bob")
    run_git(git, b, "add", "-A")
    run_git(git, b, "commit", "-q", "-m", "bob")
    time.sleep(0.01)  # the two sides' first messages never share a millisecond
    box = Mailbox(a / ".mailslot")
    for word in ("aardvark", "anteater", "alpaca"):
        box.post("t", f"{word} from alice", sender="alice")
    run_git(git, a, "add", "-A")
    run_git(git, a, "commit", "-q", "-m", "alice")
    assert hit_texts(box, "alice") == [(3, "aardvark from alice"), (4, "anteater from alice"),
                                       (5, "alpaca from alice")]  # fmt: skip
    run_git(git, a, "pull", "-q", "--no-rebase", str(b), "main", ok=False)
    done = subprocess.run([sys.executable, "-m", "mailslot", "doctor", "--fix", "--root",
                           str(a / ".mailslot")], capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert hit_texts(box, "bison") == [(3, "bison from bob")]
    assert hit_texts(box, "buffalo") == [(4, "buffalo from bob")]
    assert hit_texts(box, "aardvark") == [(6, "aardvark from alice")]
    assert hit_texts(box, "anteater") == [(7, "anteater from alice")]
    assert hit_texts(box, "alpaca") == [(5, "alpaca from alice")]
    assert [s for s, _ in hit_texts(box, "from")] == [1, 3, 4, 5, 6, 7]


def repo_with_thread(env: dict[str, str], path: Path) -> Path:
    """Return a git repository holding a mailbox with thread t of two messages."""
    path.mkdir()
    git_init(env, path, "origin")
    box = mailbox(path / ".mailslot")
    box.create_thread("t", creator="alice")
    box.post("t", "hello from the shared history", sender="alice")
    box.post("t", "and a reply", sender="bob")
    run_git(env, path, "add", "-A")
    run_git(env, path, "commit", "-q", "-m", "a mailbox")
    return path


def git_clone(env: dict[str, str], origin: Path, dest: Path, user: str) -> Path:
    run_git(env, origin.parent, "clone", "-q", str(origin), str(dest))
    run_git(env, dest, "config", "user.name", user)
    run_git(env, dest, "config", "user.email", f"{user}@example.org")
    return dest
