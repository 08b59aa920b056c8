"""The outbound event stream: what happened, told to the outside (webhooks, JSON lines, syslog).

Services call `emit(org_id=..., type=..., data=...)` where they change state (session events come
from sessions.lifecycle). The event is an outbox row written in the caller's transaction, so a
rolled-back change is never announced and a committed one is delivered at least once, even when
the broker or the process goes away right after the commit; the relay delivers it, so the caller
never waits on a receiver.
"""

from __future__ import annotations

import functools
import json
import logging
import uuid

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.utils import timezone

from gateway import metrics
from sessions.models import Session, WebhookEndpoint
from sessions.outbox import outbox_put

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
    """Record one outbound event (e.g. "session.finished", "review.created") in the caller's
    transaction, as an outbox row (sessions.outbox): it leaves when the transaction commits, at
    least once, with a stable id, whatever happens to the broker or this process meanwhile. Nothing
    is written when the event could reach nobody: no sink configured and no enabled webhook of the
    org. Never raises into its caller: an event must never break the change it describes."""
    try:
        event = event_build(org_id=org_id, type=type, data=data)

        # Counted once committed (sessions, review decisions), delivered or not; never raises.
        transaction.on_commit(lambda: metrics.event_observed(event))
        if settings.EVENTS_JSONL_PATH or settings.SYSLOG_ADDRESS:
            outbox_put("event", event)
        elif connection.vendor == "postgresql":  # asked by the insert itself: no statement of its own
            outbox_put("event", event, only_if=(_webhook_sql(), [org_id]))
        elif WebhookEndpoint.objects.filter(org_id=org_id, enabled=True).exists():
            outbox_put("event", event)
    except Exception:  # noqa: BLE001 - an event must never break the change it describes
        log.exception("event %s for org %s dropped", type, org_id)


@functools.cache
def _webhook_sql() -> str:
    """Whether the org has an enabled webhook: the condition of an event's outbox row."""
    table = connection.ops.quote_name(WebhookEndpoint._meta.db_table)
    return f"SELECT 1 FROM {table} WHERE org_id = %s AND enabled"


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
            session = Session.objects.select_related("user").get(pk=session)
    except Exception:  # noqa: BLE001
        log.exception("session %s: end events dropped", session)
        return
    if session.status not in ("blocked", "rejected"):  # refused before it ran: blocked
        emit_session(session, SESSION_FINISHED)
    elif session.guardrail_findings:
        emit_session(session, SESSION_BLOCKED, GUARDRAIL_VIOLATION)
    else:
        emit_session(session, SESSION_BLOCKED)
