"""The code's layout keeps the promises docs/layout.md makes: layers that import only downwards,
no import circles, and rooms of a size a newcomer can read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "mailslot"

# A layer may import its own modules and the layers below it, never one above.
LAYERS = {
    "store": 0,
    "coordination": 1,
    "mailbox": 2,  # the library's front: store and coordination behind Mailbox
    "agent": 3,  # one agent at work: reading, inbox delivery, seat, notices (each takes a Mailbox)
    "doctor": 4,  # `mailslot doctor`: it opens a Mailbox to sweep and read presence
    "sync": 5,  # `mailslot sync`: a git remote kept in step (it moves messages as doctor does)
    "views": 6,  # what the front doors show: JSON, the tools' inputs, transcripts, terminal text
    "tools": 7,
    "server": 8,  # server/, console/ and clients/ stand side by side: none imports another
    "console": 8,
    "clients": 8,
    "stdio_server": 9,
    "demo": 9,  # `mailslot demo`: three agents through the server, started by a command
    "commands": 10,
    "cli": 11,
}
MAX_MODULE, MAX_CLASS, MAX_FUNCTION = 500, 400, 60
# Functions longer than MAX_FUNCTION that are one obvious table.
TABLES: set[str] = set()


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = ast.parse(path.read_text(encoding="utf-8"))
    return found


def imports(tree: ast.Module, name: str = "") -> set[str]:
    """Return the mailslot modules tree (the module name) imports at run time (not under
    TYPE_CHECKING); a name of the package's face (`from mailslot import Mailbox`) is the
    library's front."""
    out: set[str] = set()
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package the module is in
                parts = ["mailslot", *name.split(".")[: -node.level or None]]
                module = ".".join([*parts, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if module != "mailslot" and not module.startswith("mailslot."):
                continue
            base = module.removeprefix("mailslot").lstrip(".")
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                if (PACKAGE / Path(*sub.split("."))).with_suffix(".py").exists():
                    out.add(sub)
                elif base:
                    out.add(base)
                elif alias.name != "__version__":
                    out.add("mailbox")  # the package's face hands on the library's front
        elif isinstance(node, ast.Import):
            out |= {a.name.removeprefix("mailslot.") for a in node.names
                    if a.name.startswith("mailslot.")}  # fmt: skip
    return {m for m in out if m}


def layer(module: str) -> int | None:
    return LAYERS.get(module.split(".")[0])


def test_every_layer_imports_only_itself_and_the_layers_below() -> None:
    found = modules()
    assert {m.split(".")[0] for m in found} - {"__init__", "__main__", ""} <= set(LAYERS)
    upward = []
    for name, tree in found.items():
        mine = layer(name)
        for target in imports(tree, name):
            theirs = layer(target)
            if mine is None or theirs is None or theirs <= mine:
                continue
            upward.append(f"{name} -> {target}")
    assert not upward, "imports that run up a layer (docs/layout.md):\n" + "\n".join(upward)


def test_no_import_circles() -> None:
    graph = {name: imports(tree, name) & set(modules()) for name, tree in modules().items()}
    circles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    circles.append(" -> ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert not circles, "import circles:\n" + "\n".join(sorted(set(circles)))


@pytest.mark.parametrize("name", sorted(modules()))
def test_rooms_are_of_a_readable_size(name: str) -> None:
    tree = modules()[name]
    lines = max((getattr(n, "end_lineno", 0) or 0 for n in ast.walk(tree)), default=0)
    too_big = [f"module {name}: {lines} lines"] if lines > MAX_MODULE else []
    for node in ast.walk(tree):
        size = (node.end_lineno or node.lineno) - node.lineno + 1 if hasattr(node, "lineno") else 0
        if isinstance(node, ast.ClassDef) and size > MAX_CLASS:
            too_big.append(f"class {node.name}: {size} lines")
        function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        if function and size > MAX_FUNCTION and f"{name}.{node.name}" not in TABLES:
            too_big.append(f"function {node.name}: {size} lines")
    assert not too_big, "split these (docs/layout.md): " + "; ".join(too_big)


LAYOUT = PACKAGE.parent.parent / "docs" / "layout.md"


def test_the_layout_page_names_every_room_from_the_ground_up() -> None:
    """docs/layout.md lists the layers in their order and names every module in its row."""
    text = LAYOUT.read_text(encoding="utf-8")
    rows = {
        line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| `")
    }

    def row_of(top: str) -> str:
        found = [
            line for head, line in rows.items() if f"`{top}/`" in head or f"`{top}.py`" in head
        ]
        assert found, f"docs/layout.md has no row for {top}"
        return found[0]

    order = sorted(LAYERS, key=lambda top: list(rows.values()).index(row_of(top)))
    assert [LAYERS[top] for top in order] == sorted(LAYERS[top] for top in order), order
    for name in modules():
        top, _, rest = name.partition(".")
        if rest and rest != "__init__":
            assert f"`{rest}`" in row_of(top), f"docs/layout.md does not name {top}/{rest}.py"


def test_every_declared_command_is_in_the_parser() -> None:
    """A command declared in commands/ and left out of cli.COMMANDS would vanish silently."""
    import importlib
    import pkgutil

    from mailslot import cli, commands
    from mailslot.commands.declare import Command

    declared = set()
    for info in pkgutil.iter_modules(commands.__path__):
        module = importlib.import_module(f"mailslot.commands.{info.name}")
        declared |= {v.name for v in vars(module).values() if isinstance(v, Command)}
    assert declared == {c.name for c in cli.COMMANDS}


def test_the_import_reader_sees_relative_imports_and_the_package_face() -> None:
    """The layer check reads `from .. import x` and `from mailslot import Mailbox` too."""
    relative = ast.parse("from .. import tools\nfrom . import files\n")
    assert imports(relative, "store.format") == {"tools", "store.files"}
    face = ast.parse("from mailslot import Mailbox, __version__\n")
    assert imports(face, "store.format") == {"mailbox"}
