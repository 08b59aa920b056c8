"""Delivering outbound events: the sinks (JSON lines file, syslog) and signed webhooks.

    emit() --outbox row, same transaction--> the relay (sessions.outbox) --> event_fanout
        -> JSON line, syslog message          (a sink that fails keeps the message for a retry)
        -> one WebhookDelivery per subscribed endpoint -> webhook_deliver, retried with backoff

A delivery is claimed with a conditional UPDATE before it is sent, so the scheduled retry, the
sweep (`webhooks_retry_due`) and an admin's retry never send one attempt twice at the same time.
Receivers still deduplicate by `X-Portcullis-Event-Id`: a worker that dies after sending and
before recording sends it again (at least once, never silently dropped).

In embedded mode (tasks eager, no broker) the same functions run on a small thread pool of the
process and retries wait on timers, so a request that emits an event never waits for a receiver.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from urllib.parse import urlsplit

from celery import shared_task
from django.conf import settings
from django.db import IntegrityError, connections, transaction
from django.utils import timezone

from gateway import metrics
from sessions import outbox, webhook_signing
from sessions.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint

log = logging.getLogger("portcullis.events")

EVENT_ID_HEADER = "X-Portcullis-Event-Id"
EVENT_TYPE_HEADER = "X-Portcullis-Event-Type"
USER_AGENT = "Portcullis-Webhooks/1"
MAX_ERROR_CHARS = 500

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


# --- queueing --------------------------------------------------------------------------------


@outbox.handler("event")
def _deliver_event(event: dict) -> None:
    """The outbox relay's delivery of one event (it runs inside the relay's transaction)."""
    event_fanout(event)


@outbox.handler("sink")
def _deliver_to_sinks(event: dict) -> None:
    """An event a sink could not take before: written again until it can (raises meanwhile)."""
    sinks_write(event, strict=True)


def _background(fn, *args) -> None:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="portcullis-events")
    _pool.submit(_run_logged, fn, *args)


def _run_logged(fn, *args) -> None:
    try:
        fn(*args)
    except Exception:
        log.exception("%s failed in the background", fn.__name__)
    finally:
        connections.close_all()


def _schedule(delivery_id: int, delay: float) -> None:
    """Attempt a delivery after `delay` seconds (the sweep catches whatever this loses)."""
    if settings.CELERY_TASK_ALWAYS_EAGER:
        timer = threading.Timer(max(delay, 0.0), _background, args=(webhook_deliver, delivery_id))
        timer.daemon = True
        timer.start()
    else:
        webhook_deliver_task.apply_async(args=[delivery_id], countdown=max(delay, 0.0))


# --- fan-out ---------------------------------------------------------------------------------


def event_fanout(event: dict) -> list[int]:
    """Write the event to the sinks and create one delivery per subscribed, enabled endpoint of
    its org; start them once committed. Idempotent per (endpoint, event id): the relay may hand the
    same event over twice (at least once). Returns the delivery ids created. A sink that cannot take
    the event now gets it again later (an outbox message of its own), without holding up the webhooks."""
    try:
        sinks_write(event, strict=True)
    except OSError:
        outbox.outbox_put("sink", event)
    endpoints = [
        e for e in WebhookEndpoint.objects.filter(org_id=event["org"], enabled=True) if e.wants(event["type"])
    ]
    created = []
    for endpoint in endpoints:
        try:
            with transaction.atomic():
                delivery = WebhookDelivery.objects.create(
                    org_id=endpoint.org_id,
                    endpoint=endpoint,
                    event_id=event["id"],
                    event_type=event["type"],
                    payload=event,
                )
        except IntegrityError:  # fanned out before (a relay that ran twice)
            continue
        created.append(delivery.pk)
    if created:
        transaction.on_commit(lambda: _start(created))
    return created


def _start(delivery_ids: list[int]) -> None:
    """First attempts, off the relay's path; one that cannot be scheduled (the broker is down) is
    started by `webhooks_retry_due` after its grace period."""
    for delivery_id in delivery_ids:
        try:
            if settings.CELERY_TASK_ALWAYS_EAGER:
                webhook_deliver(delivery_id)  # the relay runs on a background thread already
            else:
                _schedule(delivery_id, 0)
        except Exception:  # noqa: BLE001
            log.warning("could not schedule webhook delivery %s; the retry sweep will", delivery_id)


# --- sinks -----------------------------------------------------------------------------------


def sinks_write(event: dict, *, strict: bool = False) -> None:
    """The event as one JSON line in EVENTS_JSONL_PATH and one RFC 5424 message to SYSLOG_ADDRESS,
    each when configured. A sink that fails is logged; with `strict` (the relay) it then raises, so
    the event is kept and written again later (receivers deduplicate by the event id)."""
    line = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    failed = None
    if settings.EVENTS_JSONL_PATH:
        try:
            jsonl_append(settings.EVENTS_JSONL_PATH, line)
        except OSError as exc:
            log.exception("could not append event %s to %s", event["id"], settings.EVENTS_JSONL_PATH)
            failed = exc
    if settings.SYSLOG_ADDRESS:
        try:
            syslog_send(settings.SYSLOG_ADDRESS, syslog_message(event, line))
        except (OSError, ValueError) as exc:
            log.exception("could not send event %s to syslog %s", event["id"], settings.SYSLOG_ADDRESS)
            failed = failed or exc
    if failed is not None and strict:
        raise OSError(f"an event sink failed: {failed}")


def jsonl_append(path: str, line: str) -> None:
    """One write() of a whole line on an O_APPEND descriptor: lines of concurrent writers (threads,
    processes) never interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


