"""The REST API under /api/v1/: the same services, policy and audit as MCP, over DRF.

Most tests use DRF's test client against the real PostgreSQL test database; the last one goes
through the live daphne process over real HTTP.
"""

import json

import httpx2
import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from gateway.models import Connection
from gateway.services import connection_create_headless
from gateway.shapes import ConnectionOut
from governance import access, rules
from governance.services import token_issue
from sessions.models import AuditEvent, Session
from tests.conftest import make_shop_sqlite

API = "/api/v1"
SECRET = "s3cr3t-Value-that-must-never-come-back"


def client_for(who) -> APIClient:
    client = APIClient()
    token = who if isinstance(who, str) else who.token
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}", HTTP_USER_AGENT="pytest-rest")
    return client


@pytest.fixture
def api(cast):
    return {name: client_for(getattr(cast, name)) for name in ("alice", "bob", "carol", "dave", "eve")}


@pytest.fixture
def ledger(cast, shops, tmp_path):
    """acme's "ledger" (restricted to engineering) beside the two "shop" connections."""
    path = make_shop_sqlite(tmp_path / "ledger.sqlite3", "ledger")
    connection = connection_create_headless(
        org=cast.acme, name="ledger", kind="sqlite", settings={"path": str(path)}, options={}
    )
    access.access_control_set(actor=cast.alice.actor(), connection_name="ledger", groups=["engineering"])
    return connection


def error(response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:500])
    body = response.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    return body["error"]


# --- authentication ------------------------------------------------------------------------------


def test_it_answers_401_with_a_bearer_challenge(cast):
    anonymous = APIClient()
    response = anonymous.get(f"{API}/connections/")
    assert error(response, 401)["code"] == "unauthenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")
    for header in ("Bearer pcu_nope", "Bearer", "Bearer a b", "Basic Zm9vOmJhcg=="):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=header)
        assert error(client.get(f"{API}/me/"), 401)["code"] == "unauthenticated"


def test_me_names_the_actor_and_its_token_capability(cast, api):
    me = api["alice"].get(f"{API}/me/").json()
    assert me["user_email"] == "alice@acme.test" and me["is_admin"] is True and me["capability"] == "admin"
    assert me["client"].startswith("token:pytest; pytest-rest")


# --- connections ---------------------------------------------------------------------------------


