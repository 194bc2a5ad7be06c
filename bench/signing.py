"""Signing (issue 33): what signed messages cost, each figure beside the unsigned one, same run.

A signing sender is one with a key on this machine (``box.trust.own(name)``, as a served agent
gets); a non-signing sender has none, and a card too, so signing is the only difference. Both
post the same 400-character body into their own thread of the same root, in interleaved rounds
(the order swapped every round), so the machine's noise falls on both alike: read the ratios
and their spread (min-max over rounds), not the absolutes.

- per message: the canonical bytes, the Ed25519 sign and verify (``cryptography``), and
  ``Trust.check`` of a signature not seen before (cold) and seen before (cached);
- post: ``Mailbox.post`` throughput and latency, fsync off (the hot path, as bench/publish.py's
  and bench/scale.py's) and on (the default);
- wake: as bench/wake.py, a waiter process blocked in ``Mailbox.wait`` (which checks what it
  returns) woken by a post, from the start of post() (fsync off, and on as in wake.py), and
  from the link() of a file written beforehand (the reader's check alone);
- read: ``Mailbox.read`` of 200 messages and their msg_list view, cold (a new Mailbox: every
  signature checked) and warm (the same Mailbox again: checked signatures remembered).

The loop guard is off (one agent's burst of thousands of posts is the point here), and the keys
are made in a temporary XDG_CONFIG_HOME under the scratch folder, never in the real home.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from bench._util import SCRATCH, percentile, table
from bench.wake import _start
from mailslot import Mailbox
from mailslot.store import signing
from mailslot.store.format import Message, dumps, now_iso
from mailslot.views.model import page_view

BODY = "x" * 400
SIGNER, PLAIN = "signer", "plain"
Pair = tuple[list[float], list[float]]  # (signed samples, unsigned samples)


@contextlib.contextmanager
def _config_home() -> Iterator[None]:
    """Point XDG_CONFIG_HOME (keys and pins; inherited by waiter processes) at a temp folder."""
    before = os.environ.get("XDG_CONFIG_HOME")
    with tempfile.TemporaryDirectory(dir=SCRATCH) as home:
        os.environ["XDG_CONFIG_HOME"] = home
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("XDG_CONFIG_HOME", None)
            else:
                os.environ["XDG_CONFIG_HOME"] = before


@contextlib.contextmanager
def _root(fsync: bool) -> Iterator[tuple[Path, Mailbox]]:
    """Yield a new root (loop guard off) and a Mailbox on it where SIGNER has a key and a card,
    PLAIN a card and no key, each with a thread of its own named after it."""
    with tempfile.TemporaryDirectory(dir=SCRATCH) as d:
        root = Path(d) / "box"
        Mailbox.init(root)
        config = root / "mailslot.json"
        doc = json.loads(config.read_text(encoding="utf-8"))
        config.write_text(json.dumps({**doc, "loop_guard": False}), encoding="utf-8")
        box = Mailbox(root, fsync=fsync)
        box.trust.own(SIGNER)
        box.agents.register(PLAIN)
        for name in (SIGNER, PLAIN, "w"):
            box.create_thread(name, creator="bench")
        try:
            yield root, box
        finally:
            box.close()


def _us(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e6:,.1f}"


def _spread(ratios: list[float]) -> str:
    """Return the median of per-round ratios and their min-max."""
    return f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"


def _blocks(pair: Pair, k: int, stat: Callable[[list[float]], float]) -> list[float]:
    """Return stat(signed) / stat(unsigned) over k consecutive blocks of the samples."""
    signed, plain = pair
    size = max(1, min(len(signed), len(plain)) // k)
    return [
        stat(signed[i : i + size]) / stat(plain[i : i + size])
        for i in range(0, size * k, size)
        if signed[i : i + size] and plain[i : i + size]
    ]


def _p(q: float) -> Callable[[list[float]], float]:
    return lambda s: percentile(s, q)


# ---------------------------------------------------------------- (a) per message


def per_message(n: int) -> str:
    """Return the per-message costs (µs, median of n) of signing and checking, measured in
    rotation (one of each, n times) beside an unsigned Mailbox.post (fsync off)."""
    with _root(False) as (root, box):
        for i in range(n + 1):  # distinct messages: distinct signatures, none checked yet
            box.post(SIGNER, f"{BODY} {i}", sender=SIGNER)
            box.post(PLAIN, f"{BODY} {i}", sender=PLAIN)
        signed = box.read(SIGNER, 0, n + 1).messages
        plain = box.read(PLAIN, 0, n + 1).messages
        key = box.trust.keys.private(SIGNER)
        assert key is not None and signed[0].sig is not None
        got = signing.parse(signed[0].sig)
        assert not isinstance(got, str)
        pub, value, _ = got
        m, data = signed[0], signing.canonical(signed[0], None)
        fresh = Mailbox(root, fsync=False)  # its Trust has checked nothing yet
        fresh.trust.check(signed[0])  # its pins and the card read once, as any reader's are
        box.create_thread("ref", creator="bench")
        rows: list[tuple[str, Callable[[int], object]]] = [
            ("reference: Mailbox.post, unsigned sender (fsync off)",
             lambda i: box.post("ref", BODY, sender=PLAIN)),
            ("canonical bytes (signing.canonical)", lambda i: signing.canonical(m, None)),
            ("Ed25519 sign of them (cryptography)", lambda i: key.sign(data)),
            ("signing.sign: canonical bytes, sign, base64", lambda i: signing.sign(key, m, None)),
            ("Ed25519 verify (signing.verify)", lambda i: signing.verify(pub, value, data)),
            ("Trust.check, cold (a signature this process has not checked)",
             lambda i: fresh.trust.check(signed[i])),
            ("Trust.check, cached (checked before: canonical bytes hashed, looked up)",
             lambda i: fresh.trust.check(signed[i])),
            ("Trust.check of an unsigned message", lambda i: fresh.trust.check(plain[i])),
        ]  # fmt: skip
        samples: list[list[float]] = [[] for _ in rows]
        for i in range(1, n + 1):
            for (_, fn), out in zip(rows, samples, strict=True):
                t0 = time.perf_counter()
                fn(i)
                out.append(time.perf_counter() - t0)
        assert all(fresh.trust.check(m).state == signing.VALID for m in signed)
        fresh.close()
    ref = statistics.median(samples[0])
    body = [[what, _us(out), f"{statistics.median(out) / ref * 100:.1f} %"]
            for (what, _), out in zip(rows, samples, strict=True)]  # fmt: skip
    return table(["per message (400-character body), in rotation", "µs, median",
                  "of an unsigned post"], body)  # fmt: skip


def _each(calls: list[Callable[[], object]]) -> list[float]:
    out = []
    for fn in calls:
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------- (b) post


def _burst(box: Mailbox, sender: str, n: int) -> tuple[list[float], float]:
    """Post n messages as sender into its thread; return each post's seconds and msg/s."""
    lat = []
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        box.post(sender, BODY, sender=sender)
        lat.append(time.perf_counter() - t)
    return lat, n / (time.perf_counter() - t0)


