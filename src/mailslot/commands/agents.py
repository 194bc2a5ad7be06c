"""Commands on agents: who is there (agents), their cards (register), do not disturb (dnd)."""

from __future__ import annotations

import argparse

from mailslot.agent.pressure import set_dnd
from mailslot.commands.declare import EXIT_OK, Here, arg, command, print_json
from mailslot.store.errors import NoSuchAgent
from mailslot.views.terminal import agents_table


@command("agents", help="who is online, waiting, idle or offline")
def cmd_agents(args: argparse.Namespace, here: Here) -> int:
    from mailslot.tools import Session

    agents = Session(here.open(args)).agent_list()["agents"]
    if args.json:
        print_json({"agents": agents})
        return EXIT_OK
    if not agents:
        print("no agents yet")
        return EXIT_OK
    print(agents_table(agents, color=here.color()))
    return EXIT_OK


@command(
    "register",
    help="create or update an agent card",
    args=[arg("name"), arg("--client"), arg("--model"), arg("--description")],
)
def cmd_register(args: argparse.Namespace, here: Here) -> int:
    box = here.open(args)
    card = box.agents.register(
        args.name, client=args.client, model=args.model, description=args.description
    )
    if args.json:
        print_json(card.to_dict())
    else:
        print(f"registered {card.name}")
    return EXIT_OK


@command(
    "dnd",
    help="do not disturb an agent: its hooks and pushes hold off, msg_wait still delivers",
    args=[arg("name"), arg("--off", action="store_true", help="lift it")],
    who=True,
)
def cmd_dnd(args: argparse.Namespace, here: Here) -> int:
    box = here.open(args)
    if args.name not in box.agents.names() and box.agents.presence_doc(args.name) is None:
        raise NoSuchAgent(args.name, box.agents.names())
    was = set_dnd(box, args.name, not args.off, by=here.sender(args))
    if args.json:
        print_json({"agent": args.name, "dnd": not args.off, "was": was})
    elif args.off:
        print(
            f"{args.name} may be disturbed again"
            + (": its next hook or push reports what was held" if was else " (it was not held)")
        )
    else:
        print(
            f"do not disturb {args.name}: its hooks and pushes hold off until "
            f"`mailslot dnd {args.name} --off`; msg_wait still delivers"
        )
    return EXIT_OK
