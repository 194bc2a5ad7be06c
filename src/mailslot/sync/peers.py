"""Who is alive on the other machines: a heartbeat that travels with sync, not in history.

Each machine pushes its live agents' presence as one small file on a ref of its own,
``refs/mailslot/presence/<machine>``, force-pushed as a commit without parents: the remote
keeps one tiny commit per machine, never a file per heartbeat in the mailbox's history (the
old ones are unreachable and go with the host's garbage collection). It is pushed every
``heartbeat_s`` and when an agent comes or goes.

What other machines announced lands in this machine's ``.state/presence/<agent>.json``, the
same file a local agent's heartbeat writes (with ``"via": "sync"``), so everything that asks
whether an agent lives (names, task leases, reservations, the console) asks the same way. Their
clock is not trusted: times are carried over as ages. Sync refreshes those files while the
machine's heartbeat keeps coming; once it has been silent for ``silent_after_s`` they are left
to go stale, and its agents read offline ~30 s later, and their tasks move on.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from typing import TYPE_CHECKING, Any

from mailslot.agent.receipts import Stamps, incoming, outgoing
from mailslot.store.files import HOST
from mailslot.store.format import loads
from mailslot.store.names import check_name
from mailslot.store.presence import DEFAULT_STALE_AFTER, effective
from mailslot.sync import repo
from mailslot.sync.config import SyncConfig

if TYPE_CHECKING:
    from mailslot.sync.engine import Sync

OUT = "refs/mailslot/presence-out"
PEERS = "refs/mailslot/peers/"
MAX_PRESENCE_BYTES = 256 * 1024
#: A heartbeat this old (by its machine's clock) is a machine that died without a word: any
#: sync deletes its ref, and it makes a new one when it comes back.
FORGET_AFTER_S = 7 * 86400.0
_MACHINE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
#: How often a landed presence file is refreshed while its machine's heartbeat holds.
REFRESH_S = DEFAULT_STALE_AFTER / 3


#: Receipts that moved are pushed with a heartbeat at most this often (else every heartbeat_s).
RECEIPTS_EVERY_S = 10.0


def _states(receipts: dict[str, Any]) -> object:
    """Return what of receipts decides a push: who was shown or told what (not the ages)."""
    return {(a, t, tuple(sorted(its.get("shown", ()))), tuple(its.get("reported", ())[:1]))
            for a, threads in receipts.items() for t, its in threads.items()}  # fmt: skip


def _halved(receipts: dict[str, Any]) -> dict[str, Any]:
    """Return receipts with each agent's older half of threads left out (a heartbeat's size)."""
    return {a: dict(list(threads.items())[: len(threads) // 2]) for a, threads in receipts.items()
            if len(threads) > 1}  # fmt: skip


class Peers:
    """The heartbeat out and the other machines' presence in, for one Sync."""

    PREFIX = "refs/mailslot/presence/"

    def __init__(self, sync: Sync, config: SyncConfig) -> None:
        self.sync = sync
        self.config = config
        # Kept in .state/sync/peers.json, so that a `sync --once` knows what the last one saw.
        self._path = os.path.join(sync.dir, "peers.json")
        self.seen: dict[str, str] = {}  # peer ref -> sha last taken
        self.peers: dict[str, dict[str, Any]] = {}  # machine -> {received, at, agents}
        with (
            contextlib.suppress(OSError, ValueError, TypeError, AttributeError),
            open(self._path, "rb") as f,
        ):
            kept = loads(f.read())
            self.seen, self.peers = dict(kept["seen"]), dict(kept["peers"])
        self._sent: tuple[float, frozenset[str]] = (0.0, frozenset())
        self._refreshed = 0.0
        self._on_remote = False  # this machine's heartbeat ref is on the remote
        self._receipts: object = None  # what the last heartbeat carried of receipts
        # When the files this machine's receipts come from last changed (other machines'
        # landed receipts are not carried on).
        self._stamps = Stamps(sync.root, landed=False)

    @property
    def presence(self) -> str:
        return os.path.join(self.sync.root, ".state", "presence")

    # -- out --------------------------------------------------------------------------------

    def ours(self) -> dict[str, dict[str, Any]]:
        """Return the presence files of this machine's live agents."""
        out: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.presence):
                if not entry.name.endswith(".json"):
                    continue
                try:
                    with open(entry.path, "rb") as f:
                        doc = loads(f.read(64 * 1024))
                except (OSError, ValueError):
                    continue
                if not isinstance(doc, dict) or doc.get("via") == "sync":
                    continue
                name = entry.name[: -len(".json")]
                if (
                    doc.get("host") == HOST
                    and effective(doc, name, HOST, DEFAULT_STALE_AFTER).status != "offline"
                ):
                    out[name] = doc
        return out

    def heartbeat(self, *, force: bool = False) -> None:
        """Push this machine's presence if due (every heartbeat_s, or when agents came or went).

        A machine with no live agent has no ref at all: the last one to go deletes it, so a CI
        job's `sync --once` leaves nothing behind, and the refs on the remote are the machines
        at work.
        """
        agents = self.ours()
        names = frozenset(agents)
        last, sent = self._sent
        now = time.time()
        due = force or names != sent or now - last >= self.config.heartbeat_s
        # Receipts are read only when a file they come from changed (a few stats per agent),
        # so a quiet round stays cheap; moved ones go out at most every RECEIPTS_EVERY_S.
        receipts: dict[str, Any] = {}
        if (due or now - last >= RECEIPTS_EVERY_S) and (self._stamps.changed(names) or due):
            receipts = outgoing(self.sync.root, names, now)  # carried as ages
        moved = bool(receipts) and _states(receipts) != self._receipts
        if not names:
            if self._on_remote:
                self.sync.git.push(self.sync.remote, [f":{self.PREFIX}{self.sync.machine}"])
                self._on_remote = False
            self._sent = (time.time(), names)
            return
        if not due and not moved:
            return
        doc: dict[str, Any] = {"machine": self.sync.machine, "host": HOST, "at": now,
                               "agents": agents, "receipts": receipts}  # fmt: skip
        data = json.dumps(doc, sort_keys=True).encode()
        while len(data) > MAX_PRESENCE_BYTES and doc["receipts"]:  # receipts give way first
            doc["receipts"] = _halved(doc["receipts"])
            data = json.dumps(doc, sort_keys=True).encode()
        git = self.sync.git
        sha = repo.commit(git, None, {"presence.json": data}, f"{self.sync.machine} is here\n",
                          self.sync.who(), ref=OUT)  # fmt: skip
        git.push(self.sync.remote, [f"+{sha}:{self.PREFIX}{self.sync.machine}"])
        self._sent = (time.time(), names)
        self._receipts = _states(receipts)
        self._on_remote = True

    # -- in ---------------------------------------------------------------------------------

    def take(self, refs: dict[str, str]) -> None:
        """Take the heartbeats ls-remote shows changed; refresh what other machines announced."""
        mine = self.PREFIX + self.sync.machine
        self._on_remote = mine in refs
        gone = [r for r in self.seen if r not in refs]
        for ref in gone:  # its last agent left: offline now
            self._gone(ref[len(self.PREFIX) :], {})
            del self.seen[ref]
        new = {r: s for r, s in refs.items()
               if r.startswith(self.PREFIX) and r != mine and self.seen.get(r) != s
               and _MACHINE.fullmatch(r[len(self.PREFIX) :])}  # fmt: skip
        if new:
            git = self.sync.git
            specs = [f"+{r}:{PEERS}{r[len(self.PREFIX) :]}" for r in sorted(new)]
            git.fetch(self.sync.remote, specs)
            paths = [f"{s}:presence.json" for s in new.values()]
            sizes = git.sizes(paths)
            small = [p for p in paths if sizes.get(p, ("", MAX_PRESENCE_BYTES + 1))[1]
                     <= MAX_PRESENCE_BYTES]  # fmt: skip
            blobs = git.blobs(small)
            for ref, sha in new.items():
                self.seen[ref] = sha
                self._take_one(ref[len(self.PREFIX) :], blobs.get(f"{sha}:presence.json"))
        if new or gone:
            self._keep()
        self.refresh()

    def _keep(self) -> None:
        tmp = f"{self._path}.{os.getpid()}.tmp"
        with contextlib.suppress(OSError):
            with open(tmp, "w") as f:
                json.dump({"seen": self.seen, "peers": self.peers}, f)
            os.replace(tmp, self._path)

    def _take_one(self, machine: str, data: bytes | None) -> None:
        if data is None or len(data) > MAX_PRESENCE_BYTES:
            self.sync.status.remark(f"machine {machine}'s heartbeat is missing or over "
                                    f"{MAX_PRESENCE_BYTES} bytes; ignored")  # fmt: skip
            return
        try:
            doc = loads(data)
            agents = {check_name(n, "agent name"): d for n, d in doc["agents"].items()
                      if isinstance(d, dict)}  # fmt: skip
            at = float(doc["at"])
        except (ValueError, KeyError, TypeError, AttributeError):
            self.sync.status.remark(f"machine {machine}'s heartbeat is unreadable; ignored")
            return
        if time.time() - at > FORGET_AFTER_S:  # a machine long gone (it never said so)
            self.sync.git.push(self.sync.remote, [f":{self.PREFIX}{machine}"])
            agents = {}
        self._gone(machine, agents)
        self.peers[machine] = {"received": time.time(), "at": at, "agents": agents}
        self._refreshed = 0.0
        self._land_receipts(machine, doc.get("receipts"))

    def _land_receipts(self, machine: str, doc: Any) -> None:
        """Keep what machine's heartbeat said of its agents' receipts in
        .state/receipts/<machine>.json, its ages turned into times on this machine's clock
        from when it was taken (agent/receipts reads it)."""
        landed = {"machine": machine, "agents": incoming(doc, time.time())}
        with contextlib.suppress(Exception):
            self.sync.files.write_state_file(self.sync.files.dir(".state/receipts") /
                                             f"{machine}.json", landed)  # fmt: skip

    def _gone(self, machine: str, agents: dict[str, Any]) -> None:
        """Mark offline at once the agents machine announced before and no longer does."""
        peer = self.peers.get(machine)
        if peer is None:
            return
        for name in set(peer["agents"]) - set(agents):
            self._land(name, {"status": "offline"}, machine, peer, time.time())
        if not agents:
            del self.peers[machine]

    def refresh(self) -> None:
        """Write the presence of other machines' agents while their heartbeats hold."""
        now = time.time()
        if now - self._refreshed < REFRESH_S:
            return
        self._refreshed = now
        for machine, peer in self.peers.items():
            if now - peer["received"] > self.config.silent_after_s:
                continue  # silent: its agents' files go stale and read offline
            for name, doc in peer["agents"].items():
                self._land(name, doc, machine, peer, now)

    def _land(
        self, name: str, doc: dict[str, Any], machine: str, peer: dict[str, Any], now: float
    ) -> None:
        path = os.path.join(self.presence, f"{name}.json")
        with contextlib.suppress(OSError, ValueError), open(path, "rb") as f:
            here = loads(f.read(64 * 1024))
            if (
                isinstance(here, dict)
                and here.get("via") != "sync"
                and effective(here, name, HOST, DEFAULT_STALE_AFTER).status != "offline"
            ):
                return  # a process of this machine holds the name
        landed = dict(doc)
        for key in ("last_seen_epoch", "last_active_epoch", "waiting_since_epoch"):
            value = doc.get(key)
            if isinstance(value, int | float):  # their clock's age, on our clock
                landed[key] = now - max(0.0, peer["at"] - float(value))
        landed["last_seen_epoch"] = now
        landed.update(via="sync", machine=machine)
        with contextlib.suppress(Exception):
            self.sync.files.write_state_file(self.sync.files.dir(".state/presence") /
                                             f"{name}.json", landed)  # fmt: skip
