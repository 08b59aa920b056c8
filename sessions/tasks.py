"""Celery tasks of the session records: thin, by id, calling a service; and the worker's analysis
drain (a bootstep: a thread beside the pool, sessions.analysis_drain)."""

from celery import bootsteps, shared_task
from django.conf import settings

from gateway.celery import app
from sessions import analysis_drain, delivery, heads, outbox, services
from sessions.delivery import webhook_deliver_task as webhook_deliver  # noqa: F401  (defined beside its work)
from sessions.services import session_analyze  # noqa: F401  (messages queued before the drain existed)


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


class AnalysisDrain(bootsteps.StartStopStep):
    """A worker that consumes the default queue analyses finished sessions: it claims them from the
    outbox in batches (sessions.analysis_drain) on a thread started once the pool is up. Agent
    workers (`-Q agent.…`) do not."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.drainer: analysis_drain.Drainer | None = None

    def start(self, parent):
        selected = parent.app.amqp.queues.consume_from
        if settings.CELERY_TASK_ALWAYS_EAGER or (
            selected and settings.CELERY_TASK_DEFAULT_QUEUE not in selected
        ):
            return
        self.drainer = analysis_drain.Drainer()
        self.drainer.start()

    def stop(self, parent):
        if self.drainer is not None:
            self.drainer.stop()
            self.drainer = None


app.steps["worker"].add(AnalysisDrain)
