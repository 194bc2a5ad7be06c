"""Edit a client's JSON (JSONC) or TOML file as text: one member or table goes in or is
replaced, and every other byte (comments, formatting, other keys) stays where it was.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mailslot.store.errors import MailslotError


def toml_value(value: Any) -> str:
    """Return value as TOML text (a dict as an inline table)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def toml_table(server: dict[str, Any]) -> str:
    """Return server as the TOML table [mcp_servers.mailslot]."""
    lines = ["[mcp_servers.mailslot]"] + [f"{k} = {toml_value(v)}" for k, v in server.items()]
    return "\n".join(lines) + "\n"


def replace_toml_table(text: str, table: str) -> str:
    """Return text with our [mcp_servers.mailslot] table (and its sub-tables) replaced by table,
    or table appended; every other line stays as it is."""
    kept: list[str] = []
    at: int | None = None
    ours = False
    for line in text.splitlines():
        header = line.strip()
        if header.startswith("["):
            name = header.strip("[]").strip()
            ours = name == "mcp_servers.mailslot" or name.startswith("mcp_servers.mailslot.")
            if ours and at is None:
                at = len(kept)
        if not ours:
            kept.append(line)
    block = [*table.rstrip("\n").splitlines(), ""]
    if at is None:
        while kept and not kept[-1].strip():
            kept.pop()
        kept += ([""] if kept else []) + block
    else:
        kept[at:at] = block
    return "\n".join(kept).rstrip("\n") + "\n"


def strip_comments(text: str) -> str:
    """Return JSONC text as JSON of the same length: comments and trailing commas become spaces.

    Raise ValueError for an unterminated comment.
    """
    return _blank_trailing_commas(blank_comments(text))


def blank_comments(text: str) -> str:
    """Return text with its // and /* */ comments made spaces (newlines kept), so offsets in
    the result are offsets in text. Raise ValueError for an unterminated comment."""
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                out[i] = " "
                i += 1
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise ValueError(f"unterminated /* comment at offset {i}")
            for j in range(i, end + 2):
                out[j] = out[j] if text[j] in "\r\n" else " "
            i = end + 2
            continue
        i += 1
    return "".join(out)


def _blank_trailing_commas(plain: str) -> str:
    """Return comment-free JSONC with each comma before a closing bracket made a space."""
    out, i, n, comma = list(plain), 0, len(plain), -1
    while i < n:
        c = plain[i]
        if c == '"':
            comma = -1
            i += 1
            while i < n and plain[i] != '"':
                i += 2 if plain[i] == "\\" else 1
        elif c == ",":
            comma = i
        elif c in "}]" and comma >= 0:
            out[comma] = " "
            comma = -1
        elif not c.isspace():
            comma = -1
        i += 1
    return "".join(out)


_DECODER = json.JSONDecoder()


def _skip_space(plain: str, i: int) -> int:
    while i < len(plain) and plain[i].isspace():
        i += 1
    return i


def _members(plain: str, start: int) -> tuple[dict[str, tuple[int, int, int]], int]:
    """Return the members of the object opening at start, {key: (key at, value at, value end)},
    and the offset of its closing brace. plain is JSON, or JSONC with comments blanked."""
    members: dict[str, tuple[int, int, int]] = {}
    strict = _blank_trailing_commas(plain)  # values are decoded as JSON; offsets are the same
    i = _skip_space(plain, start + 1)
    if plain[i] == "}":
        return members, i
    while True:
        key, after = _DECODER.raw_decode(strict, i)
        colon = _skip_space(plain, after)
        at = _skip_space(plain, colon + 1)
        _, end = _DECODER.raw_decode(strict, at)
        members[key] = (i, at, end)  # a repeated key: the last one counts, as in json.loads
        i = _skip_space(plain, end)
        if plain[i] == ",":
            i = _skip_space(plain, i + 1)
        if plain[i] == "}":
            return members, i


def _indent_of(text: str, at: int) -> str:
    line = text[text.rfind("\n", 0, at) + 1 : at]
    return line[: len(line) - len(line.lstrip())]


def put_member(text: str, plain: str, keys: list[str], value: Any) -> str:
    """Return text with the member at the path keys set to value, everything else unchanged.

    plain is text with its comments blanked (the same offsets). The objects on the path must
    exist or be missing (the caller checked); missing ones are made. New lines are indented
    like their neighbours; a one-line object stays on one line.
    """
    start = _skip_space(plain, 0)
    for depth, key in enumerate(keys):
        members, close = _members(plain, start)
        nested: Any = value
        for k in reversed(keys[depth + 1 :]):
            nested = {k: nested}
        if key in members and depth < len(keys) - 1:
            start = members[key][1]
            continue
        if key in members:  # replace the value, where it stands
            key_at, at, end = members[key]
            if "\n" in plain[start:close]:
                pad = _indent_of(text, key_at)
                body = json.dumps(nested, indent=2, ensure_ascii=False).replace("\n", "\n" + pad)
            else:
                body = json.dumps(nested, ensure_ascii=False)
            return text[:at] + body + text[end:]
        return _add_member(text, plain, start, close, members, key, nested)
    raise ValueError("no keys to set")


