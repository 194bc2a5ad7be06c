"""Sync: clones of one repository meeting through a bare remote on disk, with real processes.

Every clone is a git checkout with its mailbox at ``.mailslot/`` and the bare remote as its
``origin``; git is the machine's own, run with no user or system configuration. Measured in one
run (``python -m bench.sync [--samples N] [--sizes 1000,100000] [--idle-s S] [--quick]``):

1. **post→wake between two clones**: clone A posts through the library, a separate process on
   clone B is blocked in ``Mailbox.wait``, and each clone runs a continuous ``mailslot sync``
   (settings as given, else the defaults). Latency is B's wake minus A's clock before
   ``post()`` (CLOCK_MONOTONIC, one clock for every process). Posts wait a random 0..look_s
   after the previous wake, so they hit random phases of B's look; beside each figure, the goal
   issue 29 set: within the look interval plus 0.5 s.
2. **Push and fetch rounds at each size** (100 threads of 10 messages for 1,000; 1,000 of 100
   for 100,000; texts from a Zipf vocabulary, every message its own bytes): the first full push
   and the first full take on a fresh clone (``mailslot sync --once``, whole processes, mailbox
   fsync off), the remote's size as pushed and after ``git gc``; then rounds as a running sync
   makes them (one ``Sync`` held across rounds in this process, git run as processes, fsync on):
   a round pushing ONE new message, the other clone's round taking it, a round with nothing
   changed, and ``mailslot sync --once`` with nothing changed (a process, as CI runs it). These
   must be flat: the last column is 100k ÷ 1k. Then single-message commits are pushed and the
   remote gc'd again: what history adds per message as a running sync makes it.
3. **An idle sync**: a continuous ``mailslot sync`` on both clones of each size, an agent
   waiting on each (a process holding its name and refreshing its presence as a server does:
   without one, a machine sends no heartbeat), nothing else happening. Clone A's CPU from
   ``/proc/<pid>/stat`` (utime + stime + cutime + cstime: git and what git starts, once reaped),
   and the git processes it starts, counted by an audit hook in the sync process
   (``subprocess.Popen`` events: the processes sync starts itself; on a remote that is a path,
   each ``ls-remote`` or ``fetch`` also starts a ``git-upload-pack``, which on a hosted remote
   runs on the host), in the first minute (a look every look_s, as after any change) and once
   backed off to max_look_s. Each window runs from just after one look to just after another.
4. **What a team of ten machines costs a git host** per hour with the defaults, from the look
   schedule of sync/daemon.py, and what a year of a busy mailbox adds to the repository, from
   the bytes per message measured in 2.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench._util import SCRATCH, percentile, table
from mailslot import Mailbox
from mailslot.store.presence import DEFAULT_STALE_AFTER
from mailslot.sync import config as sync_config
from mailslot.sync.daemon import QUIET_AFTER_S
from mailslot.sync.engine import Sync

HERE = Path(__file__).resolve().parent.parent
GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
           "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}  # fmt: skip
AGENTS = ("alice", "bob", "carol", "dave", "erin")
DEFAULTS = sync_config.SyncConfig()
TEAM, PER_DAY, WORK_HOURS = 10, 2_000, 8


def _env() -> dict[str, str]:
    return {**os.environ, **GIT_ENV}


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], env=_env(), capture_output=True, text=True,  # noqa: S607
                          check=True)  # fmt: skip
    return done.stdout


def _clone(remote: Path, path: Path, who: str, *, fsync: bool, **settings: float) -> Path:
    """Return the mailbox root of a new checkout at path whose origin is remote."""
    path.mkdir()
    _git("-C", str(path), "init", "-q", "-b", "main")
    _git("-C", str(path), "config", "user.name", who)
    _git("-C", str(path), "config", "user.email", f"{who}@example.org")
    _git("-C", str(path), "remote", "add", "origin", str(remote))
    Mailbox.init(path / ".mailslot", fsync=fsync).close()
    _settings(path / ".mailslot", fsync=fsync, sync=settings)
    return path / ".mailslot"


def _settings(root: Path, **values: object) -> None:
    doc = json.loads((root / "mailslot.json").read_text())
    doc.update(values)
    (root / "mailslot.json").write_text(json.dumps(doc, indent=2) + "\n")


def _remote(d: Path) -> Path:
    path = d / "remote.git"
    _git("init", "-q", "--bare", str(path))
    return path


def _once(root: Path) -> float:
    """Run `mailslot sync --once` as a process; return its wall time in seconds."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mailslot", "sync", "--once", "--root", str(root)],
                          env=_env(), capture_output=True, text=True, cwd=HERE)  # fmt: skip
    took = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"mailslot sync --once failed: {done.stderr}")
    return took


