"""Commands on who wrote what: a person's key and the keys trusted here (key), and a
transcript's signatures checked (verify). The rules are in coordination/trust.py."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailslot.commands.declare import (
    EXIT_ERROR,
    EXIT_OK,
    Here,
    UsageError,
    arg,
    command,
    print_json,
)
from mailslot.coordination.trust import Trust, Verdict
from mailslot.store.errors import MailslotError
from mailslot.store.format import MESSAGE_NAME_RE, Damage, loads
from mailslot.store.roots import _git_top
from mailslot.store.signing import INVALID, UNKNOWN_KEY, UNSIGNED, VALID, fingerprint, from_ssh_line
from mailslot.views.terminal import plural

if TYPE_CHECKING:
    from mailslot.mailbox import Mailbox


@command(
    "key",
    help="make your key (people sign their posts with it), list the keys, or trust a new one",
    args=[
        arg("name", nargs="?", help="whose key to make or show (default: who you post as)"),
        arg("--trust", metavar="FINGERPRINT", help="trust this key on NAME's card from now on"),
        arg(
            "--list",
            action="store_true",
            help="every card's keys and whether this machine trusts them",
        ),
    ],
    who=True,
)
def cmd_key(args: argparse.Namespace, here: Here) -> int:
    box = here.open(args)
    trust = box.trust
    if args.list:
        return _list(trust, args.json)
    name = args.name or here.sender(args)
    if args.trust:
        key = trust.accept(name, args.trust)
        if args.json:
            print_json({"name": name, "trusted": fingerprint(key)})
        else:
            print(f"trusted {fingerprint(key)} for {name} on this machine")
        return EXIT_OK
    had = trust.keys.private(name) is not None
    person = None if name in box.agents.names() else True
    line = trust.own(name, person=person)
    fp = fingerprint(from_ssh_line(line) or b"")
    path = trust.keys.path(name)
    if args.json:
        print_json(
            {"name": name, "key": line, "fingerprint": fp, "path": str(path), "new": not had}
        )
        return EXIT_OK
    print(f"{'made' if not had else 'found'} {name}'s key: {fp}")
    print(f"  private: {path} (stays on this machine; never put it in the mailbox)")
    print(f"  public:  on agents/{name}.json, which is committed and synced")
    print(f"posts as {name} from this machine are signed from now on")
    return EXIT_OK


def _list(trust: Trust, as_json: bool) -> int:
    rows: list[dict[str, Any]] = []
    for card in trust.agents.cards():
        trusted = trust.trusted(card.name).keys
        for entry in card.keys:
            raw = from_ssh_line(entry.get("key"))
            if raw is None:
                continue
            rows.append({"name": card.name, "fingerprint": fingerprint(raw),
                         "host": entry.get("host"), "added_at": entry.get("added_at"),
                         "trusted": raw in trusted, "person": card.person})  # fmt: skip
    if as_json:
        print_json({"keys": rows})
        return EXIT_OK
    if not rows:
        print("no card holds a key yet")
    for r in rows:
        mark = "trusted" if r["trusted"] else "NOT TRUSTED HERE"
        added = r["added_at"] or "?"
        print(f"{r['name']:<20} {r['fingerprint']}  {r['host'] or '?':<12} {added:<24}  {mark}")
    for change in trust.changes():
        print(change)
    return EXIT_OK


@command(
    "verify",
    help="check every message's signature (after a pull, or in CI); exit 1 on an invalid one",
    args=[
        arg("threads", nargs="*", metavar="THREAD", help="default: every thread"),
        arg(
            "--since",
            metavar="REV",
            help="only what changed since git revision REV, trusting the keys cards had then",
        ),
        arg(
            "--strict", action="store_true", help="exit 1 on unknown keys and unsigned messages too"
        ),
    ],
)
def cmd_verify(args: argparse.Namespace, here: Here) -> int:
    box = here.open(args)
    trust = box.trust
    only: dict[str, set[int]] | None = None
    if args.since:
        top, rel = _repo(box.root)
        only = _changed(top, rel, args.since)
        trust.fixed = _cards_at(top, rel, args.since)
    threads = args.threads or sorted(box)
    counts = {VALID: 0, INVALID: 0, UNKNOWN_KEY: 0, UNSIGNED: 0}
    bad: list[dict[str, Any]] = []
    unreadable: list[Damage] = []
    for thread in threads:
        if only is None or thread in only:
            seqs = None if only is None else only[thread]
            unreadable += _check(box, thread, seqs, counts, bad)
    failing = {INVALID} | ({UNKNOWN_KEY, UNSIGNED} if args.strict else set())
    if box.settings.require_signed:
        failing.add(UNSIGNED)
    failed = sum(counts[s] for s in failing) + len(unreadable)
    changes = [str(c) for c in trust.changes()]
    if args.json:
        print_json({"counts": counts, "messages": bad, "unreadable": [str(d) for d in unreadable],
                    "key_changes": changes, "ok": not failed})  # fmt: skip
        return EXIT_ERROR if failed else EXIT_OK
    for b in bad:
        if b["signed"] != UNSIGNED or UNSIGNED in failing:
            why = b["why"] or "no signature"
            print(f"{b['file']} (#{b['seq']} from {b['from']}): {b['signed']}: {why}")
    for d in unreadable:
        print(f"{d}: could not be read, so it was not checked")
    for c in changes:
        print(c)
    print(_summary(counts, len(unreadable)))
    return EXIT_ERROR if failed else EXIT_OK


def _check(
    box: Mailbox,
    thread: str,
    seqs: set[int] | None,
    counts: dict[str, int],
    bad: list[dict[str, Any]],
) -> list[Damage]:
    """Check thread's messages (those of seqs, if given): count each by what its signature
    says, add those not valid to bad; return the files that could not be read."""
    unreadable: list[Damage] = []
    after = 0
    while True:
        page = box.read(thread, after, 200)
        unreadable += page.skipped
        for m in page.messages:
            if seqs is not None and m.seq not in seqs:
                continue
            # The read checked it; a message not valid is asked again (remembered) for why.
            verdict = Verdict(VALID) if m.signed == VALID else box.trust.check(m)
            counts[verdict.state] += 1
            if verdict.state != VALID:
                bad.append({"file": f"threads/{m.thread}/{m.seq:06d}.json", "thread": m.thread,
                            "seq": m.seq, "from": m.sender, "signed": verdict.state,
                            "why": verdict.why})  # fmt: skip
        if page.pending is not None and not page.messages:
            # A reader waits for a file still arriving; a check steps past it, says so, and
            # goes on to what follows it.
            unreadable.append(Damage(page.pending.path, page.pending.reason))
            after = _past(Path(page.pending.path), page.pending.seq)
            continue
        if not page.messages:
            return unreadable
        after = page.cursor


def _summary(counts: dict[str, int], unreadable: int) -> str:
    """Return verify's last line: how many messages were checked, by what they say."""
    total = sum(counts.values())
    text = (f"checked {plural(total, 'message')}: {counts[VALID]} valid, "
            f"{counts[INVALID]} invalid, {counts[UNKNOWN_KEY]} with an unknown key, "
            f"{counts[UNSIGNED]} unsigned")  # fmt: skip
    return text + (f", {unreadable} unreadable" if unreadable else "")