def _add_member(
    text: str,
    plain: str,
    start: int,
    close: int,
    members: dict[str, tuple[int, int, int]],
    key: str,
    value: Any,
) -> str:
    """Return text with "key": value added as the last member of the object at start..close."""
    name = json.dumps(key, ensure_ascii=False)
    if members and "\n" not in plain[start:close]:  # a one-line object: stay on one line
        last = max(end for _, _, end in members.values())
        return f"{text[:last]}, {name}: {json.dumps(value, ensure_ascii=False)}{text[last:]}"
    outer = _indent_of(text, start)
    if members:
        pad = _indent_of(text, min(k for k, _, _ in members.values()))
    else:
        pad = outer + ("\t" if outer.startswith("\t") else "  ")
    member = f"{name}: " + json.dumps(value, indent=2, ensure_ascii=False).replace("\n", "\n" + pad)
    if not members:
        return f"{text[: start + 1]}\n{pad}{member}\n{outer}{text[close:]}"
    last = max(end for _, _, end in members.values())
    return _append_after(text, plain, last, pad, member)


def _append_after(text: str, plain: str, last: int, pad: str, item: str) -> str:
    """Return text with item added on a line of its own (indented by pad) after the value
    that ends at last, the last one of its object or array."""
    # After the last member's line, so a comment on that line stays with it; a comma follows
    # the last value unless one (a trailing comma) already does.
    comma = _skip_space(plain, last)
    has_comma = plain[comma] == ","
    line_end = plain.find("\n", last)
    rest = plain[(comma + 1 if has_comma else last) : line_end if line_end >= 0 else len(plain)]
    at = line_end if line_end >= 0 and not rest.strip() else last
    if has_comma and at == last:
        at = comma + 1
    head = text[:last] + ("" if has_comma else ",") + text[last:at]
    return f"{head}\n{pad}{item}{text[at:]}"


def read_json(path: Path, text: str, jsonc: bool) -> tuple[dict[str, Any], str]:
    """Return the object text holds and text with comments blanked; MailslotError if none."""
    kind = "JSON (comments allowed)" if jsonc else "JSON"
    try:
        plain = blank_comments(text) if jsonc else text
        doc = json.loads(_blank_trailing_commas(plain) if jsonc else plain)
    except ValueError as e:
        raise MailslotError(
            f"{path} is not valid {kind} ({e}); fix it first, nothing was written"
        ) from None
    if not isinstance(doc, dict):
        raise MailslotError(f"{path} does not hold a JSON object; nothing was written")
    return doc, plain


def value_at(plain: str, keys: list[str]) -> int:
    """Return the offset of the value at the path keys (all present) of the JSON in plain."""
    at = _skip_space(plain, 0)
    for key in keys:
        at = _members(plain, at)[0][key][1]
    return at


def _elements(plain: str, start: int) -> tuple[list[tuple[int, int]], int]:
    """Return the (start, end) of each element of the array opening at start, and the offset
    of its closing bracket. plain is JSON, or JSONC with comments blanked."""
    strict = _blank_trailing_commas(plain)
    found: list[tuple[int, int]] = []
    i = _skip_space(plain, start + 1)
    while plain[i] != "]":
        _, end = _DECODER.raw_decode(strict, i)
        found.append((i, end))
        i = _skip_space(plain, end)
        if plain[i] == ",":
            i = _skip_space(plain, i + 1)
    return found, i


def append_element(text: str, plain: str, start: int, value: Any) -> str:
    """Return text with value added as the last element of the array opening at start."""
    found, close = _elements(plain, start)
    if found and "\n" not in plain[start:close]:  # a one-line array: stay on one line
        last = found[-1][1]
        return f"{text[:last]}, {json.dumps(value, ensure_ascii=False)}{text[last:]}"
    outer = _indent_of(text, start)
    pad = _indent_of(text, found[0][0]) if found else outer + ("\t" if "\t" in outer else "  ")
    item = json.dumps(value, indent=2, ensure_ascii=False).replace("\n", "\n" + pad)
    if not found:
        return f"{text[: start + 1]}\n{pad}{item}\n{outer}{text[close:]}"
    return _append_after(text, plain, found[-1][1], pad, item)


def replace_element(text: str, plain: str, start: int, index: int, value: Any) -> str:
    """Return text with element index of the array opening at start replaced by value."""
    found, close = _elements(plain, start)
    at, end = found[index]
    if "\n" in plain[start:close]:
        body = json.dumps(value, indent=2, ensure_ascii=False).replace(
            "\n", "\n" + _indent_of(text, at)
        )
    else:
        body = json.dumps(value, ensure_ascii=False)
    return text[:at] + body + text[end:]


def write(path: Path, text: str) -> None:
    """Write text to the file at path (making its folder) by replacing it with a new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.mailslot-tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
