"""What starting `mailslot serve` costs, and that its shortcuts change nothing a client sees.

The tool list comes from a cache keyed by the code that makes it; the command parses only the
subcommand it runs; the search index, the git guard and the hooks load on first use.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
from helpers import SERVE, server_env
from mcp import StdioServerParameters
from mcp.client import Client

from mailslot import Mailbox, cli


def _tool_list(root: Path, cache: Path) -> list[dict[str, Any]]:
    params = StdioServerParameters(
        command=SERVE[0],
        args=[*SERVE[1:], "--root", str(root), "--agent", "alice"],
        env=server_env() | {"XDG_CACHE_HOME": str(cache)},
    )

    async def main() -> list[dict[str, Any]]:
        async with Client(params, mode="legacy", cache=None) as c:
            tools = await c.list_tools()
            got = await c.call_tool("msg_post", {"thread": 5})  # argument errors use the schema
            assert got.is_error and "'thread' must be text" in got.content[0].text  # type: ignore[union-attr]
            return [
                t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools.tools
            ]

    return anyio.run(main)


def test_the_tool_list_is_the_same_made_cached_damaged_or_uncachable(tmp_path: Path) -> None:
    Mailbox.init(tmp_path / "box")
    cache = tmp_path / "cache"
    made = _tool_list(tmp_path / "box", cache)
    files = list((cache / "mailslot").glob("tools-*.json"))
    assert len(files) == 1, "the first start writes the cache"
    assert _tool_list(tmp_path / "box", cache) == made, "served from the cache"
    files[0].write_text("{not json")
    assert _tool_list(tmp_path / "box", cache) == made, "a damaged cache is made anew"
    assert json.loads(files[0].read_text())[0]["name"] == made[0]["name"]
    files[0].write_text(json.dumps(made[:3]))
    assert _tool_list(tmp_path / "box", cache) == made, "a cache listing other tools is ignored"
    files[0].write_text("5")
    assert _tool_list(tmp_path / "box", cache) == made, "a cache of another shape is ignored"
    files[0].write_text("[" * 100_000 + "]" * 100_000)
    assert _tool_list(tmp_path / "box", cache) == made, "a cache nested too deep is ignored"
    files[0].unlink()
    files[0].mkdir()  # no cache can be written there: made each time, nothing left behind
    assert _tool_list(tmp_path / "box", cache) == made
    assert sorted(p.name for p in (cache / "mailslot").iterdir()) == [files[0].name]
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    assert _tool_list(tmp_path / "box", blocked) == made, "no cache to write: made each time"
    assert len(made) == 15


def _subcommands(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_a_command_parsed_alone_reads_as_among_all() -> None:
    every = _subcommands(cli.parser())
    assert len(every) == len(cli.COMMANDS) > 20
    for name, full in every.items():
        (alone,) = _subcommands(cli.parser(name)).values()
        assert alone.format_help() == full.format_help(), name


def test_serving_loads_neither_search_nor_guard_nor_hooks_nor_the_watcher() -> None:
    """What `mailslot serve` imports before its first tools/list: none of the rest (watchdog
    loads with the first wait)."""
    code = (
        "import sys, mailslot.cli, mailslot.stdio_server; "
        "print(' '.join(m for m in ('sqlite3', 'mailslot.coordination.search', "
        "'mailslot.clients.guard', 'mailslot.clients.hooks', 'mailslot.console.server', "
        "'portalocker', 'watchdog', 'tomllib') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    assert done.stdout.strip() == ""
