"""Access control: which groups may use a connection.

The promise under test: restricting one connection never hides another (hoop's first
access_control_set silently hid every unbound connection), changes are admin-only and audited,
and nothing resolves across orgs.
"""

import pytest

from gateway import pipeline
from gateway.services import connection_create_headless, connection_get, connection_list
from governance import access
from governance.errors import Conflict, InvalidInput, NotFound, PolicyDenied
from governance.models import UserGroup
from governance.policy import not_found_message
from sessions.models import AuditEvent
from tests.conftest import error_text, make_shop_sqlite, structured


@pytest.fixture
def two(cast, shops, tmp_path):
    """acme has "shop" and "ledger"; globex has "shop" and a group "engineering" of its own."""
    path = make_shop_sqlite(tmp_path / "ledger.sqlite3", "ledger")
    connection_create_headless(
        org=cast.acme, name="ledger", kind="sqlite", settings={"path": str(path)}, options={}
    )
    UserGroup.objects.create(org=cast.globex, name="finance")
    return shops


def _names(person):
    page, _ = connection_list(actor=person.actor())
    return sorted(c.name for c in page)


def test_it_restricts_one_connection_and_never_hides_another(cast, two):
    admin = cast.alice.actor()
    assert _names(cast.dave) == ["ledger", "shop"]
    result = access.access_control_set(actor=admin, connection_name="ledger", groups=["engineering"])
    assert result["allowed_groups"] == ["engineering"] and result["restricted"] is True
    assert _names(cast.bob) == ["ledger", "shop"]  # in engineering
    assert _names(cast.dave) == ["shop"]  # the other connection stays open
    with pytest.raises(NotFound) as denied:
        connection_get(actor=cast.dave.actor(), name="ledger")
    with pytest.raises(NotFound) as missing:
        connection_get(actor=cast.dave.actor(), name="no-such")
    assert str(denied.value) == not_found_message("ledger")
    assert str(missing.value) == not_found_message("no-such")
    # exec follows the same policy
    with pytest.raises(NotFound):
        pipeline.exec_start(actor=cast.dave.actor(), connection_name="ledger", input="select 1")
    # admins always pass; auditors see it but may not run on it
    assert "ledger" in _names(cast.alice) and "ledger" in _names(cast.carol)
    with pytest.raises(PolicyDenied):
        pipeline.exec_start(actor=cast.carol.actor(), connection_name="ledger", input="select 1")


def test_unset_opens_the_connection_again_and_says_so(cast, two):
    admin = cast.alice.actor()
    access.access_control_set(actor=admin, connection_name="ledger", groups=["engineering", "auditor"])
    opened = access.access_control_unset(actor=admin, connection_name="ledger")
    assert opened["allowed_groups"] == [] and opened["restricted"] is False
    assert "every member" in opened["note"]
    assert _names(cast.dave) == ["ledger", "shop"]
    with pytest.raises(Conflict, match="has no access groups"):
        access.access_control_unset(actor=admin, connection_name="ledger")


def test_get_and_list_show_the_bindings(cast, two):
    admin = cast.alice.actor()
    assert access.access_control_get(actor=admin, connection_name="shop")["restricted"] is False
    access.access_control_set(actor=admin, connection_name="ledger", groups=["engineering"])
    items, total = access.access_control_list(actor=cast.carol.actor())  # auditors read
    assert total == 1 and [i["connection_name"] for i in items] == ["ledger"]
    assert access.access_control_get(actor=cast.carol.actor(), connection_name="ledger")[
        "allowed_groups"
    ] == ["engineering"]


def test_it_refuses_bad_input_with_clear_messages(cast, two):
    admin = cast.alice.actor()
    with pytest.raises(InvalidInput, match="at least one user group; use access_control_unset"):
        access.access_control_set(actor=admin, connection_name="ledger", groups=[])
    with pytest.raises(InvalidInput, match="at least one"):
        access.access_control_set(actor=admin, connection_name="ledger", groups=["  "])
    with pytest.raises(InvalidInput, match="list of group names"):
        access.access_control_set(actor=admin, connection_name="ledger", groups="engineering")
    with pytest.raises(NotFound, match='group "nobody" not found'):
        access.access_control_set(actor=admin, connection_name="ledger", groups=["engineering", "nobody"])
    assert access.access_control_get(actor=admin, connection_name="ledger")["allowed_groups"] == []


