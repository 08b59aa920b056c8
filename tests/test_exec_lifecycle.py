"""The running/handoff, wait, cancel and orphan paths, end to end over MCP on a live gateway.

The live gateway hands off after 2 s (PORTCULLIS_EXEC_HANDOFF_SECONDS) and reports progress
every second, so these paths run in seconds instead of minutes.
"""

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from gateway.services import connection_create_headless
from sessions.models import AuditEvent, Runner, Session, SessionStatus
from sessions.services import sessions_sweep_orphans
from tests.conftest import error_text, structured

pytestmark = pytest.mark.live


@pytest.fixture
def pg(cast, pg_target):
    return connection_create_headless(
        org=cast.acme, name="pg", kind="postgres", settings=pg_target, options={}
    )


def test_a_slow_exec_answers_running_then_sessions_wait_returns_the_result(cast, pg, mcp):
    client = mcp(cast.bob)
    started = time.monotonic()
    envelope = structured(
        client.call("exec", {"connection_name": "pg", "input": "select pg_sleep(4), 42 as answer"})
    )
    assert envelope["status"] == "running"
    assert "sessions_wait" in envelope["next_step"]
    assert time.monotonic() - started < 4
    assert Session.objects.get(pk=envelope["session_id"]).status == SessionStatus.RUNNING

    progress = []

    async def on_progress(value, total, message):
        progress.append((value, total, message))

    waited = structured(
        client.call(
            "sessions_wait",
            {"session_id": envelope["session_id"], "timeout_seconds": 30},
            progress=on_progress,
        )
    )
    assert waited["status"] == "completed" and waited["timed_out"] is False
    assert waited["rows"] == [["", 42]]
    assert progress, "a client that asked for progress gets notifications while it waits"
    assert all(total == 30 for _, total, _ in progress)


def test_exec_may_wait_longer_than_the_handoff_when_asked(cast, pg, mcp):
    envelope = structured(
        mcp(cast.bob).call(
            "exec", {"connection_name": "pg", "input": "select pg_sleep(3), 1", "timeout_seconds": 15}
        )
    )
    assert envelope["status"] == "completed"


def test_sessions_wait_times_out_without_failing(cast, pg, mcp):
    client = mcp(cast.bob)
    envelope = structured(client.call("exec", {"connection_name": "pg", "input": "select pg_sleep(6)"}))
    waited = structured(
        client.call("sessions_wait", {"session_id": envelope["session_id"], "timeout_seconds": 1})
    )
    assert waited["timed_out"] is True and waited["status"] == "running"
    final = structured(
        client.call("sessions_wait", {"session_id": envelope["session_id"], "timeout_seconds": 20})
    )
    assert final["status"] == "completed"


def test_exec_cancel_stops_a_running_query(cast, pg, mcp):
    client = mcp(cast.bob)
    envelope = structured(client.call("exec", {"connection_name": "pg", "input": "select pg_sleep(60)"}))
    assert envelope["status"] == "running"
    cancelled = structured(client.call("exec_cancel", {"session_id": envelope["session_id"]}))
    assert cancelled["cancel_requested"] is True
    started = time.monotonic()
    final = structured(
        client.call("sessions_wait", {"session_id": envelope["session_id"], "timeout_seconds": 20})
    )
    assert time.monotonic() - started < 10
    assert final["status"] == "failed" and final["session_status"] == "cancelled"
    assert AuditEvent.objects.filter(action="exec.cancel", actor=cast.bob.user).count() == 1
    # a second cancel is refused with the reason
    assert "already cancelled" in error_text(
        client.call("exec_cancel", {"session_id": envelope["session_id"]})
    )


def test_nobody_else_can_cancel_or_wait_on_my_session(cast, pg, mcp):
    envelope = structured(
        mcp(cast.bob).call("exec", {"connection_name": "pg", "input": "select pg_sleep(30)"})
    )
    for outsider in (cast.dave, cast.eve):
        assert error_text(mcp(outsider).call("exec_cancel", {"session_id": envelope["session_id"]})) == (
            "session not found"
        )
        assert error_text(mcp(outsider).call("sessions_wait", {"session_id": envelope["session_id"]})) == (
            "session not found"
        )
    # the org's admin may cancel it
    assert structured(mcp(cast.alice).call("exec_cancel", {"session_id": envelope["session_id"]}))[
        "cancel_requested"
    ]


