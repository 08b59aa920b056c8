"""Masking that follows the data through the query: per output column, a whole-value plan when a
masked base column feeds it (governance/lineage.py), fail closed when the lineage is unknown.

The target's schema is read through the connection (the caller passes a loader) and cached per
connection for `SCHEMA_TTL_SECONDS`; it is dropped at once after an input that may change it
(CREATE/ALTER/DROP/RENAME), and a stale schema fails closed anyway (an unknown name makes the
lineage unknown).
"""

from __future__ import annotations

import re
import threading
import time

from governance import lineage
from governance.masking import COLUMN_ENTITY, Masker, stricter_method

__all__ = ["derived_plans", "forget", "SCHEMA_TTL_SECONDS", "FAIL_CLOSED_PLAN"]

SCHEMA_TTL_SECONDS = 60.0
# What an output column gets when its lineage is unknown and the input reads a masked column.
FAIL_CLOSED_PLAN = ("redact", 0, COLUMN_ENTITY)

_cache: dict[object, tuple[float, dict]] = {}
_lock = threading.Lock()
_DDL = re.compile(r"\b(create|alter|drop|rename|truncate|import)\b", re.I)
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


def forget(key) -> None:
    with _lock:
        _cache.pop(key, None)


def _schema(key, loader) -> dict | None:
    now = time.monotonic()
    with _lock:
        hit = _cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
    try:
        schema = loader()
    except Exception:  # unreachable target or no permission: lineage unknown (fail closed)
        return None
    with _lock:
        _cache[key] = (now + SCHEMA_TTL_SECONDS, schema)
    return schema


def derived_plans(
    masker: Masker, sql: str, dialect: str, *, key, loader, width: int, default_db: str | None = None
) -> list | None:
    """Per output column, the whole-value plan its lineage asks for (None: none), or None when
    nothing needs to follow lineage. `loader()` returns the schema {schema: {table: {column: type}}}."""
    if not masker.follows_lineage or not width:
        return None
    schema = _schema(key, loader)
    if _DDL.search(sql):
        forget(key)
    sources = lineage.output_sources(sql, dialect, schema, default_db=default_db) if schema else None
    if sources is not None and len(sources) == width:
        plans = []
        for feeding in sources:
            plan = None
            for qualified in sorted(feeding):
                candidate = masker.source_plan(qualified)
                if candidate is not None:
                    plan = candidate if plan is None else _strictest(plan, candidate)
            plans.append(plan)
        return plans
    if _reads_masked(masker, sql, schema):
        return [FAIL_CLOSED_PLAN] * width
    return None


def _strictest(a, b):

    return stricter_method(a, b)


def _reads_masked(masker: Masker, sql: str, schema: dict | None) -> bool:
    """Could the input read a masked column? A word of the input names one (a column, or a table
    that has one: SELECT * reads it), or there is no schema to tell."""
    words = {w.lower() for w in _WORD.findall(sql)}
    if not schema:
        return any(masker.source_plan(w) is not None for w in words) or "*" in sql
    any_masked = any(
        masker.source_plan(f"{table}.{col}") is not None
        for tables in schema.values()
        for table, cols in tables.items()
        for col in cols
    )
    for tables in schema.values():
        for table, cols in tables.items():
            if (
                any_masked
                and table.lower() in words
                and any(str(t).startswith("view:") for t in cols.values())
            ):
                return True  # a view may read (and rename) a masked column
            for col in cols:
                if masker.source_plan(f"{table}.{col}") is None:
                    continue
                if col.lower() in words or table.lower() in words:
                    return True
    return False
