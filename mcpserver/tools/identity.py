"""Identity and discovery: me_get, serverinfo_get."""

from __future__ import annotations

import dataclasses

from channels.db import database_sync_to_async as db
from pydantic import Field

from gateway import services as connections
from governance.policy import CAPABILITIES, capability_explained
from mcpserver.registry import TOOLS, Args, Result, tool, tool_allowed


class NoArgs(Args):
    pass


class MeResult(Result):
    user_id: str
    user_email: str
    user_name: str
    org_id: str
    org_name: str
    groups: list[str]
    is_admin: bool
    is_auditor: bool
    capability: str = Field(description="The token's ceiling: read_only, read_write or admin.")
    capability_explained: str = Field(description="What the capability does to your roles here.")
    tools_a_higher_capability_adds: dict[str, list[str]] = Field(
        description="Per stronger capability, the tools a token with it would add for you."
    )
    client: str


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


class ServerInfoResult(Result):
    name: str
    version: str
    api_url: str
    mcp_url: str
    auth_methods: list[str]
    connection_kinds: list[str]
    command_connections_enabled: bool
    exec_handoff_seconds: float
    max_input_bytes: int
    outbox_backlog: dict | None = Field(
        None,
        description="Admins: messages waiting to leave (events, analyses, agent dispatches) per kind, with the "
        "age of the oldest in seconds. A growing backlog means the broker or a sink is down; nothing is lost.",
    )


@tool(
    "serverinfo_get",
    description="Gateway facts: version, URLs, enabled connection kinds and limits.",
    args=NoArgs,
    result=ServerInfoResult,
)
async def serverinfo_get(actor, args, ctx) -> ServerInfoResult:
    return ServerInfoResult(**await db(lambda: connections.server_info(actor=actor))())
