"""This machine's keys: the private keys agents and people sign with, and the keys pinned here.

Both live outside every mailbox, in the user's configuration folder (``$XDG_CONFIG_HOME/mailslot``,
by default ``~/.config/mailslot``), so none of them is ever committed or synced:

- ``keys/<name>``: the private key agent or person NAME signs with on this machine (OpenSSH's
  format, mode 0600, in a 0700 folder), and ``keys/<name>.pub`` its public line. A server acting
  as an agent makes one the first time; ``mailslot key NAME`` makes a person's. Made once, with
  the no-replace link a post claims a seq with: two processes making it at once share one.
- ``pins/<mailbox>/<name>.json``: the keys of NAME this machine trusts in that mailbox (a hash
  of the root's real path). The first keys seen on NAME's card are pinned (trust on first use,
  as ssh's ``known_hosts``), with the same no-replace link; a key the card gains later is not
  trusted here until a person accepts it (``mailslot key NAME --trust FINGERPRINT``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mailslot.store.errors import MailslotError
from mailslot.store.files import HOST, write_all
from mailslot.store.format import dumps, loads, now_iso
from mailslot.store.names import check_name
from mailslot.store.signing import fingerprint, from_ssh_line, raw_public, ssh_line

#: How long a name found without a key is taken at its word before the folder is looked at again.
RECHECK_S = 5.0


class KeyFileError(MailslotError):
    """A key file of this machine cannot be read or written."""


def config_home() -> Path:
    """Return mailslot's folder in the user's configuration ($XDG_CONFIG_HOME/mailslot)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "mailslot"


def _private_dir() -> Path:
    path = config_home() / "keys"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _claim(path: Path, data: bytes, mode: int) -> bool:
    """Write data at path only if nothing is there (a temp file linked into place); return
    True if this call wrote it."""
    tmp = path.with_name(f".{path.name}.{HOST}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


class Keys:
    """The private keys of this machine's user, by agent or person name (cached)."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[float, Ed25519PrivateKey | None]] = {}

    def path(self, name: str) -> Path:
        check_name(name, "agent name")
        return config_home() / "keys" / name

    def private(self, name: str) -> Ed25519PrivateKey | None:
        """Return the key name signs with on this machine, or None if it has none; raise
        KeyFileError if its file cannot be read (nothing is signed with a key that is not there)."""
        seen = self._known.get(name)
        if seen is not None and (seen[1] is not None or time.monotonic() - seen[0] < RECHECK_S):
            return seen[1]
        path = self.path(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            key = None
        except OSError as e:
            raise KeyFileError(f"{name}'s key {path} cannot be read: {e.strerror}") from None
        else:
            key = self._parse(name, path, data)
        self._known[name] = (time.monotonic(), key)
        return key

    @staticmethod
    def _parse(name: str, path: Path, data: bytes) -> Ed25519PrivateKey:
        try:
            key = serialization.load_ssh_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            raise KeyFileError(
                f"{name}'s key {path} is not an unencrypted OpenSSH ed25519 key ({e}); move it "
                f"away and run `mailslot key {name}` to make a new one (others will be told "
                "that its key changed)"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(
                f"{name}'s key {path} is not an ed25519 key; mailslot signs with ed25519"
            )
        return key

    def ensure(self, name: str) -> Ed25519PrivateKey:
        """Return name's key on this machine, made now if it has none."""
        key = self.private(name)
        if key is not None:
            return key
        path = self.path(name)
        new = Ed25519PrivateKey.generate()
        data = new.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        try:
            _private_dir()
            if _claim(path, data, 0o600):
                line = ssh_line(raw_public(new), f"{name}@{HOST}") + "\n"
                pub = path.with_name(name + ".pub")
                with contextlib.suppress(OSError):
                    pub.unlink()
                _claim(pub, line.encode(), 0o644)
        except OSError as e:
            raise KeyFileError(f"cannot write {name}'s key at {path}: {e.strerror}") from None
        self._known.pop(name, None)
        key = self.private(name)
        assert key is not None
        return key

    def public_line(self, name: str) -> str | None:
        """Return name's public key on this machine as an OpenSSH line, or None."""
        key = self.private(name)
        return None if key is None else ssh_line(raw_public(key), f"{name}@{HOST}")


@dataclass(frozen=True, slots=True)
class Pinned:
    """The keys this machine trusts for one name in one mailbox."""

    keys: frozenset[bytes]
    #: Why none could be read (a damaged pin file), or None.
    damaged: str | None = None


class Pins:
    """The keys pinned on this machine for the senders of one mailbox (see module docstring)."""

    def __init__(self, root: Path) -> None:
        real = os.path.realpath(root)
        self.folder = config_home() / "pins" / hashlib.sha256(os.fsencode(real)).hexdigest()[:16]
        self._cache: dict[str, tuple[tuple[int, int], Pinned]] = {}

    def path(self, name: str) -> Path:
        return self.folder / f"{check_name(name, 'agent name')}.json"

    def get(self, name: str) -> Pinned | None:
        """Return what is pinned for name, or None if nothing ever was."""
        path = self.path(name)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        except OSError as e:
            return Pinned(frozenset(), f"{path} cannot be read: {e.strerror}")
        stamp = (st.st_mtime_ns, st.st_size)
        hit = self._cache.get(name)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        try:
            doc = loads(path.read_bytes())
            keys = {from_ssh_line(k.get("key")) for k in doc["keys"]}
            keys.discard(None)
            pinned = Pinned(frozenset(k for k in keys if k is not None))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            why = f"{path} is damaged ({e}); remove it to pin {name}'s card keys again"
            pinned = Pinned(frozenset(), why)
        self._cache[name] = (stamp, pinned)
        return pinned

    def first(self, name: str, keys: list[bytes]) -> Pinned:
        """Pin keys for name if nothing is pinned yet (the first writer wins); return the pin."""
        if keys and self.get(name) is None:
            try:
                self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
                _claim(self.path(name), self._doc(name, keys), 0o600)
            except OSError as e:
                raise KeyFileError(
                    f"cannot pin {name}'s keys in {self.folder}: {e.strerror}"
                ) from None
        return self.get(name) or Pinned(frozenset())

    def accept(self, name: str, key: bytes) -> None:
        """Trust key for name on this machine from now on (a person's decision)."""
        now = self.get(name)
        keys = sorted((now.keys if now else frozenset()) | {key})
        path = self.path(name)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp.write_bytes(self._doc(name, keys))
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise KeyFileError(f"cannot pin {name}'s key in {self.folder}: {e.strerror}") from None

    @staticmethod
    def _doc(name: str, keys: list[bytes]) -> bytes:
        when = now_iso()
        entries = [{"key": ssh_line(k, ""), "fingerprint": fingerprint(k), "pinned_at": when}
                   for k in keys]  # fmt: skip
        return dumps({"name": name, "keys": entries})
