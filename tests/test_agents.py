"""Agent queues: a connection that names one runs on a Celery worker started with -Q agent.<org id>.<name>,
not in the gateway. The worker here is a real `celery worker` process on the Redis broker."""

import subprocess

import pytest

from gateway.services import connection_create_headless
from sessions.models import Runner, Session
from tests.conftest import celery_worker_process, error_text, structured

pytestmark = pytest.mark.live


@pytest.fixture
def agent_worker(cast, tmp_path_factory):
    """A worker for acme's agent queue "near-db" (queues are named agent.<org id>.<name>)."""
    with celery_worker_process(f"agent.{cast.acme.pk}.near-db", tmp_path_factory.mktemp("agent")) as process:
        yield process


@pytest.fixture
def remote_pg(cast, pg_target):
    return connection_create_headless(
        org=cast.acme,
        name="remote-pg",
        kind="postgres",
        settings=pg_target,
        options={"agent_queue": "near-db"},
    )


def test_a_connection_with_an_agent_queue_runs_on_the_agent(cast, remote_pg, agent_worker, mcp):
    envelope = structured(
        mcp(cast.bob).call("exec", {"connection_name": "remote-pg", "input": "select count(*) from items"})
    )
    assert envelope["status"] == "completed" and envelope["rows"] == [[50]]
    session = Session.objects.get(pk=envelope["session_id"])
    # It ran in a prefork child of the agent worker, which registered as a runner of its own.
    runner = Runner.objects.get(pk=session.runner)
    assert f":{agent_worker.pid}:" not in runner.pk
    child_pids = subprocess.run(
        ["pgrep", "-P", str(agent_worker.pid)], capture_output=True, text=True
    ).stdout.split()
    assert runner.pk.split(":")[1] in child_pids


def test_another_orgs_connection_cannot_reach_this_agent(cast, pg_target, agent_worker, mcp):
    connection_create_headless(
        org=cast.globex,
        name="sneaky",
        kind="postgres",
        settings=pg_target,
        options={"agent_queue": "near-db"},
    )
    envelope = structured(
        mcp(cast.eve).call("exec", {"connection_name": "sneaky", "input": "select 1", "timeout_seconds": 4})
    )
    assert envelope["status"] == "running"  # queued for globex's own (absent) agent, not run by acme's
    assert Session.objects.get(pk=envelope["session_id"]).status == "open"


def test_schema_and_test_tools_refuse_agent_connections_clearly(cast, remote_pg, mcp):
    text = error_text(mcp(cast.bob).call("connection_tables", {"connection_name": "remote-pg"}))
    assert "runs on agent queue" in text
    assert "runs on agent queue" in error_text(mcp(cast.bob).call("connections_test", {"name": "remote-pg"}))


def test_an_agent_session_can_be_waited_on_and_cancelled_from_the_gateway(cast, remote_pg, agent_worker, mcp):
    client = mcp(cast.bob)
    envelope = structured(
        client.call("exec", {"connection_name": "remote-pg", "input": "select pg_sleep(30)"})
    )
    assert envelope["status"] == "running"
    structured(client.call("exec_cancel", {"session_id": envelope["session_id"]}))
    final = structured(
        client.call("sessions_wait", {"session_id": envelope["session_id"], "timeout_seconds": 20})
    )
    assert final["session_status"] == "cancelled"
