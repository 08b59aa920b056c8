"""The MCP server at /api/mcp: the SDK's low-level server over our tool registry.

We use the low-level `Server` rather than `MCPServer` so the registry stays declarative (one
arguments model with unknown keys rejected, one result model, a role) and so `tools/list` can be
filtered per caller. Domain errors become `isError` results with the domain's stable message;
unknown tools and malformed requests are JSON-RPC errors; nothing becomes an HTTP 500.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from urllib.parse import urlsplit

from channels.db import database_sync_to_async
from django.conf import settings
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.settings import AuthSettings
from mcp.server.lowlevel import Server
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, CallToolResult, ListToolsResult, TextContent, Tool
from pydantic import ValidationError

from gateway import metrics
from gateway.services import gateway_version
from gateway.shapes import Shape
from gateway.unavailable import JSONRPC_CODE, MESSAGE, is_database_unavailable
from governance.errors import PortcullisError
from governance.policy import Actor, capability_allows, capability_message, has_role, role_denied_message
from mcpserver import tools  # noqa: F401  (registers every tool)
from mcpserver.auth import GatewayTokenVerifier
from mcpserver.challenge import BearerChallenge
from mcpserver.registry import TOOLS, ToolSpec, compact_schema, tool_allowed
from mcpserver.scopes import insufficient_scope_message, scope_allows
from sessions.audit import Outcome, audit_record

logger = logging.getLogger("portcullis.mcp")

SERVER_NAME = "portcullis"
INSTRUCTIONS = (
    "Portcullis is an access gateway: every call runs through identity, access control and audit. "
    "Start with me_get and connections_list, inspect schemas with connection_databases/tables/columns, "
    "then exec. Branch on exec's `status`: completed, failed, blocked, pending_approval, running "
    "(then call sessions_wait). A record several tools return is described in full by the tool its "
    "outputSchema names."
)


def _error(message: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "arguments"
        parts.append(f"{where}: {err['msg']}")
    return "invalid arguments: " + "; ".join(parts)


def _tool_definition(spec: ToolSpec) -> Tool:
    # Fields left unset stay out of the listing (the SDK serializes with exclude_unset).
    extra: dict = {"title": spec.title} if spec.title else {}
    hints = spec.annotations
    if hints.model_dump(exclude_none=True):  # none: every hint at its MCP default, said by leaving it out
        extra["annotations"] = hints
    return Tool(
        name=spec.name,
        description=spec.description,
        input_schema=compact_schema(
            spec.args.model_json_schema(), tool=spec.name, output=False, fields_as=spec.fields_as
        ),
        output_schema=compact_schema(spec.result.model_json_schema(), tool=spec.name, output=True),
        **extra,
    )


_DEFINITIONS = {name: _tool_definition(spec) for name, spec in TOOLS.items()}


def _current_actor(ctx) -> Actor | None:
    access = get_access_token()
    actor = getattr(access, "actor", None)
    if actor is None:
        return None
    request = getattr(ctx, "request", None)
    user_agent = request.headers.get("user-agent", "") if request is not None else ""
    client = f"{actor.client}; {user_agent}" if user_agent else actor.client
    return dataclasses.replace(actor, client=client[:200])


def _token_scopes() -> list[str]:
    return list(getattr(get_access_token(), "scopes", None) or [])


async def list_tools(ctx, params) -> ListToolsResult:
    actor = _current_actor(ctx)
    scopes = _token_scopes()
    visible = [
        _DEFINITIONS[name]
        for name, spec in TOOLS.items()
        if actor is not None and tool_allowed(actor, spec) and scope_allows(scopes, spec)
    ]
    return ListToolsResult(tools=visible)


class ToolContext:
    """What a tool handler may use of the MCP request: progress reporting."""

    def __init__(self, ctx):
        self._ctx = ctx

    async def progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        try:
            await self._ctx.session.report_progress(progress, total, message)
        except Exception:  # a client that went away must not fail the tool
            logger.debug("progress notification not delivered", exc_info=True)


@database_sync_to_async
def _audit_denied(actor: Actor, tool: str) -> None:
    audit_record(
        actor=actor, action="mcp.tool", outcome=Outcome.DENIED, target_type="mcp.tool", target_repr=tool
    )


async def call_tool(ctx, params) -> CallToolResult | dict:
    spec = TOOLS.get(params.name)
    if spec is None:
        raise MCPError(INVALID_PARAMS, f"Unknown tool: {params.name}")
    actor = _current_actor(ctx)
    if actor is None:
        return _error("unauthorized: missing auth context")
    if not has_role(actor, spec.role):
        await _audit_denied(actor, spec.name)
        return _error(role_denied_message(actor, spec.role))
    if not capability_allows(actor, spec.capability):
        await _audit_denied(actor, spec.name)
        return _error(capability_message(spec.capability))
    if not scope_allows(_token_scopes(), spec):  # OAuth scopes are tool groups (mcpserver.scopes)
        await _audit_denied(actor, spec.name)
        return _error(insufficient_scope_message(spec))
    try:
        args = spec.args.model_validate(params.arguments or {})
    except ValidationError as exc:
        return _error(_validation_message(exc))
    try:
        result = await spec.handler(actor, args, ToolContext(ctx))
    except PortcullisError as exc:
        return _error(exc.message)
    except MCPError:
        raise
    except Exception as exc:
        if is_database_unavailable(exc):  # retryable: a JSON-RPC error, not a tool result
            logger.warning("tool %s: the database is unavailable (%s)", spec.name, exc)
            raise MCPError(JSONRPC_CODE, MESSAGE) from None
        logger.exception("tool %s crashed", spec.name)
        return _error("internal error; the gateway log has details")
    structured = structured_content(result)
    text = spec.render(result) if spec.render else json.dumps(structured, ensure_ascii=False)
    # As the wire form, not a CallToolResult: the SDK would walk a large result's rows once more
    # to dump the model (it validates the dict against the protocol's shape in any case).
    return {
        "content": [{"type": "text", "text": text}],
        "structuredContent": structured,
        "isError": False,
        "resultType": "complete",  # required from 2026-07-28; the SDK drops it for older clients
    }


def structured_content(result) -> dict:
    """A tool result as JSON. Fields its shape declares JSON-ready (`Shape.JSON_READY`: a result's
    rows) are handed on as they are: pydantic dumping 100k rows in JSON mode costs ~0.5 s."""
    ready = type(result).JSON_READY if isinstance(result, Shape) else frozenset()
    if not ready:
        return result.model_dump(mode="json", by_alias=True)
    structured = result.model_dump(mode="json", by_alias=True, exclude=set(ready))
    for name in ready:
        field = type(result).model_fields[name]
        structured[field.serialization_alias or field.alias or name] = getattr(result, name)
    return structured


def input_schema(name: str):
    """A Portcullis tool's input schema by name (`get_tool_input_schema`), None for no such tool."""
    definition = _DEFINITIONS.get(name)
    return definition.input_schema if definition else None


