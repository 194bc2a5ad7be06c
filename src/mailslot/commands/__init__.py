"""The parts of the `mailslot` command below its front (`mailslot.cli`): text for a terminal."""