def _daemon(root: Path, log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a continuous `mailslot sync` of root (counting its git processes into log)."""
    argv = ["-m", "mailslot", "sync", "--root", str(root)]
    if log is not None:
        argv = ["-m", "bench.sync", "counted", str(log), str(root)]
    err = open(root.parent / "sync.err", "ab")  # noqa: SIM115 (the process holds it)
    return subprocess.Popen([sys.executable, *argv], env=_env(), cwd=HERE,
                            stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip


def _stop(p: subprocess.Popen[bytes]) -> None:
    p.terminate()
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


# -- a mailbox of many messages ----------------------------------------------------------------


class Texts:
    """Message texts from a Zipf vocabulary of made-up words: each message its own bytes,
    compressing like prose rather than like one repeated file."""

    def __init__(self, seed: int = 29) -> None:
        self.rng = random.Random(seed)
        cons, vows = "bcdfghjklmnprstvw", "aeiou"
        words = {"".join(self.rng.choice(cons) + self.rng.choice(vows)
                         for _ in range(self.rng.choice((1, 2, 2, 3, 3, 4))))
                 for _ in range(4000)}  # fmt: skip
        self.vocab = sorted(words)
        self.rng.shuffle(self.vocab)
        self.weights = [1 / (r + 1) for r in range(len(self.vocab))]

    def text(self) -> str:
        n = self.rng.randint(8, 80)
        return " ".join(self.rng.choices(self.vocab, self.weights, k=n)).capitalize() + "."


def fill(root: Path, n: int, threads: int, texts: Texts) -> list[str]:
    """Post n messages spread evenly over threads (library, fsync as root's); return the ids."""
    box = Mailbox(root)
    for name in AGENTS:
        box.agents.register(name)
    rng = texts.rng
    ids = [box.create_thread(f"topic {i}", creator=rng.choice(AGENTS)).id for i in range(threads)]
    for i in range(n):
        thread, seq = ids[i % threads], i // threads + 1
        sender = rng.choice(AGENTS)
        to = [rng.choice([a for a in AGENTS if a != sender])] if rng.random() < 0.5 else []
        reply = rng.randint(1, seq - 1) if seq > 1 and rng.random() < 0.3 else None
        box.post(thread, texts.text(), sender=sender, to=to, reply_to=reply)
    box.close()
    return ids


def threads_for(n: int) -> int:
    """Return how many threads a mailbox of n messages is spread over (1k: 100, 100k: 1,000)."""
    return max(1, math.isqrt(n * 10))


def du(path: Path) -> int:
    """Return the bytes `du -sb` counts under path."""
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True,  # noqa: S607
                         check=True)  # fmt: skip
    return int(str(out.stdout).split()[0])


def gc(remote: Path) -> int:
    """Run `git gc` on the remote (unreachable objects pruned now); return its size after."""
    _git("-C", str(remote), "gc", "--quiet", "--prune=now")
    return du(remote)


# -- 1. post→wake between two clones -----------------------------------------------------------


def _waiter(root: str, thread: str, n: int) -> None:
    box = Mailbox(root)
    cursor = {thread: box.head(thread)}
    print("ready", flush=True)
    seen = 0
    while seen < n:
        got = box.wait(thread, cursor, timeout=60)
        woke = time.monotonic()
        cursor = got.cursor
        if got.messages:
            seen += len(got.messages)
            print(woke, flush=True)
    box.close()


def wake(look_s: float, n: int) -> list[float]:
    """Return n post→wake latencies (s) between two clones, each with a running sync."""
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        d = Path(tmp)
        remote = _remote(d)
        a = _clone(remote, d / "a", "alice", fsync=True, look_s=look_s)
        b = _clone(remote, d / "b", "bob", fsync=True, look_s=look_s)
        box = Mailbox(a)
        thread = box.create_thread("wake", creator="alice").id
        box.post(thread, "hello", sender="alice")
        _once(a)
        _once(b)
        syncs = [_daemon(a), _daemon(b)]
        waiter = subprocess.Popen([sys.executable, "-m", "bench.sync", "waiter", str(b), thread,
                                   str(n)], stdout=subprocess.PIPE, text=True, env=_env(),
                                  cwd=HERE)  # fmt: skip
        assert waiter.stdout is not None and waiter.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        out = []
        try:
            for i in range(n):
                time.sleep(random.uniform(0, look_s))  # a random phase of B's look
                t0 = time.monotonic()
                box.post(thread, f"ping {i}", sender="alice")
                out.append(float(waiter.stdout.readline()) - t0)
        finally:
            for p in syncs:
                _stop(p)
            waiter.wait(30)
            waiter.stdout.close()
            box.close()
        return out


def wake_rows(looks: list[float], n: int) -> list[list[str]]:
    rows = []
    for look in looks:
        got = wake(look, n)
        p50, p99, goal = percentile(got, 50), percentile(got, 99), look + 0.5
        rows.append([f"{look:g} s{' (default)' if look == DEFAULTS.look_s else ''}", str(n),
                     f"{p50:.2f}", f"{p99:.2f}", f"{max(got):.2f}", f"{goal:.1f}",
                     "yes" if p99 <= goal else "no"])  # fmt: skip
    return rows


# -- 2. push and fetch rounds at 1k and 100k ---------------------------------------------------


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Pair:
    """Clones A and B of a new remote under d, with a mailbox of n messages made in A, pushed
    and taken by B; then a Sync of each held in this process, as a running sync holds one."""

    def __init__(self, d: Path, n: int) -> None:
        self.n, self.remote, self.texts = n, _remote(d), Texts()
        self.a = _clone(self.remote, d / "a", "alice", fsync=False)
        t0 = time.perf_counter()
        self.ids = fill(self.a, n, threads_for(n), self.texts)
        f = self.f = {"fill": time.perf_counter() - t0, "empty_bytes": float(du(self.remote))}
        f["push_all"] = _once(self.a)
        f["pushed_bytes"] = du(self.remote)
        f["gc_bytes"] = gc(self.remote)
        f["bulk_per_msg"] = (f["gc_bytes"] - f["empty_bytes"]) / n
        self.b = _clone(self.remote, d / "b", "bob", fsync=False)
        f["take_all"] = _once(self.b)
        for root in (self.a, self.b):
            _settings(root, fsync=True)  # the rounds as they are run every day: fsync on
        os.environ.update(GIT_ENV)  # the Syncs here run git as the processes above do
        self.sa = Sync(Mailbox(self.a), sync_config.load(self.a))
        self.sb = Sync(Mailbox(self.b), sync_config.load(self.b))
        self.sa.round(set())
        self.sb.round(set())  # both machines' heartbeats out, each has the other's
        self.samples: dict[str, list[float]] = {"push_one": [], "take_one": [], "quiet": [],
                                                "once_quiet": [], "walk": []}  # fmt: skip

    def post(self) -> str:
        thread = self.texts.rng.choice(self.ids)
        self.sa.box.post(thread, self.texts.text(), sender=self.texts.rng.choice(AGENTS))
        return thread

    def sample(self) -> None:
        """Time a round pushing one new message, B's round taking it, a round of nothing."""
        sa, sb, got = self.sa, self.sb, self.samples
        thread = self.post()
        got["push_one"].append(_timed(lambda: sa.round({thread})))
        got["take_one"].append(_timed(lambda: sb.round(set())))
        got["quiet"].append(_timed(lambda: sa.round(set())))
        assert sb.box.head(thread) == sa.box.head(thread), "the take round took nothing"

    def sample_process(self) -> None:
        """Time `sync --once` with nothing changed, and git's connectivity walk of B's tip."""
        self.samples["once_quiet"].append(_once(self.a))
        tip, git_dir = self.sb.git.rev(self.sb.ref), str(self.sb.git.git_dir)
        walk = ["--git-dir", git_dir, "rev-list", "--objects", "--quiet", f"{tip}", f"^{tip}^"]
        self.samples["walk"].append(_timed(lambda: _git(*walk)))

    def finish(self, growth: int) -> dict[str, float]:
        """Push growth single-message commits; return the figures (seconds, bytes)."""
        before = gc(self.remote)
        for _ in range(growth):  # one commit per message, as a running sync pushes a lone post
            self.sa.round({self.post()})
        self.f["growth_per_msg"] = (gc(self.remote) - before) / growth
        self.sb.round(set())  # B in step again before the idle syncs start
        for s in (self.sa, self.sb):
            s.box.close()
        self.f.update({k: statistics.median(v) for k, v in self.samples.items()})
        return self.f


def rounds(dirs: dict[int, Path], repeats: int, growth: int) -> dict[int, dict[str, float]]:
    """Return each size's figures; the sizes' timed rounds interleaved, so that a noisy
    neighbour weighs on both alike."""
    pairs = {n: Pair(d, n) for n, d in dirs.items()}
    for p in pairs.values():  # heartbeats that fell due while the others were built
        for s in (p.sa, p.sb, p.sa):
            s.round(set())
    for _ in range(repeats):
        for p in pairs.values():
            p.sample()
    for _ in range(3):  # after: a new process sends a heartbeat, which B would fetch
        for p in pairs.values():
            p.sample_process()
    return {n: p.finish(growth) for n, p in pairs.items()}


def rounds_table(sizes: list[int], figs: dict[int, dict[str, float]]) -> str:
    def row(label: str, key: str, fmt: str, scale: float = 1.0) -> list[str]:
        vals = [figs[n][key] * scale for n in sizes]
        ratio = [f"{vals[-1] / vals[0]:.2f}×" if vals[0] else "-"] if len(sizes) > 1 else []
        return [label, *(format(v, fmt) for v in vals), *ratio]

    rows = [
        row("fill the mailbox through the library (fsync off), s", "fill", ".1f"),
        row("first full push (`sync --once`, a process), s", "push_all", ".2f"),
        row("the remote as pushed, MB", "pushed_bytes", ".1f", 1e-6),
        row("the remote after `git gc`, MB", "gc_bytes", ".1f", 1e-6),
        row("… bytes per message (all in one commit; an empty repository left out)",
            "bulk_per_msg", ",.0f"),
        row("first full take on a new clone (`sync --once`, fsync off), s", "take_all", ".2f"),
        row("round that pushes ONE new message, ms", "push_one", ".1f", 1e3),
        row("round that takes ONE new message (the other clone), ms", "take_one", ".1f", 1e3),
        row("round with nothing changed, ms", "quiet", ".1f", 1e3),
        row("`mailslot sync --once`, nothing changed (a whole process), ms", "once_quiet", ".0f",
            1e3),
        row("reference: git's connectivity walk of one new commit, ms", "walk", ".1f", 1e3),
        row("bytes a message adds to the remote, one commit each, after gc", "growth_per_msg",
            ",.0f"),
    ]  # fmt: skip
    heads = [f"{n:,} msgs ({threads_for(n):,} threads)" for n in sizes]
    last = [f"{sizes[-1] / 1000:g}k ÷ {sizes[0] / 1000:g}k"] if len(sizes) > 1 else []
    return table(["", *heads, *last], rows)


# -- 3. the cost of an idle sync ---------------------------------------------------------------


def _counted(log: str, root: str) -> int:
    """Run `mailslot sync --root root`, writing a line per process it starts into log."""
    out = open(log, "a", buffering=1)  # noqa: SIM115 (for the life of the process)

    def hook(event: str, args: tuple[object, ...]) -> None:
        if event == "subprocess.Popen":
            argv = [str(a) for a in args[1]] if isinstance(args[1], list | tuple) else [""]
            out.write(f"{time.monotonic():.3f} {_subcommand(argv)}\n")

    sys.addaudithook(hook)
    from mailslot.cli import main

    return main(["sync", "--root", root])


def _agent(root: str, name: str) -> None:
    """Hold agent name on root and refresh its presence as a server's heartbeat does, until
    killed: a machine where an agent waits (without one, sync sends no heartbeat at all)."""
    box = Mailbox(root)
    box.agents.hold_name(name, client="bench")
    while True:
        box.agents.set_presence(name, "waiting", waiting_on="inbox")
        time.sleep(DEFAULT_STALE_AFTER / 3)


def _subcommand(argv: list[str]) -> str:
    """Return what a git command line does (its subcommand, past -c and -C options)."""
    i = 1
    while i < len(argv) and argv[i] in ("-c", "-C"):
        i += 2
    return argv[i] if i < len(argv) and argv[0].endswith("git") else Path(argv[0]).name


def _cpu(pid: int) -> float:
    """Return the CPU seconds of pid and its reaped children (utime+stime+cutime+cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def schedule(horizon: float, cfg: sync_config.SyncConfig = DEFAULTS) -> list[float]:
    """Return the times an idle sync looks at the remote (as sync/daemon.py spaces them),
    from a change at 0 until horizon, ignoring the rounds' own time."""
    t, interval, looks = 0.0, cfg.look_s, []
    while t + interval <= horizon:
        t += interval
        looks.append(t)
        if t > QUIET_AFTER_S:
            interval = min(cfg.max_look_s, interval * 2)
    return looks


def idle(roots: dict[int, tuple[Path, Path]], idle_s: float, backed_off: bool) -> list[list[str]]:
    """Run a sync on both clones of each size, nothing happening; return rows for clone A's:
    the first minute (a look every look_s) and, if backed_off, idle_s once at max_look_s."""
    looks = schedule(1e4)  # from the look after which they come every max_look_s
    steady_from = next(p for p, t in itertools.pairwise(looks) if t - p >= DEFAULTS.max_look_s)
    horizon = steady_from + idle_s + DEFAULTS.max_look_s / 2 if backed_off else QUIET_AFTER_S
    procs: dict[int, tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]] = {}
    series: dict[int, list[tuple[float, float]]] = {}
    agents = []
    for n, (a, b) in roots.items():
        for root, name in ((a, "alice"), (b, "bob")):
            agents.append(subprocess.Popen([sys.executable, "-m", "bench.sync", "agent",
                                            str(root), name], env=_env(), cwd=HERE))  # fmt: skip
        procs[n] = (_daemon(a, a.parent / "git.log"), _daemon(b))
        series[n] = []
    t0 = time.monotonic()
    try:
        while (now := time.monotonic()) - t0 < horizon:
            for n, (pa, _) in procs.items():
                series[n].append((now, _cpu(pa.pid)))
            time.sleep(0.25)
    finally:
        for p in [*agents, *(p for pair in procs.values() for p in pair)]:
            _stop(p)
    rows = []
    for n, (a, _) in roots.items():
        events = [ln.split() for ln in (a.parent / "git.log").read_text().splitlines()]
        seen = [float(t) for t, what in events if what == "ls-remote"]
        fast = [t for t in seen if t - t0 < QUIET_AFTER_S - 1]
        windows = [(f"first minute (a look every {DEFAULTS.look_s:g} s)", fast[0], fast[-1])]
        if backed_off:
            slow = [t for t in seen if t - t0 > steady_from - 1]
            windows.append((f"backed off (a look every {DEFAULTS.max_look_s:g} s)", slow[0],
                            slow[-1]))  # fmt: skip
        for label, start, end in windows:
            rows.append(_idle_row(n, label, start + 1, end + 1, events, series[n]))
    return rows


