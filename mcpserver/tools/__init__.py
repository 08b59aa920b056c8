"""MCP tools, one module per domain. Importing this package registers them all."""

from mcpserver.tools import analysis, audit, connections, execution, identity, rules, schema, sessions  # noqa: F401
