"""Running it like a production service: /metrics after real traffic, JSON log lines with the
request's context, /healthz and /readyz, rate limits with Retry-After, the one-beat lock.

A daphne of its own (JSON logs at INFO, tight MCP and REST limits) on the test database; real
HTTP with the MCP SDK client and httpx."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import test_reviews
from tests.conftest import MCP, ROOT, LiveServer, _free_port, gateway_env, start_server, stop, structured
from tests.test_reviews import _actor, _exec, _rule

pytestmark = pytest.mark.live

team = test_reviews.team  # the reviewers fixture (frank, grace, heidi)

METRICS_TOKEN = "metrics-" + uuid.uuid4().hex


def start_daphne(log_path, **extra_env) -> LiveServer:
    return start_server("daphne", log_path, **extra_env)


@pytest.fixture(scope="module")
def ops_server(django_db_setup, tmp_path_factory):
    log = tmp_path_factory.mktemp("ops") / "daphne.log"
    server = start_daphne(
        log,
        PORTCULLIS_LOG_FORMAT="json",
        PORTCULLIS_LOG_LEVEL="INFO",
        PORTCULLIS_METRICS_TOKEN=METRICS_TOKEN,
        PORTCULLIS_METRICS_ALLOWED_NETWORKS="10.255.255.0/24",  # not loopback: the token is needed
        PORTCULLIS_MCP_RATE_PER_TOKEN="off",
    )
    yield server
    stop(server.process)


def scrape(server, token=METRICS_TOKEN) -> dict[tuple, float]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx2.get(f"{server.url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "pid"))
            samples[(sample.name, labels)] = samples.get((sample.name, labels), 0.0) + sample.value
    return samples


def value(samples, name, **labels) -> float:
    """The sum of every sample of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def wait_until(predicate, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def log_lines(server) -> list[dict]:
    lines = []
    for raw in server.log.read_text().splitlines():
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError:
            continue  # daphne's own startup lines are not ours
    return lines


def test_it_refuses_metrics_without_the_token_or_an_allowed_network(ops_server):
    assert httpx2.get(f"{ops_server.url}/metrics").status_code == 403
    wrong = httpx2.get(f"{ops_server.url}/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert METRICS_TOKEN not in wrong.text


def test_metrics_move_with_real_mcp_and_rest_traffic(cast, shops, ops_server, transactional_db):
    before = scrape(ops_server)
    client = MCP(ops_server, cast.bob.token)
    assert structured(client.call("me_get"))["user_email"] == "bob@acme.test"
    ran = structured(
        client.call("exec", {"connection_name": "shop", "input": "select count(*) from customers"})
    )
    assert ran["status"] == "completed"
    blocked = client.call("exec", {"connection_name": "nowhere", "input": "select 1"})
    assert blocked.is_error
    rest = httpx2.get(
        f"{ops_server.url}/api/v1/connections/", headers={"Authorization": f"Bearer {cast.bob.token}"}
    )
    assert rest.status_code == 200

    def moved():
        after = scrape(ops_server)
        done = value(
            after, "portcullis_sessions_total", status="done", connection_kind="sqlite", surface="mcp"
        )
        if (
            done
            - value(
                before, "portcullis_sessions_total", status="done", connection_kind="sqlite", surface="mcp"
            )
            < 1
        ):
            return None
        return after

    after = wait_until(moved, "the session counter")
    for name, labels, at_least in (
        ("portcullis_mcp_tool_calls_total", {"tool": "me_get", "outcome": "ok"}, 1),
        ("portcullis_mcp_tool_calls_total", {"tool": "exec", "outcome": "ok"}, 1),
        ("portcullis_mcp_tool_calls_total", {"tool": "exec", "outcome": "error"}, 1),
        ("portcullis_mcp_tool_duration_seconds_count", {"tool": "exec"}, 2),
        ("portcullis_http_requests_total", {"surface": "mcp", "code": "2xx"}, 3),
        ("portcullis_http_requests_total", {"surface": "rest", "code": "2xx"}, 1),
        ("portcullis_http_request_duration_seconds_count", {"surface": "rest"}, 1),
        ("portcullis_events_total", {"type": "session.finished"}, 1),
        ("portcullis_session_execution_seconds_count", {"connection_kind": "sqlite"}, 1),
    ):
        assert value(after, name, **labels) - value(before, name, **labels) >= at_least, (name, labels)
    # Scrape-time gauges read the shared database, Redis and this process's pool.
    for gauge in (
        "portcullis_reviews_pending",
        "portcullis_analysis_lag_seconds",
        "portcullis_celery_queue_length",
        "portcullis_db_pool_max",
    ):
        assert any(n == gauge for n, _ in after), gauge
    assert value(after, "portcullis_webhook_deliveries", status="dead") >= 0
    assert value(after, "portcullis_metrics_collect_errors") == 0


def test_a_log_line_is_json_with_the_request_context_and_no_secrets(
    cast, shops, ops_server, transactional_db
):
    request_id = "test-" + uuid.uuid4().hex[:12]
    secret_input = "select 'hunter2-" + uuid.uuid4().hex[:8] + "' from customers"
    response = httpx2.get(
        f"{ops_server.url}/api/v1/connections/",
        headers={"Authorization": f"Bearer {cast.bob.token}", "X-Request-ID": request_id},
    )
    assert response.headers["x-request-id"] == request_id
    line = wait_until(
        lambda: next((x for x in log_lines(ops_server) if x.get("request_id") == request_id), None),
        "the access line",
    )
    assert line["logger"] == "portcullis.http" and line["level"] == "INFO" and line["time"]
    assert line["surface"] == "rest" and line["status"] == 200 and line["path"] == "/api/v1/connections/"
    assert line["org"] == str(cast.acme.pk) and line["user"] == "bob@acme.test"

    # An MCP exec: the access line names the session, and neither the input nor the token appears.
    client = MCP(ops_server, cast.bob.token)
    ran = structured(client.call("exec", {"connection_name": "shop", "input": secret_input}))
    session_lines = wait_until(
        lambda: [x for x in log_lines(ops_server) if x.get("session_id") == ran["session_id"]],
        "a line with the session id",
    )
    assert any(x["surface"] == "mcp" and x["user"] == "bob@acme.test" for x in session_lines)
    text = ops_server.log.read_text()
    assert "hunter2" not in text and cast.bob.token not in text and METRICS_TOKEN not in text
    # A made-up request id that is not a plain token is replaced, not echoed.
    odd = httpx2.get(f"{ops_server.url}/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert odd.headers["x-request-id"] != "bad id\twith spaces" and len(odd.headers["x-request-id"]) == 32


def test_plain_log_format_and_a_bad_setting_stops_startup(tmp_path):
    env = gateway_env()
    env.update(PORTCULLIS_LOG_FORMAT="yaml")
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0 and "PORTCULLIS_LOG_FORMAT must be json or plain" in result.stderr


def test_healthz_and_readyz_on_the_live_server(ops_server):
    assert httpx2.get(f"{ops_server.url}/healthz").json() == {"status": "ok"}
    ready = httpx2.get(f"{ops_server.url}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {"database": "ok", "redis": "ok", "migrations": "ok"},
    }


def test_rest_and_mcp_answer_429_with_retry_after_per_token_and_per_org(
    cast, ops_server, tmp_path, transactional_db
):
    server = start_daphne(
        tmp_path / "limited.log",
        PORTCULLIS_API_RATE_PER_TOKEN="3/minute",
        PORTCULLIS_API_RATE_PER_ORG="5/minute",
        PORTCULLIS_MCP_RATE_PER_TOKEN="2/minute",
    )
    try:

        def get(person):
            return httpx2.get(
                f"{server.url}/api/v1/connections/", headers={"Authorization": f"Bearer {person.token}"}
            )

        assert [get(cast.bob).status_code for _ in range(3)] == [200, 200, 200]
        limited = get(cast.bob)
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert limited.json()["error"]["code"] == "throttled"
        # Another token of the same org has its own token budget, but the org's is shared: 5.
        assert [get(cast.dave).status_code for _ in range(2)] == [200, 200]
        assert get(cast.dave).status_code == 429
        # Another org is not affected.
        assert get(cast.eve).status_code == 200

        headers = {
            "Authorization": f"Bearer {cast.alice.token}",
            "Accept": "application/json, text/event-stream",
        }
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        codes = [
            httpx2.post(f"{server.url}/api/mcp", headers=headers, json=body).status_code for _ in range(3)
        ]
        assert codes[2] == 429 and 429 not in codes[:2]
        refused = httpx2.post(f"{server.url}/api/mcp", headers=headers, json=body)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert "rate limit" in refused.json()["error"]["message"]
        samples = scrape(server, token=None)  # loopback is allowed by default
        assert value(samples, "portcullis_rate_limited_total", limit="api_token") >= 1
        assert value(samples, "portcullis_rate_limited_total", limit="api_org") >= 1
        assert value(samples, "portcullis_rate_limited_total", limit="mcp_token") >= 2
    finally:
        stop(server.process)


def test_admin_bootstrap_creates_the_first_admin_once(db, monkeypatch):
    import io

    from django.core.management import CommandError, call_command

    from governance.models import User

    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery staple\n"))
    out = io.StringIO()
    call_command(
        "admin_bootstrap", "--org", "initech", "--email", "Ops@Initech.test", "--password-stdin", stdout=out
    )
    assert 'created admin ops@initech.test in organization "initech"' in out.getvalue()
    user = User.objects.get(email="ops@initech.test")
    assert user.check_password("correct horse battery staple")
    assert list(user.user_groups.values_list("name", flat=True)) == ["admin"]
    # Again (a deploy script runs it every time): nothing changes, exit 0, no second admin.
    again = io.StringIO()
    call_command("admin_bootstrap", "--org", "initech", "--email", "other@initech.test", stdout=again)
    assert "already has an admin; nothing changed" in again.getvalue()
    assert not User.objects.filter(email="other@initech.test").exists()
    # A generated password is printed once and works.
    printed = io.StringIO()
    call_command("admin_bootstrap", "--org", "hooli", "--email", "root@hooli.test", stdout=printed)
    password = printed.getvalue().rsplit(": ", 1)[1].strip()
    assert User.objects.get(email="root@hooli.test").check_password(password)
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    with pytest.raises(CommandError, match="too short"):
        call_command("admin_bootstrap", "--org", "x", "--email", "a@x.test", "--password-stdin")


def test_review_decisions_and_waits_are_counted_once_committed(
    cast, team, client, django_capture_on_commit_callbacks
):
    from prometheus_client import REGISTRY

    from reviews import services

    def counted(name, **labels) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    def pending_gauge() -> float:
        response = client.get("/metrics")  # the test client's address is 127.0.0.1: allowed
        assert response.status_code == 200
        return value(
            {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(response.content.decode())
                for s in f.samples
            },
            "portcullis_reviews_pending",
        )

    _rule(cast)
    approved, rejected = (
        counted("portcullis_review_decisions_total", decision="approved", type="onetime"),
        counted("portcullis_review_decisions_total", decision="rejected", type="onetime"),
    )
    waits = counted("portcullis_review_wait_seconds_count", decision="approved")
    pending_before = pending_gauge()
    with django_capture_on_commit_callbacks(execute=True):
        first = _exec(cast.bob, "update customers set name = 'x'")
        second = _exec(cast.bob, "delete from customers")
    assert pending_gauge() == pending_before + 2
    # Nothing is counted before the decision's transaction commits; then each decision once.
    with django_capture_on_commit_callbacks(execute=False) as uncommitted:
        services.review_decide(actor=_actor(team["frank"]), review_id=first.pk, status="APPROVED")
    assert counted("portcullis_review_decisions_total", decision="approved", type="onetime") == approved
    for callback in uncommitted:  # the commit
        callback()
    with django_capture_on_commit_callbacks(execute=True):
        services.review_decide(
            actor=_actor(team["frank"]), review_id=second.pk, status="REJECTED", reason="no"
        )
    assert counted("portcullis_review_decisions_total", decision="approved", type="onetime") == approved + 1
    assert counted("portcullis_review_decisions_total", decision="rejected", type="onetime") == rejected + 1
    assert counted("portcullis_review_wait_seconds_count", decision="approved") == waits + 1
    assert pending_gauge() == pending_before


def test_multiprocess_mode_adds_up_every_process_of_a_host(cast, tmp_path, transactional_db):
    """Two daphne processes and a Celery worker's prefork children share one
    PROMETHEUS_MULTIPROC_DIR: either daphne's /metrics counts the other's requests, and the
    worker's own /metrics counts the webhook attempts its children made."""
    from sessions import delivery, events
    from sessions.webhooks import webhook_endpoint_create
    from tests.test_events import Receiver

    shared = tmp_path / "metrics"
    shared.mkdir()
    a = start_daphne(tmp_path / "a.log", PROMETHEUS_MULTIPROC_DIR=str(shared))
    b = start_daphne(tmp_path / "b.log", PROMETHEUS_MULTIPROC_DIR=str(shared))
    worker = None
    try:
        before = value(scrape(b, token=None), "portcullis_http_requests_total", surface="rest")
        for _ in range(3):
            httpx2.get(f"{a.url}/api/v1/me/", headers={"Authorization": f"Bearer {cast.bob.token}"})
        wait_until(
            lambda: (
                value(scrape(b, token=None), "portcullis_http_requests_total", surface="rest") >= before + 3
            ),
            "b to count a's requests",
        )
        assert not any(n.endswith("_total") and "pid" in dict(ls) for n, ls in scrape(b, token=None))

        # The worker: its children deliver a webhook; its main process serves the sum.
        receiver = Receiver(secret="a-webhook-secret-0123")
        webhook_endpoint_create(
            actor=cast.alice.actor("web"),
            name="siem",
            url=receiver.url,
            secret="a-webhook-secret-0123",
            allow_private_network=True,
        )
        port = _free_port()
        env = gateway_env()
        env.update(PROMETHEUS_MULTIPROC_DIR=str(shared), PORTCULLIS_WORKER_METRICS_PORT=str(port))
        log = tmp_path / "worker.log"
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "gateway",
            "worker",
            "-Q",
            "portcullis",
            "-c",
            "2",
            "-l",
            "info",
        ]
        argv += ["--without-heartbeat", "--without-gossip", "--without-mingle"]
        with open(log, "wb") as fh:
            worker = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
        wait_until(lambda: "ready" in log.read_text() or worker.poll() is not None, "the worker")
        assert worker.poll() is None, log.read_text()[-3000:]
        # What the outbox relay does with an event: the delivery's attempt goes to the worker.
        delivery.event_fanout(events.event_build(org_id=cast.acme.pk, type=events.SESSION_FINISHED, data={}))
        receiver.wait_for(1, timeout=120)
        assert receiver.requests and receiver.requests[0]["verified"]

        def worker_counted():
            response = httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(response.text)
                for s in f.samples
            }
            return value(samples, "portcullis_webhook_attempts_total", outcome="delivered") >= 1 and samples

        samples = wait_until(worker_counted, "the worker's metrics to count the delivery")
        assert value(samples, "portcullis_webhook_deliveries", status="delivered") >= 1
    finally:
        for process in (a.process, b.process, worker):
            if process is not None:
                stop(process)


def test_mcp_tool_calls_are_limited_per_org(cast, tmp_path, transactional_db):
    server = start_daphne(
        tmp_path / "org.log", PORTCULLIS_MCP_RATE_PER_ORG="2/minute", PORTCULLIS_MCP_RATE_PER_TOKEN="off"
    )
    try:
        assert structured(MCP(server, cast.bob.token).call("me_get"))["user_email"] == "bob@acme.test"
        assert structured(MCP(server, cast.dave.token).call("me_get"))["user_email"] == "dave@acme.test"
        refused = MCP(server, cast.bob.token).call("me_get")
        assert refused.is_error
        text = refused.content[0].text
        assert text.startswith("rate limit: too many tool calls for this organization; retry after ")
        assert int(text.rsplit(" ", 1)[1].rstrip("s")) >= 1
        # Another org has its own budget.
        assert structured(MCP(server, cast.eve.token).call("me_get"))["user_email"] == "eve@globex.test"
        samples = scrape(server, token=None)
        assert value(samples, "portcullis_rate_limited_total", limit="mcp_org") == 1
        assert value(samples, "portcullis_mcp_tool_calls_total", tool="me_get", outcome="error") == 1
    finally:
        stop(server.process)
