"""What agents share on top of the store, each rule decided by the thread's order.

``board`` folds a thread's tasks and questions, ``tasks`` decides claims and hands out again
what a dead or stalled holder had, ``reservations`` (with ``globs``) does the same for files,
``leases`` says how long a hold lasts; ``reading`` is what an agent was shown, ``inbox`` what
its waits return and which tasks it is offered, ``seat`` one process acting as the agent,
``notices`` what is new for an agent that is not waiting; ``search`` (``search_index``,
``search_query``, ``search_scan``) finds messages.
"""
