"""Approving and rejecting reviews from Slack, against a local stand-in that speaks Slack's real
payloads and signatures (tests/slack_standin.py): the review message carries the buttons, a click
is verified (v0 signature, five-minute window) and decided by `review_decide` as the clicker's
Portcullis user (mapped by their Slack e-mail), and the outcome goes back to the response_url.
Attacks: a forged signature, a tampered body, a replayed (stale) request, a reviewer who is not
eligible, a Slack user who is linked to nobody, another workspace."""

from __future__ import annotations

import time

import pytest
from django.test import Client, override_settings

from gateway import pipeline
from governance.services import user_create
from reviews import services, tasks
from reviews.models import Review
from sessions.models import AuditEvent
from tests.slack_standin import SlackStandIn

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
BOT = "xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy"


@pytest.fixture
def slack():
    with SlackStandIn(signing_secret=SECRET, bot_token=BOT) as standin:
        with override_settings(
            SLACK_SIGNING_SECRET=SECRET,
            SLACK_BOT_TOKEN=BOT,
            SLACK_TEAM_ID=standin.team_id,
            SLACK_API_URL=f"{standin.url}/api",
            SLACK_WEBHOOK_URL=f"{standin.url}/webhook",
            SLACK_RESPONSE_URL_PREFIX=f"{standin.url}/actions/",
        ):
            yield standin


@pytest.fixture
def pending(cast, shops, slack):
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
    review = Review.objects.get(session=session)
    slack.add_member("U0FRANK", "frank@acme.test")
    slack.add_member("U0DAVE", "dave@acme.test")
    slack.add_member("U0BOB", "BOB@acme.test")  # Slack e-mails may differ in case
    tasks.review_notify.apply(args=[str(review.pk), "review.created"], throw=True)
    message = slack.wait_for("webhook_messages")[0]
    return {"review": review, "message": message, "frank": frank}


def post(slack, payload, **sign):
    body, headers = slack.signed(payload, **sign)
    return Client().generic(
        "POST",
        "/slack/interactions",
        body,
        content_type=headers.pop("Content-Type"),
        headers=headers,
    )


def test_the_message_has_the_buttons_and_an_approval_goes_through_the_review_service(slack, pending):
    review, message = pending["review"], pending["message"]
    buttons = [
        e for b in message["blocks"] if b["type"] == "actions" for e in b["elements"] if "action_id" in e
    ]
    assert [(b["action_id"], b["value"]) for b in buttons] == [
        ("review_approve", str(review.pk)),
        ("review_reject", str(review.pk)),
    ]
    response = post(slack, slack.block_actions(message, slack_id="U0FRANK", action_id="review_approve"))
    assert response.status_code == 200
    review.refresh_from_db()
    assert review.status == "APPROVED"
    decision = review.decisions.get()
    assert decision.reviewer == pending["frank"] and decision.decision == "APPROVED"
    event = AuditEvent.objects.get(action="review.approve", outcome="success")
    assert event.surface == "slack" and event.actor_id == pending["frank"].pk and "U0FRANK" in event.client
    path, reply = slack.wait_for("responses")[0]
    assert reply["replace_original"] is True and "Approved by frank@acme.test" in reply["text"]
    assert ("users.info", {"user": "U0FRANK"}) in slack.api_calls


def test_forged_tampered_and_replayed_requests_are_refused(slack, pending):
    review, message = pending["review"], pending["message"]
    click = slack.block_actions(message, slack_id="U0FRANK", action_id="review_approve")
    assert post(slack, click, secret="not-the-apps-signing-secret").status_code == 401
    assert post(slack, click, timestamp=int(time.time()) - 10 * 60).status_code == 401  # replayed later
    assert post(slack, click, timestamp=int(time.time()) + 10 * 60).status_code == 401
    body, headers = slack.signed(click)
    tampered = body.replace(b"review_approve", b"review_reject")
    assert (
        Client()
        .generic(
            "POST", "/slack/interactions", tampered, content_type=headers.pop("Content-Type"), headers=headers
        )
        .status_code
        == 401
    )
    unsigned = Client().post("/slack/interactions", {"payload": "{}"})
    assert unsigned.status_code == 401
    assert Client().get("/slack/interactions").status_code == 405
    review.refresh_from_db()
    assert review.status == "PENDING" and not review.decisions.exists()
    assert slack.responses == [] and slack.api_calls == []  # nothing was read or answered


