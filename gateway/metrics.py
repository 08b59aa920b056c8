"""Prometheus metrics (prometheus_client), served at /metrics (docs/operations.md).

Two kinds:

* **Counters and histograms** counted where things happen: HTTP requests per surface
  (`gateway.observe`), MCP tool calls per tool (`mcpserver.server`, `mcpserver.proxy`), and the
  outcomes read off the event stream after commit (`event_observed`, called by
  `sessions.events`): sessions per status, connection kind and surface, review decisions and how
  long they waited, events emitted. Counting from the committed event means a rolled-back change
  is never counted and every surface and process counts the same way.
* **Gauges read at scrape time** (`gateway.metrics_state.StateCollector`): review backlog and oldest wait, webhook
  deliveries per status, analysis lag, the Celery queue's length in Redis, the outbox backlog, and
  this process's database pool. They read the shared database and Redis, so any replica answers
  the same.

Processes: with `PROMETHEUS_MULTIPROC_DIR` set (a directory private to one host or container,
emptied at start) prometheus_client's multiprocess mode adds up the counters of every process
that writes there (several daphne processes, Celery's prefork children) and /metrics answers for
all of them. Without it, each process answers for itself and its series carry `pid`
(`process_*` metrics come from the default collectors); Prometheus tells replicas apart by their
`instance` label.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from gateway import logs, ratelimit

log = logging.getLogger("portcullis.metrics")

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
PID = str(os.getpid())

# Seconds: MCP tools wait up to a minute (exec handoff, reviews_wait), so the buckets reach there.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600)

HTTP_REQUESTS = Counter(
    "portcullis_http_requests_total",
    "HTTP requests answered, per surface and status class",
    ["surface", "code"],
)
HTTP_LATENCY = Histogram(
    "portcullis_http_request_duration_seconds",
    "Time from request to the end of the response, per surface",
    ["surface"],
    buckets=LATENCY_BUCKETS,
)
TOOL_CALLS = Counter(
    "portcullis_mcp_tool_calls_total",
    "MCP tool calls, per endpoint (gateway or upstream proxy), tool and outcome (ok, error)",
    ["endpoint", "tool", "outcome"],
)
TOOL_LATENCY = Histogram(
    "portcullis_mcp_tool_duration_seconds",
    "Time an MCP tool call took, per endpoint and tool",
    ["endpoint", "tool"],
    buckets=LATENCY_BUCKETS,
)
SESSIONS = Counter(
    "portcullis_sessions_total",
    "Sessions that became final, per status, connection kind, verb and surface",
    ["status", "connection_kind", "verb", "surface"],
)
SESSION_DURATION = Histogram(
    "portcullis_session_execution_seconds",
    "Connector execution time of final sessions, per connection kind",
    ["connection_kind"],
    buckets=LATENCY_BUCKETS,
)
REVIEW_DECISIONS = Counter(
    "portcullis_review_decisions_total",
    "Reviews that reached a final state (approved, rejected, expired, revoked, executed), per type",
    ["decision", "type"],
)
REVIEW_WAIT = Histogram(
    "portcullis_review_wait_seconds",
    "From a review's creation to its decision (approved, rejected, expired)",
    ["decision"],
    buckets=WAIT_BUCKETS,
)
EVENTS = Counter("portcullis_events_total", "Outbound events emitted (after commit), per type", ["type"])
WEBHOOK_ATTEMPTS = Counter(
    "portcullis_webhook_attempts_total",
    "Webhook delivery attempts made by this process, per outcome (delivered, failed, dead)",
    ["outcome"],
)
RATE_LIMITED = Counter(
    "portcullis_rate_limited_total",
    "Requests or tool calls refused by a rate limit, per limit (api_token, api_org, mcp_token, mcp_org, upstream_tool)",
    ["limit"],
)


# --- counting --------------------------------------------------------------------------------


def event_observed(event: dict) -> None:
    """Count one committed outbound event (`sessions.events` calls it after commit). Never raises."""
    try:
        _event_observed(event)
    except Exception:  # noqa: BLE001 - metrics must never break what they count
        log.exception("metrics: event %s not counted", event.get("type"))


def _event_observed(event: dict) -> None:
    kind = event["type"]
    data = event.get("data") or {}
    EVENTS.labels(kind).inc()
    if kind.startswith("session.") and data.get("session_id"):
        logs.bind(session_id=data["session_id"])  # later lines of this request name the session
    if kind in ("session.finished", "session.blocked"):
        connection_kind = data.get("connection_kind") or "none"
        SESSIONS.labels(
            data.get("status") or "unknown",
            connection_kind,
            data.get("verb") or "",
            data.get("surface") or "",
        ).inc()
        if data.get("execution_time_ms") is not None:
            SESSION_DURATION.labels(connection_kind).observe(data["execution_time_ms"] / 1000)
    elif kind.startswith("review.") and kind != "review.created":
        decision = kind.split(".", 1)[1]
        REVIEW_DECISIONS.labels(decision, data.get("type") or "").inc()
        if decision in ("approved", "rejected", "expired") and data.get("review_id") and _review_created_at:
            created = _review_created_at(data["review_id"])
            if created is not None:
                REVIEW_WAIT.labels(decision).observe(max((_now() - created).total_seconds(), 0.0))


def _now() -> datetime:
    from django.utils import timezone

    return timezone.now()


def tool_observed(endpoint: str, tool: str, outcome: str, seconds: float) -> None:
    TOOL_CALLS.labels(endpoint, tool, outcome).inc()
    TOOL_LATENCY.labels(endpoint, tool).observe(seconds)


# --- scrape-time gauges ----------------------------------------------------------------------


# The gauges read from the database, and the review lookup for REVIEW_WAIT, need the models;
# `gateway.metrics_state` (a layer above) registers them when it loads (gateway/wiring.py).
_state_collectors: list = []
_review_created_at = None


def register_state(collector, *, review_created_at) -> None:
    """Called once by `gateway.metrics_state`: the scrape-time collector every registry renders,
    and `review_created_at(review_id) -> datetime | None` for the review wait histogram."""
    global _review_created_at
    _state_collectors.append(collector)
    _review_created_at = review_created_at


def registry() -> CollectorRegistry:
    """The registry /metrics renders: every process's counters (multiprocess mode) or this
    process's, plus the scrape-time gauges."""
    if MULTIPROCESS:
        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)
    else:
        reg = CollectorRegistry()
        reg.register(_ProcessLabelled(REGISTRY))
    for collector in _state_collectors:
        reg.register(collector)
    return reg


