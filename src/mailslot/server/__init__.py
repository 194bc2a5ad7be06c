"""The parts of `mailslot serve` below its front (`mailslot.stdio_server`): the stdio transport."""
