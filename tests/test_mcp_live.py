"""/api/mcp over real HTTP against a live daphne, with the official SDK client in both protocol eras."""

import json

import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from gateway.services import connection_create_headless
from sessions.models import AuditEvent, Session, SessionStatus
from tests.conftest import error_text, structured

pytestmark = pytest.mark.live

ERAS = ["auto", "legacy"]  # 2026-07-28 (negotiated by auto) and 2025-11-25


def test_it_answers_401_with_the_resource_metadata_pointer(gateway_server):
    response = httpx2.post(gateway_server.mcp_url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert (
        f'resource_metadata="{gateway_server.url}/.well-known/oauth-protected-resource/api/mcp"' in challenge
    )


def test_it_refuses_a_bad_token_with_401(gateway_server):
    response = httpx2.post(
        gateway_server.mcp_url,
        headers={"Authorization": "Bearer pcu_not-a-real-token"},
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
    )
    assert response.status_code == 401


def test_it_serves_protected_resource_metadata(gateway_server):
    response = httpx2.get(f"{gateway_server.url}/.well-known/oauth-protected-resource/api/mcp")
    assert response.status_code == 200
    assert response.json()["resource"] == f"{gateway_server.url}/api/mcp"


def test_it_refuses_revoked_and_expired_tokens(cast, mcp):
    from django.utils import timezone

    from governance.models import ApiToken
    from governance.services import token_revoke

    token = ApiToken.objects.get(user=cast.bob.user)
    assert structured(mcp(cast.bob).call("me_get"))["user_email"] == "bob@acme.test"
    token_revoke(token=token)
    with pytest.raises(MCPError):  # the transport gets a 401 and the client gives up
        mcp(cast.bob).call("me_get")
    dave_token = ApiToken.objects.get(user=cast.dave.user)
    dave_token.expires_at = timezone.now()
    dave_token.save()
    with pytest.raises(MCPError):
        mcp(cast.dave).call("me_get")


@pytest.mark.parametrize("mode", ERAS)
def test_it_tells_me_who_i_am_in_both_eras(cast, mcp, mode):
    me = structured(mcp(cast.alice, mode).call("me_get"))
    assert me["user_email"] == "alice@acme.test"
    assert me["org_name"] == "acme"
    assert me["is_admin"] is True and me["is_auditor"] is False
    assert "token:pytest" in me["client"]


def test_it_lists_only_the_tools_a_role_may_use(cast, mcp):
    admin_tools = set(mcp(cast.alice).tools())
    user_tools = set(mcp(cast.bob).tools())
    admin_only = {"connections_create", "connections_update", "connections_delete"}
    assert admin_only <= admin_tools
    assert not admin_only & user_tools
    assert {"exec", "sessions_wait", "exec_cancel", "me_get", "connection_columns"} <= user_tools


def test_every_tool_declares_schemas_and_truthful_annotations(cast, mcp):
    async def listing(client):
        return (await client.list_tools()).tools

    tools = {t.name: t for t in mcp(cast.alice).run(listing)}
    for tool in tools.values():
        # Unknown arguments are refused by the server, which names them (below), rather than by
        # `additionalProperties: false` in every schema (issue 15's tools/list budget).
        assert tool.input_schema["type"] == "object" and "additionalProperties" not in tool.input_schema
        assert tool.output_schema and tool.output_schema["type"] == "object", tool.name
    # Hints equal to the MCP defaults (readOnly false, destructive true, idempotent false) are left
    # out, and a tool whose every hint is a default sends no annotations: read as such.
    assert tools["connections_list"].annotations.read_only_hint is True
    assert tools["exec"].annotations is None
    assert tools["connections_delete"].annotations is None
    assert tools["connections_create"].annotations.destructive_hint is False
    assert tools["connections_update"].annotations.idempotent_hint is True
    assert all(t.annotations is None or t.annotations.open_world_hint is None for t in tools.values())


def test_a_standard_user_calling_an_admin_tool_is_refused(cast, mcp):
    result = mcp(cast.bob).call(
        "connections_create", {"name": "x", "kind": "sqlite", "settings": {"path": "/x"}}
    )
    assert error_text(result) == "admin access required"


def test_an_unknown_tool_is_a_protocol_error(cast, mcp):
    with pytest.raises(MCPError) as raised:
        mcp(cast.bob).call("drop_everything")
    assert "Unknown tool" in str(raised.value)


@pytest.mark.parametrize("mode", ERAS)
def test_it_runs_sql_on_sqlite_and_records_the_session(cast, shops, mcp, mode):
    envelope = structured(
        mcp(cast.bob, mode).call(
            "exec", {"connection_name": "shop", "input": "select name from customers order by id"}
        )
    )
    assert envelope["status"] == "completed"
    assert envelope["columns"] == ["name"]
    assert envelope["rows"] == [["acme one"], ["acme two"], ["acme three"]]
    assert envelope["row_count"] == 3 and envelope["exit_code"] == 0 and envelope["truncated"] is False
    session = Session.objects.get(pk=envelope["session_id"])
    assert session.status == SessionStatus.DONE
    assert session.input == "select name from customers order by id"
    assert session.user == cast.bob.user and session.surface == "mcp"
    actions = list(AuditEvent.objects.filter(target_id=str(session.pk)).values_list("action", flat=True))
    assert sorted(actions) == ["exec.finish", "exec.request"]


def test_sql_that_fails_is_a_failed_envelope_with_the_error(cast, shops, mcp):
    envelope = structured(mcp(cast.bob).call("exec", {"connection_name": "shop", "input": "selec nonsense"}))
    assert envelope["status"] == "failed"
    assert "syntax error" in envelope["output"]
    assert Session.objects.get(pk=envelope["session_id"]).exit_code == 1


def test_the_row_limit_truncates_and_says_so(cast, shops, mcp):
    envelope = structured(
        mcp(cast.bob).call(
            "exec", {"connection_name": "shop", "input": "select * from customers", "max_rows": 2}
        )
    )
    assert envelope["row_count"] == 2 and envelope["truncated"] is True


@pytest.mark.parametrize(
    "arguments, expected",
    [
        ({"connection_name": "shop"}, "input: Field required"),
        ({"connection_name": "shop", "input": 42}, "input: Input should be a valid string"),
        ({"connection_name": "shop", "input": "select 1", "max_rows": "many"}, "max_rows"),
        ({"connection_name": "shop", "input": "select 1", "surprise": True}, "surprise: Extra inputs"),
        ({"connection_name": "shop", "input": "select 1", "max_rows": 0}, "max_rows"),
    ],
)
def test_wrong_arguments_get_a_clear_error(cast, shops, mcp, arguments, expected):
    assert expected in error_text(mcp(cast.bob).call("exec", arguments))
    assert not Session.objects.exists()


def test_an_unknown_connection_is_not_found_and_audited(cast, shops, mcp):
    text = error_text(mcp(cast.bob).call("exec", {"connection_name": "nope", "input": "select 1"}))
    assert text == 'connection "nope" not found or not accessible'
    denial = AuditEvent.objects.get(action="exec.request")
    assert denial.outcome == "denied" and denial.actor == cast.bob.user


def test_malformed_json_rpc_is_a_clear_4xx_never_a_500(transactional_db, cast, gateway_server):
    headers = {
        "Authorization": f"Bearer {cast.bob.token}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-11-25",
    }
    bodies = [
        b"{not json",
        b"[]",
        b'{"jsonrpc": "2.0"}',
        b'{"jsonrpc": "1.0", "id": 1, "method": "tools/list"}',
        b"42",
    ]
    for body in bodies:
        response = httpx2.post(gateway_server.mcp_url, content=body, headers=headers)
        assert 400 <= response.status_code < 500, (body, response.status_code, response.text)


def test_a_10_mb_body_is_refused_by_the_transport_with_413(transactional_db, cast, gateway_server):
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {
                "name": "exec",
                "arguments": {"connection_name": "shop", "input": "x" * (17 * 1024 * 1024)},
            },
        }
    )
    response = httpx2.post(
        gateway_server.mcp_url,
        content=body,
        headers={
            "Authorization": f"Bearer {cast.bob.token}",
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2025-11-25",
        },
        timeout=60,
    )
    assert response.status_code == 413


