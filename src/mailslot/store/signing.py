"""Signed messages: what a signature covers, and Ed25519 signing and checking.

A signed message file holds one more key after ``meta``: ``sig``, an object with ``alg``
(``"ed25519"``), ``key`` (the signer's raw public key, base64), ``reply_to`` (the *id* of the
message it answers, when it answers one) and ``value`` (the signature, base64). Readers that
predate signatures step over the key; a message is read the same with or without it.

The signature covers the message's canonical bytes: a fixed prefix, then a compact JSON object
with sorted keys of the thread id, the message id, sender, recipients, type, priority, the id
of the message it replies to, created_at, content and meta without ``moved_from``. So a
message edited, sent under another name or copied into another thread fails the check. The
seq is not covered, nor ``reply_to`` as a seq, nor ``meta.moved_from``: those are what a
conflict repair (``mailslot doctor --fix``) or sync rewrite when the thread's order moves a
message to another seq, and a moved message must stay valid. What it answers is covered by id
instead, which a move never changes, and a reader checks that the seq it names holds that id
(``""`` where the writer could not read the answered message's id: an answer all the same, so
a message signed as answering nothing that answers something now is caught).

The library is ``cryptography`` (PyCA): already installed with the MCP SDK (PyJWT's crypto
extra), Ed25519 from OpenSSL, and keys in OpenSSH's formats, so a public key reads as in
``~/.ssh`` and its fingerprint is what ``ssh-keygen -l`` prints.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import struct
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mailslot.store.format import Message

ALG = "ed25519"
DOMAIN = b"mailslot message signature v1\n"
#: What a reader shows for a message, per signature: the four states.
VALID, INVALID, UNSIGNED, UNKNOWN_KEY = "valid", "invalid", "unsigned", "unknown key"
SSH_TYPE = b"ssh-ed25519"


def canonical(m: Message, reply_to_id: str | None) -> bytes:
    """Return the bytes a signature of m covers (see the module docstring)."""
    meta = {k: v for k, v in m.meta.items() if k != "moved_from"}
    doc = {
        "thread": m.thread,
        "id": m.id,
        "from": m.sender,
        "to": list(m.to),
        "type": m.type,
        "priority": m.priority,
        "reply_to": reply_to_id,
        "created_at": m.created_at,
        "content": m.content,
        "meta": meta,
    }
    text = json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return DOMAIN + text.encode("utf-8", "surrogatepass")  # a hand-written lone surrogate: no crash


def raw_public(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """Return the 32 raw bytes of a public key (of a private key's public half)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign(key: Ed25519PrivateKey, m: Message, reply_to_id: str | None) -> dict[str, Any]:
    """Return the ``sig`` object of m signed with key."""
    sig: dict[str, Any] = {"alg": ALG, "key": _public_b64(key)}
    if reply_to_id is not None:
        sig["reply_to"] = reply_to_id
    sig["value"] = b64(key.sign(canonical(m, reply_to_id)))
    return sig


@functools.lru_cache(maxsize=64)
def _public_b64(key: Ed25519PrivateKey) -> str:
    """Return key's public half in base64, remembered: a sender signs every post with the same
    key object (store/keys.py keeps it), and deriving it again cost 3 µs a post."""
    return b64(raw_public(key))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: object, size: int) -> bytes | None:
    """Return the size bytes text encodes in base64, or None if it does not."""
    if not isinstance(text, str):
        return None
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if len(data) == size else None


def parse(sig: object) -> tuple[bytes, bytes, str | None] | str:
    """Return (public key, signature, reply_to id) of a ``sig`` object, or why it is no
    signature this version can check."""
    if not isinstance(sig, dict):
        return f"its signature is a {type(sig).__name__}, not an object"
    if sig.get("alg") != ALG:
        return f"its signature's algorithm is {sig.get('alg')!r}, not {ALG!r}"
    key, value = unb64(sig.get("key"), 32), unb64(sig.get("value"), 64)
    if key is None or value is None:
        return "its signature's key or value is not base64 of the right length"
    reply = sig.get("reply_to")
    if reply is not None and not isinstance(reply, str):
        return "its signature's reply_to is not a message id"
    return key, value, reply


def verify(key: bytes, value: bytes, data: bytes) -> bool:
    """Return True if value is key's Ed25519 signature of data."""
    try:
        _public_key(key).verify(value, data)
    except (InvalidSignature, ValueError):
        return False
    return True


@functools.lru_cache(maxsize=1024)
def _public_key(key: bytes) -> Ed25519PublicKey:
    """Return the public key object of raw bytes (made once per key: its set-up costs a third
    of a check); raise ValueError if they are no key."""
    return Ed25519PublicKey.from_public_bytes(key)


def ssh_line(key: bytes, comment: str) -> str:
    """Return a raw public key as an OpenSSH public key line ('ssh-ed25519 AAAA... comment')."""
    return f"{SSH_TYPE.decode()} {b64(_blob(key))} {comment}".rstrip()


def from_ssh_line(line: object) -> bytes | None:
    """Return the raw public key of an OpenSSH ed25519 public key line, or None."""
    if not isinstance(line, str):
        return None
    parts = line.split()
    if len(parts) < 2 or parts[0] != SSH_TYPE.decode():
        return None
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return None
    head = struct.pack(">I", len(SSH_TYPE)) + SSH_TYPE + struct.pack(">I", 32)
    if len(blob) != len(head) + 32 or not blob.startswith(head):
        return None
    return blob[len(head) :]


def fingerprint(key: bytes) -> str:
    """Return a public key's fingerprint as ``ssh-keygen -l`` prints it (SHA256:...)."""
    digest = hashlib.sha256(_blob(key)).digest()
    return "SHA256:" + b64(digest).rstrip("=")


def _blob(key: bytes) -> bytes:
    return struct.pack(">I", len(SSH_TYPE)) + SSH_TYPE + struct.pack(">I", len(key)) + key
