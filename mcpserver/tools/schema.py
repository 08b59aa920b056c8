"""Schema introspection: connection_databases, connection_tables, connection_columns (typed JSON,
each call a recorded session)."""

from __future__ import annotations

from channels.db import database_sync_to_async as db
from pydantic import Field

from gateway import pipeline, shapes
from mcpserver.registry import Args, Result, tool


class DatabasesArgs(Args):
    connection_name: str = Field(min_length=1, max_length=63)


class TablesArgs(DatabasesArgs):
    database: str | None = Field(None, max_length=128, description="Defaults to the connection's database.")
    schema_: str | None = Field(None, alias="schema", max_length=128, description=None)


class ColumnsArgs(DatabasesArgs):
    table: str = Field(min_length=1, max_length=128)
    database: str | None = Field(None, max_length=128, description="Defaults to the connection's database.")
    schema_: str | None = Field(
        None,
        alias="schema",
        max_length=128,
        description="Default: public (postgres), the database (mysql).",
    )


DatabaseItem = shapes.DatabaseItem

TableItem = shapes.TableItem

ColumnItem = shapes.ColumnItem


class DatabasesResult(Result):
    connection_name: str
    databases: list[DatabaseItem]


class TablesResult(Result):
    connection_name: str
    database: str | None
    tables: list[TableItem]


class ColumnsResult(Result):
    connection_name: str
    database: str | None
    table: str
    columns: list[ColumnItem]


def _call(actor, what, args, **kw):
    return db(
        lambda: pipeline.schema_list(actor=actor, connection_name=args.connection_name, what=what, **kw)
    )()


@tool(
    "connection_databases",
    description="Databases of a SQL connection.",
    args=DatabasesArgs,
    result=DatabasesResult,
    render=lambda r: "\n".join(d.name for d in r.databases) or "no databases",
)
async def connection_databases(actor, args: DatabasesArgs, ctx) -> DatabasesResult:
    items = await _call(actor, "databases", args)
    return DatabasesResult(connection_name=args.connection_name, databases=items)


@tool(
    "connection_tables",
    description="Tables and views of a database on a SQL connection.",
    args=TablesArgs,
    result=TablesResult,
    render=lambda r: "\n".join(f"{t.schema_}.{t.name} ({t.type})" for t in r.tables) or "no tables",
)
async def connection_tables(actor, args: TablesArgs, ctx) -> TablesResult:
    items = await _call(actor, "tables", args, database=args.database, schema=args.schema_)
    return TablesResult(connection_name=args.connection_name, database=args.database, tables=items)


@tool(
    "connection_columns",
    description="Columns of a table on a SQL connection.",
    args=ColumnsArgs,
    result=ColumnsResult,
    render=lambda r: (
        "\n".join(f"{c.name} {c.type}{'' if c.nullable else ' NOT NULL'}" for c in r.columns)
        or "no such table, or no columns"
    ),
)
async def connection_columns(actor, args: ColumnsArgs, ctx) -> ColumnsResult:
    items = await _call(actor, "columns", args, database=args.database, table=args.table, schema=args.schema_)
    return ColumnsResult(
        connection_name=args.connection_name, database=args.database, table=args.table, columns=items
    )
