"""The store: the folder's format and the primitives every writer and reader uses.

``format``, ``names`` and ``errors`` say what a message, a name and a failure are; ``files``
(with ``flock`` and ``modes``) is how bytes become a message; ``log`` reads a thread, ``publish``
writes one, ``threads`` knows them all; ``agents``, ``presence`` and ``positions`` are who is
there and what each was shown; ``wait`` and ``watch`` wake readers; ``roots`` and ``settings``
find a mailbox and read ``mailslot.json``.
"""
