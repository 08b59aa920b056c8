"""The reviewers' pages (Django test client), the admin pages of the reviews, and the
notifications against real local servers: an SMTP server (aiosmtpd) and an HTTP server standing in
for Slack's incoming webhook."""

from __future__ import annotations

import json
import threading
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from asgiref.sync import async_to_sync
from django.test import Client

from gateway import pipeline
from governance.policy import Actor
from governance.services import user_create
from reviews import services, tasks
from reviews.models import AccessRequestRule, Review, ReviewSettings
from sessions.models import AuditEvent


@pytest.fixture
def pending(cast, shops):
    frank = user_create(org=cast.acme, email="frank@acme.test", groups=["dba"])
    services.access_rule_create(
        actor=cast.alice.actor(),
        name="shop",
        access_type="command",
        connections=["shop"],
        reviewer_groups=["dba"],
    )
    session = pipeline.exec_start(
        actor=cast.bob.actor(), connection_name="shop", input="update customers set name = 'x' where id = 2"
    )
    return {"frank": frank, "review": Review.objects.get(session=session)}


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_inbox_and_review_page_for_the_reviewer(pending):
    frank = _client(pending["frank"])
    review = pending["review"]
    inbox = frank.get("/reviews/")
    assert inbox.status_code == 200
    body = inbox.content.decode()
    assert f'data-review="{review.pk}"' in body and 'id="inbox-count">1<' in body
    page = frank.get(f"/reviews/{review.pk}/").content.decode()
    assert "update" in page and "customers" in page and 'id="approve"' in page
    assert "bob@acme.test" in page


def test_the_requester_sees_the_page_but_cannot_decide(cast, pending):
    bob = _client(cast.bob.user)
    page = bob.get(f"/reviews/{pending['review'].pk}/").content.decode()
    assert 'id="approve"' not in page and "This is your request" in page
    response = bob.post(f"/reviews/{pending['review'].pk}/decide", {"decision": "APPROVED"}, follow=True)
    assert "not eligible for review" in response.content.decode()
    assert Review.objects.get(pk=pending["review"].pk).status == "PENDING"


def test_outsiders_get_the_same_404_as_for_a_missing_review(cast, pending):
    review_id = pending["review"].pk
    for person in (cast.dave, cast.eve):
        client = _client(person.user)
        assert client.get(f"/reviews/{review_id}/").status_code == 404
        assert client.post(f"/reviews/{review_id}/decide", {"decision": "APPROVED"}).status_code == 404
        assert client.get(f"/reviews/{review_id}/events?status=PENDING").status_code == 404
    assert _client(cast.dave.user).get("/reviews/00000000-0000-0000-0000-000000000000/").status_code == 404
    assert _client(cast.dave.user).get("/reviews/not-an-id/").status_code == 404
    anonymous = Client().get(f"/reviews/{review_id}/")
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]


def test_approve_and_reject_from_the_page(cast, pending):
    frank = _client(pending["frank"])
    review = pending["review"]
    assert frank.get(f"/reviews/{review.pk}/decide").status_code == 405
    rejected = frank.post(f"/reviews/{review.pk}/decide", {"decision": "REJECTED", "reason": ""}, follow=True)
    assert "a reason is required to reject" in rejected.content.decode()
    approved = frank.post(
        f"/reviews/{review.pk}/decide", {"decision": "APPROVED", "reason": "fine"}, follow=True
    )
    assert "You approved this request." in approved.content.decode()
    review.refresh_from_db()
    assert review.status == "APPROVED"
    event = AuditEvent.objects.get(action="review.approve", target_id=str(review.pk))
    assert event.surface == "web" and event.actor_email == "frank@acme.test"
    assert frank.post(f"/reviews/{review.pk}/decide", {"decision": "BANANA"}, follow=True).status_code == 200
    assert _client(pending["frank"]).get("/reviews/?tab=bogus").status_code == 400
    assert _client(pending["frank"]).get("/reviews/?page=-1").status_code == 400