def _transport_security() -> TransportSecuritySettings:
    hosts, origins = set(), set()
    for host in settings.ALLOWED_HOSTS:
        if host == "*":
            return TransportSecuritySettings(enable_dns_rebinding_protection=False)
        hosts.update({host, f"{host}:*"})
        origins.update({f"http://{host}", f"http://{host}:*", f"https://{host}", f"https://{host}:*"})
    public = urlsplit(settings.PUBLIC_BASE_URL)
    hosts.update({public.netloc, f"{public.hostname}:*"})
    origins.add(f"{public.scheme}://{public.netloc}")
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=sorted(hosts), allowed_origins=sorted(origins)
    )


def build() -> tuple[Server, object]:
    """A fresh server and its Starlette app (one per process and event loop)."""
    server = Server(
        SERVER_NAME,
        version=_version(),
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=metrics.instrumented_tool_handler("gateway", call_tool),
        get_tool_input_schema=input_schema,
    )
    resource = f"{settings.PUBLIC_BASE_URL}/api/mcp"
    app = server.streamable_http_app(
        streamable_http_path="/api/mcp",
        stateless_http=True,
        json_response=False,
        max_request_body_size=settings.MCP_MAX_REQUEST_BYTES,
        transport_security=_transport_security(),
        auth=AuthSettings(
            issuer_url=settings.PUBLIC_BASE_URL,
            resource_server_url=resource,
            required_scopes=None,
            validate_token_resource=False,
        ),
        token_verifier=GatewayTokenVerifier(),
    )
    return server, BearerChallenge(app)


def _version() -> str:
    return gateway_version()