def test_a_10_mb_input_is_refused_and_still_recorded(cast, shops, mcp):
    big = "select 1; -- " + "x" * (10 * 1024 * 1024)
    envelope = structured(mcp(cast.bob).call("exec", {"connection_name": "shop", "input": big}, timeout=120))
    assert envelope["status"] == "failed"
    assert "accepts at most" in envelope["output"]
    session = Session.objects.get(pk=envelope["session_id"])
    assert session.status == SessionStatus.FAILED
    assert session.input_truncated is True and session.input_bytes == len(big.encode())
    assert AuditEvent.objects.get(action="exec.request", target_id=str(session.pk)).outcome == "invalid"


def test_secrets_never_come_back_from_any_tool(cast, mcp, pg_target):
    secret = "s3cr3t-Value-that-must-not-leak"
    settings = dict(pg_target, password=secret)
    created = mcp(cast.alice).call(
        "connections_create",
        {"name": "pg", "kind": "postgres", "settings": settings, "description": "target"},
    )
    outputs = [created]
    for tool, args in [
        ("connections_get", {"name": "pg"}),
        ("connections_list", {}),
        ("connections_update", {"name": "pg", "settings": {"password": secret + "2"}}),
        ("connections_test", {"name": "pg"}),
        ("sessions_list", {}),
    ]:
        outputs.append(mcp(cast.alice).call(tool, args))
    for result in outputs:
        dumped = json.dumps(result.structured_content) + result.content[0].text
        assert secret not in dumped
    assert structured(outputs[1])["secret_keys"] == ["password"]
    for event in AuditEvent.objects.all():
        assert secret not in json.dumps(event.detail)


