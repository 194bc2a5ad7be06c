"""The files a shell command clearly writes, read from its text without running it.

The edit-time guard (`edit_guard`) asks this of every shell tool call. It sees what the words
say: output redirections (``>``, ``>>``, ``2>``, ``&>``, ``>|``, ``<>``), and the operands of
the commands that write the files they name: ``rm``, ``unlink``, ``rmdir``, ``shred``,
``tee``, ``touch``, ``truncate``, ``sed -i``, ``mv`` (both ends), ``cp``, ``ln`` and
``install`` (the destination), ``dd of=``. Commands follow each other over ``&&``, ``||``,
``;``, ``|``, ``&``, newlines and parentheses; ``cd DIR`` moves where later relative paths
start; ``sh -c '...'`` (bash, zsh...) is read inside; ``sudo``, ``env``, ``nohup``, ``time``
and the like are looked through; here-document bodies are skipped.

What it cannot see, it leaves alone: a word with ``$`` or a backquote (a variable, a command's
output), what a script, ``python -c``, ``make`` or ``git`` writes, and files reached through
``xargs`` or ``find -exec``. A glob stays a glob (``src/*.py``): the guard compares it with
the reservations as a pattern. Text it cannot split (an unclosed quote) yields nothing.
"""

from __future__ import annotations

import os
import re
import shlex

PUNCTUATION = ";&|<>()\n"
MAX_DEPTH = 4  # sh -c inside sh -c ...

#: Words that start a compound command or negate one: skipped before the command's name.
RESERVED = frozenset({"if", "then", "else", "elif", "fi", "do", "done", "while", "until",
                      "!", "{", "}", "time", "case", "esac", "for", "in"})  # fmt: skip
#: Commands that run the rest of their words as another command, with their options that
#: take a value.
WRAPPERS: dict[str, frozenset[str]] = {
    "sudo": frozenset({"-u", "-g", "-h", "-p", "-C", "-D", "-r", "-t", "-U"}),
    "doas": frozenset({"-u", "-C"}),
    "env": frozenset({"-u", "-C", "-S"}),
    "nice": frozenset({"-n"}),
    "nohup": frozenset(),
    "command": frozenset(),
    "builtin": frozenset(),
    "exec": frozenset({"-a"}),
    "stdbuf": frozenset({"-i", "-o", "-e"}),
    "timeout": frozenset({"-s", "-k"}),
    "time": frozenset({"-f", "-o"}),
}
SHELLS = frozenset({"sh", "bash", "zsh", "dash", "ksh", "mksh", "ash", "busybox"})
#: Commands whose every operand is a file they write, with their options that take a value.
WRITE_ALL: dict[str, frozenset[str]] = {
    "rm": frozenset(),
    "unlink": frozenset(),
    "rmdir": frozenset(),
    "shred": frozenset({"-n", "-s", "--iterations", "--size", "--random-source"}),
    "tee": frozenset(),
    "touch": frozenset({"-d", "-t", "-r", "--date", "--reference"}),
    "truncate": frozenset({"-s", "-r", "--size", "--reference"}),
}
#: Commands with sources then a destination (or -t DIR), and their options that take a value.
COPIERS: dict[str, frozenset[str]] = {
    "mv": frozenset({"-S", "--suffix", "-t", "--target-directory"}),
    "cp": frozenset({"-S", "--suffix", "-t", "--target-directory"}),
    "ln": frozenset({"-S", "--suffix", "-t", "--target-directory"}),
    "install": frozenset({"-S", "--suffix", "-t", "--target-directory", "-m", "--mode", "-o",
                          "--owner", "-g", "--group"}),
}  # fmt: skip
SED_VALUES = frozenset({"-e", "-f", "-l", "--expression", "--file", "--line-length"})
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_HEREDOC = re.compile(r"(?<!<)<<-?\s*(['\"]?)([A-Za-z0-9_.-]+)\1")
_FD = re.compile(r"\d+")


def written(command: str, cwd: str) -> list[str]:
    """Return the paths command clearly writes, each joined to where it runs (cwd, or where a
    ``cd`` went); a glob stays in them. Nothing when the text cannot be split."""
    return _written(command, cwd, 0)


def _written(command: str, cwd: str, depth: int) -> list[str]:
    try:
        tokens = _tokens(_without_heredocs(command))
    except ValueError:
        return []
    out: list[str] = []
    base = cwd
    for words, targets in _commands(tokens):
        out += [_at(base, t) for t in targets]
        base, paths = _command(words, base, depth)
        out += paths
    return out


def _at(base: str, path: str) -> str:
    """Return path as the shell reads it from base: a leading ~ is the home folder."""
    return os.path.join(base, os.path.expanduser(path))


def _without_heredocs(text: str) -> str:
    """Return text without the bodies of its here-documents (the lines they feed a command)."""
    if "<<" not in text:
        return text
    lines, kept, until = text.split("\n"), [], None
    for line in lines:
        if until is not None:
            if line.strip() == until:
                until = None
            continue
        kept.append(line)
        found = [m.group(2) for m in _HEREDOC.finditer(line)]
        if found:
            until = found[-1]
    return "\n".join(kept)


def _tokens(text: str) -> list[str]:
    lex = shlex.shlex(text, posix=True, punctuation_chars=PUNCTUATION)
    lex.whitespace = " \t\r"
    lex.whitespace_split = True
    lex.commenters = ""
    out: list[str] = []
    comment = False
    for token in lex:
        if comment:
            comment = "\n" not in token
            if comment:
                continue
        elif token.startswith("#"):
            comment = True
            continue
        out.append(token)
    return out


