"""OAuth 2.1 at /api/mcp against a live daphne: the official SDK's OAuthClientProvider end to end,
scopes as tool groups, OAuth off, and the records naming the client."""

from __future__ import annotations

import asyncio
import time

import httpx2
import pytest
from mcp.client import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientMetadata

from governance.oauth import mcp_auth_update
from sessions.models import AuditEvent, Session
from tests.conftest import error_text, structured
from tests.oauth_helpers import PASSWORD, Browser, BrowserHandlers, MemoryStorage, code_from, pkce_pair

pytestmark = pytest.mark.live

REDIRECT = "http://127.0.0.1:33418/callback"


@pytest.fixture
def oauth_on(transactional_db, cast):
    for person in (cast.alice, cast.bob, cast.dave, cast.eve):
        person.user.set_password(PASSWORD)
        person.user.save()
    mcp_auth_update(enabled=True)
    yield
    mcp_auth_update(enabled=False)


def _provider(server, browser, storage=None, scope=None):
    handlers = BrowserHandlers(browser)
    metadata = OAuthClientMetadata(
        client_name="pytest agent",
        redirect_uris=[REDIRECT],
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
        scope=scope,
    )
    provider = OAuthClientProvider(
        server.mcp_url, metadata, storage or MemoryStorage(), handlers.redirect, handlers.callback
    )
    return provider, handlers


async def _session(server, provider, fn, mode="auto"):
    http = httpx2.AsyncClient(auth=provider, timeout=httpx2.Timeout(30, read=60))
    async with http, Client(streamable_http_client(server.mcp_url, http_client=http), mode=mode) as client:
        await client.list_tools()
        return await fn(client)


def run(coro):
    try:
        return asyncio.run(coro)
    except BaseExceptionGroup as group:
        while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
            group = group.exceptions[0]
        raise group from None


def _bearer(server, token, method="tools/list"):
    return httpx2.post(
        server.mcp_url,
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"},
        json={"jsonrpc": "2.0", "id": 1, "method": method},
    )


def test_it_lets_the_sdk_oauth_client_in_with_nothing_but_the_url(gateway_server, cast, oauth_on):
    browser = Browser(gateway_server.url, "bob@acme.test")
    storage = MemoryStorage()
    provider, handlers = _provider(gateway_server, browser, storage)

    me = run(_session(gateway_server, provider, lambda c: c.call_tool("me_get", {})))
    assert structured(me)["user_email"] == "bob@acme.test"
    assert handlers.authorizations == 1
    # It registered itself, and the consent page named the client and the scopes.
    assert storage.client_info.client_id and storage.client_info.client_name == "pytest agent"
    assert "pytest agent" in browser.consent_page and "mcp:exec" in browser.consent_page
    first = storage.tokens
    assert first.refresh_token and set(first.scope.split()) == {"mcp:read", "mcp:exec", "mcp:admin"}

    # The record names the client beside the user, on the session and the audit events.
    consent = AuditEvent.objects.get(action="oauth.authorize", actor_email="bob@acme.test")
    assert consent.surface == "web" and "pytest agent" in consent.target_repr

    # The access token expires: the provider refreshes it (rotation: a new refresh token too).
    provider.context.token_expiry_time = time.time() - 1
    me = run(_session(gateway_server, provider, lambda c: c.call_tool("me_get", {})))
    assert structured(me)["user_email"] == "bob@acme.test"
    second = storage.tokens
    assert handlers.authorizations == 1  # refreshed, not re-authorized
    assert second.access_token != first.access_token and second.refresh_token != first.refresh_token
    assert _bearer(gateway_server, first.access_token).status_code == 401  # the old one is gone
    reuse = httpx2.post(
        f"{gateway_server.url}/oauth/token/",
        data={"grant_type": "refresh_token", "refresh_token": first.refresh_token},
        auth=(storage.client_info.client_id, storage.client_info.client_secret),
    )
    assert reuse.status_code == 400  # a rotated refresh token is spent

    # RFC 7009 revocation of the access token: refused at once, with the invalid_token challenge.
    revoked = httpx2.post(
        f"{gateway_server.url}/oauth/revoke/",
        data={"token": second.access_token},
        auth=(storage.client_info.client_id, storage.client_info.client_secret),
    )
    assert revoked.status_code == 200
    refused = _bearer(gateway_server, second.access_token)
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    browser.close()


