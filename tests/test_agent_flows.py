"""Issue 15, done as an agent would: the official MCP SDK client over real HTTP, and nothing but
what tools/list says. `Agent.call` refuses a tool the caller's listing does not have and an
argument its inputSchema does not name, so the script cannot lean on anything undocumented.

The flows: the first calls up to an approved delete; the quarterly report in three calls; a
50-row import with two bad rows; tagging and rules bound by selector (key=value, and a key alone
for every value of it); an incident guardrail that blocks at once, with the audit events naming
who, from which client, with which conditions, and which rule stopped the attempt.
The database is read only to check the numbers the tools answer.
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta

import pytest

from governance.services import token_issue
from sessions.models import Session
from tests.conftest import error_text, structured

pytestmark = pytest.mark.live


class Agent:
    """A caller that uses only what its tools/list describes."""

    def __init__(self, client):
        self.client = client
        listing = client.run(lambda c: c.list_tools())
        self.tools = {t.name: t for t in listing.tools}
        self.calls = 0

    def _check(self, tool: str, arguments: dict) -> None:
        assert tool in self.tools, f"{tool} is not in this caller's tools/list"
        known = set(self.tools[tool].input_schema.get("properties", {}))
        assert set(arguments) <= known, f"{tool}: {sorted(set(arguments) - known)} not in its inputSchema"

    def call(self, tool: str, arguments: dict | None = None, **kw):
        arguments = arguments or {}
        self._check(tool, arguments)
        self.calls += 1
        return self.client.call(tool, arguments, **kw)

    def ok(self, tool: str, arguments: dict | None = None, **kw) -> dict:
        return structured(self.call(tool, arguments, **kw))


def _in_thread(fn):
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # reported by the caller
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def _rows(path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("select count(*) from customers").fetchone()[0]
    finally:
        conn.close()


@pytest.fixture
def agents(cast, shops, mcp):
    """alice (admin), bob (standard, the agent), dave (reviewer to be), carol (auditor) with a
    default read_write token: her auditor powers must survive it."""
    _, carol_rw = token_issue(user=cast.carol.user, name="carol-agent", capability="read_write")
    return {
        "alice": Agent(mcp(cast.alice)),
        "bob": Agent(mcp(cast.bob)),
        "dave": Agent(mcp(cast.dave)),
        "carol": Agent(mcp(carol_rw)),
        "shop_path": shops["acme"].config["path"],
    }


def test_the_agent_flows_of_issue_15(cast, agents):
    alice, bob, dave, carol = agents["alice"], agents["bob"], agents["dave"], agents["carol"]
    shop_path = agents["shop_path"]
    start = (datetime.now(UTC) - timedelta(days=90)).isoformat()

    # --- 1. the first calls, up to an approved delete --------------------------------------------
    me = bob.ok("me_get")
    assert me["user_email"] == "bob@acme.test" and me["capability"] == "admin"
    assert "shop" in [c["name"] for c in bob.ok("connections_list")["items"]]
    tables = bob.ok("connection_tables", {"connection_name": "shop"})
    assert "customers" in str(tables)
    bob.ok("connection_columns", {"connection_name": "shop", "table": "customers"})
    read = bob.ok("exec", {"connection_name": "shop", "input": "select count(*) from customers"})
    assert read["status"] == "completed" and read["rows"] == [[3]]

    # The admin sets up a review: a reviewers' group and a rule, over MCP.
    alice.ok("usergroups_create", {"name": "dba", "members": ["dave@acme.test"]})
    alice.ok(
        "access_request_rules_create",
        {
            "name": "shop-writes",
            "access_type": "command",
            "connections": ["shop"],
            "reviewer_groups": ["dba"],
        },
    )
    pending = bob.ok("exec", {"connection_name": "shop", "input": "delete from customers where id = 1"})
    assert pending["status"] == "pending_approval" and _rows(shop_path) == 3
    review_id = pending["review_id"]

    # The reviewer is told the truth: this surface cannot decide until the admin allows it.
    assert not dave.ok("reviews_get", {"review_id": review_id})["you_can_decide"]
    assert "turned off" in error_text(
        dave.call("reviews_update", {"review_id": review_id, "status": "APPROVED"})
    )
    settings = alice.ok("reviews_settings_update", {"mcp_decisions_enabled": True})
    assert settings["mcp_decisions_enabled"] is True
    assert carol.ok("reviews_settings_get")["mcp_decisions_enabled"] is True
    inbox = dave.ok("reviews_list", {"waiting_for_me": True})
    assert [r["id"] for r in inbox["items"]] == [review_id]
    assert dave.ok("reviews_get", {"review_id": review_id})["you_can_decide"]

    waiting, box = _in_thread(
        lambda: bob.call("reviews_wait", {"review_id": review_id, "timeout_seconds": 90})
    )
    decided = dave.ok("reviews_update", {"review_id": review_id, "status": "APPROVED"})
    assert decided["status"] == "APPROVED"
    waiting.join()
    assert "error" not in box, box.get("error")
    assert structured(box["value"])["status"] == "APPROVED"
    ran = bob.ok("reviews_execute", {"review_id": review_id})
    assert ran["status"] == "completed" and _rows(shop_path) == 2
    alice.ok("config_delete", {"kind": "access_request_rule", "record_name": "shop-writes"})

    # --- 5. an incident guardrail, seen to block at once --------------------------------------------
    alice.ok(
        "guardrails_create",
        {
            "name": "incident-42",
            "input_conditions": {"deny_words": ["customers"]},
            "message": "incident 42: customers is frozen",
            "connections": ["shop"],
        },
    )
    blocked = bob.ok("exec", {"connection_name": "shop", "input": "select email from customers"})
    assert blocked["status"] == "blocked" and blocked["rule"] == "incident-42"
    audit = carol.ok("audit_events_list", {"action": "guardrail.create", "limit": 5})
    event = next(e for e in audit["items"] if e["target"] == "incident-42")
    assert event["actor_email"] == "alice@acme.test" and event["surface"] == "mcp"
    assert event["client"].startswith("token:pytest; ")  # which client: the token's name, the user agent
    assert event["detail"]["after"]["input_conditions"]["deny_words"] == ["customers"]
    assert event["detail"]["connections"] == ["shop"]
    # The blocked attempt is on record too: who, from which client, stopped by which rule.
    attempt = carol.ok("audit_events_list", {"action": "exec.request", "outcome": "blocked", "limit": 1})
    attempt = attempt["items"][0]
    assert (attempt["actor_email"], attempt["detail"]["blocked_by"]) == ("bob@acme.test", ["incident-42"])
    assert attempt["client"].startswith("token:pytest; ") and attempt["target"] == "exec on shop (blocked)"

    # A change says from what to what.
    alice.ok(
        "config_update",
        {
            "kind": "guardrail",
            "record_name": "incident-42",
            "changes": {"input_conditions": {"deny_words": ["orders"]}},
        },
    )
    update = carol.ok("audit_events_list", {"action": "guardrail.update", "limit": 1})["items"][0]
    assert update["detail"]["before"]["input_conditions"]["deny_words"] == ["customers"]
    assert update["detail"]["after"]["input_conditions"]["deny_words"] == ["orders"]
    assert "input_conditions" in update["detail"]["changed"]

    # --- 2. the quarterly report: three calls, by the auditor's default token --------------------
    before = carol.calls
    stats = carol.ok(
        "sessions_stats",
        {"group_by": ["user", "review_status"], "connection_name": "shop", "start_date": start},
    )
    blocked_list = carol.ok(
        "sessions_list", {"connection_name": "shop", "start_date": start, "status": "blocked", "limit": 100}
    )
    approved_list = carol.ok(
        "sessions_list",
        {"connection_name": "shop", "start_date": start, "review_status": "EXECUTED", "limit": 100},
    )
    assert carol.calls - before == 3

    on_shop = Session.objects.filter(org=cast.acme, connection_name="shop")
    expected = {}
    for email, status in on_shop.values_list("user__email", "review__status"):
        expected[(email, status)] = expected.get((email, status), 0) + 1
    assert {(g["user"], g["review_status"]): g["count"] for g in stats["groups"]} == expected
    assert stats["total"] == on_shop.count()
    assert expected[("bob@acme.test", "EXECUTED")] == 1

    assert blocked_list["total"] == on_shop.filter(status="blocked").count() >= 1
    frozen = [s for s in blocked_list["items"] if "incident-42" in s["guardrails"]]
    assert frozen and frozen[0]["input_preview"] == "select email from customers"
    assert [s["input_preview"] for s in approved_list["items"]] == ["delete from customers where id = 1"]
    assert approved_list["items"][0]["review_status"] == "EXECUTED"
    # The reviewer sees the session's row (they reviewed it) but not a preview of its input: that
    # stays with the owner, admins and auditors (the reviewer reads the input in reviews_get).
    as_reviewer = dave.ok("sessions_list", {"review_status": "EXECUTED"})
    assert as_reviewer["total"] == 1 and as_reviewer["items"][0]["input_preview"] is None
    assert approved_list["items"][0]["user_email"] == "bob@acme.test"

    # Grouped by guardrail rule, and filtered by it.
    by_rule = carol.ok(
        "sessions_stats", {"group_by": ["rule"], "connection_name": "shop", "start_date": start}
    )
    assert {g["rule"]: g["count"] for g in by_rule["groups"]}["incident-42"] == 1
    assert carol.ok("sessions_list", {"rule_name": "incident-42"})["total"] == 1
    assert carol.ok("sessions_list", {"text": "EMAIL FROM"})["total"] == 1

    # --- 3. a 50-row import with two bad rows ------------------------------------------------------
    lines = ["name,kind,path,attributes,description"]
    for i in range(1, 51):
        env = "env=prod" if i <= 10 else "env=stage"
        lines.append(f"imp-{i:02d},sqlite,{shop_path},{env};team=data,imported")
    lines[10] = "imp-10,sqlite,,env=prod,no path"  # row 10: a setting missing
    lines[20] = "SHOP,sqlite,/tmp/x.sqlite3,,taken in another case"  # row 20: the name exists as "shop"
    csv = "\n".join(lines) + "\n"
    dry = alice.ok("connections_import", {"csv": csv, "dry_run": True})
    assert (dry["created"], dry["errors"], dry["dry_run"]) == (48, 2, True)
    assert alice.ok("connections_list", {"search": "imp-"})["total"] == 0  # nothing kept
    done = alice.ok("connections_import", {"csv": csv})
    assert (done["rows"], done["created"], done["errors"]) == (50, 48, 2)
    errors = {r["row"]: r["error"] for r in done["results"] if r["status"] == "error"}
    assert set(errors) == {10, 20}
    assert "path" in errors[10] and "regardless of case" in errors[20]
    assert alice.ok("connections_list", {"search": "imp-", "limit": 100})["total"] == 48

    # --- 4. tagging, and a rule bound by selector -----------------------------------------------
    prod = alice.ok("connections_list", {"selector": "env=prod", "limit": 100})
    assert prod["total"] == 9 and all("env=prod" in c["attributes"] for c in prod["items"])
    assert alice.ok("connections_list", {"selector": "env,team=data", "limit": 100})["total"] == 48
    alice.ok(
        "guardrails_create",
        {"name": "prod-no-zebra", "input_conditions": {"deny_words": ["zebra"]}, "attributes": ["env=prod"]},
    )
    on_prod = bob.ok("exec", {"connection_name": "imp-01", "input": "select 'zebra'"})
    on_stage = bob.ok("exec", {"connection_name": "imp-15", "input": "select 'zebra'"})
    assert (on_prod["status"], on_stage["status"]) == ("blocked", "completed")
    alice.ok(
        "config_update",
        {"kind": "attribute", "record_name": "env=prod", "changes": {"add_connections": ["imp-15"]}},
    )
    assert bob.ok("exec", {"connection_name": "imp-15", "input": "select 'zebra'"})["status"] == "blocked"
    # A key alone binds every value of it, as the selector `team` does: team=data now, any later one.
    alice.ok("attributes_create", {"name": "team"})
    alice.ok(
        "guardrails_create",
        {"name": "teams-no-tiger", "input_conditions": {"deny_words": ["tiger"]}, "attributes": ["team"]},
    )
    assert bob.ok("exec", {"connection_name": "imp-30", "input": "select 'tiger'"})["status"] == "blocked"
    assert bob.ok("exec", {"connection_name": "shop", "input": "select 'tiger'"})["status"] == "completed"
    alice.ok("attributes_create", {"name": "team=ops", "connections": ["shop"]})
    assert bob.ok("exec", {"connection_name": "shop", "input": "select 'tiger'"})["status"] == "blocked"

    # Names are unique regardless of case, over MCP too.
    assert "regardless of case" in error_text(
        alice.call(
            "connections_create", {"name": "IMP-01", "kind": "sqlite", "settings": {"path": shop_path}}
        )
    )