@pytest.mark.parametrize("who", ["bob", "carol", "dave"])
def test_only_admins_change_access_control(cast, two, who):
    actor = getattr(cast, who).actor()
    with pytest.raises(PolicyDenied, match="admin access required"):
        access.access_control_set(actor=actor, connection_name="shop", groups=["engineering"])
    with pytest.raises(PolicyDenied, match="admin access required"):
        access.access_control_unset(actor=actor, connection_name="shop")
    if who != "carol":
        with pytest.raises(PolicyDenied, match="admin or auditor access required"):
            access.access_control_get(actor=actor, connection_name="shop")
        with pytest.raises(PolicyDenied):
            access.access_control_list(actor=actor)


def test_nothing_resolves_across_orgs(cast, two):
    eve = cast.eve.actor()
    # globex's "shop" is eve's; acme's "ledger" does not exist for her
    with pytest.raises(NotFound, match='connection "ledger" not found or not accessible'):
        access.access_control_set(actor=eve, connection_name="ledger", groups=["admin"])
    # acme's group names mean nothing in globex, and globex's group cannot guard acme's connection
    with pytest.raises(NotFound, match='group "engineering" not found'):
        access.access_control_set(actor=eve, connection_name="shop", groups=["engineering"])
    with pytest.raises(NotFound, match='group "finance" not found'):
        access.access_control_set(actor=cast.alice.actor(), connection_name="shop", groups=["finance"])
    access.access_control_set(actor=eve, connection_name="shop", groups=["finance"])
    assert access.access_control_get(actor=cast.alice.actor(), connection_name="shop")["restricted"] is False
    assert "shop" in _names(cast.dave)


def test_every_change_is_audited_once(cast, two):
    admin = cast.alice.actor()
    before = AuditEvent.objects.count()
    access.access_control_set(actor=admin, connection_name="ledger", groups=["engineering"])
    access.access_control_unset(actor=admin, connection_name="ledger")
    events = list(AuditEvent.objects.order_by("id")[before:])
    assert [(e.action, e.outcome) for e in events] == [
        ("access_control.set", "success"),
        ("access_control.unset", "success"),
    ]
    assert events[0].detail == {
        "groups": ["engineering"],
        "previous": [],
        "changed": ["access_groups"],
        "before": {"access_groups": []},
        "after": {"access_groups": ["engineering"]},
    }
    assert events[1].detail["before"] == {"access_groups": ["engineering"]}
    assert events[1].detail["after"] == {"access_groups": []} and events[1].detail["previous"] == [
        "engineering"
    ]
    assert events[0].actor_email == "alice@acme.test" and events[0].target_repr == "ledger"


@pytest.mark.live
def test_the_tools_over_mcp(cast, mcp, two):
    alice, bob, dave = mcp(cast.alice), mcp(cast.bob), mcp(cast.dave)
    assert {"access_control_set", "access_control_unset", "access_control_list"} <= set(alice.tools())
    assert not {t for t in bob.tools() if t.startswith("access_control_")}
    assert "access_control_list" in mcp(cast.carol).tools()
    assert "access_control_set" not in mcp(cast.carol).tools()

    async def descriptions(client):
        listing = await client.list_tools()
        return {t.name: t.description for t in listing.tools}

    described = alice.run(descriptions)
    # Said once where it decides what an agent does (the listing is budgeted: tests/test_tools_budget.py).
    for name in ("access_control_set", "access_control_list"):
        assert "restrict that connection only" in described[name]
        assert "without access groups is open to every member" in described[name]
    assert "opens to every member" in described["access_control_unset"]

    result = structured(
        alice.call("access_control_set", {"connection_name": "ledger", "groups": ["engineering"]})
    )
    assert result["allowed_groups"] == ["engineering"]
    assert [c["name"] for c in structured(dave.call("connections_list"))["items"]] == ["shop"]
    assert "ledger" in [c["name"] for c in structured(bob.call("connections_list"))["items"]]
    assert error_text(dave.call("exec", {"connection_name": "ledger", "input": "select 1"})) == (
        'connection "ledger" not found or not accessible'
    )
    assert "admin access required" in error_text(
        bob.call("access_control_unset", {"connection_name": "ledger"})
    )
    assert "at least 1" in error_text(
        alice.call("access_control_set", {"connection_name": "ledger", "groups": []})
    )
    listed = structured(alice.call("access_control_list"))
    assert listed["total"] == 1 and listed["items"][0]["connection_name"] == "ledger"
    one = structured(mcp(cast.carol).call("access_control_list", {"connection_name": "shop"}))
    assert one["total"] == 1 and one["items"][0]["restricted"] is False  # one connection, open or not
    assert (
        structured(alice.call("access_control_unset", {"connection_name": "ledger"}))["restricted"] is False
    )
    assert error_text(mcp(cast.eve).call("access_control_list", {"connection_name": "ledger"})) == (
        'connection "ledger" not found or not accessible'
    )
    assert AuditEvent.objects.filter(action__startswith="access_control.", surface="mcp").count() == 2
