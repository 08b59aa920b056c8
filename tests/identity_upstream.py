"""An upstream MCP server that checks who is calling, for the tests of outbound authentication.

    python -m tests.identity_upstream PORT jwt JWKS_URL AUDIENCE ISSUER
        Every request to /mcp must carry `Authorization: Bearer <JWT>` that verifies against the JWKS
        fetched over HTTP from JWKS_URL (the gateway's /.well-known/jwks.json), with `aud` AUDIENCE,
        `iss` ISSUER, a current `exp`/`nbf`, and a `jti`; anything else gets 401. The claims of
        every accepted request and the reason of every refusal are kept.

    python -m tests.identity_upstream PORT oauth CLIENT_ID CLIENT_SECRET EXPIRES_IN
        Also a stand-in OAuth 2.0 authorization server: POST /token speaks RFC 6749 §4.4 (grant_type
        client_credentials, client authentication by HTTP Basic per §2.3.1 or form fields) and
        issues opaque bearer tokens living EXPIRES_IN seconds. /mcp accepts only a live token it
        issued.

Test-only control endpoints: GET /state (what was seen), POST /control {"fail_token_endpoint": bool,
"hang_token_endpoint": bool, "expire_all": bool}. Tools: echo (text back), seen (the identity of this call: claims or token).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import sys
import time
from urllib.parse import unquote

import httpx2
import uvicorn
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry
from mcp.server.lowlevel import Server
from mcp.types import CallToolResult, ListToolsResult, TextContent, Tool
from starlette.requests import Request
from starlette.responses import JSONResponse

STATE: dict = {
    "accepted": [],  # claims (jwt) or tokens (oauth) of accepted requests
    "refused": [],  # reasons
    "issued": [],  # tokens issued by /token
    "token_requests": 0,
    "fail_token_endpoint": False,
    "hang_token_endpoint": False,  # the token endpoint answers nothing until this is cleared
    "tool_calls": [],  # (tool, identity) of each tools/call
}
TOKENS: dict[str, float] = {}  # token -> expiry (time.time())
_counter = itertools.count(1)
CONFIG: dict = {}
_JWKS: dict = {}
_RELEASE: dict = {}  # "event": set when a hanging token endpoint may answer again


def _tools() -> list[Tool]:
    obj = {"type": "object"}
    return [
        Tool(
            name="echo",
            description="Echo the text back.",
            input_schema={"type": "object", "properties": {"text": {"type": "string"}}},
        ),
        Tool(name="seen", description="Who the upstream saw calling.", input_schema=obj),
    ]


async def list_tools(ctx, params) -> ListToolsResult:
    return ListToolsResult(tools=_tools())


def _identity(ctx):
    request = getattr(ctx, "request", None)
    return getattr(getattr(request, "state", None), "identity", None)


async def call_tool(ctx, params) -> CallToolResult:
    identity = _identity(ctx)
    STATE["tool_calls"].append([params.name, identity])
    if params.name == "echo":
        text = str((params.arguments or {}).get("text", ""))
        return CallToolResult(content=[TextContent(type="text", text=text)])
    if params.name == "seen":
        return CallToolResult(
            content=[TextContent(type="text", text=json.dumps(identity))],
            structured_content={"identity": identity},
        )
    return CallToolResult(content=[TextContent(type="text", text="unknown tool")], is_error=True)


async def _jwks(refresh: bool) -> KeySet:
    if refresh or not _JWKS:
        async with httpx2.AsyncClient(timeout=10) as http:
            response = await http.get(CONFIG["jwks_url"])
            response.raise_for_status()
            _JWKS["set"] = KeySet.import_key_set(response.json())
    return _JWKS["set"]


async def _verify_jwt(token: str) -> dict:
    """The claims of a valid token; ValueError naming why not."""
    for attempt in (False, True):  # an unknown kid: fetch the JWKS again once (rotation)
        try:
            decoded = jwt.decode(token, await _jwks(refresh=attempt), algorithms=["ES256", "RS256"])
            break
        except JoseError as exc:
            if attempt or "kid" not in str(exc).lower():
                raise ValueError(f"signature: {exc.error}") from None
        except (ValueError, KeyError) as exc:
            if attempt:
                raise ValueError(f"token: {exc}") from None
    registry = JWTClaimsRegistry(
        leeway=0,
        iss={"essential": True, "value": CONFIG["issuer"]},
        aud={"essential": True, "value": CONFIG["audience"]},
        exp={"essential": True},
        sub={"essential": True},
        jti={"essential": True},
    )
    try:
        registry.validate(decoded.claims)
    except JoseError as exc:
        raise ValueError(f"claims: {exc.error} {exc.description or ''}".strip()) from None
    return decoded.claims


async def _token_endpoint(scope, receive, send) -> None:
    request = Request(scope, receive)
    STATE["token_requests"] += 1
    if STATE["hang_token_endpoint"]:
        release = _RELEASE.setdefault("event", asyncio.Event())
        await release.wait()
    if STATE["fail_token_endpoint"]:
        await JSONResponse({"error": "temporarily_unavailable"}, status_code=503)(scope, receive, send)
        return
    form = await request.form()
    client_id = client_secret = None
    auth = request.headers.get("authorization", "")
    if auth.startswith("Basic "):
        try:
            decoded = base64.b64decode(auth[6:]).decode()
            client_id, _, client_secret = decoded.partition(":")
            client_id, client_secret = unquote(client_id), unquote(client_secret)
        except ValueError:
            pass
    else:
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
    if form.get("grant_type") != "client_credentials":
        await JSONResponse({"error": "unsupported_grant_type"}, status_code=400)(scope, receive, send)
        return
    if client_id != CONFIG["client_id"] or client_secret != CONFIG["client_secret"]:
        await JSONResponse({"error": "invalid_client"}, status_code=401)(scope, receive, send)
        return
    token = f"issued-{next(_counter)}-{time.time_ns()}"
    TOKENS[token] = time.time() + CONFIG["expires_in"]
    STATE["issued"].append({"token": token, "scope": form.get("scope"), "audience": form.get("audience")})
    body = {"access_token": token, "token_type": "Bearer", "expires_in": CONFIG["expires_in"]}
    if form.get("scope"):
        body["scope"] = form.get("scope")
    response = JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})
    await response(scope, receive, send)


async def _control(scope, receive, send) -> None:
    request = Request(scope, receive)
    if request.method == "POST":
        body = await request.json()
        if "fail_token_endpoint" in body:
            STATE["fail_token_endpoint"] = bool(body["fail_token_endpoint"])
        if "hang_token_endpoint" in body:
            STATE["hang_token_endpoint"] = bool(body["hang_token_endpoint"])
            if body["hang_token_endpoint"]:
                _RELEASE["event"] = asyncio.Event()
            elif "event" in _RELEASE:
                _RELEASE["event"].set()
        if body.get("expire_all"):
            for token in TOKENS:
                TOKENS[token] = 0.0
    await JSONResponse(STATE)(scope, receive, send)


def build(mode: str):
    server = Server("identity-upstream", on_list_tools=list_tools, on_call_tool=call_tool)
    app = server.streamable_http_app(streamable_http_path="/mcp", stateless_http=True)

    async def guarded(scope, receive, send):
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/token" and mode == "oauth":
            await _token_endpoint(scope, receive, send)
            return
        if path in ("/state", "/control"):
            await _control(scope, receive, send)
            return
        auth = dict(scope.get("headers") or []).get(b"authorization", b"").decode()
        token = auth[7:] if auth.startswith("Bearer ") else ""
        try:
            if not token:
                raise ValueError("no bearer token")
            if mode == "jwt":
                identity = await _verify_jwt(token)
            else:
                if TOKENS.get(token, 0.0) <= time.time():
                    raise ValueError("unknown or expired access token")
                identity = {"token": token}
        except ValueError as exc:
            STATE["refused"].append(str(exc))
            await JSONResponse({"error": "invalid_token", "reason": str(exc)}, status_code=401)(
                scope, receive, send
            )
            return
        STATE["accepted"].append(identity)
        scope.setdefault("state", {})["identity"] = identity
        await app(scope, receive, send)

    return guarded


if __name__ == "__main__":
    port, mode = int(sys.argv[1]), sys.argv[2]
    if mode == "jwt":
        CONFIG.update(jwks_url=sys.argv[3], audience=sys.argv[4], issuer=sys.argv[5])
    else:
        CONFIG.update(client_id=sys.argv[3], client_secret=sys.argv[4], expires_in=int(sys.argv[5]))
    uvicorn.run(build(mode), host="127.0.0.1", port=port, log_level="warning")
