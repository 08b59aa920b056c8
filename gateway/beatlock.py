"""One Celery beat at a time: a PostgreSQL advisory lock, so a second beat can stand by.

`celery -A gateway beat` calls `hold()` before its first tick (the `beat_init` signal). The
beat that gets the session-level advisory lock schedules; any other waits, trying again every
PORTCULLIS_BEAT_LOCK_RETRY_SECONDS, and takes over once the holder's connection ends (the process
died, or its host went away and PostgreSQL closed the connection). The holder checks its lock
connection as often; if that connection is lost (the lock with it) the process exits at once, so
two beats never schedule side by side, and its supervisor (compose's `restart:`) brings it back
as the new standby.

The lock needs a direct connection to PostgreSQL: PgBouncer in transaction mode would hand the
lock's session to someone else. Compose's `beat` therefore connects to `postgres` directly.
On SQLite (the embedded default) there is no lock: run one beat.
"""

from __future__ import annotations

import logging
import os
import threading
import time

log = logging.getLogger("portcullis.beat")

# A fixed 64-bit key: "portcullis beat" (advisory locks are per database).
LOCK_KEY = 0x706F727463756C6C

_holder = None  # the lock's connection, kept open for the life of the process


def _connect():
    import psycopg
    from django.db import connections

    params = connections["default"].get_connection_params()
    for key in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(key, None)
    params["connect_timeout"] = 5
    return psycopg.connect(autocommit=True, application_name="portcullis-beat-lock", **params)


def hold(*, retry_seconds: float | None = None, on_lost=None) -> bool:
    """Block until this process holds the beat lock. False when there is nothing to lock (SQLite)."""
    global _holder
    from django.conf import settings
    from django.db import connections

    if connections["default"].vendor != "postgresql":
        log.warning("beat: no PostgreSQL, no beat lock; run exactly one beat")
        return False
    retry = retry_seconds if retry_seconds is not None else settings.BEAT_LOCK_RETRY_SECONDS
    told = False
    while True:
        try:
            conn = _connect()
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()[0]
        except Exception as exc:  # noqa: BLE001 - the database is down: wait like a standby
            log.warning(
                "beat: cannot reach the database for the beat lock (%s); retrying", type(exc).__name__
            )
            got, conn = False, None
        if got:
            _holder = conn
            log.warning("beat: holding the beat lock; this beat schedules")
            threading.Thread(
                target=_watch, args=(conn, retry, on_lost or _exit), name="beat-lock-watch", daemon=True
            ).start()
            return True
        if conn is not None:
            conn.close()
        if not told:
            log.warning("beat: another beat holds the beat lock; standing by")
            told = True
        time.sleep(retry)


def _watch(conn, every: float, on_lost) -> None:
    while True:
        time.sleep(every)
        try:
            conn.execute("SELECT 1")
        except Exception:  # noqa: BLE001
            log.error(
                "beat: lost the beat lock's database connection; exiting so that only one beat schedules"
            )
            on_lost()
            return


def _exit() -> None:
    os._exit(3)
