"""What this clone has that the remote lacks, found without reading the mailbox.

The threads a watcher saw change (``dirty``), or whose folder's mtime differs from the one the
state kept when they were last in step, are the only ones looked at; in each, only the files
after the seq both sides hold through are read. A folder or file deleted here (a checkout, a
``git clean``, a person) is put back from the commit last agreed on: sync never follows a
deletion, and a mailbox never loses a message.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mailslot.store.format import message_name
from mailslot.sync import layout
from mailslot.sync.git import blob_id
from mailslot.sync.land import NotReady, local_after, place

if TYPE_CHECKING:
    from mailslot.sync.engine import Sync


@dataclass(slots=True)
class Batch:
    """What this clone has that the remote does not: one commit's worth."""

    files: dict[str, bytes] = field(default_factory=dict)  # path -> bytes
    heads: dict[str, int] = field(default_factory=dict)  # thread -> seq pushed through
    records: list[str] = field(default_factory=list)
    cards: dict[str, str] = field(default_factory=dict)  # agent -> blob
    stamps: dict[str, int] = field(default_factory=dict)
    agents_stamp: int = 0
    waiting: dict[str, str] = field(default_factory=dict)  # thread -> why it waits

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for path in self.files:
            parts = path.split("/")
            if parts[0] == "threads" and parts[2] != "thread.json":
                counts[parts[1]] = counts.get(parts[1], 0) + 1
        said = [f"{n} in {t}" for t, n in sorted(counts.items())]
        cards = [p for p in self.files if p.startswith("agents/")]
        if cards:
            said.append(f"{len(cards)} agent card{'s' * (len(cards) > 1)}")
        return "; ".join(said) or "thread records"


def mtime(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


class Local:
    """This clone's side of one round."""

    def __init__(self, sync: Sync) -> None:
        self.sync = sync

    def collect(self, dirty: set[str] | None) -> Batch:
        """Return what this clone has that the remote's branch lacks."""
        st = self.sync.state
        batch = Batch()
        threads = self.sync.files.root / "threads"
        if dirty is None:
            look = self._changed_folders(threads)
        else:
            look = {t: mtime(threads / t) for t in dirty | self.sync._touched}
        self.sync._touched = set()
        for thread, stamp in sorted(look.items()):
            tdir = threads / thread
            self._restore(thread, tdir)
            if not tdir.is_dir() or tdir.is_symlink():
                continue
            if thread not in st.records and (tdir / "thread.json").is_file():
                with contextlib.suppress(OSError):
                    batch.files[f"threads/{thread}/thread.json"] = (
                        tdir / "thread.json"
                    ).read_bytes()
                    batch.records.append(thread)
            if thread in st.behind:  # the remote's messages for it have not landed yet:
                batch.waiting[thread] = "the remote's messages for it land first"
                continue  # pushing ours now would put them over the remote's at those seqs
            try:
                ours = local_after(tdir, st.known.get(thread, 0))
            except NotReady as e:
                batch.waiting[thread] = str(e)
                continue
            for seq, data in ours:
                batch.files[f"threads/{thread}/{message_name(seq)}"] = data
            if ours:
                batch.heads[thread] = ours[-1][0]
            batch.stamps[thread] = stamp
        self._collect_cards(batch)
        return batch

    def _changed_folders(self, threads: Path) -> dict[str, int]:
        """Return {thread: folder mtime} of the folders changed since they were in step."""
        out: dict[str, int] = {}
        try:
            entries = list(os.scandir(threads))
        except OSError:
            return out
        for entry in entries:
            try:
                stamp = entry.stat(follow_symlinks=False).st_mtime_ns
            except OSError:
                continue
            if self.sync.state.stamps.get(entry.name) != stamp:
                out[entry.name] = stamp
        for thread in set(self.sync.state.known) - {e.name for e in entries}:
            out[thread] = 0  # its folder is gone here (a checkout, a clean): bring it back
        return out

    def _restore(self, thread: str, tdir: Path) -> None:
        """Bring back messages both sides had that were deleted here (never a deletion synced).

        git checkouts, `git clean` and people delete files; the remote still has them, and a
        mailbox never loses a message, so they are put back from the commit last agreed on.
        """
        known, base = self.sync.state.known.get(thread, 0), self.sync.state.base
        if not known or base is None:
            return
        try:
            names = {e.name for e in os.scandir(tdir)}
        except OSError:
            names = set()
        wanted = [message_name(s) for s in range(1, known + 1)]
        if sum(n in names for n in wanted) == known and "thread.json" in names:
            return
        lost = [c for c in self.sync.git.diff(None, base, f"threads/{thread}/")
                if c.path.rsplit("/", 1)[-1] not in names]  # fmt: skip
        # Checked as what a fetch brings: never what layout refuses (a symlink, a name outside
        # it, too big), and a note for what is not a message.
        limit = layout.message_limit(self.sync.box.settings.max_content_bytes)
        incoming = layout.sort(lost, self.sync.git.sizes([c.blob for c in lost]), limit)
        blobs = self.sync._read(incoming.blobs())
        record = blobs.get(incoming.records.get(thread, ""))
        if record is not None and layout.check_record(record, thread) is not None:
            record = None
        tdir = self.sync._thread_dir(thread, record)
        if record is not None:
            place(self.sync.files, tdir / "thread.json", record, replace=False)
        seqs = incoming.messages.get(thread, {})
        for seq in seqs:
            data = incoming.message(thread, seq, blobs)[0]
            place(self.sync.files, tdir / message_name(seq), data, replace=False)
        if seqs or record is not None:
            self.sync.status.remark(f"put back {len(seqs) + (record is not None)} file(s) of "
                               f"{thread} deleted here")  # fmt: skip

    def _collect_cards(self, batch: Batch) -> None:
        agents = self.sync.files.root / "agents"
        stamp = mtime(agents)
        if stamp == self.sync.state.agents_stamp:
            return
        with contextlib.suppress(OSError):
            for entry in os.scandir(agents):
                if not entry.name.endswith(".json") or entry.is_symlink():
                    continue
                try:
                    data = Path(entry.path).read_bytes()
                except OSError:
                    continue
                blob = blob_id(data)
                name = entry.name[: -len(".json")]
                if self.sync.state.cards.get(name) != blob and not layout.check_card(data, name):
                    batch.files[f"agents/{entry.name}"] = data
                    batch.cards[name] = blob
        batch.agents_stamp = stamp
