"""A thread as one document for people: Markdown (the transcript resource) or an HTML page."""

from __future__ import annotations

import html

from mailslot._format import ThreadInfo
from mailslot.mailbox import Mailbox


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
    for m in box.messages(thread):
        head = f"**#{m.seq} {m.sender}**"
        if m.to:
            head += " → " + ", ".join(m.to)
        tags = [] if m.type == "message" else [m.type]
        if m.priority != "normal":
            tags.append(m.priority)
        if m.reply_to:
            tags.append(f"re #{m.reply_to}")
        head += "".join(f" · {t}" for t in tags) + f" · {m.created_at}"
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
        "border-radius:.3em;background:#eef;margin-left:.4em}.c{white-space:pre-wrap}"
        ".s{background:#f6f6f6;padding:.5rem 1rem;border-left:3px solid #888}</style>",
        "</head><body>",
        f"<h1>{esc(info.topic)}</h1>",
        f"<p>Thread <code>{esc(info.id)}</code> · state <b>{esc(info.state)}</b> · "
        f"{info.head} messages · participants: {esc(', '.join(info.participants))}</p>",
    ]
    if info.summary:
        parts.append(
            f'<div class="s"><b>{esc(_summary_label(info))}:</b> '
            f'<span class="c">{esc(info.summary)}</span></div>'
        )
    for m in box.messages(thread):
        tags = [] if m.type == "message" else [m.type]
        if m.priority != "normal":
            tags.append(m.priority)
        if m.reply_to:
            tags.append(f"re #{m.reply_to}")
        to = f" → {esc(', '.join(m.to))}" if m.to else ""
        head = (f'<div class="h"><b>#{m.seq} {esc(m.sender)}</b>{to}'
                + "".join(f'<span class="t">{esc(t)}</span>' for t in tags)
                + f" · {esc(m.created_at)}</div>")  # fmt: skip
        body = m.content
        if m.type == "state":
            body = f"state: {m.meta.get('previous', '?')} → {m.meta.get('state', '?')}"
            body += f"\n{m.content}" if m.content else ""
        parts.append(f'<div class="m" id="m{m.seq}">{head}<div class="c">{esc(body)}</div></div>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _summary_label(info: ThreadInfo) -> str:
    """Return "Summary", or what says it is from before when the thread has moved on since."""
    if info.summary_state and info.summary_state != info.state:
        return f"Summary (from when it was {info.summary_state})"
    return "Summary"
