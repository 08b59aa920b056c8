"""The whole agent flow of a review over real HTTP: the official MCP SDK client against the live
daphne gateway, a reviewer in headless Chromium, and decisions made in another process.

exec -> pending_approval -> the reviewer approves in the browser -> reviews_wait returns APPROVED
-> reviews_execute returns the completed result -> a second reviews_execute is refused.
"""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from governance.policy import Actor
from governance.services import user_create
from reviews import services
from reviews.models import Review
from tests.conftest import error_text, structured
from tests.test_web_browser import PASSWORD, chromium, in_browser, shot  # noqa: F401 (chromium: a fixture)

pytestmark = pytest.mark.live


@pytest.fixture
def reviewed_shop(cast, shops):
    frank = user_create(org=cast.acme, email="frank@acme.test", groups=["dba"], password=PASSWORD)
    services.access_rule_create(
        actor=cast.alice.actor(),
        name="shop-writes",
        access_type="jit_command",
        connections=["shop"],
        reviewer_groups=["dba"],
    )
    return {"frank": frank, "path": shops["acme"].config["path"]}


def _count(path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("select count(*) from customers").fetchone()[0]
    finally:
        conn.close()


def _in_thread(fn):
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def test_agent_waits_reviewer_approves_in_the_browser_agent_executes_once(
    cast,
    reviewed_shop,
    mcp,
    gateway_server,
    chromium,  # noqa: F811
):
    bob = mcp(cast.bob)
    envelope = structured(
        bob.call("exec", {"connection_name": "shop", "input": "delete from customers where id = 1"})
    )
    assert envelope["status"] == "pending_approval"
    review_id = envelope["review_id"]
    assert (
        envelope["review_url"].endswith(f"/reviews/{review_id}/") and "reviews_wait" in envelope["next_step"]
    )
    assert _count(reviewed_shop["path"]) == 3  # nothing ran

    # The requester cannot approve over MCP (off by default), nor could the reviewer.
    frank_token = _token(reviewed_shop["frank"])
    assert "turned off" in error_text(
        mcp(frank_token).call("reviews_update", {"id": review_id, "status": "APPROVED"})
    )
    # The reviewer sees the exact statement over MCP (hoop's reviewers cannot), and is told the truth:
    # this surface cannot decide (decisions over MCP are off), so you_can_decide is false here.
    seen = structured(mcp(frank_token).call("reviews_get", {"review_id": review_id}))
    assert seen["input"] == "delete from customers where id = 1" and not seen["you_can_decide"]

    # The agent long-polls while the reviewer decides in a browser.
    waiting, box = _in_thread(
        lambda: bob.call("reviews_wait", {"id": review_id, "timeout_seconds": 90}, timeout=120)
    )
    time.sleep(1.0)

    def approve(page):
        page.goto(f"{gateway_server.url}/login/?next=/reviews/")
        page.fill("input[name=username]", "frank@acme.test")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url("**/reviews/**")
        assert page.inner_text("#inbox-count") == "1"
        page.click(f"tr[data-review='{review_id}'] a")
        page.wait_for_selector("#statement")
        assert "delete from customers where id = 1" in page.inner_text("#statement").lower()
        assert "bob@acme.test" in page.inner_text("#requester")
        shot(page, "review-page")
        page.fill("#reason", "one row, checked with the ticket")
        page.click("#approve")
        page.wait_for_selector("#decisions li")
        shot(page, "review-approved")
        return page.inner_text("#review-status")

    assert "approved" in in_browser(approve).lower()
    waiting.join(timeout=60)
    assert "error" not in box, box.get("error")
    decided = structured(box["value"])
    assert decided["status"] == "APPROVED" and decided["timed_out"] is False
    assert decided["waited_seconds"] < 85  # it was woken by the decision, not by its timeout

    ran = structured(bob.call("reviews_execute", {"id": review_id}))
    assert ran["status"] == "completed" and ran["session_id"] == envelope["session_id"]
    assert _count(reviewed_shop["path"]) == 2
    again = error_text(bob.call("reviews_execute", {"id": review_id}))
    assert again == "review not approved or already executed"
    assert _count(reviewed_shop["path"]) == 2
    assert Review.objects.get(pk=review_id).status == "EXECUTED"


def _token(user) -> str:
    from governance.services import token_issue

    return token_issue(user=user, name="pytest", capability="admin")[1]


def test_reviews_wait_wakes_on_a_decision_made_in_another_process(cast, reviewed_shop, mcp):
    bob = mcp(cast.bob)
    envelope = structured(
        bob.call("exec", {"connection_name": "shop", "input": "update customers set name = 'x'"})
    )
    review_id = envelope["review_id"]
    progress = []

    async def on_progress(value, total, message):
        progress.append((value, message))

    waiting, box = _in_thread(
        lambda: bob.call(
            "reviews_wait", {"id": review_id, "timeout_seconds": 60}, progress=on_progress, timeout=90
        )
    )
    time.sleep(2.5)  # long enough for a progress notification (every second on the test server)
    frank = Actor.for_user(reviewed_shop["frank"], surface="web")
    decided_at = time.monotonic()
    services.review_decide(actor=frank, review_id=review_id, status="REJECTED", reason="no WHERE clause")
    waiting.join(timeout=60)
    woke_after = time.monotonic() - decided_at
    result = structured(box["value"])
    assert result["status"] == "REJECTED" and result["rejection_reason"] == "no WHERE clause"
    assert not result["timed_out"] and woke_after < 30  # the decision woke it, long before its 60 s
    assert progress and progress[0][1] == "waiting for reviewers"
    # the rejected session never ran and says why
    session = structured(bob.call("sessions_get", {"id": envelope["session_id"]}))
    assert session["status"] == "rejected"  # its own status, distinct from a guardrail block


def test_reviews_wait_times_out_without_an_error(cast, reviewed_shop, mcp):
    bob = mcp(cast.bob)
    review_id = structured(
        bob.call("exec", {"connection_name": "shop", "input": "update customers set name = 'y'"})
    )["review_id"]
    result = structured(bob.call("reviews_wait", {"id": review_id, "timeout_seconds": 1}))
    assert result["timed_out"] is True and result["status"] == "PENDING"
    assert "timeout_seconds" in error_text(
        bob.call("reviews_wait", {"id": review_id, "timeout_seconds": 301})
    )
    assert error_text(mcp(cast.eve).call("reviews_wait", {"id": review_id})) == "review not found"
    assert error_text(bob.call("reviews_get", {"id": "not-a-uuid"})) == "review not found"


def test_jit_over_mcp_and_rule_tools(cast, reviewed_shop, mcp):
    alice, bob = mcp(cast.alice), mcp(cast.bob)
    rules = structured(alice.call("config_list", {"kind": "access_request_rule"}))
    assert [r["name"] for r in rules["items"]] == ["shop-writes"]
    assert "admin access required" in error_text(
        bob.call(
            "access_request_rules_create",
            {"name": "x", "access_type": "jit", "connections": ["shop"], "reviewer_groups": ["dba"]},
        )
    )
    assert "access_request_rules_create" not in bob.tools()
    asked = structured(
        bob.call(
            "access_request", {"connection_name": "shop", "reason": "incident 7", "duration_seconds": 900}
        )
    )
    assert asked["type"] == "jit" and asked["status"] == "PENDING"
    services.review_decide(
        actor=Actor.for_user(reviewed_shop["frank"], surface="web"), review_id=asked["id"], status="APPROVED"
    )
    ran = structured(
        bob.call("exec", {"connection_name": "shop", "input": "delete from customers where id = 3"})
    )
    assert ran["status"] == "completed" and _count(reviewed_shop["path"]) == 2
    listed = structured(bob.call("reviews_list", {"type": "jit"}))
    assert listed["total"] == 1 and listed["items"][0]["access_until"]
    updated = structured(
        alice.call(
            "config_update",
            {"kind": "access_request_rule", "record_name": "shop-writes", "changes": {"min_approvals": 2}},
        )
    )
    assert updated["min_approvals"] == 2
    assert structured(alice.call("config_delete", {"kind": "access_request_rule", "id": "shop-writes"}))[
        "deleted"
    ]


def test_the_review_page_on_a_phone(cast, reviewed_shop, mcp, gateway_server, chromium):  # noqa: F811
    review_id = structured(
        mcp(cast.bob).call(
            "exec", {"connection_name": "shop", "input": "update customers set name = 'p' where id = 1"}
        )
    )["review_id"]

    def look(page):
        page.goto(f"{gateway_server.url}/login/?next=/reviews/{review_id}/")
        page.fill("input[name=username]", "frank@acme.test")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_selector("#statement")
        # nothing wider than the screen: the statement and the buttons stay reachable
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        shot(page, "review-page-phone")
        return overflow, page.is_visible("#approve")

    overflow, approve_visible = in_browser(look, width=390, height=844, is_mobile=True, device_scale_factor=2)
    assert overflow <= 0 and approve_visible