_WARNING_TYPES = ("session.blocked", "guardrail.violation")


def syslog_message(event: dict, line: str) -> bytes:
    """RFC 5424: <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] MSG, the event JSON as MSG."""
    severity = 4 if event["type"] in _WARNING_TYPES else 6  # warning, informational
    pri = settings.SYSLOG_FACILITY * 8 + severity
    stamp = event["created_at"]  # ISO 8601 in UTC with microseconds: a valid RFC 5424 TIMESTAMP
    host = (socket.gethostname() or "-")[:255].replace(" ", "-")
    # 32473 is the private enterprise number reserved for examples (RFC 5612); ids are UUIDs.
    sd = f'[portcullis@32473 id="{event["id"]}" org="{event["org"]}"]'
    return f"<{pri}>1 {stamp} {host} portcullis {os.getpid()} {event['type'][:32]} {sd} {line}".encode()


def syslog_send(address: str, message: bytes, timeout: float = 5.0) -> None:
    """UDP: one datagram. TCP: octet-counted framing (RFC 6587 §3.4.1), one connection per message."""
    parts = urlsplit(address)
    if parts.scheme not in ("udp", "tcp") or not parts.hostname or not parts.port:
        raise ValueError("PORTCULLIS_SYSLOG_ADDRESS must look like udp://host:514 or tcp://host:601")
    if parts.scheme == "udp":
        family = socket.getaddrinfo(parts.hostname, parts.port, type=socket.SOCK_DGRAM)[0][0]
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.sendto(message, (parts.hostname, parts.port))
        return
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(str(len(message)).encode() + b" " + message)


# --- webhooks --------------------------------------------------------------------------------


def payload_body(payload: dict) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class DeliveryRefused(Exception):
    """The target may not be called (a private address without the endpoint's permission)."""


def http_post(url: str, body: bytes, headers: dict, *, allow_private: bool, timeout: float):
    """The one outbound HTTP client of events: timeouts, no redirects, and (unless the endpoint
    allows private networks) a connection only to the public address it resolved and checked, so
    DNS rebinding cannot slip a private address in between check and connect."""
    import requests
    from requests_hardened import Config, Manager
    from requests_hardened.ip_filter import InvalidIPAddress

    manager = Manager(
        Config(
            ip_filter_enable=not allow_private,
            ip_filter_allow_loopback_ips=False,
            never_redirect=True,
            default_timeout=(min(timeout, 5.0), timeout),
            user_agent_override=USER_AGENT,
        )
    )
    try:
        return manager.send_request("POST", url, data=body, headers=headers)
    except InvalidIPAddress as exc:
        raise DeliveryRefused(
            f"refused: {urlsplit(url).hostname} resolves to a private, loopback or reserved address ({exc}); "
            "allow private networks on the endpoint to call it"
        ) from None
    except requests.RequestException as exc:
        raise OSError(f"{type(exc).__name__}: {str(exc)[:300]}") from None


def backoff_seconds(attempts: int) -> float:
    """Delay before attempt `attempts + 1`: base * 2^(attempts-1), capped, with ±10% jitter."""
    delay = settings.WEBHOOK_BACKOFF_SECONDS * (2 ** max(attempts - 1, 0))
    delay = min(delay, settings.WEBHOOK_BACKOFF_MAX_SECONDS)
    return delay * random.uniform(0.9, 1.1)


