"""The transactional outbox: what must leave the process after a commit is a row written in that
commit, and a relay delivers it at least once, then deletes it.

    a transition ──(same transaction)──> OutboxMessage rows
                           on commit ──> kick(): this process's relay drains them now
            every few seconds, in every replica and in the Celery worker ──> relay_once()

Kinds: `event` (the sinks and webhooks, sessions.delivery: delivered in the relay itself, with no
broker in between), `analysis` (a thread in embedded mode) and `dispatch` (an open session to its
agent queue). A message is claimed with `FOR UPDATE SKIP LOCKED` and deleted in the transaction
that delivered it: relays in several processes never take the same row, and a relay that dies
mid-delivery leaves it for the next one. A message that cannot be delivered (the broker is down)
waits with a backoff and is retried; nothing is dropped.

A kind can instead be *worked* where its work runs (`work_in_worker`: analyses, by the Celery
worker, sessions.analysis_drain): the relay leaves it alone, the insert wakes the worker with a
PostgreSQL NOTIFY delivered on commit, and the worker `claim`s due rows in batches under a lease
on the database clock (`available_at` moves past the lease), then deletes them in the transaction
that stored their work. A worker killed mid-batch leaves its rows to be claimed again once the
lease lapses.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.db import connection, connections, transaction
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone

from sessions.models import OutboxMessage

logger = logging.getLogger("portcullis.outbox")

BATCH = 100
MAX_BACKOFF_SECONDS = 60.0

_handlers: dict = {}
# Kinds a worker claims itself: kind -> (the channel its insert NOTIFYs, whether that holds now).
_worked: dict[str, tuple[str, Callable[[], bool]]] = {}


def handler(kind: str):
    """Register the delivery function of a kind: `fn(payload)`; raising means "try again later"."""

    def register(fn):
        _handlers[kind] = fn
        return fn

    return register


def work_in_worker(kind: str, channel: str, *, when: Callable[[], bool]) -> None:
    """While `when()` holds, messages of `kind` are claimed by a worker (`claim`), not relayed:
    their insert NOTIFYs `channel` (PostgreSQL) and kicks no relay. Registered once at start-up."""
    _worked[kind] = (channel, when)


def _worked_kinds() -> list[str]:
    return [kind for kind, (_, when) in _worked.items() if when()]


def outbox_put(kind: str, payload: dict, *, only_if: tuple[str, list] | None = None) -> None:
    """Write one message in the caller's transaction; the relay (or the worker that claims this
    kind) runs once it commits. `only_if` (PostgreSQL: a query and its parameters) writes it only
    when that query finds a row, checked by the insert itself: for a message that may reach nobody,
    the check costs no statement of its own. Inside `batched()`, written with the others at its end."""
    held = getattr(_held, "messages", None)
    if held is not None:
        held.append((kind, json.dumps(payload), only_if))
        return
    if connection.vendor == "postgresql":  # every exec writes one or two: one statement, no ORM compile
        _put([(kind, json.dumps(payload), only_if)])
        return
    if only_if is not None:
        raise ValueError("only_if is a PostgreSQL query")
    OutboxMessage.objects.create(kind=kind, payload=payload)
    if _channel(kind) is None:
        transaction.on_commit(kick)


_held = threading.local()


@contextlib.contextmanager
def batched():
    """The messages `outbox_put` writes inside go to the database in one statement at the end, on
    PostgreSQL (a transition's events and analysis request). Elsewhere, or nested, a no-op."""
    if connection.vendor != "postgresql" or getattr(_held, "messages", None) is not None:
        yield
        return
    _held.messages = []
    try:
        yield
        messages = _held.messages
    finally:
        _held.messages = None
    if messages:
        _put(messages)


def _channel(kind: str) -> str | None:
    """The channel a worker of `kind` listens on, while a worker claims it; None: the relay sends it."""
    channel, when = _worked.get(kind, (None, None))
    return channel if when is not None and when() else None


def _put(messages: list[tuple[str, str, tuple[str, list] | None]]) -> None:
    """Insert (kind, JSON payload, only_if) rows, in order, in one statement; NOTIFY each worked
    kind's channel if one of its rows went in (delivered on commit, once per transaction and
    channel) and kick the relay on commit if a row it sends went in."""
    channels = {kind: _channel(kind) for kind, _, _ in messages}
    notified = sorted({(kind, channel) for kind, channel in channels.items() if channel})
    params: list = []
    for kind, payload, only_if in messages:
        params += [kind, payload, *(only_if[1] if only_if else ())]
    params.append([kind for kind, channel in channels.items() if channel is None])
    for kind, channel in notified:
        params += [channel, kind]
    sql = _put_sql(tuple(only_if[0] if only_if else None for _, _, only_if in messages), len(notified))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        relayed = cursor.fetchone()[0]
    if relayed:
        transaction.on_commit(kick)


@functools.lru_cache(maxsize=64)
def _put_sql(conditions: tuple[str | None, ...], notifies: int) -> str:
    """The insert of `_put` for rows with these `only_if` queries (None: always) and this many
    channels to notify; one string per shape, built once."""
    rows = ", ".join(
        f"({n}, %s, %s::jsonb, {'true' if sql is None else f'EXISTS ({sql})'})"
        for n, sql in enumerate(conditions)
    )
    notify = ", (SELECT pg_notify(%s, '') FROM put WHERE kind = %s LIMIT 1)" * notifies
    return _sql(
        f"WITH v (n, kind, payload, wanted) AS (VALUES {rows}), "
        "put AS (INSERT INTO {table} (kind, payload, created_at, available_at, attempts, last_error) "
        "SELECT kind, payload, now(), now(), 0, '' FROM v WHERE wanted ORDER BY n RETURNING kind) "
        f"SELECT count(*) FILTER (WHERE kind = ANY(%s)){notify} FROM put"
    )


# The hot statements on PostgreSQL, written once (the ORM compiles each anew per call).
_CLAIM_SQL = (
    "SELECT id, kind, payload, attempts FROM {table} WHERE available_at <= now() AND kind <> ALL(%s) "
    "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
)
# A worker's claim: the due rows of one kind, their `available_at` moved past the lease (on the
# database clock) in the same statement, so no other claimer sees them until the lease lapses.
_LEASE_SQL = (
    "UPDATE {table} SET available_at = now() + make_interval(secs => %s), attempts = attempts + 1 "
    "WHERE id IN (SELECT id FROM {table} WHERE kind = %s AND available_at <= now() "
    "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id, payload, attempts"
)
_DELETE_SQL = "DELETE FROM {table} WHERE id = ANY(%s)"


@functools.cache
def _sql(template: str) -> str:
    return template.format(table=connection.ops.quote_name(OutboxMessage._meta.db_table))


def _claim_due(limit: int) -> list[OutboxMessage]:
    """The due messages, locked for this transaction (rows other relays hold are skipped)."""
    if connection.vendor != "postgresql":
        return list(
            OutboxMessage.objects.select_for_update(skip_locked=True)
            .filter(available_at__lte=Now())
            .exclude(kind__in=_worked_kinds())
            .order_by("id")[:limit]
        )
    with connection.cursor() as cursor:
        cursor.execute(_sql(_CLAIM_SQL), [_worked_kinds(), limit])
        rows = cursor.fetchall()
    return [
        OutboxMessage(id=pk, kind=kind, payload=_loaded(payload), attempts=n) for pk, kind, payload, n in rows
    ]


def _loaded(payload):
    return json.loads(payload) if isinstance(payload, str) else payload


def claim(kind: str, *, limit: int, lease_seconds: float) -> list[OutboxMessage]:
    """A worker takes up to `limit` due messages of `kind` for `lease_seconds` (database clock),
    committed at once: until the lease lapses nobody else takes them; if the worker dies, they are
    due again then. The worker calls `delete` once their work is stored, `retry_later` if it
    failed. Oldest first; `attempts` counts the claims."""
    if connection.vendor == "postgresql":  # one statement: it commits itself
        with connection.cursor() as cursor:
            cursor.execute(_sql(_LEASE_SQL), [lease_seconds, kind, limit])
            rows = sorted(cursor.fetchall())
        return [
            OutboxMessage(id=pk, kind=kind, payload=_loaded(payload), attempts=n) for pk, payload, n in rows
        ]
    with transaction.atomic():  # SQLite: one writer at a time, so the select and update cannot interleave
        due = list(
            OutboxMessage.objects.select_for_update(skip_locked=True)
            .filter(kind=kind, available_at__lte=Now())
            .order_by("id")[:limit]
        )
        OutboxMessage.objects.filter(pk__in=[m.pk for m in due]).update(
            available_at=timezone.now() + timedelta(seconds=lease_seconds), attempts=F("attempts") + 1
        )
    for message in due:
        message.attempts += 1
    return due


def delete(ids: list[int]) -> None:
    """Remove delivered (or worked) messages, in the caller's transaction."""
    if not ids:
        return
    if connection.vendor != "postgresql":
        OutboxMessage.objects.filter(pk__in=ids).delete()
        return
    with connection.cursor() as cursor:
        cursor.execute(_sql(_DELETE_SQL), [ids])


def retry_later(message: OutboxMessage, error: str) -> None:
    """A claimed message whose work failed: due again after an exponential backoff (capped) instead
    of when its lease lapses."""
    delay = min(2.0 ** min(max(message.attempts - 1, 0), 6), MAX_BACKOFF_SECONDS)
    OutboxMessage.objects.filter(pk=message.pk).update(
        last_error=error[:500], available_at=timezone.now() + timedelta(seconds=delay)
    )


def backlog() -> dict:
    """How many messages wait, per kind, and the age of the oldest (seconds): for admins."""
    from django.db.models import Count, Min

    rows = OutboxMessage.objects.values("kind").annotate(n=Count("id"), oldest=Min("created_at"))
    now = timezone.now()
    return {
        r["kind"]: {"count": r["n"], "oldest_seconds": round((now - r["oldest"]).total_seconds(), 1)}
        for r in rows
    }


def relay_once(limit: int = BATCH) -> int:
    """Deliver up to `limit` due messages; returns how many were delivered."""
    delivered = 0
    with transaction.atomic():
        due = _claim_due(limit)
        done, failed = [], []
        for message in due:
            fn = _handlers.get(message.kind)
            try:
                if fn is None:
                    raise RuntimeError(f"no handler for outbox kind {message.kind!r}")
                fn(message.payload)
            except Exception as exc:  # noqa: BLE001 - kept and retried, never dropped
                failed.append((message, f"{type(exc).__name__}: {exc}"[:500]))
            else:
                done.append(message.pk)
        if done:
            delete(done)
            delivered = len(done)
        for message, error in failed:
            delay = min(2.0 ** min(message.attempts, 6), MAX_BACKOFF_SECONDS)
            OutboxMessage.objects.filter(pk=message.pk).update(
                attempts=message.attempts + 1,
                last_error=error,
                available_at=timezone.now() + timedelta(seconds=delay),
            )
        if failed:
            logger.warning(
                "%d outbox message(s) could not be delivered and will be retried (first: %s)",
                len(failed),
                failed[0][1],
            )
    return delivered


def relay_all(max_rounds: int = 50) -> int:
    """Drain what is due (bounded)."""
    total = 0
    for _ in range(max_rounds):
        n = relay_once()
        total += n
        if n < BATCH:
            break
    return total


# --- this process's relay thread --------------------------------------------------------------------

_wake = threading.Event()
_thread: threading.Thread | None = None
_thread_lock = threading.Lock()
_stopping = False


def stop() -> None:
    """Stop this process's relay thread (tests, before the database goes away)."""
    global _stopping, _thread
    _stopping = True
    _wake.set()
    with _thread_lock:
        thread, _thread = _thread, None
    if thread is not None:
        thread.join(timeout=10)
    _stopping = False


def kick() -> None:
    """Have this process's relay look now (after a commit that wrote messages)."""
    if not settings.OUTBOX_RELAY_IN_PROCESS:
        return
    _ensure_thread()
    _wake.set()


def _ensure_thread() -> None:
    global _thread
    with _thread_lock:
        if _thread is not None and _thread.is_alive():
            return
        _thread = threading.Thread(target=_loop, name="portcullis-outbox", daemon=True)
        _thread.start()


COALESCE_SECONDS = 0.005  # a burst of commits is relayed in one transaction, not one each


def _loop() -> None:
    while True:
        if _wake.wait(timeout=settings.SWEEP_SECONDS):
            time.sleep(COALESCE_SECONDS)
        _wake.clear()
        if _stopping:
            return
        try:
            relay_all()
        except Exception:  # the database is away: the next kick or tick tries again
            logger.warning("outbox relay failed; retrying on the next tick", exc_info=True)
        finally:
            connections.close_all()
