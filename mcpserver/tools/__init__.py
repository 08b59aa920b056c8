"""MCP tools, one module per domain. Importing this package registers them all."""

from mcpserver.tools import (  # noqa: F401
    access_control,
    admin_ops,
    analysis,
    audit,
    connections,
    execution,
    identity,
    reviews,
    rules,
    runbooks,
    schema,
    sessions,
    upstream,
    users,
)

# isort: split
# Last: config serves the kinds of record the modules above declare.
from mcpserver.tools import config  # noqa: F401,E402
