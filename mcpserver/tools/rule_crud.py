"""The five tools of a kind of rule, declared once: `<prefix>_list|get|create|update|delete`.

Reading is for admins and auditors, changing for admins (the services check again). Each kind
passes its services, its result model and its create/update argument models; the tools stay thin.
"""

from __future__ import annotations

from dataclasses import dataclass

from channels.db import database_sync_to_async as db
from pydantic import create_model

from governance.policy import ROLE_ADMIN, ROLE_AUDITOR
from mcpserver.registry import Result, page, tool
from mcpserver.tools.rules import Deleted, PageArgs, RefArgs, _fields


@dataclass(frozen=True)
class RuleServices:
    to_dict: object
    list: object
    get: object
    create: object
    update: object
    delete: object


def rule_tools(
    prefix: str,
    what: str,
    *,
    services: RuleServices,
    out: type[Result],
    create_args,
    update_args,
    create_help: str,
    delete_help: str = "",
) -> None:
    """Register the five tools of one kind of rule (`what` names it in descriptions)."""
    listed = create_model(
        f"{out.__name__}List",
        __base__=Result,
        items=(list[out], ...),
        total=(int, ...),
        has_next_page=(bool, ...),
        next_offset=(int | None, ...),
    )

    async def list_rules(actor, args: PageArgs, ctx):
        @db
        def run():
            items, total = services.list(actor=actor, limit=args.limit, offset=args.offset)
            return [services.to_dict(r) for r in items], total

        items, total = await run()
        return listed(**page(items, total, args.offset))

    async def get_rule(actor, args: RefArgs, ctx):
        return out(**await db(lambda: services.to_dict(services.get(actor=actor, ref=args.id)))())

    async def create_rule(actor, args, ctx):
        fields = _fields(args, skip=("name",))
        return out(
            **await db(lambda: services.to_dict(services.create(actor=actor, name=args.name, **fields)))()
        )

    async def update_rule(actor, args, ctx):
        fields = _fields(args)
        return out(
            **await db(lambda: services.to_dict(services.update(actor=actor, ref=args.id, **fields)))()
        )

    async def delete_rule(actor, args: RefArgs, ctx):
        return Deleted(name=await db(lambda: services.delete(actor=actor, ref=args.id))(), deleted=True)

    tool(
        f"{prefix}_list",
        description=f"{what.capitalize()}s of your org (admins and auditors).",
        args=PageArgs,
        result=listed,
        role=ROLE_AUDITOR,
    )(list_rules)
    tool(
        f"{prefix}_get",
        description=f"One {what} by id or name (admins and auditors).",
        args=RefArgs,
        result=out,
        role=ROLE_AUDITOR,
    )(get_rule)
    tool(
        f"{prefix}_create",
        description=create_help,
        args=create_args,
        result=out,
        role=ROLE_ADMIN,
        read_only=False,
    )(create_rule)
    tool(
        f"{prefix}_update",
        description=f"Change a {what} (admin); only the fields given change, lists are replaced.",
        args=update_args,
        result=out,
        role=ROLE_ADMIN,
        read_only=False,
        destructive=True,
    )(update_rule)
    tool(
        f"{prefix}_delete",
        description=f"Delete a {what} (admin).{(' ' + delete_help) if delete_help else ''}",
        args=RefArgs,
        result=Deleted,
        role=ROLE_ADMIN,
        read_only=False,
        destructive=True,
    )(delete_rule)
