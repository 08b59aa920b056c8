"""Celery tasks of the session records: thin, by id, calling a service."""

from celery import shared_task

from gateway import metrics
from sessions import heads, outbox, services


@shared_task(name="sessions.tasks.sessions_sweep_orphans")
def sessions_sweep_orphans() -> int:
    return services.sessions_sweep_orphans()


@shared_task(name="sessions.tasks.session_analyze", ignore_result=True)
def session_analyze(session_id: str) -> None:
    """Analyse one finished session (enqueued on commit when it ends); idempotent."""
    services.analysis_run(session_id=session_id)


@shared_task(name="sessions.tasks.analysis_sweep_missing")
def analysis_sweep_missing() -> int:
    return services.analysis_sweep_missing()


@shared_task(name="sessions.tasks.outbox_relay", ignore_result=True)
def outbox_relay() -> int:
    """Deliver what waits in the outbox (every replica's relay does too; this is the backstop)."""

    return outbox.relay_all()


@shared_task(name="sessions.tasks.webhook_deliver", ignore_result=True)
def webhook_deliver(delivery_id: int) -> None:
    """Attempt one webhook delivery (it schedules its own retry)."""
    from sessions import delivery

    attempt = delivery.webhook_deliver(delivery_id)
    if attempt is not None:  # None: not due, or claimed by another worker
        metrics.WEBHOOK_ATTEMPTS.labels(attempt.status).inc()


@shared_task(name="sessions.tasks.webhooks_retry_due")
def webhooks_retry_due() -> int:
    from sessions import delivery

    return delivery.webhooks_retry_due()


@shared_task(name="sessions.tasks.audit_heads_publish")
def audit_heads_publish() -> int:
    """Send every org's audit chain head out as an `audit.head` event (sinks and webhooks)."""

    return heads.audit_heads_publish()
