"""The connection kinds: one record per kind, and every fact about a kind derives from it.

`KINDS` is read by the model's choices (`gateway.models.ConnectionKind`), the connector registry
(`gateway.connectors.REGISTRY`, which imports `connector`), the SQL dialect of guardrails, runbooks
and lineage (`governance.guardrails.DIALECTS`), the session page's syntax highlighting
(`sessions.views`), the MCP tools' `kind` enum and settings help (`mcpserver.tools.connections`),
settings validation (`gateway.pipeline.validate_connection_settings`: `enabled_setting`) and exec
(`gateway.pipeline.exec_start` refuses a kind without `exec`). Nothing of Django or the connectors
is imported here, so every layer may read it.

Adding a kind: CONTRIBUTING.md, "Recipe: add a connection kind".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Kind:
    name: str  # stored in Connection.kind and named by every surface
    label: str  # the model's choice label
    connector: str  # dotted path of the `Connector` subclass (only the pipeline imports it)
    settings_help: str  # its settings, for the MCP tools' descriptions (secret ones marked *)
    lexer: str  # Pygments lexer alias for the input on the session page
    dialect: str | None = None  # sqlglot dialect: guardrails, runbooks and lineage parse its input
    exec: bool = True  # False: `exec` is refused (the kind only proxies tools, like `mcp`)
    exec_refusal: str = ""  # what `exec` answers instead, when `exec` is False
    enabled_setting: str = ""  # a Django setting that must be true for the kind to be created...
    enabled_env: str = ""  # ...and the environment variable that sets it (named in the refusal)
    # The admin form, for settings of this kind the shared tables of gateway/admin_editors.py do not
    # describe: how one is typed in ("int", "lines", "bool", "json"; default one line of text)...
    setting_types: Mapping[str, str] = field(default_factory=dict)
    setting_help: Mapping[str, str] = field(default_factory=dict)  # ...and the help under it


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind(
            name="postgres",
            label="PostgreSQL",
            connector="gateway.connectors.postgres.PostgresConnector",
            settings_help="host, port, database, user, password*, sslmode",
            lexer="postgresql",
            dialect="postgres",
        ),
        Kind(
            name="mysql",
            label="MySQL / MariaDB",
            connector="gateway.connectors.mysql.MySQLConnector",
            settings_help="host, port, database, user, password*, ssl_mode, ssl_ca",
            lexer="mysql",
            dialect="mysql",
        ),
        Kind(
            name="sqlite",
            label="SQLite",
            connector="gateway.connectors.sqlite.SQLiteConnector",
            settings_help="path",
            lexer="sql",
            dialect="sqlite",
        ),
        Kind(
            name="command",
            label="Command",
            connector="gateway.connectors.command.CommandConnector",
            settings_help="argv (list), cwd, env*",
            lexer="bash",
            enabled_setting="COMMAND_CONNECTIONS_ENABLED",
            enabled_env="PORTCULLIS_COMMAND_CONNECTIONS",
        ),
        Kind(
            name="mcp",
            label="MCP server",
            connector="gateway.connectors.mcp.MCPConnector",
            settings_help=(
                "url, headers*, bearer_token*, allow_private_network, tools (per-tool policy), "
                "or command (list), cwd, env* for stdio"
            ),
            lexer="json",
            exec=False,
            exec_refusal=(
                "is an MCP server: it has no exec; list its tools with upstream_tools_list and call "
                "them with upstream_call (or at /api/mcp/c/<connection>)"
            ),
        ),
    )
}

KIND_NAMES: tuple[str, ...] = tuple(KINDS)
SQL_DIALECTS: dict[str, str] = {k.name: k.dialect for k in KINDS.values() if k.dialect}  # kind -> dialect


def settings_help() -> str:
    """One line per kind: what the MCP tools say about `settings`."""
    return "; ".join(f"{k.name}: {k.settings_help}" for k in KINDS.values())
