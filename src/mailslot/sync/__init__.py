"""``mailslot sync``: a mailbox kept in step with other clones through a git remote."""
