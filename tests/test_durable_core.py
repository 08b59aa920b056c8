"""The durable exec core, through its services: one writer of session state, the outbox, leases,
idempotency keys, target connection reuse, and waits that survive a missing Redis.

The same properties under real faults (killed replicas and workers, Redis and PostgreSQL
stopped) are in tests/faults/.
"""

from __future__ import annotations

import ast
import asyncio
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from django.db import transaction
from django.test import TestCase

from gateway import pipeline, runner
from gateway.connectors import pool
from gateway.pipeline import dispatch
from gateway.reviewed import review_execute
from gateway.services import connection_create_headless
from governance.errors import InvalidInput
from reviews import services as reviews
from sessions import lifecycle, outbox
from sessions.models import AuditEvent, OutboxMessage, Session, SessionStatus

ROOT = Path(__file__).resolve().parent.parent


def _wait_job(session_id) -> None:
    future = runner.local_future(str(session_id))
    if future is not None:
        future.result(timeout=120)


def _review_rule(cast, connection: str) -> None:
    """Every command on `connection` waits for an admin's approval."""
    reviews.access_rule_create(
        actor=cast.alice.actor(),
        name=connection,
        access_type="command",
        connections=[connection],
        reviewer_groups=["admin"],
    )


@contextmanager
def _runner_dies_before_running(monkeypatch):
    """The process that released an approved session "dies" before its pool runs it: the jobs it
    would have submitted are only collected."""
    submitted = []
    with monkeypatch.context() as patch:
        patch.setattr(dispatch, "submit_local", lambda *a, **kw: submitted.append(a))
        yield submitted


