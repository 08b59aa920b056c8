"""The web console and "Run it" (Django's test client, real sessions on real SQLite targets).

The console calls the pipeline as the MCP exec tool does, with surface `web`, and renders its
envelope: results with masked cells marked, blocked with the rule's message, pending approval with
the review's link. "Run it" is `review_execute`: the approved input, once, for the requester only.
"""

from __future__ import annotations

import re
import time

import pytest
from django.test import Client, override_settings

from gateway import pipeline
from gateway.services import connection_create_headless
from governance import rules
from governance.services import user_create
from reviews import services as review_services
from reviews.models import Review
from sessions.models import AuditEvent, Session


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def wait_final(session_id, timeout=60) -> Session:
    deadline = time.monotonic() + timeout
    while True:
        session = Session.objects.get(pk=session_id)
        if session.is_final or session.status == "pending_review":
            return session
        assert time.monotonic() < deadline, f"session {session_id} still {session.status}"
        time.sleep(0.05)


def run(client, connection, text):
    response = client.post("/console/", {"connection": connection, "input": text})
    assert response.status_code == 302, response.content.decode()[:500]
    session_id = re.search(r"session=([0-9a-f-]+)", response["Location"]).group(1)
    wait_final(session_id)
    return session_id, client.get(response["Location"]).content.decode()


@pytest.fixture
def reviewed(cast, shops):
    frank = user_create(org=cast.acme, email="frank@acme.test", groups=["dba"])
    review_services.access_rule_create(
        actor=cast.alice.actor(),
        name="writes",
        access_type="command",
        connections=["shop"],
        reviewer_groups=["dba"],
    )
    return frank


def test_it_runs_a_query_and_marks_the_masked_cells(cast, shops, transactional_db):
    rules.masking_rule_create(
        actor=cast.alice.actor(), name="emails", spec={"columns": ["(?i)^email$"]}, connections=["shop"]
    )
    bob = client_for(cast.bob.user)
    page = bob.get("/console/").content.decode()
    assert '<option value="shop">' in page and 'href="/console/" class="active"' in page
    session_id, page = run(bob, "shop", "select name, email from customers order by id")
    assert 'data-status="completed"' in page and "acme one" in page
    assert page.count('<td class="masked"') == 3 and "one@acme.test" not in page
    assert 'title="masked (COLUMN)"' in page and "COLUMN ×3" in page
    session = Session.objects.get(pk=session_id)
    assert session.surface == "web" and session.user == cast.bob.user
    assert (
        AuditEvent.objects.filter(action="exec.request", surface="web", target_id=str(session.pk)).count()
        == 1
    )


def test_it_shows_a_block_with_the_rules_message(cast, shops):
    rules.guardrail_create(
        actor=cast.alice.actor(),
        name="no-delete",
        message="Deletes go through a ticket.",
        input={"sql": {"deny_statements": ["delete"]}},
        connections=["shop"],
    )
    response = client_for(cast.bob.user).post(
        "/console/", {"connection": "shop", "input": "delete from customers"}
    )
    page = client_for(cast.bob.user).get(response["Location"]).content.decode()
    assert 'id="blocked"' in page and "<code>no-delete</code>" in page
    assert "Deletes go through a ticket." in page and "Nothing ran." in page


def test_bad_input_and_other_orgs_connections_are_clear_answers(cast, shops):
    bob = client_for(cast.bob.user)
    empty = bob.post("/console/", {"connection": "shop", "input": "  "})
    assert empty.status_code == 400 and "input is required" in empty.content.decode()
    none = bob.post("/console/", {"connection": "", "input": "select 1"})
    assert none.status_code == 400 and "choose a connection" in none.content.decode()
    eve = client_for(cast.eve.user)
    theirs = eve.post("/console/", {"connection": "nope", "input": "select 1"})
    assert theirs.status_code == 404 and "not found or not accessible" in theirs.content.decode()
    other = Session.objects.filter(org=cast.globex).first()
    assert other is None  # nothing ran in globex
    # Another person's session is the same 404 as a missing one.
    session = pipeline.exec_start(actor=cast.alice.actor(), connection_name="shop", input="select 1")
    assert client_for(cast.dave.user).get(f"/console/?session={session.pk}").status_code == 404
    assert client_for(cast.dave.user).get("/console/?session=not-an-id").status_code == 404
    anonymous = Client().get("/console/")
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]


def test_pending_approval_links_the_review_then_run_it_runs_it_once(cast, reviewed, transactional_db):
    bob = client_for(cast.bob.user)
    text = "update customers set name = 'renamed' where id = 2"
    response = bob.post("/console/", {"connection": "shop", "input": text})
    page = bob.get(response["Location"]).content.decode()
    review = Review.objects.get(requester=cast.bob.user)
    assert 'id="pending"' in page and f'href="/reviews/{review.pk}/"' in page

    # The reviewer's top bar counts it, and the inbox previews the statement.
    frank = client_for(reviewed)
    inbox = frank.get("/reviews/").content.decode()
    assert 'id="nav-inbox-count"' in inbox and ">1</span>" in inbox
    assert "update customers set name = &#x27;renamed&#x27; where id = 2" in inbox
    assert 'id="nav-inbox-count"' not in client_for(cast.dave.user).get("/sessions/").content.decode()

    review_page = bob.get(f"/reviews/{review.pk}/").content.decode()
    assert 'id="run"' not in review_page and "Run it" in review_page  # the hint, not the button
    review_services.review_decide(actor=reviewed_actor(reviewed), review_id=review.pk, status="APPROVED")
    session_page = bob.get(f"/sessions/{review.session_id}/").content.decode()
    assert 'data-status="approved"' in session_page and "(not run yet)" in session_page
    review_page = bob.get(f"/reviews/{review.pk}/").content.decode()
    assert 'id="run"' in review_page

    # Only the requester may run it.
    refused = client_for(cast.alice.user).post(f"/console/reviews/{review.pk}/run", follow=True)
    assert "only the requester can execute" in refused.content.decode()
    ran = bob.post(f"/console/reviews/{review.pk}/run")
    assert ran.status_code == 302 and f"session={review.session_id}" in ran["Location"]
    session = wait_final(review.session_id)
    assert session.status == "done" and session.input == text
    again = bob.post(f"/console/reviews/{review.pk}/run", follow=True)
    assert "review not approved or already executed" in again.content.decode()
    assert Session.objects.filter(input=text).count() == 1
    assert bob.get(f"/console/reviews/{review.pk}/run").status_code == 405


def reviewed_actor(user):
    from governance.policy import Actor

    return Actor.for_user(user, surface="web", client="pytest")


@override_settings(COMMAND_CONNECTIONS_ENABLED=True)
def test_cancel_stops_a_long_run(cast, transactional_db):
    connection_create_headless(
        org=cast.acme, name="slow", kind="command", settings={"argv": ["sleep", "60"]}, options={}
    )
    bob = client_for(cast.bob.user)
    response = bob.post("/console/", {"connection": "slow", "input": "x"})
    session_id = re.search(r"session=([0-9a-f-]+)", response["Location"]).group(1)
    deadline = time.monotonic() + 30
    while Session.objects.get(pk=session_id).status == "open":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    page = bob.get(response["Location"]).content.decode()
    assert 'id="running"' in page and 'id="cancel"' in page
    assert client_for(cast.dave.user).post(f"/console/sessions/{session_id}/cancel").status_code == 404
    cancelled = bob.post(f"/console/sessions/{session_id}/cancel", follow=True)
    assert "Cancel requested" in cancelled.content.decode()
    assert wait_final(session_id).status == "cancelled"
