"""Rules bound by selector: an attribute is a tag (`pci`) or key=value (`env=prod`), and a rule
bound to an attribute without a value binds, as the selector `env` does, every connection tagged
`env=<anything>` — values added later included — besides those tagged `env` itself."""

from __future__ import annotations

import pytest

from gateway.models import Connection
from gateway.services import connection_create_headless
from governance import rules
from governance.errors import NotFound
from tests.conftest import make_shop_sqlite


@pytest.fixture
def fleet(cast, tmp_path):
    path = make_shop_sqlite(tmp_path / "fleet.sqlite3", "f")
    for name in ("db-prod", "db-stage", "db-plain", "db-tag"):
        connection_create_headless(
            org=cast.acme, name=name, kind="sqlite", settings={"path": str(path)}, options={}
        )
    admin = cast.alice.actor()
    rules.attribute_create(actor=admin, name="env=prod", connections=["db-prod"])
    rules.attribute_create(actor=admin, name="env=stage", connections=["db-stage"])
    rules.attribute_create(actor=admin, name="env", connections=["db-tag"])
    rules.attribute_create(actor=admin, name="environment=prod", connections=["db-plain"])  # not env
    return admin


def _bound(cast, name: str) -> list[str]:
    connection = Connection.objects.select_related("org").get(org=cast.acme, name=name)
    return [r.name for r in rules.guardrail_rules_bound(connection)]


def test_it_binds_by_key_and_by_key_value(cast, fleet):
    rules.guardrail_create(actor=fleet, name="any-env", input={"deny_words": ["x"]}, attributes=["env"])
    rules.guardrail_create(
        actor=fleet, name="prod-only", input={"deny_words": ["x"]}, attributes=["env=prod"]
    )
    assert _bound(cast, "db-prod") == ["any-env", "prod-only"]
    assert _bound(cast, "db-stage") == ["any-env"]
    assert _bound(cast, "db-tag") == ["any-env"]  # the tag itself
    assert _bound(cast, "db-plain") == []  # environment=prod is not a value of env


def test_a_value_added_later_is_bound_at_once(cast, fleet):
    rules.masking_rule_create(
        actor=fleet, name="mask-env", spec={"entities": ["EMAIL_ADDRESS"]}, attributes=["env"]
    )
    connection = Connection.objects.select_related("org").get(org=cast.acme, name="db-plain")
    assert rules.masking_rules_bound(connection) == []
    rules.attribute_create(actor=fleet, name="ENV=qa", connections=["db-plain"])  # keys match in any case
    connection = Connection.objects.select_related("org").get(org=cast.acme, name="db-plain")
    assert [r.name for r in rules.masking_rules_bound(connection)] == ["mask-env"]


def test_a_key_without_its_attribute_says_how_to_bind_it(cast, fleet):
    with pytest.raises(NotFound, match=r'attribute "tier" not found \(to bind every tier=<value>, create'):
        rules.guardrail_create(actor=fleet, name="t", input={"deny_words": ["x"]}, attributes=["tier"])
