"""What the model reads for arguments a tool does not take or that do not fit: what is wrong,
what is allowed, and the call to make instead (nothing was done)."""

from __future__ import annotations

import difflib
import re
from typing import Any

from pydantic import ValidationError

from mailslot.tools import TOOL_NAMES

# Names models reach for that a tool calls otherwise, tried in order (the first the tool has);
# difflib finds the rest (after_sq, tread, ...).
SYNONYMS = {
    "to": ("recipients", "recipient", "addressees", "agents", "for", "cc", "mention", "mentions"),
    "reply_to": ("in_reply_to", "reply", "parent", "reply_seq", "replying_to", "respond_to"),
    "after_seq": ("after", "since_seq", "from_seq", "last_seq", "next_after_seq", "cursor"),
    "content": ("body", "text", "message", "msg", "markdown", "contents"),
    "query": ("q", "text", "search", "terms", "keywords"),
    "timeout_s": ("timeout", "timeout_seconds", "wait_s", "seconds", "wait", "timeout_ms"),
    "thread": ("thread_id", "topic", "channel", "room", "thread_name", "conversation"),
    "topic": ("title", "subject", "name", "thread"),
    "type": ("kind", "message_type", "msg_type"),
    "idempotency_key": ("key", "dedupe_key", "idempotency", "request_id"),
    "sender": ("from", "author", "agent"),
    "seq": ("task", "task_seq", "task_id", "id", "message_seq"),
    "paths": ("path", "files", "file", "globs", "patterns"),
    "state": ("status",),
    "status": ("state",),
    "lease_s": ("lease", "lease_seconds", "ttl", "ttl_s"),
    "ttl_s": ("ttl", "lease_s", "lease", "expires_s"),
    "limit": ("max", "count", "n", "page_size", "max_results", "top_k"),
    "name": ("agent", "agent_name", "agent_id"),
}


def unknown_tool_text(name: str) -> str:
    """Return what the model reads for a tool that does not exist: the nearest, and all."""
    near = difflib.get_close_matches(name, TOOL_NAMES, n=1, cutoff=0.5)
    guess = f"; did you mean {near[0]}?" if near else "."
    return f"Unknown tool: {name}{guess} The tools are: {', '.join(TOOL_NAMES)}"


def unknown_text(tool: str, unknown: list[str], schema: dict[str, Any]) -> str:
    """Return what the model reads for arguments a tool does not take: the closest real name
    of each, and that nothing was done."""
    props = list(schema.get("properties", {}))
    problems = []
    for arg in unknown:
        near = _closest(arg, props)
        problems.append(f"unknown argument '{arg}'" + (f": did you mean '{near}'?" if near else ""))
    return f"{'; '.join(problems)} Nothing was done. {usage(tool, schema)}"


def _closest(arg: str, props: list[str]) -> str | None:
    """Return the property of props that arg most likely meant, or None."""
    # afterSeq and reply-to read as after_seq and reply_to (difflib then finds them).
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", arg).replace("-", "_").lower().strip()
    for prop, names in SYNONYMS.items():
        if prop in props and snake in names:
            return prop
    near = difflib.get_close_matches(snake, props, n=1, cutoff=0.6)
    return near[0] if near else None


def usage(tool: str, schema: dict[str, Any]) -> str:
    """Return the sentence that tells the model to call tool again, with its arguments."""
    props: dict[str, Any] = schema.get("properties", {})
    if not props:
        return f"{tool} takes no arguments: call {tool}() again"
    required = [p for p in schema.get("required", [])]
    args = ", ".join([*required, *(f"{p}?" for p in props if p not in required)])
    return f"Call {tool}({args}) again with that fixed"


def numeric(spec: dict[str, Any]) -> bool:
    """Return True if a parameter's schema takes a number (alone or beside null)."""
    kinds = [spec.get("type"), *(o.get("type") for o in spec.get("anyOf", []))]
    return "integer" in kinds or "number" in kinds


def argument_text(tool: str, error: ValidationError, schema: dict[str, Any]) -> str:
    """Return what the model reads for arguments that do not fit: what, what is allowed, next."""
    props: dict[str, Any] = schema.get("properties", {})
    problems = []
    for item in error.errors():
        param = str(item["loc"][0]) if item["loc"] else "arguments"
        spec = props.get(param, {})
        problems.append(f"'{param}' {_what_is_wrong(item, spec, param)}")
    return f"{'; '.join(problems)}. {usage(tool, schema)}"


def _what_is_wrong(item: Any, spec: dict[str, Any], param: str) -> str:
    kind, got = item["type"], item.get("input")
    about = f" ({spec['description']})" if spec.get("description") else ""
    choices = _choices(spec)
    if kind == "missing":
        return f"is required{about}"
    if choices:
        return f"must be one of {', '.join(map(str, choices))}, not {_shown(got)}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return f"must be {_bounds(spec)}, not {_shown(got)}"
    example = {"to": '["bob"]', "paths": '["src/app/**"]'}.get(param, "[...]")
    if kind == "list_type":
        return f"must be a list, e.g. {example}, not {_shown(got)}"
    if kind == "too_short":
        least = item.get("ctx", {}).get("min_length", 1)
        return f"needs at least {least} item{'s' * (least != 1)}{about}, e.g. {example}"
    if kind == "too_long":
        most = item.get("ctx", {}).get("max_length")
        return f"takes at most {most} items, not {len(got)}; pass fewer (a folder or a glob)"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"must be a whole number, not {_shown(got)}"
    if kind in ("float_parsing", "float_type"):
        return f"must be a number, not {_shown(got)}"
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false, not {_shown(got)}"
    if kind in ("string_type",):
        return f"must be text, not {_shown(got)}"
    if kind in ("dict_type", "model_type"):
        return f"must be a JSON object, not {_shown(got)}"
    return f"is not valid: {item['msg'].lower()} (got {_shown(got)})"


def _shown(value: Any, most: int = 80) -> str:
    """Return value as the model sent it, cut to most characters: an error that repeats a
    100 KB argument back would fill the model's context with its own mistake."""
    text = repr(value)
    return text if len(text) <= most else f"{text[: most - 20]}... ({len(text)} characters)"


def _choices(spec: dict[str, Any]) -> list[Any]:
    if "enum" in spec:
        return list(spec["enum"])
    for option in spec.get("anyOf", []):
        if "enum" in option:
            return list(option["enum"])
    return []


def _bounds(spec: dict[str, Any]) -> str:
    for option in [spec, *spec.get("anyOf", [])]:
        parts = []
        if "minimum" in option:
            parts.append(f">= {option['minimum']}")
        if "exclusiveMinimum" in option:
            parts.append(f"> {option['exclusiveMinimum']}")
        if "maximum" in option:
            parts.append(f"<= {option['maximum']}")
        if parts:
            return " and ".join(parts)
    return "within its bounds"
