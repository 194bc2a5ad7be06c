"""Which git repository sync keeps its objects in, and how a batch becomes one commit.

A mailbox inside a git checkout uses that repository's object store (``git log mailslot --
threads/<id>`` then works there), and the remote is one of its remotes or a URL. A mailbox
outside any repository gets a private bare one under ``.state/sync/repo.git``. Either way sync
writes only objects and its own refs: ``refs/heads/<branch>`` (what this clone last agreed
with the remote on), ``refs/mailslot/*`` (what was fetched, and what is being built).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from mailslot.store.files import HOST
from mailslot.sync.git import Git, GitError

FETCHED = "refs/mailslot/fetched"
BUILD = "refs/mailslot/build"


def _plain_git(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run git in root's folder as the person would, with no GIT_ variables of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    for keep in ("GIT_CONFIG_GLOBAL", "GIT_CONFIG_NOSYSTEM"):
        if keep in os.environ:
            env[keep] = os.environ[keep]
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, env=env,  # noqa: S607
                              timeout=60)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GitError(f"cannot run git ({e}); install git to sync") from None


def open_repo(root: Path, state: Path) -> tuple[Git, Path | None]:
    """Return the git directory for root's sync, and the checkout's top (None: private)."""
    hooks = state / "no-hooks"
    hooks.mkdir(parents=True, exist_ok=True)
    out = _plain_git(root, "rev-parse", "--path-format=absolute", "--git-common-dir",
                     "--show-toplevel")  # fmt: skip
    lines = out.stdout.decode().splitlines()
    if out.returncode == 0 and len(lines) == 2:
        return Git(Path(lines[0]), hooks), Path(lines[1])
    private = state / "repo.git"
    if not (private / "HEAD").exists():
        subprocess.run(["git", "init", "--quiet", "--bare", str(private)], check=False,  # noqa: S607
                       capture_output=True)  # fmt: skip
    return Git(private, hooks), None


def check_untracked(root: Path, top: Path, git: Git, branch: str) -> None:
    """Refuse a mailbox whose messages the code branch tracks; keep new ones out of it.

    Files sync brings would be untracked copies of what a `git pull` of the code branch
    brings, and git refuses to overwrite untracked files: pulls would fail. So a mailbox that
    is committed with the code is not synced until its person chooses, and one that is not
    gets its threads/ and agents/ in the clone's .git/info/exclude, so `git add -A` does not
    sweep the messages into a code commit.
    """
    rel = os.path.relpath(root, top)
    tracked = _plain_git(root, "ls-files", "-z", "--", "threads", "agents").stdout
    if tracked:
        raise GitError(
            f"this mailbox's messages are committed on your code branch (git tracks {rel}/"
            f"threads), so they cannot also travel on the {branch} branch: a `git pull` would "
            "refuse to overwrite the files sync brings. Choose one: keep committing them with "
            f"the code and do not sync, or let them travel on {branch} only: "
            f"`git rm -r -q --cached --ignore-unmatch {rel}/threads {rel}/agents`, add "
            f"`threads/` and `agents/` to {rel}/.gitignore, commit, and sync (clones that pull "
            "that commit get the files back from their next sync)"
        )
    exclude = git.git_dir / "info" / "exclude"
    lines = [f"/{rel}/threads/", f"/{rel}/agents/"]
    try:
        have = exclude.read_text().splitlines()
    except OSError:
        have = []
    missing = [ln for ln in lines if ln not in have]
    if missing:
        exclude.parent.mkdir(parents=True, exist_ok=True)
        with exclude.open("a") as f:
            f.write(f"# mailslot sync: {rel}'s messages travel on the {branch} branch\n")
            f.write("".join(ln + "\n" for ln in missing))


def identity(git: Git) -> str:
    """Return the committer line's name and email: the user's, or mailslot at this host."""
    name = git.run("config", "user.name", ok=(0, 1)).decode().strip() or "mailslot"
    email = git.run("config", "user.email", ok=(0, 1)).decode().strip() or f"mailslot@{HOST}"
    clean = [s.replace("<", "").replace(">", "").replace("\n", " ") for s in (name, email)]
    return f"{clean[0]} <{clean[1]}>"


def commit(
    git: Git,
    parent: str | None,
    files: dict[str, bytes],
    message: str,
    who: str,
    *,
    ref: str = BUILD,
) -> str:
    """Commit files (path -> bytes) over parent's tree as one commit on ref; return its id.

    fast-import rewrites only the trees on the changed paths (a thread's folder and the
    folders above it), never the whole mailbox, and packs the new objects in one go.
    """
    text = message.encode()
    out = [f"reset {ref}\n".encode(), f"commit {ref}\n".encode(),
           f"committer {who} {int(time.time())} +0000\n".encode(),
           b"data %d\n" % len(text), text, b"\n"]  # fmt: skip
    if parent is not None:
        out.append(f"from {parent}\n".encode())
    for path in sorted(files):
        data = files[path]
        out += [f"M 100644 inline {path}\n".encode(), b"data %d\n" % len(data), data, b"\n"]
    out.append(b"done\n")
    git.fast_import(b"".join(out))
    sha = git.rev(ref)
    if sha is None:
        raise GitError("git fast-import made no commit")
    return sha
