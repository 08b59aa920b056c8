"""The Celery app. With REDIS_URL unset, tasks run eagerly in the calling process."""

import os

from celery import Celery, signals

from gateway import beatlock, logs, metrics

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")

app = Celery("portcullis")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.setup_logging.connect
def _django_logging(loglevel=None, **kwargs):
    """Workers and beat log like the web process (PORTCULLIS_LOG_FORMAT, the context fields)
    instead of Celery's own format; `-l` still sets the level of Celery's loggers."""
    import logging
    import logging.config

    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)
    logging.getLogger("celery").setLevel(loglevel or logging.INFO)


@signals.beat_init.connect
def _one_beat(sender=None, **kwargs):
    """A second beat stands by until the first one's database lock is released (gateway/beatlock.py)."""

    beatlock.hold()


# Tasks whose first argument is a session id (an agent's run, an analysis): their lines name it.
_SESSION_TASKS = ("gateway.tasks.session_run", "sessions.tasks.session_analyze")


@signals.task_prerun.connect
def _task_log_context(task=None, args=None, kwargs=None, **extra):
    """Each task logs with a context of its own, never the previous task's."""

    session_id = None
    if task is not None and task.name in _SESSION_TASKS:
        session_id = (kwargs or {}).get("session_id") or (args[0] if args else None)
    logs.start(surface="worker", session_id=session_id)


@signals.worker_init.connect
def _worker_metrics(**kwargs):
    """PORTCULLIS_WORKER_METRICS_PORT: the worker serves its (and its children's) metrics there."""
    from django.conf import settings

    if settings.WORKER_METRICS_PORT:
        metrics.serve_worker_metrics(settings.WORKER_METRICS_PORT)
