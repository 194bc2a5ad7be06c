"""The pre-commit guard: git refuses a commit of files another agent has reserved.

`install` puts a delimited block (``# >>> mailslot guard >>>`` ... ``# <<< mailslot guard
<<<``) into the repository's pre-commit hook, in the hooks folder git itself names (so
``core.hooksPath`` and linked worktrees are honoured). The block runs ``mailslot guard
check`` with the Python that installed it, unless ``MAILSLOT_GUARD`` is ``0``/``off`` for
that one command; ``git commit --no-verify`` skips it like any hook.

A hook already there keeps working. In a shell script the block goes right after the
shebang line, ahead of the script's own lines: a hook that ends in ``exec`` or ``exit``
(pre-commit's, husky's) would never reach a block appended after it. Any other hook (another
language, a binary, a symlink, one that is not executable) moves aside to
``pre-commit.mailslot-chained`` and a shell hook runs it first, then the check. `uninstall`
takes the block out, or puts the chained hook back, leaving a foreign hook byte for byte as
it was.

`check` reads the staged paths (both sides of a rename, deletions too) and returns those
covered by a live exclusive reservation of another agent. The guard reads the mailbox and
writes nothing to it; a repository without a mailbox passes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import stat
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mailslot.coordination.board import iso
from mailslot.coordination.globs import matches, overlaps
from mailslot.coordination.reservations import THREAD, Held
from mailslot.mailbox import Mailbox
from mailslot.store.errors import InvalidName, MailslotError, RootError
from mailslot.store.roots import find_root
from mailslot.views.terminal import when

HOOK = "pre-commit"
CHAINED = "pre-commit.mailslot-chained"
BEGIN = "# >>> mailslot guard >>>"
END = "# <<< mailslot guard <<<"
SWITCH = "MAILSLOT_GUARD"
OFF = ("0", "off", "false", "no")
SHELLS = frozenset({"sh", "bash", "dash", "ash", "ksh", "mksh", "zsh", "busybox"})
SHEBANG = "#!/bin/sh\n"


class GuardError(MailslotError):
    """The hook cannot be installed or removed, or git cannot say what is staged."""


@dataclass(frozen=True, slots=True)
class Conflict:
    """A staged path covered by another agent's exclusive reservation."""

    path: str
    held: Held
    until: float  # when the reservation runs out without a sign of work (epoch seconds)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What `check` found: the staged paths, and the conflicts among them."""

    agent: str | None  # who commits; None: every exclusive reservation counts
    root: Path | None  # the mailbox read, or None
    paths: list[str] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    skipped: str | None = None  # why nothing was checked (no mailbox, the guard is off)

    @property
    def refused(self) -> bool:
        """Return whether the commit must be refused."""
        return bool(self.conflicts)


# ---------------------------------------------------------------------------- git


def _git(repo: Path, env: Mapping[str, str] | None, *args: str) -> str:
    """Run git in repo and return its stdout; raise GuardError if it fails."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=repo, env=None if env is None else dict(env),  # noqa: S607
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip
    except FileNotFoundError:
        raise GuardError(
            f"cannot run git in {repo}: git is not installed, or {repo} does not exist"
        ) from None
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GuardError(f"cannot run git in {repo}: {e}") from None
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", "replace").strip()
        raise GuardError(
            f"`git {' '.join(args)}` failed in {repo}: {said or f'exit {done.returncode}'} "
            "(run it in a git repository's working tree)"
        )
    return done.stdout.decode("utf-8", "surrogateescape")


def hooks_dir(repo: Path, *, env: Mapping[str, str] | None = None) -> Path:
    """Return the folder git runs repo's hooks from (``core.hooksPath``, worktrees honoured)."""
    out = _git(repo, env, "rev-parse", "--git-path", "hooks").rstrip("\n")
    return Path(os.path.normpath(Path(repo).absolute() / out))


def staged(repo: Path, *, env: Mapping[str, str] | None = None) -> list[str]:
    """Return the paths the next commit in repo changes, from its top, each once.

    Added, changed and deleted files, and both names of a renamed one (renames are not
    paired, so a rename is its deletion and its addition). Read from the index git commits,
    so inside a hook that is the one ``git commit -a`` or ``git commit FILE`` prepared.
    """
    out = _git(repo, env, "diff", "--cached", "--name-only", "-z", "--no-renames",
               "--no-ext-diff", "--ignore-submodules=none")  # fmt: skip
    return list(dict.fromkeys(p for p in out.split("\0") if p))


