"""OIDC sign-in against a real provider (tests/idp, its own process), throttling and the audit
records of each attempt. The gateway runs in Django's test client; the IdP over real HTTP."""

from __future__ import annotations

import pytest
from django.test import Client

from governance.errors import Conflict, InvalidInput
from governance.models import ExternalIdentity, User, UserGroup
from governance.services import user_create
from governance.sso import idp_configure
from sessions.models import AuditEvent
from tests.sso_helpers import CLIENT_ID, CLIENT_SECRET, idp, idp_login, local_path, sso_sign_in, sso_start  # noqa: F401

PASSWORD = "correct horse battery staple"


@pytest.fixture
def acme_sso(cast, idp):  # noqa: F811
    UserGroup.objects.create(org=cast.acme, name="reviewers")
    provider = idp_configure(
        org=cast.acme,
        issuer=idp.issuer,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        allowed_domains=["acme.test"],
        group_map={"okta-reviewers": "reviewers", "okta-admins": "admin", "okta-auditors": "auditor"},
    )
    idp.tamper()
    return provider


def events(org, action):
    return list(AuditEvent.objects.filter(org=org, action=action).order_by("id"))


def test_it_signs_in_a_new_user_with_groups_from_the_idp(cast, acme_sso, idp):  # noqa: F811
    sub = idp.user("grace", "grace@acme.test", groups=["okta-reviewers", "okta-auditors", "unmapped"])
    client = Client()
    response, _ = sso_sign_in(client, "grace@acme.test", "grace", next_url="/reviews/")
    assert response.status_code == 302 and response["Location"] == "/reviews/"
    grace = User.objects.get(email="grace@acme.test")
    assert grace.org == cast.acme
    assert ExternalIdentity.objects.get(issuer=idp.issuer, subject=sub).user == grace
    assert sorted(grace.user_groups.values_list("name", flat=True)) == ["auditor", "reviewers"]
    assert client.get("/reviews/").status_code == 200  # logged in
    (login,) = events(cast.acme, "auth.login")
    assert login.surface == "web" and login.actor == grace and login.outcome == "success"
    assert login.detail["method"] == "sso" and login.detail["created"] is True
    assert login.detail["groups_added"] == ["auditor", "reviewers"]

    # The IdP takes her out of reviewers: the next sign-in takes her out here too.
    idp.user("grace", "grace@acme.test", groups=["okta-auditors"])
    response, _ = sso_sign_in(Client(), "grace@acme.test", "grace")
    assert response.status_code == 302
    assert sorted(grace.user_groups.values_list("name", flat=True)) == ["auditor"]
    assert events(cast.acme, "auth.login")[-1].detail["groups_removed"] == ["reviewers"]


def test_it_matches_by_subject_not_by_email(cast, acme_sso, idp):  # noqa: F811
    idp.user("bob-at-idp", "bob@acme.test", groups=[])
    response, _ = sso_sign_in(Client(), "bob@acme.test", "bob-at-idp")
    assert response.status_code == 302  # first sign-in links the existing bob (same org, verified)
    # Another IdP account claiming bob's e-mail is not bob.
    idp.user("impostor", "bob@acme.test", groups=["okta-admins"])
    response, _ = sso_sign_in(Client(), "bob@acme.test", "impostor")
    assert response.status_code == 403
    assert "_auth_user_id" not in response.wsgi_request.session
    failed = events(cast.acme, "auth.login_failed")[-1]
    assert "linked to another subject" in failed.detail["reason"]
    assert not cast.bob.user.user_groups.filter(name="admin").exists()


@pytest.mark.parametrize(
    "tamper, reason",
    [
        ({"claims": {"iss": "http://127.0.0.1:1/evil"}}, "iss"),
        ({"claims": {"aud": "another-client"}}, "aud"),
        ({"drop_nonce": True}, "nonce"),
        ({"forge_signature": True}, "signature"),
    ],
    ids=["wrong-issuer", "wrong-audience", "missing-nonce", "forged-signature"],
)
def test_it_refuses_a_bad_id_token(cast, acme_sso, idp, tamper, reason):  # noqa: F811
    idp.user("grace", "grace@acme.test", groups=["okta-admins"])
    idp.tamper(**tamper)
    client = Client()
    response, _ = sso_sign_in(client, "grace@acme.test", "grace")
    assert response.status_code == 403
    assert client.get("/sessions/").status_code == 302  # still anonymous
    assert not User.objects.filter(email="grace@acme.test").exists()
    (failed,) = events(cast.acme, "auth.login_failed")
    assert failed.outcome == "denied" and failed.surface == "web" and failed.detail["method"] == "sso"
    assert reason in failed.detail["reason"]
    assert not events(cast.acme, "auth.login")


