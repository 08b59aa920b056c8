"""The bounded worker pool that runs connectors in this process, and its heartbeat.

Each process has a runner id. A session records the runner that holds it; while the runner has
work it renews the run leases of its sessions on the database clock (sessions.lifecycle), checks
for cancel requests made through other replicas, and enforces deadlines. If the process dies or
loses the database, its leases lapse and the sweep ends those sessions; a session taken from this
runner (swept, cancelled) is interrupted here too.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor

from django.conf import settings
from django.db import connections
from django.utils import timezone

from sessions import lifecycle, wakeup
from sessions.models import Runner, Session

logger = logging.getLogger("portcullis.runner")

_runner_id: tuple[int, str] | None = None


def runner_id() -> str:
    """This process's id as a runner. Recomputed after a fork: prefork workers are separate runners."""
    global _runner_id
    pid = os.getpid()
    if _runner_id is None or _runner_id[0] != pid:
        _runner_id = (pid, f"{socket.gethostname()[:60]}:{pid}:{uuid.uuid4().hex[:8]}")
    return _runner_id[1]


HEARTBEAT_SECONDS = 5.0
CANCEL_POLL_SECONDS = 0.5


class _Running:
    def __init__(self, future: Future, deadline: float):
        self.future = future
        self.deadline = deadline
        self.cancel_callback = None  # set by the job once its connector exists
        self.cancelled = False  # a cancel that came before the callback: run when it is set


_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_running: dict[str, _Running] = {}
_watcher: threading.Thread | None = None
_pid = os.getpid()


def _get_pool() -> ThreadPoolExecutor:
    global _pool, _pid
    if _pool is None or _pid != os.getpid():  # a forked worker needs its own pool
        _pool = ThreadPoolExecutor(max_workers=settings.EXEC_WORKERS, thread_name_prefix="portcullis-exec")
        _pid = os.getpid()
    return _pool


def shutdown(wait: bool = True) -> None:
    """Stop this process's pool (tests, and clean exits). Workers close their DB connections."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        # A barrier makes every worker thread take exactly one close task.
        barrier = threading.Barrier(settings.EXEC_WORKERS)

        def close_in_this_thread():
            try:
                barrier.wait(timeout=5)
            except threading.BrokenBarrierError:
                pass
            connections.close_all()

        for _ in range(settings.EXEC_WORKERS):
            pool.submit(close_in_this_thread)
        pool.shutdown(wait=wait)


def busy() -> bool:
    """True when the queue is long enough that a new job would wait behind many others."""
    with _lock:
        return len(_running) >= settings.EXEC_WORKERS * 4


def running_here() -> int:
    """How many jobs this process tracks (queued or running)."""
    with _lock:
        return len(_running)


def has_idle_worker() -> bool:
    """True when a job submitted now starts at once (no queue in front of it)."""
    with _lock:
        return len(_running) < settings.EXEC_WORKERS


def submit(session_id: str, fn, *, timeout_seconds: float) -> Future:
    """Run `fn()` in the pool for `session_id`; the job is tracked until it returns."""
    _beat()
    with _lock:
        future = _get_pool().submit(_wrapped, session_id, fn)
        _running[session_id] = _Running(future, time.monotonic() + timeout_seconds + 30)
    _ensure_watcher()
    return future


def run_here(session_id: str, fn, *, timeout_seconds: float):
    """Run `fn()` in the calling thread (a Celery agent worker), tracked like a pool job:
    heartbeats, cancel requests from any replica, and the deadline all apply."""
    _beat()
    with _lock:
        _running[session_id] = _Running(Future(), time.monotonic() + timeout_seconds + 30)
    _ensure_watcher()
    try:
        return fn()
    finally:
        with _lock:
            entry = _running.pop(session_id, None)
        if entry is not None:
            entry.future.set_result(None)


def _wrapped(session_id: str, fn):
    try:
        return fn()
    except Exception:
        logger.exception("exec job for session %s failed", session_id)
        raise
    finally:
        with _lock:
            _running.pop(session_id, None)
        # Give the connection back after every job (with PostgreSQL's pool this is a cheap check-in),
        # so an idle worker thread holds none.
        connections.close_all()


def set_cancel_callback(session_id: str, callback) -> None:
    """The job's way to be interrupted; called at once if a cancel came before it was set."""
    with _lock:
        entry = _running.get(session_id)
        if entry is None:
            return
        entry.cancel_callback = callback
        cancelled = entry.cancelled
    if cancelled:
        callback()


def local_future(session_id: str) -> Future | None:
    with _lock:
        entry = _running.get(session_id)
        return entry.future if entry else None


wakeup.register_local_futures(local_future)


def cancel_local(session_id: str) -> bool:
    """Cancel a job running in this process (kept for it if it has not set its callback yet).
    False if it is not here."""
    with _lock:
        entry = _running.get(session_id)
        if entry is None:
            return False
        entry.cancelled = True
        callback = entry.cancel_callback
    if callback is not None:
        callback()
    return True


_last_beat = 0.0


def _beat(force: bool = False) -> None:
    """Tell the database this runner is alive (at most every couple of seconds)."""
    global _last_beat

    if not force and time.monotonic() - _last_beat < HEARTBEAT_SECONDS / 2:
        return
    _last_beat = time.monotonic()
    now = timezone.now()
    updated = Runner.objects.filter(pk=runner_id()).update(last_seen_at=now)
    if not updated:
        Runner.objects.get_or_create(pk=runner_id(), defaults={"started_at": now, "last_seen_at": now})


def _ensure_watcher() -> None:
    global _watcher
    with _lock:
        if _watcher is not None and _watcher.is_alive():
            return
        _watcher = threading.Thread(target=_watch, name="portcullis-runner-watch", daemon=True)
        _watcher.start()


def _watch() -> None:
    """While there is work: renew leases, honour cancel requests from other replicas, interrupt
    sessions taken from this runner, enforce deadlines."""
    last_beat = last_renew = 0.0
    while True:
        time.sleep(CANCEL_POLL_SECONDS)
        with _lock:
            ids = list(_running)
            overdue = [sid for sid, e in _running.items() if time.monotonic() > e.deadline]
        if not ids:
            break
        try:
            if time.monotonic() - last_beat > HEARTBEAT_SECONDS:
                _beat(force=True)
                last_beat = time.monotonic()
            if time.monotonic() - last_renew > lifecycle.lease_seconds() / 3:
                lifecycle.renew(ids, runner=runner_id())
                last_renew = time.monotonic()
            rows = Session.objects.filter(pk__in=ids).values_list(
                "pk", "status", "runner", "cancel_requested"
            )
            wanted = set()
            for pk, status, holder, cancel in rows:
                taken = status == "running" and holder != runner_id()
                if cancel or taken or status in ("done", "failed", "blocked", "cancelled", "rejected"):
                    wanted.add(str(pk))
            for sid in wanted.union(overdue):
                cancel_local(sid)
        except Exception:  # a database hiccup must not kill the watcher
            logger.warning("runner watcher iteration failed", exc_info=True)
        finally:
            connections.close_all()
    global _watcher
    with _lock:
        _watcher = None
        if _running:  # work arrived while we were leaving
            _ensure_watcher_locked()


def _ensure_watcher_locked() -> None:
    global _watcher
    _watcher = threading.Thread(target=_watch, name="portcullis-runner-watch", daemon=True)
    _watcher.start()
