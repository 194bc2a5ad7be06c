"""An independent client: the MCP Inspector CLI (npm) drives `mailslot serve`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import require

from mailslot import Mailbox

REPO = Path(__file__).resolve().parent.parent
INSPECTOR = os.environ.get("MAILSLOT_INSPECTOR") or str(
    REPO / ".ci" / "node" / "node_modules" / ".bin" / "inspector"
)


@pytest.fixture(autouse=True)
def _inspector() -> None:
    """Skip without the Inspector and node (fail under CI=true, where it must run)."""
    if not (Path(INSPECTOR).exists() and shutil.which("node")):
        require("needs node and @modelcontextprotocol/inspector (.ci/run installs it in .ci/node/)")


def _pythonpath() -> list[str]:
    """Pass PYTHONPATH on to the server, so the suite can be pointed at another source tree,
    and XDG_CONFIG_HOME, so the server's key is the test's (conftest.py), not in a real home."""
    passed = ("PYTHONPATH", "XDG_CONFIG_HOME")
    return [a for k in passed if k in os.environ for a in ("-e", f"{k}={os.environ[k]}")]


def inspect(root: Path, *args: str) -> tuple[int, dict]:
    cmd = [
        INSPECTOR,
        "--cli",
        "-q",
        "--format",
        "json",
        "-e",
        f"MAILSLOT_ROOT={root}",
        *_pythonpath(),
        "-e",
        "MAILSLOT_AGENT=inspector",
        sys.executable,
        "-m",
        "mailslot",
        "serve",
        *args,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    return result.returncode, json.loads(result.stdout.strip().splitlines()[-1])


def test_inspector_lists_and_calls_tools(root: Path) -> None:
    code, listed = inspect(root, "--method", "tools/list")
    assert code == 0
    assert {t["name"] for t in listed["result"]["tools"]} >= {
        "msg_post",
        "msg_wait",
        "thread_create",
    }
    code, made = inspect(
        root,
        "--method",
        "tools/call",
        "--tool-name",
        "thread_create",
        "--tool-args-json",
        json.dumps({"topic": "From the Inspector"}),
    )
    assert code == 0
    assert json.loads(made["result"]["content"][0]["text"])["thread"] == "from-the-inspector"
    code, _ = inspect(
        root,
        "--method",
        "tools/call",
        "--tool-name",
        "msg_post",
        "--tool-args-json",
        json.dumps({"thread": "from-the-inspector", "content": "hello ✓"}),
    )
    assert code == 0
    assert Mailbox(root).get("from-the-inspector", 1).content == "hello ✓"
    code, waited = inspect(
        root,
        "--method",
        "tools/call",
        "--tool-name",
        "msg_wait",
        "--tool-args-json",
        json.dumps({"thread": "from-the-inspector", "after_seq": 1, "timeout_s": 1}),
    )
    assert code == 0 and json.loads(waited["result"]["content"][0]["text"])["status"] == "timeout"


def test_inspector_sees_tool_errors(root: Path) -> None:
    code, failed = inspect(
        root,
        "--method",
        "tools/call",
        "--tool-name",
        "msg_post",
        "--tool-args-json",
        json.dumps({"thread": "nope", "content": "x"}),
    )
    assert code == 5, "the Inspector exits 5 when a tool reports isError"
    assert failed["result"]["isError"] is True
    assert "no thread 'nope'" in failed["result"]["content"][0]["text"]


def test_inspector_in_the_2026_era(root: Path) -> None:
    cmd_args = ["--method", "tools/call", "--tool-name", "bus_get_config"]
    result = subprocess.run(
        [
            INSPECTOR,
            "--cli",
            "-q",
            "--format",
            "json",
            "--protocol-era",
            "modern",
            "-e",
            f"MAILSLOT_ROOT={root}",
            *_pythonpath(),
            sys.executable,
            "-m",
            "mailslot",
            "serve",
            *cmd_args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    cfg = json.loads(json.loads(result.stdout)["result"]["content"][0]["text"])
    # The config names the agent the session posts as: here made from the client's name.
    assert cfg["agent"] == "inspector-cli" and cfg["version"]
