"""Run every benchmark and print one report: `python -m bench [--quick] [--dir D] [--no-peer]`.

A full run writes the report to bench/RESULTS.md as well. Everything is measured in one run,
side by side with the machine's floors and the peer, because these machines are shared and
noisy: compare the ratios, not the absolute figures.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

if "--dir" in sys.argv:
    os.environ["MAILSLOT_BENCH_DIR"] = sys.argv[sys.argv.index("--dir") + 1]

from bench import (
    cold,
    console,
    idle,
    mcp,
    peer,
    publish,
    scale,
    search,
    server,
    signing,
    sync,
    tasks,
    wake,
)
from bench._util import SCRATCH
from mailslot.store.watch import filesystem_type

quick = "--quick" in sys.argv
SCRATCH.mkdir(parents=True, exist_ok=True)
lines: list[str] = []


def say(text: str = "") -> None:
    print(text, flush=True)
    lines.append(text)


def section(title: str, body: str, started: float) -> None:
    say(f"## {title}\n")
    say(body)
    say(f"\n*({time.monotonic() - started:.0f} s)*\n")


begun = time.monotonic()
mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
say(f"# mailslot benchmarks{' (--quick)' if quick else ''}\n")
say(f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
say(f"- machine: {os.cpu_count()} cores, {mem_gib:.0f} GiB, {platform.platform()}")
say(f"- folders: {SCRATCH} ({filesystem_type(SCRATCH)})")
say(f"- Python {platform.python_version()}; mailslot {version('mailslot')}, mcp {version('mcp')}, "
    f"watchdog {version('watchdog')}")  # fmt: skip
load = os.getloadavg()[0]
say(f"- load average at start: {load:.2f} (a shared machine: compare ratios, not absolutes)\n")

t = time.monotonic()
sizes = [1000, 10000] if quick else [1000, 10000, 100000]
body = scale.run(sizes, 5 if quick else 50)[0]
body += "\n\n" + scale.many_threads([10, 200] if quick else [10, 1000], 3 if quick else 10)
section("Scale: cost per operation as threads grow (flat = O(new messages))", body, t)

t = time.monotonic()
section(
    "Cold paths and many threads: a fresh clone, 10,000 threads, an idle poll", cold.run(quick), t
)

t = time.monotonic()
section("Publish through the library, beside the raw os.link floor", publish.run(quick), t)

t = time.monotonic()
section("Wake: a waiting process woken by another's publish, beside a raw inotify read",
        wake.run(quick), t)  # fmt: skip

t = time.monotonic()
section("Signing: signed messages beside unsigned ones, interleaved in the same run",
        signing.run(quick), t)  # fmt: skip

t = time.monotonic()
ours = mcp.measure(quick)
section("Through MCP: real `mailslot serve` processes and the official client", mcp.render(ours), t)

t = time.monotonic()
section("The server's own cost: beside a minimal server on the same SDK, and before",
        server.run(quick), t)  # fmt: skip

t = time.monotonic()
section("Idle: an agent blocked in inbox msg_wait as threads grow, beside a minimal SDK server",
        idle.run(quick), t)  # fmt: skip

t = time.monotonic()
section("Tasks: claim and hand off through MCP, beside Redis Streams", tasks.run(quick), t)

t = time.monotonic()
section("Search: the full-text index, beside grep -r and rg", search.run(quick), t)

t = time.monotonic()
section("The console: a post to the page's event stream, opening a large mailbox",
        console.run(quick), t)  # fmt: skip

t = time.monotonic()
if quick:
    section("Sync: two clones through a bare git remote",
            "skipped (run without --quick, or `python -m bench.sync --quick`)", t)  # fmt: skip
else:
    section("Sync: two clones through a bare git remote, real `mailslot sync` processes",
            sync.run(), t)  # fmt: skip

t = time.monotonic()
if "--no-peer" in sys.argv or quick:
    section("Peer: AgentChatBus", "skipped (run without --quick / --no-peer to include it)", t)
else:
    why = peer.ensure()
    if why:
        section("Peer: AgentChatBus 0.2.2", f"skipped: {why}", t)
    else:
        body = peer.compare(ours, peer.measure(quick)) + "\n\n" + (peer.__doc__ or "")
        section("Peer: AgentChatBus 0.2.2, same client code, same machine, same run", body, t)

say(f"Total: {time.monotonic() - begun:.0f} s")
if not quick:
    out = Path(__file__).with_name("RESULTS.md")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"\nwritten to {out}")
