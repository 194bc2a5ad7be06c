"""Team folders: two real Unix users of one group share a mailbox, with and without --shared.

The users and their group are made with useradd/groupadd for the session (and removed after it,
however it ends); each command runs as one of them through setpriv, under the umask a case
names, as `python -m mailslot ...` or a small script using the library. Needs root; without
it (or without useradd/setpriv) these tests skip, except under CI=true, where they must run.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import mailslot
from mailslot import Mailbox, RootError
from mailslot.store.threads import CACHE_FROM

TOOLS = ("useradd", "userdel", "groupadd", "groupdel", "setpriv")
# setpriv runs the command under a shell that sets the umask first: `sh -c 'umask U; exec ...'`.
UMASKED = 'umask "$0" && exec "$@"'


def unavailable(reason: str) -> None:
    """Skip with reason, or fail under CI=true, where these tests must run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}, and CI=true requires the team-folder tests to run")
    pytest.skip(reason)


@dataclass(frozen=True)
class User:
    name: str
    uid: int


@dataclass
class Team:
    """Two users, a and b, each with a group of their own and both in the group `group`."""

    group: str
    gid: int
    a: User
    b: User
    #: Extra setpriv flags: see python_for_users.
    caps: tuple[str, ...] = ()
    home: str = "/"

    def argv(self, user: User, umask: str, *cmd: str) -> list[str]:
        return ["setpriv", f"--reuid={user.name}", f"--regid={user.name}", "--init-groups",
                *self.caps, "--", "/bin/sh", "-c", UMASKED, umask, *cmd]  # fmt: skip

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSLOT_")}
        return {**env, "HOME": self.home, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"}

    def run(
        self, user: User, umask: str, *cmd: str, ok: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(self.argv(user, umask, *cmd), capture_output=True, text=True,
                              env=self.env(), cwd=self.home, timeout=120, check=False)  # fmt: skip
        if ok:
            assert done.returncode == 0, f"{user.name} ran {cmd[2:]}:\n{done.stdout}{done.stderr}"
        return done

    def cli(
        self, user: User, umask: str, *args: str, ok: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.run(user, umask, sys.executable, "-m", "mailslot", *args, ok=ok)


def _sh(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def _drop(users: list[str], groups: list[str]) -> None:
    for name in users:
        _sh("userdel", name)
    for name in groups:
        if _sh("getent", "group", name).returncode == 0:
            _sh("groupdel", name)


def python_for_users(team: Team) -> tuple[str, ...]:
    """Return the setpriv flags under which the test users can run this interpreter.

    Empty if they can run it as it is. When it lives where only root may go (a pyenv under
    /root, as on the machines CI runs on), they get CAP_DAC_READ_SEARCH: it lets them read and
    search any folder, so they can load Python, but never write where their uid and groups may
    not, which is all these tests are about.
    """
    probe = "import sys, mailslot; print(sys.base_prefix, mailslot.__file__, end='')"
    want = f"{sys.base_prefix} {mailslot.__file__}"
    tried = []
    for caps in ((), ("--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search")):
        team.caps = caps
        done = team.run(team.a, "022", sys.executable, "-c", probe, ok=False)
        if done.returncode == 0 and done.stdout == want:
            return caps
        tried.append(f"{' '.join(caps) or 'as it is'}: {done.stdout}{done.stderr}".strip())
    unavailable(f"the test users cannot run {sys.executable}: " + "; ".join(tried))
    raise AssertionError  # unreachable: unavailable() skips or fails


@pytest.fixture(scope="session")
def team() -> Iterator[Team]:
    """Return two fresh users in a fresh group; both removed at the end, whatever happens."""
    if not sys.platform.startswith("linux"):
        unavailable("team folders are tested with Linux users and setpriv(1)")
    if os.geteuid() != 0:
        unavailable("making test users needs root")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        unavailable(f"needs {', '.join(missing)} (passwd and util-linux)")
    pid = os.getpid()
    group, a, b = f"mslot_t_{pid}", f"mslot_a_{pid}", f"mslot_b_{pid}"
    _drop([a, b], [group, a, b])  # left by an earlier run with this pid, killed -9
    home = tempfile.mkdtemp(prefix="mailslot-team-home-")
    try:
        for cmd in (
            ("groupadd", group),
            *(("useradd", "--no-create-home", "--user-group", "--groups", group,
               "--shell", "/usr/sbin/nologin", name) for name in (a, b)),
        ):  # fmt: skip
            done = _sh(*cmd)
            assert done.returncode == 0, f"{' '.join(cmd)}: {done.stderr}"
        os.chmod(home, 0o755)
        t = Team(group, grp.getgrnam(group).gr_gid, User(a, pwd.getpwnam(a).pw_uid),
                 User(b, pwd.getpwnam(b).pw_uid), home=home)  # fmt: skip
        t.caps = python_for_users(t)
        yield t
    finally:
        _drop([a, b], [group, a, b])
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def project(team: Team) -> Iterator[Path]:
    """Return a project folder both users reach: group-owned by the team, setgid, g+rwx."""
    base = Path(tempfile.mkdtemp(prefix="mailslot-team-"))
    try:
        base.chmod(0o755)
        folder = base / "project"
        folder.mkdir()
        os.chown(folder, 0, team.gid)
        folder.chmod(0o2775)
        yield folder
    finally:
        shutil.rmtree(base, ignore_errors=True)


def entries(root: Path) -> list[tuple[Path, os.stat_result]]:
    """Return every file and folder under root (root included) with its lstat."""
    out = [(root, os.lstat(root))]
    for folder, dirs, files in os.walk(root):
        out += [(Path(folder) / n, os.lstat(Path(folder) / n)) for n in [*dirs, *files]]
    return out


def assert_not_executable(root: Path) -> None:
    runnable = [f"{p} {stat.filemode(st.st_mode)}" for p, st in entries(root)
                if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111]  # fmt: skip
    assert not runnable, f"executable files: {runnable}"


def post(team: Team, user: User, umask: str, root: Path, thread: str, text: str, *more: str) -> int:
    done = team.cli(
        user, umask, "post", thread, text, "--as", user.name, "--root", str(root), *more
    )
    return int(done.stdout)


def wait_woken_by(
    team: Team, waiter: User, poster: User, root: Path, thread: str, umask: str
) -> None:
    """Check that waiter's `mailslot wait` on thread blocks, and wakes on poster's post."""
    listing = team.cli(waiter, umask, "threads", "--root", str(root), "--json").stdout
    head = json.loads(listing)["threads"]
    after = next(t["head"] for t in head if t["id"] == thread)
    argv = team.argv(waiter, umask, sys.executable, "-m", "mailslot", "wait", thread, "--after",
                     str(after), "--timeout", "60", "--json", "--root", str(root))  # fmt: skip
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=team.env(), cwd=team.home) as waiting:  # fmt: skip
        try:
            time.sleep(1.0)  # long enough to fail, if it could not read or watch the folder
            assert waiting.poll() is None, waiting.communicate()
            seq = post(team, poster, umask, root, thread, f"wake up, {waiter.name}")
            out, err = waiting.communicate(timeout=60)
        finally:
            if waiting.poll() is None:
                waiting.kill()
    assert waiting.returncode == 0, err
    got = json.loads(out)
    assert [(m["seq"], m["from"]) for m in got["messages"]] == [(seq, poster.name)], out


def doctor(team: Team, user: User, umask: str, root: Path, *more: str) -> dict[str, Any]:
    done = team.cli(user, umask, "doctor", "--json", "--root", str(root), *more, ok=False)
    report: dict[str, Any] = json.loads(done.stdout)
    assert done.returncode == (0 if report["healthy"] else 1), done.stderr
    return report


def test_umask_002_and_setgid_folder_share_without_flag(team: Team, project: Path) -> None:
    """Umask 002 in a setgid group folder is enough: posts, waits and doctor work both ways."""
    root = project / ".mailslot"
    a, b = team.a, team.b
    team.cli(a, "002", "init", str(root))
    team.cli(a, "002", "thread", "from-a", "--as", a.name, "--root", str(root))
    post(team, a, "002", root, "from-a", "hello from a")
    assert post(team, b, "002", root, "from-a", "hello from b") == 2
    wait_woken_by(team, b, a, root, "from-a", "002")
    team.cli(b, "002", "thread", "from-b", "--as", b.name, "--root", str(root))
    post(team, b, "002", root, "from-b", "b's own thread")
    assert post(team, a, "002", root, "from-b", "a answers in b's thread") == 2
    wait_woken_by(team, a, b, root, "from-b", "002")
    for user in (a, b):
        report = doctor(team, user, "002", root)
        assert report["healthy"], report
    owners = {st.st_uid for _, st in entries(root)}
    assert {a.uid, b.uid} <= owners
    assert_not_executable(root)


def test_shared_mailbox_under_umask_022(team: Team, project: Path) -> None:
    """With --shared, a typical umask 022 is no obstacle: every write of each user works."""
    root = project / ".mailslot"
    a, b = team.a, team.b
    made = team.cli(a, "022", "init", "--shared", str(root))
    assert "shared by group" in made.stdout, made.stdout
    assert json.loads((root / "mailslot.json").read_text())["shared"] == "group"
    team.cli(a, "022", "thread", "from-a", "--as", a.name, "--root", str(root))
    post(team, a, "022", root, "from-a", "hello from a", "--key", "k1")
    for i in range(CACHE_FROM - 1):  # long enough for its index to be cached
        post(team, a, "022", root, "from-a", f"more from a {i}")
    team.cli(a, "022", "threads", "--root", str(root))  # a writes the thread's index
    b_seq = post(team, b, "022", root, "from-a", "hello from b", "--key", "k2")
    assert b_seq == CACHE_FROM + 1
    team.cli(b, "022", "threads", "--root", str(root))  # ... and b brings it up to date
    index = root / ".state" / "index" / "from-a.json"
    assert json.loads(index.read_text())["seq"] == b_seq
    assert index.stat().st_uid == b.uid
    wait_woken_by(team, b, a, root, "from-a", "022")
    team.cli(b, "022", "thread", "from-b", "--as", b.name, "--root", str(root))
    post(team, b, "022", root, "from-b", "b's own thread")
    assert post(team, a, "022", root, "from-b", "a answers in b's thread") == 2
    wait_woken_by(team, a, b, root, "from-b", "022")

    # Names, presence and read positions: each user's, and each over the other's files.
    hold = (
        "import sys; from mailslot import Mailbox\n"
        f"box = Mailbox({str(root)!r})\n"
        "hold = box.agents.hold_name(sys.argv[1])\n"
        "assert box.agents.presence(sys.argv[1]).status == 'online'\n"
        "box.save_cursor('shared', 'from-a', {'by': sys.argv[1]})\n"
        "box.save_cursor(sys.argv[1], 'from-a', {'by': sys.argv[1]})\n"
        "print(box.load_cursor('shared', 'from-a')['by'], end='')\n"
        "box.agents.release_name(hold)\n"
    )
    for user, name in ((a, "alice"), (b, "bob"), (b, "alice")):  # b takes a's name after a
        assert team.run(user, "022", sys.executable, "-c", hold, name).stdout == name
    presence = root / ".state" / "presence"
    assert (presence / "alice.lock").stat().st_uid == a.uid  # a's lock file, taken by b
    assert (presence / "alice.json").stat().st_uid == b.uid
    assert (presence / "bob.lock").stat().st_uid == b.uid
    cursors = root / ".state" / "cursors"
    assert (cursors / "shared" / "from-a.json").stat().st_uid == b.uid  # replaced a's
    assert (cursors / "alice" / "from-a.json").stat().st_uid == b.uid

    for user in (a, b):
        report = doctor(team, user, "022", root)
        assert report["healthy"], report
    found = entries(root)
    assert {st.st_uid for _, st in found} >= {a.uid, b.uid}
    for path, st in found:
        assert st.st_gid == team.gid, path
        if stat.S_ISDIR(st.st_mode):
            assert st.st_mode & 0o2770 == 0o2770, f"{path} {stat.filemode(st.st_mode)}"
        else:
            assert st.st_mode & 0o660 == 0o660, f"{path} {stat.filemode(st.st_mode)}"
            assert not st.st_mode & 0o111, f"{path} {stat.filemode(st.st_mode)}"


def test_converting_a_mailbox_with_init_shared(team: Team, project: Path) -> None:
    """A's mailbox under umask 022 shuts B out, says why and how; `init --shared` lets B in."""
    root = project / ".mailslot"
    a, b = team.a, team.b
    team.cli(a, "022", "init", str(root))
    team.cli(a, "022", "thread", "from-a", "--as", a.name, "--root", str(root))
    post(team, a, "022", root, "from-a", "hello from a")
    refused = team.cli(b, "022", "post", "from-a", "let me in", "--as", b.name, "--root",
                       str(root), ok=False)  # fmt: skip
    assert refused.returncode != 0
    assert "Permission denied" in refused.stderr, refused.stderr
    assert f"belongs to {a.name}" in refused.stderr, refused.stderr
    assert f"mailslot init --shared {root}" in refused.stderr, refused.stderr
    assert "nothing was stored" in refused.stderr, refused.stderr

    for user in (a, b):  # the owner and the user shut out are both told how to convert
        report = doctor(team, user, "022", root)
        assert not report["healthy"]
        said = [f for f in report["findings"] if f["kind"] == "not shared"]
        assert len(said) == 1, report
        assert f"mailslot init --shared {root}" in said[0]["todo"], said
        assert a.name in said[0]["todo"], said
        assert report["hard_links"] is not False, report  # not mistaken for the filesystem

    converted = team.cli(a, "022", "init", "--shared", str(root))
    assert '"shared": "group"' in converted.stdout, converted.stdout
    assert "gave group" in converted.stdout, converted.stdout
    assert json.loads((root / "mailslot.json").read_text())["shared"] == "group"
    assert post(team, b, "022", root, "from-a", "let me in") == 2
    team.cli(b, "022", "thread", "from-b", "--as", b.name, "--root", str(root))
    assert post(team, a, "022", root, "from-b", "welcome") == 1
    for user in (a, b):
        report = doctor(team, user, "022", root)
        assert report["healthy"], report
    again = team.cli(a, "022", "init", "--shared", str(root))
    assert "shared by group" in again.stdout, again.stdout


def test_doctor_fixes_group_access_in_a_shared_mailbox(team: Team, project: Path) -> None:
    """A file of a shared mailbox that lost group write is reported, and --fix restores it."""
    root = project / ".mailslot"
    a = team.a
    team.cli(a, "022", "init", "--shared", str(root))
    team.cli(a, "022", "thread", "t", "--as", a.name, "--root", str(root))
    lock = root / ".state" / "locks" / "t.lock"
    post(team, a, "022", root, "t", "hello")
    lock.chmod(0o644)
    report = doctor(team, a, "022", root)
    [finding] = [f for f in report["findings"] if f["kind"] == "group access"]
    assert str(lock) in finding["detail"] and not finding["fixed"], finding
    fixed = doctor(team, a, "022", root, "--fix")
    assert fixed["healthy"], fixed
    assert lock.stat().st_mode & 0o660 == 0o660


def test_no_file_mailslot_creates_is_executable(tmp_path: Path) -> None:
    """Under umask 000, where any executable bit would show, no file mailslot made has one."""
    root = tmp_path / "box"
    script = (
        "import os, subprocess, sys; from mailslot import Mailbox\n"
        "os.umask(0)\n"
        f"root = {str(root)!r}\n"
        "box = Mailbox.init(root)\n"
        "box.agents.register('alice', description='a card')\n"
        "box.create_thread('t', creator='alice')\n"
        "for i in range(4):\n"
        "    box.post('t', f'm{i}', sender='alice', idempotency_key=f'k{i}')\n"
        "hold = box.agents.hold_name('alice')\n"
        "box.save_cursor('alice', 't', {'read': 4})\n"
        "box.threads()\n"
        "box.agents.release_name(hold)\n"
        "os.unlink(os.path.join(root, 'threads', 't', '000002.json'))\n"
        "open(os.path.join(root, 'threads', 't', '000003.json'), 'w').write('{not json')\n"
        "for fix in ([], ['--fix']):\n"
        "    subprocess.run([sys.executable, '-m', 'mailslot', 'doctor', '--root', root, *fix])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (root / ".state" / "quarantine").is_dir()  # doctor --fix wrote there too
    assert stat.S_IMODE((root / "threads" / "t" / "thread.json").stat().st_mode) == 0o666
    assert_not_executable(root)


def test_init_shared_as_one_user(tmp_path: Path) -> None:
    """`init --shared` alone: folders get g+rwx and setgid, files g+rw, under any umask."""
    root = tmp_path / "box"
    script = (
        "import os; from mailslot import Mailbox\n"
        "os.umask(0o077)\n"
        f"box = Mailbox.init({str(root)!r}, shared=True)\n"
        "box.create_thread('t', creator='alice')\n"
        "box.post('t', 'hello', sender='alice')\n"
        "hold = box.agents.hold_name('alice')\n"
        "box.agents.release_name(hold)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert Mailbox(root).settings.shared
    for path, st in entries(root):
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            assert mode == 0o2770, f"{path} {stat.filemode(st.st_mode)}"
        else:
            assert mode == 0o660, f"{path} {stat.filemode(st.st_mode)}"


def test_shared_setting_is_checked(tmp_path: Path) -> None:
    """A "shared" value mailslot does not know is refused with what it may be."""
    box = Mailbox.init(tmp_path / "box")
    config = box.root / "mailslot.json"
    doc = json.loads(config.read_text())
    for bad in ("all", True, 1):
        config.write_text(json.dumps({**doc, "shared": bad}))
        with pytest.raises(RootError, match=r"'shared' must be \"group\""):
            Mailbox(box.root)
    config.write_text(json.dumps({**doc, "shared": False}))
    assert not Mailbox(box.root).settings.shared
