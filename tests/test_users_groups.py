"""User and group services: the policy decides, every change is audited, the reserved groups and
the last admin are protected, and nothing crosses orgs."""

from __future__ import annotations

import pytest

from governance.errors import Conflict, InvalidInput, NotFound, PolicyDenied
from governance.services import (
    user_create,
    user_deactivate,
    user_get,
    user_list,
    user_to_dict,
    user_update,
    usergroup_add_members,
    usergroup_create,
    usergroup_delete,
    usergroup_get,
    usergroup_list,
    usergroup_remove_members,
    usergroup_rename,
    usergroup_set_members,
    usergroup_to_dict,
)
from sessions.models import AuditEvent


def _events(org, action):
    return AuditEvent.objects.filter(org=org, action=action)


def test_it_lists_only_the_callers_org(cast):
    emails = [u.email for u in user_list(actor=cast.dave.actor())[0]]
    assert emails == ["alice@acme.test", "bob@acme.test", "carol@acme.test", "dave@acme.test"]
    assert [u.email for u in user_list(actor=cast.eve.actor())[0]] == ["eve@globex.test"]
    groups = [g.name for g in usergroup_list(actor=cast.dave.actor())[0]]
    assert groups == ["admin", "auditor", "engineering"]


def test_it_filters_and_pages_users(cast):
    page, total = user_list(actor=cast.alice.actor(), limit=2, offset=1)
    assert total == 4 and [u.email for u in page] == ["bob@acme.test", "carol@acme.test"]
    assert [u.email for u in user_list(actor=cast.alice.actor(), group="engineering")[0]] == ["bob@acme.test"]
    assert [u.email for u in user_list(actor=cast.alice.actor(), search="CAR")[0]] == ["carol@acme.test"]
    with pytest.raises(InvalidInput):
        user_list(actor=cast.alice.actor(), limit=101)


def test_it_answers_not_found_across_orgs(cast):
    for ref in ("eve@globex.test", str(cast.eve.user.pk)):
        with pytest.raises(NotFound, match="user not found"):
            user_get(actor=cast.alice.actor(), ref=ref)
    with pytest.raises(NotFound):
        user_update(actor=cast.alice.actor(), ref="eve@globex.test", name="x")
    with pytest.raises(NotFound):
        usergroup_get(actor=cast.eve.actor(), name="engineering")
    with pytest.raises(NotFound):  # a member of another org is not a member you can add
        usergroup_add_members(actor=cast.alice.actor(), name="engineering", members=["eve@globex.test"])
    assert user_to_dict(user_get(actor=cast.dave.actor(), ref="BOB@acme.test"))["groups"] == ["engineering"]


def test_it_lets_only_admins_change_the_directory(cast):
    for who in (cast.bob, cast.carol, cast.dave):
        with pytest.raises(PolicyDenied, match="admin access required"):
            usergroup_create(actor=who.actor(), name="ops")
        with pytest.raises(PolicyDenied):
            user_create(actor=who.actor(), email="x@acme.test")
        with pytest.raises(PolicyDenied):
            usergroup_add_members(actor=who.actor(), name="admin", members=[who.user.email])


def test_it_creates_a_user_in_the_admins_org_with_an_audit_event(cast):
    user = user_create(
        actor=cast.alice.actor("admin"), email="Frank@Acme.test", name="Frank", groups=["engineering"]
    )
    assert user.org == cast.acme and user.email == "frank@acme.test"
    assert user_to_dict(user)["groups"] == ["engineering"]
    event = _events(cast.acme, "user.create").get(actor=cast.alice.user)
    assert event.surface == "admin" and event.detail == {"groups": ["engineering"]}
    with pytest.raises(Conflict):
        user_create(actor=cast.alice.actor(), email="frank@acme.test")
    with pytest.raises(NotFound, match='group "nope" not found'):
        user_create(actor=cast.alice.actor(), email="gina@acme.test", groups=["nope"])
    with pytest.raises(InvalidInput, match="not a valid email"):
        user_create(actor=cast.alice.actor(), email="not-an-email")


