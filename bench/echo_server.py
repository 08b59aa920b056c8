"""The floor of an MCP tool call: a bare `mcp` SDK server with one `echo` tool and nothing else,
served over streamable HTTP by uvicorn on loopback, with the SDK's defaults.

    python bench/echo_server.py PORT          # serves http://127.0.0.1:PORT/mcp

`peer_postgres_mcp.py` starts it in a subprocess, so its CPU is its own and not the client's.
"""

from __future__ import annotations

import sys

import uvicorn
from mcp.server.mcpserver import MCPServer

server = MCPServer("bench-echo")


@server.tool()
def echo(text: str) -> str:
    """Echo the text back."""
    return text


if __name__ == "__main__":
    uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