def _idle_row(n: int, label: str, start: float, end: float, events: list[list[str]],
              series: list[tuple[float, float]]) -> list[str]:  # fmt: skip
    """Return a row: what the sync did between start and end (monotonic seconds)."""
    cpu0 = next(c for t, c in series if t >= start)
    t1, cpu1 = next((t, c) for t, c in series if t >= end)
    t0 = next(t for t, _ in series if t >= start)
    span = (t1 - t0) / 60
    inside = [what for t, what in events if t0 <= float(t) < t1]
    counts: dict[str, int] = {}
    for what in inside:
        counts[what] = counts.get(what, 0) + 1
    looks = counts.get("ls-remote", 0)
    kinds = ", ".join(
        f"{k} {v / span:.1f}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])
    )
    per_look = (cpu1 - cpu0) / looks * 1e3 if looks else 0.0
    return [f"{n:,} msgs", label, f"{t1 - t0:.0f}", f"{looks / span:.1f}",
            f"{len(inside) / span:.1f} ({kinds})", f"{(cpu1 - cpu0) / span:.3f}",
            f"{per_look:.1f}"]  # fmt: skip


# -- 4. a team of ten machines -----------------------------------------------------------------


def team(growth_per_msg: float, bulk_per_msg: float) -> str:
    """Return what TEAM machines with the default settings ask of the git host per hour."""
    c, others = DEFAULTS, TEAM - 1
    idle_looks, busy_looks = 3600 / c.max_look_s, 3600 / c.look_s
    beats = 3600 / c.heartbeat_s  # pushed by each machine where an agent is at work
    per_hour = PER_DAY / WORK_HOURS  # the team's messages, a commit each at most
    year = PER_DAY * 365
    rows: list[tuple[str, float]] = [
        ("`ls-remote` (a look), all quiet for a minute or more", idle_looks),
        ("`ls-remote` (a look), something changed within the minute", busy_looks),
        ("push of the machine's heartbeat (`refs/mailslot/presence/<machine>`, forced)", beats),
        (f"fetch of the {others} others' heartbeats (each is a new commit)", beats * others),
        (f"busy: push of messages ({PER_DAY:,} a day over {WORK_HOURS} h, a commit each)",
         per_hour / TEAM),
        (f"busy: fetch of those commits by the {others} other machines",
         per_hour * others / TEAM),
    ]  # fmt: skip
    idle = (idle_looks + beats * TEAM) * TEAM
    busy = (busy_looks + beats * TEAM + per_hour) * TEAM
    cells = [[what, f"{n:,.0f}", f"{n * TEAM:,.0f}"] for what, n in rows]
    return (
        table(["requests to the git host, per hour", "one machine", f"{TEAM} machines"], cells)
        + f"\n\nIn all, {TEAM} machines, each with an agent at work, ask about {idle:,.0f} "
        f"requests an hour when all is quiet and {busy:,.0f} when busy (look_s {c.look_s:g}, "
        f"max_look_s {c.max_look_s:g}, heartbeat_s {c.heartbeat_s:g}, quiet after "
        f"{QUIET_AFTER_S:g} s, from the schedule in sync/daemon.py; a machine with no live "
        "agent sends no heartbeat and has none to be fetched). A year of a busy mailbox "
        f"({PER_DAY:,} messages a day, {year:,} messages) adds about "
        f"{year * growth_per_msg / 1e6:,.0f} MB to the repository if every message is its own "
        f"commit ({growth_per_msg:,.0f} bytes a message after `git gc`, measured above), and "
        f"{year * bulk_per_msg / 1e6:,.0f} MB where commits carry many ({bulk_per_msg:,.0f} "
        "bytes a message); every clone that fetches the branch holds the same."
    )


