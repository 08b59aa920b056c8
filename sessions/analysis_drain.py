"""The Celery worker's analyses: it claims the outbox's `analysis` rows itself, many at a time,
instead of receiving one Celery message per finished session.

    a session becomes final ──(its transaction)──> outbox row `analysis` + NOTIFY portcullis_analysis
    the worker's drain thread (LISTEN) ──> claim a batch under a lease ──> analyse each session
        ──> store the verdicts and delete the rows (one transaction) ──> wake the waiters

Why: a Celery message per analysis cost the worker about 13 ms of CPU (Celery's per-task handling
and the broker's round trips) for an analysis that takes a fraction of a millisecond, and the web
process an `apply_async` per exec (docs/durability.md, "Cost").

At least once: a batch is claimed under a lease on the database clock (`ANALYSIS_LEASE_SECONDS`);
a worker killed mid-batch leaves its rows to be claimed again when the lease lapses, by whichever
worker looks first. Storing is idempotent (one analysis per session). The wake-up is a NOTIFY sent
with the row's commit; the thread also looks every `SWEEP_SECONDS` (a lapsed lease, a retry that
is due, a notification missed while it reconnected), so it needs neither Redis nor every
notification. Behind PgBouncer (transaction mode, where LISTEN does not work) and on other
databases it looks every second instead.

The thread runs in the worker's main process beside the pool (`sessions.tasks.AnalysisDrain`, a
worker bootstep), on workers that consume the default queue; agent workers do not analyse.
Embedded mode (no broker) keeps the relay's path: a background thread of the web process.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import psycopg
from django.conf import settings
from django.db import connections, transaction

from sessions import analysis as analyzer
from sessions import outbox, services
from sessions.models import OutboxKind

logger = logging.getLogger("portcullis.analysis")

CHANNEL = "portcullis_analysis"
BATCH = 100
IDLE_POLL_SECONDS = 1.0  # without LISTEN; and how often the thread checks that it should stop


def _in_worker() -> bool:
    return not settings.CELERY_TASK_ALWAYS_EAGER


outbox.work_in_worker(OutboxKind.ANALYSIS, CHANNEL, when=_in_worker)


def _batch_size() -> int:
    # An LLM may take seconds per session: a batch is what the lease can cover.
    return settings.ANALYSIS_LLM_CONCURRENCY if analyzer.llm_configured() else BATCH


def drain_once(limit: int | None = None) -> int:
    """Claim up to `limit` due analysis requests, analyse them, store the verdicts and delete the
    requests. Returns how many requests were claimed (fewer than the limit: nothing more is due)."""
    limit = limit or _batch_size()
    claimed = outbox.claim(OutboxKind.ANALYSIS, limit=limit, lease_seconds=settings.ANALYSIS_LEASE_SECONDS)
    if not claimed:
        return 0
    made, failed = services.analyses_make(session_ids=[m.payload["session_id"] for m in claimed])
    with transaction.atomic():
        services.analyses_store(made)
        outbox.delete([m.pk for m in claimed if m.payload["session_id"] not in failed])
    for message in claimed:
        error = failed.get(message.payload["session_id"])
        if error is not None:
            outbox.retry_later(message, error)
    return len(claimed)


def drain_all(max_rounds: int = 100) -> int:
    """Drain what is due (bounded)."""
    total = 0
    for _ in range(max_rounds):
        n = drain_once()
        total += n
        if n < _batch_size():
            break
    return total


def _listen() -> psycopg.Connection | None:
    """A connection of its own that LISTENs on CHANNEL; None where notifications cannot arrive."""
    db = connections["default"]
    if db.vendor != "postgresql" or settings.DATABASES["default"].get("DISABLE_SERVER_SIDE_CURSORS"):
        return None  # another database, or PgBouncer in transaction mode
    params = db.get_connection_params()
    listener = psycopg.connect(**params, autocommit=True)
    listener.execute(f"LISTEN {CHANNEL}")
    return listener


_fork_guarded = False


def _guard_fork() -> None:
    """The drain thread uses the process's database connection pool; a process forked later (a
    Celery pool child replacing one that died) must not take the parent's connections from it."""
    global _fork_guarded
    if not _fork_guarded:
        os.register_at_fork(after_in_child=_forget_inherited_pools)
        _fork_guarded = True


def _forget_inherited_pools() -> None:
    # Dropped, not closed: their connections are the parent's (psycopg never closes a connection in
    # a process that did not open it), and the child opens its own.
    pools = getattr(type(connections["default"]), "_connection_pools", None)
    if pools:
        pools.clear()


class Drainer:
    """The thread that drains analysis requests in one process, until `stop()`."""

    def __init__(self):
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        _guard_fork()
        self._thread = threading.Thread(target=self._run, name="portcullis-analysis-drain", daemon=True)
        self._thread.start()
        logger.info("analysing finished sessions from the outbox (batches of up to %d)", _batch_size())

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the batch in hand (its rows are otherwise claimed again after the lease)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        listener = None
        listening = False
        next_look = 0.0  # at once: what waited while no worker ran
        while not self._stopping.is_set():
            try:
                if not listening:
                    listener, listening = _listen(), True
                    next_look = 0.0  # notifications sent while nobody listened are gone
                woke = self._wait(listener, max(0.0, min(next_look - time.monotonic(), IDLE_POLL_SECONDS)))
                if self._stopping.is_set():
                    break
                if woke:
                    # Let a burst of commits end, then take them in one claim; swallow their
                    # notifications so that they do not wake the next round for nothing.
                    self._stopping.wait(settings.ANALYSIS_BATCH_WAIT_MS / 1000)
                    if listener is not None:
                        for _ in listener.notifies(timeout=0):
                            pass
                if woke or time.monotonic() >= next_look:
                    drain_all()
                    next_look = time.monotonic() + (settings.SWEEP_SECONDS if listener else IDLE_POLL_SECONDS)
            except Exception:  # the database is away: look again in a second, reconnecting
                logger.warning("the analysis drain failed; retrying", exc_info=True)
                _close(listener)
                listener, listening = None, False
                connections.close_all()
                self._stopping.wait(1.0)
        _close(listener)
        connections.close_all()

    def _wait(self, listener: psycopg.Connection | None, timeout: float) -> bool:
        """Whether a notification came within `timeout` seconds."""
        if listener is None:
            self._stopping.wait(timeout)
            return False
        for _ in listener.notifies(timeout=timeout, stop_after=1):
            return True
        return False


def _close(listener: psycopg.Connection | None) -> None:
    if listener is not None:
        try:
            listener.close()
        except Exception:  # noqa: BLE001 - already broken
            pass
