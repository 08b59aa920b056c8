"""Rate limits, counted in Redis by the `limits` library (docs/operations.md, "Rate limits").

One storage for every limit: Redis at REDIS_URL (shared by all replicas and workers), or the
process's memory in the embedded default. The moving-window strategy runs as one Lua script in
Redis, so concurrent replicas never both take the last call of a window. Limits:

* REST API: per token and per org (`ApiTokenThrottle`, `ApiOrgThrottle`, DRF throttle classes:
  429 with Retry-After through the API's error handler);
* /api/mcp: per presented bearer token (`gateway.observe`: 429 with Retry-After, before the MCP
  transport reads the body);
* upstream MCP tools: the tool rule's `rate_limit` (`gateway.upstream.rate_limit_take`).

If Redis is unreachable a limit is not enforced for that call (and a warning is logged): the
gateway keeps serving, and Redis being down already fails /readyz.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from django.conf import settings
from limits import RateLimitItem, RateLimitItemPerSecond, parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from gateway.configerror import ImproperlyConfiguredEnv

log = logging.getLogger("portcullis.ratelimit")

_limiter: MovingWindowRateLimiter | None = None
_lock = threading.Lock()


def limiter() -> MovingWindowRateLimiter:
    global _limiter
    with _lock:
        if _limiter is None:
            uri = settings.REDIS_URL or "memory://"
            options = {"socket_timeout": 2, "socket_connect_timeout": 2} if settings.REDIS_URL else {}
            _limiter = MovingWindowRateLimiter(storage_from_string(uri, **options))
    return _limiter


def parse_rate(value: str, setting: str) -> RateLimitItem | None:
    """`600/minute`, `10/second`, `5000 per hour`; empty or `off` turns the limit off."""
    value = (value or "").strip()
    if value.lower() in ("", "off", "0"):
        return None
    try:
        return parse(value)
    except ValueError:
        raise ImproperlyConfiguredEnv(f"{setting} must look like 600/minute, not {value!r}") from None


def per_seconds(calls: int, seconds: int) -> RateLimitItem:
    return RateLimitItemPerSecond(calls, seconds)


def take(item: RateLimitItem | None, *key: str) -> float | None:
    """Count one hit against `item` for `key`. None: allowed. A number: refused; retry after that
    many seconds (at least 1)."""
    if item is None:
        return None
    try:
        if limiter().hit(item, "portcullis", *key):
            return None
        reset, _remaining = limiter().get_window_stats(item, "portcullis", *key)
    except Exception:  # noqa: BLE001 - an unreachable Redis must not take the gateway down
        log.warning("rate limit %s not checked: storage unreachable", "/".join(key[:1]), exc_info=True)
        return None
    return float(max(1, math.ceil(reset - time.time())))


def clear(item: RateLimitItem, *key: str) -> None:
    """Forget a key's window (tests, and an operator lifting a limit early)."""
    limiter().clear(item, "portcullis", *key)
