"""The gateway-database statements of a session's life, from its record to its final state, and the
guarantees the fewer statements must keep (docs/durability.md, "One writer of session state"):
a cancel from another replica wins or loses cleanly, a finish never overwrites a final state, an
event is written only when a webhook (or sink) can take it, and status, events, analysis request
and audit event commit together or not at all.

Statements are counted on every thread's connection (the runner finishes on its own thread), by
an execute wrapper installed as each connection is made; BEGIN and COMMIT are not statements
here (psycopg sends them itself)."""

from __future__ import annotations

import re
import threading
import time
from contextlib import contextmanager

import pytest
from django.db import connections, transaction
from django.db.backends.signals import connection_created

from gateway import pipeline, runner
from governance.errors import Conflict
from governance.services import org_create
from sessions import lifecycle
from sessions.audit import audit_verify
from sessions.models import AuditChainHead, AuditEvent, OutboxMessage, Session, SessionStatus
from sessions.webhooks import webhook_endpoint_create, webhook_endpoint_update
from tests.test_upstream_mcp import call, make_mcp_connection, upstream_server

# What one exec and one upstream tool call send from the session's insert to its final state.
RECORD = ["insert session", "outbox", "audit"]  # the insert; session.started if it can go anywhere; audit
FINISH = ["update session", "outbox", "audit"]  # the conditional update; session.finished and analysis; audit


@contextmanager
def statements():
    """Every statement sent to the gateway database while inside, by any thread: (thread, sql)."""
    seen: list[tuple[str, str]] = []
    lock = threading.Lock()
    wrapped = []

    def wrapper(execute, sql, params, many, context):
        with lock:
            seen.append((threading.current_thread().name, sql))
        return execute(sql, params, many, context)

    def install(sender=None, connection=None, **kwargs):
        if wrapper not in connection.execute_wrappers:
            connection.execute_wrappers.append(wrapper)
            wrapped.append(connection)

    connection_created.connect(install)
    for connection in connections.all():  # this thread's, already open
        install(connection=connection)
    try:
        yield seen
    finally:
        connection_created.disconnect(install)
        for connection in wrapped:
            connection.execute_wrappers.remove(wrapper)


_WHAT = [
    (r"^INSERT INTO \"records_session\"", "insert session"),
    (r"^UPDATE \"records_session\"", "update session"),
    (r"^SELECT s\.\"id\".* FROM \"records_session\" s .*FOR UPDATE", "lock session"),
    (r"^WITH v .*INSERT INTO \"records_outboxmessage\"", "outbox"),
    (r"^WITH h AS \(SELECT last_hash FROM \"records_auditchainhead\"", "audit"),
]


def _what(sql: str) -> str:
    return next((name for pattern, name in _WHAT if re.search(pattern, sql, re.S)), sql[:80])


def session_statements(seen) -> list[str]:
    """The statements of the session's lifecycle: its record (from the session's insert to its
    audit event, on the thread that recorded it) and what the runner sent. What else the call's
    trips send (authorization before, the upstream contract pin after) is other stages' budget."""
    start = next(i for i, (_, sql) in enumerate(seen) if _what(sql) == "insert session")
    recorder = seen[start][0]
    recorded = [_what(sql) for thread, sql in seen[start:] if thread == recorder]
    recorded = recorded[: recorded.index("audit") + 1]
    return recorded + [_what(sql) for thread, sql in seen if thread.startswith("portcullis-exec")]


def _settle():
    deadline = time.monotonic() + 60
    while runner.running_here():
        assert time.monotonic() < deadline, "the runner did not finish"
        time.sleep(0.01)


def _running(cast, connection) -> Session:
    """A session recorded running for this runner, as exec records one that starts at once."""
    session = pipeline.new_session(cast.bob.actor(), connection, "exec", "select 1", "select 1")
    session.runner = runner.runner_id()
    with transaction.atomic():
        lifecycle.record(
            session, status=SessionStatus.RUNNING, actor=cast.bob.actor(), action="exec.request", lease=30.0
        )
    return session


