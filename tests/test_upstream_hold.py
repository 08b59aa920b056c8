"""The approval hold (gateway.upstream_hold) through the pipeline, against the real test upstream on
loopback: conditional approval, an identical retry joining the same review, the approved call run
exactly once (counted on the upstream), a rejection carrying the reviewer's reason, concurrent
holders of one review. Over real HTTP with unmodified clients: tests/test_upstream_hold_live.py."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from channels.db import database_sync_to_async as db

from gateway import pipeline, upstream_hold
from governance.errors import InvalidInput
from governance.policy import Actor
from governance.services import user_create
from reviews import services as reviews
from reviews.models import Review, ReviewStatus
from sessions.models import AuditEvent, SessionStatus
from tests.test_upstream_mcp import make_mcp_connection, upstream_server

APPROVAL = [
    {
        "match": "deploy",
        "requires_approval": True,
        "reviewers": ["sre"],
        "approval_when": {"environment": ["prod", "production"]},
    },
    {"match": "*"},
]


@pytest.fixture
def counted_upstream(tmp_path, monkeypatch):
    """The test upstream, appending one line per `deploy` it receives to a file of its own."""
    log = tmp_path / "calls.log"
    log.touch()
    monkeypatch.setenv("UPSTREAM_CALL_LOG", str(log))
    with upstream_server() as url:
        yield url, log


def received(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def held(person, arguments, *, connection="deploys"):
    session = asyncio.run(
        upstream_hold.tool_call_held(
            actor=person.actor(), connection_name=connection, tool="deploy", arguments=arguments
        )
    )
    return session, pipeline.tool_envelope(session)


def sre(cast):
    return Actor.for_user(user_create(org=cast.acme, email="sam@acme.test", groups=["sre"]), surface="web")


def test_approval_applies_only_when_the_arguments_match(cast, counted_upstream, transactional_db):
    url, log = counted_upstream
    make_mcp_connection(cast.acme, url, name="deploys", tools=APPROVAL, approval_hold_seconds=0)
    sre(cast)
    _, dev = held(cast.bob, {"environment": "dev", "service": "api"})
    assert dev["status"] == "completed" and dev["content"][0]["text"] == "deployed api to dev"
    _, prod = held(cast.bob, {"environment": "prod", "service": "api"})
    assert prod["status"] == "pending_approval" and "review" in prod["message"]
    assert received(log) == [{"environment": "dev", "service": "api"}]
    with pytest.raises(InvalidInput, match="approval_when applies with requires_approval"):
        make_mcp_connection(
            cast.acme, url, name="bad", tools=[{"match": "deploy", "approval_when": {"environment": "prod"}}]
        )
    with pytest.raises(InvalidInput, match="approval_when.environment must be a value"):
        make_mcp_connection(
            cast.acme,
            url,
            name="bad",
            tools=[
                {
                    "match": "deploy",
                    "requires_approval": True,
                    "reviewers": ["sre"],
                    "approval_when": {"environment": [{"nested": 1}]},
                }
            ],
        )


def test_an_identical_retry_joins_the_review_and_runs_the_approved_call_once(
    cast, counted_upstream, transactional_db
):
    url, log = counted_upstream
    make_mcp_connection(cast.acme, url, name="deploys", tools=APPROVAL, approval_hold_seconds=0)
    reviewer = sre(cast)
    call = {"environment": "prod", "service": "api"}
    first, pending = held(cast.bob, call)
    assert pending["status"] == "pending_approval"
    # The same call again, with its keys in another order: the same canonical arguments.
    again, joined = held(cast.bob, {"service": "api", "environment": "prod"})
    assert again.pk == first.pk and joined["review_id"] == pending["review_id"]
    assert Review.objects.count() == 1
    assert AuditEvent.objects.filter(
        action="tool.request", detail__joined_review=pending["review_id"]
    ).exists()
    # Another caller, or other arguments, are another request.
    _, other = held(cast.bob, {"environment": "prod", "service": "web"})
    _, carols = held(cast.alice, call)
    assert len({pending["review_id"], other["review_id"], carols["review_id"]}) == 3
    assert received(log) == []

    reviews.review_decide(actor=reviewer, review_id=pending["review_id"], status="APPROVED")
    ran, result = held(cast.bob, call)  # the retry after the approval runs the approved call
    assert ran.pk == first.pk and result["status"] == "completed", result
    assert result["content"][0]["text"] == "deployed api to prod"
    assert Review.objects.get(pk=pending["review_id"]).status == ReviewStatus.EXECUTED
    assert received(log) == [call]  # exactly once, counted on the upstream
    # The approval is spent: the same call later is a new request, and runs nothing by itself.
    _, later = held(cast.bob, call)
    assert later["status"] == "pending_approval" and later["review_id"] != pending["review_id"]
    assert received(log) == [call]


async def _until(load, what: str):
    """Await `load()` (on the ORM's thread, between the held calls' own queries) until it is truthy."""
    deadline = time.monotonic() + 120
    while not (value := await db(load)()):
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)
    return value


def _pending_review():
    return _until(lambda: Review.objects.filter(status=ReviewStatus.PENDING).first(), "no review was opened")


def test_a_held_call_gets_the_upstreams_result_once_approved(cast, counted_upstream, transactional_db):
    """Two identical calls held at once: one review, one run on the upstream, the same result twice."""
    url, log = counted_upstream
    make_mcp_connection(cast.acme, url, name="deploys", tools=APPROVAL, approval_hold_seconds=300)
    reviewer = sre(cast)
    call = {"environment": "prod", "service": "api"}
    actor = cast.bob.actor()
    progress = []

    async def on_progress(elapsed, total, message):
        progress.append(message)

    async def scenario():
        def hold():
            return upstream_hold.tool_call_held(
                actor=actor, connection_name="deploys", tool="deploy", arguments=call, on_progress=on_progress
            )

        first = asyncio.create_task(hold())
        review = await _pending_review()
        second = asyncio.create_task(hold())
        await _until(
            lambda: AuditEvent.objects.filter(detail__joined_review=str(review.pk)).exists(),
            "the second call never joined the review",
        )
        await db(lambda: reviews.review_decide(actor=reviewer, review_id=review.pk, status="APPROVED"))()
        return await asyncio.gather(first, second)

    sessions = asyncio.run(scenario())
    assert sessions[0].pk == sessions[1].pk
    for session in sessions:
        envelope = pipeline.tool_envelope(session)
        assert envelope["status"] == "completed" and envelope["content"][0]["text"] == "deployed api to prod"
    assert received(log) == [call]
    assert Review.objects.count() == 1


def test_a_rejection_ends_the_hold_with_the_reviewers_reason(cast, counted_upstream, transactional_db):
    url, log = counted_upstream
    make_mcp_connection(cast.acme, url, name="deploys", tools=APPROVAL, approval_hold_seconds=300)
    reviewer = sre(cast)
    actor = cast.bob.actor()

    async def scenario():
        task = asyncio.create_task(
            upstream_hold.tool_call_held(
                actor=actor,
                connection_name="deploys",
                tool="deploy",
                arguments={"environment": "prod", "service": "api"},
            )
        )
        review = await _pending_review()
        await db(
            lambda: reviews.review_decide(
                actor=reviewer, review_id=review.pk, status="REJECTED", reason="not during the freeze"
            )
        )()
        return await task

    session = asyncio.run(scenario())
    envelope = pipeline.tool_envelope(session)
    assert session.status == SessionStatus.REJECTED
    assert envelope["status"] == "blocked" and envelope["is_error"]
    assert envelope["message"] == "rejected by a reviewer: not during the freeze"
    assert received(log) == []
