"""MCP tools, one module per domain. Importing this package registers them all."""

from mcpserver.tools import connections, execution, identity, schema, sessions  # noqa: F401
