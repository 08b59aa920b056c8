"""Celery tasks of the session records: thin, by id, calling a service."""

from celery import shared_task

from sessions import delivery, heads, outbox, services
from sessions.delivery import webhook_deliver_task as webhook_deliver  # noqa: F401  (defined beside its work)
from sessions.services import session_analyze  # noqa: F401  (defined beside the service it runs)


@shared_task(name="sessions.tasks.sessions_sweep_orphans")
def sessions_sweep_orphans() -> int:
    return services.sessions_sweep_orphans()


@shared_task(name="sessions.tasks.analysis_sweep_missing")
def analysis_sweep_missing() -> int:
    return services.analysis_sweep_missing()


@shared_task(name="sessions.tasks.outbox_relay", ignore_result=True)
def outbox_relay() -> int:
    """Deliver what waits in the outbox (every replica's relay does too; this is the backstop)."""

    return outbox.relay_all()


@shared_task(name="sessions.tasks.webhooks_retry_due")
def webhooks_retry_due() -> int:
    return delivery.webhooks_retry_due()


@shared_task(name="sessions.tasks.audit_heads_publish")
def audit_heads_publish() -> int:
    """Send every org's audit chain head out as an `audit.head` event (sinks and webhooks)."""

    return heads.audit_heads_publish()
