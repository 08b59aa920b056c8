"""config_list|get|update|delete: the shared tools over every kind of configuration record
(mcpserver.tools.rule_crud.KINDS). Imported after the modules that declare the kinds."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from channels.db import database_sync_to_async as db
from pydantic import AliasChoices, Field, ValidationError, create_model, model_serializer

from governance.errors import InvalidInput
from governance.policy import ROLE_ADMIN, ROLE_AUDITOR
from mcpserver.registry import Args, Result, page, shared, tool
from mcpserver.tools.rule_crud import KINDS, Deleted, Limit, Offset

KindName = Literal[tuple(KINDS)]  # type: ignore[valid-type]
RecordRef = Annotated[
    str,
    Field(
        min_length=1,
        max_length=100,
        description="Its name (or id).",
        validation_alias=AliasChoices("record_name", "rule_name", "id", "attribute_name", "webhook_name"),
    ),
]


class _Record(Result):
    """Every kind's fields, each present only for the kinds that have it."""

    model_config = shared("config_get")

    @model_serializer(mode="wrap")
    def _present(self, handler):
        return {k: v for k, v in handler(self).items() if v is not None}


def _union_fields() -> dict:
    fields: dict = {"kind": (str, ...)}
    for kind in KINDS.values():
        for name, info in kind.out.model_fields.items():
            # Absent, not null, when a kind lacks it (see _present): typed without null.
            fields.setdefault(name, (info.annotation, None))
    return fields


Record = create_model("ConfigRecord", __base__=_Record, **_union_fields())


def _record(kind: str, data: dict) -> dict:
    return {"kind": kind, **data}


# KindName and Record are built from the registered kinds at import time (mypy cannot see them).
class ListArgs(Args):
    kind: KindName  # type: ignore[valid-type]
    limit: Limit = 50
    offset: Offset = 0


class RecordList(Result):
    items: list[Record]  # type: ignore[valid-type]
    total: int
    has_next_page: bool
    next_offset: int | None


class RefArgs(Args):
    kind: KindName  # type: ignore[valid-type]
    record_name: RecordRef


class UpdateArgs(RefArgs):
    changes: dict[str, Any] = Field(
        description="As the kind's _create tool names them (name renames); lists replace."
    )


@tool(
    "config_list",
    description="The org's records of a kind, with the fields of its <kind>s_create tool (masking_rule: "
    "datamasking_rules_create).",
    args=ListArgs,
    result=RecordList,
    role=ROLE_AUDITOR,
)
async def config_list(actor, args: ListArgs, ctx) -> RecordList:
    kind = KINDS[args.kind]
    items, total = await db(lambda: kind.list(actor, args.limit, args.offset))()
    return RecordList(**page([_record(args.kind, i) for i in items], total, args.offset))


@tool(
    "config_get",
    description="One record of a kind.",
    args=RefArgs,
    result=Record,
    role=ROLE_AUDITOR,
)
async def config_get(actor, args: RefArgs, ctx):
    data = await db(lambda: KINDS[args.kind].get(actor, args.record_name))()
    return Record(**_record(args.kind, data))


@tool(
    "config_update",
    description="Change a record of a kind.",
    args=UpdateArgs,
    result=Record,
    role=ROLE_ADMIN,
    read_only=False,
    destructive=True,
    idempotent=True,
)
async def config_update(actor, args: UpdateArgs, ctx):
    kind = KINDS[args.kind]

    def run():
        try:
            return kind.update(actor, args.record_name, args.changes)
        except ValidationError as exc:
            parts = [
                f"{'.'.join(str(p) for p in e['loc']) or 'changes'}: {e['msg']}" for e in exc.errors()[:5]
            ]
            raise InvalidInput(f"invalid changes for a {kind.what}: " + "; ".join(parts)) from None

    return Record(**_record(args.kind, await db(run)()))


@tool(
    "config_delete",
    description="Delete a record of a kind.",
    args=RefArgs,
    result=Deleted,
    role=ROLE_ADMIN,
    read_only=False,
    destructive=True,
)
async def config_delete(actor, args: RefArgs, ctx) -> Deleted:
    name = await db(lambda: KINDS[args.kind].delete(actor, args.record_name))()
    return Deleted(name=name or args.record_name, deleted=True)