def test_it_refuses_a_replayed_state(cast, acme_sso, idp):  # noqa: F811
    idp.user("grace", "grace@acme.test")
    client = Client()
    response, callback = sso_sign_in(client, "grace@acme.test", "grace")
    assert response.status_code == 302
    client.post("/logout/")
    replay = client.get(local_path(callback))
    assert replay.status_code == 400 and b"not valid any more" in replay.content
    assert client.get("/sessions/").status_code == 302
    failed = events(cast.acme, "auth.login_failed")[-1]
    assert failed.detail["reason"] == "unknown or already used state"
    # In a browser that never started this sign-in (a stolen link), the state is unknown too.
    assert Client().get(local_path(callback)).status_code == 400
    assert len(events(cast.acme, "auth.login_failed")) == 2


def test_it_refuses_an_email_of_another_orgs_domain(cast, acme_sso, idp):  # noqa: F811
    idp.user("mallory", "mallory@globex.test", groups=["okta-admins"])
    client = Client()
    started = client.get("/login/sso/acme/?next=/sessions/")  # the org-specific URL
    assert started.status_code == 302
    response = client.get(local_path(idp_login(started["Location"], "mallory")))
    assert response.status_code == 403 and b"may not sign in" in response.content
    assert not User.objects.filter(email="mallory@globex.test").exists()
    failed = events(cast.acme, "auth.login_failed")[-1]
    assert "globex.test" in failed.detail["reason"] and failed.detail["email"] == "mallory@globex.test"
    # Eve of globex is refused through acme's IdP even with her real address.
    idp.user("eve-at-acme-idp", "eve@globex.test", groups=["okta-admins"])
    started = Client().get("/login/sso/acme/")
    assert Client().get(local_path(idp_login(started["Location"], "eve-at-acme-idp"))).status_code in (
        400,
        403,
    )


def test_a_user_removed_at_the_idp_cannot_sign_in(cast, acme_sso, idp):  # noqa: F811
    idp.user("grace", "grace@acme.test")
    assert sso_sign_in(Client(), "grace@acme.test", "grace")[0].status_code == 302
    idp.control(op="delete_user", username="grace")
    client = Client()
    started = sso_start(client, "grace@acme.test")
    assert idp_login(started["Location"], "grace") == ""  # the IdP refuses her
    # An IdP that answers with an error instead is refused and recorded here.
    state = started["Location"].split("state=")[1].split("&")[0]
    response = client.get(f"/login/sso/callback/?error=access_denied&state={state}")
    assert response.status_code == 403 and client.get("/sessions/").status_code == 302
    assert "access_denied" in events(cast.acme, "auth.login_failed")[-1].detail["reason"]


def test_a_deactivated_user_cannot_sign_in(cast, acme_sso, idp):  # noqa: F811
    idp.user("bob-idp", "bob@acme.test")
    cast.bob.user.is_active = False
    cast.bob.user.save()
    assert sso_sign_in(Client(), "bob@acme.test", "bob-idp")[0].status_code == 403
    assert "deactivated" in events(cast.acme, "auth.login_failed")[-1].detail["reason"]


def test_logout_is_recorded_and_ends_the_idp_session(cast, acme_sso, idp):  # noqa: F811
    idp.user("grace", "grace@acme.test")
    client = Client()
    sso_sign_in(client, "grace@acme.test", "grace")
    response = client.post("/logout/")
    assert response.status_code == 302
    assert (
        response["Location"].startswith(f"{idp.issuer}/logout/") and "id_token_hint=" in response["Location"]
    )
    assert client.get("/sessions/").status_code == 302
    (logout,) = events(cast.acme, "auth.logout")
    assert logout.actor.email == "grace@acme.test" and logout.detail["method"] == "sso"


def test_the_login_page_sends_an_sso_domain_to_its_idp_and_others_to_passwords(cast, acme_sso, idp):  # noqa: F811
    assert sso_start(Client(), "someone@acme.test")["Location"].startswith(f"{idp.issuer}/authorize/")
    location = sso_start(Client(), "someone@acme.test")["Location"]
    assert "code_challenge_method=S256" in location and "nonce=" in location and "state=" in location
    response = sso_start(Client(), "eve@globex.test")
    assert response.status_code == 400 and b"No single sign-on" in response.content


# --- passwords: off per org, break-glass, throttling ----------------------------------------


