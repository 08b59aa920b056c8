"""The parity matrix: the same scenario through the REST API, MCP (live, the official SDK client)
and the Django admin gives the same outcome and exactly one audit event with the right surface.

Each surface is a small adapter that performs an operation as a person and reports a normalized
outcome: "ok", "denied", "not_found", "blocked" (plus, for exec, the envelope status).
"""

from __future__ import annotations

import uuid

import pytest
from django.test import Client
from rest_framework.test import APIClient

from gateway.models import Connection
from gateway.runbooks import runbook_create
from governance import rules
from governance.models import GuardrailRule
from governance.services import token_issue, usergroup_create
from sessions.models import AuditEvent, WebhookDelivery
from sessions.webhooks import webhook_endpoint_create
from tests.test_upstream_mcp import make_mcp_connection, upstream_server

pytestmark = pytest.mark.live

API = "/api/v1"
SECRET = "parity-webhook-secret-0123456789"


class Rest:
    name = "api"

    def __init__(self, mcp):
        self.mcp = mcp

    def _client(self, who):
        client = APIClient()
        token = who if isinstance(who, str) else who.token
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        return client

    @staticmethod
    def _outcome(response) -> str:
        return {200: "ok", 201: "ok", 204: "ok", 403: "denied", 404: "not_found", 400: "invalid"}[
            response.status_code
        ]

    def create_guardrail(self, who, name, connection):
        body = {"name": name, "input": {"deny_words": ["zebra"]}, "connections": [connection]}
        return self._outcome(self._client(who).post(f"{API}/guardrails/", body, format="json"))

    def update_guardrail(self, who, rule_id):
        response = self._client(who).patch(
            f"{API}/guardrails/{rule_id}/", {"message": "changed"}, format="json"
        )
        return self._outcome(response)

    def exec(self, who, connection, text):
        response = self._client(who).post(
            f"{API}/exec/", {"connection_name": connection, "input": text}, format="json"
        )
        return response.json()["status"] if response.status_code == 200 else self._outcome(response)

    # Admin operations that were only in the Django admin (issue 15): the same services over REST.
    def admin_op(self, who, op, name, connection="shop"):
        client = self._client(who)
        if op == "webhook.create":
            body = {"name": name, "url": "https://hooks.example.test/x", "secret": SECRET}
            response = client.post(f"{API}/webhooks/", body, format="json")
        elif op == "webhook.update":
            response = client.patch(f"{API}/webhooks/{name}/", {"secret": SECRET + "-new"}, format="json")
        elif op == "runbook.create":
            body = {"connection_name": connection, "name": name, "template": "select count(*) from customers"}
            response = client.post(f"{API}/runbooks/", body, format="json")
        elif op == "review.settings":
            response = client.patch(f"{API}/review-settings/", {"review_ttl_seconds": 7200}, format="json")
        elif op == "runbook.update":
            body = {"description": "changed"}
            response = client.patch(f"{API}/runbooks/{connection}/{name}/", body, format="json")
        elif op == "usergroup.members":
            response = client.patch(f"{API}/groups/{name}/", {"add": ["dave@acme.test"]}, format="json")
        elif op == "webhook.retry":
            body = {"delivery_ids": _deliveries_of(name)}
            response = client.post(f"{API}/webhook-deliveries/retry/", body, format="json")
        else:  # connection.import
            rows = [{"name": name, "kind": "sqlite", "settings": {"path": "/tmp/parity.sqlite3"}}]
            response = client.post(f"{API}/connections/import/", {"rows": rows}, format="json")
        assert SECRET not in response.content.decode()
        return self._outcome(response)

    # The upstream MCP tools' twins: (outcome, body).
    def upstream(self, who, op, connection, body=None):
        client, base = self._client(who), f"{API}/connections/{connection}"
        if op == "tools":
            response = client.get(f"{base}/upstream-tools/")
        elif op == "call":
            response = client.post(f"{base}/upstream-tools/call/", body, format="json")
        elif op == "contracts":
            response = client.get(f"{base}/upstream-contracts/", body or {})
        else:  # accept
            response = client.post(f"{base}/upstream-contracts/accept/", body, format="json")
        return self._outcome(response), response.json() if response.status_code == 200 else None


