"""The sweep every gateway process runs (and Celery beat, as a backstop): leases that lapsed,
the outbox, reviews past their deadline, analyses that got lost.

Runs in every daphne replica, not only in one beat process, so recovery needs neither the broker
nor a particular process: whichever replica sweeps first takes over (every step is a conditional
UPDATE or a row lock, so two sweepers never act twice on one thing).
"""

from __future__ import annotations

import logging
import time

from django.db import connections

from gateway import pipeline
from reviews.services import reviews_expire
from sessions import lifecycle, outbox
from sessions.models import Session
from sessions.services import analysis_sweep_missing, sessions_sweep_orphans

logger = logging.getLogger("portcullis.maintenance")

ANALYSIS_SWEEP_EVERY_SECONDS = 60.0
_last_analysis_sweep = 0.0


def tick(*, analyses: bool = True) -> dict:
    """One round; each step on its own, so one failing (the database away) does not stop the rest.

    `analyses`: also analyse finished sessions whose analysis was lost (at most once a minute).
    Analysing costs CPU: with a Celery worker, the worker's beat-driven tick does it and the web
    replicas leave it out (`mcpserver.asgi`); in embedded mode the web process is the only one."""
    global _last_analysis_sweep
    done: dict = {}
    steps = [
        ("outbox", outbox.relay_all),
        ("abandoned_runs", _resolve_abandoned),
        ("lapsed_runs", sessions_sweep_orphans),
        ("resumed", _resume_open),
        ("reviews_expired", _expire_reviews),
    ]
    if analyses and time.monotonic() - _last_analysis_sweep > ANALYSIS_SWEEP_EVERY_SECONDS:
        _last_analysis_sweep = time.monotonic()
        steps.append(("analyses", lambda: analysis_sweep_missing(limit=50)))
    for name, step in steps:
        try:
            done[name] = step()
        except Exception:  # noqa: BLE001 - logged; the next tick tries again
            logger.warning("maintenance step %s failed; retrying on the next tick", name, exc_info=True)
    connections.close_all()
    return done


def _resolve_abandoned() -> int:
    """Exactly-once runs whose runner is gone: the target says whether they committed."""
    running, _ = lifecycle.lapsed()
    exact = Session.objects.filter(pk__in=running, run_spec__limits__exactly_once=True).values_list(
        "pk", flat=True
    )
    return sum(1 for pk in exact if pipeline.resolve_abandoned_run(pk) in ("committed", "requeued"))


def _resume_open() -> int:
    _, waiting = lifecycle.lapsed()
    return sum(1 for pk in waiting if pipeline.recover_open(pk))


def _expire_reviews() -> int:

    return reviews_expire()
