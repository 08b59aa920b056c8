"""Guardrails and masking in the pipeline, end to end over MCP against real targets.

The engines have their own suites (test_guardrail_engine, test_masking_engine); this one proves
that the pipeline applies them on every path, that nothing blocked runs, that raw data never
reaches the caller or the session record, and that the rules' tools are governed.
"""

import json

import psycopg
import pytest

from gateway.services import connection_create_headless
from sessions.models import AuditEvent, Session, SessionStatus
from tests.conftest import error_text, make_shop_sqlite, structured

pytestmark = pytest.mark.live


@pytest.fixture
def pg(cast, pg_target):
    return connection_create_headless(
        org=cast.acme, name="pg", kind="postgres", settings=pg_target, options={}
    )


def _pg_rows(pg_target, sql):
    with psycopg.connect(
        host=pg_target["host"], port=pg_target["port"], dbname=pg_target["database"], user=pg_target["user"]
    ) as conn:
        return conn.execute(sql).fetchall()


def test_a_blocked_statement_runs_nothing_and_never_echoes_the_rule(cast, pg, pg_target, mcp):
    alice, bob = mcp(cast.alice), mcp(cast.bob)
    structured(
        alice.call(
            "guardrails_create",
            {
                "name": "no-ddl",
                "message": "Schema changes go through migrations.",
                "input": {"sql": {"deny_statements": ["drop", "truncate", "alter"]}, "deny_words": ["zebra"]},
                "connections": ["pg"],
            },
        )
    )
    for attempt in ["DROP TABLE items", "select 1; /* hi */ dRoP   TABLE items", "TRUNCATE items"]:
        envelope = structured(bob.call("exec", {"connection_name": "pg", "input": attempt}))
        assert envelope["status"] == "blocked", attempt
        assert envelope["rule"] == "no-ddl"
        assert envelope["message"] == "Schema changes go through migrations. (guardrail: no-ddl)"
        dumped = json.dumps(envelope)
        assert "zebra" not in dumped and "alter" not in dumped.lower()  # the rule's conditions never leak
        session = Session.objects.get(pk=envelope["session_id"])
        assert session.status == SessionStatus.BLOCKED and session.started_at is None
        assert session.guardrail_findings[0]["rule"] == "no-ddl"
    assert _pg_rows(pg_target, "select count(*) from items") == [(50,)]  # nothing ran
    # the owner sees which rule; the auditor sees the findings too
    mine = structured(bob.call("sessions_get", {"id": envelope["session_id"]}))
    assert mine["guardrails"] == ["no-ddl"] and mine["guardrail_findings"] == []
    audited = structured(mcp(cast.carol).call("sessions_get", {"id": envelope["session_id"]}))
    assert audited["guardrail_findings"][0]["condition"] == "sql.deny_statements"
    assert AuditEvent.objects.filter(action="exec.request", outcome="blocked").count() == 3
    # a benign query with the word in a string literal runs
    ok = structured(bob.call("exec", {"connection_name": "pg", "input": "select 'DROP TABLE items' as text"}))
    assert ok["status"] == "completed"


def test_input_that_does_not_parse_is_blocked_with_a_reason(cast, pg, mcp):
    structured(
        mcp(cast.alice).call(
            "guardrails_create",
            {"name": "sql-only", "input": {"sql": {"single_statement": True}}, "connections": ["pg"]},
        )
    )
    envelope = structured(mcp(cast.bob).call("exec", {"connection_name": "pg", "input": "SELEC * FRM items"}))
    assert envelope["status"] == "blocked"
    assert "could not be checked: it does not parse as postgres SQL" in envelope["message"]


