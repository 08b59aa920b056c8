"""Celery tasks of the reviews: notifications (retried with backoff) and expiry (beat)."""

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

logger = logging.getLogger("portcullis.reviews.tasks")

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
            logger.warning("%s notification for review %s (%s) failed: %r", channel, review_id, event, exc)
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
                logger.error(
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
    from reviews import slack

    if event == "review.created" and slack.interactive():  # reviewers decide in Slack too
        blocks += slack.message_blocks(str(review.pk))
    return {"text": f"{title} ({risk} risk): {url}", "blocks": blocks}


def _slack(review, event: str) -> None:
    response = httpx2.post(settings.SLACK_WEBHOOK_URL, json=slack_payload(review, event), timeout=10.0)
    if response.status_code >= 300:
        raise NotificationFailed(f"Slack answered HTTP {response.status_code}")


@shared_task(name="reviews.tasks.reviews_expire")
def reviews_expire() -> int:
    from reviews.services import reviews_expire as expire

    return expire()
