"""The end of the approval hold for a client that can show a URL: the official SDK client, unmodified,
against /api/mcp/c/<connection> on the live gateway. A call still pending when the hold ends asks a
client that declared URL-mode elicitation to open the review page (an `InputRequiredResult` carrying
an `elicitation/create` in URL mode, the 2026-07-28 way: this endpoint is stateless), then answers
its retry with the pending tool error; any other client gets the pending tool error at once."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import httpx2
import pytest
from django.db import connections
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import ElicitResult

from reviews import services as review_services
from reviews.models import Review, ReviewStatus
from tests.test_upstream_mcp import make_mcp_connection, upstream_server

pytestmark = pytest.mark.live

RULES = [
    {"match": "deploy", "requires_approval": True, "reviewers": ["admin"]},
    {"match": "*"},
]
PROD = {"environment": "prod", "service": "api"}


@pytest.fixture
def call_log(tmp_path, monkeypatch) -> Path:
    log = tmp_path / "calls.log"
    log.touch()
    monkeypatch.setenv("UPSTREAM_CALL_LOG", str(log))  # read by the upstream test server
    return log


@pytest.fixture
def deploys(cast, call_log):
    """The `deploys` connection (Streamable HTTP) to our counting test server, with a 1 s hold."""
    with upstream_server() as url:
        make_mcp_connection(cast.acme, url, name="deploys", tools=RULES, approval_hold_seconds=1)
        yield


def received(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


class Elicited:
    """The SDK client's elicitation callback: records each request, then answers `action` (after
    `before`, if given, has run on a thread of its own)."""

    def __init__(self, action: str, before=None):
        self.action, self.before = action, before
        self.requests: list = []

    async def __call__(self, ctx, params):
        self.requests.append(params)
        if self.before is not None:
            await asyncio.to_thread(self.before)
        return ElicitResult(action=self.action)


def call(server, token: str, *, elicitation=None, mode: str = "auto"):
    """One `deploy` call by the unmodified SDK client (on a thread: the test holds the database)."""
    url = f"{server.url}/api/mcp/c/deploys"
    outcome: dict = {}

    async def run():
        http = httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=60)
        )
        client = Client(
            streamable_http_client(url, http_client=http), mode=mode, elicitation_callback=elicitation
        )
        async with http, client:
            await client.list_tools()
            return await client.call_tool("deploy", PROD)

    def target():
        try:
            outcome["result"] = asyncio.run(run())
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="deploy-call")
    thread.start()
    thread.join(timeout=600)
    assert not thread.is_alive(), "the client never got an answer"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def assert_pending(result, review: Review) -> None:
    assert result.is_error
    text = result.content[0].text
    assert text.startswith("[pending_approval] approval required"), text
    assert f"/reviews/{review.pk}/" in text


def test_a_client_with_url_elicitation_is_shown_the_review_page_then_gets_the_pending_answer(
    cast, mcp, gateway_server, deploys, call_log
):
    shown = Elicited("accept")
    result = call(gateway_server, cast.bob.token, elicitation=shown)
    review = Review.objects.get()  # the retry that answered the elicitation joined the same review
    assert review.status == ReviewStatus.PENDING
    assert len(shown.requests) == 1
    request = shown.requests[0]
    assert request.mode == "url"
    assert request.url == f"{gateway_server.url}/reviews/{review.pk}/"  # the review page
    assert "Approval is pending" in request.message and "deploy" in request.message
    assert_pending(result, review)
    assert received(call_log) == []  # nothing reached the upstream


def test_a_client_without_elicitation_gets_the_pending_answer_and_no_elicitation(
    cast, mcp, gateway_server, deploys, call_log
):
    result = call(gateway_server, cast.bob.token)
    review = Review.objects.get()
    assert_pending(result, review)
    # A client on a handshake protocol version (the stateless endpoint has no channel for a
    # server-initiated request, nor its declared capabilities): today's answer, no elicitation.
    legacy = Elicited("accept")
    result = call(gateway_server, cast.bob.token, elicitation=legacy, mode="legacy")
    assert legacy.requests == []
    assert_pending(result, Review.objects.get())
    assert received(call_log) == []


@pytest.mark.parametrize("action", ["decline", "cancel"])
def test_a_client_that_declines_the_elicitation_still_gets_the_pending_answer(
    cast, mcp, gateway_server, deploys, call_log, action
):
    declined = Elicited(action)
    result = call(gateway_server, cast.bob.token, elicitation=declined)
    review = Review.objects.get()
    assert (
        len(declined.requests) == 1
        and declined.requests[0].url == f"{gateway_server.url}/reviews/{review.pk}/"
    )
    assert_pending(result, review)
    assert received(call_log) == []


def test_approved_while_the_review_page_is_shown_the_retry_runs_the_call_once(
    cast, mcp, gateway_server, deploys, call_log
):
    def approve():
        try:
            review = Review.objects.get()
            review_services.review_decide(
                actor=cast.alice.actor("web"), review_id=review.pk, status="APPROVED"
            )
        finally:
            connections.close_all()  # this thread's own database connection

    shown = Elicited("accept", before=approve)
    result = call(gateway_server, cast.bob.token, elicitation=shown)
    assert len(shown.requests) == 1
    assert not result.is_error, result
    assert result.content[0].text == "deployed api to prod"
    assert received(call_log) == [PROD]  # exactly once
    assert Review.objects.get().status == ReviewStatus.EXECUTED