def test_who_sees_the_revoke_button_is_who_may_revoke(cast, pending):
    review = pending["review"]
    services.review_decide(
        actor=Actor.for_user(pending["frank"], surface="web"), review_id=review.pk, status="APPROVED"
    )
    for person, shown in (
        (pending["frank"], True),
        (cast.alice.user, True),
        (cast.bob.user, True),
        (cast.carol.user, False),
    ):
        page = _client(person).get(f"/reviews/{review.pk}/").content.decode()
        assert ('id="revoke-form"' in page) is shown, person
    refused = _client(cast.carol.user).post(
        f"/reviews/{review.pk}/decide", {"decision": "REVOKED"}, follow=True
    )
    assert "not eligible for review" in refused.content.decode()
    _client(cast.alice.user).post(f"/reviews/{review.pk}/decide", {"decision": "REVOKED", "reason": "x"})
    review.refresh_from_db()
    assert review.status == "REVOKED"


@pytest.mark.django_db(transaction=True)
def test_the_event_stream_says_changed_when_the_status_moved(cast, pending):
    frank = _client(pending["frank"])
    review = pending["review"]
    response = frank.get(f"/reviews/{review.pk}/events?status=APPROVED")  # the page shows a stale status
    assert response["Content-Type"] == "text/event-stream"

    async def collect():
        return b"".join([chunk async for chunk in response.streaming_content]).decode()

    body = async_to_sync(collect)()
    assert "event: changed" in body and '"status": "PENDING"' in body


# --- the admin -----------------------------------------------------------------------------------


