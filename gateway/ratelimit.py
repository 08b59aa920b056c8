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

`take` is for sync code; `take_async` for the event loop (the MCP checks in `gateway.observe`
and `gateway.metrics`, on every call): it talks to Redis with redis-py's asyncio client instead
of hopping to a thread, which cost as much CPU as the check itself. Both run the library's same
Lua script on the same keys, so they count against the same windows.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
import weakref

from django.conf import settings
from limits import RateLimitItem, RateLimitItemPerSecond, parse
from limits.aio.storage import RedisStorage as AsyncRedisStorage
from limits.aio.strategies import MovingWindowRateLimiter as AsyncMovingWindowRateLimiter
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from gateway.configerror import ImproperlyConfiguredEnv

log = logging.getLogger("portcullis.ratelimit")

_limiter: MovingWindowRateLimiter | None = None
_lock = threading.Lock()
# An asyncio Redis client belongs to the loop it was first used on: one limiter per running loop
# (daphne has one; tests and `async_to_sync` make more).
_async_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncMovingWindowRateLimiter] = (
    weakref.WeakKeyDictionary()
)

# A Redis that stops answering costs a call at most this (then the limit is skipped), never a hang.
_REDIS_TIMEOUT = 2


def limiter() -> MovingWindowRateLimiter:
    global _limiter
    with _lock:
        if _limiter is None:
            uri = settings.REDIS_URL or "memory://"
            options = {"socket_timeout": _REDIS_TIMEOUT, "socket_connect_timeout": _REDIS_TIMEOUT}
            options = options if settings.REDIS_URL else {}
            _limiter = MovingWindowRateLimiter(storage_from_string(uri, **options))
    return _limiter


def async_limiter() -> AsyncMovingWindowRateLimiter:
    """The running loop's limiter on REDIS_URL (same key prefix and script as `limiter()`'s)."""
    loop = asyncio.get_running_loop()
    found = _async_limiters.get(loop)
    if found is None:
        with _lock:  # loops in other threads (async_to_sync) may be adding theirs
            # The client's connections hold their loop, so a closed loop's entry is not dropped
            # by the weak reference alone.
            for old in [old for old in _async_limiters if old.is_closed()]:
                del _async_limiters[old]
            uri = f"async+{settings.REDIS_URL}"
            storage = AsyncRedisStorage(
                uri,
                implementation="redispy",
                socket_timeout=_REDIS_TIMEOUT,
                socket_connect_timeout=_REDIS_TIMEOUT,
            )
            found = _async_limiters[loop] = AsyncMovingWindowRateLimiter(storage)
    return found


def parse_rate(value: str, setting: str) -> RateLimitItem | None:
    """`600/minute`, `10/second`, `5000 per hour`; empty or `off` turns the limit off."""
    value = (value or "").strip()
    if value.lower() in ("", "off", "0"):
        return None
    try:
        return _parse(value)
    except ValueError:
        raise ImproperlyConfiguredEnv(f"{setting} must look like 600/minute, not {value!r}") from None


@functools.lru_cache(maxsize=64)
def _parse(value: str) -> RateLimitItem:
    """The per-org limit is read on every MCP tool call: parse each value once (~6 µs each)."""
    return parse(value)


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
    return _retry_after(reset)


async def take_async(item: RateLimitItem | None, *key: str) -> float | None:
    """`take` for code on the event loop, without a thread: the same answer, the same windows.

    Without REDIS_URL the window is in this process's memory and `take` does no I/O: it runs
    inline."""
    if item is None:
        return None
    if not settings.REDIS_URL:
        return take(item, *key)
    try:
        limits = async_limiter()
        if await limits.hit(item, "portcullis", *key):
            return None
        reset, _remaining = await limits.get_window_stats(item, "portcullis", *key)
    except Exception:  # noqa: BLE001 - as in `take`
        log.warning("rate limit %s not checked: storage unreachable", "/".join(key[:1]), exc_info=True)
        return None
    return _retry_after(reset)


def _retry_after(reset: float) -> float:
    return float(max(1, math.ceil(reset - time.time())))


def clear(item: RateLimitItem, *key: str) -> None:
    """Forget a key's window (tests, and an operator lifting a limit early); `take` and
    `take_async` share it."""
    limiter().clear(item, "portcullis", *key)