def _count(path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("select count(*) from customers").fetchone()[0]


# --- one writer -------------------------------------------------------------------------------------


def _status_writes(path: Path) -> list[str]:
    """Places in a module that write Session.status: `x.status = ...` on a session-like name, or
    `status=` inside `.update(...)`/`.create(...)` of a Session queryset."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if (
                    isinstance(target, ast.Attribute)
                    and target.attr == "status"
                    and isinstance(target.value, ast.Name)
                    and "session" in target.value.id
                ):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update":
            writes_status = any(k.arg == "status" for k in node.keywords)
            if writes_status and "Session.objects" in ast.unparse(node.func):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_only_the_lifecycle_module_writes_session_status():
    writers = []
    for package in ("gateway", "governance", "reviews", "sessions", "mcpserver"):
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts or path.name == "lifecycle.py":
                continue
            writers += _status_writes(path)
    assert writers == [], f"session status written outside sessions/lifecycle.py: {writers}"


def test_every_transition_writes_its_audit_event_events_and_analysis_in_one_transaction(
    cast, shops, settings, tmp_path
):
    settings.EVENTS_JSONL_PATH = str(tmp_path / "events.jsonl")  # so events have somewhere to go
    session = pipeline.new_session(cast.bob.actor(), shops["acme"], "exec", "select 1", "select 1")
    with transaction.atomic():
        lifecycle.record(session, status=SessionStatus.RUNNING, actor=cast.bob.actor(), action="exec.request")
    kinds = list(OutboxMessage.objects.values_list("kind", "payload__type"))
    assert kinds == [("event", "session.started")]
    ended = lifecycle.transition(
        session.pk, SessionStatus.DONE, as_owner=True, action="exec.finish", fields={"exit_code": 0}
    )
    assert ended.status == SessionStatus.DONE and ended.ended_at is not None
    kinds = sorted(OutboxMessage.objects.values_list("kind", "payload__type"))
    assert kinds == [("analysis", None), ("event", "session.finished"), ("event", "session.started")]
    actions = list(AuditEvent.objects.filter(target_id=str(session.pk)).values_list("action", "actor_email"))
    assert actions == [("exec.finish", "bob@acme.test"), ("exec.request", "bob@acme.test")]
    # A move the state machine does not have is refused, and writes nothing.
    assert lifecycle.transition(session.pk, SessionStatus.RUNNING, action="x") is None
    assert OutboxMessage.objects.count() == 3


def test_a_rolled_back_change_leaves_no_outbox_message(cast, shops, settings, tmp_path):
    settings.EVENTS_JSONL_PATH = str(tmp_path / "events.jsonl")
    session = pipeline.new_session(cast.bob.actor(), shops["acme"], "exec", "select 1", "select 1")
    with pytest.raises(RuntimeError), transaction.atomic():
        lifecycle.record(session, status=SessionStatus.FAILED, actor=cast.bob.actor(), action="exec.request")
        assert OutboxMessage.objects.count() == 2  # session.finished + analysis, in the transaction
        raise RuntimeError("the change fails")
    assert OutboxMessage.objects.count() == 0 and not Session.objects.filter(pk=session.pk).exists()


def test_a_rejection_an_expiry_and_a_revocation_end_the_session_with_its_events(
    cast, shops, settings, tmp_path
):
    settings.EVENTS_JSONL_PATH = str(tmp_path / "events.jsonl")
    _review_rule(cast, "shop")
    rejected = pipeline.exec_start(
        actor=cast.bob.actor(), connection_name="shop", input="delete from customers"
    )
    assert rejected.status == SessionStatus.PENDING_REVIEW
    reviews.review_decide(
        actor=cast.alice.actor("web"), review_id=rejected.pending_review.pk, status="REJECTED", reason="no"
    )
    rejected.refresh_from_db()
    assert rejected.status == SessionStatus.REJECTED and rejected.is_final
    types = set(
        OutboxMessage.objects.filter(payload__data__session_id=str(rejected.pk)).values_list(
            "payload__type", flat=True
        )
    )
    assert "session.blocked" in types
    assert AuditEvent.objects.filter(action="session.rejected", target_id=str(rejected.pk)).exists()

    expiring = pipeline.exec_start(
        actor=cast.bob.actor(), connection_name="shop", input="delete from customers"
    )
    expiring.pending_review.__class__.objects.filter(pk=expiring.pending_review.pk).update(
        expires_at=expiring.created_at
    )
    assert reviews.reviews_expire() == 1
    expiring.refresh_from_db()
    assert expiring.status == SessionStatus.CANCELLED
    types = set(
        OutboxMessage.objects.filter(payload__data__session_id=str(expiring.pk)).values_list(
            "payload__type", flat=True
        )
    )
    assert "session.finished" in types
    assert OutboxMessage.objects.filter(kind="analysis", payload__session_id=str(expiring.pk)).exists()


# --- the outbox -------------------------------------------------------------------------------------


def test_the_relay_delivers_each_message_once_and_keeps_the_ones_it_cannot_deliver(db, settings):
    settings.OUTBOX_RELAY_IN_PROCESS = False
    delivered = []
    outbox.handler("test-ok")(lambda payload: delivered.append(payload["n"]))

    def broken(payload):
        raise ConnectionError("the broker is away")

    outbox.handler("test-broken")(broken)
    with TestCase.captureOnCommitCallbacks(execute=True):
        for n in range(3):
            outbox.outbox_put("test-ok", {"n": n})
        outbox.outbox_put("test-broken", {"n": 99})
    assert outbox.relay_once() == 3 and delivered == [0, 1, 2]
    kept = OutboxMessage.objects.get()
    assert kept.kind == "test-broken" and kept.attempts == 1 and "broker is away" in kept.last_error
    assert kept.available_at > kept.created_at  # backed off, not retried in a hot loop
    assert outbox.relay_once() == 0 and OutboxMessage.objects.get().attempts == 1  # not due yet
    assert outbox.backlog()["test-broken"]["count"] == 1
    outbox.handler("test-broken")(lambda payload: delivered.append(payload["n"]))  # the broker is back
    OutboxMessage.objects.update(available_at=kept.created_at)
    assert outbox.relay_once() == 1 and delivered[-1] == 99 and not OutboxMessage.objects.exists()


# --- idempotency ------------------------------------------------------------------------------------


def test_a_retry_with_the_same_key_returns_the_first_session_and_runs_nothing_again(
    cast, shops, transactional_db
):
    path = shops["acme"].config["path"]
    first = pipeline.exec_start(
        actor=cast.bob.actor(),
        connection_name="shop",
        input="insert into customers (name, email) values ('x', 'x@acme.test')",
        idempotency_key="req-1",
    )
    _wait_job(first.pk)
    again = pipeline.exec_start(
        actor=cast.bob.actor(),
        connection_name="shop",
        input="insert into customers (name, email) values ('x', 'x@acme.test')",
        idempotency_key="req-1",
    )
    assert again.pk == first.pk and _count(path) == 4  # 3 rows + one insert, once
    assert Session.objects.filter(user=cast.bob.user).count() == 1
    # The same key for another request is refused rather than answered with the wrong result.
    with pytest.raises(InvalidInput, match="different request"):
        pipeline.exec_start(
            actor=cast.bob.actor(), connection_name="shop", input="select 2", idempotency_key="req-1"
        )
    # Keys are per user: dave's "req-1" is his own.
    other = pipeline.exec_start(
        actor=cast.dave.actor(), connection_name="shop", input="select 1", idempotency_key="req-1"
    )
    assert other.pk != first.pk


def test_concurrent_retries_with_one_key_run_once(cast, shops, transactional_db):
    path = shops["acme"].config["path"]
    text = "insert into customers (name, email) values ('y', 'y@acme.test')"
    results, errors = [], []

    def call():
        try:
            results.append(
                pipeline.exec_start(
                    actor=cast.bob.actor(), connection_name="shop", input=text, idempotency_key="k"
                )
            )
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            from django.db import connections

            connections.close_all()

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len({s.pk for s in results}) == 1
    _wait_job(results[0].pk)
    assert _count(path) == 4


def test_reviews_execute_with_a_key_answers_a_retry_with_the_same_session(cast, shops, transactional_db):
    _review_rule(cast, "shop")
    pending = pipeline.exec_start(
        actor=cast.bob.actor(), connection_name="shop", input="delete from customers where id = 1"
    )
    review_id = pending.pending_review.pk
    reviews.review_decide(actor=cast.alice.actor("web"), review_id=review_id, status="APPROVED")
    first = review_execute(actor=cast.bob.actor(), review_id=review_id, idempotency_key="run-1")
    _wait_job(first.pk)
    again = review_execute(actor=cast.bob.actor(), review_id=review_id, idempotency_key="run-1")
    assert again.pk == first.pk == pending.pk
    assert _count(shops["acme"].config["path"]) == 2
    with pytest.raises(Exception, match="already executed"):  # without the key it is a second run: refused
        review_execute(actor=cast.bob.actor(), review_id=review_id)


def test_an_approved_execution_whose_process_died_is_run_by_another_exactly_once(
    cast, shops, transactional_db, monkeypatch
):
    """reviews_execute committed (review EXECUTED, session open) and the process died before its
    pool ran it: the sweep of any process claims it once."""
    from gateway import maintenance

    _review_rule(cast, "shop")
    pending = pipeline.exec_start(
        actor=cast.bob.actor(), connection_name="shop", input="delete from customers where id = 2"
    )
    reviews.review_decide(
        actor=cast.alice.actor("web"), review_id=pending.pending_review.pk, status="APPROVED"
    )
    with _runner_dies_before_running(monkeypatch) as submitted:
        session = review_execute(actor=cast.bob.actor(), review_id=pending.pending_review.pk)
    assert submitted and Session.objects.get(pk=session.pk).status == SessionStatus.OPEN
    assert maintenance.tick()["resumed"] == 0  # its dispatch lease has not lapsed yet
    Session.objects.filter(pk=session.pk).update(lease_expires_at=lifecycle.db_now_plus(-1))
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(maintenance.tick()["resumed"])) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 0, 1]  # three sweepers, one claim
    _wait_job(session.pk)
    session.refresh_from_db()
    assert session.status == SessionStatus.DONE and _count(shops["acme"].config["path"]) == 2


# --- leases -----------------------------------------------------------------------------------------


def test_agent_work_nobody_takes_fails_with_a_clear_message_instead_of_running_late(
    cast, pg_target, transactional_db, settings
):
    from gateway import maintenance

    settings.CELERY_TASK_ALWAYS_EAGER = False  # a broker deployment: the connection names an agent
    settings.OUTBOX_RELAY_IN_PROCESS = False
    connection_create_headless(
        org=cast.acme, name="remote", kind="postgres", settings=pg_target, options={"agent_queue": "far"}
    )
    session = pipeline.exec_start(actor=cast.bob.actor(), connection_name="remote", input="select 1")
    assert session.status == SessionStatus.OPEN
    assert OutboxMessage.objects.filter(kind="dispatch", payload__session_id=str(session.pk)).exists()
    Session.objects.filter(pk=session.pk).update(lease_expires_at=lifecycle.db_now_plus(-1))
    maintenance.tick()
    session.refresh_from_db()
    assert session.status == SessionStatus.FAILED and "no agent" in session.error and "took" in session.error


# --- target connections -----------------------------------------------------------------------------


def test_postgres_connections_are_reused_and_reset_between_sessions(cast, pg_target, transactional_db):
    pool.clear()
    connection_create_headless(org=cast.acme, name="pg", kind="postgres", settings=pg_target, options={})

    def run(text):
        session = pipeline.exec_start(actor=cast.bob.actor(), connection_name="pg", input=text)
        _wait_job(session.pk)
        session.refresh_from_db()
        assert session.status == SessionStatus.DONE, session.error
        return (session.result or {}).get("rows")

    pid = run("select pg_backend_pid()")[0][0]
    run("set application_name = 'changed'; create temp table scratch (x int)")
    assert run("select pg_backend_pid()")[0][0] == pid  # reused, no new connect
    assert run("show application_name") == [["portcullis"]]  # reset to how it connected
    assert run("select count(*) from pg_tables where tablename = 'scratch'") == [[0]]
    # A session left inside a transaction is closed, not handed to the next caller.
    left_open = pipeline.exec_start(actor=cast.bob.actor(), connection_name="pg", input="begin; select 1")
    _wait_job(left_open.pk)
    assert run("select pg_backend_pid()")[0][0] != pid
    with psycopg.connect(
        **{k: v for k, v in pg_target.items() if k != "database"}, dbname=pg_target["database"]
    ) as c:
        stale = c.execute(
            "select count(*) from pg_stat_activity where datname = %s and state like 'idle in transaction%%'",
            (pg_target["database"],),
        ).fetchone()
    assert stale[0] == 0
    pool.clear()


# --- waits without Redis ----------------------------------------------------------------------------


def test_waits_poll_the_database_when_redis_is_down(cast, shops, transactional_db, settings):
    from channels.layers import channel_layers

    from sessions.wakeup import wait_for_final

    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:9"]},
        }
    }
    channel_layers.backends.clear()
    session = pipeline.new_session(cast.bob.actor(), shops["acme"], "exec", "select 1", "select 1")
    with transaction.atomic():
        lifecycle.record(session, status=SessionStatus.RUNNING, actor=cast.bob.actor(), action="exec.request")

    def finish_soon():
        lifecycle.transition(session.pk, SessionStatus.DONE, as_owner=True, action="exec.finish")
        from django.db import connections

        connections.close_all()

    timer = threading.Timer(1.5, finish_soon)
    timer.start()
    try:
        final, timed_out = asyncio.run(wait_for_final(session.pk, 60))
    finally:
        timer.join()
        channel_layers.backends.clear()
    assert not timed_out and final.status == SessionStatus.DONE


# --- approved executions: exactly once on PostgreSQL, whatever happens to the runner -------------------


@pytest.fixture
def reviewed_pg(cast, pg_target, transactional_db):
    connection_create_headless(org=cast.acme, name="pgr", kind="postgres", settings=pg_target, options={})
    _review_rule(cast, "pgr")
    return pg_target


def _pg_count(target, where: str) -> int:
    params = {k: v for k, v in target.items() if k != "database"}
    with psycopg.connect(**params, dbname=target["database"], autocommit=True) as conn:
        return conn.execute(f"select count(*) from items where {where}").fetchone()[0]


def _approved(cast, text: str):
    pending = pipeline.exec_start(actor=cast.bob.actor(), connection_name="pgr", input=text)
    reviews.review_decide(
        actor=cast.alice.actor("web"), review_id=pending.pending_review.pk, status="APPROVED"
    )
    return pending


def _abandon(session_id, **spec_extra):
    """As if the runner claimed it and died: running, held by a dead runner, lease long lapsed."""
    session = Session.objects.get(pk=session_id)
    spec = {**session.run_spec, **spec_extra}
    Session.objects.filter(pk=session_id).update(
        status=SessionStatus.RUNNING,
        runner="dead:1:x",
        run_spec=spec,
        lease_expires_at=lifecycle.db_now_plus(-600),
    )


def test_an_approved_execution_records_its_target_transaction_before_it_commits(cast, reviewed_pg):
    pending = _approved(cast, "update items set name = 'once-a' where id = 1")
    session = review_execute(actor=cast.bob.actor(), review_id=pending.pending_review.pk)
    _wait_job(session.pk)
    session.refresh_from_db()
    assert session.status == SessionStatus.DONE and session.run_spec["limits"]["exactly_once"] is True
    marker = session.run_spec["target_txn"]
    params = {k: v for k, v in reviewed_pg.items() if k != "database"}
    with psycopg.connect(**params, dbname=reviewed_pg["database"], autocommit=True) as conn:
        assert conn.execute("select txid_status(%s)", (marker["xid"],)).fetchone()[0] == "committed"
    assert _pg_count(reviewed_pg, "name = 'once-a'") == 1
    # Inputs that manage transactions themselves are not wrapped (nor made exactly-once).
    assert not pipeline.exactly_once_possible(session.connection, "begin; update items set price = 1; commit")
    assert not pipeline.exactly_once_possible(session.connection, "vacuum items")


def test_an_abandoned_approved_run_that_never_committed_runs_again_once(cast, reviewed_pg, monkeypatch):
    from gateway import maintenance

    pending = _approved(cast, "update items set name = 'once-b' where id = 2")
    with _runner_dies_before_running(monkeypatch):
        session = review_execute(actor=cast.bob.actor(), review_id=pending.pending_review.pk)
    _abandon(session.pk)  # claimed, then gone before its commit point: no transaction recorded
    done = maintenance.tick()
    assert done["abandoned_runs"] == 1 and done["resumed"] == 1  # requeued, then resumed in the same sweep
    _wait_job(session.pk)
    session.refresh_from_db()
    assert session.status == SessionStatus.DONE and session.runner == runner.runner_id()
    assert _pg_count(reviewed_pg, "name = 'once-b'") == 1
    assert AuditEvent.objects.filter(action="session.requeued", target_id=str(session.pk)).count() == 1


def test_an_abandoned_approved_run_that_committed_is_not_run_again(cast, reviewed_pg, monkeypatch):
    from gateway import maintenance

    pending = _approved(cast, "update items set price = price + 1000 where id = 3")
    with _runner_dies_before_running(monkeypatch):
        session = review_execute(actor=cast.bob.actor(), review_id=pending.pending_review.pk)
    # The dead runner got as far as the commit: the statement took effect and its txid is recorded.
    params = {k: v for k, v in reviewed_pg.items() if k != "database"}
    with psycopg.connect(**params, dbname=reviewed_pg["database"]) as conn:
        conn.execute("update items set price = price + 1000 where id = 3")
        xid, pid = conn.execute("select txid_current()::bigint, pg_backend_pid()").fetchone()
        conn.commit()
    _abandon(session.pk, target_txn={"xid": int(xid), "pid": int(pid)})
    assert maintenance.tick()["abandoned_runs"] == 1
    session.refresh_from_db()
    assert (
        session.status == SessionStatus.FAILED
        and "committed it" in session.error
        and "ran once" in session.error
    )
    assert _pg_count(reviewed_pg, "id = 3 and price > 1000") == 1
    assert _pg_count(reviewed_pg, "id = 3 and price > 2000") == 0  # not a second time
    assert maintenance.tick()["resumed"] == 0
