"""Celery tasks of the gateway: thin, by id, calling the pipeline."""

from celery import shared_task

from gateway import pipeline


@shared_task(name="gateway.tasks.session_run", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def session_run(session_id: str, limits: dict | None = None) -> None:
    """Claim and run a recorded session on this agent worker (queue `agent.<org id>.<name>`, near
    the target). Acknowledged late: a worker killed before the claim leaves the message to another
    worker; after the claim a redelivered message finds the session taken and does nothing."""
    pipeline.run_on_agent(session_id, limits)


@shared_task(name="gateway.tasks.maintenance_tick", ignore_result=True)
def maintenance_tick() -> None:
    """Celery beat's backstop of every replica's own sweep (gateway.maintenance)."""
    from gateway import maintenance

    maintenance.tick()
