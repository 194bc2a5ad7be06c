"""What agents share on top of the store: tasks, leases, reservations, notices, reading, search."""
