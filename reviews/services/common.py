"""What the review services share: limits, the not-found message, the time window as a dict, and
what happens after a review changes (wake the waiters, emit the event, notify people, on commit)."""

from __future__ import annotations

from datetime import time

from django.db import transaction

from reviews import notify
from reviews.models import Review

NOT_FOUND = "review not found"
# Surfaces an agent reaches with a token: decisions there are off unless the org turns them on.
TOKEN_SURFACES = ("mcp", "api")
MAX_LIMIT = 100
MAX_JIT_SECONDS = 30 * 24 * 3600
DEFAULT_JIT_SECONDS = 3600


def window_dict(start: time | None, end: time | None) -> dict | None:
    """A rule's or review's time window as its dict (UTC), or None without one."""
    if start is None or end is None:
        return None
    return {"start_time": start.strftime("%H:%M"), "end_time": end.strftime("%H:%M"), "timezone": "UTC"}


def after_commit(review: Review, event: str | None) -> None:
    """Queue `event` (webhooks, SIEM) in the caller's transaction; after the commit, wake the
    review's waiters and send its notifications (e-mail, Slack)."""
    review_id = review.pk
    if event:
        notify.emit(review, event)

    def run():
        notify.wake(review_id)
        if event:
            notify.dispatch(review_id, event)

    transaction.on_commit(run)
