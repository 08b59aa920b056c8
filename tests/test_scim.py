"""SCIM 2.0 provisioning per organization: what Okta and Entra ID send, over HTTP (Django's test
client), and a deactivation cutting a live MCP client off at once (the real daphne gateway)."""

from __future__ import annotations

import json
from datetime import timedelta

import httpx2
import pytest
from django.test import Client
from django.utils import timezone
from oauth2_provider.models import get_access_token_model, get_application_model

from governance.models import User, UserGroup
from governance.oauth import mcp_auth_update
from governance.services import token_authenticate, token_issue
from governance.sso import idp_configure, scim_secret_issue
from sessions.models import AuditEvent
from tests.conftest import structured

SCIM = "application/scim+json"


@pytest.fixture
def scim(cast):
    for org, domain in ((cast.acme, "acme.test"), (cast.globex, "globex.test")):
        idp_configure(
            org=org, issuer="https://idp.example.com/" + domain, client_id="c", allowed_domains=[domain]
        )
    secrets = {"acme": scim_secret_issue(org=cast.acme), "globex": scim_secret_issue(org=cast.globex)}

    class Scim:
        def __init__(self, org="acme", secret=None):
            self.base = f"/scim/v2/{org}"
            self.client = Client(HTTP_AUTHORIZATION=f"Bearer {secret or secrets[org]}")

        def __call__(self, method, path, body=None, raw=None):
            data = raw if raw is not None else (json.dumps(body) if body is not None else None)
            kwargs = {"data": data, "content_type": SCIM} if data is not None else {}
            response = getattr(self.client, method)(self.base + path, **kwargs)
            assert response["Content-Type"] == SCIM or response.status_code == 204
            return response.status_code, (response.json() if response.content else None)

    Scim.secrets = secrets
    return Scim


def audit(org, action):
    return list(AuditEvent.objects.filter(org=org, action=action).order_by("id"))


def test_it_needs_the_orgs_own_secret(cast, scim):
    assert Client().get("/scim/v2/acme/Users").status_code == 401
    status, body = scim("acme", secret=scim.secrets["globex"])("get", "/Users")
    assert status == 401 and body["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]
    assert scim("acme", secret="pcs_nope")("get", "/Users")[0] == 401
    scim_secret_issue(org=cast.acme)  # rotated: the old secret stops working
    assert scim("acme")("get", "/Users")[0] == 401


def test_okta_style_user_lifecycle(cast, scim):
    acme = scim()
    status, found = acme("get", '/Users?filter=userName eq "grace@acme.test"&startIndex=1&count=100')
    assert status == 200 and found["totalResults"] == 0
    status, grace = acme(
        "post",
        "/Users",
        {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "Grace@acme.test",
            "name": {"givenName": "Grace", "familyName": "Hopper"},
            "emails": [{"primary": True, "value": "grace@acme.test", "type": "work"}],
            "active": True,
            "externalId": "00u1abc",
        },
    )
    assert status == 201 and grace["userName"] == "grace@acme.test" and grace["active"] is True
    assert User.objects.get(pk=grace["id"]).name == "Grace Hopper"
    assert acme("get", '/Users?filter=userName eq "GRACE@acme.test"')[1]["totalResults"] == 1
    assert acme("get", '/Users?filter=externalId eq "00u1abc"')[1]["Resources"][0]["id"] == grace["id"]
    assert acme("post", "/Users", {"userName": "grace@acme.test"})[0] == 409

    status, changed = acme(
        "put",
        f"/Users/{grace['id']}",
        {"userName": "grace@acme.test", "name": {"formatted": "Rear Admiral Hopper"}},
    )
    assert status == 200 and changed["name"]["formatted"] == "Rear Admiral Hopper"

    user = User.objects.get(pk=grace["id"])
    _, raw = token_issue(user=user, name="agent")
    assert token_authenticate(raw) is not None
    status, off = acme(
        "patch",
        f"/Users/{grace['id']}",
        {
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "replace", "value": {"active": False}}],
        },
    )
    assert status == 200 and off["active"] is False
    assert token_authenticate(raw) is None  # at once
    (created,) = audit(cast.acme, "scim.user_create")
    assert created.surface == "scim" and created.detail["externalId"] == "00u1abc"
    assert audit(cast.acme, "user.create")[-1].surface == "scim"
    (deactivated,) = audit(cast.acme, "scim.user_deactivate")
    assert deactivated.detail["api_tokens_revoked"] == 1 and deactivated.surface == "scim"
    # Reactivating does not bring the revoked token back.
    acme(
        "patch", f"/Users/{grace['id']}", {"Operations": [{"op": "replace", "path": "active", "value": True}]}
    )
    assert User.objects.get(pk=grace["id"]).is_active and token_authenticate(raw) is None
    assert audit(cast.acme, "scim.user_update")[-1].detail["active"] is True


