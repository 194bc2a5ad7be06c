"""The tools as tools/list shows them: each Session method's docstring and argument schema,
trimmed of what the model does not need, cached between starts."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata, func_metadata
from mcp.types import Tool as MCPTool
from mcp.types import ToolAnnotations

from mailslot.tools import TOOL_NAMES, Session

log = logging.getLogger("mailslot.serve")

READ_ONLY = {
    "thread_list", "thread_get", "msg_list", "msg_wait", "msg_search", "task_list",
    "agent_list", "bus_get_config",
}  # fmt: skip


def _describe(name: str, args: FuncMetadata) -> MCPTool:
    """Return the tool for Session.<name> as tools/list shows it."""
    method = getattr(Session, name)
    return MCPTool(
        name=name,
        # What the model reads, without what it does not need: pydantic's titles repeat each
        # property's name, and docstrings carry their source indentation.
        description=" ".join((method.__doc__ or "").split()),
        input_schema=_untitled(args.arg_model.model_json_schema(by_alias=True)),
        # Only the hint that differs from the protocol's default (not read-only) is sent.
        annotations=ToolAnnotations(read_only_hint=True) if name in READ_ONLY else None,
    )


def argument_model(name: str) -> FuncMetadata:
    """Return the SDK's argument model of Session.<name>, with its JSON pre-parsing."""
    return func_metadata(getattr(Session, name), skip_names=["self"], structured_output=False)


def tool_list() -> list[MCPTool]:
    """Return the tools as tools/list shows them, from a cache this very code wrote if any.

    Making them builds an argument model and a schema per tool, a third of what mailslot adds
    to the server's start; the cache (in $XDG_CACHE_HOME/mailslot/) is keyed by the source of
    the tools and of this module and by pydantic's version, so a change to any is never
    served stale. A cache that cannot be read or written is made anew, silently.
    """
    import hashlib
    import os

    import pydantic

    from mailslot import tools

    digest = hashlib.sha256(pydantic.VERSION.encode())
    for source in (tools.__file__, __file__):
        with open(source, "rb") as f:
            digest.update(f.read())
    home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    path = os.path.join(home, "mailslot", f"tools-{digest.hexdigest()[:20]}.json")
    try:
        with open(path, "rb") as f:
            docs = json.loads(f.read())
        listed = [MCPTool.model_validate(doc) for doc in docs] if isinstance(docs, list) else []
        if [t.name for t in listed] == list(TOOL_NAMES):
            return listed
    except (OSError, ValueError, RecursionError):
        pass  # made anew below
    listed = [_describe(name, argument_model(name)) for name in TOOL_NAMES]
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        docs = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in listed]
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(docs, f)
        os.replace(tmp, path)
    except OSError as e:
        log.debug("tool list not cached: %s", e)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return listed


def _untitled(schema: dict[str, Any]) -> dict[str, Any]:
    """Return a tool's input schema without the titles pydantic generates, nor null defaults."""
    out = {k: v for k, v in schema.items() if k != "title"}
    props = out.get("properties")
    if isinstance(props, dict):
        out["properties"] = {  # a null default says nothing a non-required property does not
            name: _not_null(
                {k: v for k, v in spec.items() if k != "title" and (k, v) != ("default", None)}
            )
            for name, spec in props.items()
        }
    return out


def _not_null(spec: dict[str, Any]) -> dict[str, Any]:
    """Return spec without its "or null" (anyOf [X, null] becomes X): a property that is not
    required can be left out, which is what a model does; a null sent anyway is still taken
    (validation is the argument model's, not the schema's). A third of tools/list saved."""
    options = spec.get("anyOf")
    if not isinstance(options, list) or len(options) != 2 or {"type": "null"} not in options:
        return spec
    [other] = [o for o in options if o != {"type": "null"}]
    return {**other, **{k: v for k, v in spec.items() if k != "anyOf"}}