def test_the_connection_lifecycle_over_mcp(cast, mcp, tmp_path):
    from tests.conftest import make_shop_sqlite

    path = make_shop_sqlite(tmp_path / "new.sqlite3", "new")
    admin = mcp(cast.alice)
    created = structured(
        admin.call("connections_create", {"name": "fresh", "kind": "sqlite", "settings": {"path": str(path)}})
    )
    assert created["kind"] == "sqlite" and created["max_rows"] == 1000
    assert (
        error_text(
            admin.call(
                "connections_create", {"name": "fresh", "kind": "sqlite", "settings": {"path": str(path)}}
            )
        )
        == 'connection "fresh" already exists'
    )
    assert "unknown setting 'host'" in error_text(
        admin.call(
            "connections_create", {"name": "bad", "kind": "sqlite", "settings": {"path": "/x", "host": "h"}}
        )
    )
    updated = structured(admin.call("connections_update", {"name": "fresh", "max_rows": 5}))
    assert updated["max_rows"] == 5
    assert structured(admin.call("connections_test", {"name": "fresh"}))["ok"] is True
    assert structured(admin.call("connections_delete", {"name": "fresh"}))["deleted"] is True
    assert "not found" in error_text(admin.call("connections_get", {"name": "fresh"}))
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"connection.create", "connection.update", "connection.test", "connection.delete"} <= actions