class Mcp:
    name = "mcp"

    def __init__(self, mcp):
        self.mcp = mcp

    @staticmethod
    def _outcome(result) -> str:
        if not result.is_error:
            return "ok"
        text = result.content[0].text
        if "not found" in text:
            return "not_found"
        if "access required" in text or "capability" in text:
            return "denied"
        return f"error: {text}"

    def create_guardrail(self, who, name, connection):
        args = {"name": name, "input": {"deny_words": ["zebra"]}, "connections": [connection]}
        return self._outcome(self.mcp(who).call("guardrails_create", args))

    def update_guardrail(self, who, rule_id):
        return self._outcome(
            self.mcp(who).call(
                "config_update",
                {"kind": "guardrail", "record_name": rule_id, "changes": {"message": "changed"}},
            )
        )

    def exec(self, who, connection, text):
        result = self.mcp(who).call("exec", {"connection_name": connection, "input": text})
        return result.structured_content["status"] if not result.is_error else self._outcome(result)

    def admin_op(self, who, op, name, connection="shop"):
        client = self.mcp(who)
        if op == "webhook.create":
            args = {"name": name, "url": "https://hooks.example.test/x", "secret": SECRET}
            result = client.call("webhooks_create", args)
        elif op == "webhook.update":
            result = client.call(
                "config_update",
                {"kind": "webhook", "record_name": name, "changes": {"secret": SECRET + "-new"}},
            )
        elif op == "runbook.create":
            args = {"connection_name": connection, "name": name, "template": "select count(*) from customers"}
            result = client.call("runbooks_create", args)
        elif op == "review.settings":
            result = client.call("reviews_settings_update", {"review_ttl_seconds": 7200})
        elif op == "runbook.update":
            args = {
                "kind": "runbook",
                "record_name": f"{connection}/{name}",
                "changes": {"description": "changed"},
            }
            result = client.call("config_update", args)
        elif op == "usergroup.members":
            args = {"kind": "usergroup", "record_name": name, "changes": {"add_members": ["dave@acme.test"]}}
            result = client.call("config_update", args)
        elif op == "webhook.retry":
            result = client.call("webhooks_deliveries", {"retry": _deliveries_of(name)})
        else:
            rows = [{"name": name, "kind": "sqlite", "settings": {"path": "/tmp/parity.sqlite3"}}]
            result = client.call("connections_import", {"rows": rows})
        assert SECRET not in str(result.structured_content) + result.content[0].text
        return self._outcome(result)

    UPSTREAM = {
        "tools": "upstream_tools_list",
        "call": "upstream_call",
        "contracts": "upstream_contracts_list",
        "accept": "upstream_contracts_accept",
    }

    def upstream(self, who, op, connection, body=None):
        result = self.mcp(who).call(self.UPSTREAM[op], {"connection_name": connection, **(body or {})})
        return self._outcome(result), None if result.is_error else result.structured_content


class Admin:
    name = "admin"

    def __init__(self, mcp):
        self.mcp = mcp

    @staticmethod
    def _client(who):
        client = Client()
        client.force_login(who.user)
        return client

    @staticmethod
    def _outcome(response) -> str:
        if response.status_code == 302 and "/login/" not in response.get("Location", ""):
            return "ok"
        return {403: "denied", 404: "not_found", 302: "denied"}.get(
            response.status_code, str(response.status_code)
        )

    def _form(self, name, connection_pk, message=""):
        return {
            "name": name,
            "message": message,
            "enabled": "on",
            "input_conditions": '{"deny_words": ["zebra"]}',
            "output_conditions": "{}",
            "connections": [str(connection_pk)] if connection_pk else [],
        }

    def create_guardrail(self, who, name, connection):
        pk = Connection.objects.filter(org=who.user.org, name=connection).values_list("pk", flat=True).first()
        response = self._client(who).post("/admin/governance/guardrailrule/add/", self._form(name, pk))
        return self._outcome(response)

    def update_guardrail(self, who, rule_id):
        rule = GuardrailRule.objects.filter(pk=rule_id).first()
        form = self._form(rule.name if rule else "x", None, message="changed")
        response = self._client(who).post(f"/admin/governance/guardrailrule/{rule_id}/change/", form)
        return self._outcome(response)

    exec = None  # the admin runs nothing


