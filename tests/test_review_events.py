"""Review transitions leave the gateway as signed webhook events (review.created, approved,
rejected, executed), delivered to a real local receiver that verifies the HMAC; the statement
itself never leaves, only its hash and risk."""

from __future__ import annotations

import json

from gateway import pipeline
from gateway.reviewed import review_execute
from governance.policy import Actor
from governance.services import user_create
from reviews import services
from sessions.webhooks import webhook_endpoint_create
from tests.test_events import SECRET, receiver  # noqa: F401 (receiver: a fixture)


def test_review_transitions_are_signed_webhook_events(cast, shops, transactional_db, settings, receiver):  # noqa: F811
    settings.CELERY_TASK_ALWAYS_EAGER = True  # embedded delivery: a background thread after commit
    r = receiver()
    webhook_endpoint_create(
        actor=cast.alice.actor("web"),
        name="reviews",
        url=r.url,
        secret=SECRET,
        event_types=["review.created", "review.approved", "review.rejected", "review.executed"],
        allow_private_network=True,
    )
    frank = user_create(org=cast.acme, email="frank@acme.test", groups=["dba"])
    services.access_rule_create(
        actor=cast.alice.actor(),
        name="r",
        access_type="command",
        connections=["shop"],
        reviewer_groups=["dba"],
    )
    statement = "update customers set email = 'secret@acme.test' where id = 1"
    approved = pipeline.exec_start(actor=cast.bob.actor(), connection_name="shop", input=statement)
    rejected = pipeline.exec_start(
        actor=cast.bob.actor(), connection_name="shop", input="delete from customers"
    )
    reviewer = Actor.for_user(frank, surface="web")
    services.review_decide(actor=reviewer, review_id=approved.pk, status="APPROVED")
    services.review_decide(actor=reviewer, review_id=rejected.pk, status="REJECTED", reason="no WHERE")
    review_execute(actor=cast.bob.actor(), review_id=approved.pk)
    got = r.wait_for(5)
    assert len(got) == 5 and all(x["verified"] for x in got)
    kinds = sorted(e["type"] for e in r.events())
    assert kinds == [
        "review.approved",
        "review.created",
        "review.created",
        "review.executed",
        "review.rejected",
    ]
    approved_event = next(e for e in r.events() if e["type"] == "review.approved")
    assert approved_event["data"]["session_id"] == str(approved.pk)
    assert approved_event["data"]["input_sha256"] == approved.input_sha256
    assert "secret@acme.test" not in json.dumps(r.events())  # the statement stays behind the gateway
