"""Statements on the exec hot path, written once instead of compiled by the ORM on every call.

The Django ORM builds and compiles the SQL of a query each time it runs; for the few statements
that every API call or every exec runs (the token lookup, the session row a transition locks) that
compile cost more CPU than the database spent answering (docs/durability.md, "Where the time
went"). These helpers let a caller write such a statement by hand on PostgreSQL and still get
model instances, loaded exactly as the ORM would load them (every concrete field, the fields'
own converters). Everything else keeps using the ORM, and so does SQLite (the embedded default).
"""

from __future__ import annotations

from django.db import connection


def columns(alias: str, model, fields=None) -> str:
    """`alias.col, alias.col, ...` for every concrete field of `model` (or only `fields`, a list of
    them in field order), in field order."""
    qn = connection.ops.quote_name
    return ", ".join(f"{alias}.{qn(str(f.column))}" for f in _fields(model, fields))


def _fields(model, fields=None) -> list:
    return model._meta.concrete_fields if fields is None else fields


def table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def load(row, *models) -> list:
    """One instance of each of `models` from `row`, whose columns are `columns()` of each model in
    turn (as `Model.from_db` does for the ORM's own queries). A model given as `(model, fields)`
    has only those columns in the row; its other fields are deferred."""
    loaded, start = [], 0
    for model in models:
        model, fields = model if isinstance(model, tuple) else (model, None)
        fields = _fields(model, fields)
        values = [
            f.from_db_value(v, None, connection) if hasattr(f, "from_db_value") else v
            for f, v in zip(fields, row[start : start + len(fields)], strict=True)
        ]
        loaded.append(model.from_db(connection.alias, [f.attname for f in fields], values))
        start += len(fields)
    if start != len(row):
        raise ValueError(f"the row has {len(row)} columns, the models {start}")
    return loaded


def fetch_one(sql: str, params, *models) -> list | None:
    """Run `sql` (selecting `columns()` of each model in turn) and load its first row, or None."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return None if row is None else load(row, *models)


def _value(obj, field, add: bool, raw: dict, placeholders: list, params: list) -> None:
    if field.attname in raw:
        sql, more = raw[field.attname]
        placeholders.append(sql)
        params.extend(more)
        return
    _prepared(field, field.pre_save(obj, add), placeholders, params)


def _prepared(field, value, placeholders: list, params: list) -> None:
    if hasattr(value, "resolve_expression"):
        raise TypeError(f"{field.name}: pass expressions as raw SQL (raw={{{field.attname!r}: ...}})")
    placeholders.append(
        field.get_placeholder(value, None, connection) if hasattr(field, "get_placeholder") else "%s"
    )
    params.append(field.get_db_prep_save(value, connection))


def insert(obj, *, raw: dict | None = None) -> None:
    """INSERT `obj` with every concrete field, as `obj.save(force_insert=True)` sends it (each
    field's `pre_save` and `get_db_prep_save`). `raw` maps an attribute name to `(sql, params)`
    for a value the database computes (e.g. `statement_timestamp() + %s`). The primary key must be
    set already (no RETURNING)."""
    if obj.pk is None:
        raise ValueError("hotsql.insert needs the primary key set")
    raw = raw or {}
    qn = connection.ops.quote_name
    fields = obj._meta.concrete_fields
    placeholders: list = []
    params: list = []
    for field in fields:
        _value(obj, field, True, raw, placeholders, params)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table(type(obj))} ({', '.join(qn(str(f.column)) for f in fields)}) "
            f"VALUES ({', '.join(placeholders)})",
            params,
        )
    obj._state.adding = False
    obj._state.db = connection.alias


def update(obj, names, *, raw: dict | None = None) -> int:
    """UPDATE the fields `names` (attribute or field names) of `obj`'s row, as
    `obj.save(update_fields=names)` sends them; `raw` as for `insert`. Returns the rows changed."""
    raw = raw or {}
    qn = connection.ops.quote_name
    fields = [obj._meta.get_field(name) for name in names]
    placeholders: list = []
    params: list = []
    for field in fields:
        _value(obj, field, False, raw, placeholders, params)
    assignments = ", ".join(f"{qn(str(f.column))} = {p}" for f, p in zip(fields, placeholders, strict=True))
    pk = obj._meta.pk
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table(type(obj))} SET {assignments} WHERE {qn(str(pk.column))} = %s",
            [*params, pk.get_db_prep_value(obj.pk, connection)],
        )
        return cursor.rowcount


def assignments(model, values: dict, *, raw: dict | None = None) -> tuple[str, list]:
    """`col = %s, ...` and its parameters for `values` (attribute name -> value) of a `model` row,
    each value sent as `save()` sends it; `raw` as for `insert`. For an UPDATE written by hand."""
    raw = raw or {}
    qn = connection.ops.quote_name
    sql, params = [], []
    for name in {**values, **raw}:
        field = model._meta.get_field(name)
        placeholders: list = []
        if name in raw:
            placeholders.append(raw[name][0])
            params.extend(raw[name][1])
        else:
            _prepared(field, values[name], placeholders, params)
        sql.append(f"{qn(str(field.column))} = {placeholders[0]}")
    return ", ".join(sql), params
