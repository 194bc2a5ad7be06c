"""Worker processes for the concurrency tests: `python workers.py ROLE ROOT ...`.

Each prints 'ready', waits for the go file, then works; results go to stdout as JSON lines.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from mailslot import Mailbox


def wait_for(go: Path) -> None:
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.001)


def writer(root: str, thread: str, name: str, count: str, lock: str, fsync: str, go: str) -> None:
    box = Mailbox(root, lock=lock == "lock", fsync=fsync == "fsync")
    wait_for(Path(go))
    acked = []
    for i in range(int(count)):
        seq = box.post(thread, f"{name} says {i}", sender=name, meta={"writer": name, "i": i})
        acked.append(seq)
    print(json.dumps({"writer": name, "acked": acked}), flush=True)


def reader(root: str, thread: str, total: str, go: str) -> None:
    box = Mailbox(root)
    wait_for(Path(go))
    cursor, seen, reads = 0, [], 0
    deadline = time.monotonic() + 200
    while len(seen) < int(total) and time.monotonic() < deadline:
        page = box.read(thread, cursor, 1000)
        reads += 1
        if page.skipped:
            print(json.dumps({"damage": [str(d) for d in page.skipped]}), flush=True)
            sys.exit(3)
        seen.extend(m.seq for m in page.messages)
        cursor = page.cursor
    print(json.dumps({"seen": seen, "reads": reads}), flush=True)


def forever(root: str, thread: str, name: str) -> None:
    """Post until killed; each ack is printed, so the parent knows what was stored."""
    box = Mailbox(root)
    print("ready", flush=True)
    i = 0
    while True:
        seq = box.post(thread, f"{name} says {i}", sender=name, meta={"writer": name, "i": i})
        print(seq, flush=True)
        i += 1


# How many threads this process ran when its last wait went to sleep (observer, keeper).
THREADS_WHILE_BLOCKED = [0]


def only_woken_by_events() -> None:
    """Make this process's waits wake only for a file event, the watch's keeper or a poll.

    The safety re-check that covers dropped events is pushed past any test's patience, and
    tests give waits a timeout beyond it too (a wait that reaches its end looks once more), so
    a waiter that returns the message in time proves the wake-up itself. Each wait prints
    "blocked" when it first goes to sleep (its first look found nothing), so a test can post
    exactly then: a message it finds was not there when it looked.
    """
    import threading

    from mailslot.store import wait as _wait

    _wait.SAFETY_RECHECK_S = 3600.0
    tick = _wait.Waiting.tick
    last: list[_wait.WaitPlan] = []  # the wait that said so last (one plan per wait)

    def first_sleep(self: _wait.Waiting, plan: _wait.WaitPlan) -> float:
        if not last or last[0] is not plan:
            last[:] = [plan]
            THREADS_WHILE_BLOCKED[0] = threading.active_count()
            print("blocked", flush=True)
        return tick(self, plan)

    _wait.Waiting.tick = first_sleep  # type: ignore[method-assign]


def waiter(root: str, threads: str, after: str, to: str, timeout: str, mode: str) -> None:
    """Wait once: print "blocked" when it sleeps, then what arrived, how many threads this
    process ran while blocked, and how many after closing the mailbox."""
    import threading

    only_woken_by_events()
    box = Mailbox(root, wait_mode=mode, poll_interval=0.1)
    names = None if threads == "-" else threads.split(",")
    cursor = None if after == "-" else json.loads(after)
    print("ready", flush=True)
    got = box.wait(names, cursor, to=None if to == "-" else to, timeout=float(timeout))
    box.close()
    print(
        json.dumps(
            {
                **got.to_dict(),
                "threads": THREADS_WHILE_BLOCKED[0] - 1,
                "after_close": threading.active_count(),
            }
        ),
        flush=True,
    )


def create(root: str, topic: str, name: str, go: str) -> None:
    box = Mailbox(root)
    wait_for(Path(go))
    info = box.create_thread(topic, creator=name)
    print(json.dumps(info.to_dict()), flush=True)


def mcp_agent(root: str, name: str, count: str, go: str) -> None:
    """Drive a `mailslot serve` of our own over stdio: post count messages into 'load', say
    'posted', then block in msg_wait on 'signal' until the judge's message arrives."""
    import anyio
    from mcp import StdioServerParameters
    from mcp.client import Client

    async def main() -> None:
        params = StdioServerParameters(
            command=sys.executable,
            args=["-m", "mailslot", "serve", "--root", root, "--agent", name],
            # As helpers.params: the suite may be pointed at another source tree.
            env={k: os.environ[k] for k in ("PYTHONPATH", "XDG_CONFIG_HOME") if k in os.environ},
        )
        async with Client(params, mode="legacy", cache=None) as c:
            acked = []
            wait_for(Path(go))
            for i in range(int(count)):
                result = await c.call_tool(
                    "msg_post",
                    {
                        "thread": "load",
                        "content": f"{name} says {i}",
                        "meta": {"writer": name, "i": i},
                    },
                )
                acked.append(json.loads(result.content[0].text)["seq"])  # type: ignore[union-attr]
            print(json.dumps({"writer": name, "acked": acked}), flush=True)
            while True:
                args = {"thread": "signal", "after_seq": 0, "timeout_s": 5}
                result = await c.call_tool("msg_wait", args)
                got = json.loads(result.content[0].text)  # type: ignore[union-attr]
                if got["messages"]:
                    print(json.dumps({"woke": got["messages"][0]["content"]}), flush=True)
                    return

    anyio.run(main)


