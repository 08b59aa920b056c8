"""Runbooks: typed parameters that cannot inject SQL or shell (attacked on real PostgreSQL, MariaDB,
SQLite and sh), who may run what, and that runbooks take the one pipeline (guardrails, review,
audit) — through the services and over MCP with the SDK client."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pymysql
import pytest
from django.test import Client

from gateway import runbooks
from gateway.models import Runbook
from gateway.services import connection_create_headless
from governance.errors import InvalidInput, NotFound, PolicyDenied
from governance.policy import Actor
from governance.services import user_create
from sessions.models import AuditEvent, Session, SessionStatus
from tests.conftest import error_text, structured

INJECTIONS = [
    "x' or '1'='1",
    "x\\' or 1=1 -- ",
    "'; drop table customers; --",
    "\\'; drop table customers; -- ",
    'x" or "1"="1',
    "é ünïcode ' \\\\ \n newline",
]


def _wait(session, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        session = Session.objects.get(pk=session.pk)
        if session.is_final:
            return session
        time.sleep(0.05)
    raise AssertionError("session did not finish")


def _lookup(cast, connection: str, table: str, column: str = "name"):
    return runbooks.runbook_create(
        actor=cast.alice.actor(),
        connection_name=connection,
        name="lookup",
        description="find rows by name",
        template=f"select count(*) from {table} where {column} = {{{{ who }}}}",
        parameters=[{"name": "who", "type": "string", "max_length": 200}],
    )


# --- declarations -------------------------------------------------------------------------------


def test_declarations_are_checked(cast, shops):
    admin = cast.alice.actor()

    def create(template, parameters, name="rb"):
        return runbooks.runbook_create(
            actor=admin, connection_name="shop", name=name, template=template, parameters=parameters
        )

    cases = [
        ("select {{ a }}", [], "has no parameter declared"),
        ("select 1", [{"name": "a"}], "is not used in the template"),
        ("select {{ a }}", [{"name": "a", "type": "blob"}], "type must be one of"),
        ("select {{ a }}", [{"name": "a", "type": "enum"}], "non-empty list of string choices"),
        ("select {{ a }}", [{"name": "a"}, {"name": "a"}], "declared twice"),
        ("select {{ a }}", [{"name": "a", "sneaky": 1}], "unknown key"),
        ("select {{ a }}", [{"name": "a", "type": "integer", "default": "1; drop"}], "must be a number"),
        ("selec from where {{ a }}", [{"name": "a"}], "does not parse"),
        ("", [], "template is required"),
    ]
    for template, parameters, message in cases:
        with pytest.raises(InvalidInput, match=message):
            create(template, parameters)
    with pytest.raises(PolicyDenied):
        runbooks.runbook_create(actor=cast.bob.actor(), connection_name="shop", name="x", template="select 1")
    with pytest.raises(NotFound):
        runbooks.runbook_create(actor=cast.eve.actor(), connection_name="nope", name="x", template="select 1")
    assert not Runbook.objects.exists()


# --- injection, attacked on every kind -------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_string_parameters_cannot_inject_on_sqlite(cast, shops):
    _lookup(cast, "shop", "customers")
    admin = cast.alice.actor()
    for value in INJECTIONS:
        session = _wait(
            runbooks.runbook_run(
                actor=admin, connection_name="shop", name="lookup", parameters={"who": value}
            )
        )
        assert session.status == SessionStatus.DONE, session.error
        assert session.result["rows"] == [[0]], value  # the value was compared as data, matching nothing
    session = _wait(
        runbooks.runbook_run(
            actor=admin, connection_name="shop", name="lookup", parameters={"who": "acme one"}
        )
    )
    assert session.result["rows"] == [[1]]
    assert session.verb == "runbook" and session.metadata == {
        "runbook": "lookup",
        "parameters": {"who": "acme one"},
    }


@pytest.mark.django_db(transaction=True)
def test_string_parameters_cannot_inject_on_postgres(cast, pg_target):
    connection_create_headless(org=cast.acme, name="pg", kind="postgres", settings=pg_target, options={})
    _lookup(cast, "pg", "items")
    for value in INJECTIONS:
        session = _wait(
            runbooks.runbook_run(
                actor=cast.alice.actor(), connection_name="pg", name="lookup", parameters={"who": value}
            )
        )
        assert session.status == SessionStatus.DONE and session.result["rows"] == [[0]], (
            value,
            session.error,
        )
    with psycopg.connect(
        host=pg_target["host"], port=pg_target["port"], dbname=pg_target["database"], user=pg_target["user"]
    ) as conn:
        assert conn.execute("select count(*) from items").fetchone() == (50,)


@pytest.mark.django_db(transaction=True)
def test_string_parameters_cannot_inject_on_mariadb(cast, mysql_target):
    connection_create_headless(org=cast.acme, name="my", kind="mysql", settings=mysql_target, options={})
    _lookup(cast, "my", "items")
    for value in INJECTIONS:
        session = _wait(
            runbooks.runbook_run(
                actor=cast.alice.actor(), connection_name="my", name="lookup", parameters={"who": value}
            )
        )
        assert session.status == SessionStatus.DONE and session.result["rows"] == [[0]], (
            value,
            session.error,
        )
    session = _wait(
        runbooks.runbook_run(
            actor=cast.alice.actor(), connection_name="my", name="lookup", parameters={"who": "beta"}
        )
    )
    assert session.result["rows"] == [[1]]
    conn = pymysql.connect(
        host=mysql_target["host"], user="root", password="", database=mysql_target["database"]
    )
    with conn.cursor() as cur:
        cur.execute("select count(*) from items")
        assert cur.fetchone() == (3,)
    conn.close()


@pytest.mark.django_db(transaction=True)
def test_typed_parameters_and_identifiers(cast, shops):
    admin = cast.alice.actor()
    runbooks.runbook_create(
        actor=admin,
        connection_name="shop",
        name="top",
        template="select {{ col }} from {{ tbl }} where id <= {{ n }} and {{ flag }} and {{ kind }} = 'a' order by id",
        parameters=[
            {"name": "col", "type": "identifier"},
            {"name": "kind", "type": "enum", "choices": ["a", "b"], "default": "a"},
            {"name": "tbl", "type": "identifier"},
            {"name": "n", "type": "integer", "min": 1, "max": 100, "default": 2},
            {"name": "flag", "type": "boolean", "default": True},
        ],
    )

    def run(**parameters):
        return runbooks.runbook_run(actor=admin, connection_name="shop", name="top", parameters=parameters)

    for bad, message in [
        ({"col": "name; drop table customers", "tbl": "customers"}, "must be a name like"),
        ({"col": "name", "tbl": "customers", "kind": "a' or 'x'='x"}, "must be one of"),
        ({"col": "name", "tbl": "customers; drop table customers"}, "must be a name like"),
        ({"col": "name", "tbl": "customers", "n": "1 or 1=1"}, "must be a number"),
        ({"col": "name", "tbl": "customers", "n": 1000}, "at most 100"),
        ({"col": "name", "tbl": "customers", "n": 1.5}, "whole number"),
        ({"col": "name", "tbl": "customers", "flag": "true"}, "true or false"),
        ({"tbl": "customers"}, "'col' is required"),
        ({"col": "name", "tbl": "customers", "extra": 1}, "unknown parameter 'extra'"),
        # Issue 14: an identifier never reaches a system catalog unless the runbook allows it.
        ({"col": "name", "tbl": "sqlite_master"}, "system catalog"),
        ({"col": "name", "tbl": "pg_catalog.pg_authid"}, "system catalog"),
        ({"col": "name", "tbl": "information_schema.tables"}, "system catalog"),
        ({"col": "name", "tbl": "mysql.user"}, "system catalog"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            run(**bad)
    session = _wait(run(col="email", tbl="customers"))
    assert (
        session.input == "select \"email\" from \"customers\" where id <= 2 and 1 and 'a' = 'a' order by id"
    )
    assert [r[0] for r in session.result["rows"]] == ["one@acme.test", "two@acme.test"]


@pytest.mark.django_db(transaction=True)
def test_identifier_parameters_are_limited_to_the_names_the_runbook_allows(cast, shops):
    admin = cast.alice.actor()
    with pytest.raises(InvalidInput, match="allowed"):
        runbooks.runbook_create(
            actor=admin,
            connection_name="shop",
            name="bad",
            template="select 1 from {{ t }}",
            parameters=[{"name": "t", "type": "identifier", "allowed": "customers"}],
        )
    runbooks.runbook_create(
        actor=admin,
        connection_name="shop",
        name="count",
        template="select count(*) from {{ t }}",
        parameters=[{"name": "t", "type": "identifier", "allowed": ["customers", "main.customers"]}],
    )

    def run(t):
        return runbooks.runbook_run(actor=admin, connection_name="shop", name="count", parameters={"t": t})

    for other in ("orders", "sqlite_master", "main.sqlite_schema"):
        with pytest.raises(InvalidInput, match="names this runbook allows"):
            run(other)
    assert _wait(run("CUSTOMERS")).result["rows"] == [[3]]


@pytest.mark.django_db(transaction=True)
def test_shell_parameters_are_one_word(cast, tmp_path, settings):
    settings.COMMAND_CONNECTIONS_ENABLED = True
    connection_create_headless(
        org=cast.acme, name="sh", kind="command", settings={"argv": ["sh"]}, options={}
    )
    runbooks.runbook_create(
        actor=cast.alice.actor(),
        connection_name="sh",
        name="greet",
        template="printf '%s|' hello {{ who }}",
        parameters=[{"name": "who"}],
    )
    marker = Path(tmp_path) / "pwned"
    payload = f"$(touch {marker}); `touch {marker}`; x' y \" z"
    session = _wait(
        runbooks.runbook_run(
            actor=cast.alice.actor(), connection_name="sh", name="greet", parameters={"who": payload}
        )
    )
    assert session.status == SessionStatus.DONE, session.error
    assert session.output == f"hello|{payload}|"  # one argument, verbatim
    assert not marker.exists()


# --- who may run what ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_runbook_rules_decide_who_runs_what(cast, shops):
    admin = cast.alice.actor()
    _lookup(cast, "shop", "customers")
    runbooks.runbook_create(
        actor=admin, connection_name="shop", name="purge", template="delete from customers"
    )
    bob, dave = cast.bob.actor(), cast.dave.actor()
    assert runbooks.runbook_list(actor=bob) == []
    with pytest.raises(NotFound, match='runbook "lookup" not found'):
        runbooks.runbook_run(actor=bob, connection_name="shop", name="lookup", parameters={"who": "x"})
    assert AuditEvent.objects.filter(action="runbook.run", outcome="denied").count() == 1
    runbooks.runbook_rule_create(
        actor=admin, name="eng-lookups", groups=["engineering"], runbooks=["look*"], connections=["shop"]
    )
    assert [r.name for r in runbooks.runbook_list(actor=bob)] == ["lookup"]  # not purge
    assert runbooks.runbook_list(actor=dave) == []
    assert [r.name for r in runbooks.runbook_list(actor=admin)] == ["lookup", "purge"]
    assert runbooks.runbook_list(actor=cast.eve.actor()) == []  # globex has its own "shop", no runbooks
    _wait(runbooks.runbook_run(actor=bob, connection_name="shop", name="lookup", parameters={"who": "x"}))
    with pytest.raises(NotFound):
        runbooks.runbook_run(actor=bob, connection_name="shop", name="purge")
    with pytest.raises(NotFound):
        runbooks.runbook_run(
            actor=cast.eve.actor(), connection_name="shop", name="lookup", parameters={"who": "x"}
        )
    # rules: admins change, auditors read
    with pytest.raises(PolicyDenied):
        runbooks.runbook_rule_create(
            actor=cast.carol.actor(), name="x", groups=["engineering"], runbooks=["*"], connections=["shop"]
        )
    assert runbooks.runbook_rule_list(actor=cast.carol.actor())[1] == 1
    for bad, message in [
        ({"groups": [], "runbooks": ["*"], "connections": ["shop"]}, "groups must have"),
        ({"groups": ["engineering"], "runbooks": [], "connections": ["shop"]}, "runbooks must be"),
        ({"groups": ["engineering"], "runbooks": ["*"]}, "either connections or attributes"),
        ({"groups": ["ghosts"], "runbooks": ["*"], "connections": ["shop"]}, "not found"),
    ]:
        with pytest.raises((InvalidInput, NotFound), match=message):
            runbooks.runbook_rule_create(actor=admin, name="bad", **bad)
    # a connection can turn runbooks off
    from gateway.services import connection_update

    connection_update(actor=admin, name="shop", options={"runbooks_enabled": False})
    with pytest.raises(PolicyDenied, match="runbooks is disabled"):
        runbooks.runbook_run(actor=admin, connection_name="shop", name="lookup", parameters={"who": "x"})


@pytest.mark.django_db(transaction=True)
def test_runbooks_take_the_pipeline_guardrails_and_reviews(cast, shops):
    from gateway.reviewed import review_execute
    from governance.rules import guardrail_create
    from reviews import services as reviews

    admin = cast.alice.actor()
    runbooks.runbook_create(
        actor=admin, connection_name="shop", name="purge", template="delete from customers"
    )
    _lookup(cast, "shop", "customers")
    guardrail_create(
        actor=admin, name="no-bulk-delete", input={"sql": {"require_where": True}}, connections=["shop"]
    )
    blocked = runbooks.runbook_run(actor=admin, connection_name="shop", name="purge")
    assert blocked.status == SessionStatus.BLOCKED and blocked.verb == "runbook"
    frank = user_create(org=cast.acme, email="frank@acme.test", groups=["dba"])
    reviews.access_rule_create(
        actor=admin, name="rb", access_type="command", connections=["shop"], reviewer_groups=["dba"]
    )
    pending = runbooks.runbook_run(
        actor=admin, connection_name="shop", name="lookup", parameters={"who": "acme two"}
    )
    assert pending.status == SessionStatus.PENDING_REVIEW
    reviews.review_decide(actor=Actor.for_user(frank, surface="web"), review_id=pending.pk, status="APPROVED")
    ran = _wait(review_execute(actor=admin, review_id=pending.pk))
    assert ran.status == SessionStatus.DONE and ran.result["rows"] == [[1]]


def test_runbooks_over_mcp_and_the_admin(cast, shops, mcp):
    admin = cast.alice.actor()
    _lookup(cast, "shop", "customers")
    runbooks.runbook_rule_create(
        actor=admin, name="eng", groups=["engineering"], runbooks=["lookup"], connections=["shop"]
    )
    bob = mcp(cast.bob)
    listed = structured(bob.call("runbooks_list"))
    assert [(r["connection_name"], r["name"]) for r in listed["items"]] == [("shop", "lookup")]
    assert listed["items"][0]["parameters"][0]["type"] == "string"
    ran = structured(
        bob.call(
            "runbooks_run",
            {"connection_name": "shop", "runbook": "lookup", "parameters": {"who": "x' or '1'='1"}},
        )
    )
    assert ran["status"] == "completed" and ran["rows"] == [[0]]
    assert "unknown parameter" in error_text(
        bob.call("runbooks_run", {"connection_name": "shop", "runbook": "lookup", "parameters": {"what": 1}})
    )
    assert error_text(bob.call("config_list", {"kind": "runbook_rule"})) == "admin or auditor access required"
    alice = mcp(cast.alice)
    assert structured(alice.call("config_get", {"kind": "runbook_rule", "record_name": "eng"}))[
        "runbooks"
    ] == ["lookup"]
    assert structured(
        alice.call(
            "config_update",
            {"kind": "runbook_rule", "record_name": "eng", "changes": {"runbooks": ["look*"]}},
        )
    )["runbooks"] == ["look*"]
    assert structured(alice.call("config_delete", {"kind": "runbook_rule", "record_name": "eng"}))["deleted"]
    assert structured(bob.call("runbooks_list"))["items"] == []
    # the admin's runbook editor saves through the service (validated, audited with surface admin)
    client = Client()
    client.force_login(cast.alice.user)
    response = client.post(
        "/admin/gateway/runbook/add/",
        {
            "connection": str(shops["acme"].pk),
            "name": "count",
            "description": "",
            "enabled": "on",
            "template": "select count(*) from customers where id > {{ n }}",
            "parameters": '[{"name": "n", "type": "integer"}]',
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert AuditEvent.objects.filter(action="runbook.create", surface="admin").exists()
    bad = client.post(
        "/admin/gateway/runbook/add/",
        {
            "connection": str(shops["acme"].pk),
            "name": "bad",
            "enabled": "on",
            "template": "select {{ x }}",
            "parameters": "[]",
        },
    )
    assert bad.status_code == 200 and "has no parameter declared" in bad.content.decode()
