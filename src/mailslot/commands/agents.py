"""Commands on agents: who is there (agents) and their cards (register)."""

from __future__ import annotations

import argparse

from mailslot.commands.declare import EXIT_OK, Here, arg, command, print_json
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