def test_admin_pages_of_the_reviews(cast, pending):
    alice, carol = _client(cast.alice.user), _client(cast.carol.user)
    assert alice.get("/admin/reviews/accessrequestrule/").status_code == 200
    rule = AccessRequestRule.objects.get(name="shop")
    page = carol.get(f"/admin/reviews/accessrequestrule/{rule.pk}/change/")
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()  # auditors read only
    review = pending["review"]
    assert alice.get(f"/admin/reviews/review/{review.pk}/change/").status_code == 200
    assert alice.post(f"/admin/reviews/review/{review.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Review.objects.filter(pk=review.pk).exists()
    assert _client(cast.eve.user).get(f"/admin/reviews/review/{review.pk}/change/").status_code == 404
    # review settings are changed through the service, audited with surface admin
    settings_row = services.review_settings(cast.acme.pk)
    response = alice.post(
        f"/admin/reviews/reviewsettings/{settings_row.pk}/change/",
        {"allow_self_approval": "", "mcp_decisions_enabled": "on", "review_ttl_seconds": "3600"},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert ReviewSettings.objects.get(pk=settings_row.pk).mcp_decisions_enabled
    assert AuditEvent.objects.filter(action="review.settings", surface="admin").exists()


def test_admin_creates_an_access_rule_through_the_service(cast, shops):
    alice = _client(cast.alice.user)
    dba = user_create(org=cast.acme, email="g@acme.test", groups=["dba"]).user_groups.get()
    response = alice.post(
        "/admin/reviews/accessrequestrule/add/",
        {
            "name": "via-admin",
            "description": "",
            "enabled": "on",
            "access_type": "command",
            "connections": [str(shops["acme"].pk)],
            "reviewer_groups": [str(dba.pk)],
            "min_approvals": "1",
            "min_risk": "",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    rule = AccessRequestRule.objects.get(name="via-admin")
    assert [g.name for g in rule.reviewer_groups.all()] == ["dba"]
    assert AuditEvent.objects.filter(action="access_request_rule.create", surface="admin").count() == 1
    # a rule without reviewers is refused with the service's message, as a form error
    bad = alice.post(
        "/admin/reviews/accessrequestrule/add/",
        {
            "name": "bad",
            "enabled": "on",
            "access_type": "jit",
            "connections": [str(shops["acme"].pk)],
            "min_approvals": "1",
        },
    )
    assert bad.status_code == 200 and "reviewer" in bad.content.decode()
    assert not AccessRequestRule.objects.filter(name="bad").exists()


# --- notifications --------------------------------------------------------------------------------


@pytest.fixture
def smtp_server():
    from aiosmtpd.controller import Controller

    received = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            received.append(envelope)
            return "250 OK"

    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, received
    finally:
        controller.stop()


@pytest.fixture
def slack_server():
    """A local stand-in for Slack's incoming webhook: checks the payload's shape like Slack does
    (`text` required, `blocks` a list of typed blocks) and answers 500 to the first N posts."""
    state = {"posts": [], "fail_first": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["posts"].append(body)
            valid = isinstance(body.get("text"), str) and all("type" in b for b in body.get("blocks", []))
            if not valid:
                self.send_response(400)
            elif len(state["posts"]) <= state["fail_first"]:
                self.send_response(500)
            else:
                self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}/services/T000/B000/XXXX"
    try:
        yield state
    finally:
        server.shutdown()


def test_reviewers_get_an_email_and_slack_gets_the_statement(pending, smtp_server, slack_server, settings):
    port, received = smtp_server
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    settings.SLACK_WEBHOOK_URL = slack_server["url"]
    review = pending["review"]
    tasks.review_notify.apply(args=[str(review.pk), "review.created"])
    assert [e.rcpt_tos for e in received] == [["frank@acme.test"]]  # the reviewer, not the requester
    mail = message_from_bytes(received[0].content)
    assert "Review requested: bob@acme.test on shop" in mail["Subject"]
    body = mail.get_payload(decode=True).decode()
    assert "update customers set name = 'x' where id = 2" in body and f"/reviews/{review.pk}/" in body
    post = slack_server["posts"][0]
    dumped = json.dumps(post)
    assert "update customers set name = 'x' where id = 2" in dumped
    assert f"/reviews/{review.pk}/" in dumped and "Risk" in dumped


def test_a_failing_slack_is_retried_alone(cast, pending, smtp_server, slack_server, settings):
    port, received = smtp_server
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    settings.SLACK_WEBHOOK_URL = slack_server["url"]
    slack_server["fail_first"] = 2
    review = services.review_decide(
        actor=Actor.for_user(pending["frank"], surface="web"),
        review_id=pending["review"].pk,
        status="APPROVED",
    )
    countdowns = []
    retries = tasks.run_with_retries(str(review.pk), "review.approved", sleep=countdowns.append)
    assert retries == 2 and countdowns == [2, 4]  # exponential backoff, as a worker would wait
    assert len(slack_server["posts"]) == 3  # two failures, then delivered
    assert [e.rcpt_tos for e in received] == [["bob@acme.test"]]  # e-mail went once, to the requester


def test_the_session_page_shows_its_review_and_timeline(cast, pending):
    review = pending["review"]
    services.review_decide(
        actor=Actor.for_user(pending["frank"], surface="web"),
        review_id=review.pk,
        status="APPROVED",
        reason="fine",
    )
    page = _client(cast.bob.user).get(f"/sessions/{review.session_id}/")
    assert page.status_code == 200
    body = page.content.decode()
    assert 'id="review"' in body and "frank@acme.test" in body and f"/reviews/{review.pk}/" in body
    labels = [e["label"] for e in page.context["timeline"]]
    assert labels[:4] == ["Recorded", "Queued for review", "Approved by a reviewer", "Approved"]
    # the reviewer sees the record and its review, not the content
    as_frank = _client(pending["frank"]).get(f"/sessions/{review.session_id}/")
    assert as_frank.status_code == 200 and 'id="content-hidden"' in as_frank.content.decode()
    # someone who may not see the review gets no review block (and here no session either)
    assert _client(cast.dave.user).get(f"/sessions/{review.session_id}/").status_code == 404


def test_the_session_browser_and_its_download_filter_by_review_status(cast, pending):
    alice = _client(cast.alice.user)
    page = alice.get("/sessions/?review_status=PENDING")
    assert page.status_code == 200
    assert [s.pk for s in page.context["sessions"]] == [pending["review"].session_id]
    assert alice.get("/sessions/?review_status=EXECUTED").context["sessions"] == []
    assert alice.get("/sessions/?review_status=MAYBE").status_code in (200, 400)  # a form error, never a 500
    download = alice.get("/sessions/export.jsonl?review_status=PENDING")
    assert download.status_code == 200
