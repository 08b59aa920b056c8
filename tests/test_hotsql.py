"""The hand-written hot-path statements (gateway.hotsql) load the same objects the ORM loads."""

import uuid

import pytest
from django.db import transaction

from gateway import hotsql, pipeline
from governance.models import ApiToken, Organization, User, UserGroup, token_digest
from governance.policy import _group_rows
from governance.services import _token_by_digest, token_actor
from sessions import lifecycle
from sessions.models import Session


def _fields(obj) -> dict:
    return {f.attname: getattr(obj, f.attname) for f in obj._meta.concrete_fields}


def test_the_token_lookup_loads_what_the_orm_loads(cast):
    digest = token_digest(cast.bob.token)
    expected = ApiToken.objects.select_related("user", "user__org").get(digest=digest)
    token, group_rows = _token_by_digest(digest)
    assert _fields(token) == _fields(expected)
    assert _fields(token.user) == _fields(expected.user)
    assert _fields(token.user.org) == _fields(expected.user.org)
    assert _token_by_digest(token_digest(cast.bob.token + "x")) == (None, None)
    # The groups come with it: the same (id, name) pairs as the actor reads on its own, and only
    # groups of the user's org even when the membership table names another org's group.
    foreign = UserGroup.objects.create(org=cast.globex, name="engineering")
    foreign.members.add(cast.bob.user)
    token, group_rows = _token_by_digest(digest)
    assert sorted(group_rows) == sorted(_group_rows(cast.bob.user)) != []
    assert foreign.pk not in {pk for pk, _ in group_rows}
    actor, _ = token_actor(cast.bob.token, surface="mcp")
    assert actor.groups == cast.bob.actor(surface="mcp").groups == {"engineering"}
    assert actor.group_ids == {pk for pk, _ in _group_rows(cast.bob.user)}
    assert token_actor(cast.dave.token, surface="mcp")[0].groups == frozenset()
    assert token_actor(cast.bob.token + "x", surface="mcp") is None


def test_the_locked_session_loads_what_the_orm_loads(cast, shops):
    session = pipeline.exec_start(
        actor=cast.bob.actor(surface="mcp"),
        connection_name="shop",
        input="select name from customers",
        metadata={"ticket": "OPS-1", "nested": [1, {"a": None}]},
    )
    with transaction.atomic():
        locked = lifecycle._locked(session.pk)
        expected = Session.objects.select_related("user").get(pk=session.pk)
    assert _fields(locked) == _fields(expected)
    assert locked.metadata == {"ticket": "OPS-1", "nested": [1, {"a": None}]}  # JSON, not its text
    assert _fields(locked.user) == _fields(expected.user)
    with transaction.atomic(), pytest.raises(Session.DoesNotExist):
        lifecycle._locked("00000000-0000-0000-0000-000000000000")


def test_a_row_that_does_not_fit_the_models_is_refused(cast):
    org = Organization.objects.get(pk=cast.acme.pk)
    row = [getattr(org, f.attname) for f in Organization._meta.concrete_fields]
    assert _fields(hotsql.load(row, Organization)[0]) == _fields(org)
    with pytest.raises(ValueError):
        hotsql.load([*row, "extra"], Organization)
    with pytest.raises(ValueError):
        hotsql.load(row[:-1], Organization, User)


def test_insert_and_update_write_what_save_writes(cast, shops):
    template = pipeline.exec_start(
        actor=cast.bob.actor(surface="mcp"),
        connection_name="shop",
        input="select 1",
        metadata={"ticket": "OPS-2", "list": [1, 2]},
    )
    template = Session.objects.get(pk=template.pk)
    by_orm, by_hand = Session.objects.get(pk=template.pk), Session.objects.get(pk=template.pk)
    for copy in (by_orm, by_hand):
        copy.pk = uuid.uuid4()
        copy._state.adding = True
    with transaction.atomic():
        by_orm.save(force_insert=True)
        hotsql.insert(by_hand)
    skip = {"id"}

    def row(pk):
        return {k: v for k, v in _fields(Session.objects.get(pk=pk)).items() if k not in skip}

    assert row(by_hand.pk) == row(by_orm.pk)
    for copy in (by_orm, by_hand):
        copy.output, copy.result, copy.row_count = "x\n", {"columns": ["a"], "rows": [[1], [None]]}, 2
    with transaction.atomic():
        by_orm.save(update_fields=["output", "result", "row_count"])
        assert hotsql.update(by_hand, ["output", "result", "row_count"]) == 1
    assert row(by_hand.pk) == row(by_orm.pk)
    assert Session.objects.get(pk=by_hand.pk).result == {"columns": ["a"], "rows": [[1], [None]]}
    with pytest.raises(TypeError):  # an expression must be given as SQL
        by_hand.lease_expires_at = lifecycle.db_now_plus(5)
        hotsql.update(by_hand, ["lease_expires_at"])
    with transaction.atomic():
        hotsql.update(by_hand, ["lease_expires_at"], raw=lifecycle._lease_sql(30))
    lease = Session.objects.get(pk=by_hand.pk).lease_expires_at
    assert lease is not None and lease > Session.objects.get(pk=by_hand.pk).created_at
