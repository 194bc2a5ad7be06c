"""Run the benchmarks and print their tables: `python -m bench [--quick]`."""

from __future__ import annotations

import os
import platform
import sys

if "--dir" in sys.argv:
    os.environ["MAILSLOT_BENCH_DIR"] = sys.argv[sys.argv.index("--dir") + 1]

from bench import publish, scale, wake
from bench._util import SCRATCH

SCRATCH.mkdir(parents=True, exist_ok=True)
quick = "--quick" in sys.argv
print(
    f"# mailslot benchmarks ({'quick' if quick else 'full'}) on {platform.node()}, "
    f"Python {platform.python_version()}, folders in {SCRATCH}\n"
)
print("## Scale: cost per operation as a thread grows (flat = O(new messages))\n")
print(scale.run([1000, 10000] if quick else [1000, 10000, 100000], 20 if quick else 50)[0])
print("\n## Publish throughput, one thread, beside the raw os.link floor\n")
print(publish.run(quick))
print("\n## Wake: post→wake latency between two processes, beside a raw inotify floor\n")
print(wake.run(quick))
