"""The outbound event stream: signed webhooks against a real local receiver (retries, dead
letter, SSRF refusal), the JSON-lines file and syslog over real UDP and TCP sockets, and the
session events the pipeline emits."""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from governance.errors import InvalidInput, PolicyDenied
from sessions import delivery, events, webhook_signing
from sessions.models import AuditEvent, DeliveryStatus, WebhookDelivery
from sessions.webhooks import webhook_delivery_retry, webhook_endpoint_create, webhook_endpoint_update

SECRET = "whsec-test-0123456789abcdef"


def _verified_off_the_shelf(secret: str, headers: dict, body: bytes) -> bool:
    """What a receiver does with the Standard Webhooks library and the secret in whsec_ form."""
    try:
        Webhook("whsec_" + base64.b64encode(secret.encode()).decode()).verify(body, headers, json_parse=False)
    except WebhookVerificationError:
        return False
    return True


class Receiver:
    """A real HTTP server on loopback that checks every request's signature like a receiver would."""

    def __init__(self, codes=None, secret=SECRET):
        self.codes = list(codes or [])
        self.secret = secret
        self.requests: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(
                    {
                        "headers": dict(self.headers),
                        "body": body,
                        "verified": _verified_off_the_shelf(receiver.secret, dict(self.headers), body),
                    }
                )
                code = receiver.codes.pop(0) if receiver.codes else 200
                self.send_response(code)
                self.end_headers()
                self.wfile.write(b"ok" if code < 300 else b"nope")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, n, timeout=20.0):
        deadline = time.monotonic() + timeout
        while len(self.requests) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.requests

    def events(self):
        return [json.loads(r["body"]) for r in self.requests]


@pytest.fixture
def receiver():
    made = []

    def make(codes=None, secret=SECRET):
        made.append(Receiver(codes, secret))
        return made[-1]

    yield make
    for r in made:
        r.server.shutdown()
        r.server.server_close()


@pytest.fixture
def scheduled(monkeypatch):
    """Record retries instead of running them, so a test decides when the next attempt happens."""
    calls = []
    monkeypatch.setattr(delivery, "_schedule", lambda pk, delay: calls.append((pk, delay)))
    return calls


def _endpoint(cast, url, **kw):
    kw.setdefault("allow_private_network", True)  # the receiver listens on loopback
    return webhook_endpoint_create(
        actor=cast.alice.actor("web"), name=kw.pop("name", "siem"), url=url, secret=SECRET, **kw
    )


def _fanout(event):
    """The relay's fan-out, with its after-commit starts run as the relay's commit would run them."""
    from django.test import TestCase

    with TestCase.captureOnCommitCallbacks(execute=True):
        return delivery.event_fanout(event)


def _event(cast, type=events.SESSION_FINISHED, org=None, **data):
    return events.event_build(org_id=(org or cast.acme).pk, type=type, data=data or {"session_id": "s1"})


