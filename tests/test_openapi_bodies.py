"""Every documented field is what GET returns (issue 19 item 4): for each GET endpoint of the REST API,
a live body's keys are compared with the properties the OpenAPI schema gives its 200 response, at
every level the schema describes (pages, their items, nested records). A field the service returns
but the schema omits, or a required field the body lacks, fails here."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from rest_framework.test import APIClient

from gateway import services
from reviews.services import access_rule_create
from sessions.models import AuditEvent
from tests.test_upstream_mcp import make_mcp_connection, upstream_server

API = "/api/v1"

# GET endpoints the first test leaves to another, with the reason; every other GET endpoint is checked.
UPSTREAM = "needs an upstream MCP server: test_the_upstream_endpoints_return_what_they_document"
NOT_HERE = {
    f"{API}/connections/{{name}}/upstream-tools/": UPSTREAM,  # first: listing the tools records contracts
    f"{API}/connections/{{name}}/upstream-contracts/": UPSTREAM,
}


def _client(person) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {person.token}")
    return client


def _document() -> dict:
    response = APIClient().get(f"{API}/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return json.loads(response.content)


def _resolve(document: dict, schema: dict) -> dict:
    while True:
        if "$ref" in schema:
            schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
        elif len(schema.get("allOf", ())) == 1:
            schema = schema["allOf"][0]
        else:
            return schema


def _mismatches(document: dict, schema: dict, body, where: str):
    """Where `body` has a key its schema does not document, or lacks one the schema requires."""
    schema = _resolve(document, schema)
    if isinstance(body, list) and "items" in schema:
        for i, item in enumerate(body):
            yield from _mismatches(document, schema["items"], item, f"{where}[{i}]")
        return
    if not isinstance(body, dict) or "properties" not in schema:
        return  # a free-form object (a rule's conditions, a session's metadata): nothing declared
    properties = schema["properties"]
    for key in sorted(set(body) - set(properties)):
        yield f"{where}.{key}: returned but not in the schema"
    for key in sorted(set(schema.get("required", ())) - set(body)):
        yield f"{where}.{key}: required by the schema but not returned"
    for key, value in body.items():
        if key in properties:
            yield from _mismatches(document, properties[key], value, f"{where}.{key}")


@pytest.fixture
def world(cast, transactional_db, shops):
    """One of every record the REST API reads, made through the API where it can be."""
    alice, bob = _client(cast.alice), _client(cast.bob)

    def made(response, code=201):
        assert response.status_code == code, response.content[:500]
        return response.json()

    made(alice.post(f"{API}/attributes/", {"name": "prod", "connections": ["shop"]}, format="json"))
    guardrail = made(
        alice.post(
            f"{API}/guardrails/",
            {"name": "no-drop", "input": {"sql": {"deny_statements": ["drop"]}}, "connections": ["shop"]},
            format="json",
        )
    )
    masking = made(
        alice.post(
            f"{API}/masking-rules/",
            {"name": "emails", "spec": {"entities": ["EMAIL_ADDRESS"]}, "connections": ["shop"]},
            format="json",
        )
    )
    made(alice.post(f"{API}/groups/", {"name": "dba", "members": ["bob@acme.test"]}, format="json"))
    made(
        alice.put(f"{API}/connections/shop/access-control/", {"groups": ["engineering"]}, format="json"), 200
    )
    runbook = {"connection_name": "shop", "name": "count", "template": "select count(*) from customers"}
    made(alice.post(f"{API}/runbooks/", runbook, format="json"))
    rule = {"name": "eng-count", "groups": ["engineering"], "runbooks": ["count"], "connections": ["shop"]}
    runbook_rule = made(alice.post(f"{API}/runbook-rules/", rule, format="json"))
    webhook = made(
        alice.post(
            f"{API}/webhooks/",
            {"name": "siem", "url": "https://siem.example.test/in", "secret": "a-secret-of-16-chars-or-more"},
            format="json",
        )
    )
    done = made(
        alice.post(f"{API}/exec/", {"connection_name": "shop", "input": "select 1"}, format="json"), 200
    )
    access_rule_create(
        actor=cast.alice.actor(),
        name="deletes",
        access_type="command",
        connections=["shop"],
        reviewer_groups=["dba"],
    )
    pending = made(
        bob.post(
            f"{API}/exec/",
            {"connection_name": "shop", "input": "delete from customers where id = 1"},
            format="json",
        ),
        200,
    )
    assert pending["status"] == "pending_approval", pending
    assert AuditEvent.objects.exists()
    return {
        "{name}": "shop",
        "{ref}": None,  # per path below
        "{session_id}": done["session_id"],
        "{review_id}": pending["review_id"],
        "{connection_name}": "shop",
        "guardrails": guardrail["id"],
        "masking-rules": masking["id"],
        "runbook-rules": runbook_rule["id"],
        "access-request-rules": "deletes",
        "webhooks": webhook["id"],
        "users": "bob@acme.test",
        "groups": "dba",
        "attributes": "prod",
    }


def _url(template: str, world: dict) -> str:
    """A concrete URL for a path template: the record named after the collection it is in."""
    parts = template.strip("/").split("/")
    out = []
    for i, part in enumerate(parts):
        if part.startswith("{"):
            collection = parts[i - 1]
            value = world.get(collection) if collection in world else world[part]
            out.append(str(value))
        else:
            out.append(part)
    url = "/" + "/".join(out) + "/"
    if template.endswith("/runbooks/{connection_name}/{name}/"):
        url = f"{API}/runbooks/shop/count/"
    if template.endswith("/wait/"):
        url += "?timeout_seconds=0"
    if template.endswith("/columns/"):
        url += "?table=customers"
    if template.endswith("/stats/"):
        url += "?group_by=connection"
    return url


def test_every_field_a_get_returns_is_documented_and_every_required_one_returned(cast, world):
    document = _document()
    alice = _client(cast.alice)
    checked, problems = [], []
    for template, operations in document["paths"].items():
        schema = operations.get("get", {}).get("responses", {}).get("200", {})
        schema = schema.get("content", {}).get("application/json", {}).get("schema")
        if schema is None or template in NOT_HERE:
            continue
        response = alice.get(_url(template, world))
        assert response.status_code == 200, (template, response.content[:500])
        body = response.json()
        if isinstance(body, dict) and body.get("items") == [] and template != f"{API}/webhook-deliveries/":
            problems.append(f"{template}: an empty page checks no item")
        problems.extend(_mismatches(document, schema, body, template))
        checked.append(template)
    assert not problems, "\n".join(problems)
    assert len(checked) >= 35, checked


def test_the_upstream_endpoints_return_what_they_document(cast, transactional_db):
    document, alice = _document(), _client(cast.alice)
    problems = []
    with upstream_server() as url:
        make_mcp_connection(cast.acme, url)
        for template in NOT_HERE:
            response = alice.get(template.replace("{name}", "tools"))
            assert response.status_code == 200, (template, response.content[:500])
            body = response.json()
            assert body["items"], f"{template}: an empty list checks no item"
            schema = document["paths"][template]["get"]["responses"]["200"]["content"]["application/json"]
            problems.extend(_mismatches(document, schema["schema"], body, template))
    assert not problems, "\n".join(problems)


def test_the_check_sees_an_undocumented_and_a_missing_field():
    document = {"components": {"schemas": {"X": {"properties": {"a": {}, "b": {}}, "required": ["a", "b"]}}}}
    found = list(_mismatches(document, {"$ref": "#/components/schemas/X"}, {"a": 1, "c": 2}, "x"))
    assert found == ["x.c: returned but not in the schema", "x.b: required by the schema but not returned"]


def test_a_body_with_a_field_its_shape_lacks_is_a_server_error_not_a_silent_extra(cast, shops, monkeypatch):
    """REST checks each body against the shape it documents, as MCP does: a service dict that grows a
    field fails on both surfaces until the shape has it."""
    real = services.connection_to_dict
    monkeypatch.setattr(services, "connection_to_dict", lambda c: {**real(c), "password": "x"})
    with pytest.raises(ValidationError, match="password"):
        _client(cast.alice).get(f"{API}/connections/shop/")
