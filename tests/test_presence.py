"""Presence over time: a live server stays present, and a name live on another machine is held.

A killed server reads offline at once on its own machine (test_e2e.py). What covers other
machines, where locks do not reach, is the presence file and its heartbeat: a server refreshes
it every --heartbeat-timeout / 3 seconds, and a file not refreshed within the timeout reads as
offline. These tests use a short timeout, so a heartbeat that stopped shows within seconds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import call, params, until_async
from mcp.client import Client

from mailslot import Mailbox, NameTaken
from mailslot.store.agents import HOST

TIMEOUT = 2.0  # --heartbeat-timeout: the server refreshes its presence every 0.67 s


def _presence_doc(root: Path, name: str) -> dict[str, Any]:
    return dict(json.loads((root / ".state" / "presence" / f"{name}.json").read_bytes()))


async def _watch(root: Path, name: str, seconds: float) -> tuple[set[str], set[float]]:
    """Return the statuses agent name showed, and the refresh times its file had, over seconds
    (seen as another machine would: by the file's age, with the same timeout)."""
    statuses, refreshed = set(), set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        statuses.add(Mailbox(root).agents.presence(name, stale_after=TIMEOUT).status)
        refreshed.add(_presence_doc(root, name)["last_seen_epoch"])
        await anyio.sleep(0.1)
    return statuses, refreshed


def test_a_server_stays_present_past_its_heartbeat_timeout(root: Path) -> None:
    Mailbox(root).create_thread("t", creator="alice")
    server = params(root, "--agent", "sleeper", "--heartbeat-timeout", str(TIMEOUT))

    async def main() -> None:
        async with Client(server, mode="legacy", cache=None) as c:
            await call(c, "bus_get_config")
            # Idle: online for longer than the timeout (its last tool call refreshed it once).
            statuses, refreshed = await _watch(root, "sleeper", 1.5 * TIMEOUT)
            assert statuses == {"online"}, "an idle server's heartbeat keeps it online"
            assert len(refreshed) >= 3, "the presence file is refreshed while idle"

            # Blocked in msg_wait (no progress notification within the window): still waiting.
            async with anyio.create_task_group() as tg:

                async def wait() -> None:
                    got = await call(c, "msg_wait", thread="t", after_seq=0, timeout_s=60)
                    assert [m["content"] for m in got["messages"]] == ["wake up"]

                async def waiting() -> bool:
                    return Mailbox(root).agents.presence("sleeper", stale_after=TIMEOUT).status == (
                        "waiting"
                    )

                tg.start_soon(wait)
                await until_async("the server waiting", waiting)
                statuses, refreshed = await _watch(root, "sleeper", 1.5 * TIMEOUT)
                assert statuses == {"waiting"}, "a waiting server's heartbeat keeps it waiting"
                assert len(refreshed) >= 3, "the presence file is refreshed while waiting"
                Mailbox(root).post("t", "wake up", sender="alice")

    anyio.run(main)
    assert Mailbox(root).agents.presence("sleeper").status == "offline", (
        "and offline once it closed"
    )


def _foreign(root: Path, name: str, status: str, age: float) -> None:
    """Write the presence file a server on another machine would have written age seconds ago."""
    presence = root / ".state" / "presence"
    presence.mkdir(parents=True, exist_ok=True)
    seen = time.time() - age
    doc = {"agent": name, "status": status, "client": "claude-code", "pid": 4242,
           "host": "elsewhere", "started": "2026-01-01T00:00:00.000Z",
           "last_seen": "2026-01-01T00:00:00.000Z", "last_seen_epoch": seen,
           "waiting_on": None, "last_active_epoch": seen}  # fmt: skip
    (presence / f"{name}.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("status", ["online", "waiting"])
def test_a_name_live_on_another_machine_cannot_be_taken(root: Path, status: str) -> None:
    assert HOST != "elsewhere"
    box = Mailbox(root)
    _foreign(root, "remote", status, age=1)
    with pytest.raises(NameTaken, match="elsewhere"):
        box.agents.hold_name("remote")
    with pytest.raises(NameTaken):
        box.agents.hold_name("remote", stale_after=TIMEOUT)
    assert _presence_doc(root, "remote")["host"] == "elsewhere", "its presence file is kept"


def test_a_name_stale_or_gone_on_another_machine_can_be_taken(root: Path) -> None:
    box = Mailbox(root)
    _foreign(root, "stale", "online", age=60)  # past the default 30 s timeout
    _foreign(root, "quick", "online", age=3)  # past a 2 s timeout
    _foreign(root, "left", "offline", age=1)  # a clean exit, just now
    for name, stale_after in (("stale", 30.0), ("quick", TIMEOUT), ("left", 30.0)):
        hold = box.agents.hold_name(name, stale_after=stale_after)
        assert (
            box.agents.presence(name).status == "online" and box.agents.presence(name).host == HOST
        )
        box.agents.release_name(hold)
