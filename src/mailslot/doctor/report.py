"""What `mailslot doctor` reports: findings, and the report of a root that holds them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: What to do about a file someone put in the mailbox, which readers ignore.
YOURS = "leave it, or move it out of the mailbox; --fix never touches it"


@dataclass
class Finding:
    """One thing doctor noticed: what, where, what it means, and what to do about it.

    A problem leaves the mailbox unhealthy until it is fixed. A note does not: a file someone
    put there that readers ignore, or a leftover that is normal. ``fix`` says what
    ``doctor --fix`` does about it (None: --fix leaves it alone); ``todo`` what a person does
    instead, or first.
    """

    kind: str
    path: str
    detail: str
    fixed: str | None = None
    fix: str | None = None
    todo: str | None = None
    note: bool = False

    @property
    def outstanding(self) -> bool:
        """Return True if this is a problem not fixed yet."""
        return not self.note and not self.fixed

    def to_dict(self) -> dict[str, Any]:
        """Return the finding as a JSON-able dict."""
        return {"kind": self.kind, "path": self.path, "detail": self.detail,
                "severity": "note" if self.note else "problem", "fix": self.fix,
                "todo": self.todo, "fixed": self.fixed}  # fmt: skip


@dataclass
class Report:
    """What doctor found in a root, and what the filesystem under it can do."""

    root: str
    filesystem: str | None = None
    network: bool = False
    wait_mode: str | None = None
    hard_links: bool | None = None
    locks: bool | None = None
    threads: int = 0
    messages: int = 0
    findings: list[Finding] = field(default_factory=list)
    #: The top of the git work tree holding the root, if it is in one.
    git_work_tree: str | None = None

    @property
    def healthy(self) -> bool:
        """Return True if no problem is left unfixed (notes do not count)."""
        return not any(f.outstanding for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-able dict."""
        return {
            "root": self.root,
            "healthy": self.healthy,
            "filesystem": self.filesystem,
            "network": self.network,
            "wait_mode": self.wait_mode,
            "hard_links": self.hard_links,
            "locks": self.locks,
            "threads": self.threads,
            "messages": self.messages,
            "git_work_tree": self.git_work_tree,
            "findings": [f.to_dict() for f in self.findings],
        }
