"""OAuth 2.1 for MCP clients, in process: `mcp_auth`, registration abuse, PKCE and redirect URI
enforcement, the authorized clients page across users and orgs, and an external issuer's JWTs
checked against a JWKS served on loopback by a real HTTP server."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.utils import timezone
from oauth2_provider.models import get_access_token_model, get_application_model, set_token_value

from governance.models import ExternalIdentity, MCPAuthSettings, User
from governance.oauth import mcp_auth_update, resource_uri_of, verify_oauth_token
from sessions.models import AuditEvent
from tests.oauth_helpers import Issuer, pkce_pair, unsigned_token

REDIRECT = "http://127.0.0.1:33418/callback"


@pytest.fixture
def builtin(cast):
    mcp_auth_update(enabled=True)
    return resource_uri_of(MCPAuthSettings.objects.get())


@pytest.fixture
def issuer():
    server = Issuer()
    yield server
    server.close()


def register(client: Client, **metadata) -> tuple[int, dict]:
    body = {"client_name": "agent", "redirect_uris": [REDIRECT], **metadata}
    response = client.post("/oauth/register/", data=json.dumps(body), content_type="application/json")
    return response.status_code, response.json()


def mcp_auth(*args) -> str:
    out = StringIO()
    call_command("mcp_auth", *args, stdout=out)
    return out.getvalue()


# --- manage.py mcp_auth ------------------------------------------------------------------------


def test_it_switches_oauth_with_mcp_auth_and_audits_it(cast, issuer):
    assert "OAuth for MCP clients: disabled" in mcp_auth("status")
    out = mcp_auth("enable", "--groups-claim", "groups")
    assert "enabled" in out and "built-in" in out and "groups claim:  groups" in out
    assert MCPAuthSettings.objects.get().enabled
    with pytest.raises(CommandError, match="at least one"):
        mcp_auth("configure")
    with pytest.raises(CommandError, match="https"):
        mcp_auth("configure", "--resource-uri", "http://gateway.example.com/api/mcp")
    with pytest.raises(CommandError, match="not found"):
        mcp_auth("configure", "--create-users-in", "nope")

    out = mcp_auth("configure", "--issuer", issuer.url, "--resource-uri", "https://gw.example.com/api/mcp")
    row = MCPAuthSettings.objects.get()
    assert row.issuer == issuer.url and row.jwks_uri == f"{issuer.url}/jwks.json"  # found in its metadata
    assert "mode:          external" in out and "resource URI:  https://gw.example.com/api/mcp" in out

    mcp_auth("configure", "--issuer", "")  # back to the built-in server
    assert MCPAuthSettings.objects.get().issuer == "" and MCPAuthSettings.objects.get().jwks_uri == ""
    assert "disabled" in mcp_auth("disable")
    for org in (cast.acme, cast.globex):  # the switch governs every org's endpoint: each chain says so
        events = AuditEvent.objects.filter(org=org, action="mcp_auth.update").order_by("id")
        assert events.count() == 4 and all(e.surface == "cli" for e in events)
        assert events.first().detail["changes"]["enabled"] == {"from": False, "to": True}


def test_it_serves_nothing_of_the_authorization_server_while_oauth_is_off(cast):
    client = Client()
    assert client.get("/.well-known/oauth-authorization-server").status_code == 404
    assert register(client)[0] == 404
    assert client.post("/oauth/token/", {"grant_type": "authorization_code"}).status_code == 404
    mcp_auth_update(enabled=True, issuer="https://idp.example.com", jwks_uri="https://idp.example.com/jwks")
    assert register(client)[0] == 404  # an external issuer: no built-in server either
    prm = client.get("/.well-known/oauth-protected-resource/api/mcp").json()
    assert prm["authorization_servers"] == ["https://idp.example.com"]


# --- dynamic client registration ---------------------------------------------------------------


def test_it_registers_a_native_client_with_a_loopback_redirect(builtin):
    status, body = register(Client(), token_endpoint_auth_method="none")
    assert status == 201
    assert body["redirect_uris"] == [REDIRECT] and body["token_endpoint_auth_method"] == "none"
    assert "client_secret" not in body
    status, body = register(Client(), redirect_uris=["cursor://anysphere.cursor-retrieval/oauth/callback"])
    assert status == 201 and body["client_secret"]  # RFC 7591's default method: a confidential client


@pytest.mark.parametrize(
    "metadata, error",
    [
        ({"redirect_uris": ["http://evil.example.com/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["javascript:alert(1)"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://ok.example.com/cb#frag"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://user:pw@ok.example.com/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": [f"https://ok.example.com/{i}" for i in range(6)]}, "invalid_redirect_uri"),
        ({"redirect_uris": []}, "invalid_redirect_uri"),
        ({"redirect_uris": "https://ok.example.com/cb"}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://ok.example.com/" + "a" * 600]}, "invalid_redirect_uri"),
        ({"client_name": "x" * 101}, "invalid_client_metadata"),
        ({"grant_types": ["password"]}, "invalid_client_metadata"),
        ({"grant_types": ["client_credentials"]}, "invalid_client_metadata"),
        ({"response_types": ["token"]}, "invalid_client_metadata"),
        ({"scope": "mcp:read openid"}, "invalid_client_metadata"),
        ({"token_endpoint_auth_method": "private_key_jwt"}, "invalid_client_metadata"),
    ],
)
def test_it_refuses_malformed_registrations(builtin, metadata, error):
    status, body = register(Client(), **metadata)
    assert status == 400 and body["error"] == error
    assert not get_application_model().objects.exists()


def test_it_refuses_oversize_and_non_json_registrations(builtin):
    client = Client()
    big = {"client_name": "a", "redirect_uris": [REDIRECT], "junk": "x" * 9000}
    response = client.post("/oauth/register/", data=json.dumps(big), content_type="application/json")
    assert response.status_code == 413 and response.json()["error"] == "invalid_client_metadata"
    for body in (
        "{not json",
        "[1, 2]",
        "\xff",
        "[" * 5000,
        '{"redirect_uris": ["https://a.example/cb"], "grant_types": [{}]}',
    ):
        response = client.post("/oauth/register/", data=body, content_type="application/json")
        assert response.status_code == 400
    assert not get_application_model().objects.exists()


def test_it_bounds_registrations_per_hour(builtin, settings):
    settings.OAUTH_REGISTRATIONS_PER_HOUR = 2
    assert register(Client())[0] == 201 and register(Client())[0] == 201
    status, body = register(Client())
    assert status == 429 and body["error"] == "temporarily_unavailable"
    assert get_application_model().objects.count() == 2


def test_it_never_takes_a_registration_token_for_an_mcp_token(builtin):
    _, body = register(Client())
    assert body["registration_access_token"]
    assert verify_oauth_token(body["registration_access_token"]) is None


# --- authorization: PKCE S256 only, registered redirect URIs only, this resource only -----------


def _authorize(client, client_id, **overrides):
    _, challenge = pkce_pair()
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": "mcp:read",
        "state": "xyz",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    params.update(overrides)
    return client.get("/oauth/authorize/", {k: v for k, v in params.items() if v is not None})


def _browser(person) -> Client:
    client = Client()
    client.force_login(person.user)
    return client


def test_it_shows_the_consent_page_naming_client_and_scopes(cast, builtin):
    _, app = register(Client(), client_name="Claude Code")
    response = _authorize(_browser(cast.bob), app["client_id"], scope="mcp:read mcp:exec", resource=builtin)
    page = response.content.decode()
    assert response.status_code == 200 and "Authorize Claude Code?" in page
    assert "mcp:read" in page and "mcp:exec" in page and "mcp:admin" not in page
    assert "127.0.0.1:33418" in page  # where it will send the user


def test_it_sends_anonymous_people_to_log_in_first(cast, builtin):
    _, app = register(Client())
    response = _authorize(Client(), app["client_id"])
    assert response.status_code == 302 and response["Location"].startswith("/login/?next=")


@pytest.mark.parametrize("method", ["plain", None])
def test_it_refuses_pkce_plain_or_without_method(cast, builtin, method):
    _, app = register(Client())
    response = _authorize(
        _browser(cast.bob), app["client_id"], code_challenge="a" * 50, code_challenge_method=method
    )
    assert response.status_code == 302  # back to the client with the error, before any consent page
    assert response["Location"].startswith(REDIRECT) and "state=xyz" in response["Location"]
    assert "error=invalid_request" in response["Location"] and "code=" not in response["Location"]


def test_it_refuses_an_authorization_without_pkce(cast, builtin):
    _, app = register(Client())
    response = _authorize(
        _browser(cast.bob), app["client_id"], code_challenge=None, code_challenge_method=None
    )
    assert response.status_code == 302 and "error=invalid_request" in response["Location"]


def test_it_refuses_another_clients_redirect_uri(cast, builtin):
    _, mine = register(Client(), redirect_uris=["https://mine.example.com/cb"])
    register(Client(), redirect_uris=["https://theirs.example.com/cb"])
    response = _authorize(_browser(cast.bob), mine["client_id"], redirect_uri="https://theirs.example.com/cb")
    assert response.status_code == 400  # an error page, never a redirect to an unregistered URI
    assert "theirs.example.com" not in response.get("Location", "")
    assert b"Authorization failed" in response.content


def test_it_refuses_a_token_for_another_resource(cast, builtin):
    _, app = register(Client())
    response = _authorize(_browser(cast.bob), app["client_id"], resource="https://other.example.com/api")
    assert response.status_code == 400 and b"invalid_target" in response.content


def test_it_exchanges_a_code_only_with_its_verifier(cast, builtin):
    _, app = register(Client(), token_endpoint_auth_method="none")
    verifier, challenge = pkce_pair()
    browser = _browser(cast.bob)
    page = _authorize(browser, app["client_id"], code_challenge=challenge, resource=builtin)
    form = {field: page.context["form"][field].value() for field in page.context["form"].fields}
    form = {k: v for k, v in form.items() if v is not None}
    form["allow"] = "Authorize"
    answer = browser.post("/oauth/authorize/", form)
    code = answer["Location"].split("code=")[1].split("&")[0]
    assert AuditEvent.objects.get(action="oauth.authorize").outcome == "success"
    exchange = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": app["client_id"],
    }
    assert Client().post("/oauth/token/", exchange).status_code == 400  # no verifier
    assert Client().post("/oauth/token/", {**exchange, "code_verifier": "x" * 64}).status_code == 400
    token = Client().post("/oauth/token/", {**exchange, "code_verifier": verifier}).json()
    caller = verify_oauth_token(token["access_token"])
    assert caller.actor.user == cast.bob.user and caller.scopes == ("mcp:read",)
    assert caller.actor.client == f"oauth:agent ({app['client_id']})"
    assert get_access_token_model().objects.get(user=cast.bob.user).resource == [builtin]  # bound (RFC 8707)
    mcp_auth_update(enabled=False)
    assert verify_oauth_token(token["access_token"]) is None  # OAuth off: only API tokens


# --- the authorized clients page ---------------------------------------------------------------


def _grant(person, name="agent", resource=None) -> str:
    app = get_application_model().objects.create(
        name=name, client_type="public", authorization_grant_type="authorization-code", redirect_uris=REDIRECT
    )
    raw = f"raw-{person.user.email}-{name}"
    token = get_access_token_model()(
        user=person.user,
        application=app,
        scope="mcp:read",
        expires=timezone.now() + timedelta(hours=1),
        resource=resource or [],
    )
    set_token_value(token, raw)
    token.save()
    return raw


def test_it_lists_ones_own_clients_and_admins_see_the_orgs(cast, builtin):
    _grant(cast.bob, "bob agent")
    _grant(cast.dave, "dave agent")
    _grant(cast.eve, "eve agent")
    bob_page = _browser(cast.bob).get("/oauth/clients/").content.decode()
    assert "bob agent" in bob_page and "dave agent" not in bob_page
    alice_page = _browser(cast.alice).get("/oauth/clients/").content.decode()
    assert "bob agent" in alice_page and "dave agent" in alice_page and "eve agent" not in alice_page
    assert "dave@acme.test" in alice_page


def test_it_lets_only_the_owner_or_an_org_admin_revoke(cast, builtin):
    raw = _grant(cast.dave, "dave agent")
    app = get_application_model().objects.get(name="dave agent")
    form = {"user_id": str(cast.dave.user.pk), "application_id": str(app.pk)}
    assert _browser(cast.bob).post("/oauth/clients/", form).status_code == 404  # another user's
    assert _browser(cast.eve).post("/oauth/clients/", form).status_code == 404  # another org's admin
    assert (
        _browser(cast.bob).post("/oauth/clients/", {"user_id": "x", "application_id": "y"}).status_code == 404
    )
    assert verify_oauth_token(raw) is not None
    assert _browser(cast.alice).post("/oauth/clients/", form).status_code == 302
    assert verify_oauth_token(raw) is None
    event = AuditEvent.objects.get(action="oauth.revoke")
    assert event.actor_email == "alice@acme.test" and event.detail["user"] == "dave@acme.test"


# --- an external issuer ------------------------------------------------------------------------


RESOURCE = "https://gw.example.com/api/mcp"


@pytest.fixture
def external(cast, issuer):
    mcp_auth_update(enabled=True, issuer=issuer.url, resource_uri=RESOURCE)
    return issuer


def test_it_accepts_the_issuers_token_for_this_resource(cast, external):
    caller = verify_oauth_token(external.token(audience=RESOURCE, email="bob@acme.test"))
    assert caller.actor.user == cast.bob.user and caller.actor.surface == "mcp"
    assert caller.scopes == ("mcp:read", "mcp:exec") and caller.actor.client == "oauth:test-agent"
    assert ExternalIdentity.objects.get(subject="sub-1").user == cast.bob.user  # linked on first sight
    # From then on the subject decides, whatever e-mail the token carries.
    assert verify_oauth_token(external.token(audience=RESOURCE)).actor.user == cast.bob.user


@pytest.mark.parametrize(
    "case",
    [
        "wrong_audience",
        "expired",
        "bad_signature",
        "wrong_issuer",
        "alg_none",
        "unknown_kid",
        "hs256",
        "no_sub",
    ],
)
def test_it_refuses_bad_external_tokens(cast, external, case):
    good = {"audience": RESOURCE, "email": "bob@acme.test"}
    if case == "wrong_audience":
        token = external.token(**{**good, "audience": "https://other.example.com/api/mcp"})
    elif case == "expired":
        token = external.token(**good, expires_in=-120)
    elif case == "bad_signature":
        token = external.token(**good, key=external.other_key)
    elif case == "wrong_issuer":
        token = external.token(**good, issuer="https://evil.example.com")
    elif case == "alg_none":
        token = unsigned_token(
            {"iss": external.url, "sub": "sub-1", "aud": RESOURCE, "exp": 4102444800}, external.kid
        )
    elif case == "unknown_kid":
        token = external.token(**good, key=external.other_key, kid="someone-elses")
    elif case == "hs256":  # a symmetric algorithm is never accepted from an issuer (key confusion)
        import jwt as pyjwt

        token = pyjwt.encode(
            {
                "iss": external.url,
                "sub": "sub-1",
                "aud": RESOURCE,
                "exp": 4102444800,
                "email": "bob@acme.test",
            },
            "a-shared-secret-that-is-long-enough-for-hs256",
            algorithm="HS256",
            headers={"kid": external.kid},
        )
    else:
        token = external.token(**good, extra={"sub": None})
    assert verify_oauth_token(token) is None
    assert not ExternalIdentity.objects.exists()


def test_it_maps_the_groups_claim_onto_the_orgs_groups(cast, external):
    mcp_auth_update(groups_claim="groups")
    caller = verify_oauth_token(
        external.token(audience=RESOURCE, email="dave@acme.test", extra={"groups": ["engineering", "nope"]})
    )
    assert caller.actor.groups == frozenset({"engineering"})  # only groups the org has
    bob = verify_oauth_token(
        external.token(audience=RESOURCE, subject="sub-bob", email="bob@acme.test", extra={"groups": []})
    )
    assert bob.actor.groups == frozenset()  # the issuer is authoritative for groups
    eve = verify_oauth_token(
        external.token(
            audience=RESOURCE,
            subject="sub-eve",
            email="eve@globex.test",
            extra={"groups": "engineering admin"},
        )
    )
    assert eve.actor.org_id == cast.globex.pk and eve.actor.groups == frozenset(
        {"admin"}
    )  # globex's groups only


def test_it_creates_unknown_users_only_when_allowed(cast, external):
    token = external.token(audience=RESOURCE, subject="new-1", email="newbie@acme.test")
    assert verify_oauth_token(token) is None
    assert not User.objects.filter(email="newbie@acme.test").exists()
    mcp_auth_update(create_users_org=cast.acme)
    caller = verify_oauth_token(token)
    assert caller.actor.user.email == "newbie@acme.test" and caller.actor.org_id == cast.acme.pk
    unverified = external.token(
        audience=RESOURCE, subject="new-2", email="other@acme.test", extra={"email_verified": False}
    )
    assert verify_oauth_token(unverified) is None


def test_it_refuses_external_tokens_for_inactive_users_and_when_off(cast, external):
    token = external.token(audience=RESOURCE, email="bob@acme.test")
    assert verify_oauth_token(token) is not None
    mcp_auth_update(enabled=False)
    assert verify_oauth_token(token) is None
    mcp_auth_update(enabled=True)
    cast.bob.user.is_active = False
    cast.bob.user.save()
    assert verify_oauth_token(token) is None


def test_it_bounds_registration_updates_alike(builtin):
    _, app = register(Client())
    url = f"/oauth/register/{app['client_id']}/"
    auth = {"HTTP_AUTHORIZATION": f"Bearer {app['registration_access_token']}"}
    evil = {"client_name": "agent", "redirect_uris": ["http://evil.example.com/cb"]}
    response = Client().put(url, data=json.dumps(evil), content_type="application/json", **auth)
    assert response.status_code == 400 and response.json()["error"] == "invalid_redirect_uri"
    assert get_application_model().objects.get(client_id=app["client_id"]).redirect_uris == REDIRECT
    good = {"client_name": "renamed", "redirect_uris": ["https://ok.example.com/cb"]}
    response = Client().put(url, data=json.dumps(good), content_type="application/json", **auth)
    assert response.status_code == 200 and response.json()["client_name"] == "renamed"


def test_it_records_a_denied_consent_and_tells_the_client(cast, builtin):
    _, app = register(Client(), client_name="Cursor")
    browser = _browser(cast.bob)
    page = _authorize(browser, app["client_id"])
    form = {field: page.context["form"][field].value() for field in page.context["form"].fields}
    form = {k: v for k, v in form.items() if v not in (None, False)}
    answer = browser.post("/oauth/authorize/", form)  # no "allow"
    assert answer.status_code == 302 and "error=access_denied" in answer["Location"]
    event = AuditEvent.objects.get(action="oauth.authorize")
    assert (
        event.outcome == "denied" and event.actor_email == "bob@acme.test" and "Cursor" in event.target_repr
    )
    form["allow"] = "Authorize"
    form["resource"] = "https://other.example.com/api"  # a tampered hidden field
    assert browser.post("/oauth/authorize/", form).status_code == 400


def test_it_takes_built_in_tokens_only_for_this_resource(cast, builtin):
    assert verify_oauth_token(_grant(cast.bob, "mine", resource=[builtin + "/"])) is not None
    assert (
        verify_oauth_token(_grant(cast.bob, "elsewhere", resource=["https://other.example.com/api/mcp"]))
        is None
    )


def test_it_changes_behaviour_with_the_commands(cast):
    raw = _grant(cast.bob, "agent")
    assert register(Client())[0] == 404 and verify_oauth_token(raw) is None
    mcp_auth("enable")
    assert register(Client())[0] == 201 and verify_oauth_token(raw) is not None
    mcp_auth("configure", "--resource-uri", "https://gw.example.com/api/mcp")
    prm = Client().get("/.well-known/oauth-protected-resource").json()
    assert prm["resource"] == "https://gw.example.com/api/mcp"
    mcp_auth("disable")
    assert register(Client())[0] == 404 and verify_oauth_token(raw) is None
    assert "authorization_servers" not in Client().get("/.well-known/oauth-protected-resource").json()


def test_it_lets_browser_based_clients_call_the_endpoints_cross_origin(builtin):
    client = Client()
    preflight = client.options("/oauth/token/", HTTP_ORIGIN="http://localhost:6274")
    assert (
        preflight["Access-Control-Allow-Origin"] == "*"
        and "Authorization" in preflight["Access-Control-Allow-Headers"]
    )
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/oauth-protected-resource/api/mcp"):
        assert client.get(path)["Access-Control-Allow-Origin"] == "*"
    status, _ = register(client)
    assert status == 201
    assert "Access-Control-Allow-Origin" not in client.get("/oauth/authorize/", {"client_id": "x"})  # a page