SURFACES = [Rest, Mcp, Admin]


@pytest.fixture
def surfaces(mcp):
    return {cls.name: cls(mcp) for cls in SURFACES}


@pytest.fixture
def world(cast, shops):
    """acme's "shop" with a guardrail blocking deletes; an acme rule eve will try to reach."""
    admin = cast.alice.actor()
    rules.guardrail_create(
        actor=admin, name="no-deletes", input={"sql": {"deny_statements": ["delete"]}}, connections=["shop"]
    )
    target = rules.guardrail_create(actor=admin, name="acme-rule", input={"deny_words": ["zebra"]})
    return {"rule_id": str(target.pk)}


@pytest.fixture(scope="module")
def upstream_url():
    with upstream_server() as url:
        yield url


def _events(org, since: int):
    return list(AuditEvent.objects.filter(org=org, id__gt=since).order_by("id"))


def _last_id() -> int:
    return AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


@pytest.mark.parametrize("surface", ["api", "mcp", "admin"])
def test_allowed_an_admin_creates_a_guardrail(cast, surfaces, world, surface):
    since = _last_id()
    name = f"rule-{surface}"
    assert surfaces[surface].create_guardrail(cast.alice, name, "shop") == "ok"
    rule = GuardrailRule.objects.get(org=cast.acme, name=name)
    assert [c.name for c in rule.connections.all()] == ["shop"]
    events = _events(cast.acme, since)
    assert [(e.action, e.outcome, e.surface, e.actor_email) for e in events] == [
        ("guardrail.create", "success", surface, "alice@acme.test")
    ]


@pytest.mark.parametrize("surface", ["api", "mcp", "admin"])
def test_denied_an_auditor_cannot_create_a_guardrail(cast, surfaces, world, surface):
    since = _last_id()
    assert surfaces[surface].create_guardrail(cast.carol, "sneaky", "shop") == "denied"
    assert not GuardrailRule.objects.filter(name="sneaky").exists()
    events = _events(cast.acme, since)
    assert len(events) == 1 and events[0].outcome == "denied" and events[0].surface == surface
    assert events[0].actor_email == "carol@acme.test"


@pytest.mark.parametrize("surface", ["api", "mcp", "admin"])
def test_cross_org_an_outsider_cannot_reach_another_orgs_rule(cast, surfaces, world, surface):
    since = _last_id()
    assert surfaces[surface].update_guardrail(cast.eve, world["rule_id"]) == "not_found"
    missing = surfaces[surface].update_guardrail(cast.eve, str(uuid.uuid4()))
    assert missing == "not_found"  # the same answer as for a rule that does not exist
    assert GuardrailRule.objects.get(pk=world["rule_id"]).message == ""
    assert _events(cast.acme, since) == []  # nothing of acme's changed, and eve's probe is not acme's


@pytest.mark.parametrize("surface", ["api", "mcp"])
def test_cross_org_exec_is_not_found_and_audited_once(cast, surfaces, world, tmp_path, surface):
    from gateway.services import connection_create_headless
    from tests.conftest import make_shop_sqlite

    path = make_shop_sqlite(tmp_path / "only-acme.sqlite3", "x")
    connection_create_headless(
        org=cast.acme, name="only-acme", kind="sqlite", settings={"path": str(path)}, options={}
    )
    since = _last_id()
    assert surfaces[surface].exec(cast.eve, "only-acme", "select 1") == "not_found"
    assert _events(cast.acme, since) == []
    events = _events(cast.globex, since)
    assert [(e.action, e.outcome, e.surface) for e in events] == [("exec.request", "denied", surface)]


