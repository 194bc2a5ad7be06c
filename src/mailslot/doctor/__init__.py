"""`mailslot doctor`: checking a mailbox folder, and repairing what is safe to repair.

It stands above the library's front (it opens a ``Mailbox`` to sweep and read presence):
``checks`` looks at the root, ``threads`` at threads and messages, ``conflict`` splits git
merge conflicts, ``repair`` is how doctor writes, ``report`` what it tells a person.
"""
