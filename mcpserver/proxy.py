"""The per-connection MCP endpoint, /api/mcp/c/<connection>: an upstream MCP server's tools,
served under their own names, through the gateway.

Existing MCP clients need nothing but the new URL. `tools/list` shows exactly the upstream tools
the caller may use (tool policy, accepted contract) with their pinned schemas; `tools/call` goes
through `gateway.upstream_hold` like `upstream_call` on /api/mcp, so every call is a recorded,
guarded, masked session, and a call that needs approval is held open until reviewers decide
(`docs/upstream-mcp.md`). Same authentication as /api/mcp (the same token verifier).
"""

from __future__ import annotations

import contextvars
import logging
from collections import OrderedDict
from urllib.parse import unquote

from django.conf import settings
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.settings import AuthSettings
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from mcp.types import (
    INVALID_PARAMS,
    CallToolResult,
    ElicitRequest,
    ElicitRequestURLParams,
    InputRequiredResult,
    ListToolsResult,
    TextContent,
    Tool,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from gateway import metrics, pipeline, upstream_hold
from gateway.unavailable import JSONRPC_CODE, MESSAGE, is_database_unavailable
from governance.errors import PortcullisError
from mcpserver import proxy_protocol
from mcpserver.auth import GatewayTokenVerifier
from mcpserver.challenge import BearerChallenge
from mcpserver.server import _current_actor, _transport_security, _version

logger = logging.getLogger("portcullis.mcp")

PATH = "/api/mcp/c/{connection}"
SCOPE_READ, SCOPE_EXEC = "mcp:read", "mcp:exec"
# The key of the review page's URL-mode elicitation in an `InputRequiredResult`: a retry that
# answers it is answered at once (no second hold).
REVIEW_ELICITATION = "portcullis_review"


# `Mcp-Param-*` header validation (2026-07-28 clients) needs a tool's input schema before the call
# is dispatched. Without `get_tool_input_schema` the SDK runs this server's whole `tools/list` for
# every `tools/call` with arguments: an upstream listing and a contract check, ~12 ms a call. The
# pinned input schemas this process served in a listing, per (org, connection, tool), answer it
# instead. A tool this process has not listed for that org is not validated (the SDK's own answer
# when a listing does not advertise the tool): the gateway neither routes on nor forwards these
# headers, the call itself goes through the whole policy path.
_PINNED_INPUT: OrderedDict[tuple, dict] = OrderedDict()
_PINNED_INPUT_MAX = 10_000
_PATH_CONNECTION: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "proxy_connection", default=None
)


def remember_input_schemas(org_id, connection_name: str, items) -> None:
    """Keep the pinned input schemas of a listing served to someone of `org_id`."""
    for name, schema in items:
        key = (str(org_id), connection_name, name)
        _PINNED_INPUT[key] = schema
        _PINNED_INPUT.move_to_end(key)
    while len(_PINNED_INPUT) > _PINNED_INPUT_MAX:
        _PINNED_INPUT.popitem(last=False)


def pinned_input_schema(connection_name: str | None, tool: str) -> dict | None:
    """The input schema of `tool` on `connection_name` as last listed here for the caller's org."""
    actor = getattr(get_access_token(), "actor", None)
    if actor is None or not connection_name:
        return None
    return _PINNED_INPUT.get((str(actor.org_id), connection_name, tool))


def _input_schema(tool: str) -> dict | None:
    return pinned_input_schema(_PATH_CONNECTION.get(), tool)


class PathContext:
    """Sets the URL's last path segment (the connection, or the virtual server) for the request,
    so that `get_tool_input_schema`, which the SDK calls with a tool name only, can find it."""

    def __init__(self, app, var: contextvars.ContextVar):
        self.app, self.var = app, var

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            segment = unquote(scope.get("path", "").rstrip("/").rsplit("/", 1)[-1])
            token = self.var.set(segment or None)
            try:
                return await self.app(scope, receive, send)
            finally:
                self.var.reset(token)
        return await self.app(scope, receive, send)


def _error(message: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)


def _connection_name(ctx) -> str:
    request = getattr(ctx, "request", None)
    name = request.path_params.get("connection") if request is not None else None
    if not name:
        raise MCPError(INVALID_PARAMS, "no connection in the URL (/api/mcp/c/<connection>)")
    return name


def _has_scope(scope: str) -> bool:
    return scope in (getattr(get_access_token(), "scopes", None) or ())


async def list_tools(ctx, params) -> ListToolsResult:
    actor = _current_actor(ctx)
    if actor is None or not _has_scope(SCOPE_READ):
        return ListToolsResult(tools=[])
    try:
        items = await pipeline.upstream_tools_list(actor=actor, connection_name=_connection_name(ctx))
    except PortcullisError as exc:  # the connection is not theirs, or the upstream failed
        raise MCPError(INVALID_PARAMS, exc.message) from None
    remember_input_schemas(
        actor.org_id, _connection_name(ctx), ((item["name"], item["input_schema"]) for item in items)
    )
    return ListToolsResult(
        tools=[
            Tool(
                name=item["name"],
                title=item.get("title"),
                description=item.get("description"),
                input_schema=item["input_schema"],
                output_schema=item.get("output_schema"),
                annotations=item.get("annotations"),
            )
            for item in items
        ]
    )


