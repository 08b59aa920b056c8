"""The outbound event stream: what happened, told to the outside (webhooks, JSON lines, syslog).

Services call `emit(org_id=..., type=..., data=...)` where they change state. The event leaves
only when the caller's transaction commits (`transaction.on_commit`), so a rolled-back change is
never announced, and delivery runs in Celery, so the caller never waits on a receiver. `emit`
never raises into its caller: an event that cannot be queued is logged and dropped, never a
reason to fail the change it describes (the audit log, not the event stream, is the record).
"""

from __future__ import annotations

import json
import logging
import uuid

from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone

log = logging.getLogger("portcullis.events")

SESSION_STARTED = "session.started"
SESSION_FINISHED = "session.finished"
SESSION_BLOCKED = "session.blocked"
REVIEW_CREATED = "review.created"
REVIEW_APPROVED = "review.approved"
REVIEW_REJECTED = "review.rejected"
REVIEW_EXECUTED = "review.executed"
REVIEW_REVOKED = "review.revoked"
REVIEW_EXPIRED = "review.expired"
GUARDRAIL_VIOLATION = "guardrail.violation"
UPSTREAM_CONTRACT_CHANGED = "upstream.contract_changed"
AUDIT_HEAD = "audit.head"

EVENT_TYPES = (
    SESSION_STARTED,
    SESSION_FINISHED,
    SESSION_BLOCKED,
    REVIEW_CREATED,
    REVIEW_APPROVED,
    REVIEW_REJECTED,
    REVIEW_EXECUTED,
    REVIEW_REVOKED,
    REVIEW_EXPIRED,
    GUARDRAIL_VIOLATION,
    UPSTREAM_CONTRACT_CHANGED,
    AUDIT_HEAD,
)


def event_build(*, org_id, type: str, data: dict) -> dict:
    """The event as it goes out: a fresh id, the type, the org, when, and JSON-safe data."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type!r}")
    return {
        "id": str(uuid.uuid4()),
        "type": type,
        "org": str(org_id),
        "created_at": timezone.now().isoformat(),
        "data": json.loads(json.dumps(data, cls=DjangoJSONEncoder)),
    }


def emit(*, org_id, type: str, data: dict) -> None:
    """Queue one outbound event (e.g. "session.finished", "review.created"). Never blocks the
    caller and never raises into it: it records the event for delivery on transaction commit
    (transaction.on_commit) and hands delivery to Celery."""
    try:
        event = event_build(org_id=org_id, type=type, data=data)
        transaction.on_commit(lambda: _dispatch(event))
    except Exception:  # noqa: BLE001 - an event must never break the change it describes
        log.exception("event %s for org %s dropped", type, org_id)


def _dispatch(event: dict) -> None:
    """Hand the event to delivery; runs after commit, outside the caller's transaction."""
    from gateway import metrics

    metrics.event_observed(event)  # counted once committed (sessions, review decisions); never raises
    try:
        from sessions import delivery

        delivery.event_enqueue(event)
    except Exception:  # noqa: BLE001
        log.exception("event %s %s could not be queued", event["type"], event["id"])


def session_event_data(session) -> dict:
    """What a session event says: who ran what verb where and how it ended, the input's hash and
    size (never the input or output: those stay behind the gateway's content permissions)."""
    return {
        "session_id": str(session.pk),
        "user_email": session.user.email,
        "connection": session.connection_name,
        "connection_kind": session.connection_kind,
        "verb": session.verb,
        "surface": session.surface,
        "client": session.client,
        "status": session.status,
        "exit_code": session.exit_code,
        "row_count": session.row_count,
        "input_sha256": session.input_sha256,
        "input_bytes": session.input_bytes,
        "error": session.error,
        "guardrails": sorted({f["rule"] for f in session.guardrail_findings or []}),
        "created_at": session.created_at,
        "ended_at": session.ended_at,
        "execution_time_ms": session.execution_time_ms,
    }


def emit_session(session, *types: str) -> None:
    """Emit session events for `session` as it is now: `session.started`, `session.finished`,
    `session.blocked`; `guardrail.violation` adds the findings. Never raises."""
    try:
        data = session_event_data(session)
    except Exception:  # noqa: BLE001
        log.exception("session %s: events dropped", getattr(session, "pk", None))
        return
    for type in types:
        extra = {"findings": list(session.guardrail_findings or [])} if type == GUARDRAIL_VIOLATION else {}
        emit(org_id=session.org_id, type=type, data={**data, **extra})


def emit_session_end(session) -> None:
    """The events of a session that just became final (a Session, or its id): `session.blocked`
    (plus `guardrail.violation` when guardrails blocked it) or `session.finished`. Never raises."""
    try:
        if not hasattr(session, "pk"):
            from sessions.models import Session

            session = Session.objects.select_related("user").get(pk=session)
    except Exception:  # noqa: BLE001
        log.exception("session %s: end events dropped", session)
        return
    if session.status != "blocked":
        emit_session(session, SESSION_FINISHED)
    elif session.guardrail_findings:
        emit_session(session, SESSION_BLOCKED, GUARDRAIL_VIOLATION)
    else:
        emit_session(session, SESSION_BLOCKED)