def test_read_only_is_enforced_by_the_parser_and_by_the_database(cast, pg, pg_target, mcp):
    structured(
        mcp(cast.alice).call(
            "guardrails_create",
            {"name": "read-only", "input": {"sql": {"read_only": True}}, "connections": ["pg"]},
        )
    )
    bob = mcp(cast.bob)
    for write in [
        "update items set price = 0",
        "with d as (delete from items returning *) select count(*) from d",
        "select pg_read_file('/etc/passwd')",
        "select nextval('items_id_seq')",
    ]:
        assert (
            structured(bob.call("exec", {"connection_name": "pg", "input": write}))["status"] == "blocked"
        ), write
    reads = structured(
        bob.call(
            "exec",
            {
                "connection_name": "pg",
                "input": "select percentile_cont(0.5) within group (order by price), "
                "current_setting('transaction_read_only') from items",
            },
        )
    )
    assert reads["status"] == "completed"
    assert reads["rows"][0][1] == "on"  # the second line of defence: a read-only transaction on the target
    assert _pg_rows(pg_target, "select min(price) from items")[0][0] > 0


def test_a_secret_in_the_output_withholds_the_result(cast, shops, mcp):
    structured(
        mcp(cast.alice).call(
            "guardrails_create",
            {"name": "no-secrets-out", "output": {"secrets": True}, "connections": ["shop"]},
        )
    )
    envelope = structured(
        mcp(cast.bob).call(
            "exec", {"connection_name": "shop", "input": "select 'AKIAZ7Q3MPLX4RT2VWJH' as key"}
        )
    )
    assert envelope["status"] == "blocked" and envelope["rule"] == "no-secrets-out"
    session = Session.objects.get(pk=envelope["session_id"])
    assert "AKIAZ7Q3MPLX4RT2VWJH" not in session.output + json.dumps(session.result)
    assert session.started_at is not None  # it ran; its result was withheld


