"""Names are keys, and unique in their scope regardless of case: a database constraint
(Lower(name) per org, per connection for runbooks) and a clear Conflict from every service. The
migrations that add the constraints refuse, with the clashing names, a database that has such pairs."""

from __future__ import annotations

import importlib

import pytest
from django.db import IntegrityError, transaction

from gateway.models import Runbook, RunbookRule
from gateway.runbooks import runbook_create, runbook_rule_create
from governance.errors import Conflict
from governance.models import UserGroup
from governance.services import usergroup_create, usergroup_rename
from reviews.models import AccessRequestRule
from reviews.services import access_rule_create
from sessions.models import WebhookEndpoint
from sessions.webhooks import webhook_endpoint_create, webhook_endpoint_update

CASE = "names are unique regardless of case"


def test_every_service_refuses_a_name_taken_in_another_case(cast, shops):
    alice = cast.alice.actor()
    with pytest.raises(Conflict, match=CASE):
        usergroup_create(actor=alice, name="Engineering")
    usergroup_create(actor=alice, name="ops")
    with pytest.raises(Conflict, match=CASE):
        usergroup_rename(actor=alice, name="ops", new_name="ENGINEERING")
    assert usergroup_rename(actor=alice, name="ops", new_name="OPS").name == "OPS"  # its own name, recased

    webhook_endpoint_create(actor=alice, name="siem", url="https://siem.example.test/", secret="s" * 20)
    webhook_endpoint_create(actor=alice, name="pager", url="https://pager.example.test/", secret="s" * 20)
    with pytest.raises(Conflict, match=CASE):
        webhook_endpoint_create(actor=alice, name="SIEM", url="https://x.example.test/", secret="s" * 20)
    with pytest.raises(Conflict, match=CASE):
        webhook_endpoint_update(actor=alice, endpoint_id="pager", name="Siem")

    rule = {"access_type": "command", "connections": ["shop"], "reviewer_groups": ["engineering"]}
    access_rule_create(actor=alice, name="shop-writes", **rule)
    with pytest.raises(Conflict, match=CASE):
        access_rule_create(actor=alice, name="SHOP-WRITES", **{**rule, "enabled": False})

    runbook_create(
        actor=alice, connection_name="shop", name="count", template="select count(*) from customers"
    )
    with pytest.raises(Conflict, match=CASE):
        runbook_create(actor=alice, connection_name="shop", name="Count", template="select 1")
    runbook_rule_create(
        actor=alice, name="eng", groups=["engineering"], runbooks=["count"], connections=["shop"]
    )
    with pytest.raises(Conflict, match=CASE):
        runbook_rule_create(
            actor=alice, name="ENG", groups=["engineering"], runbooks=["*"], connections=["shop"]
        )
    # Another org has its own names.
    usergroup_create(actor=cast.eve.actor(), name="OPS")


def test_the_database_refuses_them_too(cast, shops):
    org, other = cast.acme, cast.globex
    shop = shops["acme"]
    rows = [
        (UserGroup, {"org": org}),
        (AccessRequestRule, {"org": org, "access_type": "command"}),
        (RunbookRule, {"org": org}),
        (Runbook, {"org": org, "connection": shop, "template": "select 1"}),
        (WebhookEndpoint, {"org": org, "url": "https://x.example.test/"}),
    ]
    for model, fields in rows:
        model.objects.create(name="Night-Shift", **fields)
        with pytest.raises(IntegrityError), transaction.atomic():
            model.objects.create(name="night-shift", **fields)
    UserGroup.objects.create(org=other, name="night-shift")  # per org


class _Rows:
    def __init__(self, rows):
        self.rows = rows

    def values_list(self, *fields):
        return self

    def order_by(self, *fields):
        return self.rows


class _Apps:
    def __init__(self, rows):
        self.rows = rows

    def get_model(self, app, name):
        return type(name, (), {"objects": _Rows(self.rows)})


@pytest.mark.parametrize(
    "module",
    [
        "gateway.migrations.0011_names_unique_regardless_of_case",
        "governance.migrations.0010_names_unique_regardless_of_case",
        "reviews.migrations.0004_names_unique_regardless_of_case",
        "sessions.migrations.0010_names_unique_regardless_of_case",
    ],
)
def test_the_migrations_fail_clearly_on_case_duplicates(module):
    check = importlib.import_module(module).refuse_case_duplicates
    check(_Apps([(1, "org-1", "ops"), (2, "org-2", "OPS")]), None)  # different owners: fine
    with pytest.raises(RuntimeError, match="rename one of each pair.*'ops' and 'OPS'"):
        check(_Apps([(1, "org-1", "ops"), (2, "org-1", "OPS")]), None)