def test_passwords_off_lets_only_the_break_glass_admin_in(cast, acme_sso):
    for person in (cast.alice, cast.bob):
        person.user.set_password(PASSWORD)
        person.user.save()
    with pytest.raises(InvalidInput, match="break-glass"):
        idp_configure(org=cast.acme, password_login=False)
    idp_configure(org=cast.acme, password_login=False, break_glass_email="alice@acme.test")

    refused = Client().post("/login/", {"username": "bob@acme.test", "password": PASSWORD})
    assert refused.status_code == 200 and b"signs in with its identity provider" in refused.content
    assert (
        events(cast.acme, "auth.login_failed")[-1].detail["reason"]
        == "password sign-in is off for this organization"
    )

    alice = Client()
    assert alice.post("/login/", {"username": "alice@acme.test", "password": PASSWORD}).status_code == 302
    (glass,) = events(cast.acme, "auth.break_glass")
    assert glass.actor == cast.alice.user and glass.surface == "web"
    # Other orgs are unaffected.
    cast.eve.user.set_password(PASSWORD)
    cast.eve.user.save()
    assert Client().post("/login/", {"username": "eve@globex.test", "password": PASSWORD}).status_code == 302


def test_it_locks_out_after_repeated_failures_even_with_the_right_password(cast, settings):
    cast.bob.user.set_password(PASSWORD)
    cast.bob.user.save()
    client = Client()
    statuses = [
        client.post("/login/", {"username": "Bob@acme.test", "password": f"wrong {i}"}).status_code
        for i in range(settings.AXES_FAILURE_LIMIT)
    ]
    assert statuses[:-1] == [200] * (settings.AXES_FAILURE_LIMIT - 1) and statuses[-1] == 429
    right = client.post("/login/", {"username": "bob@acme.test", "password": PASSWORD})
    assert right.status_code == 429 and b"Too many failed sign-ins" in right.content
    assert client.get("/sessions/").status_code == 302
    failed = events(cast.acme, "auth.login_failed")
    assert len(failed) == settings.AXES_FAILURE_LIMIT - 1
    assert all(e.detail["email"] == "bob@acme.test" and e.outcome == "denied" for e in failed)
    locked = events(cast.acme, "auth.lockout")
    assert len(locked) == 2 and not events(cast.acme, "auth.login")
    # Another person from the same address is not locked out.
    cast.dave.user.set_password(PASSWORD)
    cast.dave.user.save()
    assert Client().post("/login/", {"username": "dave@acme.test", "password": PASSWORD}).status_code == 302


def test_admin_logins_are_recorded_with_surface_admin(cast):
    cast.alice.user.set_password(PASSWORD)
    cast.alice.user.save()
    assert (
        Client().post("/admin/login/", {"username": "alice@acme.test", "password": "nope nope"}).status_code
        == 200
    )
    (failed,) = events(cast.acme, "auth.login_failed")
    assert failed.surface == "admin"
    client = Client()
    response = client.post(
        "/admin/login/?next=/admin/", {"username": "alice@acme.test", "password": PASSWORD, "next": "/admin/"}
    )
    assert response.status_code == 302
    (login,) = events(cast.acme, "auth.login")
    assert login.surface == "admin" and login.actor == cast.alice.user
    assert client.post("/admin/logout/").status_code == 302
    assert events(cast.acme, "auth.logout")[0].surface == "admin"


def test_configuration_is_checked_and_audited(cast, idp):  # noqa: F811
    with pytest.raises(InvalidInput):
        idp_configure(org=cast.acme, issuer="ftp://x", client_id="c", allowed_domains=["acme.test"])
    with pytest.raises(InvalidInput, match="not a group"):
        idp_configure(
            org=cast.acme,
            issuer=idp.issuer,
            client_id="c",
            allowed_domains=["acme.test"],
            group_map={"x": "nope"},
        )
    idp_configure(
        org=cast.acme, issuer=idp.issuer, client_id="c", client_secret="hidden", allowed_domains=["acme.test"]
    )
    with pytest.raises(Conflict, match="another organization"):
        idp_configure(org=cast.globex, issuer=idp.issuer, client_id="c", allowed_domains=["ACME.test"])
    (configured,) = events(cast.acme, "sso.configure")
    assert configured.detail["changes"]["client_secret"] == "changed"
    assert "hidden" not in str(configured.detail)
    user_create(org=cast.acme, email="x@acme.test")


