"""Connections: list, get, test, and the admin's create, update, delete."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from channels.db import database_sync_to_async as db
from pydantic import AliasChoices, Field

from gateway import pipeline, services, shapes
from gateway.kinds import KIND_NAMES, settings_help
from governance.errors import InvalidInput
from governance.policy import ROLE_ADMIN
from mcpserver.registry import Args, Result, page, shared, tool

# The kinds and their settings come from the kind records (gateway/kinds.py).
Kind = Literal[KIND_NAMES]  # type: ignore[valid-type]
SETTINGS_HELP = "Secrets (*) are write-only. " + settings_help() + "."


class ConnectionOut(shapes.ConnectionOut):
    model_config = shared("connections_get")


class ListArgs(Args):
    search: str | None = Field(None, max_length=100, description="In the name or description.")
    kind: Kind | None = None
    selector: str | None = Field(None, max_length=300, description="Attributes to match, e.g. env=prod,pci.")
    limit: Annotated[int, Field(ge=1, le=100)] = 50
    offset: Annotated[int, Field(ge=0, le=10_000)] = 0


class ListResult(Result):
    items: list[ConnectionOut]
    total: int
    has_next_page: bool
    next_offset: int | None


def _render_list(r: ListResult) -> str:
    if not r.items:
        return "no connections"
    lines = [f"{c.name} ({c.kind})" + (f" - {c.description}" if c.description else "") for c in r.items]
    more = f"\n... {r.total - len(r.items)} more (offset {r.next_offset})" if r.has_next_page else ""
    return "\n".join(lines) + more


@tool(
    "connections_list",
    description=("Connections you may use, by name, paginated."),
    args=ListArgs,
    result=ListResult,
    render=_render_list,
)
async def connections_list(actor, args: ListArgs, ctx) -> ListResult:
    @db
    def run():
        page, total = services.connection_list(
            actor=actor,
            search=args.search,
            kind=args.kind,
            selector=args.selector,
            limit=args.limit,
            offset=args.offset,
        )
        return [services.connection_to_dict(c) for c in page], total

    items, total = await run()
    return ListResult(**page(items, total, args.offset))


class NameArgs(Args):
    connection_name: str = Field(
        min_length=1, max_length=63, validation_alias=AliasChoices("connection_name", "name")
    )


@tool(
    "connections_get",
    description="One connection's settings and limits (secrets: only which keys are set).",
    args=NameArgs,
    result=ConnectionOut,
)
async def connections_get(actor, args: NameArgs, ctx) -> ConnectionOut:
    data = await db(
        lambda: services.connection_to_dict(services.connection_get(actor=actor, name=args.connection_name))
    )()
    return ConnectionOut(**data)


TestResult = shapes.ConnectionTestOut


@tool(
    "connections_test",
    description="Connect to the target and report its version; runs nothing.",
    args=NameArgs,
    result=TestResult,
    render=lambda r: f"{r.connection_name}: {'ok' if r.ok else 'FAILED'} - {r.message} ({r.latency_ms} ms)",
)
async def connections_test(actor, args: NameArgs, ctx) -> TestResult:
    return TestResult(
        **await db(lambda: pipeline.connection_test(actor=actor, connection_name=args.connection_name))()
    )


class Options(Args):
    description: str | None = Field(None, max_length=500)
    max_rows: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    max_output_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] | None = None
    timeout_seconds: Annotated[int, Field(ge=1, le=86_400)] | None = None
    exec_enabled: bool | None = None
    schema_enabled: bool | None = None
    runbooks_enabled: bool | None = None
    agent_queue: str | None = Field(None, max_length=63)


class CreateArgs(Options):
    name: str = Field(min_length=1, max_length=63)
    kind: Kind
    settings: dict[str, Any] = Field(description=SETTINGS_HELP)


def _options(args: Options) -> dict:
    return {k: v for k, v in args.model_dump(include=set(services.OPTION_FIELDS)).items() if v is not None}


@tool(
    "connections_create",
    description="Create a connection.",
    args=CreateArgs,
    result=ConnectionOut,
    role=ROLE_ADMIN,
    read_only=False,
)
async def connections_create(actor, args: CreateArgs, ctx) -> ConnectionOut:
    @db
    def run():
        connection = services.connection_create(
            actor=actor,
            name=args.name,
            kind=args.kind,
            settings=args.settings,
            options=_options(args),
        )
        return services.connection_to_dict(connection)

    return ConnectionOut(**await run())


class UpdateArgs(Options):
    connection_name: str = Field(
        min_length=1, max_length=63, validation_alias=AliasChoices("connection_name", "name")
    )
    settings: dict[str, Any] | None = Field(
        None,
        description="Keys to change; a key set to null is removed; a secret given replaces only that secret.",
    )


@tool(
    "connections_update",
    description="Change a connection's settings, secrets or limits.",
    args=UpdateArgs,
    fields_as="connections_create",
    result=ConnectionOut,
    role=ROLE_ADMIN,
    read_only=False,
    destructive=True,
    idempotent=True,
)
async def connections_update(actor, args: UpdateArgs, ctx) -> ConnectionOut:
    @db
    def run():
        connection = services.connection_update(
            actor=actor, name=args.connection_name, settings=args.settings, options=_options(args)
        )
        return services.connection_to_dict(connection)

    return ConnectionOut(**await run())


class DeleteResult(Result):
    name: str
    deleted: bool


@tool(
    "connections_delete",
    description="Delete a connection. Its session records stay.",
    args=NameArgs,
    result=DeleteResult,
    role=ROLE_ADMIN,
    read_only=False,
    destructive=True,
    render=lambda r: f'connection "{r.name}" deleted',
)
async def connections_delete(actor, args: NameArgs, ctx) -> DeleteResult:
    await db(lambda: services.connection_delete(actor=actor, name=args.connection_name))()
    return DeleteResult(name=args.connection_name, deleted=True)


class ImportArgs(Args):
    csv: str | None = Field(
        None,
        max_length=1_000_000,
        description="Header row: name, kind, attributes (a;b), options, settings (host, port...).",
    )
    rows: list[dict[str, Any]] | None = Field(
        None, max_length=500, description="Or {name, kind, settings, attributes, options...}."
    )
    dry_run: bool = Field(False, description="Check only.")


ImportRow = shapes.ImportRowOut
ImportResult = shapes.ImportOut


@tool(
    "connections_import",
    description="Create up to 500 connections from CSV or rows; a result per row.",
    args=ImportArgs,
    result=ImportResult,
    role=ROLE_ADMIN,
    read_only=False,
    render=lambda r: (
        f"{r.created} {'would be ' if r.dry_run else ''}created, {r.errors} errors"
        + "".join(f"\nrow {x.row} ({x.name}): {x.error}" for x in r.results if x.error)
    ),
)
async def connections_import(actor, args: ImportArgs, ctx) -> ImportResult:
    @db
    def run():
        if (args.csv is None) == (args.rows is None):
            raise InvalidInput("give csv or rows")
        rows = services.import_rows_from_csv(args.csv) if args.csv is not None else args.rows
        return services.connection_import(actor=actor, rows=rows, dry_run=args.dry_run)

    return ImportResult(**await run())