def test_it_lets_the_sdk_oauth_client_in_on_the_handshake_era_too(gateway_server, cast, oauth_on):
    browser = Browser(gateway_server.url, "dave@acme.test")
    provider, handlers = _provider(gateway_server, browser)
    me = run(_session(gateway_server, provider, lambda c: c.call_tool("me_get", {}), mode="legacy"))
    assert structured(me)["user_email"] == "dave@acme.test" and handlers.authorizations == 1
    browser.close()


def test_it_revokes_a_client_from_the_authorized_clients_page(gateway_server, cast, oauth_on):
    browser = Browser(gateway_server.url, "bob@acme.test")
    storage = MemoryStorage()
    provider, _ = _provider(gateway_server, browser, storage)
    run(_session(gateway_server, provider, lambda c: c.call_tool("me_get", {})))
    page = browser.http.get("/oauth/clients/")
    assert page.status_code == 200 and "pytest agent" in page.text
    import re

    form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
    assert browser.http.post("/oauth/clients/", data=form).status_code == 302
    assert _bearer(gateway_server, storage.tokens.access_token).status_code == 401
    again = httpx2.post(
        f"{gateway_server.url}/oauth/token/",
        data={"grant_type": "refresh_token", "refresh_token": storage.tokens.refresh_token},
        auth=(storage.client_info.client_id, storage.client_info.client_secret),
    )
    assert again.status_code == 400
    assert AuditEvent.objects.filter(action="oauth.revoke", actor_email="bob@acme.test").count() == 1
    browser.close()


def _token_for(server, email, scope):
    """Register a public client, authorize as `email` with `scope`, and return the token response."""
    registered = httpx2.post(
        f"{server.url}/oauth/register/",
        json={
            "client_name": "scoped agent",
            "redirect_uris": [REDIRECT],
            "token_endpoint_auth_method": "none",
        },
    ).json()
    verifier, challenge = pkce_pair()
    browser = Browser(server.url, email)
    params = httpx2.QueryParams(
        response_type="code",
        client_id=registered["client_id"],
        redirect_uri=REDIRECT,
        scope=scope,
        state="s1",
        code_challenge=challenge,
        code_challenge_method="S256",
        resource=server.mcp_url,
    )
    code = code_from(browser.authorize(f"/oauth/authorize/?{params}"))["code"]
    browser.close()
    token = httpx2.post(
        f"{server.url}/oauth/token/",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": registered["client_id"],
            "code_verifier": verifier,
            "resource": server.mcp_url,
        },
    )
    assert token.status_code == 200, token.text
    return token.json()


def test_it_refuses_tools_outside_the_tokens_scopes(gateway_server, cast, mcp, oauth_on, shops):
    token = _token_for(gateway_server, "alice@acme.test", "mcp:read")
    assert token["scope"] == "mcp:read"
    client = mcp(token["access_token"])
    names = client.tools()
    assert "me_get" in names and "connections_list" in names
    assert "exec" not in names and "connections_create" not in names  # alice is admin; the token is not
    text = error_text(client.call("exec", {"connection_name": "shop", "input": "select 1"}))
    assert text.startswith("insufficient_scope") and "mcp:exec" in text
    assert not Session.objects.filter(user=cast.alice.user).exists()  # nothing ran
    denied = AuditEvent.objects.filter(
        action="mcp.tool", outcome="denied", actor_email="alice@acme.test"
    ).first()
    assert denied is not None and denied.client.startswith("oauth:scoped agent")

    exec_token = _token_for(gateway_server, "alice@acme.test", "mcp:read mcp:exec")
    result = structured(
        mcp(exec_token["access_token"]).call("exec", {"connection_name": "shop", "input": "select 1"})
    )
    assert result["status"] == "completed"
    session = Session.objects.get(pk=result["session_id"])
    assert session.client.startswith("oauth:scoped agent (")  # the OAuth client beside the user
    error = error_text(mcp(exec_token["access_token"]).call("connections_delete", {"name": "shop"}))
    assert "insufficient_scope" in error and "mcp:admin" in error


def test_it_keeps_each_org_to_its_own_records(gateway_server, cast, mcp, oauth_on, shops):
    token = _token_for(gateway_server, "eve@globex.test", "mcp:read mcp:exec")
    result = structured(
        mcp(token["access_token"]).call(
            "exec", {"connection_name": "shop", "input": "select name from customers"}
        )
    )
    assert all("globex" in row[0] for row in result["rows"])
    assert structured(mcp(token["access_token"]).call("me_get"))["user_email"] == "eve@globex.test"


