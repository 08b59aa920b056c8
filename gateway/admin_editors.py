"""The connection form's settings editor: one input per setting of the chosen kind.

`KIND_SETTINGS` lists each kind's non-secret settings as its connector declares them
(`required_keys`, `optional_keys`), read through the pipeline (only it imports connectors).

Like the rule editors (`governance.admin_editors`) it only turns inputs into the `config` JSON; the
connection services validate it (`Connector.validate_settings`). Secrets stay separate write-only
fields; the page shows only those of the chosen kind.
"""

from __future__ import annotations

import json

from gateway import pipeline
from gateway.kinds import KINDS
from governance.admin_editors import StructuredJSONWidget, _lines, _number

# kind -> its non-secret settings, required first, as its connector declares them.
KIND_SETTINGS: dict[str, tuple[tuple[str, bool], ...]] = {
    kind: pipeline.connection_setting_names(kind) for kind in pipeline.connection_kinds()
}

# How a setting is typed in (default: one line of text), and its help: for settings several kinds share
# or that exist already; a new kind describes its own in its record (gateway/kinds.py).
KEY_TYPES = {
    "port": "int",
    "approval_hold_seconds": "int",
    "argv": "lines",
    "allowed_databases": "lines",
    "command": "lines",
    "allow_private_network": "bool",
    "tools": "json",
    "resources": "json",
    "prompts": "json",
    "oauth_client_credentials": "json",
    "gateway_jwt": "json",
}
KEY_HELP = {
    "host": "Host name or address of the server",
    "port": "Leave empty for the default port",
    "database": "Database to connect to",
    "user": "Database user (give it only the rights agents need)",
    "sslmode": "PostgreSQL sslmode: disable, allow, prefer (default), require, verify-ca, verify-full",
    "ssl_mode": "preferred (default), disabled, required or verify_identity",
    "ssl_ca": "Path to a CA bundle on the gateway host (for verify_identity)",
    "allowed_databases": "Other databases on the server this connection may list or use, one per line",
    "path": "Path of the SQLite file on the gateway host",
    "argv": "The program and its arguments, one per line; the input is its stdin",
    "cwd": "Working directory (optional)",
    "url": "Streamable HTTP endpoint of the MCP server (or give a command instead)",
    "command": "Or: a stdio MCP server's program and arguments, one per line",
    "allow_private_network": "Allow a URL on a private or loopback address",
    "approval_hold_seconds": "How long a call needing approval is held open for a reviewer (0-300 s)",
    "tools": 'Tool policy as JSON, e.g. [{"match": "read_*", "effect": "allow"}]',
    "resources": 'Resource policy by URI as JSON, e.g. [{"match": "file:///docs/*"}]; none: as open as the tools',
    "prompts": 'Prompt policy by name as JSON, e.g. [{"match": "summarize"}]; none: as open as the tools',
    "oauth_client_credentials": 'OAuth client credentials as JSON: {"token_url": "...", "client_id": "...", '
    '"scope": "...", "audience": "..."} (the secret goes in oauth_client_secret)',
    "gateway_jwt": 'Send the caller as a JWT signed by the gateway: {"audience": "...", "ttl_seconds": 120}',
}
SECRET_HELP = {
    "password": "Password",
    "env": 'Environment variables as JSON, e.g. {"API_KEY": "..."}',
    "headers": 'HTTP headers as JSON, e.g. {"X-Api-Key": "..."}',
    "bearer_token": "Sent as Authorization: Bearer …",
    "oauth_client_secret": "The OAuth client's secret (with oauth_client_credentials)",
}


def kind_settings(kind: str) -> list[dict]:
    """The non-secret settings of a kind, required ones first."""
    record = KINDS[kind]
    return [
        {
            "key": key,
            "type": record.setting_types.get(key) or KEY_TYPES.get(key, "text"),
            "required": required,
            "help": record.setting_help.get(key) or KEY_HELP.get(key, ""),
        }
        for key, required in KIND_SETTINGS.get(kind, ())
    ]


def secret_kinds() -> dict[str, list[str]]:
    """For each secret setting, the kinds that have it (the page shows it for those only)."""
    out: dict[str, list[str]] = {}
    for kind in pipeline.connection_kinds():
        for key in pipeline.secret_setting_names(kind):
            out.setdefault(key, []).append(kind)
    return out


class ConnectionSettingsWidget(StructuredJSONWidget):
    template_name = "admin/widgets/connection_settings.html"

    def __init__(self, attrs=None):
        super().__init__(attrs)
        self.kind = ""  # set by the form for an existing connection (its kind is fixed)

    def editor_context(self, spec: dict) -> dict:
        groups = []
        for kind in pipeline.connection_kinds():
            fields = []
            for item in kind_settings(kind):
                value = spec.get(item["key"]) if kind == self.kind or not self.kind else None
                if item["type"] == "lines":
                    shown = "\n".join(value) if isinstance(value, list) else ""
                elif item["type"] == "json":
                    shown = json.dumps(value, indent=2) if value is not None else ""
                elif item["type"] == "bool":
                    shown = bool(value)
                else:
                    shown = "" if value is None else str(value)
                fields.append({**item, "value": shown})
            groups.append({"kind": kind, "fields": fields})
        return {"groups": groups, "kind": self.kind}

    def build(self, data, name: str) -> dict:
        kind = self.kind or data.get("kind") or ""
        if kind not in KIND_SETTINGS:
            return {}
        out: dict = {}
        for item in kind_settings(kind):
            field = f"{name}__{kind}__{item['key']}"
            if item["type"] == "bool":
                if data.get(field):
                    out[item["key"]] = True
                continue
            raw = data.get(field) or ""
            if not raw.strip():
                continue
            if item["type"] == "int":
                out[item["key"]] = _number(raw, int)
            elif item["type"] == "lines":
                out[item["key"]] = _lines(data, field)
            elif item["type"] == "json":
                try:
                    out[item["key"]] = json.loads(raw)
                except ValueError:
                    out[item["key"]] = raw  # the service says the setting is malformed
            else:
                out[item["key"]] = raw.strip()
        return out