def test_it_manages_groups_and_members(cast):
    actor = cast.alice.actor()
    group = usergroup_create(actor=actor, name="ops", members=["bob@acme.test"])
    assert usergroup_to_dict(group)["members"] == ["bob@acme.test"]
    usergroup_add_members(actor=actor, name="ops", members=["dave@acme.test"])
    usergroup_remove_members(actor=actor, name="ops", members=["bob@acme.test"])
    assert usergroup_to_dict(usergroup_get(actor=actor, name="ops"))["members"] == ["dave@acme.test"]
    event = _events(cast.acme, "usergroup.members").first()
    assert (event.detail["added"], event.detail["removed"]) == ([], ["bob@acme.test"])
    assert event.detail["before"] == {"members": ["bob@acme.test", "dave@acme.test"]}
    assert event.detail["after"] == {"members": ["dave@acme.test"]}
    with pytest.raises(Conflict):
        usergroup_create(actor=actor, name="ops")
    usergroup_rename(actor=actor, name="ops", new_name="sre")
    assert usergroup_delete(actor=actor, name="sre") == "sre"
    assert _events(cast.acme, "usergroup.delete").count() == 1
    # The same name in another org is another group.
    usergroup_create(actor=cast.eve.actor(), name="engineering")


def test_it_never_deletes_or_renames_the_reserved_groups(cast):
    for name in ("admin", "auditor"):
        with pytest.raises(InvalidInput, match=f"cannot delete the {name} group"):
            usergroup_delete(actor=cast.alice.actor(), name=name)
        with pytest.raises(InvalidInput, match="cannot be renamed"):
            usergroup_rename(actor=cast.alice.actor(), name=name, new_name="x")
    with pytest.raises(InvalidInput):
        usergroup_rename(actor=cast.alice.actor(), name="engineering", new_name="admin")


def test_it_refuses_to_delete_a_group_that_alone_guards_a_connection(cast, shops):
    shops["acme"].access_groups.set([usergroup_get(actor=cast.alice.actor(), name="engineering")])
    with pytest.raises(Conflict, match="only access group of connection\\(s\\) shop"):
        usergroup_delete(actor=cast.alice.actor(), name="engineering")
    other = usergroup_create(actor=cast.alice.actor(), name="ops")
    shops["acme"].access_groups.add(other)
    usergroup_delete(actor=cast.alice.actor(), name="engineering")  # ops still guards it
    assert [g.name for g in shops["acme"].access_groups.all()] == ["ops"]


def test_it_keeps_the_last_active_admin(cast):
    alice = cast.alice.actor()
    with pytest.raises(Conflict, match="at least one active admin"):
        usergroup_remove_members(actor=alice, name="admin", members=["alice@acme.test"])
    with pytest.raises(Conflict):
        usergroup_set_members(actor=alice, name="admin", members=[])
    with pytest.raises(Conflict):
        user_deactivate(actor=alice, ref="alice@acme.test")
    with pytest.raises(Conflict):
        user_update(actor=alice, ref="alice@acme.test", groups=["engineering"])
    assert user_get(actor=alice, ref="alice@acme.test").is_active
    # An inactive admin does not count: making dave admin then deactivating him leaves alice last.
    usergroup_add_members(actor=alice, name="admin", members=["dave@acme.test"])
    user_deactivate(actor=alice, ref="dave@acme.test")
    with pytest.raises(Conflict):
        usergroup_remove_members(actor=alice, name="admin", members=["alice@acme.test"])
    # With a second active admin, alice may step down.
    usergroup_add_members(actor=alice, name="admin", members=["bob@acme.test"])
    usergroup_remove_members(actor=alice, name="admin", members=["alice@acme.test"])
    assert _events(cast.acme, "user.deactivate").count() == 1


def test_it_deactivates_a_user_and_their_tokens_stop_working(cast):
    from governance.services import token_authenticate

    assert token_authenticate(cast.dave.token) is not None
    user_deactivate(actor=cast.alice.actor(), ref="dave@acme.test")
    assert token_authenticate(cast.dave.token) is None


def test_it_binds_no_connection_when_creating_a_group(cast, shops):
    usergroup_create(actor=cast.alice.actor(), name="ops")
    assert shops["acme"].access_groups.count() == 0
