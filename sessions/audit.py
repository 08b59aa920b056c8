"""Writing the audit log. Called by services inside their transaction, never by signals."""

from governance.policy import Actor
from sessions.models import AuditEvent

Outcome = AuditEvent.Outcome


def audit_record(
    *,
    actor: Actor | None,
    action: str,
    outcome: str = Outcome.SUCCESS,
    target=None,
    target_type: str = "",
    target_id: str = "",
    target_repr: str = "",
    detail: dict | None = None,
    org_id=None,
    surface: str = "cli",
) -> AuditEvent:
    """Append one event. `actor=None` is the system acting from the CLI (then `org_id` is required)."""
    if target is not None:
        target_type = target_type or target._meta.label_lower
        target_id = target_id or str(target.pk)
        target_repr = target_repr or str(target)
    return AuditEvent.objects.create(
        org_id=actor.org_id if actor else org_id,
        actor=actor.user if actor else None,
        actor_email=actor.user.email if actor else "",
        surface=actor.surface if actor else surface,
        client=actor.client if actor else "",
        action=action,
        target_type=target_type,
        target_id=target_id,
        target_repr=target_repr[:200],
        outcome=outcome,
        detail=detail or {},
    )
