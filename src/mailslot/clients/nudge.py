"""`mailslot run`'s nudges: one line typed into an idle agent's client when news came for it.

What is news is `Notices`' rule, the one hooks and channel pushes share (and a nudge marks
what it named reported, so they do not repeat it). When to type is decided here:

- **idle**: the client wrote nothing for ``quiet`` seconds (busy clients redraw a spinner or a
  timer at least every second), the person pressed no key for ``typing`` seconds, no line is
  half typed, and, for Claude Code, Codex and Gemini CLI, their terminal screen (kept with
  pyte) shows their empty prompt's hint at the bottom and no "esc to interrupt/cancel": a
  permission question, a login or a trust dialog is as quiet as a prompt, and a typed line
  and Enter would answer it. For any other program quiet output and the keys alone decide.
- **a half typed line**: any key of the person's since the last Enter, Ctrl-C or Ctrl-U (what
  the terminal itself reports, focus, mouse and cursor reports, is no key); for the three
  clients, their empty prompt on screen says the line is empty again.
- **bursts**: news is gathered until none came for ``settle`` seconds (at most
  ``settle_max`` after the first), and one line names it all.
- **gap**: at least ``gap`` seconds between two nudges.
- **do not disturb** (`mailslot dnd NAME`, or the agent's own): no nudge while it is on; what
  came meanwhile is nudged once it is lifted.
- **pause**: Ctrl-] then p pauses and resumes this run's nudges (Ctrl-] twice types one).

News is found through ``.state/news`` (one ``stat`` every ``poll`` seconds while nothing is
told), then `Notices.new` in the threads it named.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mailslot.agent.notices import News, Notices
from mailslot.agent.pressure import dnd_of
from mailslot.store.errors import MailslotError
from mailslot.store.news import NewsReader

if TYPE_CHECKING:
    from mailslot.mailbox import Mailbox

CHORD = 0x1D  # Ctrl-]: the next key is for run (p: pause or resume nudges)
ENTER = b"\r"  # what the three clients and a terminal's line discipline take as Enter
LINE_ENDS = frozenset(b"\r\n\x03\x15")  # Enter, Ctrl-C and Ctrl-U leave no half typed line
NAMED = 3  # sender-thread pairs a nudge names; the rest are counted
# What the terminal says of itself through the keyboard's side: focus in and out, mouse
# reports (SGR and X10), cursor position, device attributes, mode and keyboard-flag reports,
# OSC replies (colours). None of it is the person typing.
REPORTS = re.compile(
    rb"\x1b\[[IO]|\x1b\[<[\d;]*[Mm]|\x1b\[M[\s\S]{3}|\x1b\[\d+;\d+R|\x1b\[[?>][\d;]*c"
    rb"|\x1b\[\?[\d;]*\$y|\x1b\[\?\d*u|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"
)
# Per client (the program's name): the hint its empty prompt shows, and what it shows while a
# turn runs. From the pinned versions .ci/run installs (the strings are in their code).
PROMPTS: dict[str, tuple[str, ...]] = {
    "claude": ("? for shortcuts",),
    "codex": ("for shortcuts",),
    "gemini": ("Type your message",),
}
BUSY = ("esc to interrupt", "esc to cancel")
BOTTOM_ROWS = 12  # where on the screen the prompt's hint is looked for


@dataclass(frozen=True)
class Rules:
    """When a nudge may be typed (seconds); see the module docstring."""

    quiet: float = 2.0
    typing: float = 3.0
    settle: float = 0.5
    settle_max: float = 3.0
    gap: float = 30.0
    poll: float = 0.5
    enter_after: float = 0.5  # the line, then Enter: typed at once it reads as a paste


def nudge_line(news: list[News]) -> str:
    """Return the one line typed for news: how many, from whom where, and the call to make.

    Names and thread ids only (both are slugs): the line is typed as if by the person, so no
    word of a message goes into it.
    """
    pairs: list[tuple[str, str]] = []
    for n in news:
        pair = (n.message.sender, n.message.thread)
        if pair not in pairs:
            pairs.append(pair)
    named = ", ".join(f"{s} in {t}" for s, t in pairs[:NAMED])
    more = f" +{len(pairs) - NAMED} more" if len(pairs) > NAMED else ""
    return f"mailslot: {len(news)} new for you (from {named}{more}) - call msg_wait() to read them"


class Screen:
    """The client's screen, kept from its output, and whether its empty prompt is showing."""

    def __init__(self, client: str, rows: int, cols: int) -> None:
        import pyte  # only a run of a known client keeps a screen

        class _Screen(pyte.Screen):
            def select_graphic_rendition(self, *attrs: int, **kwargs: Any) -> None:
                if not kwargs.get("private"):  # CSI > ... m (key modifiers): not a colour
                    super().select_graphic_rendition(*attrs)

        self.hints = PROMPTS[client]
        self.screen = _Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)

    def feed(self, data: bytes) -> None:
        self.stream.feed(data)

    def resize(self, rows: int, cols: int) -> None:
        self.screen.resize(rows, cols)

    def at_prompt(self) -> bool:
        """Return True if the prompt's hint is on the bottom rows and no turn is running."""
        bottom = "\n".join(self.screen.display[-BOTTOM_ROWS:])
        return any(h in bottom for h in self.hints) and not any(b in bottom for b in BUSY)