def test_admins_configure_sso_in_the_admin_with_a_write_only_secret(cast, idp):  # noqa: F811
    alice = Client()
    alice.force_login(cast.alice.user)
    form = {
        "enabled": "on",
        "issuer": idp.issuer,
        "client_id": CLIENT_ID,
        "client_secret": "top-secret-value",
        "scopes": "openid email profile",
        "groups_claim": "groups",
        "domains_text": "acme.test",
        "group_map_text": "okta-admins = admin\nokta-auditors = auditor",
        "password_login": "on",
        "break_glass_user": "",
        "slug": "",
    }
    response = alice.post("/admin/governance/identityprovider/add/", form)
    assert response.status_code == 302, response.content.decode()[-2000:]
    provider = cast.acme.identity_provider
    assert provider.group_map == {"okta-admins": "admin", "okta-auditors": "auditor"}
    page = alice.get(f"/admin/governance/identityprovider/{provider.pk}/change/").content.decode()
    assert "top-secret-value" not in page and "/login/sso/callback/" in page
    # Saving again with an empty secret keeps the stored one.
    form.update(client_secret="", group_map_text="okta-admins = nope")
    response = alice.post(f"/admin/governance/identityprovider/{provider.pk}/change/", form)
    assert response.status_code == 200 and "not a group of acme" in response.content.decode()
    form.update(group_map_text="okta-admins = admin")
    assert alice.post(f"/admin/governance/identityprovider/{provider.pk}/change/", form).status_code == 302
    from governance.sso import client_secret

    provider.refresh_from_db()
    assert client_secret(provider) == "top-secret-value" and provider.group_map == {"okta-admins": "admin"}
    configured = events(cast.acme, "sso.configure")
    assert [e.surface for e in configured] == ["admin", "admin"] and configured[0].actor == cast.alice.user
    # Auditors read it, members and other orgs' admins do not see it at all.
    carol = Client()
    carol.force_login(cast.carol.user)
    assert carol.get(f"/admin/governance/identityprovider/{provider.pk}/change/").status_code == 200
    assert carol.post(f"/admin/governance/identityprovider/{provider.pk}/change/", form).status_code == 403
    eve = Client()
    eve.force_login(cast.eve.user)
    assert eve.get(f"/admin/governance/identityprovider/{provider.pk}/change/").status_code == 404


def test_sso_into_the_admin_gives_the_idps_admin_role_and_surface_admin(cast, acme_sso, idp):  # noqa: F811
    idp.user("root", "root@acme.test", groups=["okta-admins"])
    client = Client()
    assert client.get("/admin/").status_code == 302
    response, _ = sso_sign_in(client, "root@acme.test", "root", next_url="/admin/")
    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200  # admin role from the IdP's group
    (login,) = events(cast.acme, "auth.login")
    assert login.surface == "admin" and login.detail["groups"] == ["admin"]
    # The admin's own login page offers the same sign-in.
    assert b'id="admin-sso"' in Client().get("/admin/login/?next=/admin/").content


def test_the_admin_login_locks_out_too(cast, settings):
    cast.alice.user.set_password(PASSWORD)
    cast.alice.user.save()
    client = Client()
    for i in range(settings.AXES_FAILURE_LIMIT):
        client.post("/admin/login/", {"username": "alice@acme.test", "password": f"wrong {i}"})
    response = client.post("/admin/login/", {"username": "alice@acme.test", "password": PASSWORD})
    assert response.status_code == 429
    assert client.get("/admin/").status_code == 302
    assert {e.surface for e in events(cast.acme, "auth.lockout")} == {"admin"}


def test_it_refuses_an_idp_whose_discovery_names_another_issuer(cast, acme_sso, idp):  # noqa: F811
    # The configured issuer must be the one the IdP's own metadata names, exactly.
    idp_configure(org=cast.acme, issuer=idp.issuer + "/")
    response = sso_start(Client(), "grace@acme.test")
    assert response.status_code == 502 and b"misconfigured" in response.content
    (failed,) = events(cast.acme, "auth.login_failed")
    assert "discovery names issuer" in failed.detail["reason"] and failed.outcome == "failed"


def test_it_refuses_when_the_code_exchange_fails(cast, acme_sso, idp):  # noqa: F811
    idp.user("grace", "grace@acme.test")
    idp_configure(org=cast.acme, client_secret="not the client's secret")
    response, _ = sso_sign_in(Client(), "grace@acme.test", "grace")
    assert response.status_code == 403 and not User.objects.filter(email="grace@acme.test").exists()
    assert "code exchange failed" in events(cast.acme, "auth.login_failed")[-1].detail["reason"]


def test_it_never_redirects_off_site_after_sign_in(cast, acme_sso, idp):  # noqa: F811
    idp.user("grace", "grace@acme.test")
    response, _ = sso_sign_in(Client(), "grace@acme.test", "grace", next_url="https://evil.example/steal")
    assert response.status_code == 302 and response["Location"] == "/"
