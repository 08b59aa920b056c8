"""The approval hold: an upstream tool call that needs approval, held open for a client that knows
nothing of reviews (the per-connection endpoint /api/mcp/c/<connection>, and `upstream_call`).

    call ──> pipeline.tool_call ──> pending_review (a new review, or the one an identical call opened)
      hold: wait for the decision (progress notifications, the SDK's SSE pings keep the stream open)
        approved ──> reviewed.review_execute (APPROVED -> EXECUTED, once) ──> the upstream's own result
        rejected ──> the session is `rejected`: a tool error with the reviewer's reason
        pending at the end of the hold ──> a tool error naming the review and its URL
      a retry of the identical call (same user, connection, tool, canonical arguments) joins the same
      review: still pending -> held again; approved meanwhile -> run now, once.

Exactly once: a retry never opens a second review while one may still run (the pipeline serializes
identical calls on the connection's row), and of several holders of one approved review only the
one whose conditional APPROVED -> EXECUTED update wins runs it; the others wait for that session.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from channels.db import database_sync_to_async as db
from django.conf import settings

from gateway import pipeline, reviewed
from governance.errors import Conflict
from governance.policy import Actor
from reviews import services as reviews
from reviews.models import Review, ReviewStatus
from sessions.models import Session, SessionStatus
from sessions.wakeup import wait_for_final, wait_for_review

# (elapsed seconds, total seconds or None, message) -> None; the surface turns it into a progress
# notification when the client asked for them.
Progress = Callable[[float, float | None, str], Awaitable[None]]
MAX_HOLD_SECONDS = 300
RUN_MARGIN_SECONDS = 5.0  # beyond the connection's deadline, for recording the result


def hold_seconds(connection_config: dict) -> float:
    """The connection's `approval_hold_seconds`, else the gateway's default (below the 60 s that
    common clients allow a tool call)."""
    value = connection_config.get("approval_hold_seconds")
    return float(settings.UPSTREAM_APPROVAL_HOLD_SECONDS if value is None else value)


def _pending(session: Session) -> tuple[Review, float, float]:
    """The review a pending tool session waits for, the connection's hold and its run deadline."""
    review = getattr(session, "pending_review", None) or Review.objects.get(session_id=session.pk)
    connection = session.connection
    assert connection is not None  # an upstream tool session always has its connection
    return review, hold_seconds(connection.config), float(connection.timeout_seconds) + RUN_MARGIN_SECONDS


async def tool_call_held(
    *,
    actor: Actor,
    connection_name: str,
    tool: str,
    arguments: dict | None = None,
    idempotency_key: str | None = None,
    on_progress: Progress | None = None,
    hold: float | None = None,
) -> Session:
    """`pipeline.tool_call`, holding a call that needs approval until it is decided or the hold
    ends. Returns the session: final (done, failed, blocked, rejected, cancelled) or, at the end of
    the hold, still `pending_review` (its `pending_review` attribute is the review). Raises what
    `tool_call` raises, and PolicyDenied when the approved call may not run now (time window).
    `hold` overrides the connection's hold (0: answer with the review's state at once)."""
    session = await pipeline.tool_call(
        actor=actor,
        connection_name=connection_name,
        tool=tool,
        arguments=arguments,
        idempotency_key=idempotency_key,
    )
    if session.status != SessionStatus.PENDING_REVIEW:
        return session
    review, connection_hold, run_budget = await db(lambda: _pending(session))()
    hold = connection_hold if hold is None else min(hold, connection_hold)
    url = reviews.review_url(review)
    started = time.monotonic()

    async def progress(elapsed, total):
        if on_progress is not None:
            await on_progress(round(time.monotonic() - started, 1), total, f"waiting for approval: {url}")

    if hold > 0:
        review, _ = await wait_for_review(
            db(lambda: reviews.review_reload(review)),
            review.pk,
            hold,
            on_progress=progress,
            progress_every=settings.PROGRESS_INTERVAL_SECONDS,
        )
    if review.status == ReviewStatus.PENDING:
        setattr(session, "pending_review", review)  # noqa: B010 - the envelope reads the review from it
        return session
    if review.status == ReviewStatus.APPROVED:
        try:
            await db(lambda: reviewed.review_execute(actor=actor, review_id=review.pk))()
        except Conflict:  # an identical call holding the same review ran it: wait for that run
            pass
    elif review.status != ReviewStatus.EXECUTED:  # rejected, expired, revoked: the session is final
        return await db(lambda: Session.objects.select_related("user").get(pk=session.pk))()

    async def running(elapsed, total):
        if on_progress is not None:
            await on_progress(round(time.monotonic() - started, 1), None, "approved; the call is running")

    finished, _ = await wait_for_final(
        session.pk, run_budget, on_progress=running, progress_every=settings.PROGRESS_INTERVAL_SECONDS
    )
    return finished