class Nudger:
    """Beside `clients.relay`: what the person types and the client writes, and the nudges."""

    def __init__(
        self,
        box: Mailbox,
        agent: str,
        client: str | None,
        rules: Rules = Rules(),
        *,
        title: Callable[[str], None] | None = None,
    ) -> None:
        now = time.monotonic()
        self.box, self.agent, self.rules = box, agent, rules
        self.client = client if client in PROMPTS else None
        self.screen: Screen | None = None
        self.title = title or (lambda _text: None)
        self.news = NewsReader(box.root)
        self.news.read()  # from here on; what came before, the first look finds
        self.threads: set[str] | None = None  # where news may be (None: every thread)
        self.first: float | None = now  # when news was first seen since the last nudge
        self.since = now  # when news was last seen (settle from there)
        self.next_poll = now
        self.last_output = now
        self.last_key = float("-inf")  # no key yet
        self.half_typed = False
        self.chord = False
        self.paused = False
        self.last_nudge: float | None = None
        self.enter_at: float | None = None  # when the typed line's Enter is due

    # ------------------------------------------------------------------ what passes by

    def typed(self, data: bytes, now: float) -> bytes:
        out = bytearray()
        for b in data:
            if self.chord:
                self.chord = False
                if b in b"pP":
                    self.paused = not self.paused
                    self.title(f"mailslot: nudges {'paused' if self.paused else 'on'}")
                    continue
                if b != CHORD:
                    out.append(CHORD)
                out.append(b)
            elif b == CHORD:
                self.chord = True
            else:
                out.append(b)
        keys = REPORTS.sub(b"", bytes(out))
        if keys:
            self.last_key = now
            self.enter_at = None  # the person typed over a nudge: no Enter of ours
            last_end = max((i for i, b in enumerate(keys) if b in LINE_ENDS), default=-1)
            self.half_typed = last_end != len(keys) - 1
        return bytes(out)

    def output(self, data: bytes, now: float) -> None:
        self.last_output = now
        if self.screen is not None:
            self.screen.feed(data)

    def resize(self, rows: int, cols: int) -> None:
        if self.client is not None and self.screen is None:
            self.screen = Screen(self.client, rows, cols)
        elif self.screen is not None:
            self.screen.resize(rows, cols)

    # ------------------------------------------------------------------ when to type

    def idle(self, now: float) -> bool:
        """Return True if the agent sits at its prompt and the person is not typing."""
        r = self.rules
        if now - self.last_output < r.quiet or now - self.last_key < r.typing:
            return False
        if self.screen is not None:
            return self.screen.at_prompt()  # an empty prompt: nothing half typed
        return not self.half_typed

    def tick(self, now: float, send: Callable[[bytes], None]) -> None:
        if self.enter_at is not None:
            if now >= self.enter_at:
                self.enter_at = None
                send(ENTER)
            return
        if now >= self.next_poll:
            self.next_poll = now + self.rules.poll
            self._poll(now)
        r = self.rules
        if self.first is None or self.paused:
            return
        if now - self.since < r.settle and now - self.first < r.settle_max:
            return  # a burst still coming
        if self.last_nudge is not None and now - self.last_nudge < r.gap:
            return
        if not self.idle(now) or dnd_of(self.box, self.agent) is not None:
            return
        self._nudge(now, send)

    def _poll(self, now: float) -> None:
        told = self.news.read()
        if told is None or told:
            self.threads = None if told is None or self.threads is None else self.threads | told
            self.since = now
            if self.first is None:
                self.first = now

    def _nudge(self, now: float, send: Callable[[bytes], None]) -> None:
        notices = Notices(self.box, self.agent)
        try:
            news = notices.new(threads=self.threads)
        except MailslotError:
            return  # looked again at the next tick
        self.threads, self.first = set(), None
        if notices.more:  # left out: look everywhere again after the gap
            self.threads, self.first = None, now
        if not news:
            return
        send(nudge_line(news).encode())
        notices.mark(news)
        self.last_nudge = now
        self.enter_at = now + self.rules.enter_after
