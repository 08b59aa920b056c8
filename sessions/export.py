"""Exports for security teams: sessions (with their analysis and review outcome) and audit events,
as CSV or JSON Lines, streamed in constant memory.

The rows are exactly those `sessions_list` / `audit_events_list` show the actor (same filter
path, same visibility), read page by page in keyset order (created_at, id), so a million
sessions never sit in memory at once and rows written during the export neither repeat nor shift
the pages. Starting an export is audited (who, which filters, which format) before the first row.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass

from django.db.models import Exists, OuterRef, Q

from governance.errors import InvalidInput
from governance.policy import Actor, scope
from sessions.audit import audit_record
from sessions.models import Session
from sessions.services import _visible_audit_events, _visible_sessions

FORMATS = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8"}
PAGE_SIZE = 1000
ROWS_PER_CHUNK = 200

SESSION_COLUMNS = (
    "id",
    "created_at",
    "started_at",
    "ended_at",
    "user_email",
    "connection",
    "connection_kind",
    "verb",
    "surface",
    "client",
    "status",
    "exit_code",
    "row_count",
    "truncated",
    "execution_time_ms",
    "input",
    "input_sha256",
    "input_bytes",
    "error",
    "guardrails",
    "risk_level",
    "analysis_title",
    "review_id",
    "review_status",
)
AUDIT_COLUMNS = (
    "id",
    "created_at",
    "actor_email",
    "surface",
    "client",
    "action",
    "target_type",
    "target_id",
    "target",
    "outcome",
    "detail",
    "prev_hash",
    "hash",
)


@dataclass
class Export:
    """A started export: what to call the file, its media type, and the text chunks to stream."""

    filename: str
    content_type: str
    chunks: Iterator[str]


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise InvalidInput(f"unknown format {format!r}; use one of: {', '.join(FORMATS)}")


def _audit_export(actor: Actor | None, org_id, what: str, format: str, filters: dict) -> None:
    audit_record(
        actor=actor,
        org_id=org_id,
        surface="cli",
        action=f"{what}.export",
        target_type="records.session" if what == "sessions" else "records.auditevent",
        target_repr=f"{what} export ({format})",
        detail={"format": format, "filters": {k: v for k, v in filters.items() if v}},
    )


def sessions_export(*, actor: Actor | None, format: str, org_id=None, **filters) -> Export:
    """Start an export of the sessions `actor` may see, filtered like `sessions_list` (user_email,
    connection, status, verb, surface, risk_level, review_status, start_date, end_date). `actor=None` is the
    system (the CLI): every session of `org_id`. Raises InvalidInput for a bad format or filter,
    before anything is audited or streamed. The input column is filled only where the actor may
    read the session's content."""
    _check_format(format)
    qs = _visible_sessions(actor, org_id=org_id, **filters)
    if actor is not None:
        readable = scope(Session.objects.all(), actor, "view_content").filter(pk=OuterRef("pk"))
        qs = qs.annotate(content_ok=Exists(readable))
    review = ["review__id", "review__status"] if _has_review() else []
    qs = qs.values(*SESSION_FIELDS, *review, *(["content_ok"] if actor is not None else []))
    _audit_export(actor, org_id, "sessions", format, filters)
    rows = (_session_row(s) for s in _keyset(qs))
    return Export(f"sessions.{format}", FORMATS[format], _render(rows, SESSION_COLUMNS, format))


def audit_events_export(*, actor: Actor | None, format: str, org_id=None, **filters) -> Export:
    """Start an export of the audit events `actor` may read (admins and auditors), filtered like
    `audit_events_list` (actor_email, action, surface, outcome, start_date, end_date), oldest
    first with their hashes, so the file itself can be checked against the chain."""
    _check_format(format)
    qs = _visible_audit_events(actor, org_id=org_id, **filters)
    _audit_export(actor, org_id, "audit", format, filters)
    rows = (_audit_row(e) for e in _keyset_by_id(qs))
    return Export(f"audit.{format}", FORMATS[format], _render(rows, AUDIT_COLUMNS, format))


