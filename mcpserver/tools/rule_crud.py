"""The five tools of a kind of rule, declared once: `<prefix>_list|get|create|update|delete`.

Reading is for admins and auditors, changing for admins (the services check again). Each kind
passes its services, its result model and its create/update argument models; the tools stay thin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from channels.db import database_sync_to_async as db
from pydantic import AliasChoices, Field, create_model

from governance.policy import ROLE_ADMIN, ROLE_AUDITOR
from mcpserver.registry import Args, Result, page, tool

Limit = Annotated[int, Field(ge=1, le=100)]
Offset = Annotated[int, Field(ge=0, le=10_000)]
Names = list[Annotated[str, Field(min_length=1, max_length=63)]]


class PageArgs(Args):
    limit: Limit = 50
    offset: Offset = 0


RuleRef = Annotated[
    str,
    Field(
        min_length=1,
        max_length=100,
        description="The rule's name (or id).",
        validation_alias=AliasChoices("rule_name", "id"),
    ),
]


class RefArgs(Args):
    rule_name: RuleRef


class Deleted(Result):
    name: str
    deleted: bool


def fields_of(args: Args, skip=("rule_name",)) -> dict:
    """The arguments given (not None), without `skip`: what a create/update service takes."""
    return {k: v for k, v in args.model_dump(by_alias=True).items() if v is not None and k not in skip}


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
    list_help: str = "",
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
        return out(**await db(lambda: services.to_dict(services.get(actor=actor, ref=args.rule_name)))())

    async def create_rule(actor, args, ctx):
        fields = fields_of(args, skip=("name",))
        return out(
            **await db(lambda: services.to_dict(services.create(actor=actor, name=args.name, **fields)))()
        )

    async def update_rule(actor, args, ctx):
        fields = fields_of(args)
        return out(
            **await db(lambda: services.to_dict(services.update(actor=actor, ref=args.rule_name, **fields)))()
        )

    async def delete_rule(actor, args: RefArgs, ctx):
        return Deleted(
            name=await db(lambda: services.delete(actor=actor, ref=args.rule_name))(), deleted=True
        )

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
        description=f"Change a {what} (admin).",
        args=update_args,
        fields_as=f"{prefix}_create",
        result=out,
        role=ROLE_ADMIN,
        read_only=False,
        destructive=True,
        idempotent=True,
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
