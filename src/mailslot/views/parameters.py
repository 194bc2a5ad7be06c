"""The tools' parameter types, with the descriptions the model reads in each input schema.

Each description is a few words: the whole tools/list, descriptions included, stays under 8 KB.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

State = Literal["discuss", "implement", "review", "done", "closed", "archived"]
MsgType = Literal["message", "task", "result", "status", "error", "question"]
Priority = Literal["low", "normal", "high", "urgent"]
# Parameter types with the descriptions the model reads in each tool's input schema.
Topic = Annotated[str, Field(description="What the thread is about; same topic, same thread")]
Limit = Annotated[int, Field(ge=1, le=200)]
Summary = Annotated[str | None, Field(description="Markdown; typically when closing")]
Content = Annotated[str, Field(description="The message, usually Markdown")]
To = Annotated[list[str] | None, Field(description="Agents addressed (see agent_list)")]
ReplyTo = Annotated[
    int | None, Field(ge=1, description="Seq of the message answered; a result/error: the task's")
]
Key = Annotated[str | None, Field(description="A retry with the same key is stored once")]
AfterSeq = Annotated[int, Field(ge=0, description="Seq to read past; 0: from the start")]
WaitThread = Annotated[
    str | None, Field(description="Thread id or topic; omit to wait on your inbox (any thread)")
]
ThreadId = Annotated[str, Field(description="Thread id (or its topic)")]
WaitAfter = Annotated[
    int | None, Field(ge=0, description="Seq to wait past: next_after_seq of the last call")
]
UntilRead = Annotated[
    int | None,
    Field(ge=1, description="Seq of a message with recipients: wait until all have read it"),
]
WaitTimeout = Annotated[
    float | None,
    Field(gt=0, description="Seconds; default 50, capped at 600; many clients cut calls at 60"),
]
AgentName = Annotated[str | None, Field(description="Stable lowercase name; omit to keep yours")]
Description = Annotated[str | None, Field(description="What you do, for the other agents")]
TaskSeq = Annotated[
    int | None, Field(ge=1, description="Seq of the task; omit to take the next one open to you")
]
NextTask = Annotated[
    bool, Field(description="With a result: also take this thread's next task open to you")
]
LeaseS = Annotated[
    float | None,
    Field(ge=1, le=86400, description="Seconds without a sign of work before it is handed out"),
]
TaskStatus = Annotated[
    Literal["open", "claimed", "done", "dead", "all"] | None,
    Field(description="Default: all but done"),
]
Mine = Annotated[bool, Field(description="Only tasks you hold or can take")]
Agent = Annotated[str | None, Field(description="An agent's name")]
Paths = Annotated[
    list[str],
    Field(min_length=1, max_length=100, description="Repository-relative files, folders or globs"),
]
ListThread = Annotated[str | None, Field(description="Thread id or topic; omit for all threads")]
Since = Annotated[
    str | None,
    Field(
        description="ISO date or time, e.g. 2026-12-01 or 2026-12-01T09:30+02:00 (UTC if no offset)"
    ),
]
