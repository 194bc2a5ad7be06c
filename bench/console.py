"""The console (`mailslot ui`): how soon a posted message reaches the page, and what opening
the mailbox costs.

A real `mailslot ui` process over a mailbox of 1,000 threads beside one long thread (20,000
messages with --quick, 100,000 without), and real HTTP from this process: the thread list,
a long thread's latest page and a page back, and the time from `Mailbox.post` here (another
process than the console's) to the `event: message` line on its Server-Sent Events stream,
which is what the page acts on (README: "New messages appear within a second").
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._util import SCRATCH, median_us, percentile, table, timed
from bench.scale import build

THREADS = 1000


def _start(root: Path) -> tuple[subprocess.Popen[str], int, str]:
    """Start `mailslot ui --as bench` over root; return it, its port and its token."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailslot", "ui", "--root", str(root), "--port", "0",
         "--as", "bench"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    found = re.search(r"http://127\.0\.0\.1:(\d+)/\?token=(\S+)", proc.stdout.readline())
    if not found:
        proc.kill()
        raise RuntimeError(f"mailslot ui printed no address: {proc.communicate()}")
    return proc, int(found.group(1)), found.group(2)


def run(quick: bool) -> str:
    """Return a table of the console's costs and its live-event latency."""
    n = 20_000 if quick else 100_000
    repeats = 5 if quick else 20
    posts = 10 if quick else 50
    with tempfile.TemporaryDirectory(dir=SCRATCH) as d:
        root = Path(d) / "box"
        box = build(root, n)  # thread "big" of n messages
        for i in range(THREADS):
            box.create_thread(f"topic {i}", creator="bench")
        box.create_thread("live", creator="bench")
        proc, port, token = _start(root)
        headers = {"Host": f"127.0.0.1:{port}", "Cookie": f"mailslot_token_{port}={token}"}
        try:

            def get(path: str) -> None:
                con = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                con.request("GET", path, headers=headers)
                r = con.getresponse()
                body = r.read()
                con.close()
                assert r.status == 200, (r.status, body[:200])

            rows: list[tuple[str, list[float]]] = [
                (f"list {THREADS + 2:,} threads", timed(lambda: get("/api/threads"), repeats)),
                (f"open a thread of {n:,} (latest 50)",
                 timed(lambda: get("/api/threads/big"), repeats)),
                ("a page back", timed(lambda: get(f"/api/threads/big?before={n - 49}"), repeats)),
            ]  # fmt: skip

            con = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            con.request("GET", "/api/events", headers=headers)
            stream = con.getresponse()
            assert stream.status == 200 and stream.readline().startswith(b":")
            latencies = []
            for _ in range(posts):
                begun = time.perf_counter()
                seq = box.post("live", "ping", sender="bench")
                while True:
                    line = stream.readline()
                    if line.strip() == b"event: message":
                        data = json.loads(stream.readline().decode().removeprefix("data: "))
                        if (data.get("thread"), data.get("seq")) == ("live", seq):
                            break
                latencies.append(time.perf_counter() - begun)
            con.close()
            rows.append(("post -> event on the page's stream", latencies))
        finally:
            proc.terminate()
            proc.communicate(timeout=30)
    return table(
        ["console", "median", "p95", "runs"],
        [[name, f"{median_us(s) / 1000:.1f} ms", f"{percentile(s, 95) * 1000:.1f} ms",
          str(len(s))] for name, s in rows],
    )  # fmt: skip


if __name__ == "__main__":
    SCRATCH.mkdir(parents=True, exist_ok=True)
    print(run("--quick" in sys.argv))
