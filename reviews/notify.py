"""Telling people about reviews: wake-ups for `reviews_wait`, the outbound event stream, e-mail
to reviewers and requesters, and a Slack incoming webhook.

Nothing here runs inside the request that made the change: wake-ups are published after commit,
and e-mail and Slack are Celery tasks retried with backoff, so a slow mail server or Slack never
delays (or fails) an approval.
"""

from __future__ import annotations

import logging
import time

import httpx2
from celery import shared_task
from celery.exceptions import Retry
from django.conf import settings
from django.core.mail import send_mail

from governance.models import User
from reviews.models import Review
from sessions import events
from sessions.wakeup import notify_review_changed

logger = logging.getLogger("portcullis.reviews.notify")
task_logger = logging.getLogger("portcullis.reviews.tasks")


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
    try:
        if settings.CELERY_TASK_ALWAYS_EAGER:
            # Embedded mode: an eager task would run (and retry) inside the request; use a thread.
            _background().submit(_run_logged, run_with_retries, str(review_id), event)
        else:
            review_notify.delay(str(review_id), event)
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


# --- e-mail and Slack (the Celery task `reviews.tasks.review_notify`, retried per channel) ----------

APPROVE, REJECT = "review_approve", "review_reject"  # the Slack buttons' action ids (reviews.slack)


def interactive() -> bool:
    """Buttons are offered only when the endpoint can verify clicks and look people up."""
    return bool(settings.SLACK_SIGNING_SECRET and settings.SLACK_BOT_TOKEN)


def message_blocks(review_id: str) -> list[dict]:
    """The Approve / Reject buttons for a review message (Block Kit)."""
    return [
        {
            "type": "actions",
            "block_id": f"review:{review_id}",
            "elements": [
                {
                    "type": "button",
                    "action_id": APPROVE,
                    "style": "primary",
                    "text": {"type": "plain_text", "text": "Approve"},
                    "value": review_id,
                },
                {
                    "type": "button",
                    "action_id": REJECT,
                    "style": "danger",
                    "text": {"type": "plain_text", "text": "Reject"},
                    "value": review_id,
                },
            ],
        }
    ]


SUBJECTS = {
    "review.created": "Review requested: {requester} on {connection}",
    "review.approved": "Approved: your request on {connection}",
    "review.rejected": "Rejected: your request on {connection}",
    "review.expired": "Expired: the request on {connection}",
    "review.revoked": "Revoked: access to {connection}",
}


class NotificationFailed(Exception):
    pass


@shared_task(name="reviews.tasks.review_notify", bind=True, ignore_result=True, max_retries=6)
def review_notify(self, review_id: str, event: str, channels: list[str] | None = None) -> None:
    """E-mail the people concerned and post to Slack. A channel that fails is retried alone, with
    exponential backoff (2 s, 4 s, 8 s ... capped at 5 min); one that succeeded is not repeated."""

    review = Review.objects.select_related("requester").filter(pk=review_id).first()
    if review is None or event not in SUBJECTS:
        return
    channels = channels or (["email", "slack"] if settings.SLACK_WEBHOOK_URL else ["email"])
    senders = {"email": _email, "slack": _slack}
    failures = []
    for channel in channels:
        try:
            senders[channel](review, event)
        except Exception as exc:
            task_logger.warning(
                "%s notification for review %s (%s) failed: %r", channel, review_id, event, exc
            )
            failures.append(channel)
    if failures:
        countdown = min(2 ** (self.request.retries + 1), 300)
        raise self.retry(args=[review_id, event, failures], countdown=countdown)


def run_with_retries(review_id: str, event: str, *, sleep=time.sleep) -> int:
    """Run `review_notify` here, retrying as a worker would (same backoff, failed channels only).
    Embedded mode has no worker, so its background thread uses this. Returns the retries used."""
    args, retries = [review_id, event], 0
    while True:
        try:
            review_notify.apply(args=args, retries=retries, throw=True)
            return retries
        except Retry as retry:
            if retries >= review_notify.max_retries:
                task_logger.error(
                    "notifications for review %s (%s) gave up after %d retries", review_id, event, retries
                )
                return retries
            args, retries = list(retry.sig.args), retries + 1
            sleep(retry.sig.options.get("countdown", 1))


def _recipients(review, event: str) -> list[str]:

    if event == "review.created":
        group_ids = [g["id"] for g in review.reviewer_groups + review.force_approval_groups]
        return sorted(
            set(
                User.objects.filter(org_id=review.org_id, is_active=True, user_groups__in=group_ids)
                .exclude(pk=review.requester_id)
                .values_list("email", flat=True)
            )
        )
    return [review.requester.email]


def _text(review, event: str) -> str:
    url = f"{settings.PUBLIC_BASE_URL}/reviews/{review.pk}/"
    lines = [
        f"Requester: {review.requester.email}",
        f"Connection: {review.connection_name}",
        f"Type: {'one-time execution' if review.type == 'onetime' else 'JIT access'}",
        f"Status: {review.status}",
    ]
    if review.risk:
        lines.append(f"Risk: {review.risk.get('risk_level')} - {review.risk.get('title')}")
    if review.reason:
        lines.append(f"Reason: {review.reason}")
    if review.input and event == "review.created":
        lines += ["", "Statement:", review.input[:4000]]
    if review.rejection_reason:
        lines.append(f"Reviewer's reason: {review.rejection_reason}")
    lines += ["", f"Open the review: {url}"]
    return "\n".join(lines)


def _email(review, event: str) -> None:
    recipients = _recipients(review, event)
    if not recipients:
        return
    subject = SUBJECTS[event].format(requester=review.requester.email, connection=review.connection_name)
    send_mail(subject, _text(review, event), settings.DEFAULT_FROM_EMAIL, recipients)


def slack_payload(review, event: str) -> dict:
    url = f"{settings.PUBLIC_BASE_URL}/reviews/{review.pk}/"
    title = SUBJECTS[event].format(requester=review.requester.email, connection=review.connection_name)
    risk = (review.risk or {}).get("risk_level", "unknown")
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*Connection*\n{review.connection_name}"},
                {"type": "mrkdwn", "text": f"*Risk*\n{risk}"},
                {"type": "mrkdwn", "text": f"*Requester*\n{review.requester.email}"},
                {"type": "mrkdwn", "text": f"*Status*\n{review.status}"},
            ],
        },
    ]
    if review.input:
        statement = review.input[:2800].replace("```", "`\u200b``")
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"```{statement}```"}})
    if review.reason:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Reason*: {review.reason[:500]}"}}
        )
    blocks.append(
        {
            "type": "actions",
            "elements": [
                {"type": "button", "text": {"type": "plain_text", "text": "Open review"}, "url": url}
            ],
        }
    )
    if event == "review.created" and interactive():  # reviewers decide in Slack too
        blocks += message_blocks(str(review.pk))
    return {"text": f"{title} ({risk} risk): {url}", "blocks": blocks}


def _slack(review, event: str) -> None:
    response = httpx2.post(settings.SLACK_WEBHOOK_URL, json=slack_payload(review, event), timeout=10.0)
    if response.status_code >= 300:
        raise NotificationFailed(f"Slack answered HTTP {response.status_code}")