def _is_operator(token: str) -> bool:
    return bool(token) and all(c in PUNCTUATION for c in token)


def _commands(tokens: list[str]) -> list[tuple[list[str], list[str]]]:
    """Split tokens into simple commands: (their words, the files their redirections write)."""
    out: list[tuple[list[str], list[str]]] = []
    words: list[str] = []
    targets: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not _is_operator(token):
            words.append(token)
        elif ">" in token:  # >, >>, >|, &>, &>>, >&, <>
            target = tokens[i + 1] if i + 1 < len(tokens) else ""
            if words and _FD.fullmatch(words[-1]):
                words.pop()  # the descriptor of 2> (or a lone number before >: no file)
            dup = token.endswith("&") and (_FD.fullmatch(target) or target == "-")
            if target and not _is_operator(target) and not dup:
                targets.append(target)
            i += 1
        elif "<" in token:  # <, <<, <<<: what follows is read, not written
            i += 1
        else:  # ; & | && || newlines ( ): the next command
            out.append((words, targets))
            words, targets = [], []
        i += 1
    out.append((words, targets))
    return out


def _command(words: list[str], base: str, depth: int) -> tuple[str, list[str]]:
    """Return (where the next command runs, the paths this one writes)."""
    words = _unwrapped(words)
    if not words:
        return base, []
    name, args = os.path.basename(words[0]), words[1:]
    if name == "cd":
        operands = [a for a in args if not a.startswith("-")]
        if len(operands) == 1 and not _opaque(operands[0]) and not operands[0].startswith("~"):
            return _at(base, operands[0]), []
        return base, []
    if name in SHELLS and depth < MAX_DEPTH:
        script = _shell_script(args)
        return base, [] if script is None else _written(script, base, depth + 1)
    if name in WRITE_ALL:
        return base, [_at(base, a) for a in _operands(args, WRITE_ALL[name])[0]]
    if name == "sed":
        return base, [_at(base, a) for a in _sed(args)]
    if name in COPIERS:
        return base, _copied(name, args, base)
    if name == "dd":
        return base, [_at(base, a[3:]) for a in args if a.startswith("of=")]
    return base, []


def _unwrapped(words: list[str]) -> list[str]:
    """Return words from the command's own name: without assignments, reserved words and
    wrappers such as sudo, env, nohup (and their options)."""
    i = 0
    while i < len(words):
        word = words[i]
        if word in RESERVED or _ASSIGNMENT.match(word):
            i += 1
            continue
        values = WRAPPERS.get(os.path.basename(word))
        if values is None:
            break
        i += 1
        while i < len(words) and (words[i].startswith("-") or _ASSIGNMENT.match(words[i])):
            i += 2 if words[i] in values else 1
        if os.path.basename(word) == "timeout" and i < len(words):
            i += 1  # its duration
    return words[i:]


def _operands(args: list[str], values: frozenset[str]) -> tuple[list[str], dict[str, str]]:
    """Return a command's operands, and the values of its options that take one."""
    operands: list[str] = []
    given: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            operands += args[i + 1 :]
            break
        if arg.startswith("--") and "=" in arg:
            key, _, value = arg.partition("=")
            given[key] = value
        elif arg in values and i + 1 < len(args):
            given[arg] = args[i + 1]
            i += 1
        elif arg.startswith("-") and len(arg) > 1:
            if arg[:2] in values and not arg.startswith("--"):
                given[arg[:2]] = arg[2:]  # -tDIR
        else:
            operands.append(arg)
        i += 1
    return operands, given


def _shell_script(args: list[str]) -> str | None:
    """Return the script of ``sh -c SCRIPT`` (options such as -e, -l may come with the c)."""
    for i, arg in enumerate(args):
        if not arg.startswith("-"):
            return None
        if not arg.startswith("--") and "c" in arg[1:]:
            rest = [a for a in args[i + 1 :] if not a.startswith("-")]
            return rest[0] if rest else None
    return None


def _sed(args: list[str]) -> list[str]:
    """Return the files ``sed -i`` edits in place; none without -i."""
    in_place = any(
        a.startswith("--in-place")
        or (a.startswith("-") and not a.startswith("--") and re.fullmatch(r"-[nrEsuz]*i.*", a))
        for a in args
    )
    if not in_place:
        return []
    operands, given = _operands(args, SED_VALUES)
    scripted = any(k in given for k in ("-e", "-f", "--expression", "--file"))
    return operands if scripted else operands[1:]


def _copied(name: str, args: list[str], base: str) -> list[str]:
    """Return what mv, cp, ln or install write: the destination (a file in it, when it is a
    folder), and for mv the sources too, which it takes away."""
    operands, given = _operands(args, COPIERS[name])
    folder = given.get("-t") or given.get("--target-directory")
    if folder is None:
        if len(operands) < 2:
            return []
        *sources, dest = operands
    else:
        sources, dest = operands, folder
    dest = _at(base, dest)
    into = folder is not None or dest.endswith("/") or len(sources) > 1 or os.path.isdir(dest)
    out = [os.path.join(dest, os.path.basename(s.rstrip("/"))) for s in sources] if into else [dest]
    gone = [_at(base, s) for s in sources] if name == "mv" else []
    return [*gone, *out]


def _opaque(word: str) -> bool:
    """Tell whether a word's value is only known when the shell runs it ($VAR, `cmd`)."""
    return "$" in word or "`" in word


__all__ = ["written"]
