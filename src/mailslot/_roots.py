"""Where a mailbox lives: finding it the way git finds .git, and creating one."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from mailslot._errors import RootError
from mailslot._files import storage_error
from mailslot._format import FORMAT, dumps

ROOT_DIRNAME = ".mailslot"


def _main_worktree(dotgit: Path) -> Path | None:
    """Return the main worktree of the linked worktree whose .git file is dotgit, if any."""
    try:
        text = dotgit.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not text.startswith("gitdir:"):
        return None
    gitdir = (dotgit.parent / text[len("gitdir:") :].strip()).resolve()
    try:
        common = (gitdir / (gitdir / "commondir").read_text(encoding="utf-8").strip()).resolve()
    except OSError:
        return None  # a submodule's .git file: it has no main worktree of its own
    if common.name != ".git":
        return None  # bare repository: no main worktree
    return common.parent


def _git_top(start: Path) -> tuple[Path, Path] | None:
    """Return (worktree top, main worktree top) of the git checkout holding start, if any."""
    for p in (start, *start.parents):
        dotgit = p / ".git"
        if dotgit.is_dir():
            return p, p
        if dotgit.is_file():
            main = _main_worktree(dotgit)
            return p, (main if main is not None else p)
    return None


def find_root(start: Path | str | None = None) -> Path:
    """Return the nearest mailbox root above start (default: the working directory).

    Walks up to the nearest ``.mailslot/`` folder the way git finds ``.git``. Inside a linked
    git worktree the walk starts from the same place in the main worktree, so agents in several
    worktrees of one repository share one mailbox. Raise RootError if there is none.
    """
    here = Path.cwd() if start is None else Path(start)
    here = here.resolve()
    git = _git_top(here)
    if git is not None and git[0] != git[1]:
        try:
            here = git[1] / here.relative_to(git[0])
        except ValueError:
            here = git[1]
    for p in (here, *here.parents):
        if (p / ROOT_DIRNAME).is_dir():
            return p / ROOT_DIRNAME
    raise RootError(
        here,
        f"no {ROOT_DIRNAME}/ folder in {here} or above: run `mailslot init` to create one, "
        "or pass --root / set MAILSLOT_ROOT",
    )


def default_root(start: Path | str | None = None) -> Path:
    """Return where `mailslot init` puts a new root: the main git worktree's top, else start."""
    here = (Path.cwd() if start is None else Path(start)).resolve()
    git = _git_top(here)
    return (git[1] if git is not None else here) / ROOT_DIRNAME


def create(root: Path | str, *, fsync: bool = True, lock: bool = True) -> Path:
    """Create a mailbox root at root (or leave the one there) and return its path."""
    path = Path(root)
    try:
        path.mkdir(parents=True, exist_ok=True)
        config = path / "mailslot.json"
        if not config.exists():
            doc = {"format": FORMAT, "fsync": fsync, "lock": lock}
            tmp = path / f".mailslot.json.{os.getpid()}.{secrets.token_hex(4)}"
            tmp.write_bytes(dumps(doc))
            try:
                os.link(tmp, config)  # two inits racing: the first config wins
            except FileExistsError:
                pass
            except OSError:
                # No hard links here (an SMB share): create it exclusively instead. Posts
                # will explain what that means for messages before any is stored.
                with contextlib.suppress(FileExistsError), config.open("xb") as f:
                    f.write(dumps(doc))
            finally:
                tmp.unlink()
        ignore = path / ".gitignore"
        if not ignore.exists():
            ignore.write_text(
                "# mailslot: presence, cursors, locks and caches are per machine\n.state/\n",
                encoding="utf-8",
            )
        for sub in ("threads", "agents", ".state/tmp", ".state/locks"):
            (path / sub).mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:
        raise RootError(
            path, f"cannot create a mailbox at {path}: {e.filename} is a file"
        ) from None
    except NotADirectoryError:
        raise RootError(path, f"cannot create a mailbox at {path}: a parent is a file") from None
    except OSError as e:
        raise storage_error(e, path, "creating the mailbox", creating=True) from None
    return path
