"""A thread as one document for people: Markdown (the transcript resource) or an HTML page."""

from __future__ import annotations

import html
import re

from mailslot.mailbox import Mailbox
from mailslot.store.format import ThreadInfo
from mailslot.store.signing import INVALID, UNKNOWN_KEY, UNSIGNED, VALID

#: A message's signature as a transcript says it (docs/signing.md).
SIGNED = {VALID: "✓ signed", INVALID: "✗ INVALID SIGNATURE", UNKNOWN_KEY: "? unknown key",
          UNSIGNED: "unsigned", "": "unsigned"}  # fmt: skip


def transcript_markdown(box: Mailbox, thread: str) -> str:
    """Return a thread as Markdown: a title, its state, then every message in seq order."""
    info = box.thread(thread)
    lines = [
        f"# {info.topic}",
        "",
        f"Thread `{info.id}` · state **{info.state}** · {info.head} messages · "
        f"participants: {', '.join(info.participants) or 'none yet'}",
    ]
    if info.summary:
        label = _summary_label(info)
        lines += ["", f"> **{label}:** " + info.summary.replace("\n", "\n> ")]
    for m in map(box.trust.mark, box.messages(thread)):
        head = f"**#{m.seq} {m.sender}**"
        if m.to:
            head += " → " + ", ".join(m.to)
        tags = [] if m.type == "message" else [m.type]
        if m.priority != "normal":
            tags.append(m.priority)
        if m.reply_to:
            tags.append(f"re #{m.reply_to}")
        head += "".join(f" · {t}" for t in tags) + f" · {m.created_at} · {SIGNED[m.signed or '']}"
        body = m.content
        if m.type == "state":
            body = f"*state: {m.meta.get('previous', '?')} → {m.meta.get('state', '?')}*"
            if m.content:
                body += "\n\n" + m.content
        lines += ["", "---", "", head, "", body]
    return "\n".join(lines) + "\n"