def test_it_accepts_only_api_tokens_while_oauth_is_off(gateway_server, cast, mcp, transactional_db):
    cast.alice.user.set_password(PASSWORD)
    cast.alice.user.save()
    mcp_auth_update(enabled=True)
    token = _token_for(gateway_server, "alice@acme.test", "mcp:read")
    assert _bearer(gateway_server, token["access_token"]).status_code == 200
    mcp_auth_update(enabled=False)
    try:
        assert _bearer(gateway_server, token["access_token"]).status_code == 401
        assert (
            structured(mcp(cast.alice).call("me_get"))["user_email"] == "alice@acme.test"
        )  # API tokens: yes
        for path in ("/.well-known/oauth-authorization-server", "/oauth/authorize/"):
            assert httpx2.get(f"{gateway_server.url}{path}").status_code == 404
        assert httpx2.post(f"{gateway_server.url}/oauth/register/", json={}).status_code == 404
        metadata = httpx2.get(f"{gateway_server.url}/.well-known/oauth-protected-resource/api/mcp").json()
        assert "authorization_servers" not in metadata  # nothing to discover
    finally:
        mcp_auth_update(enabled=False)


def test_it_challenges_per_rfc_6750_and_9728(gateway_server, cast, oauth_on):
    no_token = httpx2.post(gateway_server.mcp_url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    challenge = no_token.headers["www-authenticate"]
    assert no_token.status_code == 401 and "error=" not in challenge
    assert (
        f'resource_metadata="{gateway_server.url}/.well-known/oauth-protected-resource/api/mcp"' in challenge
    )
    bad = _bearer(gateway_server, "not-a-token")
    assert 'error="invalid_token"' in bad.headers["www-authenticate"]
    assert "resource_metadata=" in bad.headers["www-authenticate"]
    metadata = httpx2.get(f"{gateway_server.url}/.well-known/oauth-protected-resource/api/mcp").json()
    assert metadata["resource"] == gateway_server.mcp_url
    assert metadata["authorization_servers"] == [gateway_server.url]
    assert metadata["scopes_supported"] == ["mcp:read", "mcp:exec", "mcp:admin"]
    server = httpx2.get(f"{gateway_server.url}/.well-known/oauth-authorization-server").json()
    assert server["issuer"] == gateway_server.url
    assert server["code_challenge_methods_supported"] == ["S256"]
    assert server["registration_endpoint"] == f"{gateway_server.url}/oauth/register/"
    assert server["revocation_endpoint"] == f"{gateway_server.url}/oauth/revoke/"
    assert set(server["grant_types_supported"]) == {"authorization_code", "refresh_token"}


def test_it_accepts_an_external_issuers_jwt_for_this_resource_only(
    gateway_server, cast, mcp, transactional_db
):
    from tests.oauth_helpers import Issuer

    issuer = Issuer()
    try:
        mcp_auth_update(
            enabled=True, issuer=issuer.url, resource_uri=gateway_server.mcp_url, groups_claim="groups"
        )
        metadata = httpx2.get(f"{gateway_server.url}/.well-known/oauth-protected-resource/api/mcp").json()
        assert metadata["authorization_servers"] == [issuer.url]
        token = issuer.token(
            audience=gateway_server.mcp_url, email="bob@acme.test", extra={"groups": ["engineering"]}
        )
        me = structured(mcp(token).call("me_get"))
        assert me["user_email"] == "bob@acme.test" and me["groups"] == ["engineering"]
        assert me["client"].startswith("oauth:test-agent")
        other = issuer.token(audience="https://other.example.com/api/mcp", email="bob@acme.test")
        refused = _bearer(gateway_server, other)
        assert refused.status_code == 401 and 'error="invalid_token"' in refused.headers["www-authenticate"]
        assert (
            structured(mcp(cast.bob).call("me_get"))["user_email"] == "bob@acme.test"
        )  # API tokens still work
    finally:
        mcp_auth_update(enabled=False, issuer="", resource_uri="", groups_claim="")
        issuer.close()


def test_serverinfo_names_the_auth_methods(cast, mcp):
    from governance.oauth import mcp_auth_update

    assert structured(mcp(cast.bob).call("serverinfo_get"))["auth_methods"] == ["api_token"]
    mcp_auth_update(enabled=True)
    assert structured(mcp(cast.bob).call("serverinfo_get"))["auth_methods"] == ["api_token", "oauth"]