def _past(path: Path, seq: int) -> int:
    """Return the seq to read after to step past the pending file path of seq: past all of a
    gap (path missing, a later seq there) at once, so the gap is reported once."""
    if path.exists():
        return seq
    later = []
    with contextlib.suppress(OSError):
        for name in os.listdir(path.parent):
            match = MESSAGE_NAME_RE.fullmatch(name)
            if match and int(match.group(1)) > seq:
                later.append(int(match.group(1)))
    return min(later, default=seq + 1) - 1


def _git(top: Path, *argv: str) -> str:
    git = shutil.which("git")
    if git is None:
        raise MailslotError("--since needs git, which is not installed here")
    done = subprocess.run([git, "-C", str(top), *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise MailslotError(
            f"git {' '.join(argv)} failed: {done.stderr.strip() or 'no such revision'}"
        )
    return done.stdout


def _git_ok(top: Path, *argv: str) -> bool:
    """Return True if git argv succeeds in top."""
    try:
        _git(top, *argv)
    except MailslotError:
        return False
    return True


def _repo(root: Path) -> tuple[Path, str]:
    found = _git_top(root)
    if found is None:
        raise UsageError(f"--since needs the mailbox in a git repository; {root} is in none")
    top = found[0]
    return top, os.path.relpath(root, top).replace(os.sep, "/")


def _changed(top: Path, rel: str, rev: str) -> dict[str, set[int]]:
    """Return the messages, by thread and seq, whose files differ from rev or are new since."""
    base = f"{rel}/threads/" if rel != "." else "threads/"
    if rev.startswith("-") or not _git_ok(top, "rev-parse", "--verify", "--quiet",
                                          f"{rev}^{{commit}}"):  # fmt: skip
        raise UsageError(
            f"--since {rev}: no such commit in {top} (give a commit, a branch, a tag or e.g. "
            "HEAD~3; after a pull, ORIG_HEAD is where you were)"
        )
    names = _git(top, "diff", "--name-only", "--no-renames", rev, "--", base).splitlines()
    names += _git(top, "ls-files", "--others", "--exclude-standard", "--", base).splitlines()
    out: dict[str, set[int]] = {}
    for name in names:
        parts = name[len(base) :].split("/")
        match = MESSAGE_NAME_RE.fullmatch(parts[-1]) if len(parts) == 2 else None
        if match:
            out.setdefault(parts[0], set()).add(int(match.group(1)))
    return out


def _cards_at(top: Path, rel: str, rev: str) -> dict[str, frozenset[bytes]]:
    """Return the keys each card held at rev (what --since trusts)."""
    base = f"{rel}/agents/" if rel != "." else "agents/"
    out: dict[str, frozenset[bytes]] = {}
    for name in _git(top, "ls-tree", "--name-only", rev, "--", base).splitlines():
        if not name.endswith(".json"):
            continue
        try:
            doc = loads(_git(top, "show", f"{rev}:{name}"))
            keys = [from_ssh_line(e.get("key")) for e in doc.get("keys", []) if isinstance(e, dict)]
        except (MailslotError, ValueError, AttributeError):
            continue
        out[name.rsplit("/", 1)[-1][: -len(".json")]] = frozenset(k for k in keys if k is not None)
    return out
