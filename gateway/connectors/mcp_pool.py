"""Long-lived upstream MCP sessions, pooled per connection, on one event loop per process.

Opening an upstream session per call costs a process start (stdio) or a TCP connect, TLS and an
`initialize` exchange (Streamable HTTP). Instead every upstream exchange of the process runs on one
event loop thread ("portcullis-upstream"), where each connection keeps up to
`UPSTREAM_POOL_SIZE` connected client sessions. A session serves many calls, concurrently (JSON-RPC
ids keep them apart); a new one is opened only when every open one is busy and the bound allows.

* A stdio server stays running between calls; if it dies (its pipe closes), the session is seen
  closed at the next borrow and a new process is started.
* Any failed exchange retires its session (no new calls; closed when its last call ends), so the
  next call starts afresh instead of reusing a broken stream. A call already sent when its session
  broke is not retried: the upstream may have run it.
* Sessions idle longer than `UPSTREAM_POOL_IDLE_SECONDS` are closed; a key is the connection plus a
  digest of its settings and limits, so an edited connection never reuses the old session.

An anyio context manager must be exited by the task that entered it, so each session has an owner
task that enters the client and waits for its stop signal; calls borrow the connected client from
other tasks. `UPSTREAM_POOL_SIZE=0` turns pooling off (a fresh session per call, as before).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from django.conf import settings

from governance.errors import ConnectorError

logger = logging.getLogger("portcullis.upstream")


class _Session:
    """One connected upstream client, owned by a task of the pool's loop."""

    def __init__(self, key: str):
        self.key = key
        self.client: Any = None
        self.in_flight = 0
        self.last_used = time.monotonic()
        self.retired = False
        self.opening = True
        self.error: BaseException | None = None
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def open(self, opener: Callable[[], AbstractAsyncContextManager], timeout: float) -> None:
        self._task = asyncio.get_running_loop().create_task(self._own(opener), name=f"upstream {self.key}")
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except BaseException:
            self.close()
            raise
        finally:
            self.opening = False
        if self.client is None:
            raise self.error or ConnectorError("the upstream session could not be opened")

    async def _own(self, opener) -> None:
        try:
            async with opener() as client:
                self.client = client
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:  # noqa: BLE001 - kept for the borrower, never raised in the loop
            self.error = exc
        finally:
            self.retired = True
            self._ready.set()

    @property
    def usable(self) -> bool:
        if self.retired or self.client is None or self._task is None or self._task.done():
            return False
        # The SDK's dispatcher marks itself closed when the transport ended (a stdio server that
        # exited, a stream that broke): nothing can be sent on it any more.
        dispatcher = getattr(getattr(self.client, "session", None), "_dispatcher", None)
        return not getattr(dispatcher, "_closed", False)

    def retire(self) -> None:
        self.retired = True
        if self.in_flight == 0:
            self.close()

    def close(self) -> None:
        self.retired = True
        self._stop.set()


class UpstreamPool:
    def __init__(self):
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._sessions: dict[str, list[_Session]] = {}
        self._opening: dict[str, asyncio.Lock] = {}

    # --- the loop ------------------------------------------------------------------------------
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="portcullis-upstream", daemon=True)
                thread.start()
                self._loop = loop
            return self._loop

    def submit(self, coro: Coroutine) -> concurrent.futures.Future:
        """Run `coro` on the pool's loop; its future (cancel it to cancel the coroutine)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop())

    # --- sessions ------------------------------------------------------------------------------
    def _sweep(self, now: float) -> None:
        idle = float(settings.UPSTREAM_POOL_IDLE_SECONDS)
        for key in list(self._sessions):
            kept = []
            for session in self._sessions[key]:
                if session.opening:  # its borrower holds it
                    kept.append(session)
                elif session.in_flight == 0 and (not session.usable or now - session.last_used > idle):
                    session.close()
                else:
                    kept.append(session)
            if kept:
                self._sessions[key] = kept
            else:
                del self._sessions[key]
                self._opening.pop(key, None)

    @asynccontextmanager
    async def borrow(
        self, key: str, opener: Callable[[], AbstractAsyncContextManager], *, size: int, timeout: float
    ) -> AsyncIterator[Any]:
        """A connected client for `key` (on the pool's loop): the least busy open session, or a new
        one while there are fewer than `size`. A failure inside retires the session."""
        self._sweep(time.monotonic())
        sessions = self._sessions.setdefault(key, [])
        usable = [s for s in sessions if s.usable]
        session = min(usable, key=lambda s: s.in_flight) if usable else None
        if session is None or (session.in_flight and len(sessions) < size):
            lock = self._opening.setdefault(key, asyncio.Lock())
            async with lock:  # one opening at a time per key: a burst does not start N processes
                usable = [s for s in sessions if s.usable]
                idle = [s for s in usable if s.in_flight == 0]
                if idle:
                    session = idle[0]
                elif usable and len(sessions) >= size:
                    session = min(usable, key=lambda s: s.in_flight)
                else:
                    session = _Session(key)
                    sessions.append(session)
                    try:
                        await session.open(opener, timeout)
                    except BaseException:
                        sessions.remove(session)
                        raise
        session.in_flight += 1
        try:
            yield session.client
        except BaseException:
            session.retire()
            raise
        finally:
            session.in_flight -= 1
            session.last_used = time.monotonic()
            if session.retired and session.in_flight == 0:
                session.close()

    def open_sessions(self, key_prefix: str = "") -> int:
        """How many usable sessions the pool holds (for tests and serverinfo)."""
        return sum(
            1
            for key, sessions in self._sessions.items()
            if key.startswith(key_prefix)
            for s in sessions
            if s.usable
        )

    def close_all(self) -> None:
        """Close every session (stdio servers exit); waits for the owners briefly."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        async def close():
            tasks = []
            for sessions in self._sessions.values():
                for session in sessions:
                    session.close()
                    if session._task is not None:
                        tasks.append(session._task)
            self._sessions.clear()
            self._opening.clear()
            if tasks:
                await asyncio.wait(tasks, timeout=10)

        try:
            asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=15)
        except Exception:  # shutting down: nothing to report to
            logger.warning("closing the upstream sessions failed", exc_info=True)


POOL = UpstreamPool()
