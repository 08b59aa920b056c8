"""Celery tasks of the gateway: thin, by id, calling the pipeline."""

from celery import shared_task

from gateway import pipeline


@shared_task(name="gateway.tasks.session_run", acks_late=False, ignore_result=True)
def session_run(session_id: str, limits: dict) -> None:
    """Run a recorded session on this agent worker (queue `agent.<org id>.<name>`, near the target)."""
    pipeline.run_on_agent(session_id, limits)