def collector(root: str, thread: str, after: str, total: str, grace: str) -> None:
    """Wait on thread past seq after until total messages came; print seqs, ids and trouble."""
    box = Mailbox(root, grace_s=float(grace))
    print("ready", flush=True)
    cursor = {thread: int(after)}
    seen: list[list[object]] = []
    skipped: list[str] = []
    pending = 0
    deadline = time.monotonic() + 120
    while len(seen) < int(total) and time.monotonic() < deadline:
        got = box.wait(thread, cursor, timeout=5)
        cursor = got.cursor
        seen += [[m.seq, m.id, m.content] for m in got.messages]
        skipped += [str(d) for d in got.skipped]
        pending += bool(got.pending)
    box.close()
    print(json.dumps({"seen": seen, "skipped": skipped, "pending": pending}), flush=True)


def foreign(root: str, thread: str, docs: str, how: str, pause: str) -> None:
    """Write message files the way tools other than mailslot do, from a JSON file of
    [seq, bytes-as-text] pairs in the order given.

    how = "fill": create the file empty, then write it in two halves (git, editors);
    "rename": write a hidden temp file in the folder and rename it into place (rsync,
    Syncthing), in whatever order the pairs come.
    """
    tdir = Path(root) / "threads" / thread
    items = json.loads(Path(docs).read_text())
    print("ready", flush=True)
    for seq, text in items:
        data = text.encode()
        target = tdir / f"{seq:06d}.json"
        if how == "fill":
            with open(target, "wb") as f:
                f.flush()
                time.sleep(float(pause))
                f.write(data[: len(data) // 2])
                f.flush()
                time.sleep(float(pause))
                f.write(data[len(data) // 2 :])
        else:
            tmp = tdir / f".{target.name}.part"
            tmp.write_bytes(data)
            os.rename(tmp, target)
            time.sleep(float(pause))
    print("done", flush=True)


def stall(root: str, thread: str, name: str) -> None:
    """Post once but stop just before publishing (the temp file written and synced, the
    thread's lock held); say "staged" and wait to be killed there."""
    box = Mailbox(root)

    def stop(*args: object, **kwargs: object) -> None:
        print("staged", flush=True)
        time.sleep(600)

    os.link = stop  # type: ignore[assignment]
    box.post(thread, f"{name} never publishes this", sender=name)


def hold_lock(path: str) -> None:
    """Hold an exclusive flock on path until killed."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("ready", flush=True)
    time.sleep(600)


if __name__ == "__main__":
    role, *rest = sys.argv[1:]
    roles = {
        "writer": writer,
        "reader": reader,
        "forever": forever,
        "hold_lock": hold_lock,
        "stall": stall,
        "waiter": waiter,
        "create": create,
        "mcp_agent": mcp_agent,
        "collector": collector,
        "foreign": foreign,
    }
    roles[role](*rest)


# ---------------------------------------------------------------- tasks (test_tasks_mcp.py)


def _serve_params(root: str, name: str) -> object:
    from mcp import StdioServerParameters

    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "mailslot", "serve", "--root", root, "--agent", name],
        # As helpers.params: the suite may be pointed at another source tree.
        env={"PYTHONDONTWRITEBYTECODE": "1"}
        | {k: os.environ[k] for k in ("PYTHONPATH", "XDG_CONFIG_HOME") if k in os.environ},
    )


async def _tool(c: object, tool: str, **args: object) -> tuple[bool, object]:
    """Call tool; return (is_error, the parsed JSON or the error text)."""
    result = await c.call_tool(tool, args)  # type: ignore[attr-defined]
    text = result.content[0].text
    return bool(result.is_error), (text if result.is_error else json.loads(text))


def task_worker(root: str, name: str, topic: str, total: str, stop: str, go: str) -> None:
    """Drain tasks through an own `mailslot serve`: join topic, then loop on the inbox
    (msg_wait()), claim each task shown, post a result for each one won. Stop once
    task_list(thread, status='all') counts int(total) done, or when the stop file exists.

    Prints one JSON line: the tasks won (seq -> result seq), the tasks lost (claimed: false),
    the claim calls answered with a tool error (text), and any other surprise."""
    import anyio
    from mcp.client import Client

    async def main() -> None:
        async with Client(_serve_params(root, name), mode="auto", cache=None) as c:
            bad, joined = await _tool(c, "thread_create", topic=topic)
            assert not bad, joined
            thread = joined["thread"]  # type: ignore[index]
            bad, first = await _tool(c, "msg_wait", timeout_s=0.05)  # the inbox's first look
            assert not bad, first
            wait_for(Path(go))
            won: dict[int, int] = {}
            lost: list[list[object]] = []  # [seq, the answer]
            refused: list[list[object]] = []  # [seq, error text]
            shown: list[int] = []
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not Path(stop).exists():
                bad, got = await _tool(c, "msg_wait", timeout_s=1)
                assert not bad, got
                tasks = [m for m in got["messages"] if "task" in m]  # type: ignore[index]
                for m in tasks:
                    seq = m["seq"]
                    shown.append(seq)
                    bad, claim = await _tool(c, "task_claim", thread=m["thread"], seq=seq)
                    if bad:
                        refused.append([seq, claim])
                    elif claim["claimed"] is True:  # type: ignore[index]
                        bad, posted = await _tool(c, "msg_post", thread=m["thread"],
                                                  content=f"{name} did {seq}", type="result",
                                                  reply_to=seq)  # fmt: skip
                        assert not bad, posted
                        won[seq] = posted["seq"]  # type: ignore[index]
                    else:
                        lost.append([seq, claim])
                if not tasks:
                    bad, listed = await _tool(c, "task_list", thread=thread, status="all",
                                              limit=1)  # fmt: skip
                    assert not bad, listed
                    if listed["counts"]["done"] >= int(total):  # type: ignore[index]
                        break
            print(json.dumps({"worker": name, "won": won, "lost": lost, "refused": refused,
                              "shown": shown}), flush=True)  # fmt: skip

    anyio.run(main)


def task_holder(root: str, name: str, topic: str, seq: str) -> None:
    """Join topic through an own `mailslot serve`, claim task seq, print the claim's answer,
    then make no call until killed (the test SIGKILLs the serve process, then this one)."""
    import anyio
    from mcp.client import Client

    async def main() -> None:
        async with Client(_serve_params(root, name), mode="auto", cache=None) as c:
            bad, joined = await _tool(c, "thread_create", topic=topic)
            assert not bad, joined
            bad, claim = await _tool(c, "task_claim", thread=joined["thread"], seq=int(seq))  # type: ignore[index]
            print(json.dumps({"error": claim} if bad else claim), flush=True)
            await anyio.sleep(600)

    anyio.run(main)


def offer_worker(
    root: str, name: str, topic: str, total: str, go: str, take_next: str = ""
) -> None:
    """Drain tasks as a model would, through an own `mailslot serve`: join topic (no wait yet:
    tasks posted before the first one are owed to it), then wait on the inbox, claim each task
    it offers, post the result of each one won, and wait again; stop once task_list counts
    int(total) done. With take_next, after each result it claims the next task open to it in
    the thread until none is, before it waits again: with "1" by task_claim without a seq,
    with "post" by the result's own msg_post(next_task=true).

    Prints one JSON line: the tasks won (seq -> result seq), the task_claim calls made (and
    those without a seq that won nothing), the most tasks one answer offered, how many answers
    said has_more, and the task contents claims without a seq returned (seq -> content)."""
    import anyio
    from mcp.client import Client

    async def main() -> None:
        async with Client(_serve_params(root, name), mode="auto", cache=None) as c:
            bad, joined = await _tool(c, "thread_create", topic=topic)
            assert not bad, joined
            thread = joined["thread"]  # type: ignore[index]
            wait_for(Path(go))
            won: dict[int, int] = {}
            got_next: dict[int, str] = {}
            claims = most = more = empty = 0
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                bad, got = await _tool(c, "msg_wait", timeout_s=1)
                assert not bad, got
                offers = [m for m in got["messages"] if "task" in m]  # type: ignore[index]
                most = max(most, len(offers))
                more += bool(got.get("has_more"))  # type: ignore[attr-defined]
                for m in offers:
                    claims += 1
                    seq = m["seq"]
                    bad, claim = await _tool(c, "task_claim", thread=m["thread"], seq=seq)
                    while not bad and claim["claimed"] is True:  # type: ignore[index]
                        seq = claim["seq"]  # type: ignore[index]
                        bad, posted = await _tool(c, "msg_post", thread=m["thread"],
                                                  content=f"{name} did {seq}", type="result",
                                                  reply_to=seq,
                                                  next_task=take_next == "post")  # fmt: skip
                        assert not bad, posted
                        won[seq] = posted["seq"]  # type: ignore[index]
                        if not take_next:
                            break
                        claims += 1
                        if take_next == "post":
                            claim = posted["next"]  # type: ignore[index]
                        else:
                            bad, claim = await _tool(c, "task_claim", thread=m["thread"])
                        assert not bad, claim
                        if claim["claimed"] is True:  # type: ignore[index]
                            got_next[claim["seq"]] = claim["message"]["content"]  # type: ignore[index]
                        else:
                            empty += 1
                if not offers:
                    bad, listed = await _tool(c, "task_list", thread=thread, status="all",
                                              limit=1)  # fmt: skip
                    assert not bad, listed
                    if listed["counts"]["done"] >= int(total):  # type: ignore[index]
                        break
            print(json.dumps({"worker": name, "won": won, "claims": claims, "most": most,
                              "more": more, "next": got_next, "empty": empty}),
                  flush=True)  # fmt: skip

    anyio.run(main)