def test_entra_style_patch_and_delete(cast, scim):
    acme = scim()
    _, dave = acme("get", '/Users?filter=userName eq "dave@acme.test"')
    dave_id = dave["Resources"][0]["id"]
    status, body = acme(
        "patch",
        f"/Users/{dave_id}",
        {
            "Operations": [
                {"op": "Replace", "path": "displayName", "value": "Dave Bowman"},
                {"op": "Add", "path": 'emails[type eq "work"].value', "value": "dave@acme.test"},
                {"op": "Replace", "path": "active", "value": "False"},  # Entra sends a string
            ]
        },
    )
    assert status == 200 and body["active"] is False and body["displayName"] == "Dave Bowman"
    assert acme("delete", f"/Users/{cast.bob.user.pk}")[0] == 204
    assert not User.objects.get(pk=cast.bob.user.pk).is_active  # deactivated, records kept
    assert audit(cast.acme, "scim.user_deactivate")[-1].detail["deleted"] is True


def test_groups_and_membership(cast, scim):
    acme = scim()
    bob, dave = str(cast.bob.user.pk), str(cast.dave.user.pk)
    status, group = acme(
        "post", "/Groups", {"displayName": "oncall", "members": [{"value": bob}], "externalId": "g1"}
    )
    assert status == 201 and [m["value"] for m in group["members"]] == [bob]
    gid = group["id"]
    assert acme("get", '/Groups?filter=displayName eq "oncall"')[1]["Resources"][0]["id"] == gid
    # Okta: add, then remove by filter path.
    acme(
        "patch",
        f"/Groups/{gid}",
        {"Operations": [{"op": "add", "path": "members", "value": [{"value": dave}]}]},
    )
    assert sorted(UserGroup.objects.get(name="oncall").members.values_list("email", flat=True)) == [
        "bob@acme.test",
        "dave@acme.test",
    ]
    acme("patch", f"/Groups/{gid}", {"Operations": [{"op": "remove", "path": f'members[value eq "{bob}"]'}]})
    # Entra: remove with a value list; rename without a path.
    acme(
        "patch",
        f"/Groups/{gid}",
        {"Operations": [{"op": "Remove", "path": "members", "value": [{"value": dave}]}]},
    )
    status, renamed = acme(
        "patch", f"/Groups/{gid}", {"Operations": [{"op": "Replace", "value": {"displayName": "on-call"}}]}
    )
    assert status == 200 and renamed["displayName"] == "on-call" and renamed["members"] == []
    status, user = acme("get", f"/Users/{bob}")
    assert [g["display"] for g in user["groups"]] == ["engineering"]  # not on-call any more
    # Roles are not provisioned over SCIM.
    status, refused = acme("post", "/Groups", {"displayName": "admin"})
    assert status == 400 and "reserved" in refused["detail"]
    assert all(g["displayName"] not in ("admin", "auditor") for g in acme("get", "/Groups")[1]["Resources"])
    assert acme("delete", f"/Groups/{gid}")[0] == 204
    assert not UserGroup.objects.filter(name="on-call").exists()
    actions = [e.action for e in AuditEvent.objects.filter(org=cast.acme, surface="scim").order_by("id")]
    assert actions[:1] == ["scim.group_create"] and actions.count("scim.group_update") == 4
    assert actions[-1] == "scim.group_delete"


