"""Access control: access_control_list (admins and auditors; with connection_name, one connection:
it replaced access_control_get), _set and _unset (admins). Thin calls into `governance.access`."""

from __future__ import annotations

from typing import Annotated

from channels.db import database_sync_to_async as db
from pydantic import Field

from gateway import shapes
from governance import access
from governance.policy import ROLE_ADMIN, ROLE_AUDITOR
from mcpserver.registry import Args, Result, page, shared, tool

BEHAVIOUR = (
    "A connection without access groups is open to every member; groups restrict that connection only."
)


class AccessControlOut(shapes.AccessControlOut):
    model_config = shared("access_control_list")


class ConnectionArgs(Args):
    connection_name: str = Field(min_length=1, max_length=63)


class SetArgs(ConnectionArgs):
    groups: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        min_length=1, max_length=access.MAX_GROUPS, description="Replaces the current list."
    )


class ListArgs(Args):
    connection_name: str | None = Field(None, max_length=63)
    limit: Annotated[int, Field(ge=1, le=100)] = 50
    offset: Annotated[int, Field(ge=0, le=10_000)] = 0


class ListResult(Result):
    items: list[AccessControlOut]
    total: int
    has_next_page: bool
    next_offset: int | None


def _render(r: AccessControlOut) -> str:
    if not r.restricted:
        return f"{r.connection_name}: open to every member of the organization"
    return f"{r.connection_name}: only {', '.join(r.allowed_groups)} (and admins)"


@tool(
    "access_control_list",
    description="Connections with access groups. " + BEHAVIOUR,
    args=ListArgs,
    result=ListResult,
    role=ROLE_AUDITOR,
    render=lambda r: "\n".join(_render(i) for i in r.items) or "no connection has access groups",
)
async def access_control_list(actor, args: ListArgs, ctx) -> ListResult:
    if args.connection_name is not None:
        one = await db(lambda: access.access_control_get(actor=actor, connection_name=args.connection_name))()
        return ListResult(**page([one], 1, 0))
    items, total = await db(
        lambda: access.access_control_list(actor=actor, limit=args.limit, offset=args.offset)
    )()
    return ListResult(**page(items, total, args.offset))


@tool(
    "access_control_set",
    description="Restrict a connection to these groups (and admins). " + BEHAVIOUR,
    args=SetArgs,
    result=AccessControlOut,
    role=ROLE_ADMIN,
    read_only=False,
    destructive=True,
    idempotent=True,
    render=_render,
)
async def access_control_set(actor, args: SetArgs, ctx) -> AccessControlOut:
    data = await db(
        lambda: access.access_control_set(
            actor=actor, connection_name=args.connection_name, groups=args.groups
        )
    )()
    return AccessControlOut(**data)


@tool(
    "access_control_unset",
    description="Remove every access group of one connection: it opens to every member.",
    args=ConnectionArgs,
    result=AccessControlOut,
    role=ROLE_ADMIN,
    read_only=False,
    destructive=True,
    render=_render,
)
async def access_control_unset(actor, args: ConnectionArgs, ctx) -> AccessControlOut:
    data = await db(lambda: access.access_control_unset(actor=actor, connection_name=args.connection_name))()
    return AccessControlOut(**data)
