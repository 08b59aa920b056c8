"""Celery tasks of the reviews: notifications (retried with backoff; defined in `reviews.notify`,
beside the code that queues them) and expiry (beat)."""

from __future__ import annotations

from celery import shared_task

from reviews import services
from reviews.notify import review_notify, run_with_retries  # noqa: F401  (the notification task)


@shared_task(name="reviews.tasks.reviews_expire")
def reviews_expire() -> int:
    return services.reviews_expire()