def post(fsync: bool, rounds: int, n: int) -> list[str]:
    """Return one row: signed vs unsigned post throughput and latency, interleaved rounds."""
    with _root(fsync) as (_, box):
        _burst(box, SIGNER, 20), _burst(box, PLAIN, 20)  # warm both paths
        lat: Pair = ([], [])
        rate: Pair = ([], [])
        p50s, p95s = [], []
        for r in range(rounds):
            got = {}
            for sender in (SIGNER, PLAIN) if r % 2 == 0 else (PLAIN, SIGNER):
                got[sender] = _burst(box, sender, n)
            for i, sender in enumerate((SIGNER, PLAIN)):
                lat[i].extend(got[sender][0])
                rate[i].append(got[sender][1])
            p50s.append(percentile(got[SIGNER][0], 50) / percentile(got[PLAIN][0], 50))
            p95s.append(percentile(got[SIGNER][0], 95) / percentile(got[PLAIN][0], 95))
        assert box.get(SIGNER, 1).sig is not None and box.get(PLAIN, 1).sig is None
    ratios = [s / u for s, u in zip(*rate, strict=True)]
    return [
        "on" if fsync else "off",
        f"{rounds} × {n}",
        f"{statistics.median(rate[0]):,.0f} / {statistics.median(rate[1]):,.0f}",
        _spread(ratios),
        f"{percentile(lat[0], 50) * 1e6:.0f} / {percentile(lat[0], 95) * 1e6:.0f}",
        f"{percentile(lat[1], 50) * 1e6:.0f} / {percentile(lat[1], 95) * 1e6:.0f}",
        _spread(p50s),
        _spread(p95s),
    ]


# ---------------------------------------------------------------- (c) wake


def _file(sender: str, key: object) -> bytes:
    """Return the bytes of a new message file for thread w from sender, signed with key."""
    m = Message("w", 0, uuid.uuid4().hex, sender, [], "message", "normal", None, now_iso(),
                "ping", {})  # fmt: skip
    if key is not None:
        m = replace(m, sig=signing.sign(key, m, None))  # type: ignore[arg-type]
    return dumps(m.file_doc())