def test_sessions_tools_page_and_hide_other_peoples_content(cast, shops, mcp):
    bob, dave, carol = mcp(cast.bob), mcp(cast.dave), mcp(cast.carol)
    ids = [
        structured(bob.call("exec", {"connection_name": "shop", "input": f"select {i}"}))["session_id"]
        for i in range(3)
    ]
    page = structured(bob.call("sessions_list", {"limit": 2}))
    assert page["total"] == 3 and len(page["items"]) == 2 and page["next_offset"] == 2
    plain = structured(bob.call("sessions_get", {"id": ids[0]}))
    assert plain["status"] == "done" and "input" not in plain and "timeline" not in plain
    content = structured(bob.call("sessions_get", {"id": ids[0], "content": True}))
    assert content["input"] == "select 0"
    # dave sees neither the list entry nor the content; the answer is the same as for a missing id
    assert structured(dave.call("sessions_list"))["total"] == 0
    assert error_text(dave.call("sessions_get", {"id": ids[0], "content": True})) == "session not found"
    assert (
        error_text(dave.call("sessions_get", {"id": "00000000-0000-0000-0000-000000000000"}))
        == "session not found"
    )
    assert error_text(dave.call("sessions_get", {"id": "not-a-uuid"})) == "session not found"
    # the auditor reads everything in the org
    assert structured(carol.call("sessions_get", {"id": ids[1], "content": True}))["input"] == "select 1"
    assert structured(carol.call("sessions_list", {"user": "bob@acme.test"}))["total"] == 3
    assert "RFC 3339" in error_text(carol.call("sessions_list", {"start_date": "yesterday"}))


def test_schema_tools_return_typed_json_and_are_recorded(cast, mcp, pg_target):
    connection_create_headless(org=cast.acme, name="pg", kind="postgres", settings=pg_target, options={})
    client = mcp(cast.bob)
    databases = structured(client.call("connection_databases", {"connection_name": "pg"}))["databases"]
    assert {"name": pg_target["database"]} in databases
    tables = structured(client.call("connection_tables", {"connection_name": "pg"}))["tables"]
    assert {"schema": "public", "name": "items", "type": "base table"} in tables
    assert {"schema": "billing", "name": "invoices", "type": "base table"} in tables
    only_billing = structured(
        client.call("connection_tables", {"connection_name": "pg", "schema": "billing"})
    )
    assert [t["name"] for t in only_billing["tables"]] == ["invoices"]
    columns = structured(client.call("connection_columns", {"connection_name": "pg", "table": "items"}))[
        "columns"
    ]
    assert [c["name"] for c in columns] == ["id", "name", "price", "created"]
    assert columns[1] == {"name": "name", "type": "text", "nullable": False, "default": None, "position": 2}
    schema_sessions = Session.objects.filter(verb="schema", user=cast.bob.user)
    assert schema_sessions.count() == 4 and all(s.status == "done" for s in schema_sessions)


def test_a_large_table_travels_once_and_its_text_is_a_preview(cast, mcp, pg_target):
    """Rows go once, in structured content; the text beside them (the envelope's `output` and the
    text content) is a preview saying what it left out; the session keeps the whole output."""
    connection_create_headless(org=cast.acme, name="pg", kind="postgres", settings=pg_target, options={})
    query = "select g, repeat('x', 400) as pad from generate_series(1, 1000) g order by g"
    result = mcp(cast.bob).call("exec", {"connection_name": "pg", "input": query})
    envelope = structured(result)
    assert envelope["row_count"] == 1000 and len(envelope["rows"]) == 1000  # the default row limit
    assert envelope["rows"][-1] == [1000, "x" * 400]
    assert len(envelope["output"].encode()) < 70 * 1024 and "more bytes" in envelope["output"]
    assert len(result.content[0].text.encode()) < 70 * 1024 and "more bytes" in result.content[0].text
    session = Session.objects.get(pk=envelope["session_id"])
    assert len(session.output.encode()) > 300 * 1024 and session.output.rstrip().endswith("x" * 400)
    # A small result is not cut.
    small = structured(mcp(cast.bob).call("exec", {"connection_name": "pg", "input": "select 1 as one"}))
    assert "more bytes" not in small["output"] and small["rows"] == [[1]]


def test_schema_tools_refuse_command_connections(cast, mcp, settings):
    settings.COMMAND_CONNECTIONS_ENABLED = True
    connection_create_headless(
        org=cast.acme, name="sh", kind="command", settings={"argv": ["cat"]}, options={}
    )
    assert error_text(mcp(cast.bob).call("connection_tables", {"connection_name": "sh"})) == (
        'connection "sh" is not a database type'
    )
