"""Outbound authentication of an mcp connection: who the upstream sees calling.

Exactly one of (or none):

* `bearer_token` (secret): a static `Authorization: Bearer …` (connectors/mcp.py);
* `oauth_client_credentials` {token_url, client_id, scope?, audience?} with the secret
  `oauth_client_secret`: an OAuth 2.0 access token from the token endpoint (RFC 6749 §4.4, client
  authentication with HTTP Basic, §2.3.1), cached per process until shortly before it expires and
  fetched again then, or at once when the upstream answers 401. A token endpoint that fails or is
  slow is a clear ConnectorError (the call is not sent; retry later), bounded by the connection's
  timeout;
* `gateway_jwt` {audience, ttl_seconds?}: a short-lived JWT signed by the gateway naming the caller
  (gateway/upstream_identity.py); the upstream verifies it with the gateway's JWKS.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
import time
import weakref
from urllib.parse import quote, urlsplit

import httpx2

from governance.errors import ConnectorError, InvalidInput

CC_KEY = "oauth_client_credentials"
CC_SECRET = "oauth_client_secret"
JWT_KEY = "gateway_jwt"
CC_FIELDS = {"token_url", "client_id", "scope", "audience"}
JWT_FIELDS = {"audience", "ttl_seconds"}
MAX_TOKEN_ANSWER = 64 * 1024
REFRESH_MARGIN_SECONDS = 30  # a cached token is renewed this long (at most half its life) before expiry


class TokenEndpointError(ConnectorError):
    """The token endpoint did not issue an access token; nothing was sent to the upstream."""


def _short_string(value, where: str, *, maximum: int = 2000) -> str:
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > maximum
        or any(c in value for c in "\r\n")
    ):
        raise InvalidInput(f"{where} must be a non-empty single-line string of at most {maximum} characters")
    return value


def validate(values: dict) -> None:
    """The auth settings of an mcp connection: InvalidInput naming the first problem."""
    chosen = [k for k in ("bearer_token", CC_KEY, JWT_KEY) if values.get(k) is not None]
    if len(chosen) > 1:
        raise InvalidInput(f"choose one outbound authentication: {' or '.join(chosen)}, not both")
    if chosen and values.get("command") is not None:
        raise InvalidInput(f"setting {chosen[0]!r} applies to url connections only")
    cc = values.get(CC_KEY)
    if cc is not None:
        if not isinstance(cc, dict):
            raise InvalidInput(
                f"setting {CC_KEY!r} must be an object: token_url, client_id, scope?, audience?"
            )
        unknown = sorted(set(cc) - CC_FIELDS)
        if unknown:
            raise InvalidInput(
                f"{CC_KEY}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(CC_FIELDS))}"
            )
        url = _short_string(cc.get("token_url"), f"{CC_KEY}.token_url")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
            raise InvalidInput(
                f"{CC_KEY}.token_url must be an http:// or https:// URL with a host, no credentials"
            )
        _short_string(cc.get("client_id"), f"{CC_KEY}.client_id", maximum=500)
        for key in ("scope", "audience"):
            if cc.get(key) is not None:
                _short_string(cc[key], f"{CC_KEY}.{key}")
        secret = values.get(CC_SECRET)
        if secret is None:
            raise InvalidInput(f"{CC_KEY} needs the secret setting {CC_SECRET!r}")
        _short_string(secret, CC_SECRET, maximum=4000)
    elif values.get(CC_SECRET) is not None:
        raise InvalidInput(f"setting {CC_SECRET!r} applies with {CC_KEY!r} only")
    jwt_settings = values.get(JWT_KEY)
    if jwt_settings is not None:
        if not isinstance(jwt_settings, dict):
            raise InvalidInput(f"setting {JWT_KEY!r} must be an object: audience, ttl_seconds?")
        unknown = sorted(set(jwt_settings) - JWT_FIELDS)
        if unknown:
            raise InvalidInput(
                f"{JWT_KEY}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(JWT_FIELDS))}"
            )
        _short_string(jwt_settings.get("audience"), f"{JWT_KEY}.audience", maximum=500)
        ttl = jwt_settings.get("ttl_seconds")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or not 10 <= ttl <= 3600):
            raise InvalidInput(f"{JWT_KEY}.ttl_seconds must be an integer between 10 and 3600")
    if values.get("headers") and any(k.lower() == "authorization" for k in values["headers"]) and chosen:
        raise InvalidInput(f"header 'Authorization' is set by {chosen[0]!r}; do not set it in 'headers' too")


# --- client credentials ------------------------------------------------------------------------

# (token_url, client_id, digest of the secret, scope, audience) -> (access token, refresh at (monotonic))
_TOKENS: dict[tuple, tuple[str, float]] = {}
_TOKENS_LOCK = threading.Lock()
MAX_CACHED_TOKENS = 1024
# One token request at a time per cache key and event loop (the upstream loop serves every pooled
# exchange of the process): concurrent calls on a cold cache wait for the one request.
_FETCHING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class ClientCredentials:
    """The access token of one mcp connection's OAuth client (RFC 6749 §4.4)."""

    def __init__(self, settings_: dict, secret: str, *, transport_factory, timeout: float):
        self.token_url = settings_["token_url"]
        self.client_id = settings_["client_id"]
        self.scope = settings_.get("scope")
        self.audience = settings_.get("audience")
        self.secret = secret
        self.transport_factory = transport_factory
        self.timeout = timeout
        digest = hashlib.sha256(secret.encode()).hexdigest()
        self.cache_key = (self.token_url, self.client_id, digest, self.scope, self.audience)

    def cached(self) -> str | None:
        with _TOKENS_LOCK:
            entry = _TOKENS.get(self.cache_key)
        if entry and time.monotonic() < entry[1]:
            return entry[0]
        return None

    def forget(self, token: str) -> None:
        with _TOKENS_LOCK:
            if _TOKENS.get(self.cache_key, ("",))[0] == token:
                _TOKENS.pop(self.cache_key, None)

    async def token(self) -> str:
        """A valid access token: the cached one, or a new one from the token endpoint."""
        cached = self.cached()
        if cached:
            return cached
        locks = _FETCHING.setdefault(asyncio.get_running_loop(), {})
        async with locks.setdefault(self.cache_key, asyncio.Lock()):
            return self.cached() or await self.fetch()

    async def fetch(self) -> str:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        if self.audience:
            form["audience"] = self.audience
        # RFC 6749 §2.3.1: the client id and secret, form-urlencoded, then HTTP Basic.
        basic = base64.b64encode(
            f"{quote(self.client_id, safe='')}:{quote(self.secret, safe='')}".encode()
        ).decode()
        where = urlsplit(self.token_url).netloc
        try:
            async with httpx2.AsyncClient(
                transport=self.transport_factory(MAX_TOKEN_ANSWER),
                timeout=httpx2.Timeout(self.timeout),
                follow_redirects=False,
                trust_env=False,
            ) as http:
                response = await http.post(
                    self.token_url,
                    data=form,
                    headers={"Authorization": f"Basic {basic}", "Accept": "application/json"},
                )
                body = response.content
        except ConnectorError as exc:
            raise TokenEndpointError(f"the token endpoint {where} is refused: {exc.message}") from None
        except httpx2.TimeoutException:
            raise TokenEndpointError(
                f"the token endpoint {where} did not answer within {self.timeout:g}s; nothing was sent "
                "to the upstream, retry later"
            ) from None
        except httpx2.HTTPError as exc:
            text = (str(exc).strip() or type(exc).__name__).splitlines()[0][:200]
            raise TokenEndpointError(
                f"could not reach the token endpoint {where}: {text}; nothing was sent to the upstream, retry later"
            ) from None
        try:
            answer = response.json() if body else {}
        except ValueError:
            answer = {}
        if response.status_code != 200 or not isinstance(answer, dict):
            error = answer.get("error") if isinstance(answer, dict) else None
            reason = f" ({str(error)[:100]})" if isinstance(error, str) else ""
            raise TokenEndpointError(
                f"the token endpoint {where} answered HTTP {response.status_code}{reason} instead of an access "
                "token; nothing was sent to the upstream"
                + (", retry later" if response.status_code >= 500 or response.status_code == 429 else "")
            )
        token, kind = answer.get("access_token"), str(answer.get("token_type", "")).lower()
        if not isinstance(token, str) or not token or kind != "bearer" or any(c in token for c in "\r\n "):
            raise TokenEndpointError(f"the token endpoint {where} answered without a bearer access token")
        lifetime = answer.get("expires_in")
        lifetime = (
            float(lifetime) if isinstance(lifetime, int | float) and not isinstance(lifetime, bool) else 300.0
        )
        refresh_at = time.monotonic() + max(0.0, lifetime - min(REFRESH_MARGIN_SECONDS, lifetime / 2))
        with _TOKENS_LOCK:
            if len(_TOKENS) >= MAX_CACHED_TOKENS:
                _TOKENS.clear()
            _TOKENS[self.cache_key] = (token, refresh_at)
        return token


class ClientCredentialsAuth(httpx2.Auth):
    """Every upstream request carries the current access token; a 401 answer renews it once."""

    requires_response_body = False

    def __init__(self, credentials: ClientCredentials):
        self.credentials = credentials

    async def async_auth_flow(self, request):
        token = await self.credentials.token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            self.credentials.forget(token)
            token = await self.credentials.fetch()
            request.headers["Authorization"] = f"Bearer {token}"
            yield request

    def sync_auth_flow(self, request):  # pragma: no cover - the connector is async only
        raise RuntimeError("client credentials are used by the async client only")


def reset_cache() -> None:
    """Forget every cached access token (tests; an operator rotating a client secret needs no call:
    the secret's digest is part of the cache key)."""
    with _TOKENS_LOCK:
        _TOKENS.clear()
