"""Publishing a message: validation, idempotency keys, and the claim of its seq.

Contract (design.md §3): the message is serialised and checked in memory, written and fsynced
to a temp file, then, under the thread's lock, claimed as the next free seq with a no-replace
link (Files.claim); "stored" is returned only after that. On any error nothing is stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mailslot.store.agents import RESERVED_AGENTS, Agents
from mailslot.store.errors import (
    InvalidMessage,
    MailslotError,
    NoSuchAgent,
    NoSuchMessage,
    RootError,
    StorageError,
)
from mailslot.store.files import Files, exists, fsync_dir
from mailslot.store.format import (
    PRIORITIES,
    TYPES,
    Message,
    check_content,
    check_message_file,
    check_meta,
    dumps,
    loads,
    now_iso,
)
from mailslot.store.keys import Keys
from mailslot.store.log import ThreadLog
from mailslot.store.names import check_key, check_name
from mailslot.store.news import tell
from mailslot.store.signing import sign

log = logging.getLogger("mailslot")

ID_NAMESPACE = uuid.UUID("6f1c1a8e-52a4-4e0c-9d0c-6d61696c736c")


class Writer:
    """Publishes messages into a root's threads."""

    def __init__(
        self,
        files: Files,
        log: ThreadLog,
        agents: Agents,
        participants: Callable[[str], Sequence[str]] = lambda thread: (),
        keys: Keys | None = None,
    ) -> None:
        self.files = files
        self.log = log
        self.agents = agents
        self.participants = participants
        #: The private keys of this machine: a sender with one signs (store/signing.py).
        self.keys = keys if keys is not None else Keys()

    def _recipients(self, thread: str, to: object) -> list[str]:
        """Return the recipients, each an agent with a card or someone who wrote in thread.

        A card is not required of a participant: people post with the command and never
        register, and whoever reads their messages must be able to answer them. A name seen
        nowhere is refused, so a misspelt recipient stores nothing.
        """
        if isinstance(to, str):
            to = [to]
        if not isinstance(to, list | tuple):
            raise InvalidMessage(f"to must be a list of agent names, not {type(to).__name__}")
        names: list[str] = []
        seen: Sequence[str] | None = None
        for name in to:
            check_name(name, "agent name")
            if not os.path.lexists(self.files.root / "agents" / f"{name}.json"):
                if seen is None:
                    seen = self.participants(thread)
                if name not in seen:
                    known = sorted({*self.agents.names(), *seen})
                    raise NoSuchAgent(name, known)
            if name not in names:
                names.append(name)
        return names

    def post(
        self,
        thread: str,
        content: str | bytes,
        *,
        sender: str,
        to: list[str] | tuple[str, ...] = (),
        type: str = "message",
        priority: str = "normal",
        reply_to: int | None = None,
        meta: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        guard: Callable[[], None] | None = None,
    ) -> Message:
        """Store a message in thread and return it as stored (with its seq and id).

        The message is on disk (fsynced, unless the root says ``fsync: false``) when this
        returns. With an idempotency_key, a retry by the same sender with the same key returns
        the first message instead of storing a duplicate. Raise NoSuchThread,
        NoSuchAgent (unknown recipient), InvalidName, InvalidMessage or StorageError; on any
        error nothing is stored. guard: as for append.
        """
        tdir = self.files.thread_dir(thread)
        if type == "state":
            raise InvalidMessage(
                "state messages are written by set_state(); use it to change state"
            )
        if type not in TYPES:
            raise InvalidMessage(f"type must be one of {', '.join(TYPES[:-1])}; not {type!r}")
        content = check_content(content, self.files.settings.max_content_bytes)
        if not content.strip():
            raise InvalidMessage("content is empty; write what you want to say")
        return self.append(
            thread,
            tdir,
            sender=sender,
            to=to,
            type_=type,
            priority=priority,
            reply_to=reply_to,
            content=content,
            meta=meta,
            key=idempotency_key,
            guard=guard,
        )

    def append(
        self,
        thread: str,
        tdir: Path,
        *,
        sender: str,
        to: object,
        type_: str,
        priority: str,
        reply_to: object,
        content: str,
        meta: object,
        key: str | None,
        guard: Callable[[], None] | None = None,
    ) -> Message:
        """Publish a message of any type (state included) and return it as stored.

        guard, if given, runs under the thread's lock just before the seq is claimed; if it
        raises, nothing is stored. It decides "only one may" among the writers of this machine
        (the lock does not exclude across network mounts: the thread's order decides there).
        """
        message = self._message(
            thread, tdir, sender=sender, to=to, type_=type_, priority=priority,
            reply_to=reply_to, content=content, meta=meta, key=key,
        )  # fmt: skip
        try:
            data = dumps(message.file_doc())
        except (ValueError, UnicodeEncodeError) as e:
            raise InvalidMessage(f"the message cannot be stored as JSON: {e}") from None
        check_message_file(data, self.files.settings.max_content_bytes)  # acknowledged => readable
        if self.files.read_only is not None:
            raise RootError(self.files.root, self.files.read_only)
        tmp = self.files.write_tmp(data) if self.files.settings.claim == "link" else None
        try:
            with self.files.locked(thread):
                if guard is not None:
                    guard()
                if key is not None:
                    seen = self._keyed(thread, tdir, message, key)
                    if seen is not None:
                        return self.log.get(thread, seen)
                seq = self.files.claim(
                    tdir, tmp, data, lambda: self.log.probe_head(thread, tdir, fresh=True)
                )
                self.log.heads[thread] = seq
                if key is not None:
                    self._keyed_done(thread, message, key, seq)
            if self.files.settings.fsync:
                try:
                    fsync_dir(tdir)
                except OSError as e:
                    log.warning("fsync of %s failed after publishing seq %d: %s", tdir, seq, e)
            tell(self.files.root, thread)  # before "stored": a wait begun after sees it
            return replace(message, seq=seq)
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    tmp.unlink()

    def _message(
        self,
        thread: str,
        tdir: Path,
        *,
        sender: str,
        to: object,
        type_: str,
        priority: str,
        reply_to: object,
        content: str,
        meta: object,
        key: str | None,
    ) -> Message:
        """Return the message to publish (seq 0 until claimed); raise if a field is invalid."""
        check_name(sender, "agent name")
        if priority not in PRIORITIES:
            raise InvalidMessage(
                f"priority must be one of {', '.join(PRIORITIES)}; not {priority!r}"
            )
        recipients = self._recipients(thread, to)
        if reply_to is not None:
            if type(reply_to) is not int or reply_to < 1:
                raise InvalidMessage(f"reply_to must be a message seq >= 1, not {reply_to!r}")
            if not exists(tdir, reply_to):
                raise NoSuchMessage(thread, reply_to, self.log.probe_head(thread, tdir))
        if key is not None:
            check_key(key)
            message_id = uuid.uuid5(ID_NAMESPACE, f"{thread}\0{sender}\0{key}").hex
        else:
            message_id = uuid.uuid4().hex
        message = Message(
            thread, 0, message_id, sender, recipients, type_, priority,
            reply_to if type(reply_to) is int else None, now_iso(), content, check_meta(meta),
        )  # fmt: skip
        return self._signed(message)

    def _signed(self, m: Message) -> Message:
        """Return m signed with its sender's key on this machine, if it has one; raise
        RootError if the mailbox requires signed messages and it has none."""
        key = None if m.sender in RESERVED_AGENTS else self.keys.private(m.sender)
        if key is None:
            if self.files.settings.require_signed and m.sender not in RESERVED_AGENTS:
                raise RootError(
                    self.files.root,
                    f'this mailbox requires signed messages ("require_signed": true in '
                    f"mailslot.json) and {m.sender} has no key on this machine; nothing was "
                    f"stored. Run `mailslot key {m.sender}` to make one, then post again",
                )
            return m
        reply_id = None
        if m.reply_to is not None:
            reply_id = ""  # it answers a message whose id cannot be read: an answer all the same
            with contextlib.suppress(MailslotError):
                reply_id = self.log.get(m.thread, m.reply_to).id
        return replace(m, sig=sign(key, m, reply_id))

    def retried(self, thread: str, sender: str, key: str) -> Message | None:
        """Return the message sender already stored in thread with this idempotency key (the
        one a retry gets), or None: no such post, or a key or name that cannot be used."""
        try:
            check_name(sender, "agent name")
            check_key(key)
            tdir = self.files.thread_dir(thread)
            message_id = uuid.uuid5(ID_NAMESPACE, f"{thread}\0{sender}\0{key}").hex
            seen = self._find_keyed(thread, tdir, self._marker(thread, sender, key), message_id)
            return None if seen is None else self.log.get(thread, seen)
        except MailslotError:
            return None

    def _marker(self, thread: str, sender: str, key: str) -> Path:
        digest = hashlib.sha256(f"{sender}\0{key}".encode()).hexdigest()[:40]
        return self.files.dir(f".state/keys/{thread}") / f"{digest}.json"

    def _keyed(self, thread: str, tdir: Path, message: Message, key: str) -> int | None:
        """Return the seq of an earlier post with this key, or mark this attempt (locked)."""
        marker = self._marker(thread, message.sender, key)
        seen = self._find_keyed(thread, tdir, marker, message.id)
        if seen is None:
            # Before the claim: if this cannot be written, nothing is stored, and we say so.
            after = self.log.probe_head(thread, tdir)
            self.files.write_state_file(marker, {"id": message.id, "after": after})
        return seen

    def _keyed_done(self, thread: str, message: Message, key: str, seq: int) -> None:
        """Record the seq of a keyed post; the message is stored, so a failure here is no error.

        A retry finds the message anyway by looking after the marker's "after" seq.
        """
        marker = self._marker(thread, message.sender, key)
        try:
            self.files.write_state_file(marker, {"id": message.id, "seq": seq, "after": seq - 1})
        except StorageError as e:
            log.warning("message %d of %s is stored; its key marker was not updated: %s",
                        seq, thread, e)  # fmt: skip

    def _find_keyed(self, thread: str, tdir: Path, marker: Path, message_id: str) -> int | None:
        """Return the seq already stored under an idempotency marker, if the post happened."""
        try:
            doc = loads(marker.read_bytes())
            after = int(doc["after"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        seq = doc.get("seq")
        if type(seq) is int:
            item = self.log.load(thread, tdir, seq)
            if isinstance(item, Message) and item.id == message_id:
                return seq
        # A post that died between publishing and writing its seq: look for its message among
        # those that came after the marker was written.
        head = self.log.probe_head(thread, tdir)
        for s in range(max(after, 0) + 1, head + 1):
            item = self.log.load(thread, tdir, s)
            if isinstance(item, Message) and item.id == message_id:
                return s
        return None