def transcript_html(box: Mailbox, thread: str) -> str:
    """Return a thread as one self-contained HTML page (for an archive or a review)."""
    info = box.thread(thread)
    esc = html.escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(info.topic)}</title>",
        "<style>body{font:15px/1.5 system-ui,sans-serif;max-width:52rem;margin:2rem auto;"
        "padding:0 1rem;color:#222}.m{border-top:1px solid #ddd;padding:.6rem 0}"
        ".h{color:#555;font-size:.9em}.h b{color:#000}.t{display:inline-block;padding:0 .4em;"
        "border-radius:.3em;background:#eef;margin-left:.4em}.c p,.c ul,.c ol{margin:.4em 0}"
        "pre{background:#f6f8fa;padding:.5rem .8rem;overflow-x:auto}"
        "code{font:.9em ui-monospace,monospace}"
        ".s{background:#f6f6f6;padding:.5rem 1rem;border-left:3px solid #888}</style>",
        "</head><body>",
        f"<h1>{esc(info.topic)}</h1>",
        f"<p>Thread <code>{esc(info.id)}</code> · state <b>{esc(info.state)}</b> · "
        f"{info.head} messages · participants: {esc(', '.join(info.participants))}</p>",
    ]
    if info.summary:
        parts.append(
            f'<div class="s"><b>{esc(_summary_label(info))}:</b> '
            f'<div class="c">{markdown_html(info.summary)}</div></div>'
        )
    for m in map(box.trust.mark, box.messages(thread)):
        tags = [esc(m.type)] if m.type != "message" else []
        if m.priority != "normal":
            tags.append(esc(m.priority))
        if m.reply_to:
            tags.append(f'<a href="#m{m.reply_to}">re #{m.reply_to}</a>')
        to = f" → {esc(', '.join(m.to))}" if m.to else ""
        head = (f'<div class="h"><a href="#m{m.seq}"><b>#{m.seq}</b></a> <b>{esc(m.sender)}</b>'
                f"{to}" + "".join(f'<span class="t">{t}</span>' for t in tags)
                + f" · {esc(m.created_at)} · {SIGNED[m.signed or '']}</div>")  # fmt: skip
        body = markdown_html(m.content)
        if m.type == "state":
            change = f"state: {m.meta.get('previous', '?')} → {m.meta.get('state', '?')}"
            body = f"<p><em>{esc(change)}</em></p>" + (body if m.content else "")
        parts.append(f'<div class="m" id="m{m.seq}">{head}<div class="c">{body}</div></div>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _summary_label(info: ThreadInfo) -> str:
    """Return "Summary", or what says it is from before when the thread has moved on since."""
    if info.summary_state and info.summary_state != info.state:
        return f"Summary (from when it was {info.summary_state})"
    return "Summary"


_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})\s*([\w+.#-]*).*")
_ITEM = re.compile(r" {0,3}([-*+]|\d{1,9}[.)])\s+(.*)")
_CODE = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)")
_LINK = re.compile(r"\[([^\]\n]+)\]\((https?://[^\s()]+)\)", re.IGNORECASE)
_EMPHASIS = (
    (re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*"), "strong"),
    (re.compile(r"(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)"), "strong"),
    (re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])"), "em"),
    (re.compile(r"(?<![\w_])_(?=[^\s_])(.+?)(?<=[^\s_])_(?![\w_])"), "em"),
)


def markdown_html(text: str) -> str:
    """Return Markdown as HTML that no message can turn into markup of its own.

    Every character of text is escaped before any tag is made, and tags come only from this
    subset: paragraphs (a single newline is a line break, as in chat), **strong**, *emphasis*,
    `code`, fenced code blocks, lists (-, *, + and 1.), and [links](https://...) to http and
    https addresses only. Anything else (raw HTML, images, javascript: links) shows as text.
    """
    lines = text.replace("\0", "\ufffd").split("\n")  # NUL: what a browser would show anyway
    out: list[str] = []
    para: list[str] = []

    def end_paragraph() -> None:
        if para:
            out.append("<p>" + "<br>\n".join(_inline(line) for line in para) + "</p>")
            para.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.fullmatch(line)
        item = _ITEM.fullmatch(line)
        if fence:
            end_paragraph()
            close, lang, code = fence.group(1), fence.group(2), []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(close):
                code.append(lines[i])
                i += 1
            i += 1  # the closing fence; an unclosed block runs to the end, as in CommonMark
            cls = f' class="language-{html.escape(lang)}"' if lang else ""
            out.append(f"<pre><code{cls}>{html.escape(chr(10).join(code))}</code></pre>")
        elif item:
            end_paragraph()
            ordered = item.group(1)[0].isdigit()
            items: list[str] = []
            start = item.group(1)[:-1] if ordered else ""
            while i < len(lines):
                item = _ITEM.fullmatch(lines[i])
                if item and item.group(1)[0].isdigit() == ordered:
                    items.append(item.group(2))
                elif items and lines[i].startswith((" ", "\t")) and lines[i].strip():
                    items[-1] += "\n" + lines[i].strip()  # a continuation of the item
                else:
                    break
                i += 1
            lis = "".join(
                "<li>" + "<br>\n".join(_inline(x) for x in it.split("\n")) + "</li>" for it in items
            )
            first = f' start="{int(start)}"' if ordered and int(start) != 1 else ""
            out.append(f"<ol{first}>{lis}</ol>" if ordered else f"<ul>{lis}</ul>")
        elif not line.strip():
            end_paragraph()
            i += 1
        else:
            para.append(line)
            i += 1
    end_paragraph()
    return "\n".join(out)


def _inline(raw: str) -> str:
    """Return one line of Markdown as escaped HTML with code spans, links and emphasis."""
    out = []
    at = 0
    for code in _CODE.finditer(raw):
        out.append(_styled(raw[at : code.start()]))
        out.append(f"<code>{html.escape(code.group(2).strip() or code.group(2))}</code>")
        at = code.end()
    out.append(_styled(raw[at:]))
    return "".join(out)


def _styled(raw: str) -> str:
    """Return text without code spans as escaped HTML with links and emphasis."""
    out = []
    at = 0
    for link in _LINK.finditer(raw):
        out.append(_emphasis(html.escape(raw[at : link.start()])))
        href = html.escape(link.group(2), quote=True)
        out.append(f'<a href="{href}">{_emphasis(html.escape(link.group(1)))}</a>')
        at = link.end()
    out.append(_emphasis(html.escape(raw[at:])))
    return "".join(out)


def _emphasis(escaped: str) -> str:
    """Return escaped text with **strong** and *emphasis* made tags (escaping made no * or _)."""
    for pattern, tag in _EMPHASIS:
        escaped = pattern.sub(rf"<{tag}>\1</{tag}>", escaped)
    return escaped