def test_it_delivers_a_signed_event_that_the_receiver_verifies(cast, receiver, scheduled, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    r = receiver()
    endpoint = _endpoint(cast, r.url)
    event = _event(cast, note="é ✓")
    [delivery_id] = _fanout(event)
    got = r.wait_for(1)
    assert len(got) == 1 and got[0]["verified"]
    headers = got[0]["headers"]
    assert headers["X-Portcullis-Event-Id"] == event["id"]
    assert headers["X-Portcullis-Event-Type"] == "session.finished"
    assert re.fullmatch(r"v1,[A-Za-z0-9+/]{43}=", headers["webhook-signature"])
    assert headers["webhook-id"] == event["id"]  # the same on every retry: receivers deduplicate by it
    assert json.loads(got[0]["body"]) == event
    row = WebhookDelivery.objects.get(pk=delivery_id)
    assert (row.status, row.attempts, row.response_code, row.endpoint_id) == (
        "delivered",
        1,
        200,
        endpoint.pk,
    )
    # A second fan-out of the same event (a task that ran twice) creates no second delivery.
    assert _fanout(event) == []


def test_a_signature_made_with_another_secret_or_body_or_too_old_is_refused():
    body = b'{"a":1}'
    now = int(time.time())
    good = webhook_signing.sign_headers(SECRET, msg_id="evt-1", timestamp=now, body=body)
    assert _verified_off_the_shelf(SECRET, good, body)
    assert not _verified_off_the_shelf("another-secret-0000", good, body)
    assert not _verified_off_the_shelf(SECRET, good, b'{"a":2}')
    assert not _verified_off_the_shelf(SECRET, {**good, "webhook-id": "evt-2"}, body)  # id is signed
    old = webhook_signing.sign_headers(SECRET, msg_id="evt-1", timestamp=now - 301, body=body)
    assert not _verified_off_the_shelf(SECRET, old, body)  # replayed after the 5-minute window
    assert not _verified_off_the_shelf(SECRET, {**good, "webhook-timestamp": "soon"}, body)


def test_a_whsec_secret_is_the_base64_key_itself_as_receiver_libraries_generate_it():
    key = base64.b64encode(bytes(range(32))).decode()
    body = b'{"b":1}'
    headers = webhook_signing.sign_headers(
        "whsec_" + key, msg_id="evt-9", timestamp=int(time.time()), body=body
    )
    Webhook("whsec_" + key).verify(body, headers, json_parse=False)  # raises if it does not verify
    assert webhook_signing.verify("whsec_" + key, headers, body)
    assert webhook_signing.receiver_secret(SECRET) == "whsec_" + base64.b64encode(SECRET.encode()).decode()
    with pytest.raises(ValueError):
        webhook_signing.signing_key("whsec_!!not base64!!")


def test_it_retries_with_exponential_backoff_then_delivers(cast, receiver, scheduled, settings):
    settings.WEBHOOK_BACKOFF_SECONDS = 10
    settings.WEBHOOK_MAX_ATTEMPTS = 5
    r = receiver(codes=[500, 502])
    _endpoint(cast, r.url)
    event = _event(cast)
    [pk] = _fanout(event)  # not eager: the first attempt is scheduled, not run
    assert scheduled == [(pk, 0)]
    now = timezone.now()
    delays = []
    for expected in ("failed", "failed", "delivered"):
        row = delivery.webhook_deliver(pk, now=now)
        assert row.status == expected, row.last_error
        if expected == "failed":
            delays.append((row.next_attempt_at - row.last_attempt_at).total_seconds())
            assert delivery.webhook_deliver(pk, now=now) is None  # not due yet: nobody sends it early
            now = row.next_attempt_at + timedelta(seconds=1)
    assert 9 <= delays[0] <= 11 and 18 <= delays[1] <= 22  # 10 s, then doubled (±10% jitter)
    assert [d for _, d in scheduled[1:]] == pytest.approx(delays, abs=0.01)
    row.refresh_from_db()
    assert (row.attempts, row.response_code, row.last_error) == (3, 200, "")
    assert "HTTP 502" not in row.last_error
    assert (
        all(x["verified"] for x in r.requests)
        and len({x["headers"]["X-Portcullis-Event-Id"] for x in r.requests}) == 1
    )


def test_it_dead_letters_after_n_failures_and_an_admin_can_retry(cast, receiver, scheduled, settings):
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    settings.WEBHOOK_BACKOFF_SECONDS = 1
    r = receiver(codes=[503, 503, 503])
    _endpoint(cast, r.url)
    [pk] = _fanout(_event(cast))
    far = timezone.now() + timedelta(days=1)
    statuses = [delivery.webhook_deliver(pk, now=far + timedelta(hours=i)).status for i in range(3)]
    assert statuses == ["failed", "failed", "dead"]
    assert delivery.webhook_deliver(pk, now=far + timedelta(days=9)) is None  # dead stays dead
    row = WebhookDelivery.objects.get(pk=pk)
    assert row.attempts == 3 and "HTTP 503" in row.last_error and len(r.requests) == 3
    # Only admins retry, and only their own org's deliveries.
    with pytest.raises(PolicyDenied):
        webhook_delivery_retry(actor=cast.carol.actor("admin"), delivery_ids=[pk])
    assert webhook_delivery_retry(actor=cast.eve.actor("admin"), delivery_ids=[pk]) == 0
    assert webhook_delivery_retry(actor=cast.alice.actor("admin"), delivery_ids=[pk]) == 1
    assert delivery.webhook_deliver(pk).status == "delivered"
    assert (
        AuditEvent.objects.filter(org=cast.acme, action="webhook.retry", detail__deliveries=[pk]).count() == 1
    )


def test_it_refuses_private_and_loopback_targets_unless_the_endpoint_allows_them(cast, receiver, scheduled):
    r = receiver()
    for name, url in [
        ("loopback", r.url),
        ("localhost", r.url.replace("127.0.0.1", "localhost")),
        ("metadata", "http://169.254.169.254/latest/meta-data/"),
        ("private", "http://10.0.0.1:9/hook"),
    ]:
        _endpoint(cast, url, name=name, allow_private_network=False)
    ids = _fanout(_event(cast))
    rows = [delivery.webhook_deliver(pk) for pk in ids]
    assert len(rows) == 4 and r.requests == []
    for row in rows:
        assert row.status == DeliveryStatus.FAILED and row.response_code is None
        assert row.last_error.startswith("refused:"), row.last_error


def test_it_sends_only_subscribed_events_of_enabled_endpoints_of_the_same_org(cast, receiver, scheduled):
    r_acme, r_globex = receiver(), receiver()
    _endpoint(cast, r_acme.url, name="blocked-only", event_types=["session.blocked"])
    _endpoint(cast, r_acme.url, name="everything")
    off = _endpoint(cast, r_acme.url, name="off")
    webhook_endpoint_update(actor=cast.alice.actor(), endpoint_id=off.pk, enabled=False)
    webhook_endpoint_create(
        actor=cast.eve.actor(), name="siem", url=r_globex.url, secret=SECRET, allow_private_network=True
    )
    made = _fanout(_event(cast, events.SESSION_FINISHED))
    assert [WebhookDelivery.objects.get(pk=pk).endpoint.name for pk in made] == ["everything"]
    made = _fanout(_event(cast, events.SESSION_BLOCKED))
    assert sorted(WebhookDelivery.objects.get(pk=pk).endpoint.name for pk in made) == [
        "blocked-only",
        "everything",
    ]
    assert WebhookDelivery.objects.filter(org=cast.globex).count() == 0


def test_endpoint_changes_are_admin_only_validated_audited_and_never_show_the_secret(cast):
    with pytest.raises(PolicyDenied):
        webhook_endpoint_create(actor=cast.bob.actor(), name="x", url="https://example.com/h", secret=SECRET)
    for bad in [
        {"url": "ftp://example.com/h"},
        {"url": "https://user:pw@example.com/h"},
        {"secret": "short"},
        {"event_types": ["session.exploded"]},
        {"name": "no spaces"},
    ]:
        args = {"name": "x", "url": "https://example.com/h", "secret": SECRET, **bad}
        with pytest.raises(InvalidInput):
            webhook_endpoint_create(actor=cast.alice.actor(), **args)
    endpoint = webhook_endpoint_create(
        actor=cast.alice.actor(), name="x", url="https://example.com/h", secret=SECRET
    )
    assert SECRET not in endpoint.secret_encrypted and endpoint.get_secret() == SECRET
    webhook_endpoint_update(
        actor=cast.alice.actor(), endpoint_id=endpoint.pk, secret="", url="https://example.com/2"
    )
    endpoint.refresh_from_db()
    assert endpoint.get_secret() == SECRET  # an empty secret keeps the old one
    logged = json.dumps(list(AuditEvent.objects.filter(action__startswith="webhook.").values("detail")))
    assert SECRET not in logged and "example.com/2" in logged
    with pytest.raises(Exception, match="not found"):
        webhook_endpoint_update(actor=cast.eve.actor(), endpoint_id=endpoint.pk, enabled=False)


def test_emit_never_raises_into_its_caller(cast, caplog):
    events.emit(org_id=cast.acme.pk, type="no.such.event", data={})
    events.emit(org_id=cast.acme.pk, type=events.SESSION_FINISHED, data={"x": object()})
    assert caplog.text.count("dropped") == 2


# --- sinks ---------------------------------------------------------------------------------------

RFC5424 = re.compile(
    r"<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) portcullis (?P<pid>\d+) (?P<msgid>\S+) "
    r'\[portcullis@32473 id="(?P<id>[0-9a-f-]{36})" org="(?P<org>[^"]+)"\] (?P<msg>\{.*\})$'
)


def test_it_writes_json_lines_and_rfc5424_syslog_over_udp_and_tcp(cast, settings, tmp_path):
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(5)
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(1)
    tcp.settimeout(5)
    settings.EVENTS_JSONL_PATH = str(tmp_path / "events.jsonl")
    blocked = _event(cast, events.SESSION_BLOCKED, user="bob")
    finished = _event(cast, events.SESSION_FINISHED)

    settings.SYSLOG_ADDRESS = f"udp://127.0.0.1:{udp.getsockname()[1]}"
    delivery.sinks_write(blocked)
    datagram = udp.recv(65535).decode()
    settings.SYSLOG_ADDRESS = f"tcp://127.0.0.1:{tcp.getsockname()[1]}"
    delivery.sinks_write(finished)
    conn, _ = tcp.accept()
    with conn:
        stream = b""
        while (
            b" " not in stream
            or len(stream) < int(stream.split(b" ", 1)[0]) + len(stream.split(b" ", 1)[0]) + 1
        ):
            chunk = conn.recv(65535)
            if not chunk:
                break
            stream += chunk
    udp.close()
    tcp.close()

    length, framed = stream.split(b" ", 1)
    assert int(length) == len(framed)  # octet counting (RFC 6587)
    for text, event, severity in [(datagram, blocked, 4), (framed.decode(), finished, 6)]:
        m = RFC5424.match(text)
        assert m, text
        assert int(m["pri"]) == 13 * 8 + severity and m["msgid"] == event["type"] and m["id"] == event["id"]
        assert json.loads(m["msg"]) == event
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [blocked, finished]


def test_a_broken_sink_does_not_stop_the_webhooks(cast, settings, receiver, scheduled, tmp_path):
    settings.EVENTS_JSONL_PATH = str(tmp_path / "missing-dir" / "events.jsonl")
    settings.SYSLOG_ADDRESS = "carrier-pigeon://nowhere"
    r = receiver()
    _endpoint(cast, r.url)
    [pk] = _fanout(_event(cast))
    assert delivery.webhook_deliver(pk).status == "delivered"


# --- from the pipeline, end to end ---------------------------------------------------------------


def test_the_pipeline_emits_session_and_guardrail_events_after_commit(
    cast, shops, transactional_db, settings, receiver
):
    """Embedded mode (eager tasks): delivery runs on a background thread, after commit."""
    from gateway.pipeline import exec_start
    from governance.rules import guardrail_create

    settings.CELERY_TASK_ALWAYS_EAGER = True
    r = receiver()
    _endpoint(cast, r.url)
    guardrail_create(
        actor=cast.alice.actor(),
        name="no-drop",
        input={"sql": {"deny_statements": ["drop"]}},
        connections=["shop"],
    )
    ok = exec_start(actor=cast.bob.actor(), connection_name="shop", input="select name from customers")
    blocked = exec_start(actor=cast.bob.actor(), connection_name="shop", input="drop table customers")
    assert blocked.status == "blocked"
    got = r.wait_for(4)
    by_type = {}
    for e in r.events():
        by_type.setdefault(e["type"], []).append(e["data"])
    assert all(x["verified"] for x in got)
    assert by_type["session.started"][0]["session_id"] == str(ok.pk)
    assert by_type["session.finished"][0]["session_id"] == str(ok.pk)
    assert by_type["session.finished"][0]["status"] == "done"
    assert by_type["session.blocked"][0]["session_id"] == str(blocked.pk)
    violation = by_type["guardrail.violation"][0]
    assert violation["guardrails"] == ["no-drop"] and violation["findings"][0]["rule"] == "no-drop"
    assert "input" not in violation and "drop table" not in json.dumps(by_type)  # no content leaves


# --- the admin -----------------------------------------------------------------------------------


def _admin(person):
    from django.test import Client

    client = Client()
    client.force_login(person.user)
    return client


def _endpoint_form(**overrides):
    data = {
        "name": "siem",
        "url": "https://siem.acme.test/hook",
        "event_types": ["session.blocked", "guardrail.violation"],
        "enabled": "on",
        "secret": SECRET,
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def test_admins_manage_endpoints_in_the_admin_through_the_service_and_the_secret_never_comes_back(cast):
    from sessions.models import WebhookEndpoint

    alice = _admin(cast.alice)
    response = alice.post("/admin/records/webhookendpoint/add/", _endpoint_form(secret="short"))
    assert response.status_code == 200 and b"at least 16 characters" in response.content
    response = alice.post("/admin/records/webhookendpoint/add/", _endpoint_form())
    assert response.status_code == 302, response.content[:2000]
    endpoint = WebhookEndpoint.objects.get(org=cast.acme, name="siem")
    assert endpoint.get_secret() == SECRET and endpoint.event_types == [
        "guardrail.violation",
        "session.blocked",
    ]
    page = alice.get(f"/admin/records/webhookendpoint/{endpoint.pk}/change/").content.decode()
    assert SECRET not in page and endpoint.secret_encrypted not in page
    response = alice.post(
        f"/admin/records/webhookendpoint/{endpoint.pk}/change/",
        _endpoint_form(secret="", url="https://siem2.acme.test/h"),
    )
    assert response.status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.url == "https://siem2.acme.test/h" and endpoint.get_secret() == SECRET
    events_logged = AuditEvent.objects.filter(
        action__in=["webhook.create", "webhook.update"], surface="admin"
    )
    assert events_logged.count() == 2
    # Auditors read, standard members and other orgs see nothing.
    carol = _admin(cast.carol)
    assert carol.get(f"/admin/records/webhookendpoint/{endpoint.pk}/change/").status_code == 200
    assert carol.post("/admin/records/webhookendpoint/add/", _endpoint_form(name="x")).status_code == 403
    assert _admin(cast.eve).get(f"/admin/records/webhookendpoint/{endpoint.pk}/change/").status_code == 404
    assert _admin(cast.bob).get("/admin/records/webhookendpoint/").status_code == 302  # to the admin login


def test_deliveries_are_read_only_in_the_admin_with_a_retry_action_for_admins(
    cast, receiver, scheduled, settings
):
    settings.WEBHOOK_MAX_ATTEMPTS = 1
    r = receiver(codes=[500])
    _endpoint(cast, r.url)
    [pk] = _fanout(_event(cast))
    assert delivery.webhook_deliver(pk).status == "dead"
    alice, carol = _admin(cast.alice), _admin(cast.carol)
    assert alice.get(f"/admin/records/webhookdelivery/{pk}/change/").status_code == 200
    assert alice.get("/admin/records/webhookdelivery/add/").status_code == 403
    assert b"retry" not in carol.get("/admin/records/webhookdelivery/").content
    response = carol.post("/admin/records/webhookdelivery/", {"action": "retry", "_selected_action": [pk]})
    assert WebhookDelivery.objects.get(pk=pk).status == "dead"  # auditors cannot retry
    response = alice.post("/admin/records/webhookdelivery/", {"action": "retry", "_selected_action": [pk]})
    assert response.status_code == 302
    assert WebhookDelivery.objects.get(pk=pk).status == "pending" and scheduled[-1] == (pk, 0)
    assert _admin(cast.eve).get(f"/admin/records/webhookdelivery/{pk}/change/").status_code == 404


def test_secrets_rotate_re_encrypts_webhook_secrets(cast, settings):
    import io

    from cryptography.fernet import Fernet
    from django.core.management import call_command

    from gateway import crypto

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.ENCRYPTION_KEYS = [old]
    crypto._fernet.cache_clear()
    try:
        endpoint = webhook_endpoint_create(
            actor=cast.alice.actor(), name="siem", url="https://siem.acme.test/h", secret=SECRET
        )
        settings.ENCRYPTION_KEYS = [new, old]
        crypto._fernet.cache_clear()
        out = io.StringIO()
        call_command("secrets_rotate", stdout=out)
        assert out.getvalue().strip() == "1"
        settings.ENCRYPTION_KEYS = [new]  # the old key can go now
        crypto._fernet.cache_clear()
        endpoint.refresh_from_db()
        assert endpoint.get_secret() == SECRET
    finally:
        crypto._fernet.cache_clear()


def test_embedded_mode_delivers_without_holding_up_the_caller(cast, transactional_db, settings):
    """Eager tasks, no broker: the receiver answers only after the caller has returned, which
    would deadlock (and record False) if delivery ran in the caller's thread."""
    from django.db import transaction

    settings.CELERY_TASK_ALWAYS_EAGER = True
    returned = threading.Event()
    seen = []

    r = Receiver()
    original = r.server.RequestHandlerClass.do_POST

    def do_post(handler):
        seen.append(returned.wait(10))
        original(handler)

    r.server.RequestHandlerClass.do_POST = do_post
    try:
        _endpoint(cast, r.url)
        with transaction.atomic():
            events.emit(org_id=cast.acme.pk, type=events.REVIEW_CREATED, data={"review_id": "r1"})
        returned.set()
        assert r.wait_for(1) and seen == [True] and r.requests[0]["verified"]
    finally:
        r.server.shutdown()
        r.server.server_close()


def test_a_celery_worker_fans_out_and_delivers_with_a_broker(
    cast, transactional_db, receiver, tmp_path_factory
):
    from django.conf import settings as django_settings
    from django.db import transaction

    from tests.conftest import celery_worker_process

    r = receiver()
    _endpoint(cast, r.url)
    queue = django_settings.CELERY_TASK_DEFAULT_QUEUE
    with celery_worker_process(queue, tmp_path_factory.mktemp("events"), purge=True):
        if django_settings.CELERY_TASK_ALWAYS_EAGER:
            pytest.skip("needs a broker")
        with transaction.atomic():
            events.emit(org_id=cast.acme.pk, type=events.SESSION_FINISHED, data={"session_id": "w1"})
        got = r.wait_for(1, timeout=60)
        deadline = time.monotonic() + 30
        while WebhookDelivery.objects.filter(status="delivered").count() < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert got and got[0]["verified"] and json.loads(got[0]["body"])["data"] == {"session_id": "w1"}
    row = WebhookDelivery.objects.get(org=cast.acme)
    assert (row.status, row.attempts, row.response_code) == ("delivered", 1, 200)


def test_the_sweep_restarts_lost_deliveries_and_prunes_old_delivered_ones(
    cast, receiver, scheduled, settings
):
    settings.WEBHOOK_RETENTION_DAYS = 30
    r = receiver()
    _endpoint(cast, r.url)
    lost, fresh, done = (_fanout(_event(cast))[0] for _ in range(3))
    scheduled.clear()
    now = timezone.now()
    WebhookDelivery.objects.filter(pk=lost).update(next_attempt_at=now - timedelta(minutes=5))
    WebhookDelivery.objects.filter(pk=done).update(status="delivered", delivered_at=now - timedelta(days=31))
    assert delivery.webhooks_retry_due(now=now) == 1
    assert scheduled == [(lost, 0)]  # the fresh one is not overdue yet
    assert set(WebhookDelivery.objects.values_list("pk", flat=True)) == {lost, fresh}
