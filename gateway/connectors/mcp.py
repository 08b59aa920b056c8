"""Upstream MCP servers: one outbound MCP client for a connection of kind `mcp`.

Either a Streamable HTTP `url` (with `headers` and a `bearer_token`, both secret) or, when
command connections are enabled, a stdio `command` (argv; its `env` is secret). The gateway is
the only holder of the upstream credential.

Outbound HTTP goes through `GuardedBackend`, which resolves the host itself, refuses the whole
connection when any address is private, loopback, link-local or otherwise not global (unless the
connection sets `allow_private_network`), and then connects to the address it checked, so a DNS
answer that changes between the check and the connect (rebinding) cannot reach an internal host.
Every call has a deadline (the connection's `timeout_seconds`) and the response body is capped.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import ipaddress
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import anyio
import anyio.lowlevel
import httpcore2
import httpx2
from django.conf import settings
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import PromptsListChanged, ResourcesListChanged, ToolsListChanged
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from gateway import upstream_identity
from gateway.connectors import mcp_auth
from gateway.connectors.base import Connector
from gateway.connectors.mcp_pool import POOL
from gateway.upstream import validate_name_policy, validate_tool_policy
from governance.errors import ConnectorError, InvalidInput

logger = logging.getLogger("portcullis.upstream")

MAX_HEADERS = 32
LIST_CHANGED = {
    "notifications/tools/list_changed": "tool",
    "notifications/resources/list_changed": "resource",
    "notifications/prompts/list_changed": "prompt",
}
LISTEN_EVENTS = (
    (ToolsListChanged, "tool"),
    (ResourcesListChanged, "resource"),
    (PromptsListChanged, "prompt"),
)
LISTEN_RETRY_SECONDS = 5.0
MAX_LIST_PAGES = 20
# Room for the JSON-RPC envelope and SSE framing around a result of the allowed size.
FRAMING_ALLOWANCE = 256 * 1024
# Headers the gateway sets itself; an admin may not override them.
RESERVED_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "mcp-session-id"}

# --- the tool listing between calls -------------------------------------------------------------
# Every upstream tool call checks the tool against its pinned contract, on a listing. Listing before
# each call costs a round trip (and a big listing much more), so a pooled connection's listing is
# kept while the session it is used on hears the upstream's tools/list_changed announcements (a
# handshake-era session whose upstream declared `tools.listChanged`; a 2026-07-28 session with an
# acknowledged `subscriptions/listen` stream for tools), and at most UPSTREAM_LISTING_MAX_AGE_SECONDS.
# An announcement, a dropped listen stream or a closed session ends it (`_forget_tools`); a listing
# fetched while an announcement arrived is not kept (generations). All of it lives on the pool's one
# event loop thread: no locks. The window this leaves (an upstream that changes a tool and does not
# announce it is caught at the next listing, within the max age) is in docs/THREAT_MODEL.md.
_HEARS_TOOLS: set[int] = set()  # id() of pooled clients that deliver tools/list_changed
_TOOL_LISTINGS: dict[str, tuple[list, int, float]] = {}  # pool key -> (tools, generation, when)
_LISTING_GENERATION: dict[str, int] = {}
_MAX_KEPT_LISTINGS = 1000


class UpstreamRefused(ConnectorError):
    """The upstream address is not allowed for this connection (nothing was sent)."""


class ResponseTooLarge(ConnectorError):
    pass


def address_refusal(address: str) -> str | None:
    """Why an IP address is refused without `allow_private_network`, or None if it is global."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for label, flag in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("private", ip.is_private),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("unspecified", ip.is_unspecified),
    ):
        if flag:
            return label
    if not ip.is_global:
        return "non-global"
    return None