def test_a_command_runs_with_stdin_and_reports_its_exit_code(cast, mcp, settings):
    settings.COMMAND_CONNECTIONS_ENABLED = True
    connection_create_headless(
        org=cast.acme,
        name="sh",
        kind="command",
        settings={
            "argv": ["sh", "-c", 'read line; echo "got:$line:$GREETING"; exit 3'],
            "env": {"GREETING": "hi"},
        },
        options={},
    )
    envelope = structured(mcp(cast.bob).call("exec", {"connection_name": "sh", "input": "hello\n"}))
    assert envelope["status"] == "failed"
    assert envelope["exit_code"] == 3
    assert envelope["output"].strip() == "got:hello:hi"


def test_the_sweep_ends_running_sessions_whose_lease_lapsed_even_if_their_runner_lives(cast, shops):
    """Leases are on the database clock: a live process that stopped renewing (it lost the
    database, it hangs) loses its session like a dead one; a renewed lease is left alone."""
    common = dict(
        org=cast.acme,
        user=cast.bob.user,
        connection=shops["acme"],
        connection_name="shop",
        connection_kind="sqlite",
        surface="mcp",
        input="select 1",
        input_sha256="x",
    )
    past, future = timezone.now() - timedelta(minutes=5), timezone.now() + timedelta(minutes=5)
    Runner.objects.create(pk="live-host:2:def", last_seen_at=timezone.now())  # heartbeats do not matter
    lapsed = Session.objects.create(
        status=SessionStatus.RUNNING, runner="live-host:2:def", lease_expires_at=past, **common
    )
    held = Session.objects.create(
        status=SessionStatus.RUNNING, runner="live-host:2:def", lease_expires_at=future, **common
    )
    finished = Session.objects.create(status=SessionStatus.DONE, runner="x", lease_expires_at=past, **common)

    assert sessions_sweep_orphans() == 1
    lapsed.refresh_from_db()
    assert lapsed.status == SessionStatus.FAILED and "outcome is unknown" in lapsed.error
    assert lapsed.lease_expires_at is None and lapsed.ended_at is not None
    assert Session.objects.get(pk=held.pk).status == SessionStatus.RUNNING
    assert Session.objects.get(pk=finished.pk).status == SessionStatus.DONE
    event = AuditEvent.objects.get(action="session.orphaned")
    assert event.target_id == str(lapsed.pk) and event.outcome == "failed"
    assert sessions_sweep_orphans() == 0  # idempotent
    # the late runner's own finish is refused: the sweep's verdict stands
    from sessions import lifecycle

    assert (
        lifecycle.transition(
            lapsed.pk, SessionStatus.DONE, action="exec.finish", runner="live-host:2:def", as_owner=True
        )
        is None
    )
    assert Session.objects.get(pk=lapsed.pk).status == SessionStatus.FAILED


def test_an_open_session_whose_dispatcher_died_is_run_by_the_sweep(cast, shops, transactional_db):
    """The process that recorded it died before running it: the next sweep (any process) claims
    it once and runs it from its run spec."""
    from gateway import maintenance, runner
    from sessions import lifecycle

    session = Session.objects.create(
        org=cast.acme,
        user=cast.bob.user,
        connection=shops["acme"],
        connection_name="shop",
        connection_kind="sqlite",
        surface="mcp",
        input="select count(*) as n from customers",
        input_sha256="x",
        status=SessionStatus.OPEN,
        runner="dead-host:1:abc",
        run_spec={
            "limits": {"max_rows": 10, "max_output_bytes": 4096, "timeout_seconds": 10, "read_only": False}
        },
    )
    Session.objects.filter(pk=session.pk).update(lease_expires_at=lifecycle.db_now_plus(-1))
    assert maintenance.tick()["resumed"] == 1
    future = runner.local_future(str(session.pk))
    if future is not None:
        future.result(timeout=60)
    session.refresh_from_db()
    assert session.status == SessionStatus.DONE and session.result["rows"] == [[3]]
    assert session.runner == runner.runner_id()
    assert maintenance.tick()["resumed"] == 0  # claimed once
