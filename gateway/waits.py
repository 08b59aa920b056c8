"""Long polls, for every surface: wait for a review's decision or a session's risk analysis.

MCP tools await these (reporting progress to the client); REST views run them with
`async_to_sync`. Both get the same record, plus `timed_out` (true: ask again) and
`waited_seconds`. Waiting wakes on a channel-layer signal with a database re-check
(`sessions.wakeup`), so it works across replicas and without Redis.
"""

from __future__ import annotations

import time

from channels.db import database_sync_to_async as db
from django.conf import settings

from reviews import services as reviews
from sessions import services as records
from sessions.wakeup import wait_for_analysis, wait_for_review

DEFAULT_WAIT = 45.0
MAX_WAIT = 300.0


async def review_wait(*, actor, review_id, timeout: float, on_progress=None) -> dict:
    """The review the actor may see, once decided or after `timeout` seconds. Raises NotFound."""
    started = time.monotonic()
    review = await db(lambda: reviews.review_get(actor=actor, review_id=review_id))()
    _, timed_out = await wait_for_review(
        db(lambda: reviews.review_reload(review)),
        review.pk,
        timeout,
        on_progress=on_progress,
        progress_every=settings.PROGRESS_INTERVAL_SECONDS,
    )
    data = await db(
        lambda: reviews.review_to_dict(reviews.review_get(actor=actor, review_id=review.pk), actor=actor)
    )()
    return {**data, "timed_out": timed_out, "waited_seconds": round(time.monotonic() - started, 3)}


async def analysis_wait(*, actor, session_id, timeout: float, on_progress=None) -> dict:
    """A session's risk analysis (owner, admins, auditors), waiting up to `timeout` seconds while it
    is pending (0: answer at once). Raises NotFound("session not found") for everyone else."""
    started = time.monotonic()
    session, analysis = await db(lambda: records.analysis_get(actor=actor, session_id=session_id))()
    timed_out = False
    if analysis is None and timeout > 0:
        analysis, timed_out = await wait_for_analysis(
            session.pk,
            timeout,
            on_progress=on_progress,
            progress_every=settings.PROGRESS_INTERVAL_SECONDS,
        )
    return {
        **records.analysis_to_dict(session.pk, analysis),
        "timed_out": timed_out,
        "waited_seconds": round(time.monotonic() - started, 3),
    }