def wake(fsync: bool | None, n: int) -> Pair:
    """Return wake latencies (signed, unsigned) of one waiter process, senders alternating.

    fsync None: from the link() of a file written beforehand; else from the start of post().
    """
    with _root(bool(fsync)) as (root, box):
        key = box.trust.keys.private(SIGNER)
        p = _start(["mailslot", str(root), "native", str(2 * n + 2)])
        assert p.stdout is not None
        time.sleep(0.2)
        out: Pair = ([], [])
        for i in range(2 * n + 2):
            signed = (i % 4) in (0, 3)  # s u u s: each kind first as often as second
            time.sleep(random.uniform(0.002, 0.012))
            if fsync is None:
                tmp = root / ".state" / "tmp" / f"bench.{i}"
                tmp.write_bytes(_file(SIGNER if signed else PLAIN, key if signed else None))
                t0 = time.monotonic()
                os.link(tmp, root / "threads" / "w" / f"{i + 1:06d}.json")
                tmp.unlink()
            else:
                t0 = time.monotonic()
                box.post("w", "ping", sender=SIGNER if signed else PLAIN)
            woke = float(p.stdout.readline()) - t0
            if i >= 2:  # the first of each: the waiter's first look at pins and cards
                out[0 if signed else 1].append(woke)
        p.wait(30)
        p.stdout.close()
        assert box.read("w", 0, 4).messages[0].signed == signing.VALID
        return out


def wake_rows(n: int) -> list[list[str]]:
    rows = []
    for label, fsync in (
        ("from the link() of a file written before (the reader's check alone)", None),
        ("from the start of post(), fsync off", False),
        ("from the start of post(), fsync on (as bench/wake.py)", True),
    ):
        pair = wake(fsync, n)
        rows.append([
            label,
            str(len(pair[0])),
            f"{percentile(pair[0], 50) * 1e3:.3f} / {percentile(pair[0], 95) * 1e3:.3f}",
            f"{percentile(pair[1], 50) * 1e3:.3f} / {percentile(pair[1], 95) * 1e3:.3f}",
            _spread(_blocks(pair, 5, _p(50))),
            _spread(_blocks(pair, 5, _p(95))),
        ])  # fmt: skip
    return rows


# ---------------------------------------------------------------- (d) read


def read(rounds: int, count: int = 200) -> list[list[str]]:
    """Return rows: a msg_list-like read of count messages, signed vs unsigned, cold and warm."""
    with _root(False) as (root, box):
        for i in range(count):
            box.post(SIGNER, f"{BODY} {i}", sender=SIGNER)
            box.post(PLAIN, f"{BODY} {i}", sender=PLAIN)
        cold: Pair = ([], [])
        warm: Pair = ([], [])
        for r in range(rounds):
            for sender in (SIGNER, PLAIN) if r % 2 == 0 else (PLAIN, SIGNER):
                reader = Mailbox(root, fsync=False)
                times = _each([lambda b=reader, t=sender: _list(b, t, count)] * 2)
                reader.close()
                i = 0 if sender == SIGNER else 1
                cold[i].append(times[0])
                warm[i].append(times[1])
    rows = []
    for label, pair in (("cold (a new Mailbox: every signature checked)", cold),
                        ("warm (the same Mailbox again: checks remembered)", warm)):  # fmt: skip
        ratios = [s / u for s, u in zip(*pair, strict=True)]
        extra = (statistics.median(pair[0]) - statistics.median(pair[1])) / count
        rows.append([
            label,
            str(rounds),
            f"{statistics.median(pair[0]) * 1e3:.2f}",
            f"{statistics.median(pair[1]) * 1e3:.2f}",
            _spread(ratios),
            f"{extra * 1e6:.1f}",
        ])  # fmt: skip
    return rows


def _list(box: Mailbox, thread: str, count: int) -> None:
    page = box.read(thread, 0, count)
    assert len(page.messages) == count
    assert page.messages[0].signed == (signing.VALID if thread == SIGNER else signing.UNSIGNED)
    page_view(thread, page)


# ---------------------------------------------------------------- the report


def run(quick: bool) -> str:
    """Return the four tables, each signed figure beside the unsigned one of the same run."""
    with _config_home():
        micro = per_message(100 if quick else 800)
        posts = [post(False, 2, 30), post(True, 2, 20)] if quick else [
            post(False, 30, 100), post(True, 20, 50)]  # fmt: skip
        wakes = wake_rows(20 if quick else 200)
        reads = read(2 if quick else 15)
    return "\n\n".join([
        micro,
        table(["fsync", "rounds × posts", "msg/s signed / unsigned", "÷ (min-max)",
               "signed p50 / p95 µs", "unsigned p50 / p95 µs", "p50 ÷ (min-max)",
               "p95 ÷ (min-max)"], posts),
        table(["waiter woken (native), senders alternating", "samples each",
               "signed p50 / p95 ms", "unsigned p50 / p95 ms", "p50 ÷ (min-max of 5 blocks)",
               "p95 ÷ (min-max)"], wakes),
        table(["Mailbox.read + msg_list view of 200 messages", "rounds", "signed ms",
               "unsigned ms", "÷ (min-max)", "extra µs per message"], reads),
    ])  # fmt: skip


if __name__ == "__main__":
    import sys

    SCRATCH.mkdir(parents=True, exist_ok=True)
    print(run("--quick" in sys.argv))
