"""Files that git left with merge-conflict markers, split back into the two files it merged.

When two clones both write ``threads/<id>/000042.json`` (or both create the same thread) and
one merges the other, git reports an add/add conflict and writes one file holding both: lines
the two share appear once, lines that differ sit in blocks::

    <<<<<<< ours-label
    lines only ours has
    ||||||| base-label        (merge.conflictStyle=diff3 or zdiff3 only; empty for add/add)
    lines of the common base
    =======
    lines only theirs has
    >>>>>>> theirs-label

Markers are seven characters by default (more with the ``conflict-marker-size`` attribute;
every marker of one block has the length of its opening one). A canonical mailslot file never
has a line starting with ``<``, ``|``, ``=`` or ``>`` (it is indented JSON, and newlines inside
strings are escaped), so such lines are markers, not content.
"""

from __future__ import annotations

_MIN_MARKER = 7
_KINDS = frozenset(b"<|=>")
_NAMES = {ord("<"): "<<<<<<<", ord("|"): "|||||||", ord("="): "=======", ord(">"): ">>>>>>>"}


def _marker(line: bytes) -> tuple[int, int] | None:
    """Return (kind byte, length) if line is a conflict marker line, else None."""
    if len(line) < _MIN_MARKER or line[0] not in _KINDS:
        return None
    body = line.rstrip(b"\r\n")
    kind = body[0]
    n = len(body) - len(body.lstrip(bytes([kind])))
    if n < _MIN_MARKER:
        return None
    rest = body[n:]
    if kind == ord("="):
        return (kind, n) if not rest.strip() else None
    # "<<<<<<< label", or no label at all (git merge-file without -L writes none).
    return (kind, n) if not rest or rest[:1] in (b" ", b"\t") else None


def conflict_sides(data: bytes) -> tuple[bytes, bytes] | None:
    """Return (ours, theirs) rebuilt from a file with git conflict markers; None if it has none.

    Each side is the common lines plus that side's blocks, with the line endings the file has
    (CRLF stays CRLF); diff3 base sections are dropped. A file counts as conflicted when a line
    opens a block (``<<<<<<< ``); after that every marker must be well formed, or ValueError
    says which line is wrong. Costs one substring search for a file without markers.
    """
    if b"<<<<<<<" not in data:
        return None
    lines = data.split(b"\n")
    # split() drops the newlines; put them back (the last piece has none, and may be empty).
    pieces = [line + b"\n" for line in lines[:-1]]
    if lines[-1]:
        pieces.append(lines[-1])
    if not any((m := _marker(p)) is not None and m[0] == ord("<") for p in pieces):
        return None  # "<<<<<<<" only inside a line: no conflict
    ours: list[bytes] = []
    theirs: list[bytes] = []
    state = "common"  # common -> ours -> (base ->) theirs -> common
    size = 0
    opened = 0
    for number, piece in enumerate(pieces, start=1):
        m = _marker(piece)
        if m is not None and state != "common" and m[1] != size:
            m = None  # a marker of another length inside a block is content of that block
        if m is None:
            if state in ("common", "ours"):
                ours.append(piece)
            if state in ("common", "theirs"):
                theirs.append(piece)
            continue
        kind, n = m
        where = f"line {number}: {_NAMES[kind]}"
        if state == "common":
            if kind != ord("<"):
                raise ValueError(f"malformed merge conflict markers: {where} outside a block")
            state, size, opened = "ours", n, number
        elif kind == ord("<"):
            raise ValueError(
                f"malformed merge conflict markers: {where} inside the block opened on line "
                f"{opened}"
            )
        elif state == "ours" and kind == ord("|"):
            state = "base"
        elif state in ("ours", "base") and kind == ord("="):
            state = "theirs"
        elif state == "theirs" and kind == ord(">"):
            state = "common"
        else:
            raise ValueError(
                f"malformed merge conflict markers: {where} out of order in the block opened on "
                f"line {opened}"
            )
    if state != "common":
        raise ValueError(
            f"malformed merge conflict markers: the file ends inside the block opened on line "
            f"{opened}"
        )
    return b"".join(ours), b"".join(theirs)