def _finish(session_id) -> Session | None:
    """The runner's final write as exec sends it: done, unless a cancel came meanwhile."""
    return pipeline.finish_with_retry(
        session_id,
        SessionStatus.DONE,
        {"exit_code": 0, "output": "1", "row_count": 1, "execution_time_ms": 3},
        cancelled={"error": "cancelled"},
        action="exec.finish",
    )


def _webhook(cast, **kwargs):
    return webhook_endpoint_create(
        actor=cast.alice.actor(), name="hook", url="https://hooks.example.test/in", secret="s" * 20, **kwargs
    )


@pytest.fixture
def quiet_relay(settings):
    """Outbox rows stay where the transaction left them (no delivery attempt), to be looked at."""
    settings.OUTBOX_RELAY_IN_PROCESS = False


# --- the budget ---------------------------------------------------------------------------------------


def test_it_runs_an_exec_in_six_statements_from_record_to_final_state(cast, shops, transactional_db):
    pipeline.exec_start(actor=cast.bob.actor(), connection_name="shop", input="select 1")  # warm
    _settle()
    with statements() as seen:
        session = pipeline.exec_start(actor=cast.bob.actor(), connection_name="shop", input="select 1")
        _settle()
    assert Session.objects.get(pk=session.pk).status == SessionStatus.DONE
    assert session_statements(seen) == RECORD + FINISH


def test_it_runs_an_upstream_tool_call_in_six_statements_from_record_to_final_state(cast, transactional_db):
    with upstream_server() as url:
        make_mcp_connection(cast.acme, url)
        assert call(cast.bob, "tools", "echo", {"text": "warm"})["status"] == "completed"
        _settle()
        with statements() as seen:
            assert call(cast.bob, "tools", "echo", {"text": "counted"})["status"] == "completed"
            _settle()
    # Its masking merge and a cancel are decided in the one conditional update: no locked read.
    assert session_statements(seen) == RECORD + FINISH


def test_a_webhook_costs_no_statement_and_gets_its_events(cast, shops, transactional_db, quiet_relay):
    session = _running(cast, shops["acme"])
    with statements() as seen:
        _finish(session.pk)
    assert [_what(sql) for _, sql in seen] == FINISH
    # No event: nobody could take it.
    assert list(OutboxMessage.objects.values_list("kind", flat=True)) == ["analysis"]

    hook = _webhook(cast, enabled=False)
    session = _running(cast, shops["acme"])
    _finish(session.pk)
    assert not OutboxMessage.objects.filter(kind="event").exists()  # a disabled endpoint takes nothing

    webhook_endpoint_update(actor=cast.alice.actor(), endpoint_id=hook.pk, enabled=True)
    session = _running(cast, shops["acme"])
    with statements() as seen:
        _finish(session.pk)
    assert [_what(sql) for _, sql in seen] == FINISH
    events = [m.payload for m in OutboxMessage.objects.filter(kind="event").order_by("id")]
    assert [(e["type"], e["data"]["session_id"]) for e in events] == [
        ("session.started", str(session.pk)),
        ("session.finished", str(session.pk)),
    ]
    assert events[-1]["data"]["status"] == "done" and events[-1]["data"]["user_email"] == "bob@acme.test"


# --- the guarantees -----------------------------------------------------------------------------------


def _fields(obj) -> dict:
    return {f.attname: getattr(obj, f.attname) for f in obj._meta.concrete_fields}


def test_the_finish_returns_the_row_it_wrote_with_its_user(cast, shops, transactional_db):
    session = _running(cast, shops["acme"])
    finished = _finish(session.pk)
    stored = Session.objects.select_related("user").get(pk=session.pk)
    assert finished.get_deferred_fields() == set()
    assert _fields(finished) == _fields(stored) and finished.user == stored.user
    assert finished.status == SessionStatus.DONE and finished.ended_at and finished.lease_expires_at is None