def test_results_are_masked_before_anyone_sees_or_stores_them(cast, mcp, tmp_path):
    import sqlite3

    path = tmp_path / "crm.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """
            create table people (id integer primary key, email text, card text, note text, ref text);
            insert into people values
              (1, 'ann@example.com', '4111 1111 1111 1111', 'call ann@example.com today', '1234567812345678'),
              (2, 'bob@example.org', '5500005555555559', 'no pii here', '1111222233334445'),
              (3, 'ann@example.com', null, 'again ann@example.com', null);
            """
        )
    connection_create_headless(
        org=cast.acme, name="crm", kind="sqlite", settings={"path": str(path)}, options={}
    )
    structured(
        mcp(cast.alice).call(
            "datamasking_rules_create",
            {
                "name": "pii",
                "spec": {"entities": ["EMAIL_ADDRESS", "CREDIT_CARD"], "method": "pseudonym"},
                "connections": ["crm"],
            },
        )
    )
    envelope = structured(
        mcp(cast.bob).call(
            "exec", {"connection_name": "crm", "input": "select email, card, note, ref from people"}
        )
    )
    assert envelope["status"] == "completed"
    dumped = json.dumps(envelope)
    for raw in ("ann@example.com", "bob@example.org", "4111 1111 1111 1111", "5500005555555559"):
        assert raw not in dumped
    rows = envelope["rows"]
    assert rows[0][0] == rows[2][0] != rows[1][0]  # pseudonyms: equal values stay equal, so agents can group
    assert rows[0][0].startswith("<EMAIL_ADDRESS:")
    assert rows[0][3] == "1234567812345678"  # fails Luhn: an order id, left alone
    assert envelope["masking"]["EMAIL_ADDRESS"] == 5 and envelope["masking"]["CREDIT_CARD"] == 2
    session = Session.objects.get(pk=envelope["session_id"])
    stored = session.output + json.dumps(session.result)
    assert "ann@example.com" not in stored and "4111 1111 1111 1111" not in stored
    content = structured(
        mcp(cast.carol).call("sessions_get", {"id": envelope["session_id"], "content": True})
    )
    assert "ann@example.com" not in json.dumps(content)


def test_masking_applies_to_command_output_and_schema_output(cast, mcp, settings, tmp_path):
    settings.COMMAND_CONNECTIONS_ENABLED = True
    connection_create_headless(
        org=cast.acme,
        name="sh",
        kind="command",
        settings={"argv": ["sh", "-c", "cat; echo ops@acme.com"]},
        options={},
    )
    path = make_shop_sqlite(tmp_path / "s.sqlite3", "s")
    connection_create_headless(
        org=cast.acme, name="s", kind="sqlite", settings={"path": str(path)}, options={}
    )
    structured(
        mcp(cast.alice).call(
            "datamasking_rules_create",
            {
                "name": "mails-and-customers",
                "spec": {
                    "entities": ["EMAIL_ADDRESS"],
                    "custom": [{"name": "TABLE", "deny_list": ["customers"]}],
                },
                "connections": ["sh", "s"],
            },
        )
    )
    out = structured(
        mcp(cast.bob).call("exec", {"connection_name": "sh", "input": "from stdin x@example.com\n"})
    )
    assert "@" not in out["output"] and out["masking"]["EMAIL_ADDRESS"] == 2
    tables = structured(mcp(cast.bob).call("connection_tables", {"connection_name": "s"}))["tables"]
    assert "customers" not in json.dumps(tables)


def test_rules_bind_through_attributes(cast, shops, mcp, tmp_path):
    alice = mcp(cast.alice)
    other = make_shop_sqlite(tmp_path / "o.sqlite3", "o")
    connection_create_headless(
        org=cast.acme, name="untagged", kind="sqlite", settings={"path": str(other)}, options={}
    )
    structured(alice.call("attributes_create", {"name": "prod", "connections": ["shop"]}))
    structured(
        alice.call(
            "guardrails_create",
            {
                "name": "prod-no-delete",
                "input": {"sql": {"deny_statements": ["delete"]}},
                "attributes": ["prod"],
            },
        )
    )
    bob = mcp(cast.bob)
    assert (
        structured(bob.call("exec", {"connection_name": "shop", "input": "delete from customers"}))["status"]
        == "blocked"
    )
    assert (
        structured(bob.call("exec", {"connection_name": "untagged", "input": "delete from customers"}))[
            "status"
        ]
        == "completed"
    )
    structured(
        alice.call(
            "config_update", {"kind": "attribute", "record_name": "prod", "changes": {"connections": []}}
        )
    )
    assert (
        structured(
            bob.call("exec", {"connection_name": "shop", "input": "delete from customers where id = 1"})
        )["status"]
        == "completed"
    )


def test_exec_explain_and_guardrails_test_run_nothing(cast, pg, pg_target, mcp):
    alice, bob = mcp(cast.alice), mcp(cast.bob)
    structured(
        alice.call(
            "guardrails_create",
            {"name": "where-please", "input": {"sql": {"require_where": True}}, "connections": ["pg"]},
        )
    )
    explained = structured(
        bob.call("exec_explain", {"connection_name": "pg", "input": "delete from items where 1=1"})
    )
    assert explained["would_run"] is False and explained["blocked_by"] == ["where-please"]
    assert explained["findings"] == []  # details are for admins and auditors
    detailed = structured(alice.call("exec_explain", {"connection_name": "pg", "input": "delete from items"}))
    assert detailed["findings"][0]["condition"] == "sql.require_where"
    fine = structured(
        bob.call("exec_explain", {"connection_name": "pg", "input": "delete from items where id = 3"})
    )
    assert fine["would_run"] is True
    tested = structured(
        alice.call("guardrails_test", {"connection_name": "pg", "input": "update items set price = 1"})
    )
    assert tested["blocked"] is True and tested["rules_evaluated"] == ["where-please"]
    assert _pg_rows(pg_target, "select count(*) from items where price = 1") == [(0,)]
    assert not Session.objects.filter(verb="exec").exists()


def test_rule_tools_validate_and_are_governed(cast, shops, mcp):
    alice, bob, carol, eve = mcp(cast.alice), mcp(cast.bob), mcp(cast.carol), mcp(cast.eve)
    assert "unknown statement kind" in error_text(
        alice.call("guardrails_create", {"name": "x", "input": {"sql": {"deny_statements": ["dropp"]}}})
    )
    assert "regex" in error_text(
        alice.call("guardrails_create", {"name": "x", "input": {"regex": ["(unclosed"]}})
    )
    assert "at least one" in error_text(alice.call("guardrails_create", {"name": "x"}))
    assert "NOT_AN_ENTITY" in error_text(
        alice.call("datamasking_rules_create", {"name": "m", "spec": {"entities": ["NOT_AN_ENTITY"]}})
    )
    structured(
        alice.call(
            "guardrails_create", {"name": "g", "input": {"deny_words": ["x"]}, "connections": ["shop"]}
        )
    )
    assert "already exists" in error_text(
        alice.call("guardrails_create", {"name": "g", "input": {"deny_words": ["y"]}})
    )
    assert error_text(bob.call("config_list", {"kind": "guardrail"})) == "admin or auditor access required"
    assert structured(carol.call("config_list", {"kind": "guardrail"}))["total"] == 1
    assert error_text(carol.call("guardrails_create", {"name": "c", "input": {"deny_words": ["x"]}})) == (
        "admin access required"
    )
    # another org sees none of it and cannot bind to acme's connections
    assert structured(eve.call("config_list", {"kind": "guardrail"}))["total"] == 0
    assert 'guardrail "g" not found' in error_text(eve.call("config_get", {"kind": "guardrail", "id": "g"}))
    assert 'guardrail "g" not found' in error_text(
        eve.call("config_delete", {"kind": "guardrail", "id": "g"})
    )
    # for eve, "shop" is globex's shop: her rule binds there and never touches acme's
    structured(
        eve.call(
            "guardrails_create",
            {"name": "h", "input": {"deny_words": ["customers"]}, "connections": ["shop"]},
        )
    )
    query = {"connection_name": "shop", "input": "select count(*) from customers"}
    assert structured(eve.call("exec", query))["status"] == "blocked"
    assert structured(bob.call("exec", query))["status"] == "completed"
    assert 'connection "elsewhere" not found' in error_text(
        eve.call(
            "config_update",
            {"kind": "guardrail", "record_name": "h", "changes": {"connections": ["elsewhere"]}},
        )
    )
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"guardrail.create", "mcp.tool"} <= actions


def test_masking_preview_returns_only_masked_data(cast, mcp):
    preview = structured(
        mcp(cast.carol).call(
            "datamasking_rules_preview",
            {
                "spec": {"entities": ["EMAIL_ADDRESS", "US_SSN"], "method": "partial", "keep_last": 4},
                "text": "mail joe@example.com ssn 078-05-1120",
                "columns": ["contact"],
                "rows": [["joe@example.com"], [None]],
            },
        )
    )
    assert "joe@example.com" not in json.dumps(preview)
    assert preview["counts"]["EMAIL_ADDRESS"] == 2
    assert preview["rows"][1] == [None]


def test_masking_preview_of_a_query_runs_it_through_exec_and_returns_masked_rows(cast, shops, mcp):
    preview = structured(
        mcp(cast.carol).call(
            "datamasking_rules_preview",
            {
                # the fixture's addresses end in .test, which Presidio's e-mail check rejects
                "spec": {
                    "custom": [{"name": "ACME_MAIL", "regex": "[a-z]+@acme\\.test"}],
                    "method": "redact",
                },
                "connection_name": "shop",
                "input": "select name, email from customers order by id",
            },
        )
    )
    assert preview["columns"] == ["name", "email"]
    assert preview["rows"][0] == ["acme one", "<ACME_MAIL>"]
    assert preview["counts"] == {"ACME_MAIL": 3}
    session = Session.objects.get(user=cast.carol.user, verb="exec")  # it ran as carol, recorded and audited
    assert session.status == SessionStatus.DONE
    assert AuditEvent.objects.filter(action="exec.request", actor=cast.carol.user).count() == 1
    assert "both connection_name and input" in error_text(
        mcp(cast.carol).call(
            "datamasking_rules_preview", {"spec": {"entities": ["URL"]}, "connection_name": "shop"}
        )
    )
