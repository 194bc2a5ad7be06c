"""The store: the folder's format and the primitives every writer and reader uses."""
