"""Celery tasks of the session records: thin, by id, calling a service."""

from celery import shared_task

from sessions import services


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
