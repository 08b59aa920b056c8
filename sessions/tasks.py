from celery import shared_task

from sessions.services import sessions_sweep_orphans as _sweep


@shared_task(name="sessions.tasks.sessions_sweep_orphans")
def sessions_sweep_orphans() -> int:
    return _sweep()
