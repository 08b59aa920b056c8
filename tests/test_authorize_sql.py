"""The connection lookup of every exec, written by hand on PostgreSQL (governance.access), gives the
ORM scope's answer for every actor, connection name and mode, and records the same denials.

The world: acme's connections open, restricted to one group, to two, to a group nobody is in, to
another org's group (only a forged row could do that), and with exec, schema or runbooks turned off;
globex has connections of the same names. The actors: every role, roles capped by a token's
capability, several groups, none, a forged actor holding another org's group id, another org's
admin, and members holding JIT grants (active, expired, revoked) which never open a connection.
"""

from datetime import timedelta

import pytest
from django.db import connection as db
from django.utils import timezone

from gateway.models import Connection
from governance import access
from governance.errors import NotFound, PolicyDenied
from governance.models import UserGroup
from governance.policy import Actor, connection_scope_sql, not_found_message, scope
from governance.services import user_create
from reviews.models import Review, ReviewStatus, ReviewType
from sessions.models import AuditEvent

MODES = ("exec", "schema", "runbooks")


def _fields(obj) -> dict:
    return {f.attname: getattr(obj, f.attname) for f in obj._meta.concrete_fields}


@pytest.fixture
def world(cast):
    acme, globex = cast.acme, cast.globex
    engineering = UserGroup.objects.get(org=acme, name="engineering")
    ops = UserGroup.objects.create(org=acme, name="ops")
    empty = UserGroup.objects.create(org=acme, name="nobody")
    foreign = UserGroup.objects.create(org=globex, name="engineering")
    config = {"path": "/nowhere.sqlite3", "nested": [1, {"a": None}]}

    def make(org, name, groups=(), **flags):
        c = Connection.objects.create(org=org, name=name, kind="sqlite", config=config, **flags)
        c.access_groups.set(groups)
        return c

    for name, groups, flags in [
        ("open", (), {}),
        ("eng", (engineering,), {}),
        ("ops", (ops,), {}),
        ("both", (engineering, ops), {}),
        ("nobody", (empty,), {}),
        ("forged", (foreign,), {}),
        ("no-exec", (), {"exec_enabled": False}),
        ("eng-no-exec", (engineering,), {"exec_enabled": False}),
        ("no-schema", (), {"schema_enabled": False}),
        ("no-runbooks", (engineering,), {"runbooks_enabled": False}),
        ("Mixed", (), {}),
    ]:
        make(acme, name, groups, **flags)
    make(globex, "open")
    make(globex, "eng", (foreign,))
    make(globex, "globex-only")

    people = {
        "grace": user_create(org=acme, email="grace@acme.test", groups=["auditor", "engineering"]),
        "heidi": user_create(org=acme, email="heidi@acme.test", groups=["admin", "auditor"]),
        "ivan": user_create(org=acme, email="ivan@acme.test", groups=["engineering", "ops"]),
        "olga": user_create(org=acme, email="olga@acme.test", groups=["ops"]),
        "mallory": user_create(org=globex, email="mallory@globex.test", groups=["engineering"]),
    }
    foreign.members.add(people["mallory"])
    # JIT grants for dave on "eng": one active, one expired, one revoked. None opens it.
    eng = Connection.objects.get(org=acme, name="eng")
    now = timezone.now()
    for status, until in [
        (ReviewStatus.APPROVED, now + timedelta(hours=1)),
        (ReviewStatus.APPROVED, now - timedelta(hours=1)),
        (ReviewStatus.REVOKED, now - timedelta(minutes=1)),
    ]:
        Review.objects.create(
            org=acme,
            type=ReviewType.JIT,
            status=status,
            requester=cast.dave.user,
            connection=eng,
            connection_name="eng",
            access_until=until,
            expires_at=now + timedelta(hours=1),
        )

    def actor(user, **kw):
        return Actor.for_user(user, surface="mcp", client="pytest", **kw)

    bob = actor(cast.bob.user)
    actors = {
        "alice (admin)": actor(cast.alice.user),
        "alice read_write (admin capped)": actor(cast.alice.user, capability="read_write"),
        "alice read_only": actor(cast.alice.user, capability="read_only"),
        "bob (engineering)": bob,
        "carol (auditor)": actor(cast.carol.user),
        "carol read_only (auditor)": actor(cast.carol.user, capability="read_only"),
        "dave (no group, JIT grants)": actor(cast.dave.user),
        "eve (globex admin)": actor(cast.eve.user),
        "grace (auditor, engineering)": actor(people["grace"]),
        "heidi (admin, auditor)": actor(people["heidi"]),
        "heidi read_write (auditor)": actor(people["heidi"], capability="read_write"),
        "ivan (engineering, ops)": actor(people["ivan"]),
        "olga (ops)": actor(people["olga"]),
        "mallory (globex engineering)": actor(people["mallory"]),
        "bob forging globex's group": Actor(
            user=cast.bob.user,
            groups=bob.groups,
            group_ids=bob.group_ids | {foreign.pk},
            surface="mcp",
        ),
    }
    names = [
        *Connection.objects.values_list("name", flat=True).distinct(),
        "missing",
        "OPEN",
        "mixed",
        "",
        "open' OR '1'='1",
        "%",
    ]
    return actors, sorted(set(names))