def webhook_deliver(delivery_id: int, *, now=None) -> WebhookDelivery | None:
    """Attempt one delivery if it is due and not claimed by another worker; record the outcome and
    schedule the next attempt (or mark it dead). A system action: called by tasks only."""
    now = now or timezone.now()
    lease = now + timedelta(seconds=settings.WEBHOOK_TIMEOUT_SECONDS + 60)
    claimed = WebhookDelivery.objects.filter(
        pk=delivery_id,
        status__in=(DeliveryStatus.PENDING, DeliveryStatus.FAILED),
        next_attempt_at__lte=now,
    ).update(next_attempt_at=lease)
    if not claimed:
        return None
    delivery = WebhookDelivery.objects.select_related("endpoint").get(pk=delivery_id)
    endpoint = delivery.endpoint
    body = payload_body(delivery.payload)
    timestamp = str(int(time.time()))
    code, error = None, ""
    try:
        if not endpoint.enabled:
            raise DeliveryRefused("the endpoint is disabled")
        headers = {
            "Content-Type": "application/json",
            EVENT_ID_HEADER: str(delivery.event_id),
            EVENT_TYPE_HEADER: delivery.event_type,
            # Standard Webhooks: webhook-id, webhook-timestamp, webhook-signature (sessions/webhook_signing.py)
            **webhook_signing.sign_headers(
                endpoint.get_secret(), msg_id=str(delivery.event_id), timestamp=int(timestamp), body=body
            ),
        }
        response = http_post(
            endpoint.url,
            body,
            headers,
            allow_private=endpoint.allow_private_network,
            timeout=settings.WEBHOOK_TIMEOUT_SECONDS,
        )
        code = response.status_code
        if not 200 <= code < 300:
            error = f"HTTP {code}: {response.text[:200]}"
    except DeliveryRefused as exc:
        error = str(exc)
    except (
        OSError,
        RuntimeError,
        ValueError,
    ) as exc:  # network errors; secrets that cannot be decrypted or used
        error = str(exc) or type(exc).__name__
    delivery.attempts += 1
    delivery.last_attempt_at = timezone.now()
    delivery.response_code = code
    delivery.last_error = error[:MAX_ERROR_CHARS]
    delay = None
    if not error:
        delivery.status = DeliveryStatus.DELIVERED
        delivery.delivered_at = delivery.last_attempt_at
    elif delivery.attempts >= settings.WEBHOOK_MAX_ATTEMPTS:
        delivery.status = DeliveryStatus.DEAD
        log.warning(
            "webhook delivery %s is dead after %d attempts: %s", delivery.pk, delivery.attempts, error
        )
    else:
        delivery.status = DeliveryStatus.FAILED
        delay = backoff_seconds(delivery.attempts)
        delivery.next_attempt_at = delivery.last_attempt_at + timedelta(seconds=delay)
    delivery.save(
        update_fields=[
            "attempts",
            "last_attempt_at",
            "response_code",
            "last_error",
            "status",
            "delivered_at",
            "next_attempt_at",
        ]
    )
    if delay is not None:
        _schedule(delivery.pk, delay)
    return delivery


def webhooks_retry_due(*, now=None, grace_seconds: int = 60, limit: int = 500) -> int:
    """Start deliveries that are overdue by more than `grace_seconds` (their scheduled attempt was
    lost: worker killed, process restarted), and prune delivered rows older than
    WEBHOOK_RETENTION_DAYS. Celery beat runs it every minute."""
    now = now or timezone.now()
    due = WebhookDelivery.objects.filter(
        status__in=(DeliveryStatus.PENDING, DeliveryStatus.FAILED),
        next_attempt_at__lte=now - timedelta(seconds=grace_seconds),
    ).values_list("pk", flat=True)[:limit]
    ids = list(due)
    for pk in ids:
        _schedule(pk, 0)
    if settings.WEBHOOK_RETENTION_DAYS > 0:  # delivered rows are history; failed and dead ones stay
        old = WebhookDelivery.objects.filter(
            status=DeliveryStatus.DELIVERED,
            delivered_at__lt=now - timedelta(days=settings.WEBHOOK_RETENTION_DAYS),
        ).values_list("pk", flat=True)[:5000]
        WebhookDelivery.objects.filter(pk__in=list(old)).delete()
    return len(ids)


@shared_task(name="sessions.tasks.webhook_deliver", ignore_result=True)
def webhook_deliver_task(delivery_id: int) -> None:
    """Attempt one webhook delivery (it schedules its own retry). The Celery task lives beside the
    function it runs; sessions/tasks.py lists it under its name, `webhook_deliver`."""
    attempt = webhook_deliver(delivery_id)
    if attempt is not None:  # None: not due, or claimed by another worker
        metrics.WEBHOOK_ATTEMPTS.labels(attempt.status).inc()
