"""Commands that set a mailbox up and check it: init, demo, doctor, mcp-config."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from mailslot.clients import configs, hook_configs
from mailslot.commands.declare import EXIT_ERROR, EXIT_OK, Here, arg, command, print_json
from mailslot.commands.serve import serve_ui
from mailslot.mailbox import Mailbox, default_root
from mailslot.store.errors import MailslotError
from mailslot.views.terminal import doctor_report


@command(
    "init",
    help="create a mailbox root",
    args=[
        arg("path", nargs="?",
            help="where (default: .mailslot/ at the top of the git checkout, else here)"),
        arg("--no-fsync", action="store_true", help="scratch folder: do not fsync messages"),
        arg("--shared", action="store_true",
            help="shared by the users of the folder's group (converts an existing mailbox)"),
    ],
)  # fmt: skip
def cmd_init(args: argparse.Namespace, here: Here) -> int:
    path = Path(args.path) if args.path else (Path(args.root) if args.root else default_root())
    box = Mailbox.init(path, fsync=not args.no_fsync, shared=args.shared)
    if args.json:
        print_json({"root": str(box.root), "format": box.settings.format,
                    "shared": box.settings.shared, "changes": box.shared_changes})  # fmt: skip
    else:
        print(f"mailbox ready at {box.root}")
        for line in box.shared_changes:
            print(f"  {line}")
        print("next: connect an agent, e.g. `mailslot mcp-config claude-code --install` "
              "(or cursor, vscode, codex, gemini, claude-desktop); `mailslot demo` shows three "
              "agents at work, `mailslot ui` the mailbox in your browser")  # fmt: skip
    return EXIT_OK


@command(
    "demo",
    help="watch three agents collaborate through a fresh mailbox",
    args=[
        arg("--root", help="an empty folder for the demo's mailbox (default: a temp folder)"),
        arg("--ui", action="store_true", help="then show the conversation in `mailslot ui`"),
    ],
    root=False,
    json=False,
)
def cmd_demo(args: argparse.Namespace, here: Here) -> int:
    import anyio

    from mailslot import demo

    if args.root:
        root = Path(args.root)
        if root.exists() and any(root.iterdir()):
            raise MailslotError(f"{root} is not empty; give the demo a new or empty folder")
    else:
        root = Path(tempfile.mkdtemp(prefix="mailslot-demo-")) / ".mailslot"
    by_cd = root.name == ".mailslot" and not here.env("MAILSLOT_ROOT")
    command = here.command()
    anyio.run(lambda: demo.run(root, sys.stdout, color=here.color(), command=command, by_cd=by_cd))
    if args.ui:  # leave the conversation open in the console
        args.sender = None
        return serve_ui(Mailbox(root), here.sender(args), 0, False)
    return EXIT_OK


@command(
    "doctor",
    help="check the folder; --fix repairs what is safe",
    args=[arg("--fix", action="store_true")],
)
def cmd_doctor(args: argparse.Namespace, here: Here) -> int:
    from mailslot.commands.sync import status_line
    from mailslot.doctor.checks import diagnose
    from mailslot.sync.state import read_status

    root = here.root(args)
    report = diagnose(root, fix=args.fix)
    synced = read_status(root / ".state" / "sync" / "status.json") or None  # None: never synced
    if args.json:
        print_json({**report.to_dict(), "sync": synced})
    else:
        line = status_line(synced) if synced else None
        print(doctor_report(report, fix=args.fix, color=here.color(), sync=line))
    return EXIT_OK if report.healthy else EXIT_ERROR


@command(
    "mcp-config",
    help="print (or --install) a client's MCP config",
    args=[
        arg("client", choices=configs.CLIENTS),
        arg("--agent", help="the agent's name (default: one per client, e.g. claude)"),
        arg("--install", action="store_true", help="merge it into the file the client reads"),
        arg("--path", help="install into this file instead"),
        arg("--hooks", action="store_true",
            help="also the hooks that bring mail into the agent's turns "
                 "(claude-code, codex, gemini; for the agent of the server entry)"),
        arg("--channel", action="store_true",
            help="claude-code: serve --channel, which pushes new messages to an idle session"),
    ],
)  # fmt: skip
def cmd_mcp_config(args: argparse.Namespace, here: Here) -> int:
    root = here.root(args).resolve()
    Mailbox(root)  # fail here, clearly, if it is not a mailbox
    agent = args.agent or configs.AGENT_NAMES[args.client]  # the hooks' too: one name
    if args.hooks:
        hook_configs.hook_groups(args.client, agent)  # refuse before anything is written
    project = root.parent if root.name == ".mailslot" else Path.cwd()
    home = Path.home()
    at = configs.place(args.client, root, project)  # what may be left to the machine
    hooked = hook_configs.hook_options(at, root)
    path = Path(args.path) if args.path else configs.target(args.client, project, home, at)
    if not args.install:
        text = configs.render(args.client, root, agent, channel=args.channel, at=at)
        if args.json:  # the entry as JSON, and the file's text (TOML for codex) as a string
            doc = {"client": args.client, "agent": agent, "root": str(root), "path": str(path),
                   "server": configs.entry(args.client, root, agent, channel=args.channel,
                                            at=at),
                   "text": text}  # fmt: skip
            if args.hooks:
                doc["hooks"] = hook_configs.hooks_doc(args.client, agent, **hooked)
                targets = hook_configs.hooks_targets(args.client, project, home, at)
                doc["hooks_paths"] = {k: str(v) for k, v in targets.items()}
            if args.channel:
                doc["launch"] = configs.CHANNEL_LAUNCH
            hint = configs.run_hint(args.client, agent)
            doc["run"] = hint.split(": ", 1)[1] if hint else None
            print_json(doc)
        else:
            sys.stdout.write(text)
            if args.hooks:
                snippet = hook_configs.hooks_snippet(
                    args.client, agent, project, home, at=at, **hooked
                )
                sys.stdout.write(snippet)
            if args.channel:
                sys.stderr.write(configs.channel_hint())
            if (run := configs.run_hint(args.client, agent)) is not None:
                print(run, file=sys.stderr)  # stdout is the file's text
        return EXIT_OK
    where = configs.keys(args.client, path, project, home)
    how = configs.install(args.client, path, root, agent, channel=args.channel, at=at,
                           where=where)  # fmt: skip
    done = (hook_configs.install_hooks(args.client, agent, project, home, at=at, **hooked)
            if args.hooks else [])  # fmt: skip
    notes = configs.install_notes(args.client, path, at, project, home)
    if args.json:
        print_json({"client": args.client, "path": str(path), "result": how, "agent": agent,
                    "hooks": done, "notes": notes,
                    "launch": configs.CHANNEL_LAUNCH if args.channel else None})  # fmt: skip
    else:
        if how == "unchanged":
            print(f"mailslot (agent {agent!r}, root {root}) is already in {path}: nothing changed")
        else:
            print(f"{how} mailslot (agent {agent!r}, root {root}) in {path}")
        run = configs.run_hint(args.client, agent)
        for line in done + notes + ([run] if run else []):
            print(line)
        if args.channel:
            sys.stdout.write(configs.channel_hint())
    return EXIT_OK
