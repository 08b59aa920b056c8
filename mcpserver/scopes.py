"""OAuth scopes as tool groups, decided in this one place from what the registry knows of a tool:

* `mcp:admin` - tools that need the admin role (whether they write or not);
* `mcp:read`  - read-only tools (`readOnlyHint`), for any role;
* `mcp:exec`  - everything else: tools that run or change something (exec, exec_cancel, ...).

A token without a tool's scope cannot see it in tools/list nor call it (`insufficient_scope`).
API tokens carry all three; their limit is their capability (`governance.policy`).
"""

from __future__ import annotations

from governance.policy import ROLE_ADMIN

SCOPE_READ = "mcp:read"
SCOPE_EXEC = "mcp:exec"
SCOPE_ADMIN = "mcp:admin"


def tool_scope(spec) -> str:
    """The scope a caller's token needs for the registry's tool `spec`."""
    if spec.role == ROLE_ADMIN:
        return SCOPE_ADMIN
    if spec.read_only:
        return SCOPE_READ
    return SCOPE_EXEC


def scope_allows(scopes, spec) -> bool:
    return tool_scope(spec) in (scopes or ())


def insufficient_scope_message(spec) -> str:
    return (
        f"insufficient_scope: this token was not granted {tool_scope(spec)}, which {spec.name} needs; "
        "authorize the client again with that scope"
    )
