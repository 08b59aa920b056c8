"""The outermost ASGI layer: a request id, the log context, request metrics, the MCP token limit.

It wraps every HTTP request the gateway serves (Django, /api/mcp, /api/mcp/c/<name>):

* takes the caller's `X-Request-ID` when it is a plain token (letters, digits, `-_.:`, up to 64),
  else makes one, and returns it on the response;
* binds `request_id` and `surface` to the log context (`gateway.logs`) for the request;
* counts the request and its duration per surface once the response is complete (for MCP's
  streamed answers, when the stream ends);
* writes one access line at INFO: method, path without query string (a query may carry OAuth
  codes), status, duration;
* refuses MCP requests over PORTCULLIS_MCP_RATE_PER_TOKEN with 429 and Retry-After, keyed on a
  hash of the presented bearer token, before the transport parses anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid

from django.conf import settings

from gateway import logs, metrics, ratelimit

log = logging.getLogger("portcullis.http")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")


def surface_of(path: str) -> str:
    if path.startswith(("/api/mcp/c/", "/api/mcp/v/")):
        return "mcp_proxy"
    if path.startswith("/api/mcp"):
        return "mcp"
    if path.startswith("/api/"):
        return "rest"
    if path.startswith("/admin/"):
        return "admin"
    if path.startswith(("/oauth/", "/.well-known/")):
        return "oauth"
    if path.startswith("/scim/"):
        return "scim"
    if path in ("/healthz", "/readyz", "/metrics"):
        return "ops"
    if path.startswith("/static/"):
        return "static"
    return "web"


def _header(scope, name: bytes) -> str:
    for key, value in scope.get("headers") or ():
        if key == name:
            return value.decode("latin-1")
    return ""


class RequestObserver:
    def __init__(self, app):
        self.app = app
        self.mcp_rate = ratelimit.parse_rate(settings.MCP_RATE_PER_TOKEN, "PORTCULLIS_MCP_RATE_PER_TOKEN")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        surface = surface_of(path)
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        # The MCP SDK runs tool handlers in tasks of its own: they find the context in the scope.
        scope = {**scope, "portcullis.log": logs.start(request_id=request_id, surface=surface)}
        start = time.monotonic()
        state = {"status": None, "done": False}

        def finish():
            if state["done"]:
                return
            state["done"] = True
            seconds = time.monotonic() - start
            code = state["status"] or 499  # the client went away before an answer
            metrics.HTTP_REQUESTS.labels(surface, f"{code // 100}xx").inc()
            metrics.HTTP_LATENCY.labels(surface).observe(seconds)
            if surface not in ("static", "ops"):
                logs.write(
                    log,
                    logging.INFO,
                    "%s %s %s %.0fms",
                    scope.get("method"),
                    path,
                    code,
                    seconds * 1000,
                    extra={
                        "method": scope.get("method"),
                        "path": path,
                        "status": code,
                        "duration_ms": round(seconds * 1000, 1),
                    },
                )

        async def send_observed(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())],
                }
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                finish()

        try:
            if surface in ("mcp", "mcp_proxy"):
                refused = await self._mcp_limited(scope)
                if refused is not None:
                    return await self._too_many(send_observed, refused)
            await self.app(scope, receive, send_observed)
        finally:
            finish()

    async def _mcp_limited(self, scope) -> float | None:
        if self.mcp_rate is None:
            return None
        auth = _header(scope, b"authorization")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None  # unauthenticated: the transport answers 401
        key = hashlib.sha256(token.strip().encode()).hexdigest()[:32]
        retry = await ratelimit.take_async(self.mcp_rate, "mcp_token", key)
        if retry is not None:
            metrics.RATE_LIMITED.labels("mcp_token").inc()
        return retry

    @staticmethod
    async def _too_many(send, retry_after: float):
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": None,
                "error": {
                    "code": -32000,
                    "message": f"rate limit: too many requests for this token; retry after {int(retry_after)}s",
                },
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"retry-after", str(int(retry_after)).encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def bind_user_middleware(get_response):
    """Django middleware (after AuthenticationMiddleware): the web and admin user in the log context."""

    def middleware(request):
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            logs.bind_actor(user)
        return get_response(request)

    return middleware
