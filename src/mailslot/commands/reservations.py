"""Commands on reservations of the repository's paths: reservations, reserve, release."""

from __future__ import annotations

import argparse
import sys

from mailslot.commands.declare import EXIT_ERROR, EXIT_OK, Here, arg, command, print_json
from mailslot.coordination.board import iso
from mailslot.coordination.reservations import held_view
from mailslot.views.terminal import table, when


@command("reservations", help="who holds which paths of the repository, until when, and why")
def cmd_reservations(args: argparse.Namespace, here: Here) -> int:
    box = here.open(args)
    held = box.reservations.live()
    if args.json:
        print_json({"reservations": [held_view(h, box.reservations.until(h)) for h in held]})
        return EXIT_OK
    if not held:
        print("no reservations")
        return EXIT_OK
    rows = [[h.pattern, h.holder, "exclusive" if h.exclusive else "shared", when(iso(h.since)),
             when(iso(box.reservations.until(h))), h.reason] for h in held]  # fmt: skip
    print(table(rows, ["PATH", "HOLDER", "KIND", "SINCE", "UNTIL", "WHY"]))
    return EXIT_OK


@command(
    "reserve",
    help="reserve paths you will edit (all of them, or none if someone holds any)",
    args=[
        arg("paths", nargs="+", metavar="PATH", help="repository-relative files, folders, globs"),
        arg("--shared", action="store_true", help="only keep others from reserving exclusively"),
        arg("--ttl", type=float, metavar="S", help="seconds it lasts (reserve again to renew)"),
        arg("--reason", help="why, for the others"),
    ],
    who=True,
)
def cmd_reserve(args: argparse.Namespace, here: Here) -> int:
    box = here.open(args)
    # No process of ours stays to hold them: they last their TTL, renewed by reserving again.
    grant = box.reservations.reserve(args.paths, agent=here.sender(args), exclusive=not args.shared,
                        ttl_s=args.ttl, reason=args.reason)  # fmt: skip
    held = grant.held if grant.granted else grant.conflicts
    if args.json:
        print_json({"granted": grant.granted,
                    "reserved" if grant.granted else "conflicts":
                        [held_view(h, box.reservations.until(h)) for h in held]})  # fmt: skip
    elif grant.granted:
        until = when(iso(box.reservations.until(held[0])))
        print(f"reserved {', '.join(h.pattern for h in held)} until {until} "
              "(reserve again to renew; `mailslot release` gives them back)")  # fmt: skip
        if grant.whole_repo:
            print("note: this reserves the whole repository", file=sys.stderr)
    else:
        for h in held:
            why = f" ({h.reason})" if h.reason else ""
            print(f"refused: {h.holder} holds {h.pattern} until "
                  f"{when(iso(box.reservations.until(h)))}{why}", file=sys.stderr)  # fmt: skip
    return EXIT_OK if grant.granted else EXIT_ERROR


@command(
    "release",
    help="give back your reservations of paths (all of yours without PATH)",
    args=[
        arg("paths", nargs="*", metavar="PATH"),
        arg(
            "--holder",
            metavar="NAME",
            help="free NAME's reservations instead (all of them without PATH), recorded as "
            "freed by you and naming NAME",
        ),
    ],
    who=True,
)
def cmd_release(args: argparse.Namespace, here: Here) -> int:
    box = here.open(args)
    me = here.sender(args)
    holder = args.holder if args.holder not in (None, me) else None
    released, not_held = box.reservations.release(args.paths or None, agent=me, holder=holder)
    if args.json:
        print_json({"released": sorted({h.pattern for h in released}), "not_held": not_held}
                   | ({"holder": holder} if holder else {}))  # fmt: skip
    else:
        whose = f"{holder}'s" if holder else "yours"
        if released:
            freed = ", ".join(sorted({h.pattern for h in released}))
            print(f"freed {holder}'s reservation of {freed} (recorded as freed by {me})"
                  if holder else f"released {freed}")  # fmt: skip
        for p in not_held:
            print(f"not {whose}: {p} (nothing to give back)", file=sys.stderr)
        if not released and not not_held:
            print(f"{holder} held no reservations" if holder else "you held no reservations",
                  file=sys.stderr)  # fmt: skip
    return EXIT_OK if released or not (args.paths or not_held) else EXIT_ERROR
