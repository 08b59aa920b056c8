"""Audit chain heads kept outside the database.

A head is where an org's chain stood at one moment: how many events, the id and hash of the
newest. Someone with write access to the database can rewrite the newest events and recompute
every hash after them, and `audit_verify` alone would then pass; a head saved elsewhere before
(`manage.py audit_heads`, or the `audit.head` events the sinks and webhooks receive every
AUDIT_HEADS_INTERVAL_SECONDS) no longer matches the rewritten chain, and `audit_verify --heads`
says so.
"""

from __future__ import annotations

from django.utils import timezone

from governance.models import Organization
from sessions import events
from sessions.models import AuditChainHead, AuditEvent


def audit_heads(*, org_name: str | None = None) -> list[dict]:
    """The chain head of every org (or one), as saved and published. A system read (CLI, tasks)."""
    now = timezone.now().isoformat()
    heads = AuditChainHead.objects.select_related("org").order_by("org__name")
    if org_name:
        heads = heads.filter(org__name=org_name)
    return [
        {
            "org": str(head.org_id),
            "org_name": head.org.name,
            "count": head.count,
            "last_id": head.last_id,
            "last_hash": head.last_hash,
            "at": now,
        }
        for head in heads
    ]


def audit_heads_publish() -> int:
    """Emit one `audit.head` event per org (to the JSON-lines file, syslog and subscribed webhooks).
    Celery beat runs it every AUDIT_HEADS_INTERVAL_SECONDS. Returns how many were emitted."""
    heads = audit_heads()
    for head in heads:
        events.emit(org_id=head["org"], type=events.AUDIT_HEAD, data=head)
    return len(heads)


def audit_head_check(head: dict) -> str:
    """Compare one saved head with the chain now. Returns "" when the chain still contains it
    (the same event, with the same hash, after the same number of events), else the problem."""
    try:
        org_id, count, last_id, last_hash = (
            head["org"],
            int(head["count"]),
            int(head["last_id"]),
            head["last_hash"],
        )
    except (KeyError, TypeError, ValueError):
        return "the saved head is malformed (it needs org, count, last_id and last_hash)"
    if not Organization.objects.filter(pk=org_id).exists():
        return f"organization {org_id} no longer exists"
    if count == 0:
        return ""
    event = AuditEvent.objects.filter(org_id=org_id, pk=last_id).only("hash").first()
    if event is None:
        return f"event #{last_id}, the head saved at {head.get('at', '?')}, is gone: events were removed"
    if event.hash != last_hash:
        return (
            f"event #{last_id} no longer has the hash saved at {head.get('at', '?')}: "
            "it or an event before it was rewritten"
        )
    now = AuditEvent.objects.filter(org_id=org_id, pk__lte=last_id).count()
    if now != count:
        return f"{now} events up to #{last_id} where the saved head counted {count}: events were removed or inserted"
    return ""