async def resolve_checked(host: str, port: int, *, allow_private: bool) -> list[str]:
    """Every address `host` resolves to, or UpstreamRefused naming the first one not allowed."""
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConnectorError(f"could not resolve the upstream host {host!r}: {exc.strerror or exc}") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise ConnectorError(f"the upstream host {host!r} has no address")
    if not allow_private:
        for address in addresses:
            reason = address_refusal(address)
            if reason:
                raise UpstreamRefused(
                    f"refused: the upstream host {host!r} resolves to a {reason} address ({address}); "
                    "this connection does not allow private network addresses (allow_private_network)"
                )
    return addresses


class GuardedBackend(httpcore2.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses it has checked itself."""

    def __init__(self, *, allow_private: bool):
        self.allow_private = allow_private
        self.inner = httpcore2.AnyIOBackend()

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            addresses = await resolve_checked(host, port, allow_private=self.allow_private)
        except ConnectorError as exc:
            raise httpcore2.ConnectError(exc.message) from None
        return await self.inner.connect_tcp(
            addresses[0], port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise httpcore2.ConnectError("unix sockets are not allowed for upstream MCP servers")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class _CappedStream(httpx2.AsyncByteStream):
    def __init__(self, stream, cap: int, on_exceeded):
        self.stream, self.cap, self.on_exceeded, self.seen = stream, cap, on_exceeded, 0

    async def __aiter__(self):
        async for chunk in self.stream:
            self.seen += len(chunk)
            if self.seen > self.cap:
                self.on_exceeded(self.seen)
                raise httpx2.ReadError(f"the upstream answer exceeded {self.cap} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self.stream.aclose()


_SSL_CONTEXT = None


def _ssl_context():
    """One verifying TLS context per process: loading the CA bundle costs ~50 ms, per call it would
    dominate the gateway's overhead. An SSLContext is safe to share between connections."""
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        _SSL_CONTEXT = httpx2.create_ssl_context(trust_env=False)
    return _SSL_CONTEXT


class GuardedTransport(httpx2.AsyncHTTPTransport):
    """No proxies from the environment (they would bypass the address check), the guarded
    backend, and a cap on every response body."""

    def __init__(self, *, allow_private: bool, max_response_bytes: int, on_exceeded):
        super().__init__(verify=_ssl_context(), trust_env=False, retries=0)
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=_ssl_context(),
            max_connections=8,
            network_backend=GuardedBackend(allow_private=allow_private),
        )
        self.max_response_bytes = max_response_bytes
        self.on_exceeded = on_exceeded

    async def handle_async_request(self, request):
        response = await super().handle_async_request(request)
        response.stream = _CappedStream(response.stream, self.max_response_bytes, self.on_exceeded)
        return response


_NEGOTIATED: dict[str, tuple] = {}
# Pool key -> bytes seen when a pooled session's answer exceeded the cap (for the failing call's message).
_EXCEEDED: dict[str, int] = {}
MAX_NEGOTIATED = 1024


def _remember(url: str, negotiated: tuple) -> None:
    if len(_NEGOTIATED) >= MAX_NEGOTIATED:
        _NEGOTIATED.clear()
    _NEGOTIATED[url] = negotiated


