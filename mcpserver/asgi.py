"""Hosting the SDK's app under daphne.

daphne speaks no ASGI lifespan, so nothing would start the SDK's session manager: `MCPStarter`
enters `session_manager.run()` in a background task on the first request (or on lifespan
startup under uvicorn), and daphne's shutdown hook stops it so the process can exit. Each request
runs in its own `ThreadSensitiveContext`, so ORM calls of concurrent MCP requests use separate
threads instead of queueing on one; the threads are reused from a small free list.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext
from channels.db import database_sync_to_async
from django.conf import settings

from gateway import maintenance
from gateway.unavailable import RETRY_AFTER_SECONDS, is_database_unavailable, jsonrpc_body

logger = logging.getLogger("portcullis.mcp")

_sweeping = False  # one sweeper per process, however many MCP apps it serves
MAX_IDLE_THREADS = 32


class _UnavailableGuard:
    """Holds back a 500 the SDK's app starts to send for an exception (Starlette sends a plain-text
    500, then re-raises), so the exception decides the answer: 503 + Retry-After with a JSON-RPC
    error body when the gateway database is away (token checks read it), a JSON-RPC internal error
    otherwise. Every other response passes straight through."""

    def __init__(self, send):
        self._send = send
        self._held: list = []
        self._passed = False  # a response already went out: nothing left to answer with

    async def send(self, message):
        if self._held or (message["type"] == "http.response.start" and message.get("status") == 500):
            self._held.append(message)
            return
        self._passed = True
        await self._send(message)

    async def flush(self):
        for message in self._held:
            await self._send(message)
        self._held = []

    async def fail(self, exc: BaseException):

        if self._passed:
            raise exc
        if is_database_unavailable(exc):
            status, body = 503, jsonrpc_body()
            headers = [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())]
        else:
            logger.error("MCP request failed", exc_info=exc)
            status, body, headers = (
                500,
                jsonrpc_body("internal error; the gateway log has details", -32603),
                [],
            )
        try:
            await self._send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(b"content-type", b"application/json"), *headers],
                }
            )
            await self._send({"type": "http.response.body", "body": body})
        except Exception:  # the client went away
            pass
        self._held = []


class MCPStarter:
    def __init__(self, app, session_manager):
        self.app = app
        self.session_manager = session_manager
        self._lock: asyncio.Lock | None = None
        self._started: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._sweeper: asyncio.Task | None = None
        self._error: BaseException | None = None
        self._idle: list[ThreadPoolExecutor] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        await self.ensure_started()
        # A thread of its own per request (so concurrent requests' ORM calls run in parallel),
        # taken from a free list instead of created and joined every time.
        executor = self._idle.pop() if self._idle else ThreadPoolExecutor(1, thread_name_prefix="mcp-request")
        guard = _UnavailableGuard(send)
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.app(scope, receive, guard.send)
        except Exception as exc:  # the transport's own 500 was held back: answer properly instead
            await guard.fail(exc)
        else:
            await guard.flush()
        finally:
            if len(self._idle) < MAX_IDLE_THREADS:
                self._idle.append(executor)
            else:
                executor.shutdown(wait=False)

    async def ensure_started(self) -> None:
        if self._started is not None and self._started.is_set() and self._error is None:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._started is None:
                self._started = asyncio.Event()
                self._stop = asyncio.Event()
                self._task = asyncio.create_task(self._run(), name="mcp-session-manager")
                # Every replica sweeps lapsed leases and the outbox (gateway.maintenance): recovery needs
                # neither the broker nor one particular process.
                global _sweeping
                if not _sweeping:
                    _sweeping = True
                    self._sweeper = asyncio.create_task(self._sweep_forever(), name="portcullis-sweeper")
        await self._started.wait()
        if self._error is not None:
            raise RuntimeError("the MCP session manager failed to start") from self._error

    async def _run(self) -> None:
        try:
            async with self.session_manager.run():
                self._started.set()
                await self._stop.wait()
        except BaseException as exc:
            self._error = exc
            self._started.set()
            raise

    async def _sweep_forever(self) -> None:

        while True:
            try:
                await database_sync_to_async(maintenance.tick, thread_sensitive=False)(
                    analyses=settings.CELERY_TASK_ALWAYS_EAGER  # else the worker's tick analyses
                )
            except Exception:
                logger.exception("maintenance sweep failed")
            await asyncio.sleep(settings.SWEEP_SECONDS)

    async def shutdown(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._task is None:
            return
        self._stop.set()
        try:
            await self._task
        except BaseException:
            pass

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.ensure_started()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def install_daphne_shutdown_hook(self) -> None:
        """Under daphne (Twisted), stop the manager before the reactor stops, or SIGTERM hangs."""
        if "twisted.internet.reactor" not in sys.modules:
            return
        from twisted.internet import reactor
        from twisted.internet.defer import Deferred

        reactor.addSystemEventTrigger(
            "before", "shutdown", lambda: Deferred.fromFuture(asyncio.ensure_future(self.shutdown()))
        )
