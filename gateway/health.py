"""Operations endpoints: /healthz (liveness), /readyz (readiness), /metrics (Prometheus).

/healthz touches nothing: the process answers, so it is alive. /readyz says whether this process
can serve: the database answers, Redis answers (when configured), and every migration is
applied. Compose's healthcheck uses /readyz, so a web container whose database is down is marked
unhealthy and a load balancer stops sending it traffic. /metrics is refused unless the caller
presents PORTCULLIS_METRICS_TOKEN or comes from PORTCULLIS_METRICS_ALLOWED_NETWORKS.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.http import HttpResponse, JsonResponse

from gateway import metrics as metrics_module

log = logging.getLogger("portcullis.health")

CHECK_TIMEOUT_SECONDS = 3
_migrated = False  # once every migration is applied it stays so for the life of this code


def healthz(request):
    return JsonResponse({"status": "ok"})


def _check_database() -> str:
    """A fresh connection with a short timeout, outside the pool: a pool would make /readyz wait
    for its checkout timeout (10 s) when the server is down, longer than a probe's."""
    conn = connections[DEFAULT_DB_ALIAS]
    if conn.vendor == "postgresql":
        import psycopg

        params = conn.get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        params["connect_timeout"] = CHECK_TIMEOUT_SECONDS
        with psycopg.connect(**params) as raw, raw.cursor() as cur:
            cur.execute("SELECT 1")
        return "ok"
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    return "ok"


def _check_redis() -> str:
    if not settings.REDIS_URL:
        return "not configured"
    import redis

    client = redis.Redis.from_url(
        settings.REDIS_URL, socket_timeout=CHECK_TIMEOUT_SECONDS, socket_connect_timeout=CHECK_TIMEOUT_SECONDS
    )
    try:
        client.ping()
    finally:
        client.close()
    return "ok"


def _check_migrations() -> str:
    global _migrated
    if _migrated:
        return "ok"
    from django.db.migrations.executor import MigrationExecutor

    conn = connections[DEFAULT_DB_ALIAS]
    try:
        executor = MigrationExecutor(conn)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    finally:
        conn.close()  # back to the pool; a dead server's connection is not kept
    if plan:
        raise RuntimeError(f"{len(plan)} migration(s) not applied (run manage.py migrate)")
    _migrated = True
    return "ok"


def readyz(request):
    checks: dict[str, str] = {}
    ready = True
    for name, check in (
        ("database", _check_database),
        ("redis", _check_redis),
        ("migrations", _check_migrations),
    ):
        if name == "migrations" and checks.get("database") != "ok":
            checks[name] = "not checked: database unavailable"
            continue
        try:
            checks[name] = check()
        except Exception as exc:  # noqa: BLE001 - any failure means not ready; say which
            ready = False
            # The class and first line only: a driver's message may name hosts, never credentials.
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            checks[name] = f"failed: {type(exc).__name__}" + (f": {first}" if first else "")
            log.warning("readyz: %s %s", name, checks[name])
    return JsonResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )


def _client_allowed(request) -> bool | None:
    """True: the token matched or the address is allowed. False: a wrong token. None: neither."""
    token = settings.METRICS_TOKEN
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if token and header:
        scheme, _, presented = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode())
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return None
    if any(address in network for network in settings.METRICS_ALLOWED_NETWORKS):
        return True
    return None


def metrics(request):

    allowed = _client_allowed(request)
    if allowed is False:
        return JsonResponse({"error": "invalid metrics token"}, status=401)
    if allowed is None:
        return JsonResponse(
            {
                "error": "metrics are only served to PORTCULLIS_METRICS_ALLOWED_NETWORKS or with PORTCULLIS_METRICS_TOKEN"
            },
            status=403,
        )
    body, content_type = metrics_module.render()
    return HttpResponse(body, content_type=content_type)
