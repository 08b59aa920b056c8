"""The gauges of /metrics read at scrape time (`StateCollector`): review backlog and oldest wait,
webhook deliveries per status, analysis lag, the Celery queue's length in Redis, the outbox backlog,
and this process's database pool. They read the shared database and Redis, so any replica answers
the same. Registered with `gateway.metrics` (which knows no models) when this module loads."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily

from gateway import metrics
from gateway.metrics import PID
from reviews.models import Review, ReviewStatus
from sessions.models import FINAL_STATUSES, DeliveryStatus, OutboxMessage, Session, WebhookDelivery

log = logging.getLogger("portcullis.metrics")


def outbox_backlog() -> int | None:
    """Outbox rows not yet delivered (events, analyses, agent dispatches; sessions.outbox)."""
    return OutboxMessage.objects.count()


class StateCollector:
    """Gauges computed from the database, Redis and this process's pool when /metrics is read.
    Each group is read on its own: one that fails is skipped and counted in
    `portcullis_metrics_collect_errors`, so a down Redis still leaves the database figures."""

    def collect(self):
        errors = 0
        for read in (self._reviews, self._webhooks, self._analysis, self._queue, self._outbox, self._pool):
            try:
                yield from read()
            except Exception:  # noqa: BLE001
                errors += 1
                log.warning("metrics: %s could not be read", read.__name__, exc_info=True)
        gauge = GaugeMetricFamily(
            "portcullis_metrics_collect_errors", "Gauge groups that failed on this scrape"
        )
        gauge.add_metric([], errors)
        yield gauge

    def _reviews(self):
        row = Review.objects.filter(status=ReviewStatus.PENDING).aggregate(
            n=Count("pk"), oldest=Min("created_at")
        )
        pending = GaugeMetricFamily("portcullis_reviews_pending", "Reviews waiting for a decision")
        pending.add_metric([], row["n"])
        oldest = GaugeMetricFamily(
            "portcullis_review_oldest_pending_seconds", "Age of the oldest pending review (0: none)"
        )
        oldest.add_metric([], (timezone.now() - row["oldest"]).total_seconds() if row["oldest"] else 0.0)
        yield pending
        yield oldest

    def _webhooks(self):
        gauge = GaugeMetricFamily(
            "portcullis_webhook_deliveries",
            "Webhook delivery records per status (delivered ones are pruned after the retention days)",
            labels=["status"],
        )
        counts = dict(WebhookDelivery.objects.values_list("status").annotate(n=Count("pk")).order_by())
        for status in DeliveryStatus.values:
            gauge.add_metric([status], counts.get(status, 0))
        yield gauge
        oldest = WebhookDelivery.objects.filter(
            status__in=(DeliveryStatus.PENDING, DeliveryStatus.FAILED)
        ).aggregate(oldest=Min("created_at"))["oldest"]
        age = GaugeMetricFamily(
            "portcullis_webhook_oldest_undelivered_seconds",
            "Age of the oldest pending or failed delivery (0: none)",
        )
        age.add_metric([], (timezone.now() - oldest).total_seconds() if oldest else 0.0)
        yield age

    def _analysis(self):
        now = timezone.now()
        # The last day, like the sweep: older sessions without analysis are not made any more.
        waiting = Session.objects.filter(
            status__in=FINAL_STATUSES,
            created_at__gte=now - timedelta(days=1),
            ended_at__isnull=False,
            analysis__isnull=True,
        )
        oldest = waiting.order_by("ended_at").values_list("ended_at", flat=True).first()
        lag = GaugeMetricFamily(
            "portcullis_analysis_lag_seconds",
            "How long the oldest final session of the last day has waited for its risk analysis (0: none)",
        )
        lag.add_metric([], (now - oldest).total_seconds() if oldest else 0.0)
        yield lag
        count = GaugeMetricFamily(
            "portcullis_analysis_missing", "Final sessions of the last day without analysis"
        )
        count.add_metric([], waiting.count())
        yield count

    def _queue(self):
        if not settings.REDIS_URL:
            return
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        try:
            gauge = GaugeMetricFamily(
                "portcullis_celery_queue_length",
                "Tasks waiting in the Celery queue in Redis",
                labels=["queue"],
            )
            gauge.add_metric(
                [settings.CELERY_TASK_DEFAULT_QUEUE], client.llen(settings.CELERY_TASK_DEFAULT_QUEUE)
            )
            yield gauge
        finally:
            client.close()

    def _outbox(self):
        backlog = outbox_backlog()
        if backlog is not None:
            gauge = GaugeMetricFamily("portcullis_outbox_backlog", "Outbox rows not yet dispatched")
            gauge.add_metric([], backlog)
            yield gauge

    def _pool(self):
        pool = getattr(connection, "pool", None) if connection.vendor == "postgresql" else None
        if pool is None:
            return
        stats = pool.get_stats()
        size = stats.get("pool_size", 0)
        available = stats.get("pool_available", 0)
        for name, help_text, value in (
            ("portcullis_db_pool_size", "Connections this process's pool holds open", size),
            (
                "portcullis_db_pool_in_use",
                "Connections of this process's pool checked out now",
                size - available,
            ),
            ("portcullis_db_pool_max", "The pool's maximum size (PORTCULLIS_DB_POOL_MAX)", pool.max_size),
            (
                "portcullis_db_pool_waiting",
                "Requests waiting for a connection now",
                stats.get("requests_waiting", 0),
            ),
        ):
            gauge = GaugeMetricFamily(name, help_text, labels=["pid"])
            gauge.add_metric([PID], value)
            yield gauge


def review_created_at(review_id):
    return Review.objects.filter(pk=review_id).values_list("created_at", flat=True).first()


metrics.register_state(StateCollector(), review_created_at=review_created_at)
