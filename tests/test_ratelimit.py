"""gateway.ratelimit: `take` (sync callers) and `take_async` (the MCP checks on the event loop)
count against the same windows, and a Redis that cannot be reached skips the limit with a
warning instead of failing or hanging the call."""

from __future__ import annotations

import asyncio
import socket
import uuid
import weakref

import pytest
import redis
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from gateway import ratelimit


def _key() -> str:
    return "test-" + uuid.uuid4().hex[:12]


def test_take_and_take_async_share_one_window_in_redis(settings):
    if not settings.REDIS_URL:
        pytest.skip("needs Redis (REDIS_URL)")
    item = ratelimit.parse_rate("3/minute", "TEST_RATE")
    key = _key()
    try:
        assert ratelimit.take(item, "test", key) is None
        assert asyncio.run(ratelimit.take_async(item, "test", key)) is None
        assert ratelimit.take(item, "test", key) is None
        # The fourth call in the minute is refused whichever way it is made.
        retry = asyncio.run(ratelimit.take_async(item, "test", key))
        assert retry is not None and 1 <= retry <= 60
        assert ratelimit.take(item, "test", key) is not None
        stored = redis.Redis.from_url(settings.REDIS_URL).keys(f"*{key}*")
        assert len(stored) == 1 and stored[0].startswith(b"LIMITS:")
        # One clear lifts it for both.
        ratelimit.clear(item, "test", key)
        assert asyncio.run(ratelimit.take_async(item, "test", key)) is None
    finally:
        ratelimit.clear(item, "test", key)


def test_without_redis_take_async_counts_in_memory_inline(settings, monkeypatch):
    settings.REDIS_URL = ""
    monkeypatch.setattr(ratelimit, "_limiter", MovingWindowRateLimiter(MemoryStorage()))
    item = ratelimit.parse_rate("1/minute", "TEST_RATE")
    key = _key()

    def run_without_suspending(coroutine):
        # No I/O and no thread hop: the coroutine finishes on its first step.
        with pytest.raises(StopIteration) as done:
            coroutine.send(None)
        return done.value.value

    assert run_without_suspending(ratelimit.take_async(item, "test", key)) is None
    assert ratelimit.take(item, "test", key) is not None
    assert run_without_suspending(ratelimit.take_async(item, "test", key)) >= 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_redis_allows_the_call_with_a_warning_without_hanging(settings, monkeypatch, caplog):
    settings.REDIS_URL = f"redis://127.0.0.1:{_closed_port()}/0"
    monkeypatch.setattr(ratelimit, "_limiter", None)
    monkeypatch.setattr(ratelimit, "_async_limiters", weakref.WeakKeyDictionary())
    item = ratelimit.parse_rate("1/minute", "TEST_RATE")

    async def twice():
        # Bounded well above the 2 s socket timeouts: a hang fails here instead of stalling.
        return [await asyncio.wait_for(ratelimit.take_async(item, "test", _key()), 10) for _ in range(2)]

    assert asyncio.run(twice()) == [None, None]
    assert ratelimit.take(item, "test", _key()) is None
    warnings = [r for r in caplog.records if r.name == "portcullis.ratelimit" and r.levelname == "WARNING"]
    assert [r.getMessage() for r in warnings] == ["rate limit test not checked: storage unreachable"] * 3
