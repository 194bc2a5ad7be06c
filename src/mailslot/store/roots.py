"""Where a mailbox lives: finding it the way git finds .git, creating one, and sharing one."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from mailslot.store import modes
from mailslot.store.errors import RootError
from mailslot.store.files import storage_error
from mailslot.store.format import FORMAT, dumps, loads
from mailslot.store.settings import SHARED, load

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


def create(
    root: Path | str, *, fsync: bool = True, lock: bool = True, shared: bool = False
) -> Path:
    """Create a mailbox root at root (or leave the one there) and return its path.

    shared: a new root is shared by its folder's group (an existing one is left as it is:
    share() converts it).
    """
    path = Path(root)
    try:
        if not path.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)  # not ours: as the umask says
            try:
                modes.mkdir(path, shared)
            except FileExistsError:
                if not path.is_dir():  # a file; a folder means another init made it meanwhile
                    raise
        config = path / "mailslot.json"
        if not config.exists():
            doc: dict[str, object] = {"format": FORMAT, "fsync": fsync, "lock": lock}
            if shared:
                doc["shared"] = SHARED
            tmp = path / f".mailslot.json.{os.getpid()}.{secrets.token_hex(4)}"
            tmp.write_bytes(dumps(doc))
            if shared:
                modes.share_path(tmp)
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
            if shared:
                modes.share_path(ignore)
        for sub in ("threads", "agents", ".state/tmp", ".state/locks"):
            modes.makedirs(path / sub, shared)
    except FileExistsError as e:
        raise RootError(
            path, f"cannot create a mailbox at {path}: {e.filename} is a file"
        ) from None
    except NotADirectoryError:
        raise RootError(path, f"cannot create a mailbox at {path}: a parent is a file") from None
    except OSError as e:
        raise storage_error(e, path, "creating the mailbox", creating=True) from None
    return path


def share(root: Path) -> list[str]:
    """Make the mailbox at root shared by its folder's group; return what was done, a line each.

    Records ``"shared": "group"`` in mailslot.json if it is not there, then gives every file
    and folder this process may change (its own; all of them when run as root) the root
    folder's group, group read and write, and for folders group search and setgid. Raise
    RootError if mailslot.json cannot be read or the root is for a newer mailslot, StorageError
    if it cannot be rewritten.
    """
    settings, read_only = load(root)
    if read_only is not None:
        raise RootError(root, read_only)
    config = root / "mailslot.json"
    done = []
    if not settings.shared:
        tmp = root / f".mailslot.json.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            doc = loads(config.read_bytes())
            doc["shared"] = SHARED
            tmp.write_bytes(dumps(doc))
            modes.share_path(tmp)
            os.replace(tmp, config)  # settings are read whole: old or new, never half
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise storage_error(e, root, "making the mailbox shared") from None
        done.append(f'recorded "shared": "{SHARED}" in {config}')
    found = modes.survey(root, shared=True, fix=True)
    group = modes.group_name(found.group)
    if found.fixed:
        done.append(
            f"gave group {group} read and write access to {modes.entries(len(found.fixed))} "
            "(folders also setgid, so what is made in them belongs to the group)"
        )
    left = found.left
    if left:
        owners = sorted({modes.user_name(os.lstat(p).st_uid) for p in left if p.exists()})
        done.append(
            f"could not change {modes.entries(len(left))} of {', '.join(owners) or 'others'} "
            f"(such as {left[0]}): each of them (or root) runs `mailslot init --shared {root}`"
        )
    if not done:
        done.append(f"shared by group {group}: what mailslot makes here is group-writable")
    me = modes.user_name(modes.euid())
    if group == me:
        done.append(
            f"its group is {group}, your own group: other users can only join in if it is their "
            f"group too; give it your team's group with `chgrp -R TEAM {root}` and run "
            "`mailslot init --shared` again"
        )
    return done