def test_a_cancel_that_came_first_wins(cast, shops, transactional_db):
    session = _running(cast, shops["acme"])
    pipeline.exec_cancel(actor=cast.bob.actor(), session_id=str(session.pk))
    finished = _finish(session.pk)
    assert (finished.status, finished.error, finished.exit_code) == (SessionStatus.CANCELLED, "cancelled", 0)
    assert Session.objects.get(pk=session.pk).status == SessionStatus.CANCELLED


def test_a_cancel_committing_while_the_finish_waits_on_the_row_wins(cast, shops, transactional_db):
    """Another replica's exec_cancel holds the row when the finish arrives: the finish waits, sees
    the cancel once it commits, and ends the session cancelled."""
    session = _running(cast, shops["acme"])
    locked, release = threading.Event(), threading.Event()

    def cancel_elsewhere():
        try:
            with transaction.atomic():
                Session.objects.select_for_update().filter(pk=session.pk).update(cancel_requested=True)
                locked.set()
                release.wait(30)
        finally:
            connections.close_all()

    other = threading.Thread(target=cancel_elsewhere)
    other.start()
    assert locked.wait(30)
    outcome = []
    finisher = threading.Thread(target=lambda: (outcome.append(_finish(session.pk)), connections.close_all()))
    finisher.start()
    time.sleep(0.5)
    assert finisher.is_alive(), "the finish waits for the cancel's lock"
    release.set()
    other.join(30)
    finisher.join(30)
    assert outcome[0].status == SessionStatus.CANCELLED
    assert Session.objects.get(pk=session.pk).status == SessionStatus.CANCELLED


def test_a_cancel_after_the_finish_finds_it_done(cast, shops, transactional_db):
    session = _running(cast, shops["acme"])
    _finish(session.pk)
    with pytest.raises(Conflict):
        pipeline.exec_cancel(actor=cast.bob.actor(), session_id=str(session.pk))
    assert Session.objects.get(pk=session.pk).status == SessionStatus.DONE


def test_a_late_finish_never_overwrites_a_final_state_or_another_runners_session(
    cast, shops, transactional_db
):
    swept = _running(cast, shops["acme"])
    lifecycle.transition(swept.pk, SessionStatus.FAILED, action="session.orphaned", fields={"error": "lost"})
    taken = _running(cast, shops["acme"])
    Session.objects.filter(pk=taken.pk).update(runner="another-replica")
    audited = AuditEvent.objects.count()
    assert _finish(swept.pk) is None and _finish(taken.pk) is None
    assert Session.objects.get(pk=swept.pk).error == "lost"
    assert Session.objects.get(pk=taken.pk).status == SessionStatus.RUNNING
    assert AuditEvent.objects.count() == audited  # nothing written for a refused move
    with pytest.raises(Session.DoesNotExist):
        _finish("00000000-0000-0000-0000-000000000000")


def test_status_events_analysis_and_audit_commit_together(cast, shops, transactional_db, quiet_relay):
    _webhook(cast)
    session = _running(cast, shops["acme"])
    before = (OutboxMessage.objects.count(), AuditEvent.objects.count())
    with pytest.raises(RuntimeError), transaction.atomic():
        assert _finish(session.pk).status == SessionStatus.DONE
        assert OutboxMessage.objects.count() == before[0] + 2  # session.finished, analysis
        raise RuntimeError("the transaction fails after the finish")
    assert Session.objects.get(pk=session.pk).status == SessionStatus.RUNNING
    assert (OutboxMessage.objects.count(), AuditEvent.objects.count()) == before
    _finish(session.pk)
    assert OutboxMessage.objects.count() == before[0] + 2 and AuditEvent.objects.count() == before[1] + 1
    assert audit_verify(cast.acme.pk).ok and audit_verify(cast.globex.pk).ok


def test_an_orgs_first_audit_event_starts_its_chain(db):
    org = org_create(name="initech")  # audited: the org's first event, before its chain has a head
    event = AuditEvent.objects.get(org=org)
    head = AuditChainHead.objects.get(org_id=org.pk)
    assert (head.count, head.last_id, head.last_hash, event.prev_hash) == (1, event.pk, event.hash, "")
    assert audit_verify(org.pk).ok
