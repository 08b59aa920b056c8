"""Celery tasks of the gateway: thin, by id. `session_run` is defined beside the code that queues
it (gateway.pipeline) and listed here."""

from celery import shared_task

from gateway import maintenance
from gateway.pipeline import session_run  # noqa: F401  (the agent worker's task)


@shared_task(name="gateway.tasks.maintenance_tick", ignore_result=True)
def maintenance_tick() -> None:
    """Celery beat's backstop of every replica's own sweep (gateway.maintenance)."""
    maintenance.tick()
