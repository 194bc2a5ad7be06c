"""One agent at work on a mailbox, built on the library's front (``Mailbox``).

``reading`` is what the agent was shown of each thread and what its inbox owes it; ``inbox``
what its waits return and which tasks it is offered; ``seat`` one process acting as the agent
(its name, presence, and the holds it gives back at exit); ``notices`` what is new for an agent
that is not waiting (hooks, channel pushes).
"""
