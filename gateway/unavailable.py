"""When the gateway's own database is away: a clear, retryable answer on every surface, never a
plain-text 500 and never a hang.

    REST and web pages  -> HTTP 503, Retry-After, the REST API's JSON error body (`handler500`)
    MCP tool calls      -> a JSON-RPC error (code -32000) saying to retry (mcpserver.server)
    MCP transport, auth -> HTTP 503, Retry-After, a JSON-RPC error body (mcpserver.asgi)

The pool's checkout timeout (PORTCULLIS_DB_POOL_TIMEOUT) bounds how long a request waits for a
connection before this answer; recovery needs no restart: the next request connects again.
"""

from __future__ import annotations

import json
import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse

RETRY_AFTER_SECONDS = 5
MESSAGE = "the gateway's database is unavailable; nothing was changed by this request. Retry in a few seconds"
JSONRPC_CODE = -32000  # "server error" in JSON-RPC's implementation-defined range


def _types() -> tuple:
    types: list = [OperationalError, InterfaceError]
    try:
        import psycopg
        from psycopg_pool import PoolTimeout

        types += [psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout]
    except ImportError:  # the embedded default runs without psycopg
        pass
    return tuple(types)


_UNAVAILABLE = _types()


def is_database_unavailable(exc: BaseException | None) -> bool:
    """Whether `exc` (or what caused it) says the database could not be reached."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, _UNAVAILABLE):
            return True
        if isinstance(exc, BaseExceptionGroup) and any(is_database_unavailable(e) for e in exc.exceptions):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def jsonrpc_body(message: str = MESSAGE, code: int = JSONRPC_CODE) -> bytes:
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": None,
            "error": {"code": code, "message": message, "data": {"retry_after_seconds": RETRY_AFTER_SECONDS}},
        }
    ).encode()


def handler500(request):
    """Django's last resort: 503 + Retry-After when the database is away, else a JSON (API) or
    short text 500 — never a traceback."""
    exc = sys.exc_info()[1]
    api = request.path.startswith("/api/")
    if is_database_unavailable(exc):
        if api:
            response = JsonResponse({"error": {"code": "unavailable", "message": MESSAGE}}, status=503)
        else:
            response = HttpResponse(MESSAGE + ".\n", status=503, content_type="text/plain; charset=utf-8")
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    if api:
        return JsonResponse(
            {"error": {"code": "internal", "message": "internal error; the gateway log has details"}},
            status=500,
        )
    return HttpResponse(
        "internal error; the gateway log has details\n", status=500, content_type="text/plain"
    )
