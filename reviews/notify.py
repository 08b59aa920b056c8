"""Telling people about reviews: wake-ups for `reviews_wait`, the outbound event stream, e-mail
to reviewers and requesters, and a Slack incoming webhook.

Nothing here runs inside the request that made the change: wake-ups are published after commit,
and e-mail and Slack are Celery tasks retried with backoff, so a slow mail server or Slack never
delays (or fails) an approval.
"""

from __future__ import annotations

import logging

from django.conf import settings

from sessions import events
from sessions.wakeup import notify_review_changed

logger = logging.getLogger("portcullis.reviews.notify")


def wake(review_id) -> None:
    notify_review_changed(review_id)


def event_payload(review) -> dict:
    """What leaves the gateway about a review: never the input itself, only its hash and risk."""
    return {
        "review_id": str(review.pk),
        "session_id": str(review.session_id) if review.session_id else None,
        "type": review.type,
        "status": review.status,
        "connection_name": review.connection_name,
        "requester_email": review.requester.email,
        "rule": review.rule_name or None,
        "input_sha256": review.input_sha256 or None,
        "risk_level": (review.risk or {}).get("risk_level"),
        "review_url": f"{settings.PUBLIC_BASE_URL}/reviews/{review.pk}/",
    }


def emit(review, event: str) -> None:
    """Queue the outbound event (signed webhooks, SIEM sink) in the caller's transaction."""

    events.emit(org_id=review.org_id, type=event, data=event_payload(review))


def dispatch(review_id, event: str) -> None:
    """After commit: queue e-mail and Slack for `event` (never raises into the caller)."""
    from reviews import tasks

    try:
        if settings.CELERY_TASK_ALWAYS_EAGER:
            # Embedded mode: an eager task would run (and retry) inside the request; use a thread.
            _background().submit(_run_logged, tasks.run_with_retries, str(review_id), event)
        else:
            tasks.review_notify.delay(str(review_id), event)
    except Exception:  # a broker outage must not fail the decision that was already committed
        logger.exception("could not queue notifications for review %s", review_id)


_executor = None


def _background():
    global _executor
    if _executor is None:
        from concurrent.futures import ThreadPoolExecutor

        _executor = ThreadPoolExecutor(2, thread_name_prefix="review-notify")
    return _executor


def _run_logged(run, review_id: str, event: str) -> None:
    from django.db import close_old_connections

    try:
        run(review_id, event)
    except Exception:
        logger.exception("notifications for review %s failed", review_id)
    finally:
        close_old_connections()
