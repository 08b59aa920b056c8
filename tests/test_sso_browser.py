"""SSO in headless Chromium against the live gateway and a real OpenID Connect provider (tests/idp,
its own process): a reviewer whose groups come from the IdP signs in, lands on the review page and
approves; an MCP client signing in through the built-in authorization server is sent to the same
IdP and its token speaks for the same user."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import pytest
from django.conf import settings

from governance.models import ExternalIdentity, MCPAuthSettings, User, UserGroup
from governance.oauth import _external_user, mcp_auth_update
from governance.sso import idp_configure
from reviews import services as review_services
from reviews.models import Review
from sessions.models import AuditEvent
from tests.conftest import structured
from tests.oauth_helpers import pkce_pair
from tests.sso_helpers import CLIENT_ID, CLIENT_SECRET, IDP_PASSWORD, idp  # noqa: F401
from tests.test_web_browser import chromium, in_browser, shot  # noqa: F401

pytestmark = pytest.mark.live


@pytest.fixture
def acme_idp(cast, idp, gateway_server):  # noqa: F811
    idp.client(settings.PUBLIC_BASE_URL, gateway_server.url)
    idp.tamper()
    UserGroup.objects.create(org=cast.acme, name="dba")
    idp_configure(
        org=cast.acme,
        issuer=idp.issuer,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        allowed_domains=["acme.test"],
        group_map={"Database Admins": "dba", "Portcullis Auditors": "auditor"},
    )
    return idp


def sign_in_at_idp(page, username: str):
    page.wait_for_selector("#idp-username")
    page.fill("#idp-username", username)
    page.fill("#idp-password", IDP_PASSWORD)
    page.click("#idp-submit")


def test_a_reviewer_signs_in_through_the_idp_and_approves(
    cast,
    shops,
    mcp,
    acme_idp,
    gateway_server,
    chromium,  # noqa: F811
):
    subject = acme_idp.user("grace.h", "grace@acme.test", groups=["Database Admins", "Everyone"])
    review_services.access_rule_create(
        actor=cast.alice.actor(),
        name="shop-writes",
        access_type="jit_command",
        connections=["shop"],
        reviewer_groups=["dba"],
    )
    envelope = structured(
        mcp(cast.bob).call("exec", {"connection_name": "shop", "input": "delete from customers where id = 1"})
    )
    assert envelope["status"] == "pending_approval"
    review_id = envelope["review_id"]

    def approve(page):
        page.goto(f"{gateway_server.url}/reviews/{review_id}/")
        assert "/login/" in page.url  # anonymous: the login page first
        page.fill("#id_username", "grace@acme.test")
        shot(page, "sso-login")
        page.click("#sso-continue")
        page.wait_for_url(f"{acme_idp.url}/**")  # at the IdP
        sign_in_at_idp(page, "grace.h")
        page.wait_for_url(re.compile(rf"/reviews/{review_id}/$"))
        page.wait_for_selector("#statement")
        assert "delete from customers where id = 1" in page.inner_text("#statement").lower()
        shot(page, "sso-review-page")
        page.fill("#reason", "checked with the ticket")
        page.click("#approve")
        page.wait_for_selector("#decisions li")
        status = page.inner_text("#review-status")
        # Sign out: the local session ends, then the IdP's (RP-initiated logout), back to /login/.
        page.click("details summary:has(.avatar)")  # the user menu
        page.click("form[action='/logout/'] button")
        page.wait_for_url(f"{gateway_server.url}/login/")
        page.goto(f"{gateway_server.url}/reviews/")
        assert "/login/" in page.url
        return status

    assert "approved" in in_browser(approve).lower()
    grace = User.objects.get(email="grace@acme.test")
    assert ExternalIdentity.objects.get(issuer=acme_idp.issuer, subject=subject).user == grace
    assert sorted(grace.user_groups.values_list("name", flat=True)) == ["dba"]  # from the IdP's claim
    review = Review.objects.get(pk=review_id)
    assert review.status == "APPROVED"
    assert [d.reviewer for d in review.decisions.all()] == [grace]
    login = AuditEvent.objects.get(org=cast.acme, action="auth.login")
    assert login.actor == grace and login.surface == "web" and login.detail["method"] == "sso"
    assert AuditEvent.objects.filter(org=cast.acme, action="auth.logout", actor=grace).count() == 1


def test_an_mcp_client_signs_in_through_the_builtin_server_via_the_same_idp(
    cast,
    mcp,
    acme_idp,
    gateway_server,
    chromium,  # noqa: F811
):
    subject = acme_idp.user("carol.idp", "carol@acme.test", groups=["Portcullis Auditors"])
    mcp_auth_update(enabled=True)
    redirect_uri = "http://127.0.0.1:9/callback"  # nothing listens there: the browser is stopped on the way
    registered = httpx2.post(
        f"{gateway_server.url}/oauth/register/",
        json={
            "redirect_uris": [redirect_uri],
            "client_name": "Test agent",
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "scope": "mcp:read",
        },
        timeout=30,
    )
    assert registered.status_code == 201, registered.text
    client_id = registered.json()["client_id"]
    verifier, challenge = pkce_pair()
    authorize = f"{gateway_server.url}/oauth/authorize/?" + urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": "mcp:read",
            "state": "agent-state",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "resource": f"{gateway_server.url}/api/mcp",
        }
    )

    def sign_in(page):
        arrived = []

        def capture(route):
            arrived.append(route.request.url)
            route.fulfill(status=200, body="signed in; you may close this tab")

        page.route("http://127.0.0.1:9/**", capture)
        page.goto(authorize)
        assert "/login/" in page.url
        page.fill("#id_username", "carol@acme.test")
        page.click("#sso-continue")
        page.wait_for_url(f"{acme_idp.url}/**")  # the same IdP as the web sign-in
        sign_in_at_idp(page, "carol.idp")
        page.wait_for_selector("#authorizationForm")  # back at the gateway's consent page
        shot(page, "sso-oauth-consent")
        page.click("button[name=allow]")
        page.wait_for_url("http://127.0.0.1:9/**")
        return arrived[0]

    params = {k: v[0] for k, v in parse_qs(urlsplit(in_browser(sign_in)).query).items()}
    assert params["state"] == "agent-state"
    token = httpx2.post(
        f"{gateway_server.url}/oauth/token/",
        data={
            "grant_type": "authorization_code",
            "code": params["code"],
            "redirect_uri": redirect_uri,
            "client_id": client_id,
            "code_verifier": verifier,
            "resource": f"{gateway_server.url}/api/mcp",
        },
        timeout=30,
    )
    assert token.status_code == 200, token.text
    me = structured(mcp(token.json()["access_token"]).call("me_get"))
    assert me["user_email"] == "carol@acme.test" and me["user_id"] == str(cast.carol.user.pk)
    assert me["groups"] == ["auditor"] and me["client"].startswith("oauth:Test agent")
    carol = ExternalIdentity.objects.get(issuer=acme_idp.issuer, subject=subject).user
    assert carol == cast.carol.user  # the existing carol, linked by her first SSO sign-in
    # The external-issuer mode at /api/mcp looks people up in the same (issuer, subject) table: a
    # token of this IdP for her subject is carol's, whatever its e-mail claim says.
    row = MCPAuthSettings(enabled=True, issuer=acme_idp.issuer)
    assert _external_user(row, {"sub": subject, "email": "someone-else@acme.test"}) == carol
