"""Reading session records, and the sweeper that ends orphans."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from governance.errors import InvalidInput
from governance.policy import Actor, get_scoped, scope
from sessions.models import ACTIVE_STATUSES, AuditEvent, Runner, Session, SessionStatus
from sessions.wakeup import notify_session_finished

logger = logging.getLogger("portcullis.sessions")

MAX_LIMIT = 100
MAX_OFFSET = 10_000


def _parse_time(value: str | None, field: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"invalid {field} format, expected RFC 3339 (e.g. 2026-01-01T00:00:00Z)") from None
    if parsed.tzinfo is None:
        raise InvalidInput(f"{field} needs a time zone (e.g. a trailing Z)")
    return parsed


def session_list(
    *,
    actor: Actor,
    user_email: str | None = None,
    connection: str | None = None,
    status: str | None = None,
    verb: str | None = None,
    surface: str | None = None,
    start_date: str | None = None,
    end_date: str | None = None,
    limit: int = 20,
    offset: int = 0,
) -> tuple[list[Session], int]:
    """Sessions the actor may see (own; all in the org for admins and auditors), newest first."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}")
    if not 0 <= offset <= MAX_OFFSET:
        raise InvalidInput(f"offset must be between 0 and {MAX_OFFSET}; narrow the filters instead")
    if status and status not in SessionStatus.values:
        raise InvalidInput(f"unknown status {status!r}; use one of: {', '.join(SessionStatus.values)}")
    qs = scope(Session.objects.all(), actor, "view")
    start, end = _parse_time(start_date, "start_date"), _parse_time(end_date, "end_date")
    if user_email:
        qs = qs.filter(user__email=user_email.lower())
    if connection:
        qs = qs.filter(connection_name=connection)
    if status:
        qs = qs.filter(status=status)
    if verb:
        qs = qs.filter(verb=verb)
    if surface:
        qs = qs.filter(surface=surface)
    if start:
        qs = qs.filter(created_at__gte=start)
    if end:
        qs = qs.filter(created_at__lt=end)
    qs = qs.select_related("user").order_by("-created_at", "-pk")
    total = qs.count()
    return list(qs[offset : offset + limit]), total


def session_get(*, actor: Actor, session_id, action: str = "view") -> Session:
    """One session the actor may see, or NotFound("session not found") for missing and forbidden alike."""
    from gateway.pipeline import parse_id

    pk = parse_id(session_id, "session not found")
    return get_scoped(
        Session.objects.select_related("user"), actor, action, not_found="session not found", pk=pk
    )


def session_to_dict(session: Session, *, privileged: bool = False) -> dict:
    """Metadata of a session, without its content. Guardrail findings (which rule, which statement,
    what matched) are for admins and auditors (`privileged`); everyone sees the rules' names."""
    findings = session.guardrail_findings or []
    return {
        "guardrails": sorted({f["rule"] for f in findings}),
        "guardrail_findings": findings if privileged else [],
        "masking": (session.masking or {}).get("counts", {}),
        "id": str(session.pk),
        "connection": session.connection_name,
        "connection_kind": session.connection_kind,
        "user_email": session.user.email,
        "surface": session.surface,
        "client": session.client,
        "verb": session.verb,
        "status": session.status,
        "exit_code": session.exit_code,
        "row_count": session.row_count,
        "truncated": session.truncated,
        "input_bytes": session.input_bytes,
        "input_sha256": session.input_sha256,
        "error": session.error,
        "metadata": session.metadata,
        "created_at": session.created_at.isoformat(),
        "started_at": session.started_at.isoformat() if session.started_at else None,
        "ended_at": session.ended_at.isoformat() if session.ended_at else None,
        "execution_time_ms": session.execution_time_ms,
    }


def session_content(*, actor: Actor, session_id, offset: int = 0, max_bytes: int = 64 * 1024) -> dict:
    """Input and output of a session as its caller saw it, the output paged by byte ranges."""
    if offset < 0:
        raise InvalidInput("offset must not be negative")
    if not 1 <= max_bytes <= 1024 * 1024:
        raise InvalidInput("max_bytes must be between 1 and 1048576")
    session = session_get(actor=actor, session_id=session_id, action="view_content")
    data = session.output.encode()
    chunk = data[offset : offset + max_bytes]
    next_offset = offset + len(chunk) if offset + len(chunk) < len(data) else None
    return {
        "id": str(session.pk),
        "connection": session.connection_name,
        "status": session.status,
        "verb": session.verb,
        "input": session.input,
        "input_truncated": session.input_truncated,
        "output": chunk.decode(errors="ignore"),
        "output_offset": offset,
        "output_total_bytes": len(data),
        "next_offset": next_offset,
        "columns": (session.result or {}).get("columns"),
        "rows": (session.result or {}).get("rows") if offset == 0 else None,
        "exit_code": session.exit_code,
        "error": session.error,
    }


def sessions_sweep_orphans(*, now=None) -> int:
    """Mark failed every open/running session whose runner process has stopped beating.

    Safe to run anywhere and often: a session is only touched when its runner was last seen more
    than RUNNER_STALE_SECONDS ago (or never registered), under a row lock.
    """
    now = now or timezone.now()
    stale_before = now - timedelta(seconds=settings.RUNNER_STALE_SECONDS)
    live = Runner.objects.filter(last_seen_at__gte=stale_before).values_list("pk", flat=True)
    candidates = (
        Session.objects.filter(status__in=ACTIVE_STATUSES, created_at__lt=stale_before)
        .filter(~Q(runner__in=live))
        .values_list("pk", flat=True)
    )
    swept = 0
    for pk in list(candidates[:1000]):
        with transaction.atomic():
            session = Session.objects.select_for_update().filter(pk=pk, status__in=ACTIVE_STATUSES).first()
            if session is None:
                continue
            runner = Runner.objects.filter(pk=session.runner).first()
            seen = runner.last_seen_at.isoformat() if runner else "never"
            session.status = SessionStatus.FAILED
            session.ended_at = now
            session.error = (
                f"the gateway process running this session stopped (runner {session.runner or '?'}, "
                f"last seen {seen}); its outcome is unknown"
            )
            session.save(update_fields=["status", "ended_at", "error"])
            AuditEvent.objects.create(
                org_id=session.org_id,
                surface="task",
                action="session.orphaned",
                target_type="records.session",
                target_id=str(session.pk),
                target_repr=str(session)[:200],
                outcome=AuditEvent.Outcome.FAILED,
                detail={"runner": session.runner},
            )
            transaction.on_commit(lambda pk=pk: notify_session_finished(pk))
            swept += 1
    Runner.objects.filter(last_seen_at__lt=now - timedelta(days=1)).delete()
    if swept:
        logger.warning("marked %d orphaned session(s) failed", swept)
    return swept
