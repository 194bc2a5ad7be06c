"""The reference for bench/server.py: the smallest stdio server on the same SDK as mailslot.

One tool, `echo`, returns its input. What a call of it costs is what the SDK costs; what
`mailslot serve` costs beyond that is mailslot's.
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

server = MCPServer("minimal")


@server.tool()
def echo(text: str) -> str:
    """Return the text."""
    return text


if __name__ == "__main__":
    server.run("stdio")
