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
    try:
        from sessions import delivery

        delivery.event_enqueue(event)
    except Exception:  # noqa: BLE001
        log.exception("event %s %s could not be queued", event["type"], event["id"])
