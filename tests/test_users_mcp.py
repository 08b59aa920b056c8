"""users_list, usergroups_list, usergroups_create and config_*(kind usergroup) over real HTTP
with the SDK client against the live gateway."""

import pytest

from sessions.models import AuditEvent
from tests.conftest import error_text, structured

pytestmark = pytest.mark.live


def test_it_lets_any_member_read_the_directory_of_their_own_org_only(cast, mcp):
    dave = mcp(cast.dave)
    users = structured(dave.call("users_list", {}))
    assert [u["email"] for u in users["items"]] == [
        "alice@acme.test",
        "bob@acme.test",
        "carol@acme.test",
        "dave@acme.test",
    ]
    assert users["total"] == 4 and users["has_next_page"] is False
    alice = next(u for u in users["items"] if u["email"] == "alice@acme.test")
    assert alice["is_admin"] and alice["status"] == "active" and alice["groups"] == ["admin"]
    assert "password" not in str(users)
    page = structured(dave.call("users_list", {"limit": 1, "offset": 1}))
    assert [u["email"] for u in page["items"]] == ["bob@acme.test"] and page["next_offset"] == 2
    groups = structured(dave.call("usergroups_list", {}))
    assert [(g["name"], g["reserved"]) for g in groups["items"]] == [
        ("admin", True),
        ("auditor", True),
        ("engineering", False),
    ]
    one = structured(dave.call("users_list", {"user_email": "bob@acme.test"}))
    assert one["total"] == 1 and one["items"][0]["groups"] == ["engineering"]
    # Another org's user is "not found", by e-mail or by id, and never listed.
    eve = mcp(cast.eve)
    assert error_text(eve.call("users_list", {"user_email": "bob@acme.test"})) == "user not found"
    assert error_text(eve.call("users_list", {"email": str(cast.bob.user.pk)})) == "user not found"
    assert [u["email"] for u in structured(eve.call("users_list", {}))["items"]] == ["eve@globex.test"]


def test_it_shows_group_tools_to_admins_only(cast, mcp):
    for who in (cast.bob, cast.carol):
        names = mcp(who).tools()
        assert "users_list" in names and "usergroups_list" in names
        assert "usergroups_create" not in names and "config_delete" not in names
        assert error_text(mcp(who).call("usergroups_create", {"name": "ops"})) == "admin access required"
    assert {"usergroups_create", "config_delete"} <= set(mcp(cast.alice).tools())


def test_it_creates_and_deletes_groups_with_audit_events(cast, mcp):
    alice = mcp(cast.alice)
    group = structured(alice.call("usergroups_create", {"name": "ops", "members": ["bob@acme.test"]}))
    assert group["members"] == ["bob@acme.test"] and group["connections"] == [] and not group["reserved"]
    assert "already exists" in error_text(alice.call("usergroups_create", {"name": "ops"}))
    # A member from another org is not found, and nothing is created.
    assert error_text(alice.call("usergroups_create", {"name": "x", "members": ["eve@globex.test"]})) == (
        'user "eve@globex.test" not found'
    )
    # eve cannot delete acme's group, and learns nothing about it.
    ops = {"kind": "usergroup", "record_name": "ops"}
    assert error_text(mcp(cast.eve).call("config_delete", ops)) == 'group "ops" not found'
    # Renamed and given members in one call; each change audited.
    changed = structured(
        alice.call(
            "config_update",
            {**ops, "changes": {"name": "oncall", "add_members": ["dave@acme.test"]}},
        )
    )
    assert changed["name"] == "oncall" and changed["members"] == ["bob@acme.test", "dave@acme.test"]
    assert changed["kind"] == "usergroup"
    oncall = {"kind": "usergroup", "record_name": "oncall"}
    assert structured(alice.call("config_delete", oncall)) == {"name": "oncall", "deleted": True}
    events = AuditEvent.objects.filter(org=cast.acme, action__startswith="usergroup.").order_by("id")
    assert [(e.action, e.surface, e.actor_email) for e in events] == [
        ("usergroup.create", "mcp", "alice@acme.test"),
        ("usergroup.rename", "mcp", "alice@acme.test"),
        ("usergroup.members", "mcp", "alice@acme.test"),
        ("usergroup.delete", "mcp", "alice@acme.test"),
    ]


def test_it_never_deletes_the_reserved_groups(cast, mcp):
    alice = mcp(cast.alice)
    for name in ("admin", "auditor"):
        assert error_text(alice.call("config_delete", {"kind": "usergroup", "record_name": name})) == (
            f"cannot delete the {name} group"
        )


def test_it_rejects_unknown_and_bad_arguments(cast, mcp):
    alice = mcp(cast.alice)
    assert "invalid arguments" in error_text(alice.call("users_list", {"limit": 500}))
    assert "invalid arguments" in error_text(
        alice.call("usergroups_create", {"name": "ops", "connections": ["x"]})
    )
    assert "invalid arguments" in error_text(alice.call("users_list", {"user": "x"}))
    assert "invalid changes for a user group" in error_text(
        alice.call("config_update", {"kind": "usergroup", "record_name": "engineering", "changes": {"x": 1}})
    )
