"""The per-token capability ceiling: read_only, read_write, admin.

A token never raises its user above their roles; it caps them. Attacked here: an admin's
read-only token tries writes (parsed-SQL check, then the read-only transaction on a real
PostgreSQL target), command connections, admin tools over MCP and the REST API.
"""

import time

import psycopg
import pytest
from django.core.management import CommandError, call_command

from gateway import pipeline
from gateway.services import connection_create_headless
from governance.errors import InvalidInput, PolicyDenied
from governance.models import ApiToken, TokenCapability
from governance.policy import ROLE_ADMIN, ROLE_AUDITOR, Actor, capability_explained, has_role, require_role
from governance.services import token_authenticate, token_issue
from sessions.models import AuditEvent, SessionStatus
from tests.conftest import error_text, structured


def _actor(user, capability, surface="mcp"):
    _, raw = token_issue(user=user, name=f"t-{capability}", capability=capability)
    found_user, token = token_authenticate(raw)
    return Actor.for_token(found_user, token, surface=surface), raw


def _run(actor, connection, text):
    session = pipeline.exec_start(actor=actor, connection_name=connection, input=text)
    deadline = time.monotonic() + 30
    while not session.is_final and time.monotonic() < deadline:
        time.sleep(0.02)
        session.refresh_from_db()
    return session


def _pg_count(settings, sql="select count(*) from items"):
    with psycopg.connect(
        host=settings["host"],
        port=settings["port"],
        dbname=settings["database"],
        user=settings["user"],
        password=settings.get("password"),
    ) as conn:
        return conn.execute(sql).fetchone()[0]


def test_it_issues_read_write_tokens_by_default_and_refuses_unknown_capabilities(cast):
    token, _ = token_issue(user=cast.bob.user, name="plain")
    assert token.capability == TokenCapability.READ_WRITE
    with pytest.raises(InvalidInput, match="capability must be one of"):
        token_issue(user=cast.bob.user, name="bad", capability="root")
    event = AuditEvent.objects.filter(action="token.issue", target_id=str(token.pk)).get()
    assert event.detail["capability"] == "read_write"


def test_the_cli_takes_a_capability(cast, capsys):
    call_command("token_issue", "--email", "alice@acme.test", "--name", "ro-cli", "--capability", "read_only")
    raw = capsys.readouterr().out.strip()
    _, token = token_authenticate(raw)
    assert token.capability == "read_only"
    with pytest.raises(CommandError, match="invalid choice"):
        call_command("token_issue", "--email", "alice@acme.test", "--capability", "superuser")


@pytest.mark.parametrize("capability", ["read_only", "read_write"])
def test_an_admins_token_below_admin_has_no_admin_role(cast, capability):
    actor, _ = _actor(cast.alice.user, capability)
    assert not has_role(actor, ROLE_ADMIN) and not has_role(actor, ROLE_AUDITOR)
    assert not actor.is_admin and not actor.is_auditor
    with pytest.raises(PolicyDenied, match=f"this token's capability is {capability}"):
        require_role(actor, ROLE_ADMIN)
    assert "admin role does not count" in capability_explained(actor)
    full, _ = _actor(cast.alice.user, "admin")
    assert full.is_admin and has_role(full, ROLE_ADMIN)


@pytest.mark.parametrize("capability", ["read_only", "read_write", "admin"])
def test_an_auditors_read_powers_survive_every_capability(cast, capability):
    actor, _ = _actor(cast.carol.user, capability)
    assert actor.is_auditor and has_role(actor, ROLE_AUDITOR) and not has_role(actor, ROLE_ADMIN)
    with pytest.raises(PolicyDenied, match="admin access required$"):  # no capability hint: it would not help
        require_role(actor, ROLE_ADMIN)
    if capability != "admin":
        assert "auditor role counts" in capability_explained(actor)


def test_a_token_never_raises_a_user_above_their_role(cast):
    actor, _ = _actor(cast.bob.user, "admin")
    assert not actor.is_admin and not has_role(actor, ROLE_AUDITOR)


def test_a_read_only_admin_token_cannot_change_connections(cast, shops):
    from gateway.services import connection_create, connection_delete

    actor, _ = _actor(cast.alice.user, "read_only")
    with pytest.raises(PolicyDenied):
        connection_create(actor=actor, name="x", kind="sqlite", settings={"path": "/tmp/x.sqlite3"})
    with pytest.raises(PolicyDenied):
        connection_delete(actor=actor, name="shop")


@pytest.fixture
def pg(cast, transactional_db, pg_target):
    connection_create_headless(org=cast.acme, name="pg", kind="postgres", settings=pg_target, options={})
    return pg_target


def test_a_read_only_token_is_refused_a_write_on_postgres_and_nothing_changes(cast, pg):
    actor, _ = _actor(cast.alice.user, "read_only")  # an admin: the user could write, the token may not
    before = _pg_count(pg)
    for statement in (
        "insert into items (name) values ('ro-token')",
        "update items set price = 0 where id = 1",
        "select 1; delete from items where id = 2",
        "WITH d AS (DELETE FROM items WHERE id = 3 RETURNING *) SELECT count(*) FROM d",
        "BEGIN READ WRITE; insert into items (name) values ('x'); COMMIT",
    ):
        session = _run(actor, "pg", statement)
        assert session.status == SessionStatus.BLOCKED, (statement, session.status, session.error)
        envelope = pipeline.exec_envelope(session)
        assert envelope["status"] == "blocked" and envelope["rule"] == "token capability: read_only"
    assert _pg_count(pg) == before
    assert _pg_count(pg, "select count(*) from items where price = 0") == 0
    audited = AuditEvent.objects.filter(action="exec.request", actor=cast.alice.user, outcome="blocked")
    assert audited.count() == 5


