"""Waking waiters when a session ends or its analysis is stored, across processes.

The process that finishes a session publishes on a channel-layer group; waiters in any replica
subscribe to it and then re-check the database, so a lost message costs at most one tick. A
waiter in the process that runs the session waits on the job's future instead, and subscribes
to nothing. Publishing happens on one long-lived event loop per process, off the job's path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer

from sessions.models import Analysis, Session

logger = logging.getLogger("portcullis.wakeup")


SUBSCRIBE_TIMEOUT = 2.0  # a Redis that does not answer this fast is treated as down


def _no_local_future(session_id) -> Future | None:
    return None


# The job future of a session running in this process, if any. The exec engine's runner (a layer
# above) registers its lookup when it loads (`register_local_futures`); until then nothing runs here.
_local_future: Callable[[str], Future | None] = _no_local_future


def register_local_futures(lookup: Callable[[str], Future | None]) -> None:
    """Called once by `gateway.runner`: where a waiter finds the future of a job of this process."""
    global _local_future
    _local_future = lookup


def _group(session_id) -> str:
    return f"portcullis.session.{session_id}"


def _analysis_group(session_id) -> str:
    return f"portcullis.analysis.{session_id}"


def _shared_layer():
    layer = get_channel_layer()
    if layer is None or isinstance(layer, InMemoryChannelLayer):
        return None
    return layer


class _Publisher:
    """One background event loop per process that sends the wake-ups (one Redis pool, no new loop
    and connection per message, and the finishing job does not wait for the publish)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = None

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="portcullis-wakeup", daemon=True).start()
                self._loop, self._pid = loop, os.getpid()
            return self._loop

    def publish(self, layer, group: str, kind: str = "session.finished") -> None:
        future = asyncio.run_coroutine_threadsafe(
            layer.group_send(group, {"type": kind}), self._ensure_loop()
        )
        future.add_done_callback(_log_failure)


def _log_failure(future) -> None:
    if future.exception() is not None:  # waiters re-check the database on their next tick anyway
        logger.warning("could not publish a session's end: %r", future.exception())


_publisher = _Publisher()


def notify_session_finished(session_id) -> None:
    layer = _shared_layer()
    if layer is not None:
        _publisher.publish(layer, _group(session_id))


def notify_analysis_ready(session_id) -> None:
    layer = _shared_layer()
    if layer is not None:
        _publisher.publish(layer, _analysis_group(session_id), "analysis.ready")


@database_sync_to_async
def _load(session_id) -> Session:
    # With its analysis (if any), so the envelope can carry it without another query.
    return Session.objects.select_related("analysis", "review").get(pk=session_id)


async def _receive(layer, channel, timeout: float) -> None:
    try:
        await asyncio.wait_for(layer.receive(channel), timeout=timeout)
    except TimeoutError:
        pass
    except Exception:  # a Redis hiccup: fall back to the database re-check of the next tick
        logger.warning("channel layer receive failed; polling instead", exc_info=True)
        await asyncio.sleep(min(timeout, 1.0))


async def _wait_until(
    load, done, group: str, timeout: float, *, local_key=None, on_progress=None, progress_every=10.0
):
    """Await `load()` until `done(value)` or `timeout`. Returns (last value, timed_out).

    Wakes on the job's local future when `local_key` runs in this process, else on the channel
    layer `group` (subscribing only when needed, then re-checking so nothing in between is
    missed), with a database re-check after every wake-up and at least every 5 s; with no shared
    layer (embedded mode) it re-checks four times a second. `on_progress(elapsed, total)` is
    awaited about every `progress_every` seconds.
    """
    start = time.monotonic()
    deadline = start + timeout
    last_progress = start
    layer, channel = None, None
    subscribe_failed = False
    try:
        while True:
            now = time.monotonic()
            future = _local_future(local_key) if local_key else None
            value = None
            if future is not None:
                # Runs in this process: its future resolves right after the record is final, with
                # the final record itself (no reload needed).
                step = max(min(deadline - now, progress_every - (now - last_progress)), 0.01)
                await asyncio.wait({asyncio.wrap_future(future)}, timeout=step)
                if future.done() and not future.cancelled() and future.exception() is None:
                    finished = future.result()
                    value = finished if finished is not None and done(finished) else None
            if value is None:
                value = await load()
            now = time.monotonic()
            if done(value):
                return value, False
            if now >= deadline:
                return value, True
            if on_progress is not None and now - last_progress >= progress_every:
                last_progress = now
                await on_progress(now - start, timeout)
            if local_key and _local_future(local_key) is not None:
                continue
            step = max(min(deadline - now, progress_every - (now - last_progress), 5.0), 0.01)
            if channel is None and not subscribe_failed and _shared_layer() is not None:
                try:
                    layer = _shared_layer()
                    channel = await asyncio.wait_for(layer.new_channel(), timeout=SUBSCRIBE_TIMEOUT)
                    await asyncio.wait_for(layer.group_add(group, channel), timeout=SUBSCRIBE_TIMEOUT)
                except Exception:  # Redis is away: poll the database instead, never fail the wait
                    logger.warning("could not subscribe to %s; polling the database instead", group)
                    channel, subscribe_failed = None, True
                continue
            if channel is not None:
                await _receive(layer, channel, step)
            else:
                # Embedded mode re-checks four times a second; without Redis, once a second.
                await asyncio.sleep(min(step, 1.0 if subscribe_failed else 0.25))
    finally:
        if channel is not None:
            try:
                await asyncio.wait_for(layer.group_discard(group, channel), timeout=SUBSCRIBE_TIMEOUT)
            except Exception:
                logger.warning("could not leave a wake-up group", exc_info=True)


async def wait_for_final(session_id, timeout: float, *, on_progress=None, progress_every: float = 10.0):
    """Wait until the session is final (or waits for a review) or `timeout` passes. Returns
    (session, timed_out)."""
    return await _wait_until(
        lambda: _load(session_id),
        # A session waiting for its review is not running: answer at once (reviews_wait waits for that).
        lambda session: session.is_final or session.status == "pending_review",
        _group(session_id),
        timeout,
        local_key=str(session_id),
        on_progress=on_progress,
        progress_every=progress_every,
    )


@database_sync_to_async
def _load_analysis(session_id):

    return Analysis.objects.filter(session_id=session_id).first()


async def wait_for_analysis(session_id, timeout: float, *, on_progress=None, progress_every: float = 10.0):
    """Wait until the session's analysis exists or `timeout` passes. Returns (analysis or None, timed_out).

    Wakes on the `portcullis.analysis.<id>` group, published by `analysis_run` on commit.
    """
    return await _wait_until(
        lambda: _load_analysis(session_id),
        lambda analysis: analysis is not None,
        _analysis_group(session_id),
        timeout,
        on_progress=on_progress,
        progress_every=progress_every,
    )


def _review_group(review_id) -> str:
    return f"portcullis.review.{review_id}"


def notify_review_changed(review_id) -> None:
    layer = _shared_layer()
    if layer is not None:
        _publisher.publish(layer, _review_group(review_id), "review.changed")


async def wait_for_review(
    load,
    review_id,
    timeout: float,
    *,
    status: str = "PENDING",
    on_progress=None,
    progress_every: float = 10.0,
):
    """Wait until `load()` (the review) is no longer in `status` or `timeout` passes. Returns
    (review, timed_out). Wakes on the `portcullis.review.<id>` group, published by every transition
    on commit."""
    return await _wait_until(
        load,
        lambda review: review.status != status,
        _review_group(review_id),
        timeout,
        on_progress=on_progress,
        progress_every=progress_every,
    )
