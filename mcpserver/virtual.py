"""A virtual MCP server, /api/mcp/v/<name>: the tools of several upstream mcp connections (and
optionally Portcullis's own) behind one URL, under namespaced names (`<connection>__<tool>`,
`portcullis__<tool>`; gateway/virtual_servers.py).

`tools/list` is the union of what the caller may use on each member connection (the listing of
/api/mcp/c/<connection> for each, fetched concurrently; a member the caller may not use is left
out, a member whose upstream fails is left out of this listing and logged). `tools/call` resolves
the name to its member and goes through exactly what /api/mcp/c/<connection> does
(`proxy.forward_call`: the tool policy, approval hold, guardrails, masking, recorded session), or
for a Portcullis tool through /api/mcp's own handler. Same authentication as /api/mcp.
"""

from __future__ import annotations

import asyncio
import logging

from channels.db import database_sync_to_async as db
from django.conf import settings
from mcp.server.auth.settings import AuthSettings
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, CallToolResult, InputRequiredResult, ListToolsResult, Tool
from pydantic import AnyHttpUrl

from gateway import metrics, pipeline
from gateway import virtual_servers as vs
from governance.errors import PortcullisError
from mcpserver import server as gateway_server
from mcpserver.auth import GatewayTokenVerifier
from mcpserver.challenge import BearerChallenge
from mcpserver.proxy import (
    SCOPE_EXEC,
    SCOPE_READ,
    _error,
    _has_scope,
    forward_call,
    pinned_input_schema,
    remember_input_schemas,
)
from mcpserver.server import _current_actor, _transport_security, _version

logger = logging.getLogger("portcullis.mcp")

PATH = "/api/mcp/v/{server}"


def _server_name(ctx) -> str:
    request = getattr(ctx, "request", None)
    name = request.path_params.get("server") if request is not None else None
    if not name:
        raise MCPError(INVALID_PARAMS, "no virtual server in the URL (/api/mcp/v/<name>)")
    return name


async def _member_tools(actor, connection_name: str) -> list[Tool]:
    try:
        items = await pipeline.upstream_tools_list(actor=actor, connection_name=connection_name)
    except PortcullisError as exc:
        logger.warning("virtual server member %s left out of a listing: %s", connection_name, exc.message)
        return []
    remember_input_schemas(actor.org_id, connection_name, ((i["name"], i["input_schema"]) for i in items))
    return [
        Tool(
            name=vs.namespaced(connection_name, item["name"]),
            title=item.get("title"),
            description=f"[{connection_name}] {item.get('description') or ''}".strip(),
            input_schema=item["input_schema"],
            output_schema=item.get("output_schema"),
            annotations=item.get("annotations"),
        )
        for item in items
    ]


async def list_tools(ctx, params) -> ListToolsResult:
    actor = _current_actor(ctx)
    if actor is None:
        return ListToolsResult(tools=[])
    try:
        server, members = await db(lambda: vs.server_for(actor=actor, name=_server_name(ctx)))()
    except PortcullisError as exc:
        raise MCPError(INVALID_PARAMS, exc.message) from None
    tools: list[Tool] = []
    if _has_scope(SCOPE_READ):
        for listing in await asyncio.gather(*(_member_tools(actor, m) for m in members)):
            tools.extend(listing)
    if server.include_portcullis_tools:
        own = await gateway_server.list_tools(ctx, params)
        tools.extend(
            tool.model_copy(update={"name": vs.namespaced(vs.PORTCULLIS_PREFIX, tool.name)})
            for tool in own.tools
        )
    return ListToolsResult(tools=tools)


async def call_tool(ctx, params) -> CallToolResult | InputRequiredResult | dict:
    actor = _current_actor(ctx)
    if actor is None:
        return _error("unauthorized: missing auth context")
    name = _server_name(ctx)
    try:
        server, members = await db(lambda: vs.server_for(actor=actor, name=name))()
    except PortcullisError as exc:
        return _error(exc.message)
    target = vs.resolve(params.name, members, portcullis=server.include_portcullis_tools)
    if target is None:  # not a member, not usable by the caller, or no such namespace: one answer
        return _error(vs.tool_not_found_message(params.name, name))
    connection_name, tool = target
    if connection_name is None:  # one of Portcullis's own tools, through /api/mcp's handler
        return await gateway_server.call_tool(ctx, params.model_copy(update={"name": tool}))
    if not _has_scope(SCOPE_EXEC):
        return _error(f"insufficient_scope: calling upstream tools needs {SCOPE_EXEC}")
    return await forward_call(
        ctx, actor, connection_name, tool, params.arguments or {}, params.input_responses
    )


def _input_schema(name: str) -> dict | None:
    """`get_tool_input_schema` (see mcpserver.proxy): a member's tool by the member's listing seen
    here; Portcullis's own tools by their definition. Membership is checked by the call itself.
    A connection name may itself hold the separator: every split is tried."""
    prefix = vs.PORTCULLIS_PREFIX + vs.SEPARATOR
    if name.startswith(prefix):
        return gateway_server.input_schema(name[len(prefix) :])
    at = name.find(vs.SEPARATOR)
    while at > 0:
        schema = pinned_input_schema(name[:at], name[at + len(vs.SEPARATOR) :])
        if schema is not None:
            return schema
        at = name.find(vs.SEPARATOR, at + 1)
    return None


def build() -> tuple[Server, object]:
    """A fresh virtual-server endpoint and its Starlette app (one per process and event loop)."""
    server = Server(
        "portcullis-virtual",
        version=_version(),
        instructions="Tools of several MCP servers behind the Portcullis gateway, named <server>__<tool>.",
        get_tool_input_schema=_input_schema,
        on_list_tools=list_tools,
        on_call_tool=metrics.instrumented_tool_handler("virtual", call_tool),
    )
    app = server.streamable_http_app(
        streamable_http_path=PATH,
        stateless_http=True,
        json_response=False,
        max_request_body_size=settings.MCP_MAX_REQUEST_BYTES,
        transport_security=_transport_security(),
        auth=AuthSettings(
            issuer_url=AnyHttpUrl(settings.PUBLIC_BASE_URL),
            resource_server_url=AnyHttpUrl(f"{settings.PUBLIC_BASE_URL}/api/mcp"),
            required_scopes=None,
            validate_token_resource=False,
        ),
        token_verifier=GatewayTokenVerifier(),
    )
    return server, BearerChallenge(app)
