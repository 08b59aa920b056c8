"""Idle target connections kept for reuse, per connection and per set of session options.

A connect costs 6-10 ms on PostgreSQL (TCP, auth, backend start); a checkout from here costs a
reset round trip. Connections are keyed by everything that shapes the session (host, database,
user, a hash of the password, statement timeout, read-only), so a changed secret or setting
never reuses an old connection: the old ones idle out. Between uses a connection is reset to its
start-up state (`DISCARD ALL`: settings, role, temporary tables, prepared statements, advisory
locks), and one that is broken or inside a transaction is closed instead of kept.

psycopg_pool would bound and refill pools in background threads, but it reports a failed connect
as a pool timeout instead of the target's own error (wrong password, unknown database), which the
caller must see; this keeps the connect in the caller's thread and only holds what is idle.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from contextlib import contextmanager

from django.conf import settings

_lock = threading.Lock()
_idle: dict[tuple, deque] = {}


def key_of(*parts) -> tuple:
    """A pool key; secret parts are hashed so the key itself holds no secret."""
    return tuple(
        hashlib.sha256(str(p).encode()).hexdigest()[:16] if isinstance(p, SecretPart) else p for p in parts
    )


class SecretPart(str):
    """Marks a key part that is a secret (hashed in the key)."""


def _take(key: tuple):
    now = time.monotonic()
    with _lock:
        idle = _idle.get(key)
        while idle:
            conn, since = idle.pop()
            if now - since <= settings.TARGET_POOL_IDLE_SECONDS:
                return conn
            _close(conn)
    return None


def _give(key: tuple, conn) -> bool:
    with _lock:
        idle = _idle.setdefault(key, deque())
        if len(idle) >= settings.TARGET_POOL_MAX_IDLE:
            return False
        idle.append((conn, time.monotonic()))
        return True


def _close(conn) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - already gone
        pass


@contextmanager
def checkout(key: tuple, connect, reset, usable):
    """A connection for `key`: an idle one that is still `usable(conn)`, else `connect()`. On the
    way back it is `reset(conn)` and kept (bounded) if that worked, else closed."""
    conn = None
    if settings.TARGET_POOL_MAX_IDLE > 0:
        conn = _take(key)
        while conn is not None and not usable(conn):
            _close(conn)
            conn = _take(key)
    if conn is None:
        conn = connect()
    try:
        yield conn
    except BaseException:
        _close(conn)
        raise
    else:
        try:
            if settings.TARGET_POOL_MAX_IDLE <= 0 or not usable(conn):
                raise RuntimeError("not reusable")
            reset(conn)
        except Exception:  # noqa: BLE001 - not reusable: close it
            _close(conn)
            return
        if not _give(key, conn):
            _close(conn)


def clear() -> None:
    """Close every idle connection (tests, and process exit)."""
    with _lock:
        items = [conn for idle in _idle.values() for conn, _ in idle]
        _idle.clear()
    for conn in items:
        _close(conn)
