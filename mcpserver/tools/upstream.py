"""Upstream MCP servers: list and call their tools through the gateway; admins review contracts."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from channels.db import database_sync_to_async as db
from pydantic import Field

from gateway import pipeline, shapes, upstream, upstream_hold
from governance.policy import ROLE_ADMIN
from mcpserver.registry import Args, shared, tool
from mcpserver.tools.execution import idempotency_key_field


class ConnectionArgs(Args):
    connection_name: str = Field(min_length=1, max_length=63, description="An mcp connection.")


UpstreamToolOut = shapes.UpstreamToolOut

ToolsListResult = shapes.UpstreamToolsOut


def _render_tools(r: ToolsListResult) -> str:
    if not r.items:
        return f"no tools you may call on {r.connection_name}"
    return "\n".join(
        f"{t.name}" + (" (requires approval)" if t.requires_approval else "") + f" - {t.description or ''}"
        for t in r.items
    )


@tool(
    "upstream_tools_list",
    description=("Tools of an mcp connection you may call with upstream_call, with their pinned schemas."),
    args=ConnectionArgs,
    result=ToolsListResult,
    render=_render_tools,
)
async def upstream_tools_list(actor, args: ConnectionArgs, ctx) -> ToolsListResult:
    items = await pipeline.upstream_tools_list(actor=actor, connection_name=args.connection_name)
    return ToolsListResult(connection_name=args.connection_name, items=items, total=len(items))


class CallArgs(ConnectionArgs):
    tool: str = Field(min_length=1, max_length=128, description=None)
    arguments: dict[str, Any] = Field(default_factory=dict, description=None)
    idempotency_key: str | None = idempotency_key_field()


ToolEnvelope = shapes.UpstreamCallOut


def _render_envelope(r: ToolEnvelope) -> str:
    head = f"[{r.status}] session {r.session_id}: {r.tool} on {r.connection_name}"
    texts = [b.get("text", "") for b in r.content if b.get("type") == "text"]
    body = "\n".join(texts) if r.status == "completed" else (r.message or "\n".join(texts))
    return f"{head}\n{body}".rstrip()


@tool(
    "upstream_call",
    description=(
        "Call a tool of an mcp connection (policy, guardrails, pinned contract, masking, audit). A call needing "
        "approval is held until decided (else pending_approval; the same call again joins that review). "
        "`status` as exec's."
    ),
    args=CallArgs,
    result=ToolEnvelope,
    read_only=False,
    destructive=True,
    render=_render_envelope,
)
async def upstream_call(actor, args: CallArgs, ctx) -> ToolEnvelope:
    session = await upstream_hold.tool_call_held(
        actor=actor,
        connection_name=args.connection_name,
        tool=args.tool,
        arguments=args.arguments,
        idempotency_key=args.idempotency_key,
        on_progress=ctx.progress,
    )
    return ToolEnvelope(**pipeline.tool_envelope(session))


# An enum here as everywhere `kind` is an argument (tests/test_tool_naming.py); the service checks it too.
ContractKind = Literal["tool", "resource", "template", "prompt"]


class ContractsListArgs(ConnectionArgs):
    status: Literal["accepted", "changed", "added", "removed"] | None = None
    kind: ContractKind | None = None


ContractOut = shapes.ContractOut


class ContractsListResult(shapes.ContractsOut):
    model_config = shared("upstream_contracts_list")


@tool(
    "upstream_contracts_list",
    description=(
        "Pinned contracts of an mcp connection's tools, resources, templates, prompts; changed and added ones "
        "are blocked until accepted."
    ),
    args=ContractsListArgs,
    result=ContractsListResult,
    role=ROLE_ADMIN,
    render=lambda r: "\n".join(f"{c.tool}: {c.status}" for c in r.items) or "no contracts pinned yet",
)
async def upstream_contracts_list(actor, args: ContractsListArgs, ctx) -> ContractsListResult:
    @db
    def run():
        rows = upstream.contracts_list(
            actor=actor, connection_name=args.connection_name, status=args.status, kind=args.kind or None
        )
        return [upstream.contract_to_dict(r) for r in rows]

    items = await run()
    return ContractsListResult(items=items, total=len(items))


class AcceptArgs(ConnectionArgs):
    tools: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=1024)]], Field(min_length=1, max_length=100)
    ]
    kind: ContractKind = "tool"
    observed_sha256: dict[str, str] | None = Field(
        None,
        description="Tool -> the observed_sha256 you reviewed (refused if it changed since).",
    )


@tool(
    "upstream_contracts_accept",
    description="Accept the observed contract of changed or added tools (or resources, templates, prompts).",
    args=AcceptArgs,
    result=ContractsListResult,
    role=ROLE_ADMIN,
    read_only=False,
    idempotent=True,
    render=lambda r: "accepted: " + ", ".join(c.tool for c in r.items),
)
async def upstream_contracts_accept(actor, args: AcceptArgs, ctx) -> ContractsListResult:
    @db
    def run():
        rows = upstream.contracts_accept(
            actor=actor,
            connection_name=args.connection_name,
            tools=args.tools,
            observed_sha256=args.observed_sha256,
            kind=args.kind,
        )
        return [upstream.contract_to_dict(r) for r in rows]

    items = await run()
    return ContractsListResult(items=items, total=len(items))