class _ProcessLabelled:
    """This process's own metrics with a `pid` label on every sample (per-process mode)."""

    def __init__(self, source):
        self.source = source

    def collect(self):
        for family in self.source.collect():
            for sample in family.samples:
                sample.labels["pid"] = PID
            yield family


def render() -> tuple[bytes, str]:
    return generate_latest(registry()), CONTENT_TYPE_LATEST


def instrumented_tool_handler(endpoint: str, handler):
    """Wrap an MCP server's `on_call_tool` handler: count each call per tool and outcome, time it,
    and bind the caller and any `session_id` argument to the log context."""
    from mcp.server.auth.middleware.auth_context import get_access_token

    async def call_tool(ctx, params):
        request = getattr(ctx, "request", None)
        logs.adopt(request.scope.get("portcullis.log") if request is not None else None)
        actor = getattr(get_access_token(), "actor", None)
        if actor is not None:
            logs.bind_actor(actor)
        session_id = (
            (params.arguments or {}).get("session_id") if isinstance(params.arguments, dict) else None
        )
        if isinstance(session_id, str) and len(session_id) <= 64:
            logs.bind(session_id=session_id)
        tool = params.name if endpoint == "gateway" else f"{_proxy_connection(ctx)}/{params.name}"
        outcome, start = "crash", time.monotonic()  # crash: raised (a protocol error)
        try:
            refused = await _org_limited(actor)
            if refused is not None:
                outcome = "error"
                return refused
            result = await handler(ctx, params)
            failed = result.get("isError") if isinstance(result, dict) else getattr(result, "is_error", False)
            outcome = "error" if failed else "ok"
            return result
        finally:
            tool_observed(endpoint, tool[:120], outcome, time.monotonic() - start)

    return call_tool


async def _org_limited(actor):
    """PORTCULLIS_MCP_RATE_PER_ORG: tool calls per org, all its tokens together. Inside the MCP
    stream there is no HTTP status to set, so a refused call is a tool error naming the wait."""
    from django.conf import settings
    from mcp.types import CallToolResult, TextContent

    item = ratelimit.parse_rate(settings.MCP_RATE_PER_ORG, "PORTCULLIS_MCP_RATE_PER_ORG")
    if actor is None or item is None:
        return None
    retry = await ratelimit.take_async(item, "mcp_org", str(actor.org_id))
    if retry is None:
        return None
    RATE_LIMITED.labels("mcp_org").inc()
    message = f"rate limit: too many tool calls for this organization; retry after {int(retry)}s"
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)


def _proxy_connection(ctx) -> str:
    request = getattr(ctx, "request", None)
    return (request.path_params.get("connection") if request is not None else None) or "?"


def serve_worker_metrics(port: int) -> None:
    """A Celery worker's own /metrics (webhook attempts, events and sessions it committed, the
    queue gauges), on its private network; not protected by the token: do not publish the port.
    With PROMETHEUS_MULTIPROC_DIR the prefork children's counters are included."""
    from prometheus_client import start_http_server

    start_http_server(port, registry=registry())
    log.warning("worker metrics on :%d/metrics", port)
