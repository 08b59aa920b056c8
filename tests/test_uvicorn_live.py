"""The gateway under uvicorn, the second ASGI server it supports (docs/operations.md, "The ASGI
server"): the same application, started as `make run SERVER=uvicorn` starts it. The flows that
depend on the server rather than on the application: both MCP protocol eras on /api/mcp, a proxied
call held open for approval with progress notifications on the stream while a reviewer decides in
the web page, the web app itself, and a clean exit on SIGTERM (daphne needed a hook for that;
uvicorn runs the ASGI lifespan instead)."""

from __future__ import annotations

import signal

import httpx2
import pytest

from sessions.models import AuditEvent, Session, SessionStatus
from tests.conftest import MCP, live_server, structured
from tests.test_upstream_hold_live import (  # noqa: F401 - fixtures
    PROD,
    HeldCall,
    call_log,
    decide_in_the_page,
    pending_review,
    received,
    sam,
    upstream,
)
from tests.test_web_browser import chromium  # noqa: F401 - a fixture

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def uvicorn_server(django_db_setup, django_db_blocker, tmp_path_factory):
    with live_server("uvicorn", tmp_path_factory.mktemp("uvicorn") / "uvicorn.log") as server:
        yield server


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_exec_runs_and_is_recorded_in_both_protocol_eras(cast, shops, uvicorn_server, transactional_db, mode):
    client = MCP(uvicorn_server, cast.bob.token, mode)
    assert structured(client.call("me_get"))["user_email"] == "bob@acme.test"
    envelope = structured(
        client.call("exec", {"connection_name": "shop", "input": "select name from customers order by id"})
    )
    assert envelope["status"] == "completed", envelope
    assert envelope["rows"] == [["acme one"], ["acme two"], ["acme three"]]
    session = Session.objects.get(pk=envelope["session_id"])
    assert session.status == SessionStatus.DONE and session.user == cast.bob.user
    actions = AuditEvent.objects.filter(target_id=str(session.pk)).values_list("action", flat=True)
    assert sorted(actions) == ["exec.finish", "exec.request"]


def test_a_held_call_streams_progress_and_returns_the_upstreams_result_once_approved(
    cast,
    uvicorn_server,
    upstream,  # noqa: F811 - a fixture
    sam,  # noqa: F811 - a fixture
    call_log,  # noqa: F811 - a fixture
    chromium,  # noqa: F811 - a fixture
    transactional_db,
):
    upstream(approval_hold_seconds=300)
    held = HeldCall(uvicorn_server, cast.bob.token, "deploys", "deploy", PROD).start()
    review = pending_review()
    decide_in_the_page(uvicorn_server, review.pk, "APPROVED", before=lambda: held.progress)
    result = held.result()
    assert not result.is_error, result
    assert result.structured_content == {"deployed": "api", "environment": "prod"}
    assert any("waiting for approval" in m and f"/reviews/{review.pk}/" in m for m in held.progress)
    assert received(call_log) == [PROD]  # forwarded exactly once


def test_the_web_app_and_the_probes_answer(uvicorn_server):
    assert httpx2.get(f"{uvicorn_server.url}/healthz").status_code == 200
    login = httpx2.get(f"{uvicorn_server.url}/login/")
    assert login.status_code == 200 and "csrfmiddlewaretoken" in login.text
    # Unauthenticated MCP: the SDK's 401 with the resource metadata pointer, as under daphne.
    response = httpx2.post(
        f"{uvicorn_server.url}/api/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    )
    assert response.status_code == 401 and "resource_metadata=" in response.headers["www-authenticate"]


def test_it_exits_cleanly_on_sigterm_after_serving_calls(cast, shops, tmp_path, transactional_db):
    with live_server("uvicorn", tmp_path / "uvicorn.log") as server:
        client = MCP(server, cast.bob.token, "auto")
        assert structured(client.call("exec", {"connection_name": "shop", "input": "select 1"}))[
            "status"
        ] == ("completed")
        server.process.send_signal(signal.SIGTERM)
        # A hang here (the MCP session manager or a worker thread keeping the process) fails the test.
        code = server.process.wait(timeout=60)
    log = server.log.read_text()
    # uvicorn shuts down gracefully, then re-raises the signal it caught: the exit status says SIGTERM.
    assert code == -signal.SIGTERM, log[-3000:]
    assert "Application shutdown complete" in log and "Finished server process" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