async def call_tool(ctx, params) -> CallToolResult | InputRequiredResult | dict:
    actor = _current_actor(ctx)
    if actor is None:
        return _error("unauthorized: missing auth context")
    if not _has_scope(SCOPE_EXEC):
        return _error(f"insufficient_scope: calling upstream tools needs {SCOPE_EXEC}")
    return await forward_call(
        ctx, actor, _connection_name(ctx), params.name, params.arguments or {}, params.input_responses
    )


def _url_elicitation(ctx) -> bool:
    """Whether the client can be shown the review page by URL-mode elicitation: it speaks a protocol
    with `InputRequiredResult` (2026-07-28+; this endpoint is stateless, so it has no channel for a
    server-initiated `elicitation/create` request) and declared `elicitation.url`."""
    session = ctx.session
    capabilities = session.client_capabilities
    elicitation = capabilities.elicitation if capabilities is not None else None
    return (
        session.protocol_version in MODERN_PROTOCOL_VERSIONS
        and elicitation is not None
        and elicitation.url is not None
    )


def _review_elicitation(envelope: dict, tool: str, connection_name: str) -> InputRequiredResult:
    """Ask the client to show the pending review's page; its retry gets the pending answer."""
    review = envelope["review_id"]
    return InputRequiredResult(
        input_requests={
            REVIEW_ELICITATION: ElicitRequest(
                params=ElicitRequestURLParams(
                    message=(
                        f"Approval is pending: a reviewer must approve this call of {tool} on "
                        f"{connection_name} (review {review}). Open the review page to follow it, "
                        "then make the same call again once it is approved."
                    ),
                    url=envelope["review_url"],  # no elicitationId: removed at 2026-07-28
                )
            )
        }
    )


async def forward_call(
    ctx, actor, connection_name: str, tool: str, arguments: dict, input_responses: dict | None = None
) -> CallToolResult | InputRequiredResult | dict:
    """One upstream tool call through the policy path and the approval hold, answered as the
    upstream would (also for a virtual server's member connections, mcpserver/virtual.py).

    Still pending at the end of the hold: a client that can show a URL (`_url_elicitation`) first
    gets an `InputRequiredResult` with a URL-mode elicitation of the review page; its retry, which
    answers it, is answered at once with the review's state then (pending -> the pending tool
    error; approved meanwhile -> the call runs, once). Any other client gets the pending tool error.
    The retry goes through the whole policy path like any call: what it claims to answer only
    spares it the hold."""
    answered = REVIEW_ELICITATION in (input_responses or {})

    async def progress(elapsed: float, total: float | None, message: str) -> None:
        try:  # a no-op unless the client gave a progress token
            await ctx.session.report_progress(elapsed, total, message)
        except Exception:  # a client that went away must not fail the call
            logger.debug("progress notification not delivered", exc_info=True)

    try:
        session = await upstream_hold.tool_call_held(
            actor=actor,
            connection_name=connection_name,
            tool=tool,
            arguments=arguments,
            on_progress=progress,
            hold=0 if answered else None,
        )
    except PortcullisError as exc:
        return _error(exc.message)
    except MCPError:
        raise
    except Exception as exc:
        if is_database_unavailable(exc):  # retryable: a JSON-RPC error, not a tool result
            raise MCPError(JSONRPC_CODE, MESSAGE) from None
        logger.exception("proxied call of %s crashed", tool)
        return _error("internal error; the gateway log has details")
    envelope = pipeline.tool_envelope(session)
    if envelope["status"] == "pending_approval" and not answered and _url_elicitation(ctx):
        return _review_elicitation(envelope, tool, connection_name)
    if envelope["status"] != "completed" and not (session.result and envelope["content"]):
        return _error(f"[{envelope['status']}] {envelope['message'] or 'the call did not complete'}")
    # The wire form, as /api/mcp answers (mcpserver/server.py): the SDK validates it once.
    answer = {
        "content": envelope["content"],
        "isError": bool((session.result or {}).get("isError")),
        "resultType": "complete",  # required from 2026-07-28; the SDK drops it for older clients
    }
    if envelope["structured_content"] is not None:
        answer["structuredContent"] = envelope["structured_content"]
    return answer


def build() -> tuple[Server, object]:
    """A fresh proxy server and its Starlette app (one per process and event loop)."""
    server = Server(
        "portcullis-upstream",
        version=_version(),
        instructions="Tools of an upstream MCP server, reached through the Portcullis gateway.",
        get_tool_input_schema=_input_schema,
        on_list_tools=list_tools,
        on_call_tool=metrics.instrumented_tool_handler("upstream", call_tool),
        **proxy_protocol.HANDLERS,  # resources, resource templates, prompts, completions
    )
    app = server.streamable_http_app(
        streamable_http_path=PATH,
        stateless_http=True,
        json_response=False,
        max_request_body_size=settings.MCP_MAX_REQUEST_BYTES,
        transport_security=_transport_security(),
        auth=AuthSettings(
            issuer_url=settings.PUBLIC_BASE_URL,
            resource_server_url=f"{settings.PUBLIC_BASE_URL}/api/mcp",
            required_scopes=None,
            validate_token_resource=False,
        ),
        token_verifier=GatewayTokenVerifier(),
    )
    # The same protected resource as /api/mcp (one gateway, one policy): the same 401 challenge.
    return server, BearerChallenge(PathContext(app, _PATH_CONNECTION))