def _has_review() -> bool:
    return any(f.name == "review" for f in Session._meta.get_fields())


def _keyset(qs) -> Iterator[dict]:
    """Every row of `qs` (values) oldest first, PAGE_SIZE at a time, each page after the last one's key."""
    qs = qs.order_by("created_at", "pk")
    last = None
    while True:
        page_qs = qs
        if last is not None:
            page_qs = qs.filter(Q(created_at__gt=last[0]) | Q(created_at=last[0], pk__gt=last[1]))
        page = list(page_qs[:PAGE_SIZE])
        yield from page
        if len(page) < PAGE_SIZE:
            return
        last = (page[-1]["created_at"], page[-1]["pk"])


def _keyset_by_id(qs):
    qs = qs.order_by("id")
    last = 0
    while True:
        page = list(qs.filter(id__gt=last)[:PAGE_SIZE])
        yield from page
        if len(page) < PAGE_SIZE:
            return
        last = page[-1].pk


def _iso(value):
    return value.isoformat() if value else None


SESSION_FIELDS = (
    "pk",
    "created_at",
    "started_at",
    "ended_at",
    "user__email",
    "connection_name",
    "connection_kind",
    "verb",
    "surface",
    "client",
    "status",
    "exit_code",
    "row_count",
    "truncated",
    "execution_time_ms",
    "input",
    "input_sha256",
    "input_bytes",
    "error",
    "guardrail_findings",
    "analysis__risk_level",
    "analysis__title",
)


def _session_row(row: dict) -> dict:
    return {
        "id": str(row["pk"]),
        "created_at": _iso(row["created_at"]),
        "started_at": _iso(row["started_at"]),
        "ended_at": _iso(row["ended_at"]),
        "user_email": row["user__email"],
        "connection": row["connection_name"],
        "connection_kind": row["connection_kind"],
        "verb": row["verb"],
        "surface": row["surface"],
        "client": row["client"],
        "status": row["status"],
        "exit_code": row["exit_code"],
        "row_count": row["row_count"],
        "truncated": row["truncated"],
        "execution_time_ms": row["execution_time_ms"],
        "input": row["input"] if row.get("content_ok", True) else None,
        "input_sha256": row["input_sha256"],
        "input_bytes": row["input_bytes"],
        "error": row["error"],
        "guardrails": sorted({f["rule"] for f in row["guardrail_findings"] or []}),
        "risk_level": row["analysis__risk_level"],
        "analysis_title": row["analysis__title"],
        # The review outcome (reviews.Review, OneToOne `session.review`) when the session had one.
        "review_id": str(row["review__id"]) if row.get("review__id") else None,
        "review_status": row.get("review__status"),
    }


def _audit_row(event) -> dict:
    return {
        "id": event.pk,
        "created_at": _iso(event.created_at),
        "actor_email": event.actor_email,
        "surface": event.surface,
        "client": event.client,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "target": event.target_repr,
        "outcome": event.outcome,
        "detail": event.detail,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value) -> str | int | float:
    """A value as a spreadsheet-safe CSV cell: text that a spreadsheet would run as a formula
    (starting with = + - @, tab or carriage return) gets a leading apostrophe (OWASP's advice);
    lists and objects become JSON; None an empty cell. Numbers stay numbers."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return value
    if isinstance(value, list | dict):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    value = str(value)
    if value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def _render(rows: Iterator[dict], columns: tuple[str, ...], format: str) -> Iterator[str]:
    """Text chunks of about ROWS_PER_CHUNK rows each; CSV starts with a header row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer) if format == "csv" else None
    if writer is not None:
        writer.writerow(columns)
    count = 0
    for row in rows:
        if writer is not None:
            writer.writerow([csv_cell(row[c]) for c in columns])
        else:
            buffer.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        count += 1
        if count % ROWS_PER_CHUNK == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue()