@pytest.mark.parametrize("surface", ["api", "mcp"])
def test_blocked_a_guardrail_refuses_a_delete_and_nothing_runs(cast, surfaces, world, surface):
    since = _last_id()
    assert surfaces[surface].exec(cast.bob, "shop", "delete from customers") == "blocked"
    assert surfaces[surface].exec(cast.bob, "shop", "select count(*) from customers") == "completed"
    events = _events(cast.acme, since)
    requests = [(e.action, e.outcome, e.surface) for e in events if e.action == "exec.request"]
    assert requests == [("exec.request", "blocked", surface), ("exec.request", "success", surface)]
    assert all(e.surface == surface and e.actor_email == "bob@acme.test" for e in events)


@pytest.mark.parametrize("surface", ["api", "mcp"])
def test_a_read_only_token_is_blocked_alike(cast, surfaces, world, surface):
    _, raw = token_issue(user=cast.alice.user, name=f"ro-{surface}", capability="read_only")
    since = _last_id()
    assert surfaces[surface].exec(raw, "shop", "update customers set name = 'x' where id = 1") == "blocked"
    assert surfaces[surface].create_guardrail(raw, "nope", "shop") == "denied"
    events = _events(cast.acme, since)
    assert [(e.action, e.outcome, e.surface) for e in events] == [
        ("exec.request", "blocked", surface),
        ("api.request" if surface == "api" else "mcp.tool", "denied", surface),
    ]
    assert all(e.client.startswith(f"token:ro-{surface}") for e in events)


ADMIN_OPS = [
    "webhook.create",
    "webhook.update",
    "webhook.retry",
    "runbook.create",
    "runbook.update",
    "usergroup.members",
    "review.settings",
    "connection.import",
]


def _deliveries_of(webhook_name: str) -> list[int]:
    """The deliveries of an endpoint (a made-up id when it has none: the refusal comes first)."""
    ids = list(WebhookDelivery.objects.filter(endpoint__name=webhook_name).values_list("pk", flat=True))
    return ids or [999_999_999]


@pytest.mark.parametrize("surface", ["api", "mcp"])
@pytest.mark.parametrize("op", ADMIN_OPS)
def test_admin_operations_alike_over_rest_and_mcp(cast, surfaces, world, surface, op):
    name = f"{op.split('.')[0]}-{surface}"
    if op in ("webhook.update", "webhook.retry"):
        endpoint = webhook_endpoint_create(
            actor=cast.alice.actor(), name=name, url="https://hooks.example.test/y", secret=SECRET
        )
        if op == "webhook.retry":  # a delivery that gave up
            WebhookDelivery.objects.create(
                org=cast.acme,
                endpoint=endpoint,
                event_id=uuid.uuid4(),
                event_type="session.finished",
                payload={},
                status="dead",
                attempts=8,
            )
    if op == "runbook.update":
        runbook_create(
            actor=cast.alice.actor(),
            connection_name="shop",
            name=name,
            template="select count(*) from customers",
        )
    if op == "usergroup.members":
        usergroup_create(actor=cast.alice.actor(), name=name)
    since = _last_id()
    # An auditor reads but administers nothing, alike on every surface, and the refusal is audited.
    assert surfaces[surface].admin_op(cast.carol, op, f"{name}-x") in ("denied", "not_found")
    denied = _events(cast.acme, since)
    assert [(e.outcome, e.surface, e.actor_email) for e in denied] == [("denied", surface, "carol@acme.test")]
    since = _last_id()
    assert surfaces[surface].admin_op(cast.alice, op, name) == "ok"
    events = [e for e in _events(cast.acme, since) if e.action != "connection.create"]
    assert [(e.action, e.outcome, e.surface) for e in events] == [(op, "success", surface)]
    detail = str(events[0].detail)
    assert SECRET not in detail  # secrets are write-only, in the audit log too
    if op == "webhook.update":
        assert (
            events[0].detail["changed"] == ["secret"] and events[0].detail["after"]["secret"] == "[redacted]"
        )
    if op == "webhook.retry":
        delivery = WebhookDelivery.objects.get(endpoint__name=name)
        assert events[0].detail == {"deliveries": [delivery.pk]} and delivery.status != "dead"
    if op in ("runbook.update", "usergroup.members"):  # from what to what
        assert events[0].detail["changed"] and events[0].detail["before"] != events[0].detail["after"]
    if op == "review.settings":
        assert events[0].detail["before"] == {"review_ttl_seconds": 86400}
        assert events[0].detail["after"] == {"review_ttl_seconds": 7200}


