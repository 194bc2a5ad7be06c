"""`mailslot demo`: three real agents collaborate through a fresh mailbox; no model needed.

Three `mailslot serve` processes are started over stdio and driven by scripted agents through
the official MCP client: a planner delegates a task, a coder reports a result, a reviewer moves
the thread to review and closes it with a summary, each blocking in msg_wait for the others.
A fourth reader prints every message the moment it lands in the folder.
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, TextIO

import anyio
from mcp import StdioServerParameters, types
from mcp.client import Client
from mcp.client.stdio import get_default_environment

from mailslot.mailbox import Mailbox

TOPIC = "Add a --version flag to the CLI"
DIFF = """Added it:

```diff
+    p.add_argument("--version", action="version", version=f"tool {__version__}")
```

`tool --version` now prints `tool 0.1.0`; tests pass."""


class _Show:
    """Prints what happens, with the time since the demo began."""

    def __init__(self, out: TextIO, color: bool) -> None:
        self.out = out
        self.color = color
        self.start = time.monotonic()

    def line(self, text: str, style: str = "") -> None:
        stamp = f"{time.monotonic() - self.start:6.2f}s"
        codes = {"dim": "2", "bold": "1", "green": "32"}
        if self.color and style:
            text = f"\033[{codes[style]}m{text}\033[0m"
        print(f"{stamp}  {text}", file=self.out, flush=True)


async def _call(c: Client, tool: str, **args: Any) -> dict[str, Any]:
    result = await c.call_tool(tool, args)
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    if result.is_error:
        raise RuntimeError(f"{tool} failed: {block.text}")
    return dict(json.loads(block.text))


async def _wait_for(c: Client, show: _Show, who: str, want: Any, **args: Any) -> dict[str, Any]:
    """Call msg_wait until a message satisfying want arrives; return that message."""
    show.line(
        f"{who} blocks in msg_wait({', '.join(f'{k}={v!r}' for k, v in args.items())})", "dim"
    )
    while True:
        got = await _call(c, "msg_wait", **args, timeout_s=20)
        if "thread" in args:
            args["after_seq"] = got["next_after_seq"]
        for m in got["messages"]:
            if want(m):
                return dict(m)


async def _planner(c: Client, show: _Show, thread: list[str]) -> None:
    await _call(c, "agent_register", description="plans the work and delegates it")
    t = (await _call(c, "thread_create", topic=TOPIC))["thread"]
    thread.append(t)
    await anyio.sleep(0.3)  # let the others join and block first
    await _call(c, "msg_post", thread=t, content="Hi both. I'll split this up.")
    task = await _call(c, "msg_post", thread=t, type="task", to=["coder"],
                       content="Please add `--version` to the CLI, with a test.")  # fmt: skip
    result = await _wait_for(c, show, "planner", lambda m: m["type"] == "result",
                             thread=t, after_seq=task["seq"])  # fmt: skip
    await _call(c, "msg_post", thread=t, to=["reviewer"], reply_to=result["seq"],
                content="Thanks! Reviewer, over to you.")  # fmt: skip
    await _wait_for(c, show, "planner",
                    lambda m: m["type"] == "state" and m.get("meta", {}).get("state") == "closed",
                    thread=t, after_seq=result["seq"])  # fmt: skip


async def _coder(c: Client, show: _Show) -> None:
    await _call(c, "agent_register", description="writes the code")
    t = (await _call(c, "thread_create", topic=TOPIC))["thread"]
    task = await _wait_for(c, show, "coder", lambda m: m["type"] == "task")
    await _call(c, "msg_post", thread=t, type="status", content="On it.")
    await _call(c, "thread_set_state", thread=t, state="implement")
    await anyio.sleep(0.2)  # "work"
    await _call(c, "msg_post", thread=t, type="result", reply_to=task["seq"], content=DIFF)


async def _reviewer(c: Client, show: _Show) -> None:
    await _call(c, "agent_register", description="reviews changes")
    t = (await _call(c, "thread_create", topic=TOPIC))["thread"]
    ask = await _wait_for(c, show, "reviewer", lambda m: m["from"] == "planner")
    await _call(c, "thread_set_state", thread=t, state="review")
    await _call(c, "msg_post", thread=t, reply_to=ask["seq"],
                content="Looks good: ran `tool --version`, checked the test.")  # fmt: skip
    await _call(c, "thread_set_state", thread=t, state="closed",
                summary="Added `--version` (prints the package version), with a test; "
                        "reviewed and merged.")  # fmt: skip


async def _printer(root: Path, show: _Show, done: anyio.Event) -> None:
    """Print every message the moment it lands, from the folder itself."""
    box = Mailbox(root)
    cursor: dict[str, int] = {}
    try:
        while not done.is_set():
            got = await box.wait_async(None, cursor, timeout=0.2)
            cursor = got.cursor
            for m in got.messages:
                head = f"#{m.seq} {m.sender}" + (f" → {', '.join(m.to)}" if m.to else "")
                if m.type == "state":
                    body = f"state {m.meta.get('previous')} → {m.meta.get('state')}"
                    body += f": {m.content}" if m.content else ""
                else:
                    tag = "" if m.type == "message" else f"[{m.type}] "
                    reply = f"(re #{m.reply_to}) " if m.reply_to else ""
                    body = tag + reply + textwrap.indent(m.content, " " * 12).lstrip()
                show.line(f"{head}: {body}", "bold")
    finally:
        box.close()


def _tree(root: Path) -> list[str]:
    lines = [root.name + "/"]

    def walk(d: Path, prefix: str) -> None:
        entries = sorted(p for p in d.iterdir() if p.name != ".state")
        for i, p in enumerate(entries):
            last = i == len(entries) - 1
            lines.append(f"{prefix}{'└── ' if last else '├── '}{p.name}{'/' if p.is_dir() else ''}")
            if p.is_dir():
                walk(p, prefix + ("    " if last else "│   "))

    walk(root, "")
    return lines


async def run(
    root: Path,
    out: TextIO = sys.stdout,
    *,
    color: bool = False,
    command: str = "mailslot",
    by_cd: bool = True,
) -> str:
    """Run the demo in a new mailbox at root; return the thread's id.

    command is how a person runs mailslot in their shell; by_cd says the commands printed at
    the end find the mailbox from its folder (the root is named .mailslot and no
    MAILSLOT_ROOT says otherwise), so they need no --root.
    """
    Mailbox.init(root)
    root = root.resolve()
    show = _Show(out, color)
    show.line(f"mailbox: {root}")
    show.line("starting three `mailslot serve` processes: planner, coder, reviewer", "dim")

    keys = tempfile.TemporaryDirectory(prefix="mailslot-demo-keys-")  # docs/signing.md

    def params(agent: str) -> StdioServerParameters:
        return StdioServerParameters(
            command=sys.executable,
            args=["-m", "mailslot", "serve", "--root", str(root), "--agent", agent],
            env={**get_default_environment(), "XDG_CONFIG_HOME": keys.name},
        )

    thread: list[str] = []
    done = anyio.Event()
    with anyio.fail_after(120):
        async with (
            Client(params("planner"), cache=None) as planner,
            Client(params("coder"), cache=None) as coder,
            Client(params("reviewer"), cache=None) as reviewer,
            anyio.create_task_group() as printing,
        ):
            printing.start_soon(_printer, root, show, done)
            async with anyio.create_task_group() as agents:
                agents.start_soon(_planner, planner, show, thread)
                agents.start_soon(_coder, coder, show)
                agents.start_soon(_reviewer, reviewer, show)
            await anyio.sleep(0.3)  # let the printer show the last message
            done.set()
    show.line("all three servers exited when their clients closed stdin", "dim")
    keys.cleanup()
    t = thread[0]
    info = Mailbox(root).thread(t)
    print("\nThe folder is the whole truth (`find`, without the per-machine .state/):\n", file=out)
    print("\n".join(_tree(root)), file=out)
    print(f"\n$ cat {root}/threads/{t}/000002.json", file=out)
    print((root / "threads" / t / "000002.json").read_text(encoding="utf-8"), file=out)
    print(f"Thread {t!r} is {info.state} after {info.head} messages. Look next:", file=out)
    for line in look_next(root, t, command, by_cd=by_cd):
        print(f"  {line}", file=out)
    print("To wire your own agents (claude-code, cursor, vscode, codex, gemini), in your project:",
          file=out)  # fmt: skip
    print(f"  {command} init\n  {command} mcp-config claude-code --install", file=out)
    return t


def look_next(root: Path, thread: str, command: str, *, by_cd: bool) -> list[str]:
    """Return the commands that show the demo's mailbox, as a person types them in a shell."""
    if by_cd:
        return [f"cd {shlex.quote(str(root.parent))}", f"{command} read {thread}",
                f"{command} threads", f"{command} agents"]  # fmt: skip
    where = f" --root {shlex.quote(str(root))}"
    return [f"{command} read {thread}{where}", f"{command} threads{where}",
            f"{command} agents{where}"]  # fmt: skip