def test_orgs_never_see_each_other(cast, scim):
    globex = scim("globex")
    emails = [u["userName"] for u in globex("get", "/Users")[1]["Resources"]]
    assert emails == ["eve@globex.test"]
    assert globex("get", f"/Users/{cast.bob.user.pk}")[0] == 404
    assert (
        globex(
            "patch",
            f"/Users/{cast.bob.user.pk}",
            {"Operations": [{"op": "replace", "path": "active", "value": False}]},
        )[0]
        == 404
    )
    assert User.objects.get(pk=cast.bob.user.pk).is_active
    status, _ = globex("post", "/Groups", {"displayName": "x", "members": [{"value": str(cast.bob.user.pk)}]})
    assert status == 400
    assert globex("post", "/Users", {"userName": "spy@acme.test"})[0] == 400  # not globex's domain


def test_bad_input_is_a_scim_error_not_a_500(cast, scim):
    acme = scim()
    assert acme("post", "/Users", raw="{not json")[0] == 400
    status, body = acme("get", '/Users?filter=userName eq "unterminated')
    assert status == 400 and body["scimType"] == "invalidFilter"
    assert acme("get", "/Users?startIndex=x")[0] == 400
    assert acme("post", "/Users", {"userName": "not-an-email"})[0] == 400
    assert acme("get", "/Users/not-a-uuid")[0] == 404
    assert acme("patch", f"/Users/{cast.bob.user.pk}", {"Operations": []})[0] == 400
    assert (
        acme(
            "patch",
            f"/Users/{cast.bob.user.pk}",
            {"Operations": [{"op": "replace", "path": "active", "value": "maybe"}]},
        )[0]
        == 400
    )
    assert acme("get", "/ServiceProviderConfig")[1]["patch"]["supported"] is True


def _mcp_status(url: str, token: str) -> int:
    """The status /api/mcp answers an initialize request with this bearer token."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}
    return httpx2.post(url, json=body, headers=headers, timeout=30).status_code


@pytest.mark.live
def test_deactivation_cuts_off_a_live_mcp_client_at_once(cast, scim, mcp, gateway_server, transactional_db):
    assert structured(mcp(cast.bob).call("me_get"))["user_email"] == "bob@acme.test"
    assert _mcp_status(gateway_server.mcp_url, cast.bob.token) == 200
    # An OAuth access token of the built-in server, as a signed-in MCP client would hold.
    mcp_auth_update(enabled=True)
    app = get_application_model().objects.create(
        name="agent",
        client_type="public",
        authorization_grant_type="authorization-code",
        redirect_uris="http://127.0.0.1/cb",
        user=None,
    )
    oauth_raw = "oauth-" + "x" * 40
    get_access_token_model().objects.create(
        user=cast.bob.user,
        application=app,
        token=oauth_raw,
        scope="mcp:read",
        expires=timezone.now() + timedelta(hours=1),
    )
    assert _mcp_status(gateway_server.mcp_url, oauth_raw) == 200

    status, _ = scim()(
        "patch",
        f"/Users/{cast.bob.user.pk}",
        {"Operations": [{"op": "replace", "path": "active", "value": False}]},
    )
    assert status == 200
    assert _mcp_status(gateway_server.mcp_url, cast.bob.token) == 401  # the next request, no cache
    assert _mcp_status(gateway_server.mcp_url, oauth_raw) == 401
    assert not get_access_token_model().objects.filter(user=cast.bob.user).exists()
    (event,) = audit(cast.acme, "scim.user_deactivate")
    assert event.detail["api_tokens_revoked"] == 1 and event.detail["oauth_tokens_revoked"] == 1
