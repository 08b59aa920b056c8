"""Attacks on isolation: another org, access groups, roles. Two orgs both have a connection "shop"."""

import pytest

from gateway import pipeline, services
from governance.errors import NotFound, PolicyDenied
from governance.models import UserGroup
from sessions.models import AuditEvent, Session
from tests.conftest import error_text, structured

pytestmark = pytest.mark.live


def test_each_org_reaches_only_its_own_shop(cast, shops, mcp):
    acme_rows = structured(
        mcp(cast.bob).call("exec", {"connection_name": "shop", "input": "select email from customers"})
    )
    globex_rows = structured(
        mcp(cast.eve).call("exec", {"connection_name": "shop", "input": "select email from customers"})
    )
    assert {r[0].split("@")[1] for r in acme_rows["rows"]} == {"acme.test"}
    assert {r[0].split("@")[1] for r in globex_rows["rows"]} == {"globex.test"}
    assert Session.objects.get(pk=globex_rows["session_id"]).org == cast.globex


def test_an_admin_of_another_org_cannot_read_change_or_delete(cast, shops, mcp):
    eve = mcp(cast.eve)
    acme_shop = shops["acme"]
    # eve's own "shop" is what she sees: nothing of acme's leaks through the shared name
    assert structured(eve.call("connections_get", {"name": "shop"}))["id"] == str(shops["globex"].pk)
    assert structured(eve.call("connections_list"))["total"] == 1
    structured(eve.call("connections_update", {"name": "shop", "description": "globex only"}))
    structured(eve.call("connections_delete", {"name": "shop"}))
    acme_shop.refresh_from_db()
    assert acme_shop.description == "" and acme_shop.org == cast.acme
    # now that globex has no shop, acme's is still invisible, and the answer is "not found"
    for tool, args in [
        ("connections_get", {"name": "shop"}),
        ("connections_update", {"name": "shop", "max_rows": 1}),
        ("connections_delete", {"name": "shop"}),
        ("connections_test", {"name": "shop"}),
        ("exec", {"connection_name": "shop", "input": "select 1"}),
        ("connection_tables", {"connection_name": "shop"}),
    ]:
        assert error_text(eve.call(tool, args)) == 'connection "shop" not found or not accessible', tool


def test_sessions_of_another_org_are_invisible_even_to_its_admin(cast, shops, mcp):
    envelope = structured(mcp(cast.bob).call("exec", {"connection_name": "shop", "input": "select 1"}))
    eve = mcp(cast.eve)
    assert structured(eve.call("sessions_list"))["total"] == 0
    for content in (False, True):
        assert error_text(eve.call("sessions_get", {"id": envelope["session_id"], "content": content})) == (
            "session not found"
        )


def test_access_groups_limit_who_may_use_a_connection_and_nothing_else(cast, shops, tmp_path, db):
    from tests.conftest import make_shop_sqlite

    other = services.connection_create_headless(
        org=cast.acme,
        name="other",
        kind="sqlite",
        settings={"path": str(make_shop_sqlite(tmp_path / "o.db", "o"))},
        options={},
    )
    engineering = UserGroup.objects.get(org=cast.acme, name="engineering")
    shops["acme"].access_groups.add(engineering)
    bob, dave, carol, alice = (p.actor() for p in (cast.bob, cast.dave, cast.carol, cast.alice))

    def visible(actor):
        return {c.name for c in services.connection_list(actor=actor)[0]}

    assert visible(bob) == {"shop", "other"}
    assert visible(dave) == {"other"}, "restricting shop must not hide other connections"
    assert visible(carol) == {"shop", "other"} and visible(alice) == {"shop", "other"}
    with pytest.raises(NotFound):
        pipeline.exec_start(actor=dave, connection_name="shop", input="select 1")
    # the auditor sees it but may not run on it
    with pytest.raises(PolicyDenied):
        pipeline.exec_start(actor=carol, connection_name="shop", input="select 1")
    assert pipeline.authorize(actor=dave, connection_name="other", mode="exec") == other
    denied = AuditEvent.objects.filter(action="exec.request", outcome="denied")
    assert {e.actor_email for e in denied} == {"dave@acme.test", "carol@acme.test"}


def test_disabled_exec_and_schema_modes_are_refused(cast, shops, db):
    shop = shops["acme"]
    shop.exec_enabled = False
    shop.schema_enabled = False
    shop.save()
    with pytest.raises(PolicyDenied, match="exec is disabled"):
        pipeline.exec_start(actor=cast.bob.actor(), connection_name="shop", input="select 1")
    with pytest.raises(PolicyDenied, match="schema is disabled"):
        pipeline.schema_list(actor=cast.bob.actor(), connection_name="shop", what="tables")


def test_standard_users_and_auditors_cannot_administer(cast, shops, db):
    from governance.policy import require_role

    for person in (cast.bob, cast.carol, cast.dave):
        with pytest.raises(PolicyDenied, match="admin access required"):
            services.connection_create(
                actor=person.actor(), name="x", kind="sqlite", settings={"path": "/tmp/x.db"}
            )
        with pytest.raises(PolicyDenied):
            services.connection_delete(actor=person.actor(), name="shop")
    require_role(cast.carol.actor(), "auditor")
    with pytest.raises(PolicyDenied):
        require_role(cast.bob.actor(), "auditor")
    with pytest.raises(PolicyDenied):
        require_role(cast.alice.actor(), "no-such-role")  # unknown roles are denied
