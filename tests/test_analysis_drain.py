"""The worker's analysis drain (sessions.analysis_drain): with a broker, finished sessions' analysis
requests wait in the outbox until a worker claims them in batches, under a lease on the database
clock; the relay leaves them alone and their insert NOTIFYs the worker."""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta

import psycopg
import pytest
from django.conf import settings as django_settings
from django.db import connection, connections, transaction
from django.db.models.functions import Now
from django.test import TestCase

from gateway import pipeline
from sessions import analysis as analyzer
from sessions import analysis_drain, outbox
from sessions.models import Analysis, OutboxMessage, SessionStatus
from tests.test_analysis import _session

pytestmark = pytest.mark.skipif(
    django_settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql",
    reason="the drain's claim and wake-up are PostgreSQL statements (SQLite polls through the ORM)",
)


@pytest.fixture(autouse=True)
def _with_a_broker(settings):
    settings.CELERY_TASK_ALWAYS_EAGER = False  # the worker claims; the relay leaves analyses alone
    settings.OUTBOX_RELAY_IN_PROCESS = False


def _requested(*sessions) -> None:
    with TestCase.captureOnCommitCallbacks(execute=True):
        for session in sessions:
            outbox.outbox_put("analysis", {"session_id": str(session.pk)})


def _until(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_it_analyses_a_batch_in_one_claim_and_deletes_the_requests(cast, django_assert_max_num_queries):
    sessions = [
        _session(cast, "postgres", "DROP TABLE items"),
        _session(cast, "postgres", "select 1"),
        _session(cast, "postgres", "select * from nope", status=SessionStatus.FAILED, exit_code=1),
    ]
    gone = "00000000-0000-0000-0000-000000000000"
    running = _session(cast, "postgres", "select 1", status=SessionStatus.RUNNING)
    _requested(*sessions, running)
    outbox.outbox_put("analysis", {"session_id": gone})
    # claim, load the batch, store, delete: per batch, not per session; the analyzer's hour history
    # per session (and the test transaction's savepoints)
    with django_assert_max_num_queries(4 + len(sessions) + 2):
        assert analysis_drain.drain_once() == 5
    stored = {str(a.session_id): a for a in Analysis.objects.all()}
    assert set(stored) == {str(s.pk) for s in sessions}
    assert [stored[str(s.pk)].risk_level for s in sessions] == ["high", "low", "low"]
    for s in sessions:  # the session's copy of its risk level is written with it
        s.refresh_from_db()
        assert s.risk_level == stored[str(s.pk)].risk_level
    # a session that is gone or not finished is not analysed, and its request is done with
    assert not OutboxMessage.objects.exists() and analysis_drain.drain_once() == 0


def test_a_request_analysed_meanwhile_keeps_the_first_analysis(cast, monkeypatch):
    session = _session(cast, "postgres", "select 1")
    _requested(session)
    real = analyzer.analyze

    def overtaken(s, **options):
        verdict = real(s, **options)
        # the sweep stores one while the worker was thinking
        Analysis.objects.create(session=s, risk_level="medium", title="sweep", explanation="x", analyzer="x")
        return verdict

    monkeypatch.setattr(analyzer, "analyze", overtaken)
    assert analysis_drain.drain_once() == 1
    assert Analysis.objects.get(session=session).title == "sweep" and not OutboxMessage.objects.exists()


def test_a_worker_killed_mid_batch_leaves_its_requests_claimable_once_the_lease_lapses(
    cast, transactional_db
):
    # committed data: the lease is compared with now(), which does not move inside one transaction
    first, second = _session(cast, "postgres", "select 1"), _session(cast, "postgres", "delete from t")
    _requested(first, second)
    # A worker claims both and dies before storing anything.
    taken = outbox.claim("analysis", limit=10, lease_seconds=1)
    assert [m.payload["session_id"] for m in taken] == [str(first.pk), str(second.pk)]
    # Until its lease lapses nobody else takes them, and admins see them waiting.
    assert analysis_drain.drain_once() == 0
    assert outbox.backlog()["analysis"]["count"] == 2
    # Then the next worker does, once (the lease is on the database clock).
    assert _until(lambda: analysis_drain.drain_once()) == 2
    assert Analysis.objects.filter(session__in=[first, second]).count() == 2
    assert not OutboxMessage.objects.exists()


def test_a_failing_analysis_is_kept_for_a_retry_while_the_rest_of_its_batch_is_stored(cast, monkeypatch):
    broken, fine = _session(cast, "postgres", "select 2"), _session(cast, "postgres", "select 1")
    _requested(broken, fine)
    real = analyzer.analyze

    def bug(s, **options):
        if s.pk == broken.pk:
            raise RuntimeError("analyzer bug")
        return real(s, **options)

    monkeypatch.setattr(analyzer, "analyze", bug)
    assert analysis_drain.drain_once() == 2
    assert list(Analysis.objects.values_list("session_id", flat=True)) == [fine.pk]
    kept = OutboxMessage.objects.get()
    assert kept.payload == {"session_id": str(broken.pk)} and "analyzer bug" in kept.last_error
    assert analysis_drain.drain_once() == 0  # backed off, not retried in a hot loop
    monkeypatch.setattr(analyzer, "analyze", real)
    OutboxMessage.objects.update(available_at=Now() - timedelta(seconds=1))
    assert analysis_drain.drain_once() == 1 and Analysis.objects.filter(session=broken).exists()


def test_the_relay_leaves_analysis_requests_to_the_worker_and_their_commit_wakes_it(cast, transactional_db):
    session = _session(cast, "postgres", "select 1")
    params = connection.get_connection_params()
    with psycopg.connect(**params, autocommit=True) as listener:
        listener.execute(f"LISTEN {analysis_drain.CHANNEL}")
        with transaction.atomic():
            outbox.outbox_put("analysis", {"session_id": str(session.pk)})
            outbox.outbox_put("analysis", {"session_id": str(session.pk)})
        woke = [n.channel for n in listener.notifies(timeout=10, stop_after=1)]
        assert woke == [analysis_drain.CHANNEL]
        assert list(listener.notifies(timeout=0)) == []  # one per transaction
    assert outbox.relay_once() == 0 and OutboxMessage.objects.filter(kind="analysis").count() == 2


def test_the_drain_thread_analyses_what_ends_while_it_runs_and_what_waited_before(
    cast, shops, transactional_db, settings
):
    settings.ANALYSIS_BATCH_WAIT_MS = 0
    before = pipeline.exec_start(actor=cast.bob.actor(), connection_name="shop", input="select 1")
    _until(lambda: OutboxMessage.objects.filter(kind="analysis").exists())
    drainer = analysis_drain.Drainer()
    drainer.start()
    try:
        _until(lambda: Analysis.objects.filter(session_id=before.pk).exists())
        after = pipeline.exec_start(
            actor=cast.bob.actor(), connection_name="shop", input="delete from customers"
        )
        stored = _until(lambda: Analysis.objects.filter(session_id=after.pk).first())
        assert stored.risk_level == "high"
    finally:
        drainer.stop()
    assert not OutboxMessage.objects.filter(kind="analysis").exists()


def test_a_process_forked_after_the_drain_started_takes_none_of_its_pooled_connections(transactional_db):
    # A Celery pool child started after the drain thread (one replacing a child that died) must
    # open its own connections, not take the parent's from the inherited pool.
    analysis_drain._guard_fork()

    def backend_of_a_new_thread(out: list) -> None:
        with connections["default"].cursor() as cursor:
            cursor.execute("select pg_backend_pid()")
            out.append(cursor.fetchone()[0])
        connections["default"].close()  # back to the pool, idle

    parents: list = []
    thread = threading.Thread(target=backend_of_a_new_thread, args=(parents,))
    thread.start()
    thread.join()
    with connections["default"].cursor() as cursor:  # every backend the parent has, its pool's idle ones too
        cursor.execute("select pid from pg_stat_activity where datname = current_database()")
        existing = {row[0] for row in cursor.fetchall()}
    assert parents[0] in existing
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a fresh thread checks out from the pool, as a task would
        try:
            got: list = []
            worker = threading.Thread(target=backend_of_a_new_thread, args=(got,))
            worker.start()
            worker.join()
            os.write(write, str(got[0]).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = int(os.read(read, 32) or 0)
    os.close(read)
    assert child and child not in existing
    with connections["default"].cursor() as cursor:  # and the parent's connections still work
        cursor.execute("select 1")
