"""Who is calling, as an upstream MCP server sees it: OAuth 2.0 client credentials (with a stand-in
authorization server speaking RFC 6749 §4.4) and the gateway's identity JWT, verified by the upstream
against the gateway's JWKS fetched over HTTP. Both upstreams are real servers on loopback
(tests/identity_upstream.py); the gateway is daphne serving gateway.asgi."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.conf import settings
from joserfc import jwt
from joserfc.jwk import ECKey

from gateway import upstream_identity
from gateway.connectors import mcp_auth
from gateway.models import Connection
from gateway.services import connection_create_headless, connection_get, connection_to_dict
from governance.errors import InvalidInput
from sessions.models import Session, SessionStatus
from tests.test_upstream_mcp import ROOT, _free_port, call, proxy

AUDIENCE = "https://tickets.upstream.test"
CLIENT_ID = "portcullis-gateway"
CLIENT_SECRET = "cc-s3cret-value-never-echoed"


@contextmanager
def identity_upstream(*args: str):
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.identity_upstream", str(port), *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx2.get(f"{base}/state", timeout=1)
            break
        except httpx2.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("the identity upstream did not start") from None
            time.sleep(0.1)
    try:
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def state(base: str) -> dict:
    return httpx2.get(f"{base}/state", timeout=5).json()


def control(base: str, **body) -> dict:
    return httpx2.post(f"{base}/control", json=body, timeout=5).json()


@pytest.fixture(scope="module")
def jwt_upstream(gateway_server):
    with identity_upstream(
        "jwt", f"{gateway_server.url}/.well-known/jwks.json", AUDIENCE, gateway_server.url
    ) as base:
        yield base


@pytest.fixture
def as_gateway(settings, gateway_server):
    """Tokens minted in this process name the live gateway as their issuer, like every replica does."""
    settings.PUBLIC_BASE_URL = gateway_server.url


def jwt_connection(org, base, *, name="ident", audience=AUDIENCE, **extra):
    return connection_create_headless(
        org=org,
        name=name,
        kind="mcp",
        settings={
            "url": f"{base}/mcp",
            "allow_private_network": True,
            "gateway_jwt": {"audience": audience, **extra},
        },
        options={},
    )


def oauth_connection(org, base, *, name="cc", secret=CLIENT_SECRET, scope="tickets:read", options=None):
    return connection_create_headless(
        org=org,
        name=name,
        kind="mcp",
        settings={
            "url": f"{base}/mcp",
            "allow_private_network": True,
            "oauth_client_credentials": {
                "token_url": f"{base}/token",
                "client_id": CLIENT_ID,
                "scope": scope,
                "audience": "tickets",
            },
            "oauth_client_secret": secret,
        },
        options=options or {},
    )


# --- the identity JWT ---------------------------------------------------------------------------


def test_the_gateway_publishes_its_public_keys_only(gateway_server):
    keys = httpx2.get(f"{gateway_server.url}/.well-known/jwks.json", timeout=5).json()["keys"]
    assert [k["kid"] for k in keys] == [k.kid for k in upstream_identity.signing_keys()]
    for key in keys:
        assert key["use"] == "sig" and key["alg"] == "ES256" and key["kty"] == "EC"
        assert "d" not in key  # never the private part


@pytest.mark.live
def test_the_upstream_sees_the_user_groups_org_and_session_it_verified(
    cast, mcp, gateway_server, jwt_upstream
):
    jwt_connection(cast.acme, jwt_upstream)
    refused_before = len(state(jwt_upstream)["refused"])

    async def twice(client):
        await client.list_tools()
        return await client.call_tool("seen", {}), await client.call_tool("seen", {})

    first, second = proxy(gateway_server, cast.bob, "ident", twice)
    assert not first.is_error, first.content[0].text
    claims = first.structured_content["identity"]
    assert claims["sub"] == str(cast.bob.user.pk) and claims["email"] == "bob@acme.test"
    assert claims["groups"] == ["engineering"]
    assert claims["org"] == {"id": str(cast.acme.pk), "name": "acme"}
    assert claims["aud"] == AUDIENCE and claims["iss"] == gateway_server.url and claims["cid"] == "ident"
    assert 0 < claims["exp"] - claims["iat"] <= settings.UPSTREAM_JWT_TTL_SECONDS
    sessions = list(Session.objects.filter(verb="tool", status=SessionStatus.DONE).order_by("started_at"))
    assert [claims["sid"], second.structured_content["identity"]["sid"]] == [str(s.pk) for s in sessions]
    assert claims["jti"] != second.structured_content["identity"]["jti"]  # one token per exchange
    assert state(jwt_upstream)["refused"][refused_before:] == []


@pytest.mark.live
def test_a_token_minted_for_one_audience_is_refused_by_an_upstream_expecting_another(
    cast, mcp, gateway_server, jwt_upstream, as_gateway
):
    jwt_connection(cast.acme, jwt_upstream, name="other", audience="https://other.upstream.test")
    refused_before = len(state(jwt_upstream)["refused"])
    envelope = call(cast.bob, "other", "echo", {"text": "hi"})
    assert envelope["status"] == "failed"
    refused = state(jwt_upstream)["refused"][refused_before:]
    assert refused and all("aud" in reason for reason in refused)
    assert not any(c[0] == "echo" for c in state(jwt_upstream)["tool_calls"])


def _post_initialize(base: str, token: str) -> httpx2.Response:
    return httpx2.post(
        f"{base}/mcp",
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        },
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"},
        timeout=10,
    )


def _caller(cast) -> upstream_identity.Caller:
    return upstream_identity.Caller(
        user_id=str(cast.bob.user.pk), email="bob@acme.test", groups=("engineering",)
    )


def test_forged_expired_and_misdirected_tokens_are_refused_by_the_verifying_upstream(
    cast, jwt_upstream, as_gateway
):
    good = upstream_identity.mint(_caller(cast), audience=AUDIENCE, connection="ident")
    assert _post_initialize(jwt_upstream, good).status_code == 200  # the control: a valid token passes

    expired = upstream_identity.mint(_caller(cast), audience=AUDIENCE, connection="ident", ttl_seconds=-60)
    wrong_audience = upstream_identity.mint(_caller(cast), audience="https://elsewhere.test", connection="x")
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["groups"] = ["admin"]  # privilege escalation by editing the payload
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    tampered = f"{header}.{forged_payload}.{signature}"
    flipped = f"{header}.{payload}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
    # A key the gateway does not publish, claiming the gateway's kid.
    foreign = ECKey.import_key(
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode()
    )
    kid = upstream_identity.signing_keys()[0].kid
    impostor = jwt.encode({"alg": "ES256", "kid": kid}, {**claims, "groups": ["engineering"]}, foreign)
    unsigned = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode() + f".{payload}."
    before = len(state(jwt_upstream)["refused"])
    for token in (expired, wrong_audience, tampered, flipped, impostor, unsigned):
        assert _post_initialize(jwt_upstream, token).status_code == 401
    refused = state(jwt_upstream)["refused"][before:]
    assert len(refused) == 6
    assert "exp" in refused[0] and "aud" in refused[1]
    assert all(reason.startswith(("signature", "token")) for reason in refused[2:])


def test_identity_settings_are_checked(cast):
    for bad, message in (
        ({"gateway_jwt": {"audience": ""}}, "gateway_jwt.audience"),
        ({"gateway_jwt": {"audience": "a", "ttl_seconds": 5}}, "ttl_seconds"),
        ({"gateway_jwt": {"audience": "a"}, "bearer_token": "x"}, "choose one outbound authentication"),
        ({"gateway_jwt": {"audience": "a", "issuer": "me"}}, "unknown key 'issuer'"),
        (
            {"oauth_client_credentials": {"token_url": "https://t.test/token", "client_id": "c"}},
            "oauth_client_secret",
        ),
        (
            {
                "oauth_client_credentials": {"token_url": "ftp://t.test", "client_id": "c"},
                "oauth_client_secret": "s",
            },
            "token_url",
        ),
        ({"oauth_client_secret": "s"}, "applies with 'oauth_client_credentials' only"),
    ):
        with pytest.raises(InvalidInput) as info:
            connection_create_headless(
                org=cast.acme,
                name="bad",
                kind="mcp",
                settings={"url": "https://u.test/mcp", **bad},
                options={},
            )
        assert message in info.value.message


# --- OAuth client credentials -------------------------------------------------------------------


@pytest.fixture
def cc_upstream():
    mcp_auth.reset_cache()
    with identity_upstream("oauth", CLIENT_ID, CLIENT_SECRET, "3600") as base:
        yield base
    mcp_auth.reset_cache()


def test_the_upstream_receives_the_token_the_authorization_server_issued_once(
    cast, cc_upstream, transactional_db
):
    oauth_connection(cast.acme, cc_upstream)
    assert call(cast.bob, "cc", "echo", {"text": "one"})["status"] == "completed"
    assert call(cast.bob, "cc", "echo", {"text": "two"})["status"] == "completed"
    seen = state(cc_upstream)
    assert len(seen["issued"]) == 1  # cached: one token request for both calls
    assert seen["issued"][0]["scope"] == "tickets:read" and seen["issued"][0]["audience"] == "tickets"
    tokens = {identity["token"] for name, identity in seen["tool_calls"]}
    assert tokens == {seen["issued"][0]["token"]}
    assert seen["refused"] == []


def test_an_expired_token_is_renewed_and_the_call_goes_through(cast, cc_upstream, transactional_db):
    oauth_connection(cast.acme, cc_upstream)
    assert call(cast.bob, "cc", "echo", {"text": "one"})["status"] == "completed"
    control(cc_upstream, expire_all=True)  # the authorization server ended every token early
    envelope = call(cast.bob, "cc", "echo", {"text": "two"})
    assert envelope["status"] == "completed" and envelope["content"][0]["text"] == "two"
    seen = state(cc_upstream)
    assert len(seen["issued"]) == 2
    assert seen["tool_calls"][-1][1]["token"] == seen["issued"][1]["token"]
    assert seen["refused"]  # the upstream refused the old token once; the retry carried the new one


def test_a_token_is_renewed_shortly_before_it_expires(cast, transactional_db):
    mcp_auth.reset_cache()
    with identity_upstream("oauth", CLIENT_ID, CLIENT_SECRET, "2") as base:
        oauth_connection(cast.acme, base)
        assert call(cast.bob, "cc", "echo", {"text": "one"})["status"] == "completed"
        # Due for renewal at half its 2 s life: wait until the gateway's cache says so.
        connection = Connection.objects.get(name="cc")
        credentials = mcp_auth.ClientCredentials(
            connection.config["oauth_client_credentials"],
            connection.get_secrets()["oauth_client_secret"],
            transport_factory=None,
            timeout=1,
        )
        assert credentials.cached() == state(base)["issued"][0]["token"]
        while credentials.cached() is not None:
            time.sleep(0.05)
        assert call(cast.bob, "cc", "echo", {"text": "two"})["status"] == "completed"
        seen = state(base)
    assert len(seen["issued"]) == 2
    assert [c[1]["token"] for c in seen["tool_calls"]] == [i["token"] for i in seen["issued"]]
    assert seen["refused"] == []  # renewed before the upstream had to refuse it


def test_a_failing_token_endpoint_is_a_clear_retryable_failure_and_nothing_is_sent(
    cast, cc_upstream, transactional_db
):
    oauth_connection(cast.acme, cc_upstream)
    control(cc_upstream, fail_token_endpoint=True)
    envelope = call(cast.bob, "cc", "echo", {"text": "one"})
    assert envelope["status"] == "failed"
    assert "token endpoint" in envelope["message"] and "HTTP 503" in envelope["message"]
    assert "retry later" in envelope["message"] and CLIENT_SECRET not in envelope["message"]
    assert state(cc_upstream)["tool_calls"] == []
    control(cc_upstream, fail_token_endpoint=False)
    assert call(cast.bob, "cc", "echo", {"text": "again"})["status"] == "completed"


def test_a_token_endpoint_that_does_not_answer_fails_at_its_deadline_not_a_hang(
    cast, cc_upstream, transactional_db
):
    oauth_connection(cast.acme, cc_upstream, options={"timeout_seconds": 2})
    control(cc_upstream, hang_token_endpoint=True)
    try:
        envelope = call(cast.bob, "cc", "echo", {"text": "one"})
    finally:
        control(cc_upstream, hang_token_endpoint=False)
    assert envelope["status"] == "failed"
    assert envelope["message"] == (
        f"the token endpoint {cc_upstream.removeprefix('http://')} did not answer within 1s; nothing was sent "
        "to the upstream, retry later"
    )
    assert state(cc_upstream)["tool_calls"] == []


def test_calls_on_a_cold_cache_make_one_token_request(cast, cc_upstream, transactional_db):
    oauth_connection(cast.acme, cc_upstream)
    actor = cast.bob.actor()

    async def three():
        from gateway import pipeline

        return await asyncio.gather(
            *(
                pipeline.tool_call(actor=actor, connection_name="cc", tool="echo", arguments={"text": t})
                for t in ("a", "b", "c")
            )
        )

    sessions = asyncio.run(three())
    assert [s.status for s in sessions] == [SessionStatus.DONE] * 3
    seen = state(cc_upstream)
    assert seen["token_requests"] == 1 and len(seen["tool_calls"]) == 3


def test_a_wrong_client_secret_is_reported_without_the_secret(cast, cc_upstream, transactional_db):
    oauth_connection(cast.acme, cc_upstream, secret="not-the-secret")
    envelope = call(cast.bob, "cc", "echo", {"text": "one"})
    assert envelope["status"] == "failed" and "HTTP 401 (invalid_client)" in envelope["message"]
    assert "not-the-secret" not in envelope["message"]


def test_an_unreachable_token_endpoint_fails_fast(cast, transactional_db):
    mcp_auth.reset_cache()
    dead = f"http://127.0.0.1:{_free_port()}"
    oauth_connection(cast.acme, dead)
    envelope = call(cast.bob, "cc", "echo", {"text": "one"})
    assert envelope["status"] == "failed" and "could not reach the token endpoint" in envelope["message"]


def test_the_client_secret_is_write_only(cast, cc_upstream, transactional_db):
    from django.test import Client
    from rest_framework.test import APIClient

    from sessions.models import AuditEvent

    connection = oauth_connection(cast.acme, cc_upstream)
    assert call(cast.bob, "cc", "echo", {"text": "one"})["status"] == "completed"  # the secret works
    shown = connection_to_dict(connection_get(actor=cast.alice.actor(), name="cc"))
    assert "oauth_client_secret" in shown["secret_keys"]
    assert CLIENT_SECRET not in json.dumps(shown, default=str)
    assert shown["config"]["oauth_client_credentials"]["client_id"] == CLIENT_ID
    rest = APIClient()
    rest.credentials(HTTP_AUTHORIZATION=f"Bearer {cast.alice.token}")
    answer = rest.get("/api/v1/connections/cc/")
    assert answer.status_code == 200 and "oauth_client_secret" in answer.content.decode()
    assert CLIENT_SECRET not in answer.content.decode()
    admin = Client()
    admin.force_login(cast.alice.user)
    page = admin.get(f"/admin/gateway/connection/{connection.pk}/change/")
    assert page.status_code == 200 and CLIENT_SECRET not in page.content.decode()
    assert CLIENT_SECRET not in json.dumps(
        list(AuditEvent.objects.values("detail", "target_repr")), default=str
    )
    issued = state(cc_upstream)["issued"][0]["token"]  # nor the access token it obtained
    assert issued not in json.dumps(list(AuditEvent.objects.values("detail")), default=str)
    assert issued not in json.dumps(
        list(Session.objects.values("input", "output", "result", "error")), default=str
    )


def test_concurrent_calls_reuse_the_cached_token(cast, cc_upstream, transactional_db):
    oauth_connection(cast.acme, cc_upstream)
    assert call(cast.bob, "cc", "echo", {"text": "warm"})["status"] == "completed"
    actor = cast.bob.actor()

    async def both():
        from gateway import pipeline

        return await asyncio.gather(
            *(
                pipeline.tool_call(actor=actor, connection_name="cc", tool="echo", arguments={"text": t})
                for t in ("a", "b")
            )
        )

    sessions = asyncio.run(both())
    assert [s.status for s in sessions] == [SessionStatus.DONE, SessionStatus.DONE]
    seen = state(cc_upstream)
    assert len(seen["issued"]) == 1 and len(seen["tool_calls"]) == 3


def _pem() -> str:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode()
    )


def test_rotation_publishes_every_key_and_signs_with_the_first(settings, tmp_path):
    from joserfc.jwk import KeySet

    old, new = _pem(), _pem()
    caller = upstream_identity.Caller(user_id="u1", email="u@acme.test")
    try:
        settings.UPSTREAM_JWT_KEYS = [old]
        upstream_identity.signing_keys.cache_clear()
        before = upstream_identity.mint(caller, audience=AUDIENCE, connection="c")
        old_kid = upstream_identity.signing_keys()[0].kid
        # Step 1: the new key is published beside the old one, which still signs.
        settings.UPSTREAM_JWT_KEYS = [old, new]
        upstream_identity.signing_keys.cache_clear()
        published = upstream_identity.jwks()
        assert [k["kid"] for k in published["keys"]][0] == old_kid and len(published["keys"]) == 2
        # Step 2: the new key signs; tokens of the old one still verify while it is published.
        settings.UPSTREAM_JWT_KEYS = [new, old]
        upstream_identity.signing_keys.cache_clear()
        after = upstream_identity.mint(caller, audience=AUDIENCE, connection="c")
        keys = KeySet.import_key_set(upstream_identity.jwks())
        assert jwt.decode(after, keys).header["kid"] != old_kid
        assert jwt.decode(before, keys).header["kid"] == old_kid
        # Step 3: the old key is dropped: its tokens no longer verify.
        settings.UPSTREAM_JWT_KEYS = [new]
        upstream_identity.signing_keys.cache_clear()
        with pytest.raises(Exception):  # noqa: B017 - joserfc: no key for that kid
            jwt.decode(before, KeySet.import_key_set(upstream_identity.jwks()))
        # Unset: a development key generated once into the data directory, private to its owner.
        settings.UPSTREAM_JWT_KEYS, settings.DATA_DIR = [], tmp_path
        upstream_identity.signing_keys.cache_clear()
        generated = upstream_identity.signing_keys()
        assert len(generated) == 1 and (tmp_path / "upstream_jwt_key.pem").stat().st_mode & 0o077 == 0
        upstream_identity.signing_keys.cache_clear()
        assert upstream_identity.signing_keys()[0].kid == generated[0].kid  # the same key next time
        assert [p.name for p in tmp_path.iterdir()] == ["upstream_jwt_key.pem"]
    finally:
        upstream_identity.signing_keys.cache_clear()


def test_an_unusable_signing_key_is_a_clear_error(settings):
    small = (
        rsa.generate_private_key(public_exponent=65537, key_size=1024)
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode()
    )
    try:
        settings.UPSTREAM_JWT_KEYS = [_pem(), small]
        upstream_identity.signing_keys.cache_clear()
        with pytest.raises(
            RuntimeError, match="key #2 is not usable: an RSA signing key must have at least 2048 bits"
        ):
            upstream_identity.signing_keys()
    finally:
        upstream_identity.signing_keys.cache_clear()


def test_connections_test_reports_the_token_endpoint_and_names_no_person(
    cast, jwt_upstream, as_gateway, cc_upstream, transactional_db
):
    from gateway import pipeline

    jwt_connection(cast.acme, jwt_upstream)
    accepted_before = len(state(jwt_upstream)["accepted"])
    report = pipeline.connection_test(actor=cast.alice.actor(), connection_name="ident")
    assert report["ok"] is True and report["message"] == "MCP server with 2 tool(s)"
    seen = state(jwt_upstream)["accepted"][accepted_before:]
    assert seen and all(
        c["sub"] == "portcullis-gateway" and "groups" not in c and "email" not in c for c in seen
    )

    oauth_connection(cast.acme, cc_upstream)
    assert pipeline.connection_test(actor=cast.alice.actor(), connection_name="cc")["ok"] is True
    mcp_auth.reset_cache()
    control(cc_upstream, fail_token_endpoint=True)
    failed = pipeline.connection_test(actor=cast.alice.actor(), connection_name="cc")
    assert failed["ok"] is False and "token endpoint" in failed["message"] and "HTTP 503" in failed["message"]