class MCPConnector(Connector):
    kind = "mcp"
    optional_keys = (
        "url",
        "command",
        "cwd",
        "allow_private_network",
        "tools",
        "approval_hold_seconds",
        "resources",
        "prompts",
        mcp_auth.CC_KEY,
        mcp_auth.JWT_KEY,
    )
    secret_keys = ("headers", "bearer_token", "env", mcp_auth.CC_SECRET)

    # Called on the upstream loop with the kinds ("tool", "resource", "prompt") whose listing the
    # upstream announced changed; set by the pipeline (None: nobody listens).
    on_list_changed: Callable[[frozenset[str]], None] | None = None

    def __init__(
        self, *args, pool_scope: str | None = None, caller=None, connection_name: str = "", **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.exceeded_bytes: int | None = None
        # The connection this connector serves: pooled sessions are kept per connection (None: a
        # fresh session per exchange).
        self.pool_scope = pool_scope
        # Who is calling (`upstream_identity.Caller`), named in the identity JWT of a `gateway_jwt`
        # connection; None: the gateway itself (a connection test).
        self.caller = caller
        self.connection_name = connection_name

    # --- settings ---------------------------------------------------------------------------
    @classmethod
    def validate_values(cls, values: dict) -> None:

        url, command = values.get("url"), values.get("command")
        if (url is None) == (command is None):
            raise InvalidInput(
                "an mcp connection needs exactly one of 'url' (Streamable HTTP) or 'command' (stdio)"
            )
        if url is not None:
            if not isinstance(url, str):
                raise InvalidInput("setting 'url' must be a string")
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise InvalidInput("setting 'url' must be an http:// or https:// URL with a host")
            if parts.username or parts.password:
                raise InvalidInput(
                    "setting 'url' must not carry credentials; use 'headers' or 'bearer_token'"
                )
            for key in ("command", "env", "cwd"):
                if values.get(key) is not None:
                    raise InvalidInput(f"setting {key!r} applies to stdio (command) connections only")
        else:
            if not settings.COMMAND_CONNECTIONS_ENABLED:
                raise InvalidInput(
                    "stdio mcp connections run a command on the gateway host, and command connections are "
                    "disabled on this gateway (PORTCULLIS_COMMAND_CONNECTIONS)"
                )
            if (
                not isinstance(command, list)
                or not command
                or not all(isinstance(a, str) and a for a in command)
            ):
                raise InvalidInput("setting 'command' must be a non-empty list of non-empty strings")
            for key in ("headers", "bearer_token"):
                if values.get(key) is not None:
                    raise InvalidInput(f"setting {key!r} applies to url connections only")
        headers = values.get("headers")
        if headers is not None:
            if not isinstance(headers, dict) or len(headers) > MAX_HEADERS:
                raise InvalidInput(
                    f"setting 'headers' must be an object of at most {MAX_HEADERS} string values"
                )
            for name, value in headers.items():
                if not isinstance(value, str) or not name or any(c in name for c in " :\r\n"):
                    raise InvalidInput("setting 'headers' must map header names to string values")
                if name.lower() in RESERVED_HEADERS or "\n" in value or "\r" in value:
                    raise InvalidInput(f"header {name!r} may not be set")
        token = values.get("bearer_token")
        if token is not None and (not isinstance(token, str) or any(c in token for c in "\r\n ")):
            raise InvalidInput("setting 'bearer_token' must be a string without spaces")
        env = values.get("env")
        if env is not None and (
            not isinstance(env, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
        ):
            raise InvalidInput("setting 'env' must be an object of string values")
        if values.get("cwd") is not None and not isinstance(values["cwd"], str):
            raise InvalidInput("setting 'cwd' must be a string")
        allow = values.get("allow_private_network")
        if allow is not None and not isinstance(allow, bool):
            raise InvalidInput("setting 'allow_private_network' must be true or false")
        hold = values.get("approval_hold_seconds")
        if hold is not None and (isinstance(hold, bool) or not isinstance(hold, int) or not 0 <= hold <= 300):
            raise InvalidInput("setting 'approval_hold_seconds' must be an integer between 0 and 300")
        mcp_auth.validate(values)
        validate_tool_policy(values.get("tools"))
        for setting in ("resources", "prompts"):
            validate_name_policy(values.get(setting), setting)

    # --- running ----------------------------------------------------------------------------
    def _on_exceeded(self, seen: int) -> None:
        self.exceeded_bytes = seen
        if self.pool_scope is not None:  # a pooled session serves other connectors' calls too
            _EXCEEDED[self._pool_key()] = seen

    def _exceeded(self) -> int | None:
        if self.exceeded_bytes is None and self.pool_scope is not None:
            self.exceeded_bytes = _EXCEEDED.pop(self._pool_key(), None)
        return self.exceeded_bytes

    def _pool_key(self) -> str:
        settings_digest = hashlib.sha256(
            json.dumps(
                [self.config, self.secrets, self.limits.timeout_seconds, self.limits.max_output_bytes],
                sort_keys=True,
                default=str,
            ).encode()
        ).hexdigest()
        return f"{self.pool_scope}:{settings_digest}"

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Client]:
        """A connected client for one exchange: a pooled long-lived session (`mcp_pool`) when
        this connector serves a connection and pooling is on, else a fresh one. Must run on the
        pool's loop (`submit`) when pooled."""
        self._refuse_disabled_command()
        credentials = self._client_credentials()
        if credentials is not None:  # a failing token endpoint: a clear error before any session
            await credentials.token()
        # An identity token names one caller and one session: such exchanges get a session of their own.
        per_caller = mcp_auth.JWT_KEY in self.config
        if self.pool_scope is None or settings.UPSTREAM_POOL_SIZE <= 0 or per_caller:
            async with self.client() as client:
                yield client
            return
        async with POOL.borrow(
            self._pool_key(),
            self._pooled_client,
            size=settings.UPSTREAM_POOL_SIZE,
            timeout=float(self.limits.timeout_seconds),
        ) as client:
            yield client

    # --- the upstream's announcements: notifications/{tools,resources,prompts}/list_changed --------
    @asynccontextmanager
    async def _pooled_client(self) -> AsyncIterator[Client]:
        """A long-lived pooled session: the client and a `subscriptions/listen` stream for the
        upstream's list_changed announcements on a 2026-07-28 connection (a handshake-era upstream
        sends them on the connection itself: `_on_message`); they end the kept tool listing and, when
        the pipeline listens (`on_list_changed`), trigger a contract check. Listening has started
        before the client is handed out."""
        async with self.client() as client:
            try:
                if client.protocol_version not in MODERN_PROTOCOL_VERSIONS and self._declares(
                    client, "tools"
                ):  # a handshake-era upstream announces on the session itself (`_on_message`)
                    _HEARS_TOOLS.add(id(client))
                async with anyio.create_task_group() as listening:
                    await listening.start(self._listen, client)
                    try:
                        yield client
                    finally:
                        listening.cancel_scope.cancel()
            finally:
                _HEARS_TOOLS.discard(id(client))
                self._forget_tools()

    @staticmethod
    def _declares(client: Client, capability: str) -> bool:
        return bool(getattr(getattr(client.server_capabilities, capability, None), "list_changed", False))

    def _forget_tools(self) -> None:
        """The kept tool listing of this connection may be stale from now on."""
        if self.pool_scope is None:
            return
        key = self._pool_key()
        _LISTING_GENERATION[key] = _LISTING_GENERATION.get(key, 0) + 1
        _TOOL_LISTINGS.pop(key, None)

    async def list_tools_kept(self, client: Client, *, fresh: bool = False) -> tuple[list, bool]:
        """(the upstream's tools, kept): the listing kept for this pooled connection while it is
        valid (see `_HEARS_TOOLS`), else (a listing fetched now, False), kept for later calls when
        the session hears announcements; `fresh` fetches (and keeps) one in any case. A kept listing
        may be older than the upstream's present one: it must not be recorded as an observation of
        the upstream (gateway/upstream.py::matches_pin)."""
        max_age = float(settings.UPSTREAM_LISTING_MAX_AGE_SECONDS)
        if self.pool_scope is None or max_age <= 0 or id(client) not in _HEARS_TOOLS:
            return await self.list_tools(client), False
        key = self._pool_key()
        generation = _LISTING_GENERATION.get(key, 0)
        kept = _TOOL_LISTINGS.get(key)
        if not fresh and kept is not None and kept[1] == generation and time.monotonic() - kept[2] <= max_age:
            return kept[0], True
        tools = await self.list_tools(client)
        if _LISTING_GENERATION.get(key, 0) == generation and id(client) in _HEARS_TOOLS:
            if len(_TOOL_LISTINGS) >= _MAX_KEPT_LISTINGS:
                _TOOL_LISTINGS.pop(next(iter(_TOOL_LISTINGS)))
            _TOOL_LISTINGS[key] = (tools, generation, time.monotonic())
        return tools, False

    def _announced(self, kinds: frozenset[str]) -> None:
        if "tool" in kinds:
            self._forget_tools()
        if self.on_list_changed is None or not kinds:
            return
        try:
            self.on_list_changed(kinds)
        except Exception:  # a hook that fails must not break the session
            logger.exception("handling an upstream list_changed announcement failed")

    async def _on_message(self, message) -> None:
        """The client's message handler: list_changed notifications of a handshake-era upstream."""
        kind = LIST_CHANGED.get(getattr(message, "method", None) or "")
        if kind is not None:
            self._announced(frozenset({kind}))
        await anyio.lowlevel.checkpoint()

    async def _listen(self, client: Client, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        """Hold a `subscriptions/listen` stream open for the session's life (re-opened when it
        drops); reports started once the first one is acknowledged, or failed, or not offered."""
        started = False
        wanted = {
            kind: self._declares(client, capability)
            for capability, kind in (("tools", "tool"), ("resources", "resource"), ("prompts", "prompt"))
        }
        if client.protocol_version not in MODERN_PROTOCOL_VERSIONS or not any(wanted.values()):
            task_status.started()
            return
        while True:
            try:
                async with client.listen(
                    tools_list_changed=wanted["tool"],
                    resources_list_changed=wanted["resource"],
                    prompts_list_changed=wanted["prompt"],
                ) as subscription:
                    if wanted["tool"]:
                        _HEARS_TOOLS.add(id(client))
                    if not started:
                        started = True
                        task_status.started()
                    async for event in subscription:
                        kinds = {kind for cls, kind in LISTEN_EVENTS if isinstance(event, cls)}
                        self._announced(frozenset(kinds))
            except Exception:  # dropped or refused: the next exchange still checks the contracts
                logger.debug("the upstream's subscriptions/listen stream ended", exc_info=True)
            finally:  # not listening now: what was kept may miss an announcement
                _HEARS_TOOLS.discard(id(client))
                self._forget_tools()
            if not started:
                started = True
                task_status.started()
            await anyio.sleep(LISTEN_RETRY_SECONDS)

    @staticmethod
    def submit(coro) -> concurrent.futures.Future:
        """Run an exchange (a coroutine using `session()`) on the upstream loop of this process."""
        return POOL.submit(coro)

    def _client_credentials(self) -> mcp_auth.ClientCredentials | None:
        cc = self.config.get(mcp_auth.CC_KEY)
        if not cc or "url" not in self.config:
            return None
        allow_private = bool(self.config.get("allow_private_network"))
        return mcp_auth.ClientCredentials(
            cc,
            self.secrets.get(mcp_auth.CC_SECRET) or "",
            transport_factory=lambda cap: GuardedTransport(
                allow_private=allow_private, max_response_bytes=cap, on_exceeded=lambda seen: None
            ),
            # Half the exchange's deadline, so a slow token endpoint is reported as such.
            timeout=max(1.0, self.limits.timeout_seconds / 2),
        )

    def _identity_token(self) -> str:
        spec = self.config[mcp_auth.JWT_KEY]
        return upstream_identity.mint(
            self.caller or upstream_identity.Caller(user_id=None),
            audience=spec["audience"],
            connection=self.connection_name,
            ttl_seconds=spec.get("ttl_seconds"),
        )

    def _refuse_disabled_command(self) -> None:
        if "command" in self.config and not settings.COMMAND_CONNECTIONS_ENABLED:
            raise ConnectorError(
                "command connections are disabled on this gateway (PORTCULLIS_COMMAND_CONNECTIONS)"
            )

    @asynccontextmanager
    async def client(self) -> AsyncIterator[Client]:
        """A new connected MCP client session to the upstream. Errors of the transport and
        protocol become ConnectorError."""
        self._refuse_disabled_command()
        if "command" in self.config:
            argv = self.config["command"]
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
            env.update(self.secrets.get("env") or {})
            params = StdioServerParameters(
                command=argv[0], args=argv[1:], env=env, cwd=self.config.get("cwd") or None
            )
            with open(os.devnull, "w") as errlog:
                from mcp.client.stdio import stdio_client

                async with Client(
                    stdio_client(params, errlog=errlog), mode="auto", message_handler=self._on_message
                ) as client:
                    yield client
            return
        url = self.config["url"]
        parts = urlsplit(url)
        allow_private = bool(self.config.get("allow_private_network"))
        # Checked here first, so a refusal is a clear error before anything is sent.
        await resolve_checked(
            parts.hostname,
            parts.port or (443 if parts.scheme == "https" else 80),
            allow_private=allow_private,
        )
        headers = dict(self.secrets.get("headers") or {})
        if self.secrets.get("bearer_token"):
            headers["Authorization"] = f"Bearer {self.secrets['bearer_token']}"
        if mcp_auth.JWT_KEY in self.config:
            headers["Authorization"] = f"Bearer {self._identity_token()}"
        credentials = self._client_credentials()
        transport = GuardedTransport(
            allow_private=allow_private,
            max_response_bytes=self.limits.max_output_bytes + FRAMING_ALLOWANCE,
            on_exceeded=self._on_exceeded,
        )
        timeout = self.limits.timeout_seconds
        http = httpx2.AsyncClient(
            transport=transport,
            headers=headers,
            auth=mcp_auth.ClientCredentialsAuth(credentials) if credentials is not None else None,
            timeout=httpx2.Timeout(timeout, read=timeout),
            follow_redirects=False,
            trust_env=False,
        )
        # The protocol era the upstream answered with last time: skips the `server/discover` probe
        # (one round trip per call); forgotten when an exchange fails.
        known = _NEGOTIATED.get(url)
        mode, prior = known if known else ("auto", None)
        try:
            async with (
                http,
                Client(
                    streamable_http_client(
                        url, http_client=http, max_sse_event_size=transport.max_response_bytes
                    ),
                    mode=mode,
                    prior_discover=prior,
                    read_timeout_seconds=timeout,
                    cache=None,
                    message_handler=self._on_message,
                ) as client,
            ):
                if known is None:
                    discovered = client.session.discover_result
                    _remember(url, (client.protocol_version, discovered) if discovered else ("legacy", None))
                yield client
        except BaseException:
            _NEGOTIATED.pop(url, None)
            raise

    def describe_failure(self, exc: BaseException) -> str:
        """A short, secret-free reason for a failed upstream exchange."""
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        if self._exceeded() is not None:
            return (
                f"the upstream answer was larger than {self.limits.max_output_bytes} bytes "
                "(this connection's max_output_bytes), so it was refused"
            )
        if isinstance(exc, ConnectorError):
            return exc.message
        if isinstance(exc, TimeoutError):
            return f"the upstream did not answer within {self.limits.timeout_seconds}s"
        if isinstance(exc, MCPError):
            return f"the upstream answered with a protocol error: {str(exc)[:300]}"
        if isinstance(exc, httpx2.ConnectError | OSError):
            text = str(exc).strip() or type(exc).__name__
            return f"could not reach the upstream MCP server: {text.splitlines()[0][:300]}"
        if isinstance(exc, httpx2.HTTPError):
            return f"the upstream exchange failed: {type(exc).__name__}"
        return f"the upstream exchange failed: {type(exc).__name__}"

    async def list_tools(self, client: Client) -> list:
        tools, cursor = [], None
        for _ in range(MAX_LIST_PAGES):
            page = await client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        return tools

    def test(self) -> str:
        return anyio.run(self._test)

    async def _test(self) -> str:
        try:
            with anyio.fail_after(self.limits.timeout_seconds):
                credentials = self._client_credentials()
                if credentials is not None:  # a failing token endpoint: said as such
                    await credentials.token()
                async with self.client() as client:
                    tools = await self.list_tools(client)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a clear message
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            raise ConnectorError(self.describe_failure(exc)) from None
        return f"MCP server with {len(tools)} tool(s)"