def test_a_reviewer_who_is_not_eligible_cannot_decide(slack, pending):
    review, message = pending["review"], pending["message"]
    slack.add_member("U0CAROL", "carol@acme.test")  # an auditor: sees every review, decides none
    for who in ("U0CAROL", "U0BOB", "U0DAVE"):  # the auditor, the requester, a member
        click = slack.block_actions(message, slack_id=who, action_id="review_approve")
        assert post(slack, click).status_code == 200
    replies = {path.split("/")[3]: reply for path, reply in slack.wait_for("responses", 3)}
    assert all(r["response_type"] == "ephemeral" and r["replace_original"] is False for r in replies.values())
    texts = [r["text"] for _, r in sorted(replies.items())]
    assert texts == [
        "You cannot decide this review: not eligible for review",
        "You cannot decide this review: not eligible for review",
        "You cannot decide this review: review not found",  # dave may not even see it
    ]
    review.refresh_from_db()
    assert review.status == "PENDING" and not review.decisions.exists()
    denied = AuditEvent.objects.filter(action="review.approve", outcome="denied", surface="slack")
    assert sorted(e.actor_email for e in denied) == ["bob@acme.test", "carol@acme.test"]


def test_unlinked_users_and_other_workspaces_decide_nothing(slack, pending):
    review, message = pending["review"], pending["message"]
    post(slack, slack.block_actions(message, slack_id="U0NOBODY", action_id="review_approve"))
    post(
        slack, slack.block_actions(message, slack_id="U0FRANK", action_id="review_approve", team_id="T0OTHER")
    )
    slack.add_member("U0EVE", "eve@globex.test")  # a real user, of another org
    post(slack, slack.block_actions(message, slack_id="U0EVE", action_id="review_approve"))
    texts = [reply["text"] for _, reply in slack.wait_for("responses", 3)]
    assert sum("not linked to a Portcullis user" in t for t in texts) == 1
    assert sum("workspace is not connected" in t for t in texts) == 1
    assert sum("review not found" in t for t in texts) == 1  # another org's review does not exist for eve
    review.refresh_from_db()
    assert review.status == "PENDING" and not review.decisions.exists()


def test_reject_asks_for_the_reason_in_a_modal(slack, pending):
    review, message = pending["review"], pending["message"]
    assert (
        post(slack, slack.block_actions(message, slack_id="U0FRANK", action_id="review_reject")).status_code
        == 200
    )
    opened = slack.wait_for("views")[0]
    assert opened["trigger_id"] and opened["view"]["type"] == "modal"
    empty = post(slack, slack.view_submission(opened, slack_id="U0FRANK", reason=""))
    assert empty.json() == {
        "response_action": "errors",
        "errors": {"reason": "a reason is required to reject"},
    }
    outsider = post(slack, slack.view_submission(opened, slack_id="U0DAVE", reason="no"))
    assert outsider.json()["errors"]["reason"] == "review not found"  # dave may not see it
    done = post(slack, slack.view_submission(opened, slack_id="U0FRANK", reason="Use the migration tool."))
    assert done.status_code == 200 and done.content == b""
    review.refresh_from_db()
    assert review.status == "REJECTED" and review.rejection_reason == "Use the migration tool."
    _, reply = slack.wait_for("responses")[0]
    assert "Rejected by frank@acme.test" in reply["text"]


def test_without_interactivity_there_are_no_buttons_and_no_endpoint(cast, shops):
    with SlackStandIn(signing_secret=SECRET, bot_token=BOT) as standin:
        with override_settings(
            SLACK_WEBHOOK_URL=f"{standin.url}/webhook", SLACK_SIGNING_SECRET="", SLACK_BOT_TOKEN=""
        ):
            user_create(org=cast.acme, email="frank@acme.test", groups=["dba"])
            services.access_rule_create(
                actor=cast.alice.actor(),
                name="shop",
                access_type="command",
                connections=["shop"],
                reviewer_groups=["dba"],
            )
            session = pipeline.exec_start(
                actor=cast.bob.actor(), connection_name="shop", input="delete from customers"
            )
            review = Review.objects.get(session=session)
            tasks.review_notify.apply(args=[str(review.pk), "review.created"], throw=True)
            message = standin.wait_for("webhook_messages")[0]
            body, headers = standin.signed({"type": "block_actions"})
            answer = Client().generic(
                "POST", "/slack/interactions", body, content_type=headers.pop("Content-Type"), headers=headers
            )
    assert not any(
        e.get("action_id") for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]
    )
    assert answer.status_code == 404
