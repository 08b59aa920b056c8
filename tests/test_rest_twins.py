"""REST twins of operations that were MCP- or admin-only (issue 15): the same services, policy and
audit as the MCP tools, over /api/v1/ with API tokens."""

from __future__ import annotations

import uuid

import pytest
from rest_framework.test import APIClient

from governance.services import usergroup_create
from reviews.services import access_rule_create, review_decide
from sessions.models import AuditEvent, Session, WebhookDelivery
from sessions.services import analysis_run
from sessions.webhooks import webhook_endpoint_create

API = "/api/v1"


def _client(person):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {person.token}")
    return client


@pytest.fixture
def admin_token(cast):
    """alice's token with capability admin (a default token acts as a standard member)."""
    from governance.services import token_issue

    _, raw = token_issue(user=cast.alice.user, name="rest-admin", capability="admin")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def test_access_request_rules_and_jit_requests(cast, shops, admin_token):
    body = {
        "name": "shop-jit",
        "access_type": "jit",
        "connections": ["shop"],
        "reviewer_groups": ["engineering"],
    }
    created = admin_token.post(f"{API}/access-request-rules/", body, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["reviewer_groups"] == ["engineering"]
    assert _client(cast.carol).post(f"{API}/access-request-rules/", body, format="json").status_code == 403
    changed = admin_token.patch(f"{API}/access-request-rules/shop-jit/", {"enabled": False}, format="json")
    assert changed.status_code == 200 and changed.json()["enabled"] is False
    event = AuditEvent.objects.filter(action="access_request_rule.update").latest("id")
    assert event.surface == "api" and event.detail["before"] == {"enabled": True}
    assert event.detail["after"] == {"enabled": False}
    admin_token.patch(f"{API}/access-request-rules/shop-jit/", {"enabled": True}, format="json")

    asked = _client(cast.dave).post(
        f"{API}/access-requests/", {"connection_name": "shop", "reason": "incident 7"}, format="json"
    )
    assert asked.status_code == 201, asked.content
    assert asked.json()["type"] == "jit" and asked.json()["status"] == "PENDING"
    bad = _client(cast.dave).post(f"{API}/access-requests/", {"connection_name": "shop"}, format="json")
    assert bad.status_code == 400
    assert admin_token.delete(f"{API}/access-request-rules/shop-jit/").status_code == 204


def test_runbook_rules_and_runbooks(cast, shops, admin_token):
    runbook = {"connection_name": "shop", "name": "count", "template": "select count(*) from customers"}
    assert admin_token.post(f"{API}/runbooks/", runbook, format="json").status_code == 201
    rule = {"name": "eng-count", "groups": ["engineering"], "runbooks": ["count"], "connections": ["shop"]}
    assert admin_token.post(f"{API}/runbook-rules/", rule, format="json").status_code == 201
    assert [r["name"] for r in _client(cast.bob).get(f"{API}/runbooks/").json()] == ["count"]
    assert _client(cast.dave).get(f"{API}/runbooks/").json() == []  # no rule lets dave
    listed = _client(cast.carol).get(f"{API}/runbook-rules/").json()
    assert [r["name"] for r in listed["items"]] == ["eng-count"]
    patched = admin_token.patch(f"{API}/runbooks/shop/count/", {"description": "how many"}, format="json")
    assert patched.status_code == 200 and patched.json()["description"] == "how many"
    one = admin_token.get(f"{API}/runbooks/shop/count/")  # as config_get kind=runbook
    assert one.status_code == 200 and one.json()["template"] == "select count(*) from customers"
    assert _client(cast.bob).get(f"{API}/runbooks/shop/count/").status_code == 403  # admins only
    event = AuditEvent.objects.filter(action="runbook.update").latest("id")
    assert event.detail["before"] == {"description": ""} and event.detail["after"] == {
        "description": "how many"
    }


@pytest.mark.django_db(transaction=True)
def test_schema_browsing_explain_and_analysis(cast, shops, admin_token):
    from governance import rules

    rules.guardrail_create(
        actor=cast.alice.actor(),
        name="no-deletes",
        input={"sql": {"deny_statements": ["delete"]}},
        connections=["shop"],
    )
    bob = _client(cast.bob)
    tables = bob.get(f"{API}/connections/shop/tables/")
    assert tables.status_code == 200 and "customers" in [t["name"] for t in tables.json()["items"]]
    columns = bob.get(f"{API}/connections/shop/columns/", {"table": "customers"}).json()["items"]
    assert [c["name"] for c in columns] == ["id", "name", "email"]
    assert bob.get(f"{API}/connections/shop/columns/", {"nope": "x"}).status_code == 400
    assert bob.get(f"{API}/connections/no-such/tables/").status_code == 404

    explained = bob.post(
        f"{API}/exec/explain/", {"connection_name": "shop", "input": "delete from customers"}, format="json"
    )
    assert explained.status_code == 200 and explained.json()["blocked_by"] == ["no-deletes"]

    session = Session.objects.filter(user=cast.bob.user, verb="schema").latest("created_at")
    analysis = bob.get(f"{API}/sessions/{session.pk}/analysis/")
    assert analysis.status_code == 200 and analysis.json()["status"] in ("ready", "pending")
    assert _client(cast.dave).get(f"{API}/sessions/{session.pk}/analysis/").status_code == 404

    stats = _client(cast.carol).get(f"{API}/sessions/stats/", {"group_by": "user,verb"}).json()
    assert {"user": "bob@acme.test", "verb": "schema", "count": 2} in stats["groups"]
    assert _client(cast.carol).get(f"{API}/sessions/stats/", {"group_by": "nope"}).status_code == 400


def test_webhooks_and_review_settings_and_import(cast, shops, admin_token):
    secret = "rest-webhook-secret-0123456789"
    created = admin_token.post(
        f"{API}/webhooks/",
        {"name": "siem", "url": "https://siem.example.test/in", "secret": secret},
        format="json",
    )
    assert created.status_code == 201 and created.json()["has_secret"] is True
    listed = admin_token.get(f"{API}/webhooks/")
    assert secret not in listed.content.decode() and listed.json()["items"][0]["name"] == "siem"
    assert _client(cast.carol).get(f"{API}/webhooks/").status_code == 403

    assert _client(cast.carol).get(f"{API}/review-settings/").json()["mcp_decisions_enabled"] is False
    assert admin_token.patch(
        f"{API}/review-settings/", {"mcp_decisions_enabled": True}, format="json"
    ).json()["mcp_decisions_enabled"]

    path = shops["acme"].config["path"]
    rows = [
        {"name": "bulk-1", "kind": "sqlite", "settings": {"path": path}},
        {"name": "Shop", "kind": "sqlite"},
    ]
    answer = admin_token.post(
        f"{API}/connections/import/", {"rows": rows, "dry_run": True}, format="json"
    ).json()
    assert (answer["created"], answer["errors"]) == (1, 1) and answer["results"][1]["row"] == 2
    assert admin_token.post(f"{API}/connections/import/", {}, format="json").status_code == 400


def test_guardrail_test_masking_preview_and_connection_test(cast, shops, admin_token):
    from governance import rules

    rules.guardrail_create(
        actor=cast.alice.actor(), name="no-zebra", input={"deny_words": ["zebra"]}, connections=["shop"]
    )
    carol = _client(cast.carol)
    tested = carol.post(
        f"{API}/guardrails-test/", {"input": "select 'zebra'", "connection_name": "shop"}, format="json"
    )
    assert tested.status_code == 200 and tested.json()["blocked"] is True
    assert tested.json()["rules_evaluated"] == ["no-zebra"]
    assert _client(cast.bob).post(f"{API}/guardrails-test/", {"input": "x"}, format="json").status_code == 403

    spec = {"entities": ["EMAIL_ADDRESS"]}
    preview = carol.post(
        f"{API}/masking-preview/", {"spec": spec, "text": "mail bob@example.com"}, format="json"
    )
    assert preview.status_code == 200 and "bob@example.com" not in preview.content.decode()
    assert preview.json()["counts"] == {"EMAIL_ADDRESS": 1}

    tested = _client(cast.bob).post(f"{API}/connections/shop/test/")
    assert tested.status_code == 200 and tested.json()["ok"] is True
    assert _client(cast.bob).post(f"{API}/connections/nope/test/").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_a_runbook_runs_over_rest_for_whom_a_rule_allows(cast, shops, admin_token):
    runbook = {"connection_name": "shop", "name": "count", "template": "select count(*) from customers"}
    admin_token.post(f"{API}/runbooks/", runbook, format="json")
    rule = {"name": "eng-count", "groups": ["engineering"], "runbooks": ["count"], "connections": ["shop"]}
    admin_token.post(f"{API}/runbook-rules/", rule, format="json")
    ran = _client(cast.bob).post(f"{API}/runbooks/shop/count/run/", {}, format="json")
    assert ran.status_code == 200 and ran.json()["status"] == "completed" and ran.json()["rows"] == [[3]]
    refused = _client(cast.dave).post(f"{API}/runbooks/shop/count/run/", {}, format="json")
    assert refused.status_code in (403, 404)


@pytest.mark.django_db(transaction=True)
def test_long_polls_and_server_facts_over_rest(cast, shops, admin_token):
    bob, dave = _client(cast.bob), _client(cast.dave)
    facts = bob.get(f"{API}/serverinfo/").json()
    assert facts["name"] == "portcullis" and facts["mcp_url"].endswith("/api/mcp")
    assert "sqlite" in facts["connection_kinds"] and facts["outbox_backlog"] is None
    assert isinstance(admin_token.get(f"{API}/serverinfo/").json()["outbox_backlog"], dict)

    ran = bob.post(f"{API}/exec/", {"connection_name": "shop", "input": "select 1"}, format="json").json()
    waited = bob.get(f"{API}/sessions/{ran['session_id']}/wait/", {"timeout_seconds": 5}).json()
    assert waited["status"] == "completed" and waited["timed_out"] is False and waited["rows"] == [[1]]
    assert dave.get(f"{API}/sessions/{ran['session_id']}/wait/").status_code == 404
    assert bob.get(f"{API}/sessions/{ran['session_id']}/wait/", {"timeout_seconds": 301}).status_code == 400

    analysis_run(session_id=ran["session_id"])
    analysis = bob.get(f"{API}/sessions/{ran['session_id']}/analysis/", {"timeout_seconds": 5}).json()
    assert (
        analysis["status"] == "ready" and analysis["timed_out"] is False and analysis["risk_level"] == "low"
    )

    # A review: waiting times out while it is pending, and answers once a reviewer decided.
    alice = cast.alice.actor()
    usergroup_create(actor=alice, name="dba", members=["dave@acme.test"])
    access_rule_create(
        actor=alice, name="shop-writes", access_type="command", connections=["shop"], reviewer_groups=["dba"]
    )
    pending = bob.post(
        f"{API}/exec/",
        {"connection_name": "shop", "input": "delete from customers where id = 1"},
        format="json",
    ).json()
    assert pending["status"] == "pending_approval"
    wait_url = f"{API}/reviews/{pending['review_id']}/wait/"
    still = bob.get(wait_url, {"timeout_seconds": 0.5}).json()
    assert still["status"] == "PENDING" and still["timed_out"] is True and still["waited_seconds"] >= 0.5
    review_decide(actor=cast.dave.actor(surface="web"), review_id=pending["review_id"], status="APPROVED")
    decided = bob.get(wait_url, {"timeout_seconds": 5}).json()
    assert decided["status"] == "APPROVED" and decided["timed_out"] is False
    assert _client(cast.eve).get(wait_url).status_code == 404


def test_changes_say_from_what_to_what_with_secrets_redacted(cast, shops, admin_token):
    settings = {"host": "db1.acme.test", "database": "app", "user": "ro", "password": "first-secret-1"}
    body = {"name": "pg2", "kind": "postgres", "settings": settings}
    assert admin_token.post(f"{API}/connections/", body, format="json").status_code == 201
    changes = {"settings": {"host": "db2.acme.test", "password": "second-secret-2"}, "max_rows": 10}
    assert admin_token.patch(f"{API}/connections/pg2/", changes, format="json").status_code == 200
    event = AuditEvent.objects.filter(action="connection.update").latest("id")
    assert set(event.detail["changed"]) == {"host", "max_rows", "secret:password"}
    assert (
        event.detail["before"]["host"] == "db1.acme.test" and event.detail["after"]["host"] == "db2.acme.test"
    )
    assert event.detail["after"]["max_rows"] == 10
    assert (
        event.detail["before"]["secret:password"] == event.detail["after"]["secret:password"] == "[redacted]"
    )
    assert "secret-" not in str(event.detail)

    user = {"name": "Bobby", "groups": ["engineering", "auditor"]}
    assert admin_token.patch(f"{API}/users/bob@acme.test/", user, format="json").status_code == 200
    event = AuditEvent.objects.filter(action="user.update").latest("id")
    assert event.detail["before"] == {"name": cast.bob.user.name, "groups": ["engineering"]}
    assert event.detail["after"] == {"name": "Bobby", "groups": ["auditor", "engineering"]}

    group = {"name": "eng", "add": ["dave@acme.test"]}
    assert admin_token.patch(f"{API}/groups/engineering/", group, format="json").status_code == 200
    renamed = AuditEvent.objects.get(action="usergroup.rename")
    assert (renamed.detail["before"], renamed.detail["after"]) == ({"name": "engineering"}, {"name": "eng"})
    members = AuditEvent.objects.get(action="usergroup.members")
    assert "dave@acme.test" not in members.detail["before"]["members"]
    assert "dave@acme.test" in members.detail["after"]["members"]


def test_webhook_deliveries_are_listed_and_retried_over_rest(cast, admin_token):
    endpoint = webhook_endpoint_create(
        actor=cast.alice.actor(), name="siem", url="https://siem.example.test/in", secret="s" * 20
    )
    dead = WebhookDelivery.objects.create(
        org=cast.acme,
        endpoint=endpoint,
        event_id=uuid.uuid4(),
        event_type="session.finished",
        payload={},
        status="dead",
        attempts=8,
        last_error="HTTP 500",
    )
    listed = admin_token.get(f"{API}/webhook-deliveries/", {"status": "dead", "webhook_name": "siem"}).json()
    assert [(d["id"], d["attempts"], d["last_error"]) for d in listed["items"]] == [(dead.pk, 8, "HTTP 500")]
    assert admin_token.get(f"{API}/webhook-deliveries/", {"status": "lost"}).status_code == 400
    assert admin_token.get(f"{API}/webhook-deliveries/", {"webhook_name": "nope"}).status_code == 404
    assert _client(cast.carol).get(f"{API}/webhook-deliveries/").status_code == 403

    retried = admin_token.post(f"{API}/webhook-deliveries/retry/", {"delivery_ids": [dead.pk]}, format="json")
    assert retried.status_code == 200 and retried.json() == {"retried": 1}
    dead.refresh_from_db()
    assert (dead.status, dead.attempts) == ("pending", 0)
    assert (
        admin_token.post(f"{API}/webhook-deliveries/retry/", {"delivery_ids": []}, format="json").status_code
        == 400
    )


@pytest.mark.django_db(transaction=True)
def test_upstream_twins_answer_failures_in_the_one_error_body(cast, shops):
    """The upstream_* twins: an upstream that is down is a 502 (listing) or a failed envelope (call),
    another org's connection a 404, an unknown field a 400, contracts an admin's."""
    from tests.test_upstream_mcp import make_mcp_connection, upstream_server

    with upstream_server() as url:
        pass  # stopped: nothing listens there any more
    make_mcp_connection(cast.acme, url, name="down")
    bob, base = _client(cast.bob), f"{API}/connections/down"
    down = bob.get(f"{base}/upstream-tools/")
    assert down.status_code == 502 and down.json()["error"]["code"] == "connector"
    assert "could not reach" in down.json()["error"]["message"]
    called = bob.post(f"{base}/upstream-tools/call/", {"tool": "echo"}, format="json")
    assert called.status_code == 200 and called.json()["status"] == "failed"
    assert Session.objects.get(pk=called.json()["session_id"]).surface == "api"
    unknown = bob.post(f"{base}/upstream-tools/call/", {"tool": "echo", "sneaky": 1}, format="json")
    assert unknown.status_code == 400 and "sneaky" in unknown.json()["error"]["fields"]
    assert _client(cast.eve).get(f"{base}/upstream-tools/").status_code == 404
    assert bob.get(f"{base}/upstream-contracts/").status_code == 403
    bad_kind = _client(cast.alice).get(f"{base}/upstream-contracts/", {"kind": "file"})
    assert bad_kind.status_code == 400 and "kind" in bad_kind.json()["error"]["fields"]
