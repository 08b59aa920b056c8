"""Resources, resource templates, prompts and completions of an upstream MCP server on the
per-connection endpoint /api/mcp/c/<connection> (the tools are in `mcpserver.proxy`).

Listings need `mcp:read` (without it they are empty, like `tools/list`); reads, prompt gets and
completions need `mcp:exec`. Everything goes through `gateway.upstream_protocol`: the connection's
`resources` / `prompts` policy, the pinned contracts, masking, and a recorded session per read and
per prompt get. A refusal is a JSON-RPC error with a clear message (these methods have no
`isError` result): invalid params for what the policy or a contract refuses, internal error for an
upstream that failed.
"""

from __future__ import annotations

import logging

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.shared.exceptions import MCPError
from mcp.types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    CompleteResult,
    Completion,
    GetPromptResult,
    ListPromptsResult,
    ListResourcesResult,
    ListResourceTemplatesResult,
    Prompt,
    ReadResourceResult,
    Resource,
    ResourceTemplate,
)

from gateway import upstream_protocol
from gateway.models import ContractKind
from gateway.unavailable import JSONRPC_CODE, MESSAGE, is_database_unavailable
from governance.errors import ConnectorError, PortcullisError
from mcpserver.server import _current_actor
from sessions.models import SessionStatus

logger = logging.getLogger("portcullis.mcp")

SCOPE_READ, SCOPE_EXEC = "mcp:read", "mcp:exec"


def _connection_name(ctx) -> str:
    request = getattr(ctx, "request", None)
    name = request.path_params.get("connection") if request is not None else None
    if not name:
        raise MCPError(INVALID_PARAMS, "no connection in the URL (/api/mcp/c/<connection>)")
    return name


def _actor(ctx, scope: str):
    """The caller, when their token has `scope`; else None."""
    actor = _current_actor(ctx)
    if actor is None or scope not in (getattr(get_access_token(), "scopes", None) or ()):
        return None
    return actor


def _require(ctx, scope: str, what: str):
    actor = _current_actor(ctx)
    if actor is None:
        raise MCPError(INVALID_PARAMS, "unauthorized: missing auth context")
    if scope not in (getattr(get_access_token(), "scopes", None) or ()):
        raise MCPError(INVALID_PARAMS, f"insufficient_scope: {what} needs {scope}")
    return actor


async def _guarded(what: str, coro):
    """Await `coro`; a refusal or an upstream failure becomes a clear JSON-RPC error, never a 500."""
    try:
        return await coro
    except ConnectorError as exc:
        raise MCPError(INTERNAL_ERROR, exc.message) from None
    except PortcullisError as exc:
        raise MCPError(INVALID_PARAMS, exc.message) from None
    except MCPError:
        raise
    except Exception as exc:
        if is_database_unavailable(exc):  # retryable
            raise MCPError(JSONRPC_CODE, MESSAGE) from None
        logger.exception("proxied %s crashed", what)
        raise MCPError(INTERNAL_ERROR, "internal error; the gateway log has details") from None


def _present(contract: dict) -> dict:
    return {key: value for key, value in contract.items() if value is not None}


async def _listing(ctx, kind: str) -> list[dict]:
    actor = _actor(ctx, SCOPE_READ)
    if actor is None:
        return []
    return await _guarded(
        f"{kind} listing",
        upstream_protocol.items_list(actor=actor, connection_name=_connection_name(ctx), kind=kind),
    )


async def list_resources(ctx, params) -> ListResourcesResult:
    items = await _listing(ctx, ContractKind.RESOURCE)
    return ListResourcesResult(resources=[Resource.model_validate(_present(i)) for i in items])


async def list_resource_templates(ctx, params) -> ListResourceTemplatesResult:
    items = await _listing(ctx, ContractKind.TEMPLATE)
    return ListResourceTemplatesResult(
        resource_templates=[ResourceTemplate.model_validate(_present(i)) for i in items]
    )


async def list_prompts(ctx, params) -> ListPromptsResult:
    items = await _listing(ctx, ContractKind.PROMPT)
    return ListPromptsResult(prompts=[Prompt.model_validate(_present(i)) for i in items])


def _answer(session):
    refusal = upstream_protocol.refusal(session)
    if refusal is not None:
        code = INTERNAL_ERROR if session.status == SessionStatus.FAILED else INVALID_PARAMS
        raise MCPError(code, refusal)
    return session.result


async def read_resource(ctx, params) -> ReadResourceResult:
    actor = _require(ctx, SCOPE_EXEC, "reading upstream resources")
    session = await _guarded(
        "resource read",
        upstream_protocol.resource_read(
            actor=actor, connection_name=_connection_name(ctx), uri=str(params.uri)
        ),
    )
    return ReadResourceResult.model_validate(_answer(session))


async def get_prompt(ctx, params) -> GetPromptResult:
    actor = _require(ctx, SCOPE_EXEC, "getting upstream prompts")
    session = await _guarded(
        "prompt get",
        upstream_protocol.prompt_get(
            actor=actor, connection_name=_connection_name(ctx), name=params.name, arguments=params.arguments
        ),
    )
    return GetPromptResult.model_validate(_answer(session))


async def complete(ctx, params) -> CompleteResult:
    actor = _require(ctx, SCOPE_EXEC, "completions of upstream prompts and resource templates")
    completion = await _guarded(
        "completion",
        upstream_protocol.complete(
            actor=actor,
            connection_name=_connection_name(ctx),
            ref=params.ref.model_dump(mode="json", by_alias=True),
            argument={"name": params.argument.name, "value": params.argument.value},
            context_arguments=params.context.arguments if params.context else None,
        ),
    )
    return CompleteResult(completion=Completion.model_validate(completion))


HANDLERS = {
    "on_list_resources": list_resources,
    "on_list_resource_templates": list_resource_templates,
    "on_read_resource": read_resource,
    "on_list_prompts": list_prompts,
    "on_get_prompt": get_prompt,
    "on_completion": complete,
}