def agent_name(
    repo: Path, agent: str | None = None, *, env: Mapping[str, str] | None = None
) -> str | None:
    """Return who commits: agent, else $MAILSLOT_AGENT, else ``git config mailslot.agent``."""
    if agent:
        return agent
    environ = os.environ if env is None else env
    if environ.get("MAILSLOT_AGENT"):
        return environ["MAILSLOT_AGENT"]
    try:
        name = _git(repo, env, "config", "--get", "mailslot.agent").strip()
    except GuardError:
        return None  # not set (git exits 1)
    return name or None


def disabled(env: Mapping[str, str] | None = None) -> bool:
    """Return whether $MAILSLOT_GUARD turns the guard off (``0``, ``off``, ``false``, ``no``)."""
    value = (os.environ if env is None else env).get(SWITCH, "")
    return value.strip().lower() in OFF


# ---------------------------------------------------------------------------- the check


def check(
    repo: Path,
    agent: str | None = None,
    *,
    root: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Verdict:
    """Return the staged paths of repo that another agent's exclusive reservation covers.

    agent is who commits (see agent_name); reservations of agent are never conflicts, and
    without a name every exclusive reservation is. root is the mailbox (default:
    $MAILSLOT_ROOT, else the one `find_root` finds from the repository's top, which in a
    linked worktree is the main worktree's). Nothing is checked, and nothing refused, when
    $MAILSLOT_GUARD is off or there is no mailbox. env replaces os.environ, for git too.
    Raise GuardError if git fails, RootError if the mailbox cannot be read.
    """
    environ = os.environ if env is None else env
    if disabled(environ):
        return Verdict(None, None, skipped=f"{SWITCH}={environ.get(SWITCH)} turns the guard off")
    top = Path(_git(repo, env, "rev-parse", "--show-toplevel").rstrip("\n"))
    if root is None and environ.get("MAILSLOT_ROOT"):
        root = Path(environ["MAILSLOT_ROOT"])
    if root is None:
        try:
            root = find_root(top)
        except RootError:
            return Verdict(None, None, skipped=f"no mailbox for {top}: nothing is reserved")
    who = agent_name(repo, agent, env=env)
    paths = staged(repo, env=env)
    found: list[Conflict] = []
    if paths:
        with Mailbox(root, sweep=False) as box:
            found = conflicts(box, who, paths)
    return Verdict(who, root, paths, found)


def conflicts(box: Mailbox, who: str | None, paths: Sequence[str]) -> list[Conflict]:
    """Return the paths that a live exclusive reservation of an agent other than who covers.

    paths are relative to the repository's top, as reservations are. A path with a glob in
    it (``*``, ``?``, or ending in ``/**`` for a whole folder) stands for every file it could
    name, and meets a reservation it overlaps. The commit guard and the edit-time hook
    (`clients.edit_guard`) both decide with this. Nothing is written to the mailbox.
    """
    live = box.reservations.live()
    others = [h for h in live if h.exclusive and h.holder != who]
    out: list[Conflict] = []
    ends: dict[int, float] = {}
    for p in paths:
        meet = overlaps if any(c in p for c in "*?") else matches
        for h in others:
            with contextlib.suppress(InvalidName):  # a pattern no reservation could hold
                if meet(h.pattern, p):
                    if h.seq not in ends:
                        ends[h.seq] = box.reservations.until(h)
                    out.append(Conflict(p, h, ends[h.seq]))
    return out


def report(conflicts: Sequence[Conflict]) -> str:
    """Return what the hook prints when it refuses: each path, who holds it, and what to do."""
    if not conflicts:
        return ""
    lines = ["mailslot guard: this commit changes files another agent has reserved:"]
    for c in conflicts:
        h = c.held
        pattern = "" if h.pattern == c.path else f" (as {h.pattern})"
        why = f": {h.reason}" if h.reason else " (no reason given)"
        # A name with a newline or a tab is shown quoted, its control characters escaped: as
        # is, it would break the report's lines and hide which file is meant.
        path = c.path if c.path.isprintable() else json.dumps(c.path, ensure_ascii=False)
        lines.append(
            f"  {path}: reserved by {h.holder}{pattern} since {when(iso(h.since))}, until "
            f"{when(iso(c.until))} (later while {h.holder} keeps working){why}"
        )
    holders = list(dict.fromkeys(c.held.holder for c in conflicts))
    to = " ".join(f"--to {shlex.quote(x)}" for x in holders)
    lines += [
        "To go on: leave these files out of the commit (`git restore --staged PATH`); or ask "
        f"{' and '.join(holders)}: `mailslot post {THREAD} 'may I commit ...?' {to}`; or wait "
        "for `mailslot release` (`mailslot reservations` shows who holds what).",
        f"To commit anyway, knowingly: `{SWITCH}=0 git commit ...` or `git commit --no-verify`.",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- the hook


def _command() -> list[str]:
    """Return the argv that runs this mailslot: this Python, without the cwd on its path."""
    if not sys.executable:
        raise GuardError("cannot tell which Python runs mailslot: run `python -m mailslot` instead")
    return [sys.executable, "-P", "-m", "mailslot"]


def _block(chained: bool) -> str:
    """Return mailslot's part of the hook, from BEGIN to END, each line ending in a newline."""
    python, *rest = _command()
    run = shlex.join([python, *rest, "guard", "check"])
    gone = (f"mailslot guard: {python} is gone and no mailslot is on PATH, so this commit "
            "was not checked; run `mailslot guard install` again")  # fmt: skip
    lines = [
        BEGIN,
        "# Added by `mailslot guard install`; `mailslot guard uninstall` takes it out.",
        "# Refuses a commit of files another agent has reserved. To skip it for one command:",
        f"# {SWITCH}=0 git commit ... (or git commit --no-verify, which skips every hook).",
    ]
    if chained:
        lines += [
            f"# First the hook that was here, moved to {CHAINED}.",
            f'if [ -x "$(dirname "$0")/{CHAINED}" ]; then',
            f'\t"$(dirname "$0")/{CHAINED}" "$@" || exit $?',
            "fi",
        ]
    lines += [
        f'case "$(printf %s "${{{SWITCH}-}}" | tr "[:upper:]" "[:lower:]")" in',
        f"{' | '.join(OFF)}) ;;",
        "*)",
        f"\tif [ -x {shlex.quote(python)} ]; then",
        f"\t\t{run} || exit $?",
        "\telif command -v mailslot >/dev/null 2>&1; then",
        "\t\tmailslot guard check || exit $?",
        "\telse",
        f"\t\techo {shlex.quote(gone)} >&2",
        "\tfi",
        "\t;;",
        "esac",
        END,
    ]
    return "".join(f"{x}\n" for x in lines)


def _lines(text: str) -> list[str]:
    """Return text's lines, each with its newline (the last may lack one); joined, text."""
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _find_block(lines: list[str], path: Path) -> tuple[int, int] | None:
    """Return the first and last line of mailslot's block in a hook's lines, if there is one."""
    starts = [i for i, x in enumerate(lines) if x.rstrip("\r\n") == BEGIN]
    ends = [i for i, x in enumerate(lines) if x.rstrip("\r\n") == END]
    if not starts and not ends:
        return None
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise GuardError(
            f"{path} has a damaged mailslot block ({len(starts)} '{BEGIN}' and {len(ends)} "
            f"'{END}' lines): delete mailslot's lines by hand, then install again"
        )
    return starts[0], ends[0]


def _shell_text(path: Path) -> str | None:
    """Return the text of the hook at path if it is a shell script git runs, else None.

    A script with a sh-family shebang, or text without one (git runs that with /bin/sh). A
    symlink, a binary, another language or a hook that is not executable is None.
    """
    if path.is_symlink() or not os.access(path, os.X_OK):
        return None
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    except OSError as e:
        raise GuardError(f"cannot read {path}: {e.strerror}") from None
    if "\0" in text:
        return None
    first = text.split("\n", 1)[0]
    if not first.startswith("#!"):
        return text
    try:
        words = shlex.split(first[2:])
    except ValueError:
        return None
    if words and os.path.basename(words[0]) == "env":
        words = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
    return text if words and os.path.basename(words[0]) in SHELLS else None


def _write(path: Path, text: str, mode: int) -> None:
    """Replace the file at path with text and mode, whole or not at all."""
    tmp = path.with_name(f".{path.name}.mailslot-{os.getpid()}")
    try:
        tmp.write_bytes(text.encode("utf-8"))
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise GuardError(f"cannot write {path}: {e.strerror}") from None


def install(repo: Path, *, env: Mapping[str, str] | None = None) -> str:
    """Put mailslot's check into repo's pre-commit hook; return a sentence saying what it did.

    Installing again refreshes the block in place (say, for another Python). Raise
    GuardError if git cannot name the hooks folder or it cannot be written.
    """
    folder = hooks_dir(repo, env=env)
    hook = folder / HOOK
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GuardError(f"cannot create the hooks folder {folder}: {e.strerror}") from None
    if hook.is_dir():
        raise GuardError(f"{hook} is a folder, not a hook: move it away, then install again")
    if not hook.exists() and not hook.is_symlink():
        if (folder / CHAINED).exists():
            raise GuardError(
                f"{folder / CHAINED} is left from an earlier install, but {hook} is gone: "
                f"rename it back to {HOOK} (or delete it), then install again"
            )
        _write(hook, SHEBANG + _block(chained=False), 0o755)
        return f"installed the mailslot guard as {hook}"
    text = _shell_text(hook)
    if text is not None:
        lines = _lines(text)
        found = _find_block(lines, hook)
        if found is not None:
            old = "".join(lines[found[0] : found[1] + 1])
            new = _block(chained=CHAINED in old)
            if old == new:
                return f"the mailslot guard is already in {hook}"
            lines[found[0] : found[1] + 1] = [new]
            _write(hook, "".join(lines), stat.S_IMODE(hook.stat().st_mode))
            return f"updated the mailslot guard in {hook}"
        at = 1 if lines and lines[0].startswith("#!") else 0
        if at and not lines[0].endswith("\n"):
            lines[0] += "\n"
        lines.insert(at, _block(chained=False))
        _write(hook, "".join(lines), stat.S_IMODE(hook.stat().st_mode))
        return f"added the mailslot guard to {hook}, ahead of its own lines (they still run)"
    chained = folder / CHAINED
    if chained.exists() or chained.is_symlink():
        raise GuardError(
            f"{chained} already exists: it should not without mailslot's block in {hook}; "
            "move one of them away, then install again"
        )
    try:
        os.rename(hook, chained)
    except OSError as e:
        raise GuardError(f"cannot move {hook} aside to {chained}: {e.strerror}") from None
    try:
        _write(hook, SHEBANG + _block(chained=True), 0o755)
    except GuardError:
        os.rename(chained, hook)
        raise
    return (
        f"installed the mailslot guard as {hook}; the hook that was there (not a shell "
        f"script) moved to {chained} and runs first"
    )


def uninstall(repo: Path, *, env: Mapping[str, str] | None = None) -> str:
    """Take mailslot's check out of repo's pre-commit hook; return what it did.

    Only mailslot's block goes: a chained hook comes back as it was, and the hook file is
    deleted only if nothing but a shebang is left. Raise GuardError if it cannot be done.
    """
    folder = hooks_dir(repo, env=env)
    hook, chained = folder / HOOK, folder / CHAINED
    if not hook.exists() and not hook.is_symlink():
        if chained.exists() or chained.is_symlink():
            os.rename(chained, hook)
            return f"put the chained hook back as {hook}"
        return f"the mailslot guard is not installed ({hook} does not exist)"
    text = _shell_text(hook) if hook.is_file() else None
    found = None if text is None else _find_block(_lines(text), hook)
    if text is None or found is None:
        left = f"; {chained} is left as it is" if chained.exists() else ""
        return f"the mailslot guard is not in {hook}: left it as it is{left}"
    lines = _lines(text)
    del lines[found[0] : found[1] + 1]
    rest = "".join(lines)
    bare = not rest.strip() or (rest.startswith("#!") and "\n" not in rest.strip())
    if chained.exists() or chained.is_symlink():
        if not bare:
            raise GuardError(
                f"{hook} has lines mailslot did not write, and the hook it chained is "
                f"{chained}: merge them into one {HOOK} by hand"
            )
        try:
            os.replace(chained, hook)
        except OSError as e:
            raise GuardError(f"cannot move {chained} back to {hook}: {e.strerror}") from None
        return f"removed the mailslot guard and put the chained hook back as {hook}"
    if bare:
        try:
            hook.unlink()
        except OSError as e:
            raise GuardError(f"cannot delete {hook}: {e.strerror}") from None
        return f"removed the mailslot guard: deleted {hook}, nothing else was in it"
    _write(hook, rest, stat.S_IMODE(hook.stat().st_mode))
    return f"removed the mailslot guard from {hook}; the rest of it is as it was"


__all__ = [
    "CHAINED",
    "HOOK",
    "Conflict",
    "GuardError",
    "Verdict",
    "agent_name",
    "check",
    "conflicts",
    "disabled",
    "hooks_dir",
    "install",
    "report",
    "staged",
    "uninstall",
]
