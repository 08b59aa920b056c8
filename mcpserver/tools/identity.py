"""Identity and discovery: me_get, serverinfo_get."""

from __future__ import annotations

import dataclasses

from channels.db import database_sync_to_async as db
from pydantic import Field

from gateway import services as connections
from gateway import shapes
from governance.policy import CAPABILITIES, capability_explained
from mcpserver.registry import TOOLS, Args, tool, tool_allowed


class NoArgs(Args):
    pass


class MeResult(shapes.MeOut):
    # MCP only: what a stronger token would add, in tools (a notion REST does not have).
    tools_a_higher_capability_adds: dict[str, list[str]] = Field(
        description="Per stronger capability, the tools a token with it would add for you."
    )


@tool(
    "me_get",
    description="Who you are: user, org, groups, roles, and what your token's capability allows.",
    args=NoArgs,
    result=MeResult,
    render=lambda r: f"{r.user_email} in {r.org_name} (groups: {', '.join(r.groups) or 'none'})",
)
async def me_get(actor, args, ctx) -> MeResult:
    user = actor.user
    return MeResult(
        user_id=str(user.pk),
        user_email=user.email,
        user_name=user.name,
        org_id=str(user.org_id),
        org_name=user.org.name,
        groups=sorted(actor.groups),
        is_admin=actor.is_admin,
        is_auditor=actor.is_auditor,
        capability=actor.capability,
        capability_explained=capability_explained(actor),
        tools_a_higher_capability_adds=_tools_added(actor),
        client=actor.client,
    )


def _tools_added(actor) -> dict[str, list[str]]:
    """Computed from the registry with the same check tools/list uses, so it cannot drift."""
    added = {}
    for capability in CAPABILITIES[CAPABILITIES.index(actor.capability) + 1 :]:
        stronger = dataclasses.replace(actor, capability=capability)
        names = [
            n for n, spec in TOOLS.items() if tool_allowed(stronger, spec) and not tool_allowed(actor, spec)
        ]
        if names:
            added[capability] = names
    return added


ServerInfoResult = shapes.ServerInfoOut


@tool(
    "serverinfo_get",
    description="Gateway facts: version, URLs, enabled connection kinds and limits.",
    args=NoArgs,
    result=ServerInfoResult,
)
async def serverinfo_get(actor, args, ctx) -> ServerInfoResult:
    return ServerInfoResult(**await db(lambda: connections.server_info(actor=actor))())