def test_an_admin_manages_connections_and_secrets_never_come_back(cast, api, tmp_path):
    alice = api["alice"]
    created = alice.post(
        f"{API}/connections/",
        {
            "name": "pg-prod",
            "kind": "postgres",
            "settings": {
                "host": "db.internal",
                "port": 5432,
                "database": "app",
                "user": "ro",
                "password": SECRET,
            },
            "max_rows": 500,
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    assert SECRET not in created.content.decode()
    body = created.json()
    assert (
        body["secret_keys"] == ["password"] and body["max_rows"] == 500 and "password" not in body["config"]
    )
    for url in (f"{API}/connections/pg-prod/", f"{API}/connections/"):
        assert SECRET not in alice.get(url).content.decode()
    changed = alice.patch(
        f"{API}/connections/pg-prod/",
        {"settings": {"host": "db2.internal"}, "description": "prod"},
        format="json",
    )
    assert changed.status_code == 200 and changed.json()["config"]["host"] == "db2.internal"
    assert changed.json()["secret_keys"] == ["password"] and SECRET not in changed.content.decode()
    assert alice.delete(f"{API}/connections/pg-prod/").status_code == 204
    assert error(alice.get(f"{API}/connections/pg-prod/"), 404)["message"] == (
        'connection "pg-prod" not found or not accessible'
    )
    events = AuditEvent.objects.filter(action__startswith="connection.", target_repr="pg-prod").order_by("id")
    assert [(e.action, e.surface) for e in events] == [
        ("connection.create", "api"),
        ("connection.update", "api"),
        ("connection.delete", "api"),
    ]
    assert SECRET not in json.dumps([e.detail for e in events])


def test_rest_patch_of_runbooks_enabled_works_and_every_read_returns_it(cast, api, tmp_path):
    """MCP and the admin accepted runbooks_enabled while REST refused it (issue 19): now REST
    create and PATCH take it, and GET, list, create and PATCH return it."""
    alice = api["alice"]
    created = alice.post(
        f"{API}/connections/",
        {
            "name": "rb-off",
            "kind": "sqlite",
            "settings": {"path": str(make_shop_sqlite(tmp_path / "rb.sqlite3", "acme"))},
            "runbooks_enabled": False,
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    assert created.json()["runbooks_enabled"] is False
    assert Connection.objects.get(name="rb-off").runbooks_enabled is False
    changed = alice.patch(f"{API}/connections/rb-off/", {"runbooks_enabled": True}, format="json")
    assert changed.status_code == 200, changed.content
    assert changed.json()["runbooks_enabled"] is True
    # The body holds exactly the fields the OpenAPI schema declares (the schema omitted this one).
    assert set(changed.json()) == set(ConnectionOut.model_fields)
    assert Connection.objects.get(name="rb-off").runbooks_enabled is True
    assert alice.get(f"{API}/connections/rb-off/").json()["runbooks_enabled"] is True
    listed = alice.get(f"{API}/connections/?search=rb-off").json()["items"]
    assert [c["runbooks_enabled"] for c in listed] == [True]
    assert error(
        alice.patch(f"{API}/connections/rb-off/", {"runbooks_enabled": "maybe"}, format="json"), 400
    )["fields"].keys() == {"runbooks_enabled"}
    assert error(
        api["bob"].patch(f"{API}/connections/rb-off/", {"runbooks_enabled": False}, format="json"), 403
    )
    assert Connection.objects.get(name="rb-off").runbooks_enabled is True
    event = AuditEvent.objects.filter(action="connection.update", target_repr="rb-off").latest("id")
    assert event.surface == "api" and event.detail["after"] == {"runbooks_enabled": True}


def test_lists_are_paginated_with_a_cursor_and_filtered(cast, api, tmp_path):
    for i in range(5):
        connection_create_headless(
            org=cast.acme,
            name=f"db-{i}",
            kind="sqlite",
            settings={"path": str(tmp_path / f"{i}.db")},
            options={},
        )
    alice = api["alice"]
    seen, url, pages = [], f"{API}/connections/?limit=2&search=db-", 0
    while url:
        page = alice.get(url).json()
        assert page["total"] == 5 and len(page["items"]) <= 2
        seen += [c["name"] for c in page["items"]]
        url, pages = page["next"], pages + 1
        if page["next_cursor"]:
            assert f"cursor={page['next_cursor']}" in url
    assert seen == [f"db-{i}" for i in range(5)] and pages == 3
    assert alice.get(f"{API}/connections/?kind=postgres").json()["total"] == 0
    assert error(alice.get(f"{API}/connections/?limit=101"), 400)["fields"] == {
        "limit": "Ensure this value is less than or equal to 100."
    }
    assert "cursor" in error(alice.get(f"{API}/connections/?cursor=%%%"), 400)["message"]
    assert error(alice.get(f"{API}/connections/?colour=red"), 400)["fields"] == {"colour": "unknown field"}
    assert error(alice.get(f"{API}/connections/?kind=oracle"), 400)["code"] == "invalid"


# --- RBAC, capability, cross-org -----------------------------------------------------------------


@pytest.mark.parametrize(
    "who, method, path, body, status",
    [
        (
            "bob",
            "post",
            "/connections/",
            {"name": "x", "kind": "sqlite", "settings": {"path": "/tmp/x"}},
            403,
        ),
        (
            "carol",
            "post",
            "/connections/",
            {"name": "x", "kind": "sqlite", "settings": {"path": "/tmp/x"}},
            403,
        ),
        ("bob", "delete", "/connections/shop/", None, 403),
        ("dave", "get", "/audit-events/", None, 403),
        ("carol", "get", "/audit-events/", None, 200),
        ("bob", "get", "/guardrails/", None, 403),
        ("carol", "get", "/guardrails/", None, 200),
        ("carol", "post", "/guardrails/", {"name": "g", "input": {"deny_words": ["x"]}}, 403),
        ("carol", "get", "/attributes/", None, 403),
        ("alice", "get", "/attributes/", None, 200),
        ("bob", "get", "/users/", None, 200),
        ("bob", "post", "/groups/", {"name": "ops"}, 403),
        ("carol", "put", "/connections/shop/access-control/", {"groups": ["engineering"]}, 403),
        ("carol", "get", "/connections/shop/access-control/", None, 200),
        ("bob", "get", "/access-control/", None, 403),
    ],
)
def test_roles_are_enforced_and_refusals_audited(cast, api, shops, who, method, path, body, status):
    before = AuditEvent.objects.filter(action="api.request").count()
    response = getattr(api[who], method)(f"{API}{path}", body, format="json")
    assert response.status_code == status, response.content
    denied = AuditEvent.objects.filter(action="api.request", outcome="denied")
    if status == 403:
        assert error(response, 403)["code"] == "denied"
        assert denied.count() == before + 1
        event = denied.latest("id")
        assert event.surface == "api" and event.target_repr == f"{method.upper()} {API}{path}"
    else:
        assert denied.count() == before


def test_a_read_only_admin_token_cannot_write_over_rest(cast, shops):
    _, raw = token_issue(user=cast.alice.user, name="ro", capability="read_only")
    ro = client_for(raw)
    assert ro.get(f"{API}/connections/").status_code == 200
    refused = error(ro.delete(f"{API}/connections/shop/"), 403)["message"]
    assert "admin access required" in refused and "read_only" in refused
    assert error(ro.get(f"{API}/audit-events/"), 403)["code"] == "denied"
    assert error(
        ro.put(f"{API}/connections/shop/access-control/", {"groups": ["engineering"]}, format="json"), 403
    )
    write = ro.post(
        f"{API}/exec/", {"connection_name": "shop", "input": "delete from customers"}, format="json"
    )
    assert write.status_code == 200 and write.json()["status"] == "blocked"
    assert write.json()["rule"] == "token capability: read_only"
    from gateway.models import Connection

    assert Connection.objects.filter(org=cast.acme, name="shop").exists()


def test_other_orgs_objects_are_404_exactly_like_missing_ones(cast, api, ledger):
    acme_rule = rules.guardrail_create(actor=cast.alice.actor(), name="g", input={"deny_words": ["zebra"]})
    acme_session = Session.objects.create(
        org=cast.acme,
        user=cast.alice.user,
        connection_name="shop",
        connection_kind="sqlite",
        surface="api",
        input="x",
    )
    eve, dave = api["eve"], api["dave"]
    zero = "00000000-0000-0000-0000-000000000000"
    cases = [  # (path template, another org's object, a missing one)
        ("/connections/{}/", "ledger", "nope"),
        ("/connections/{}/access-control/", "ledger", "nope"),
        ("/users/{}/", "alice@acme.test", "nobody@acme.test"),
        ("/groups/{}/", "engineering", "nope"),
        ("/guardrails/{}/", str(acme_rule.pk), zero),
        ("/sessions/{}/", str(acme_session.pk), zero),
        ("/sessions/{}/content/", str(acme_session.pk), "not-a-uuid"),
    ]
    for template, other_org, missing in cases:
        a = error(eve.get(API + template.format(other_org)), 404)
        b = error(eve.get(API + template.format(missing)), 404)
        assert a["code"] == b["code"] == "not_found"
        assert a["message"].replace(other_org, "?") == b["message"].replace(missing, "?"), (a, b)
    # inside acme, a restricted connection is "not found" for someone outside its groups
    assert error(dave.get(f"{API}/connections/ledger/"), 404)["message"] == (
        'connection "ledger" not found or not accessible'
    )
    assert api["bob"].get(f"{API}/connections/ledger/").status_code == 200
    # eve's own "shop" is hers: the same name resolves in her org only
    assert eve.get(f"{API}/connections/shop/").json()["id"] == str(
        cast.globex.connections.get(name="shop").pk
    )


# --- bad input -----------------------------------------------------------------------------------


def test_bad_input_is_a_clear_400_never_a_500(cast, api, shops):
    alice = api["alice"]
    url = f"{API}/connections/"
    cases = [
        (alice.generic("POST", url, "{not json", content_type="application/json"), 400, "invalid_json"),
        (alice.generic("POST", url, "[1, 2]", content_type="application/json"), 400, "invalid"),
        (
            alice.post(url, {"name": "x", "kind": "sqlite", "settings": ["path"]}, format="json"),
            400,
            "invalid",
        ),
        (
            alice.post(
                url,
                {"name": "x", "kind": "sqlite", "settings": {"path": "/tmp/x"}, "max_rows": "many"},
                format="json",
            ),
            400,
            "invalid",
        ),
        (
            alice.post(url, {"name": "x" * 64, "kind": "sqlite", "settings": {}}, format="json"),
            400,
            "invalid",
        ),
        (alice.post(url, {"name": "x", "kind": "oracle", "settings": {}}, format="json"), 400, "invalid"),
        (
            alice.post(
                url, {"name": "bad name!", "kind": "sqlite", "settings": {"path": "/tmp/x"}}, format="json"
            ),
            400,
            "invalid",
        ),
        (
            alice.post(
                url,
                {"name": "x", "kind": "sqlite", "settings": {"path": "/tmp/x"}, "secret": 1},
                format="json",
            ),
            400,
            "invalid",
        ),
        (
            alice.post(
                url, {"name": "shop", "kind": "sqlite", "settings": {"path": "/tmp/x"}}, format="json"
            ),
            409,
            "conflict",
        ),
        (
            alice.generic("POST", url, "name=x", content_type="application/x-www-form-urlencoded"),
            415,
            "unsupported_media_type",
        ),
        (alice.put(url, {}, format="json"), 405, "method_not_allowed"),
        (alice.post(f"{API}/exec/", {"connection_name": "shop", "input": 5}, format="json"), 400, "invalid"),
        (alice.post(f"{API}/exec/", {"connection_name": "shop"}, format="json"), 400, "invalid"),
        (
            alice.post(
                f"{API}/guardrails/",
                {"name": "g", "input": {"sql": {"deny_statements": ["nuke"]}}},
                format="json",
            ),
            400,
            "invalid",
        ),
        (alice.get(f"{API}/sessions/?start_date=yesterday"), 400, "invalid"),
        (alice.get(f"{API}/sessions/?status=weird"), 400, "invalid"),
    ]
    for response, status, code in cases:
        body = error(response, status)
        assert body["code"] == code, body
        assert body["message"]
    unknown = error(cases[7][0], 400)
    assert unknown["fields"] == {"secret": "unknown field"}


def test_a_body_above_the_upload_limit_is_a_413_never_a_500(cast, api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    big = {"connection_name": "shop", "input": "select 1 -- " + "x" * 2000}
    refused = api["alice"].post(f"{API}/exec/explain/", big, format="json")
    assert error(refused, 413)["code"] == "too_large"


# --- exec, sessions, audit -----------------------------------------------------------------------


def test_exec_answers_the_mcp_envelope_and_sessions_follow(cast, transactional_db, shops):
    alice, bob = client_for(cast.alice), client_for(cast.bob)
    done = alice.post(
        f"{API}/exec/",
        {"connection_name": "shop", "input": "select name from customers order by id"},
        format="json",
    )
    assert done.status_code == 200, done.content
    envelope = done.json()
    assert envelope["status"] == "completed" and envelope["rows"] == [
        ["acme one"],
        ["acme two"],
        ["acme three"],
    ]
    rules.guardrail_create(
        actor=cast.alice.actor(),
        name="no-deletes",
        input={"sql": {"deny_statements": ["delete"]}},
        connections=["shop"],
    )
    blocked = bob.post(
        f"{API}/exec/", {"connection_name": "shop", "input": "delete from customers"}, format="json"
    )
    assert blocked.json()["status"] == "blocked" and blocked.json()["rule"] == "no-deletes"
    gone = bob.post(f"{API}/exec/", {"connection_name": "nope", "input": "select 1"}, format="json")
    assert error(gone, 404)["message"] == 'connection "nope" not found or not accessible'
    # sessions: bob sees his own; alice the org's; filters and content
    assert bob.get(f"{API}/sessions/").json()["total"] == 1
    listed = alice.get(f"{API}/sessions/?status=done&connection=shop").json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == envelope["session_id"]
    content = alice.get(f"{API}/sessions/{envelope['session_id']}/content/").json()
    assert content["input"] == "select name from customers order by id" and content["rows"][0] == ["acme one"]
    assert error(bob.get(f"{API}/sessions/{envelope['session_id']}/"), 404)["message"] == "session not found"
    # audit: one exec.request per exec, with the api surface
    requests = AuditEvent.objects.filter(action="exec.request", surface="api").order_by("id")
    assert [e.outcome for e in requests] == ["success", "blocked", "denied"]
    audit = alice.get(f"{API}/audit-events/?action=exec.request&limit=2").json()
    assert audit["total"] == 3 and len(audit["items"]) == 2 and audit["next_cursor"]
    assert all(item["surface"] == "api" for item in audit["items"])


# --- users, groups, access control ---------------------------------------------------------------


def test_users_groups_and_access_control_through_the_services(cast, api, shops):
    alice = api["alice"]
    user = alice.post(f"{API}/users/", {"email": "Frank@acme.test", "groups": ["engineering"]}, format="json")
    assert user.status_code == 201 and user.json()["email"] == "frank@acme.test"
    group = alice.post(f"{API}/groups/", {"name": "dba", "members": ["frank@acme.test"]}, format="json")
    assert group.status_code == 201 and group.json()["members"] == ["frank@acme.test"]
    patched = alice.patch(f"{API}/groups/dba/", {"add": ["bob@acme.test"]}, format="json").json()
    assert patched["members"] == ["bob@acme.test", "frank@acme.test"]
    bound = alice.put(f"{API}/connections/shop/access-control/", {"groups": ["dba"]}, format="json").json()
    assert bound["allowed_groups"] == ["dba"] and bound["restricted"] is True
    assert error(api["dave"].get(f"{API}/connections/shop/"), 404)["code"] == "not_found"
    assert error(alice.delete(f"{API}/groups/dba/"), 409)["message"].startswith(
        'group "dba" is the only access group'
    )
    assert error(alice.delete(f"{API}/groups/admin/"), 400)["message"] == "cannot delete the admin group"
    assert alice.delete(f"{API}/connections/shop/access-control/").json()["restricted"] is False
    assert api["dave"].get(f"{API}/connections/shop/").status_code == 200
    assert alice.delete(f"{API}/groups/dba/").status_code == 204
    last_admin = alice.patch(f"{API}/users/alice@acme.test/", {"groups": []}, format="json")
    assert error(last_admin, 409)["code"] == "conflict"
    actions = list(
        AuditEvent.objects.filter(surface="api", outcome="success")
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == [
        "user.create",
        "usergroup.create",
        "usergroup.members",
        "access_control.set",
        "access_control.unset",
        "usergroup.delete",
    ]


def test_rules_and_attributes_round_trip(cast, api, shops):
    alice = api["alice"]
    attribute = alice.post(f"{API}/attributes/", {"name": "prod", "connections": ["shop"]}, format="json")
    assert attribute.status_code == 201 and attribute.json()["connections"] == ["shop"]
    rule = alice.post(
        f"{API}/guardrails/",
        {"name": "no-drop", "input": {"sql": {"deny_statements": ["drop"]}}, "attributes": ["prod"]},
        format="json",
    ).json()
    assert rule["attributes"] == ["prod"]
    assert alice.get(f"{API}/guardrails/no-drop/").json()["id"] == rule["id"]
    assert (
        alice.patch(f"{API}/guardrails/{rule['id']}/", {"enabled": False}, format="json").json()["enabled"]
        is False
    )
    masking = alice.post(
        f"{API}/masking-rules/",
        {"name": "emails", "spec": {"entities": ["EMAIL_ADDRESS"]}, "connections": ["shop"]},
        format="json",
    )
    assert masking.status_code == 201, masking.content
    assert alice.get(f"{API}/masking-rules/").json()["total"] == 1
    assert alice.delete(f"{API}/guardrails/no-drop/").status_code == 204
    assert alice.delete(f"{API}/attributes/prod/").status_code == 204


# --- the schema and the docs page ----------------------------------------------------------------


def test_the_openapi_schema_generates_without_warnings_and_the_docs_page_is_offline(cast, tmp_path):
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))
    anonymous = APIClient()
    schema = anonymous.get(f"{API}/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    document = json.loads(schema.content)
    assert "/api/v1/exec/" in document["paths"] and "apiToken" in document["components"]["securitySchemes"]
    docs = anonymous.get(f"{API}/docs/")
    assert docs.status_code == 200
    page = docs.content.decode()
    assert "swagger-ui" in page and "cdn" not in page.lower() and "drf_spectacular_sidecar" in page


# --- over real HTTP ------------------------------------------------------------------------------


@pytest.mark.live
def test_it_works_over_real_http_through_the_live_gateway(cast, gateway_server, transactional_db, shops):
    headers = {"Authorization": f"Bearer {cast.bob.token}"}
    base = f"{gateway_server.url}{API}"
    assert httpx2.get(f"{base}/connections/").status_code == 401
    listed = httpx2.get(f"{base}/connections/", headers=headers).json()
    assert [c["name"] for c in listed["items"]] == ["shop"]
    run = httpx2.post(
        f"{base}/exec/",
        headers=headers,
        json={"connection_name": "shop", "input": "select count(*) from customers"},
    )
    assert run.status_code == 200 and run.json()["status"] == "completed" and run.json()["rows"] == [[3]]
    bad = httpx2.post(
        f"{base}/exec/", headers={**headers, "Content-Type": "application/json"}, content=b"{oops"
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    denied = httpx2.post(
        f"{base}/connections/", headers=headers, json={"name": "x", "kind": "sqlite", "settings": {}}
    )
    assert denied.status_code == 403 and denied.json()["error"]["message"] == "admin access required"
    assert httpx2.get(f"{gateway_server.url}{API}/docs/").status_code == 200
    event = AuditEvent.objects.filter(action="exec.request", surface="api").get()
    assert event.client.startswith("token:pytest")


# --- reviews -------------------------------------------------------------------------------------


def test_reviews_over_rest_gate_decide_and_execute_once(cast, transactional_db, shops):
    from governance.services import user_create
    from reviews import services as reviews

    frank = user_create(org=cast.acme, email="frank@acme.test", groups=["dba"])
    reviews.access_rule_create(
        actor=cast.alice.actor(),
        name="prod",
        access_type="command",
        connections=["shop"],
        reviewer_groups=["dba"],
        min_approvals=1,
    )
    bob, dave = client_for(cast.bob), client_for(cast.dave)
    frank_rw = client_for(token_issue(user=frank, name="f")[1])
    frank_ro = client_for(token_issue(user=frank, name="f-ro", capability="read_only")[1])
    pending = bob.post(
        f"{API}/exec/",
        {"connection_name": "shop", "input": "delete from customers where id = 1"},
        format="json",
    ).json()
    assert pending["status"] == "pending_approval" and pending["review_id"]
    review_url = f"{API}/reviews/{pending['review_id']}/"
    assert bob.get(review_url).json()["input"] == "delete from customers where id = 1"
    assert error(dave.get(review_url), 404)["code"] == "not_found"
    assert frank_rw.get(f"{API}/reviews/?waiting_for_me=true").json()["total"] == 1
    assert error(bob.patch(review_url, {"status": "APPROVED"}, format="json"), 403)["code"] == "denied"
    assert (
        "read_write needed"
        in error(frank_ro.patch(review_url, {"status": "APPROVED"}, format="json"), 403)["message"]
    )
    assert error(frank_rw.patch(review_url, {"status": "MAYBE"}, format="json"), 400)["fields"]["status"]
    # decisions with a token are off until an admin turns them on (as over MCP)
    assert (
        "turned off"
        in error(frank_rw.patch(review_url, {"status": "APPROVED"}, format="json"), 403)["message"]
    )
    reviews.review_settings_update(actor=cast.alice.actor(), mcp_decisions_enabled=True)
    approved = frank_rw.patch(review_url, {"status": "APPROVED", "reason": "ok"}, format="json")
    assert approved.status_code == 200 and approved.json()["status"] == "APPROVED"
    assert error(frank_rw.post(f"{review_url}execute/"), 403)["code"] == "denied"  # only the requester
    ran = bob.post(f"{review_url}execute/").json()
    assert ran["status"] == "completed" and ran["session_id"] == pending["session_id"]
    again = bob.post(f"{review_url}execute/")
    assert again.status_code in (403, 409) and error(again, again.status_code)["message"]
    approvals = AuditEvent.objects.filter(surface="api", action="review.approve", outcome="success")
    assert list(approvals.values_list("actor_email", flat=True)) == ["frank@acme.test"]


# --- query counts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/connections/", "/groups/", "/users/", "/guardrails/", "/sessions/", "/audit-events/"]
)
def test_list_endpoints_do_not_query_per_item(cast, api, tmp_path, path):
    """A page of 12 costs the same number of queries as a page of 2 (no N+1)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from governance.services import user_create

    admin = cast.alice.actor()

    def grow(start, end):
        for i in range(start, end):
            c = connection_create_headless(
                org=cast.acme,
                name=f"c{i}",
                kind="sqlite",
                settings={"path": str(tmp_path / f"{i}.db")},
                options={},
            )
            user_create(actor=admin, email=f"u{i}@acme.test", groups=["engineering"])
            access.access_control_set(actor=admin, connection_name=c.name, groups=["engineering"])
            rules.guardrail_create(
                actor=admin, name=f"g{i}", input={"deny_words": ["x"]}, connections=[c.name]
            )
            Session.objects.create(
                org=cast.acme,
                user=cast.alice.user,
                connection_name=c.name,
                connection_kind="sqlite",
                surface="api",
            )

    def count():
        with CaptureQueriesContext(connection) as queries:
            response = api["alice"].get(f"{API}{path}?limit=12")
        assert response.status_code == 200
        return len(queries)

    grow(0, 2)
    count()  # the token's first use of the minute also writes last_used_at
    small = count()
    grow(2, 14)
    count()  # growing can take over a minute on a loaded machine: refresh last_used_at again
    assert count() == small
