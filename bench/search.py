"""Search: mailslot's full-text index beside `grep -r -l` and `rg -l` over the same folder.

A mailbox of many messages in many threads is filled through `Mailbox.post` (fsync off), with
text drawn from a vocabulary of a few thousand made-up words (Zipf-distributed, so a few words
are in nearly every message) and some terms planted in a known number of messages, so every
query has a known answer. Then, in one run: the first search (which builds the index from
nothing), warm queries through the library, a query after 10 new messages, and what a user
would otherwise type, `grep -r -l -F` and `rg -l -F` over `<root>/threads`, for the same terms.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from bench._util import SCRATCH, percentile, table, timed
from mailslot import Mailbox
from mailslot.coordination.search_index import index_path

VOCAB = 3000
WORDS_PER_MESSAGE = (20, 80)
RARE = "zephyrquill"  # in exactly RARE_N messages
RARE_N = 50
PHRASE = ("amber", "lattice")  # together in PHRASE_N messages, each alone in SOLO_N others
PHRASE_N = 200
SOLO_N = 300
PREFIX = "deploy"  # deploy, deployed, deploys, deployment: in PREFIX_N messages
PREFIX_N = 1000
REPEATS = 30
GREP_RUNS = 3
FRESH_NEW = 10


def _vocabulary(rng: random.Random) -> list[str]:
    """Return VOCAB made-up words of consonant-vowel syllables: no two consonants meet and no
    q, x, y or z, so no word holds a planted term (amber, lattice, deploy, zephyrquill)."""
    cons, vows = "bcdfghjklmnprstvw", "aeiou"
    words: set[str] = set()
    while len(words) < VOCAB:
        n = rng.choice((2, 2, 3, 3, 3, 4))
        words.add("".join(rng.choice(cons) + rng.choice(vows) for _ in range(n)))
    return sorted(words, key=lambda w: (len(w), w))


def _texts(n: int, rng: random.Random) -> tuple[list[str], str]:
    """Return n message texts with the planted terms, and the most frequent word."""
    vocab = _vocabulary(rng)
    rng.shuffle(vocab)
    weights = [1 / (r + 1) for r in range(len(vocab))]  # Zipf: vocab[0] is the commonest
    picks = rng.sample(range(n), RARE_N + PHRASE_N + 2 * SOLO_N + PREFIX_N)
    plant: dict[int, str] = {}
    cuts = [RARE_N, PHRASE_N, SOLO_N, SOLO_N, PREFIX_N]
    terms = [RARE, " ".join(PHRASE), PHRASE[0], PHRASE[1], PREFIX]
    start = 0
    for count, term in zip(cuts, terms, strict=True):
        for i in picks[start : start + count]:
            plant[i] = term
        start += count
    forms = ["deploy", "deployed", "deploys", "deployment"]
    out = []
    for i in range(n):
        words = rng.choices(vocab, weights, k=rng.randint(*WORDS_PER_MESSAGE))
        term = plant.get(i)
        if term is not None:
            words.insert(
                rng.randrange(len(words) + 1), rng.choice(forms) if term == PREFIX else term
            )
        sentences = [
            " ".join(words[j : j + 12]).capitalize() + "." for j in range(0, len(words), 12)
        ]
        out.append(" ".join(sentences))
    return out, vocab[0]


def _fill(
    root: Path, texts: list[str], threads: int, rng: random.Random
) -> tuple[Mailbox, list[str]]:
    box = Mailbox.init(root, fsync=False)
    ids = [box.create_thread(f"topic {i}", creator="bench").id for i in range(threads)]
    for i, text in enumerate(texts):
        box.post(ids[i % threads], text, sender=f"agent{rng.randrange(8)}")
    return box, ids


def _sizes(folder: Path) -> tuple[int, int]:
    """Return the bytes of the files under folder, and the bytes they take on disk."""
    size = disk = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            size += st.st_size
            disk += st.st_blocks * 512
    return size, disk


def _external(argv: list[str]) -> tuple[list[float], int]:
    """Run argv once to warm the page cache, then GREP_RUNS times; return the times and the
    number of files it listed."""
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode > 1:
        raise RuntimeError(f"{argv[0]} failed: {out.stderr[-500:]}")
    found = len(out.stdout.splitlines())
    times = timed(lambda: subprocess.run(argv, capture_output=True, check=False), GREP_RUNS)
    return times, found


def measure(quick: bool) -> dict[str, Any]:
    n, threads = (10_000, 10) if quick else (100_000, 100)
    rng = random.Random(20260)
    texts, common = _texts(n, rng)
    rg = shutil.which("rg")
    queries = [
        ("a common word", common, [common]),
        ("a rare word", RARE, [RARE]),
        ("a phrase", f'"{" ".join(PHRASE)}"', [" ".join(PHRASE)]),
        ("a prefix", f"{PREFIX}*", [PREFIX]),
        ("an OR", f"{RARE} OR {PHRASE[0]}", [RARE, PHRASE[0]]),
    ]
    out: dict[str, Any] = {"n": n, "threads": threads, "rg": rg, "rows": []}
    with tempfile.TemporaryDirectory(dir=SCRATCH) as d:
        root = Path(d) / "box"
        t0 = time.perf_counter()
        box, ids = _fill(root, texts, threads, rng)
        out["fill_s"] = time.perf_counter() - t0
        tdir = root / "threads"

        t0 = time.perf_counter()
        first = box.search(RARE)
        out["build_s"] = time.perf_counter() - t0
        out["engine"] = first.engine

        for label, query, patterns in queries:
            samples = timed(
                lambda q=query: box.search(q), REPEATS, warm=lambda q=query: box.search(q)
            )
            total = box.search(query).total
            pats = [a for p in patterns for a in ("-e", p)]
            grep_t, grep_n = _external(["grep", "-r", "-l", "-i", "-F", *pats, str(tdir)])
            if rg:
                rg_t, rg_n = _external([rg, "-l", "-i", "-F", "--no-ignore", *pats, str(tdir)])
            else:
                rg_t, rg_n = [], -1
            row = {"label": label, "query": query, "total": total, "grep_n": grep_n}
            row |= {"p50": percentile(samples, 50), "p99": percentile(samples, 99)}
            row |= {"grep": statistics.median(grep_t), "rg_n": rg_n}
            row["rg"] = statistics.median(rg_t) if rg_t else 0.0
            out["rows"].append(row)
        rare = out["rows"][1]
        out["check"] = rare["total"] == rare["grep_n"] == RARE_N and rare["rg_n"] in (-1, RARE_N)

        # Freshness: FRESH_NEW new messages (one with the rare word) between queries, all in
        # one thread, then each in a different thread (one index transaction per thread).
        expect = RARE_N
        plain = [t for t in texts if RARE not in t.lower()]
        for where in ("one", "spread"):
            fresh = []
            for r in range(10 if quick else 15):
                for k in range(FRESH_NEW):
                    text = rng.choice(plain) + (f" {RARE}" if k == 0 else "")
                    thread = ids[r % threads] if where == "one" else ids[(r + k) % threads]
                    box.post(thread, text, sender="late")
                expect += 1
                t0 = time.perf_counter()
                got = box.search(RARE).total
                fresh.append(time.perf_counter() - t0)
                if got != expect:
                    raise AssertionError(
                        f"{got} hits for {RARE} after {r + 1} rounds, not {expect}"
                    )
            out[f"fresh_{where}"] = (percentile(fresh, 50), percentile(fresh, 99))

        out["threads_size"] = _sizes(tdir)
        ipath = index_path(root)
        out["index_size"] = _sizes(ipath.parent)
        out["index_where"] = str(ipath.relative_to(root)) if ipath.is_relative_to(root) else "cache"
    return out


def _ms(x: float) -> str:
    return f"{x * 1e3:.2f} ms" if x < 1 else f"{x:.2f} s"


def _mb(x: int) -> str:
    return f"{x / 2**20:.1f} MiB"


def _x(theirs: float, ours: float) -> str:
    return f"{theirs / ours:.0f}×" if theirs and ours else ""


def render(v: dict[str, Any]) -> str:
    n, rg = v["n"], v["rg"]
    headers = ["query", "hits (mailslot / grep / rg)", "mailslot p50 / p99", "grep -r -l",
               "rg -l", "vs rg", "vs grep"]  # fmt: skip
    rows = []
    for r in v["rows"]:
        hits = f"{r['total']:,} / {r['grep_n']:,} / " + (f"{r['rg_n']:,}" if rg else "-")
        rows.append(
            [f"{r['label']}: `{r['query']}`", hits, f"{_ms(r['p50'])} / {_ms(r['p99'])}",
             _ms(r["grep"]), _ms(r["rg"]) if rg else "skipped", _x(r["rg"], r["p50"]) if rg else "",
             _x(r["grep"], r["p50"])]
        )  # fmt: skip
    body = table(headers, rows)
    ts, tdisk = v["threads_size"]
    isize, _ = v["index_size"]
    facts = [
        ["messages, threads", f"{n:,} in {v['threads']}"],
        ["fill: Mailbox.post, fsync off", f"{v['fill_s']:.1f} s ({n / v['fill_s']:,.0f} msgs/s)"],
        ["first search (builds the index from nothing)",
         f"{v['build_s']:.2f} s ({n / v['build_s']:,.0f} msgs/s)"],
        [f"the rare word after {FRESH_NEW} new messages in one thread, p50 / p99",
         " / ".join(map(_ms, v["fresh_one"]))],
        [f"  same, the {FRESH_NEW} in {FRESH_NEW} different threads",
         " / ".join(map(_ms, v["fresh_spread"]))],
        [f"index ({v['index_where']}, with its WAL)", _mb(isize)],
        ["threads folder: file bytes / on disk", f"{_mb(ts)} / {_mb(tdisk)}"],
        [f"rare word: mailslot total == grep files == {RARE_N}",
         "yes" if v["check"] else "NO"],
    ]  # fmt: skip
    body += "\n\n" + table(["measure", "value"], facts)
    if not rg:
        body += "\n\nrg column skipped: `rg` (ripgrep) is not on PATH."
    rare = v["rows"][1]
    if rg:
        wins = [r["label"] for r in v["rows"] if r["rg"] >= 20 * r["p50"]]
        misses = [r["label"] for r in v["rows"] if r["rg"] < 20 * r["p50"]]
        goal = (
            f"The goal, a warm query at least 20× faster than rg, is met for {len(wins)} of "
            f"{len(v['rows'])} queries"
            + (f" (not for {', '.join(misses)})" if misses else "")
            + f"; the rare word: {_x(rare['rg'], rare['p50'])}."
        )
    else:
        goal = "The goal (20× faster than rg) cannot be judged without rg."
    text = [
        "What is timed. mailslot: `Mailbox.search(query)` (limit 20) in this process, after one "
        f"warm-up call, {REPEATS} times each; every call first checks each thread for new "
        "messages, runs the FTS5 query, counts all matches, ranks them (bm25), and reads the top "
        f"20 back from their files. grep and rg: one run to warm the page cache, then the median "
        f"of {GREP_RUNS}, each a new process listing the matching files (-i -F: case-insensitive "
        "fixed strings, as the index matches; rg with --no-ignore, since the scratch folder is "
        "git-ignored). grep and rg match substrings of the whole file, mailslot words of the "
        "content; the terms are chosen so that both must agree, and the hit counts show they "
        "do. " + goal,
        "A query's cost grows with its matches more than with the folder: a rare word is "
        "counted and read back quickly, while the common word, in nearly every message, is "
        "counted and ranked in full at each call. The first search pays for indexing "
        f"everything once. A query after {FRESH_NEW} new messages indexes those only, yet costs "
        "several times a warm one: profiled, the extra is SQLite's commit of each index "
        "transaction (one per thread with new messages, hence the spread row) and the WAL "
        "checkpoint when the search closes its connection, all synced, not the indexing of "
        "ten messages. The folder was just written, so the build read it from the page cache; "
        "a build after a reboot also reads the disk.",
    ]
    return body + "\n\n" + "\n\n".join(textwrap.fill(p, 100, break_on_hyphens=False) for p in text)


def run(quick: bool) -> str:
    """Return the section measured now."""
    return render(measure(quick))


if __name__ == "__main__":
    SCRATCH.mkdir(parents=True, exist_ok=True)
    print(run("--quick" in sys.argv))
