"""Errors that tell the truth: "nothing was stored" only when nothing was stored.

Real filesystems: a tmpfs mount with a handful of free inodes, a root removed under a wait.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from helpers import require

from mailslot import Mailbox, StorageError
from mailslot.tools import Session


@pytest.fixture
def few_inodes(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,nr_inodes=400", "tmpfs", str(mnt)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        require(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill_inodes(where: Path) -> list[Path]:
    """Create empty files until the filesystem has no free inode; return them."""
    made = []
    while True:
        path = where / f"f{len(made)}"
        try:
            path.touch()
        except OSError:
            return made
        made.append(path)


def test_a_keyed_post_stored_on_a_full_disk_says_stored(few_inodes: Path) -> None:
    box = Mailbox.init(few_inodes / "box", fsync=False)
    box.create_thread("t", creator="alice")
    box.post("t", "warm up", sender="alice", idempotency_key="k0")  # makes .state/keys/t/
    filler = few_inodes / "filler"
    filler.mkdir()
    made = fill_inodes(filler)
    # Room for the temp message, the key marker and the link (tmpfs counts links against its
    # inodes), not for one more file: the marker cannot learn the seq after the claim.
    for path in made[-3:]:
        path.unlink()
    seq = box.post("t", "deploy 42", sender="alice", idempotency_key="deploy-42")
    assert seq == 2 and box.get("t", 2).content == "deploy 42"
    for path in made[:-3]:
        path.unlink()
    # The marker never learnt the seq; a retry still finds the message, once.
    assert box.post("t", "deploy 42", sender="alice", idempotency_key="deploy-42") == 2
    assert box.head("t") == 2


def test_a_keyed_post_that_cannot_mark_its_key_stores_nothing(few_inodes: Path) -> None:
    box = Mailbox.init(few_inodes / "box", fsync=False)
    box.create_thread("t", creator="alice")
    box.post("t", "warm up", sender="alice", idempotency_key="k0")
    filler = few_inodes / "filler"
    filler.mkdir()
    made = fill_inodes(filler)
    made[-1].unlink()  # room for the temp message only
    with pytest.raises(StorageError, match="nothing was stored"):
        box.post("t", "deploy 43", sender="alice", idempotency_key="deploy-43")
    assert box.head("t") == 1


def test_a_root_removed_during_a_wait_is_said_to_be_gone(root: Path) -> None:
    box = Mailbox(root)
    box.create_thread("t", creator="alice")
    session = Session(box, agent="bob", progress_every=0.2)

    async def main() -> str:
        async def remove() -> None:
            await anyio.sleep(0.3)
            subprocess.run(["rm", "-rf", str(root)], check=True)

        async with anyio.create_task_group() as tg:
            tg.start_soon(remove)
            try:
                await session.msg_wait("t", timeout_s=1.5)
            except StorageError as e:
                return str(e)
        return ""

    said = anyio.run(main)
    assert "is gone" in said and "nothing was stored" not in said, said
    assert "mailslot init" in said
    box.close()