@pytest.mark.parametrize("surface", ["api", "mcp"])
def test_upstream_mcp_operations_alike_over_rest_and_mcp(cast, surfaces, world, upstream_url, surface):
    """upstream_tools_list, upstream_call, upstream_contracts_list|accept and their REST twins: the same
    services, the same policy (tool policy per group, admin-only contracts, other orgs not found)."""
    make_mcp_connection(
        cast.acme, upstream_url, tools=[{"match": "run_sql", "groups": ["engineering"]}, {"match": "echo"}]
    )
    on = surfaces[surface].upstream
    outcome, listed = on(cast.bob, "tools", "tools")
    assert outcome == "ok" and [t["name"] for t in listed["items"]] == ["echo", "run_sql"]
    assert listed["total"] == 2 and listed["items"][0]["input_schema"]["type"] == "object"
    assert [t["name"] for t in on(cast.dave, "tools", "tools")[1]["items"]] == ["echo"]
    assert on(cast.eve, "tools", "tools") == ("not_found", None)  # another org's connection

    since = _last_id()
    outcome, envelope = on(cast.bob, "call", "tools", {"tool": "echo", "arguments": {"text": "hi"}})
    assert outcome == "ok" and envelope["status"] == "completed"
    assert envelope["content"] == [{"type": "text", "text": "hi"}] and envelope["structured_content"] == {
        "echo": "hi"
    }
    requests = [
        (e.action, e.outcome, e.surface) for e in _events(cast.acme, since) if e.action == "tool.request"
    ]
    assert requests == [("tool.request", "success", surface)]
    assert on(cast.dave, "call", "tools", {"tool": "run_sql", "arguments": {}}) == ("not_found", None)

    since = _last_id()
    assert on(cast.carol, "contracts", "tools")[0] == "denied"  # contracts are the admin's
    assert [(e.outcome, e.surface) for e in _events(cast.acme, since)] == [("denied", surface)]
    outcome, contracts = on(cast.alice, "contracts", "tools", {"status": "accepted"})
    assert outcome == "ok" and {c["tool"] for c in contracts["items"]} >= {"echo", "run_sql"}
    echo = next(c for c in contracts["items"] if c["tool"] == "echo")
    since = _last_id()
    body = {"tools": ["echo"], "observed_sha256": {"echo": echo["observed_sha256"]}}
    outcome, accepted = on(cast.alice, "accept", "tools", body)
    assert outcome == "ok" and [(c["tool"], c["status"]) for c in accepted["items"]] == [("echo", "accepted")]
    assert [(e.action, e.surface) for e in _events(cast.acme, since)] == [
        ("upstream.contract_accept", surface)
    ]
    stale = {"tools": ["echo"], "observed_sha256": {"echo": "0" * 64}}
    outcome, _ = on(cast.alice, "accept", "tools", stale)  # reviewed a version that is not the one observed
    expected = "invalid" if surface == "api" else 'error: tool "echo" changed again since you reviewed it'
    assert outcome.startswith(expected)