# -- the run -----------------------------------------------------------------------------------


def run(quick: bool = False, samples: int | None = None, sizes: list[int] | None = None,
        idle_s: float | None = None) -> str:  # fmt: skip
    """Return the section: every table of the module docstring, measured in one run."""
    samples = samples or (8 if quick else 30)
    sizes = sizes or ([1_000, 10_000] if quick else [1_000, 100_000])
    idle_s = idle_s or (20.0 if quick else 60.0)
    out = []
    looks = sorted({DEFAULTS.look_s, 0.5}, reverse=True)
    rows = wake_rows(looks, samples)
    out.append(table(["look_s", "samples", "p50 s", "p99 s", "max s", "goal s (look + 0.5)",
                      "p99 within"], rows))  # fmt: skip
    dirs = {n: Path(tempfile.mkdtemp(dir=SCRATCH)) for n in sizes}
    before = {k: os.environ.get(k) for k in GIT_ENV}
    try:
        figs = rounds(dirs, 5 if quick else 9, 10 if quick else 40)
        out.append(rounds_table(sizes, figs))
        roots = {n: (dirs[n] / "a" / ".mailslot", dirs[n] / "b" / ".mailslot") for n in sizes}
        rows = idle(roots, idle_s, backed_off=not quick)
        out.append(table(["mailbox", "A's sync, idle (an agent on A and on B)", "s",
                          "looks/min", "git processes/min", "CPU s/min", "CPU ms per look"],
                         rows))  # fmt: skip
    finally:
        for d in dirs.values():
            shutil.rmtree(d, ignore_errors=True)
        for k, v in before.items():  # the rounds set git's environment in this process
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    big = figs[sizes[-1]]
    out.append(team(big["growth_per_msg"], big["bulk_per_msg"]))
    return "\n\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.sync", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few samples, no back-off")
    ap.add_argument("--samples", type=int, help="post→wake samples per look_s (default 30)")
    ap.add_argument("--sizes", help="mailbox sizes, comma-separated (default 1000,100000)")
    ap.add_argument("--idle-s", type=float, help="seconds of backed-off idle measured (60)")
    args = ap.parse_args()
    SCRATCH.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    started = time.monotonic()
    print(run(args.quick, args.samples, sizes, args.idle_s))
    print(f"\n*({time.monotonic() - started:.0f} s)*")


if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    if role == "waiter":
        _waiter(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif role == "agent":
        _agent(sys.argv[2], sys.argv[3])
    elif role == "counted":
        sys.exit(_counted(sys.argv[2], sys.argv[3]))
    else:
        main()
