"""Which base-table columns feed each output column of a query (column lineage), for masking.

A masked column (a column rule, or a column an admin typed as an entity) must stay masked through
any expression: ``reverse(email)``, ``encode(iban::bytea, 'base64')``, ``string_agg(substr(ssn,
i, 1), '')`` all return the masked value in another shape. So the masker asks, per output column,
"does any masked base column feed this value?", and masks the whole value if so, whatever the
expression did.

How: sqlglot's qualifier (``sqlglot.optimizer.qualify``) resolves every column against the
target's schema (stars expanded, names qualified), then the scopes of the query (CTEs, derived
tables, scalar and correlated subqueries, set operations) are walked down to base tables. Every
column a value's expression mentions counts, including those inside scalar subqueries in it;
columns that only filter (WHERE, JOIN ON) or order do not feed the value and are not counted (see
THREAT_MODEL.md: inference through filters and aggregates stays out of reach).

`output_sources` returns None when the lineage cannot be established with certainty (the input
does not parse, a name is not in the schema, a table function, a statement that is not a query,
an output count that does not match): the caller then fails closed.

sqlglot's own ``sqlglot.lineage.lineage`` answers one output column per call and re-qualifies the
query each time; walking the scopes once for all columns is what keeps this cheap (see
bench/masking.py).
"""

from __future__ import annotations

import logging
import threading

from sqlglot import exp, parse
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, build_scope
from sqlglot.schema import MappingSchema

__all__ = ["output_sources", "Schema"]

logger = logging.getLogger(__name__)

# {schema: {table: {column: type}}}, names lower-case (SQLite: schema "main").
Schema = dict[str, dict[str, dict[str, str]]]

_DEFAULT_DB = {"postgres": "public", "sqlite": "main"}
_MAX_DEPTH = 32


class _Unknown(Exception):
    pass


def output_sources(sql: str, dialect: str, schema: Schema, *, default_db: str | None = None):
    """Per output column of the rows the batch shows (its last query), the set of base columns
    ("table.column", lower case) that feed the value; None if that cannot be established."""
    try:
        statements = [s for s in parse(sql, read=dialect) if s is not None]
    except (SqlglotError, RecursionError, ValueError):
        return None
    query = None
    for stmt in statements:
        if isinstance(stmt, exp.Query):
            query = stmt
        elif stmt.args.get("returning") is not None:
            query = None  # RETURNING rows: not followed here
    if query is None:
        return None
    db = default_db or _DEFAULT_DB.get(dialect)
    try:
        qualified = qualify(
            query,
            schema=_mapping_schema(schema, dialect),
            dialect=dialect,
            db=db,
            validate_qualify_columns=True,
            quote_identifiers=False,
            identify=False,
        )
        root = build_scope(qualified)
        if root is None:
            return None
        _local.schema, _local.index = schema, None
        try:
            return [frozenset(s) for s in _scope_outputs(root, 0)]
        finally:
            _local.schema = _local.index = None
    except (_Unknown, SqlglotError, RecursionError, KeyError, ValueError, AttributeError) as exc:
        logger.debug("lineage unknown: %s", exc)
        return None


_schemas: dict[tuple[int, str], tuple[dict, MappingSchema]] = {}
_schemas_lock = threading.Lock()


def _mapping_schema(schema: Schema, dialect: str) -> MappingSchema:
    """sqlglot's schema object, built once per schema dict (building it walks every column; the
    caller caches the dict per connection, so this is once per connection and refresh)."""
    key = (id(schema), dialect)
    with _schemas_lock:
        hit = _schemas.get(key)
        if hit is not None and hit[0] is schema:
            return hit[1]
    built = MappingSchema(schema, dialect=dialect)
    with _schemas_lock:
        if len(_schemas) > 256:
            _schemas.clear()
        _schemas[key] = (schema, built)
    return built


