"""Commands on tasks: the board (tasks) and claiming or giving one back (claim)."""

from __future__ import annotations

import argparse
import sys

from mailslot.commands.declare import (
    EXIT_ERROR,
    EXIT_OK,
    Here,
    UsageError,
    arg,
    command,
    print_json,
)
from mailslot.coordination.board import STATUSES, iso
from mailslot.views.model import question_view, task_view
from mailslot.views.terminal import table, when


@command(
    "tasks",
    help="the task board: open, claimed (by whom, until when), done and dead tasks",
    args=[
        arg("thread", nargs="?", help="default: every thread"),
        arg("--status", choices=[*STATUSES, "all"], help="only these (default: all but done)"),
    ],
    who=True,
)
def cmd_tasks(args: argparse.Namespace, here: Here) -> int:
    box = here.open(args)
    threads = [args.thread] if args.thread else list(box)
    if args.thread:
        box.thread(threads[0])  # a missing thread fails here, with its readable error
    if box.read_only is None:  # holders that died or stalled let go before we show them
        box.tasks.settle(threads, noticed_by=here.sender(args))
    board = box.tasks.overview(threads, args.status)
    shown, questions, counts = board.tasks, board.questions, board.counts
    if args.json:
        print_json(
           {
               "tasks": [task_view(box, t) for t in shown],
               "counts": counts,
               "questions": [question_view(q) for q in questions],
           }
        )  # fmt: skip
        return EXIT_OK
    if shown:
        rows = []
        for t in shown:
            until = box.tasks.until(t)
            holder = t.holder or (t.done_by if t.status == "done" else "") or ""
            tries = f"{t.attempts}" + (f" ({t.failures} failed)" if t.failures else "")
            rows.append([t.thread, str(t.seq), t.status, holder,
                         when(iso(until)) if until else "", tries, t.sender, t.title])  # fmt: skip
        print(table(rows, ["THREAD", "SEQ", "STATUS", "HOLDER", "UNTIL", "TRIES", "FROM", "TASK"]))
    if questions:
        print("\nunanswered questions:" if shown else "unanswered questions:")
        rows = [[q.thread, str(q.seq), q.sender, ", ".join(q.to), q.title] for q in questions]
        print(table(rows, ["THREAD", "SEQ", "FROM", "TO", "QUESTION"]))
    summary = ", ".join(f"{n} {st}" for st, n in counts.items())
    print(("\n" if shown or questions else "") + f"tasks: {summary}")
    return EXIT_OK


@command(
    "claim",
    help="take a task (you alone work on it until you post its result, or give it back)",
    args=[
        arg("thread"),
        arg("seq", type=int),
        arg(
            "--lease", type=float, metavar="S", help="seconds it stays yours without a sign of work"
        ),
        arg("--release", action="store_true", help="give back a task you hold instead"),
        arg(
            "--holder",
            metavar="NAME",
            help="with --release: take the task back from NAME, recorded as yours",
        ),
    ],
    who=True,
)
def cmd_claim(args: argparse.Namespace, here: Here) -> int:
    box = here.open(args)
    me = here.sender(args)
    if args.holder is not None and not args.release:
        raise UsageError("--holder goes with --release (take NAME's claim back)")
    if args.release:
        holder = args.holder if args.holder not in (None, me) else None
        event = box.tasks.release(args.thread, args.seq, agent=me, holder=holder)
        if args.json:
            print_json(
                {"released": True, "thread": args.thread, "seq": args.seq, "event_seq": event.seq}
                | ({"holder": holder} if holder else {})
            )
        elif holder:
            print(f"took task {args.seq} back from {holder} as {me} (event {event.seq}); "
                  "it is open again")  # fmt: skip
        else:
            print(f"gave task {args.seq} back (event {event.seq}); it is open again")
        return EXIT_OK
    # No process of ours stays to hold it: the claim lasts its lease, renewed by claiming again.
    got = box.tasks.claim(args.thread, args.seq, agent=me, lease_s=args.lease)
    until = iso(got.until) if got.until else None
    if args.json:
        print_json({"claimed": got.won, "thread": args.thread, "seq": args.seq,
                    "holder": got.task.holder, "until": until})  # fmt: skip
    elif got.won:
        close = f"mailslot post {args.thread} TEXT --type result --reply-to {args.seq}"
        print(f"task {args.seq} is yours until {when(until or '')} (claim again to renew); "
              f"`{close}` closes it")  # fmt: skip
    else:
        print(f"{got.task.holder} holds task {args.seq} until {when(until or '')}", file=sys.stderr)
    return EXIT_OK if got.won else EXIT_ERROR
