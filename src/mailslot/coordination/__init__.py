"""What agents share on top of the store, each rule decided by a thread's order.

``board`` folds a thread's tasks and questions, ``tasks`` decides claims and hands out again
what a dead or stalled holder had, ``reservations`` (with ``globs``) does the same for files,
``leases`` says how long a hold lasts; ``search`` (``search_index``, ``search_query``,
``search_scan``) finds messages. ``Mailbox`` holds one of each.
"""