def _scope_outputs(scope: Scope, depth: int) -> list[set[str]]:
    """Sources of each output column of a scope (a SELECT or a set operation)."""
    if depth > _MAX_DEPTH:
        raise _Unknown("nested too deeply")
    node = scope.expression
    if isinstance(node, exp.SetOperation):
        branch_scopes = list(getattr(scope, "set_operation_scopes", None) or ())
        if not branch_scopes:
            raise _Unknown("set operation without branches")
        branches = [_scope_outputs(s, depth + 1) for s in branch_scopes]
        width = len(branches[0])
        if any(len(b) != width for b in branches):
            raise _Unknown("set operation branches differ in width")
        return [set().union(*(b[i] for b in branches)) for i in range(width)]
    if not isinstance(node, exp.Select):
        raise _Unknown(f"unsupported scope {type(node).__name__}")
    out = []
    for projection in node.expressions:
        if (
            isinstance(projection, exp.Star)
            or projection.find(exp.Star) is not None
            and not _is_count_star(projection)
        ):
            raise _Unknown("unexpanded star")
        out.append(_expr_sources(scope, projection, depth))
    return out


def _is_count_star(e: exp.Expr) -> bool:
    stars = list(e.find_all(exp.Star))
    return all(isinstance(s.parent, exp.Count) for s in stars)


def _scopes_by_select(scope: Scope) -> dict[int, Scope]:
    index = getattr(_local, "index", None)
    if index is None:  # computed once per query, from the root scope
        root = scope
        while root.parent is not None:
            root = root.parent
        index = _local.index = {id(s.expression): s for s in root.traverse()}
    return index


def _expr_sources(scope: Scope, node: exp.Expr, depth: int) -> set[str]:
    """Every base column any column inside `node` resolves to (subqueries inside it included)."""
    found: set[str] = set()
    index = _scopes_by_select(scope)
    for col in node.find_all(exp.Column):
        if not col.name:
            continue
        owner = scope
        select = col.find_ancestor(exp.Select)
        if select is not None and id(select) in index:
            owner = index[id(select)]
        found |= _resolve(owner, col.table, col.name, depth)
    return found


def _resolve(scope: Scope, table: str, column: str, depth: int) -> set[str]:
    if depth > _MAX_DEPTH:
        raise _Unknown("nested too deeply")
    current: Scope | None = scope
    while current is not None:
        source = current.sources.get(table) if table else None
        if source is not None:
            if isinstance(source, exp.Table):
                if not isinstance(source.this, exp.Identifier):
                    # A table function's rows come from its arguments (unnest(array(...)), ...).
                    return _expr_sources(current, source.this, depth + 1)
                if _is_view(source, current):
                    # A view can rename anything it reads: its lineage is not followed here.
                    raise _Unknown(f"view {source.name}")
                return {f"{source.name.lower()}.{column.lower()}"}
            if isinstance(source, Scope):
                outputs = _named_outputs(source, depth + 1)
                if column.lower() not in outputs:
                    raise _Unknown(f"column {column} not found in a derived table")
                return outputs[column.lower()]
            raise _Unknown("unsupported source")
        current = current.parent
    if not table:
        raise _Unknown(f"unqualified column {column}")
    raise _Unknown(f"unknown source {table}")


_local = threading.local()  # the schema of the query being resolved, per worker thread


def _is_view(table: exp.Table, scope: Scope) -> bool:
    schema = getattr(_local, "schema", None) or {}
    cols = schema.get((table.db or "").lower(), {}).get(table.name.lower()) or {}
    return any(str(t).startswith("view:") for t in cols.values())


def _named_outputs(scope: Scope, depth: int) -> dict[str, set[str]]:
    node = scope.expression
    sources = _scope_outputs(scope, depth)
    first = node
    while isinstance(first, exp.SetOperation):
        first = first.this
    names = [p.alias_or_name.lower() for p in first.expressions] if isinstance(first, exp.Select) else []
    if len(names) != len(sources):
        raise _Unknown("derived table width")
    out: dict[str, set[str]] = {}
    for name, src in zip(names, sources, strict=True):
        out.setdefault(name, set()).update(src)
    return out