def test_a_read_only_token_reads_in_a_read_only_transaction(cast, pg):
    """A write hidden in a function passes the parsed-SQL check; the read-only transaction stops it."""
    admin = cast.alice.actor()
    setup = _run(
        admin,
        "pg",
        "create or replace function sneaky() returns int language sql as "
        "$$ insert into items (name) values ('sneaky') returning 1 $$",
    )
    assert setup.status == SessionStatus.DONE, setup.error or setup.output
    try:
        actor, _ = _actor(cast.alice.user, "read_only")
        before = _pg_count(pg)
        read = _run(actor, "pg", "select count(*) from items")
        assert read.status == SessionStatus.DONE and read.result["rows"][0][0] == before
        hidden = _run(actor, "pg", "select sneaky()")
        assert hidden.status == SessionStatus.DONE and hidden.exit_code != 0
        assert "read-only transaction" in (hidden.output + hidden.error)
        assert _pg_count(pg) == before
        # The same statement with a read_write token runs (the ceiling, not the user, refused it).
        writer, _ = _actor(cast.alice.user, "read_write")
        assert _run(writer, "pg", "select sneaky()").exit_code == 0
        assert _pg_count(pg) == before + 1
    finally:
        _run(admin, "pg", "delete from items where name = 'sneaky'")
        _run(admin, "pg", "drop function if exists sneaky()")


def test_a_read_only_token_cannot_run_commands(cast, transactional_db, settings):
    settings.COMMAND_CONNECTIONS_ENABLED = True
    connection_create_headless(
        org=cast.acme, name="sh", kind="command", settings={"argv": ["/bin/cat"]}, options={}
    )
    actor, _ = _actor(cast.bob.user, "read_only")
    session = _run(actor, "sh", "hello")
    assert session.status == SessionStatus.BLOCKED
    assert session.guardrail_findings[0]["condition"] == "capability.read_only"
    writer, _ = _actor(cast.bob.user, "read_write")
    done = _run(writer, "sh", "hello")
    assert done.status == SessionStatus.DONE and done.output.strip() == "hello"


# --- over MCP ----------------------------------------------------------------------------------


@pytest.mark.live
def test_a_read_only_admin_token_sees_and_gets_no_admin_or_write_tools(cast, mcp, shops):
    _, raw = token_issue(user=cast.alice.user, name="agent-ro", capability="read_only")
    client = mcp(raw)
    tools = set(client.tools())
    assert {"exec", "exec_cancel", "connections_list", "sessions_list", "me_get"} <= tools
    assert not {"connections_create", "connections_delete", "guardrails_create", "audit_events_list"} & tools
    denied = error_text(client.call("connections_delete", {"name": "shop"}))
    assert "admin access required" in denied and "read_only" in denied
    assert ApiToken.objects.get(name="agent-ro").capability == "read_only"
    from gateway.models import Connection

    assert Connection.objects.filter(org=cast.acme, name="shop").exists()
    event = AuditEvent.objects.filter(action="mcp.tool", outcome="denied", actor=cast.alice.user).latest("id")
    assert event.target_repr == "connections_delete" and event.client.startswith("token:agent-ro")
    # exec stays usable, for reads only
    blocked = structured(client.call("exec", {"connection_name": "shop", "input": "delete from customers"}))
    assert blocked["status"] == "blocked"
    read = structured(
        client.call("exec", {"connection_name": "shop", "input": "select count(*) from customers"})
    )
    assert read["status"] == "completed" and read["rows"] == [[3]]


@pytest.mark.live
def test_a_read_write_admin_token_acts_as_a_standard_member(cast, mcp, shops):
    _, raw = token_issue(user=cast.alice.user, name="agent-rw", capability="read_write")
    client = mcp(raw)
    tools = set(client.tools())
    assert "exec" in tools and "connections_create" not in tools
    me = structured(client.call("me_get"))
    assert me["is_admin"] is False and "admin" in me["groups"] and me["capability"] == "read_write"
    assert set(mcp(cast.alice).tools()) > tools  # the uncapped token sees more
    assert "connections_create" in me["tools_a_higher_capability_adds"]["admin"]
    assert "admin role does not count" in me["capability_explained"]


@pytest.mark.live
@pytest.mark.parametrize("capability", ["read_only", "read_write"])
def test_an_auditors_token_keeps_the_auditor_tools_and_me_get_says_why(cast, mcp, shops, capability):
    _, raw = token_issue(user=cast.carol.user, name=f"audit-{capability}", capability=capability)
    client = mcp(raw)
    tools = set(client.tools())
    assert {"audit_events_list", "config_list", "sessions_list"} <= tools
    assert not {"connections_create", "guardrails_create"} & tools
    me = structured(client.call("me_get"))
    assert me["is_auditor"] is True and me["capability"] == capability
    assert "auditor role counts" in me["capability_explained"]
    # Auditors administer nothing, so no capability adds an admin tool for them.
    assert not any("create" in t for names in me["tools_a_higher_capability_adds"].values() for t in names)
    listed = structured(client.call("audit_events_list", {"limit": 5}))
    assert listed["total"] >= 1
