"""Every rule kind through the one generic service (governance.crud): list, get, create, update and
delete, who may do each, the audit event of each change and the rules version it bumps."""

import pytest

from gateway import runbooks  # noqa: F401  (declares the runbook rule kind)
from governance import rules  # noqa: F401  (guardrail rules, masking rules, attributes)
from governance.crud import RULE_KINDS
from governance.errors import Conflict, NotFound, PolicyDenied
from governance.models import Organization
from governance.policy import ROLE_ADMIN, ROLE_AUDITOR
from reviews import services as reviews  # noqa: F401  (access request rules)
from sessions import webhooks  # noqa: F401  (webhook endpoints)
from sessions.models import AuditEvent

# What each kind needs to be created, one change to it, and the field that change shows up as in
# the audit detail. A new kind fails `test_every_kind_is_tried` until it has its line here.
SAMPLES = {
    "guardrail": (
        {"input": {"deny_words": ["zebra"]}, "connections": ["shop"]},
        {"message": "no"},
        "message",
    ),
    "masking_rule": (
        {"spec": {"entities": ["EMAIL_ADDRESS"]}, "connections": ["shop"]},
        {"enabled": False},
        "enabled",
    ),
    "attribute": ({"connections": ["shop"]}, {"description": "cards"}, "description"),
    "access_request_rule": (
        {"access_type": "command", "connections": ["shop"], "reviewer_groups": ["engineering"]},
        {"description": "writes"},
        "description",
    ),
    "runbook_rule": (
        {"groups": ["engineering"], "runbooks": ["*"], "connections": ["shop"]},
        {"runbooks": ["count"]},
        "runbooks",
    ),
    "webhook": (
        {"url": "https://hooks.example.test/a", "secret": "s" * 20},
        {"url": "https://hooks.example.test/b"},
        "url",
    ),
}


def test_every_kind_is_tried():
    assert set(RULE_KINDS) == set(SAMPLES)


def _events(org, kind) -> list[tuple[str, str, str]]:
    rows = AuditEvent.objects.filter(org=org, action__startswith=f"{kind}.").order_by("id")
    return [(e.action, e.outcome, e.actor_email) for e in rows]


def _version(org) -> int:
    return Organization.objects.get(pk=org.pk).rules_version


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_it_lists_gets_creates_updates_and_deletes_every_kind(cast, shops, name):
    kind, (fields, change, changed) = RULE_KINDS[name], SAMPLES[name]
    alice, acme = cast.alice.actor(), cast.acme
    version = _version(acme)

    record = kind.create(actor=alice, name="first", **fields)
    bump = 1 if kind.bumps_rules_version else 0
    assert _version(acme) == version + bump
    assert _events(acme, name) == [(f"{name}.create", "success", "alice@acme.test")]
    items, total = kind.list(actor=alice, limit=10, offset=0)
    assert total == 1 and [r.pk for r in items] == [record.pk]
    for ref in ("first", str(record.pk)):
        assert kind.to_dict(kind.get(actor=alice, ref=ref))["name"] == "first"
    with pytest.raises(Conflict, match="regardless of case"):
        kind.create(actor=alice, name="FIRST", **fields)

    kind.update(actor=alice, ref="first", **change)
    event = AuditEvent.objects.filter(org=acme, action=f"{name}.update").get()
    assert changed in event.detail["changed"] and event.detail["before"] != event.detail["after"]
    assert _version(acme) == version + 2 * bump

    assert kind.delete(actor=alice, ref=str(record.pk)) == "first"
    assert _events(acme, name)[-1] == (f"{name}.delete", "success", "alice@acme.test")
    assert _version(acme) == version + 3 * bump
    with pytest.raises(NotFound, match="not found"):
        kind.get(actor=alice, ref="first")
    assert kind.list(actor=alice)[1] == 0


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_the_policy_decides_who_reads_and_changes_every_kind(cast, shops, name):
    kind, (fields, change, _) = RULE_KINDS[name], SAMPLES[name]
    kind.create(actor=cast.alice.actor(), name="first", **fields)
    before = _events(cast.acme, name)

    # A standard member reads and changes nothing.
    dave = cast.dave.actor()
    for call in (
        lambda: kind.list(actor=dave),
        lambda: kind.get(actor=dave, ref="first"),
        lambda: kind.create(actor=dave, name="second", **fields),
        lambda: kind.update(actor=dave, ref="first", **change),
        lambda: kind.delete(actor=dave, ref="first"),
    ):
        with pytest.raises(PolicyDenied):
            call()

    # An auditor reads the kinds auditors read, and changes nothing.
    carol = cast.carol.actor()
    assert kind.read_role in (ROLE_AUDITOR, ROLE_ADMIN)
    if kind.read_role == ROLE_AUDITOR:
        assert kind.list(actor=carol)[1] == 1
        assert kind.get(actor=carol, ref="first").name == "first"
    else:
        with pytest.raises(PolicyDenied):
            kind.list(actor=carol)
        with pytest.raises(PolicyDenied):
            kind.get(actor=carol, ref="first")
    for call in (
        lambda: kind.create(actor=carol, name="second", **fields),
        lambda: kind.update(actor=carol, ref="first", **change),
        lambda: kind.delete(actor=carol, ref="first"),
    ):
        with pytest.raises(PolicyDenied, match="admin access required"):
            call()

    # The admin of another org sees nothing of this one: not found, as if missing.
    eve = cast.eve.actor()
    assert kind.list(actor=eve)[1] == 0
    for call in (
        lambda: kind.get(actor=eve, ref="first"),
        lambda: kind.update(actor=eve, ref="first", **change),
        lambda: kind.delete(actor=eve, ref="first"),
    ):
        with pytest.raises(NotFound):
            call()

    # Nothing was changed, nothing was audited as a change.
    assert _events(cast.acme, name) == before
    assert kind.list(actor=cast.alice.actor())[1] == 1
