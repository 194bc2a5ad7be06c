"""One round of sync: look at the remote, take what it has, push what this clone has.

A round (``Sync.round``):

1. ``git ls-remote`` the branch (and the machines' heartbeats): one round trip, nothing
   fetched while nothing changed.
2. If the branch moved, fetch it and take its new files (``take``): the diff from the commit
   this clone last agreed with names exactly what changed, so the cost follows the change, not
   the mailbox. Each thread that changed is brought in step under its lock (``land``).
3. Push what this clone has that the remote does not, as one commit over the remote's tip
   (``give``). If the remote moved meanwhile the push is refused as not a fast-forward: go back
   to 1 (the remote's order decides). Nothing is ever force-pushed to the branch.

What changed here is known without reading the mailbox: the threads a watcher saw change
(``dirty``), or whose folder's mtime differs from the one kept in the state.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from mailslot.coordination.board import SYSTEM
from mailslot.mailbox import Mailbox
from mailslot.store.agents import with_key
from mailslot.store.errors import MailslotError
from mailslot.store.files import Files
from mailslot.store.format import dumps, loads, message_name
from mailslot.sync import layout, repo
from mailslot.sync.config import SyncConfig, machine_id, state_dir
from mailslot.sync.git import GitError
from mailslot.sync.land import NotReady, Outcome, integrate, place
from mailslot.sync.local import Batch, Local, mtime
from mailslot.sync.peers import Peers
from mailslot.sync.state import State, Status

#: Rounds of fetch-and-push a round tries when other clones keep pushing first.
MAX_TRIES = 8
#: Blobs read from git in one ``cat-file --batch``.
CHUNK = 2000


class Rejected(MailslotError):
    """The remote refused the push for a reason other than having moved (a protection rule)."""


def _identity(path: Path) -> tuple[int, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0, 0)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class Sync:
    """The sync of one mailbox root with one remote (a process holds at most one)."""

    def __init__(self, box: Mailbox, config: SyncConfig) -> None:
        self.box = box
        self.config = config
        self.root = box.root
        self.dir = state_dir(self.root)
        self.git, top = repo.open_repo(self.root, self.dir)
        self.remote = config.remote
        if top is None:
            self._private_remote()
        else:
            repo.check_untracked(self.root, top, self.git, config.branch)
        self.ref = f"refs/heads/{config.branch}"
        self.files = Files(box.root, box.settings, box.read_only)
        self.machine = machine_id(self.root)
        self.state = State.load(self.dir / "state.json", f"{self.remote} {self.ref}")
        self._stamp = _identity(self.dir / "state.json")
        self.status = Status(self.dir / "status.json", remote=self.remote,
                             branch=config.branch, machine=self.machine)  # fmt: skip
        self.peers = Peers(self, config)
        self._who: str | None = None
        self.tip: str | None = None
        self._touched: set[str] = set()  # threads a take brought in step this round
        self._since = ""  # the commit the current take diffs from ("": from nothing)

    def _private_remote(self) -> None:
        """Point the private repository's origin at the remote the settings name."""
        url = self.remote
        if "://" not in url and ":" not in url and Path(url).exists():
            url = str(Path(url).resolve())
        current = self.git.run("config", "remote.origin.url", ok=(0, 1)).decode().strip()
        if current != url:
            self.git.run("config", "remote.origin.url", url)
        self.remote = "origin"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold this machine's round lock: two syncs of one root never run a round at once."""
        fd = os.open(self.dir / "round.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def round(self, dirty: set[str] | None = None) -> bool:
        """Run one round; return True if anything moved either way. Raise GitError, Rejected.

        dirty: the threads known to have changed here (None: look at every folder's mtime).
        """
        with self.locked():
            self._reload()
            started = time.time()
            try:
                try:
                    moved = self._round(dirty)
                except OSError as e:  # this disk full, or a folder here not writable
                    raise GitError(f"cannot write what the remote has here ({e.strerror}: "
                                   f"{e.filename or self.root}): free some space (or make it "
                                   "writable); what landed is whole, the rest lands next "
                                   "round") from e  # fmt: skip
            except (GitError, Rejected) as e:
                self._count_pending()
                self.status.set(last_round=_iso(started), last_error=str(e),
                                error_at=_iso(time.time()))  # fmt: skip
                raise
            self.status.set(last_round=_iso(started), last_ok=_iso(time.time()),
                            last_error=None, base=self.state.base)  # fmt: skip
            return moved

    def _round(self, dirty: set[str] | None) -> bool:
        moved = False
        for _ in range(MAX_TRIES):
            refs = self.git.ls_remote(self.remote, [self.ref, f"{Peers.PREFIX}*"])
            self.tip = refs.get(self.ref)
            self.status.set(remote_tip=self.tip, looked=_iso(time.time()))
            self.peers.take(refs)
            if self.tip != self.state.base or self.state.behind:
                moved |= self.take(self.tip)
            batch = self.collect(dirty)
            self._record_pending(batch)
            if not batch.files:
                self._keep(batch)
                break
            if self.give(batch):
                self.status.set(pending=0, waiting=batch.waiting or None, oldest_pending=None)
                moved = True
                break
            dirty = None  # the remote moved first: take it, then look at everything again
        self.peers.heartbeat()
        return moved

    # -- taking what the remote has ---------------------------------------------------------

    def take(self, tip: str | None) -> bool:
        """Bring this clone in step with the remote's commit tip; return True if files landed."""
        st = self.state
        if tip is None:
            if st.base is not None:
                self.status.remark(
                    f"the remote has no branch {self.config.branch} any more (deleted?): "
                    "every message of this clone is pushed to it again"
                )
                st.forget()
                self._save()
            return False
        if tip != st.base:  # else only a waiting thread is taken again, from what is here
            self.git.fetch(self.remote, [f"+{self.ref}:{repo.FETCHED}"])
        since = st.base
        if since is not None and not self.git.is_ancestor(since, tip):
            self.status.remark(
                f"the remote's branch {self.config.branch} was rewritten (a force-push, or "
                f"deleted and made again): it no longer holds {since[:12]}. This clone's "
                "messages it lacks are pushed to it again; nothing here was lost"
            )
            st.forget()
            since = None
        changes = self.git.diff(since, tip)
        seen = {c.path for c in changes}
        for thread, old in sorted(st.behind.items()):  # what a thread left waiting still needs
            more = self.git.diff(old or None, tip, f"threads/{thread}/")
            changes += [c for c in more if c.path not in seen]
        self._since = since or ""
        limit = layout.message_limit(self.box.settings.max_content_bytes)
        incoming = layout.sort(changes, self.git.sizes([c.blob for c in changes]), limit)
        landed = self._take(incoming)
        st.base = tip
        self.git.set_ref(self.ref, tip)
        self._save()
        self.status.set(last_fetch=_iso(time.time()))
        return landed

    def _take(self, incoming: layout.Incoming) -> bool:
        st = self.state
        for path, why in incoming.refused.items():
            if path not in st.refused:
                self.status.remark(f"skipped {path} from the remote: {why}")
            st.refused[path] = why
        blobs = self._read(incoming.blobs())
        for thread, blob in incoming.records.items():
            self._take_record(thread, blobs.get(blob))
        landed = False
        for thread, seqs in sorted(incoming.messages.items()):
            msgs = {}
            known = st.known.get(thread, 0)
            for seq in seqs:
                if seq <= known:  # a message both had, changed there: messages never change
                    self.status.remark(f"the remote changed threads/{thread}/"
                                       f"{message_name(seq)}, which a message never is: this "
                                       "clone keeps the one it had")  # fmt: skip
                    continue
                data, bad = incoming.message(thread, seq, blobs)
                if bad is not None:
                    self.status.remark(f"skipped threads/{thread}/{message_name(seq)}: {bad}")
                msgs[seq] = data
            landed |= self._take_thread(thread, msgs)
        for name, blob in incoming.cards.items():
            self._take_card(name, blob, blobs.get(blob))
        return landed

    def _read(self, shas: list[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for at in range(0, len(shas), CHUNK):
            out.update(self.git.blobs(shas[at : at + CHUNK]))
        return out

    def _thread_dir(self, thread: str, record: bytes | None) -> Path:
        """Return the thread's folder, made (with its record inside) if this clone lacks it."""
        tdir = self.files.dir("threads") / thread
        self.files.check_not_symlink(tdir)
        if tdir.is_dir():
            return tdir
        stage = self.files.tmp_name("d")
        self.files.mkdir(stage)
        if record is not None:
            self.files.create_file(stage / "thread.json", record)
        try:
            os.rename(stage, tdir)
        except OSError:
            if not tdir.is_dir():
                raise
            with contextlib.suppress(OSError):
                (stage / "thread.json").unlink()
                stage.rmdir()
        return tdir

    def _take_record(self, thread: str, data: bytes | None) -> None:
        why = "its content is missing" if data is None else layout.check_record(data, thread)
        if data is None or why is not None:
            self.status.remark(f"skipped threads/{thread}/thread.json: {why}")
            return
        tdir = self._thread_dir(thread, data)
        # A record both clones made stays as each made it: replacing it would make the
        # thread new again to every reader here (positions are kept per record).
        place(self.files, tdir / "thread.json", data, replace=False)
        if thread not in self.state.records:
            self.state.records.append(thread)

    def _take_thread(self, thread: str, msgs: dict[int, bytes]) -> bool:
        tdir = self._thread_dir(thread, None)
        try:
            with self.files.locked(thread):
                out = integrate(self.files, tdir, self.state.known.get(thread, 0), msgs)
        except NotReady as e:
            # Taken again each round from where it stopped; the other threads go on.
            self.state.behind.setdefault(thread, self._since)
            self.status.remark(f"thread {thread} waits ({e}): the remote's messages for it "
                               "land once it is readable here")  # fmt: skip
            return False
        self.state.behind.pop(thread, None)
        self.state.known[thread] = out.known
        self._touched.add(thread)
        if out.moved:
            self.status.remark(
                f"{len(out.moved)} message(s) of this clone in {thread} moved after the "
                f"remote's (seqs {', '.join(f'{a}→{b}' for a, b in sorted(out.moved.items()))})"
            )
            self._claims_lost(thread, out)
        return out.landed > 0

    def _claims_lost(self, thread: str, out: Outcome) -> None:
        """Tell each agent of ours whose task claim moved behind another's that it lost."""
        for m in out.claims:
            new = out.moved.get(m.seq)
            try:
                board = self.box.tasks.board(thread)
                claim = self.box.get(thread, new) if new else m
            except MailslotError:
                continue
            task = board.tasks.get(claim.reply_to or 0)
            if task is None or task.holder == m.sender or task.claim == new:
                continue
            text = (f"Your claim of task {claim.reply_to} was made here while "
                    f"{task.holder or 'another agent'} claimed it on another machine, and the "
                    "remote's order gave it to them (first pushed wins). Leave this task and "
                    "pick another.")  # fmt: skip
            with contextlib.suppress(MailslotError):  # box.post takes errors to tasks only
                self.box.tasks.writer.append(thread, self.files.thread_dir(thread), sender=SYSTEM,
                    to=[m.sender], type_="error", priority="normal", reply_to=new, content=text,
                    meta={"sync": "claim lost"}, key=None)  # fmt: skip

    def _take_card(self, name: str, blob: str, data: bytes | None) -> None:
        why = "its content is missing" if data is None else layout.check_card(data, name)
        if data is None or why is not None:
            self.status.remark(f"skipped agents/{name}.json: {why}")
            return
        path = self.files.dir("agents") / f"{name}.json"
        try:
            here = path.read_bytes()
        except FileNotFoundError:
            here = None
        if here != data:  # cards change: the remote's wins, with this machine's key kept
            place(self.files, path, self._own_key_kept(name, data), replace=True)
        self.state.cards[name] = blob

    def _own_key_kept(self, name: str, data: bytes) -> bytes:
        """Return the remote's card, with the key name signs with on this machine added if it
        lacks it (two machines adding their keys at once: each keeps its own, and pushes it)."""
        try:
            line = self.box.trust.keys.public_line(name)
            doc = loads(data)
        except (MailslotError, ValueError):
            return data
        keys = with_key(doc.get("keys") if isinstance(doc.get("keys"), list) else [], line)
        if keys is None:
            return data
        doc["keys"] = keys
        return dumps(doc)

    # -- giving what this clone has ---------------------------------------------------------

    def collect(self, dirty: set[str] | None) -> Batch:
        """Return what this clone has that the remote's branch lacks (see sync/local.py)."""
        return Local(self).collect(dirty)

    def who(self) -> str:
        """Return who commits (the user's git identity, asked once)."""
        if self._who is None:
            self._who = repo.identity(self.git)
        return self._who

    def give(self, batch: Batch) -> bool:
        """Push batch as one commit over the remote's tip; False if the remote moved first."""
        text = f"{self.machine}: {batch.summary()}\n"
        sha = repo.commit(self.git, self.tip, batch.files, text, self.who())
        result = self.git.push(self.remote, [f"{sha}:{self.ref}"])
        flag, said = result.get(self.ref, ("!", "no answer about the branch"))
        if flag == "!":
            if any(w in said for w in ("fetch first", "non-fast-forward", "stale info")):
                return False
            raise Rejected(
                f"the remote refused the push to {self.config.branch}: {said}. If a rule "
                f'protects that branch, allow pushes to it, or set "sync": {{"branch": '
                "...} to another; what was not pushed waits here and goes with the next round"
            )
        self.tip = self.state.base = sha
        self.git.set_ref(self.ref, sha)
        self._keep(batch)
        self.status.set(last_push=_iso(time.time()))
        return True

    def _keep(self, batch: Batch) -> None:
        """Remember that batch is on the remote (or that there was nothing to push)."""
        if not (batch.heads or batch.records or batch.cards or batch.stamps or batch.agents_stamp):
            return  # nothing new to remember: a quiet round writes no state (O(1), not O(threads))
        st = self.state
        st.known.update(batch.heads)
        st.records = sorted(set(st.records) | set(batch.records))
        st.cards.update(batch.cards)
        for thread, stamp in batch.stamps.items():
            if thread not in batch.waiting:
                st.stamps[thread] = stamp
        if batch.agents_stamp:
            st.agents_stamp = batch.agents_stamp
        self._save()

    def _count_pending(self) -> None:
        """Count what waits to be pushed from this clone alone (the round could not)."""
        touched = self._touched
        with contextlib.suppress(MailslotError, OSError):
            self._record_pending(self.collect(None))
        self._touched = touched

    def _record_pending(self, batch: Batch) -> None:
        waiting = [p for p in batch.files if not p.endswith("thread.json")]
        oldest = min((mtime(self.root / p) for p in waiting), default=0) / 1e9
        self.status.set(pending=len(waiting), waiting=batch.waiting or None,
                        oldest_pending=_iso(oldest) if waiting and oldest else None)  # fmt: skip

    def _save(self) -> None:
        path = self.dir / "state.json"
        self.state.save(path)
        self._stamp = _identity(path)

    def _reload(self) -> None:
        """Read the state again only if another process (a `sync --once`) wrote it since."""
        path = self.dir / "state.json"
        if _identity(path) != self._stamp:
            self.state = State.load(path, self.state.remote)
            self._stamp = _identity(path)


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
