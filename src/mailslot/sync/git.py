"""The user's own ``git``, run for sync: plumbing only, never the person's work.

Every call runs with ``--git-dir`` and no work tree, so HEAD, the index, the working branch,
the stash and a rebase in progress are never touched; ``core.hooksPath`` points at an empty
folder so no hook of the person's runs (``pre-push``, ``reference-transaction``), and no
content is ever checked out, so no filter or attribute runs on what a remote holds. Prompts are
off (``GIT_TERMINAL_PROMPT=0``): a background process that needs a password fails with git's
own words instead of hanging. Credentials, ssh config and helpers are the user's.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mailslot.store.errors import MailslotError

#: Seconds a network step (ls-remote, fetch, push) may take before it is given up for the round.
NETWORK_TIMEOUT_S = 120.0
ZERO = "0" * 40


class GitError(MailslotError):
    """A git command failed; the message is git's own last words, with what was being done."""


@dataclass(frozen=True, slots=True)
class Change:
    """One path a commit added or changed against another (``git diff-tree -r``)."""

    status: str  # A (added), M (modified), D (deleted), T (type changed)
    mode: str  # the new mode ("000000" when deleted)
    blob: str  # the new object (the zero id when deleted)
    path: str


class Git:
    """One git directory (the person's repository, or a private one under .state/sync/)."""

    def __init__(self, git_dir: Path, hooks: Path) -> None:
        self.git_dir = git_dir
        self._hooks = hooks  # an empty folder: no hook runs
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        # The user's ssh command and config stay (GIT_SSH_COMMAND is theirs to set).
        for keep in (
            "GIT_SSH",
            "GIT_SSH_COMMAND",
            "GIT_ASKPASS",
            "GIT_CONFIG_GLOBAL",
            "GIT_CONFIG_NOSYSTEM",
        ):
            if keep in os.environ:
                env[keep] = os.environ[keep]
        env.update(GIT_TERMINAL_PROMPT="0", LC_ALL="C", GIT_DIR=str(git_dir))
        self._env = env

    def run(
        self, *args: str, data: bytes | None = None, timeout: float = 60.0, ok: Iterable[int] = (0,)
    ) -> bytes:
        """Run git with args; return its stdout; raise GitError with its stderr otherwise."""
        return self._run(args, data, timeout, ok).stdout

    def _run(
        self, args: tuple[str, ...], data: bytes | None, timeout: float, ok: Iterable[int]
    ) -> subprocess.CompletedProcess[bytes]:
        cmd = ["git", "-c", f"core.hooksPath={self._hooks}", "-c", "gc.auto=0",
               "-c", "maintenance.auto=false", "-c", "core.fsync=objects,reference",
               *args]  # fmt: skip
        try:
            done = subprocess.run(
                cmd, input=data, capture_output=True, env=self._env, timeout=timeout,
                stdin=None if data is not None else subprocess.DEVNULL,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise GitError(f"git {args[0]} gave no answer within {timeout:.0f} s") from None
        except OSError as e:
            raise GitError(f"cannot run git: {e.strerror}; install git") from None
        if done.returncode not in tuple(ok):
            raise GitError(words(args[0], done.stderr))
        return done

    def rev(self, ref: str) -> str | None:
        """Return the commit ref names here, or None."""
        out = self.run("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", ok=(0, 1))
        return out.decode().strip() or None

    def set_ref(self, ref: str, sha: str | None) -> None:
        """Point ref at sha (delete it for None)."""
        if sha is None:
            self.run("update-ref", "-d", ref)
        else:
            self.run("update-ref", ref, sha)

    def ls_remote(self, remote: str, patterns: list[str]) -> dict[str, str]:
        """Return {ref: sha} of the remote's refs matching patterns (one round trip)."""
        out = self.run("ls-remote", remote, *patterns, timeout=NETWORK_TIMEOUT_S)
        refs: dict[str, str] = {}
        for line in out.decode(errors="replace").splitlines():
            sha, _, ref = line.partition("\t")
            if len(sha) == 40 and ref:
                refs[ref] = sha
        return refs

    def fetch(self, remote: str, refspecs: list[str]) -> None:
        """Fetch refspecs from remote, with no tags, no submodules and no auto gc."""
        self.run("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-auto-gc",
                 "--no-recurse-submodules", remote, *refspecs,
                 timeout=NETWORK_TIMEOUT_S)  # fmt: skip

    def push(self, remote: str, refspecs: list[str]) -> dict[str, tuple[str, str]]:
        """Push refspecs without the person's pre-push hook; return {ref: (flag, summary)}.

        flag is git's porcelain one: " " or "+" or "*" done, "=" up to date, "!" rejected.
        """
        done = self._run(("push", "--porcelain", "--no-verify", remote, *refspecs),
                         None, NETWORK_TIMEOUT_S, (0, 1))  # fmt: skip
        out = done.stdout
        # What the remote's hooks said (a protection rule's reason), as plain printable text.
        lines = done.stderr.decode(errors="replace").splitlines()
        told = [printable(ln[len("remote:") :]) for ln in lines if ln.startswith("remote:")]
        told = [t for t in told if t][-5:]
        result: dict[str, tuple[str, str]] = {}
        for line in out.decode(errors="replace").splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and ":" in parts[1]:
                flag, summary = parts[0][:1], parts[2]
                if flag == "!" and told:
                    summary += f"; the remote said: {' / '.join(told)}"
                result[parts[1].split(":", 1)[1]] = (flag, summary)
        if not result:
            raise GitError(words("push", out))
        return result

    def is_ancestor(self, old: str, new: str) -> bool:
        """Return True if old is new or one of its ancestors (False if old is not here)."""
        cmd = ["git", "merge-base", "--is-ancestor", old, new]
        return subprocess.run(cmd, env=self._env, capture_output=True).returncode == 0

    def diff(self, old: str | None, new: str, under: str = "") -> list[Change]:
        """Return the paths new adds or changes against old (None: against nothing, the paths
        below under only if given)."""
        if old is None:
            out = self.run("ls-tree", "-r", "-z", "--full-tree", new, "--", *[under][: bool(under)])
            changes = []
            for entry in out.split(b"\0"):
                if entry:
                    info, _, path = entry.partition(b"\t")
                    mode, _kind, blob = info.decode().split()
                    changes.append(Change("A", mode, blob, path.decode(errors="replace")))
            return changes
        out = self.run("diff-tree", "-r", "-z", "--no-renames", "--no-commit-id", old, new)
        fields = out.split(b"\0")
        changes = []
        for info, path in zip(fields[0::2], fields[1::2], strict=False):
            if not info.startswith(b":"):
                continue
            _old_mode, mode, _old_blob, blob, status = info[1:].decode().split()
            changes.append(Change(status[:1], mode, blob, path.decode(errors="replace")))
        return changes

    def sizes(self, blobs: list[str]) -> dict[str, tuple[str, int]]:
        """Return {name: (type, size)} of objects named by id or rev:path (missing: left out)."""
        if not blobs:
            return {}
        out = self.run("cat-file", "--batch-check", data="\n".join(blobs).encode() + b"\n")
        found: dict[str, tuple[str, int]] = {}
        for name, line in zip(blobs, out.decode().splitlines(), strict=False):
            parts = line.split()
            if len(parts) == 3 and parts[2].isdigit():
                found[name] = (parts[1], int(parts[2]))
        return found

    def blobs(self, shas: list[str]) -> dict[str, bytes]:
        """Return the contents of blobs (all in one ``cat-file --batch``)."""
        if not shas:
            return {}
        out = self.run("cat-file", "--batch", data="\n".join(shas).encode() + b"\n")
        found: dict[str, bytes] = {}
        at = 0
        for sha in shas:
            end = out.index(b"\n", at)
            header = out[at:end].split()
            at = end + 1
            if len(header) != 3:
                continue  # "<sha> missing"
            size = int(header[2])
            found[sha] = out[at : at + size]
            at += size + 1
        return found

    def fast_import(self, stream: bytes) -> None:
        """Feed a fast-import stream (objects packed in one go, refs updated at the end)."""
        self.run("fast-import", "--quiet", "--force", "--done", data=stream, timeout=600.0)


def words(what: str, stderr: bytes) -> str:
    """Return git's last meaningful lines, as one sentence about what was being done."""
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    said = "; ".join(lines[-3:]) if lines else "no message"
    return f"git {what} failed: {said}"


def printable(text: str, most: int = 300) -> str:
    """Return text a remote sent without control characters (no terminal escapes), cut short."""
    return "".join(ch for ch in text if ch.isprintable()).strip()[:most]


def blob_id(data: bytes) -> str:
    """Return the git object id a file's bytes have as a blob (sha1, as git computes it)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()
