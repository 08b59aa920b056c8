"""Kinds of configuration record (guardrail rules, masking rules, access-request rules, runbook
rules, attributes, webhooks), declared once each and served by four shared tools,
`config_list|get|update|delete` (mcpserver.tools.config), plus one typed `<prefix>_create` per kind.

Four tools with a `kind` argument instead of four per kind keep tools/list small (issue 15): the
records differ only in their fields, and each kind's create tool describes those fields once.
Reading is for admins and auditors (attributes and webhooks: admins), changing for admins; the
services check again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from channels.db import database_sync_to_async as db
from pydantic import AliasChoices, Field

from governance.policy import ROLE_ADMIN, Actor
from mcpserver.registry import Args, Result, tool

Limit = Annotated[int, Field(ge=1, le=100)]
Offset = Annotated[int, Field(ge=0, le=10_000)]
Names = list[Annotated[str, Field(min_length=1, max_length=63)]]
ATTRIBUTES_HELP = "Connections tagged so (env=prod, pci)."


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


class Deleted(Result):
    name: str
    deleted: bool


def fields_of(args: Args, skip=("rule_name",)) -> dict:
    """The arguments given (not None), without `skip`: what a create/update service takes."""
    return {k: v for k, v in args.model_dump(by_alias=True).items() if v is not None and k not in skip}


@dataclass(frozen=True)
class RuleServices:
    to_dict: Callable
    list: Callable
    get: Callable
    create: Callable
    update: Callable
    delete: Callable


@dataclass(frozen=True)
class Kind:
    """One kind of configuration record as the shared tools serve it. The callables are synchronous
    (they run in the database thread) and take the actor first."""

    name: str
    what: str
    create_tool: str
    out: type[Result]
    list: Callable[[Actor, int, int], tuple[list[dict], int]]
    get: Callable[[Actor, str], dict]
    update: Callable[[Actor, str, dict], dict]  # the changes, not yet validated
    delete: Callable[[Actor, str], str]


KINDS: dict[str, Kind] = {}


def register_kind(kind: Kind) -> None:
    if kind.name in KINDS:
        raise RuntimeError(f"kind {kind.name} registered twice")
    KINDS[kind.name] = kind


def rule_tools(
    prefix: str,
    kind: str,
    what: str,
    *,
    services: RuleServices,
    out: type[Result],
    create_args: type[Args],
    update_args: type[Args],
    create_help: str,
) -> None:
    """Register one kind of rule: its typed `<prefix>_create` tool, and its entry in the shared
    tools. `update_args` has the create tool's fields (all optional) and the `rule_name` reference."""

    def list_rules(actor, limit, offset):
        items, total = services.list(actor=actor, limit=limit, offset=offset)
        return [services.to_dict(r) for r in items], total

    def update_rule(actor, ref, changes):
        args = update_args.model_validate({**changes, "rule_name": ref})
        return services.to_dict(services.update(actor=actor, ref=ref, **fields_of(args)))

    register_kind(
        Kind(
            name=kind,
            what=what,
            create_tool=f"{prefix}_create",
            out=out,
            list=list_rules,
            get=lambda actor, ref: services.to_dict(services.get(actor=actor, ref=ref)),
            update=update_rule,
            delete=lambda actor, ref: services.delete(actor=actor, ref=ref),
        )
    )

    async def create_rule(actor, args, ctx):
        fields = fields_of(args, skip=("name",))
        return out(
            **await db(lambda: services.to_dict(services.create(actor=actor, name=args.name, **fields)))()
        )

    tool(
        f"{prefix}_create",
        description=create_help,
        args=create_args,
        result=out,
        role=ROLE_ADMIN,
        read_only=False,
    )(create_rule)
