"""Waking waiters when a session ends, across processes.

The process that finishes a session publishes on a channel-layer group; waiters in any replica
subscribe to it and then re-check the database, so a lost message costs at most one tick. With
the in-memory layer (the embedded single process) waiters use the local job future instead.
"""

from __future__ import annotations

import asyncio
import logging
import time

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer

from gateway import runner
from sessions.models import Session

logger = logging.getLogger("portcullis.wakeup")


def _group(session_id) -> str:
    return f"portcullis.session.{session_id}"


def _shared_layer():
    layer = get_channel_layer()
    if layer is None or isinstance(layer, InMemoryChannelLayer):
        return None
    return layer


def notify_session_finished(session_id) -> None:
    layer = _shared_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(_group(session_id), {"type": "session.finished"})
    except Exception:  # waiters re-check the database on their next tick anyway
        logger.warning("could not publish the end of session %s", session_id, exc_info=True)


@database_sync_to_async
def _load(session_id) -> Session:
    return Session.objects.get(pk=session_id)


async def wait_for_final(session_id, timeout: float, *, on_progress=None, progress_every: float = 10.0):
    """Wait until the session is final or `timeout` passes. Returns (session, timed_out).

    `on_progress(elapsed, total)` is awaited about every `progress_every` seconds while waiting.
    """
    start = time.monotonic()
    deadline = start + timeout
    last_progress = start
    layer = _shared_layer()
    channel = None
    if layer is not None:
        channel = await layer.new_channel()
        await layer.group_add(_group(session_id), channel)
    try:
        while True:
            session = await _load(session_id)
            now = time.monotonic()
            if session.is_final:
                return session, False
            if now >= deadline:
                return session, True
            if on_progress is not None and now - last_progress >= progress_every:
                last_progress = now
                await on_progress(now - start, timeout)
            step = min(deadline - now, progress_every - (now - last_progress), 5.0)
            step = max(step, 0.01)
            future = runner.local_future(str(session_id))
            if future is not None:
                await asyncio.wait({asyncio.wrap_future(future)}, timeout=step)
            elif channel is not None:
                try:
                    await asyncio.wait_for(layer.receive(channel), timeout=step)
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(min(step, 0.25))
    finally:
        if channel is not None:
            await layer.group_discard(_group(session_id), channel)