def test_the_sql_form_of_the_scope_selects_what_the_queryset_selects(world):
    actors, _ = world
    for label, actor in actors.items():
        for action in ("view", "exec", "manage", "unknown"):
            condition, params = connection_scope_sql(actor, action, "c")
            with db.cursor() as cursor:
                cursor.execute(f"SELECT c.id FROM {Connection._meta.db_table} c WHERE {condition}", params)
                by_hand = {row[0] for row in cursor.fetchall()}
            by_orm = set(scope(Connection.objects.all(), actor, action).values_list("pk", flat=True))
            assert by_hand == by_orm, (label, action)


def test_the_lookup_answers_as_the_orm_for_every_actor_and_name(world, django_assert_num_queries):
    assert db.vendor == "postgresql"
    actors, names = world
    answered = set()
    for label, actor in actors.items():
        for name in names:
            try:
                expected, expected_runnable = access._connection_to_use_by_orm(actor, name)
            except NotFound as exc:
                with pytest.raises(NotFound) as raised, django_assert_num_queries(1):
                    access._connection_to_use(actor, name)
                assert raised.value.message == exc.message == not_found_message(name), (label, name)
                answered.add("not found")
                continue
            with django_assert_num_queries(1):
                found, runnable = access._connection_to_use(actor, name)
                assert _fields(found.org) == _fields(expected.org)  # loaded with it
            assert _fields(found) == _fields(expected), (label, name)
            assert found.config == {"path": "/nowhere.sqlite3", "nested": [1, {"a": None}]}
            assert runnable is expected_runnable, (label, name)
            answered.add("runnable" if runnable else "visible only")
    assert answered == {"not found", "runnable", "visible only"}


def _expected(actor, name, mode):
    """What authorize must answer, from the ORM lookup: the connection's id or (error, message)."""
    try:
        connection, runnable = access._connection_to_use_by_orm(actor, name)
    except NotFound as exc:
        return NotFound, exc.message
    if not runnable:
        return PolicyDenied, f'you may not run anything on connection "{name}"'
    if not getattr(connection, f"{mode}_enabled"):
        return PolicyDenied, f"{mode} is disabled for this connection"
    return connection.pk


def test_authorize_answers_and_records_denials_as_the_orm_scope_says(world):
    actors, names = world
    outcomes = set()
    for label, actor in actors.items():
        for name in names:
            for mode in MODES:
                expected = _expected(actor, name, mode)
                before = AuditEvent.objects.count()
                if not isinstance(expected, tuple):
                    assert access.authorize(actor=actor, connection_name=name, mode=mode).pk == expected
                    assert AuditEvent.objects.count() == before, (label, name, mode)
                    outcomes.add("allowed")
                    continue
                error, message = expected
                with pytest.raises(error) as raised:
                    access.authorize(actor=actor, connection_name=name, mode=mode)
                assert raised.value.message == message, (label, name, mode)
                events = list(AuditEvent.objects.order_by("id")[before:])
                assert [(e.action, e.outcome, e.actor_id, e.target_repr, e.detail) for e in events] == [
                    (f"{mode}.request", "denied", actor.user.pk, name, {"reason": message})
                ], (label, name, mode)
                outcomes.add(error.__name__)
    assert outcomes == {"allowed", "NotFound", "PolicyDenied"}


def test_the_attacks_are_refused(world):
    actors, _ = world

    def answer(label, name, mode="exec"):
        try:
            return access.authorize(actor=actors[label], connection_name=name, mode=mode).org.name
        except (NotFound, PolicyDenied) as exc:
            return type(exc).__name__

    assert answer("eve (globex admin)", "eng") == "globex"  # the name resolves in her own org only
    assert answer("eve (globex admin)", "ops") == "NotFound"  # acme's, by name
    assert answer("mallory (globex engineering)", "forged") == "NotFound"
    assert answer("bob forging globex's group", "forged") == "acme"  # as the scope says
    assert answer("dave (no group, JIT grants)", "eng") == "NotFound"  # a JIT grant opens nothing
    assert answer("dave (no group, JIT grants)", "nobody") == "NotFound"
    assert answer("alice read_write (admin capped)", "eng") == "NotFound"
    assert answer("carol (auditor)", "eng") == "PolicyDenied"  # sees it, may not run on it
    assert answer("carol read_only (auditor)", "open") == "acme"
    assert answer("grace (auditor, engineering)", "eng") == "acme"
    assert answer("heidi read_write (auditor)", "ops") == "PolicyDenied"
    assert answer("bob (engineering)", "eng-no-exec") == "PolicyDenied"
    assert answer("bob (engineering)", "eng-no-exec", "schema") == "acme"
    assert answer("olga (ops)", "eng-no-exec") == "NotFound"  # not "disabled": not hers to know
    assert answer("alice (admin)", "OPEN") == "NotFound"  # names match exactly, as the ORM's do
    assert answer("alice (admin)", "open' OR '1'='1") == "NotFound"
