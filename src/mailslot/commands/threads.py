"""Commands on threads and their messages: thread, threads, read, post, tail, wait,
state, search, export.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable

from mailslot.agent.receipts import Receipts
from mailslot.commands.declare import (
    EXIT_OK,
    EXIT_TIMEOUT,
    Here,
    UsageError,
    arg,
    command,
    print_json,
)
from mailslot.store.errors import MailslotError
from mailslot.store.format import PRIORITIES, STATES, TYPES, Message, loads
from mailslot.views.terminal import receipt_line, table, trouble, when


def _emit(
    messages: Iterable[Message], args: argparse.Namespace, here: Here, *, thread: bool = False
) -> None:
    for m in messages:
        if args.json:
            print(json.dumps(m.to_dict(), ensure_ascii=False), flush=True)
        else:
            print(here.show(m, thread=thread), flush=True)


@command("thread", help="create or join the thread of a topic", args=[arg("topic")], who=True)
def cmd_thread(args: argparse.Namespace, here: Here) -> int:
    box = here.open(args)
    info = box.create_thread(args.topic, creator=here.sender(args))
    if args.json:
        print_json(info.to_dict())
    else:
        print(f"{info.id}  (head {info.head}, {info.state})")
    return EXIT_OK


@command(
    "threads",
    help="list threads, most recent first",
    args=[
        arg("--state", choices=STATES),
        arg("--all", action="store_true", help="include archived threads"),
    ],
)
def cmd_threads(args: argparse.Namespace, here: Here) -> int:
    box = here.open(args)
    infos = box.threads(state=args.state, include_archived=args.all)
    if args.json:
        print_json({"threads": [t.to_dict() for t in infos]})
        return EXIT_OK
    if not infos:
        print("no threads yet")
        return EXIT_OK
    rows = [[t.id, t.state, str(t.head), ", ".join(t.participants), when(t.last_activity), t.topic]
            for t in infos]  # fmt: skip
    print(table(rows, ["THREAD", "STATE", "MSGS", "PARTICIPANTS", "LAST ACTIVITY", "TOPIC"]))
    return EXIT_OK


@command(
    "read",
    help="print a thread's messages",
    args=[
        arg("thread"),
        arg("--after", type=int, default=0, metavar="SEQ"),
        arg("--last", type=int, metavar="N", help="only the last N messages"),
        arg("--limit", type=int, default=100),
    ],
)
def cmd_read(args: argparse.Namespace, here: Here) -> int:
    box = here.open(args)
    after = args.after
    if args.last is not None:
        after = max(after, box.head(args.thread) - args.last)
    page = box.read(args.thread, after, args.limit)
    receipts = Receipts(box)  # how far each recipient has got with a message to someone
    if args.json:
        print_json(
            {
                "messages": [m.to_dict() | receipts.json(m) for m in page.messages],
                "cursor": page.cursor,
                "has_more": page.has_more,
                "skipped": [{"path": d.path, "reason": d.reason} for d in page.skipped],
                "pending": page.pending.to_dict() if page.pending else None,
            }
        )
        return EXIT_OK
    for m in page.messages:
        print(here.show(m) + receipt_line(receipts.of(m), time.time(), color=here.color()))
    trouble(page.skipped, [page.pending] if page.pending else [], args.told)
    if page.pending is not None and not page.pending.blocked:
        print(f"... run `mailslot read {args.thread} --after {page.cursor}` again shortly",
              file=sys.stderr)  # fmt: skip
    if page.has_more:
        print(f"... more: mailslot read {args.thread} --after {page.cursor}")
    return EXIT_OK


@command(
    "post",
    help="post a message (TEXT or - for stdin)",
    args=[
        arg("thread"),
        arg("text"),
        arg("--to", action="append", metavar="AGENT", help="address an agent (repeatable)"),
        arg("--type", default="message", choices=[t for t in TYPES if t != "state"]),
        arg("--priority", default="normal", choices=PRIORITIES),
        arg("--reply-to", type=int, metavar="SEQ"),
        arg("--meta", help="a JSON object stored with the message"),
        arg("--key", help="idempotency key: a retry with the same key is stored once"),
    ],
    who=True,
)
def cmd_post(args: argparse.Namespace, here: Here) -> int:
    box = here.open(args)
    content: str | bytes = args.text
    if args.text == "-":
        content = sys.stdin.buffer.read()
        # `echo hi | mailslot post t -` means "hi": drop the one final newline, as $(...) does.
        content = content[:-2] if content.endswith(b"\r\n") else content.removesuffix(b"\n")
    meta = None
    if args.meta is not None:
        try:
            meta = loads(args.meta)  # bounded: a hostile depth is a ValueError, not a crash
        except ValueError as e:
            raise MailslotError(f"--meta is not JSON: {e}") from None
    thread = args.thread
    message = box.publish(
        thread, content, sender=here.sender(args), to=args.to or [], type=args.type,
        priority=args.priority, reply_to=args.reply_to, meta=meta, idempotency_key=args.key,
    )  # fmt: skip
    if args.json:
        print_json(message.to_dict())
    else:
        print(message.seq)
    return EXIT_OK


@command(
    "tail",
    help="show the latest messages; -f follows live",
    args=[
        arg("threads", nargs="*", metavar="THREAD", help="default: every thread"),
        arg("-f", "--follow", action="store_true", help="keep printing new messages (Ctrl-C ends)"),
        arg("-n", "--lines", type=int, default=10, metavar="N", help="show the last N first"),
    ],
)
def cmd_tail(args: argparse.Namespace, here: Here) -> int:
    box = here.open(args)
    names = args.threads or list(box)
    cursor: dict[str, int] = {}
    backlog: list[Message] = []
    for t in names:
        head = box.head(t)
        backlog += box.read(t, max(0, head - args.lines), max(1, min(args.lines, 1000))).messages
        cursor[t] = head
    backlog.sort(key=lambda m: (m.created_at, m.thread, m.seq))
    _emit(backlog[-args.lines :] if args.lines else [], args, here, thread=True)
    if not args.follow:
        return EXIT_OK
    try:
        while True:  # blocks in wait(): no busy polling; new threads are followed too
            got = box.wait(args.threads or None, cursor, timeout=3600)
            cursor = got.cursor
            _emit(got.messages, args, here, thread=True)
            trouble(got.skipped, got.pending, args.told)
    except KeyboardInterrupt:
        return EXIT_OK  # Ctrl-C is how one stops following
    finally:
        box.close()


@command(
    "wait",
    help="block until new messages; exit 124 on timeout",
    args=[
        arg("thread", nargs="?", help="default: every thread"),
        arg("--after", type=int, metavar="SEQ", help="wait past this seq (default: from now)"),
        arg("--to", metavar="AGENT", help="only messages addressed to AGENT (its inbox)"),
        arg("--timeout", type=float, default=60.0, metavar="S"),
        arg("--limit", type=int, default=100),
    ],
)
def cmd_wait(args: argparse.Namespace, here: Here) -> int:
    box = here.open(args)
    after: int | None = args.after
    try:
        got = box.wait(args.thread, after, to=args.to, timeout=args.timeout, limit=args.limit)
    finally:
        box.close()
    if args.json:
        print_json(got.to_dict())
    else:
        _emit(got.messages, args, here, thread=args.thread is None)
        trouble(got.skipped, got.pending, args.told)
    return EXIT_TIMEOUT if got.timed_out else EXIT_OK


@command(
    "state",
    help="change a thread's state",
    args=[
        arg("thread"),
        arg("state", choices=STATES),
        arg("--summary", help="Markdown summary, typically when closing"),
    ],
    who=True,
)
def cmd_state(args: argparse.Namespace, here: Here) -> int:
    box = here.open(args)
    seq = box.set_state(args.thread, args.state, sender=here.sender(args), summary=args.summary)
    if args.json:
        print_json(box.thread(args.thread).to_dict())
    else:
        print(seq)
    return EXIT_OK


@command(
    "search",
    help='search every thread: words, "phrases", prefix*, OR, NOT; best matches first',
    args=[
        arg("query"),
        arg("--thread", metavar="T"),
        arg("--from", dest="sender", metavar="NAME", help="only messages from NAME"),
        arg("--type", choices=[t for t in TYPES if t != "state"]),
        arg("--to", metavar="AGENT", help="only messages addressed to AGENT"),
        arg(
            "--since",
            metavar="ISO",
            help="only messages created since then: an ISO 8601 date or time, e.g. 2026-12-01 "
            "or 2026-12-01T09:30+02:00 (UTC where no offset is given)",
        ),
        arg("--limit", type=int, default=20),
    ],
)
def cmd_search(args: argparse.Namespace, here: Here) -> int:
    box = here.open(args)
    found = box.search(args.query, thread=args.thread, sender=args.sender, type=args.type,
                       to=args.to, since=args.since, limit=args.limit)  # fmt: skip
    if args.json:
        print_json({"hits": [m.message.to_dict() | {"snippet": m.snippet} for m in found.hits],
                    "total": found.total, "engine": found.engine})  # fmt: skip
        return EXIT_OK
    if not found.hits:
        print("no match (try fewer words, a prefix such as auth*, or OR between words)")
        return EXIT_OK
    on, off = ("\033[1;33m", "\033[0m") if here.color() else ("", "")
    for hit in found.hits:
        m = hit.message
        text = hit.snippet.replace("«", on).replace("»", off) if on else hit.snippet
        print(f"{m.thread} #{m.seq}  {m.sender} ({m.type})  {when(m.created_at)}")
        print(f"    {text}")
    if found.total > len(found.hits):
        print(f"... {found.total - len(found.hits)} more: raise --limit or add filters")
    trouble(found.skipped, [], args.told)
    return EXIT_OK


@command(
    "export",
    help="a thread as Markdown, JSON or HTML",
    args=[arg("thread"),
          arg("--format", choices=["md", "json", "html"], help="default md; --json means json")],
)  # fmt: skip
def cmd_export(args: argparse.Namespace, here: Here) -> int:
    from mailslot.views.transcript import transcript_html, transcript_markdown

    if args.json and args.format not in (None, "json"):
        raise UsageError(f"--json asks for JSON and --format for {args.format}: give one")
    form = "json" if args.json else args.format or "md"
    box = here.open(args)
    if form == "md":
        sys.stdout.write(transcript_markdown(box, args.thread))
    elif form == "html":
        sys.stdout.write(transcript_html(box, args.thread))
    else:
        marked = map(box.trust.mark, box.messages(args.thread))
        doc = {"thread": box.thread(args.thread).to_dict(),
               "messages": [m.to_dict() for m in marked]}  # fmt: skip
        print_json(doc)
    return EXIT_OK
