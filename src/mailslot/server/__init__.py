"""The parts of `mailslot serve` below its front (`mailslot.stdio_server`): the tool list and
argument errors, the connection's life, resources, prompts, instructions, the stdio transport."""
