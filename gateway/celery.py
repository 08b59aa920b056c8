"""The Celery app. With REDIS_URL unset, tasks run eagerly in the calling process."""

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")

app = Celery("portcullis")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.beat_init.connect
def _one_beat(sender=None, **kwargs):
    """A second beat stands by until the first one's database lock is released (gateway/beatlock.py)."""
    from gateway import beatlock

    beatlock.hold()


@signals.task_prerun.connect
def _task_log_context(task=None, **kwargs):
    """Each task logs with a context of its own, never the previous task's."""
    from gateway import logs

    logs.start()


@signals.worker_init.connect
def _worker_metrics(**kwargs):
    """PORTCULLIS_WORKER_METRICS_PORT: the worker serves its (and its children's) metrics there."""
    from django.conf import settings

    if settings.WORKER_METRICS_PORT:
        from gateway import metrics

        metrics.serve_worker_metrics(settings.WORKER_METRICS_PORT)
