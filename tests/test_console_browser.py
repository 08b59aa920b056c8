"""The web console in a real browser (headless Chromium, Playwright) against the live gateway: a
member runs a query (masked cells marked), is blocked by a guardrail, is sent to review; the
reviewer sees the count in the top bar and the statement in the inbox and approves; the requester
clicks "Run it" and sees the result. The dashboard's per-user labels are measured in the browser."""

from __future__ import annotations

import sqlite3

import pytest

from gateway import pipeline
from gateway.services import connection_create_headless
from governance import rules
from governance.services import user_create
from reviews import services as review_services
from reviews.models import Review
from sessions.models import Session
from tests.screens import PHONE, doc_shot
from tests.test_web_browser import PASSWORD, chromium, in_browser, log_in, with_password  # noqa: F401

pytestmark = pytest.mark.live

LONG_NAME = "margaret.hamilton-apollo@acme.test"


@pytest.fixture
def setup(cast, shops, transactional_db):
    frank = user_create(org=cast.acme, email="frank@acme.test", name="Frank", groups=["dba"])
    admin = cast.alice.actor()
    # "orders" is the same database as "shop", but everything run there waits for a DBA's review.
    connection_create_headless(
        org=cast.acme,
        name="orders",
        kind="sqlite",
        settings={"path": shops["acme"].config["path"]},
        options={},
    )
    review_services.access_rule_create(
        actor=admin,
        name="orders-needs-a-dba",
        access_type="command",
        connections=["orders"],
        reviewer_groups=["dba"],
    )
    rules.guardrail_create(
        actor=admin,
        name="no-drop",
        message="Dropping tables goes through a migration.",
        input={"sql": {"deny_statements": ["drop"]}},
        connections=["shop"],
    )
    rules.masking_rule_create(
        actor=admin, name="emails", spec={"columns": ["(?i)^email$"]}, connections=["shop"]
    )
    return frank


def test_a_member_runs_is_blocked_is_reviewed_and_runs_the_approved_statement(
    gateway_server,
    chromium,  # noqa: F811
    cast,
    setup,
    shops,
):
    url = gateway_server.url
    bob_email = with_password(cast.bob)
    setup.set_password(PASSWORD)
    setup.save()
    frank_email = setup.email
    update = "update customers set name = 'renamed' where id = 2"

    def requester(page):
        log_in(page, gateway_server, bob_email, path="/console/")
        page.select_option("#connection", "shop")
        page.fill("#input", "select name, email from customers order by id")
        page.click("#run")
        page.wait_for_selector("#result[data-status=completed]")
        out = {"masked": page.locator("td.masked").count(), "table": page.inner_text("#rows")}
        doc_shot(page, "console-result")

        page.fill("#input", "drop table customers")
        page.click("#run")
        page.wait_for_selector("#blocked")
        out["blocked"] = page.inner_text("#blocked")
        doc_shot(page, "console-blocked")

        page.select_option("#connection", "orders")
        page.fill("#input", update)
        page.click("#run")
        page.wait_for_selector("#pending")
        out["pending"] = page.inner_text("#pending")
        doc_shot(page, "console-pending")
        page.click("#review-link")
        page.wait_for_selector("#cannot-decide")
        out["review_url"] = page.url
        out["run_before"] = page.locator("#run").count()
        return out

    first = in_browser(requester)
    assert first["masked"] == 3 and "acme one" in first["table"] and "acme.test" not in first["table"]
    assert "no-drop" in first["blocked"] and "Dropping tables goes through a migration." in first["blocked"]
    assert "Approval required" in first["pending"]
    assert first["run_before"] == 0  # nothing to run before the approval
    review = Review.objects.get(requester=cast.bob.user, input=update)
    assert first["review_url"].endswith(f"/reviews/{review.pk}/")
    assert Session.objects.filter(user=cast.bob.user, surface="web").count() == 3

    def reviewer(page):
        log_in(page, gateway_server, frank_email, path="/reviews/")
        out = {"badge": page.inner_text("#nav-inbox-count"), "preview": page.inner_text(".statement-preview")}
        doc_shot(page, "reviews-inbox")
        page.click(f"tr[data-review='{review.pk}'] a")
        page.click("#approve")
        page.wait_for_selector("#review-status [data-status=APPROVED]")
        out["badge_after"] = page.locator("#nav-inbox-count").count()
        return out

    second = in_browser(reviewer)
    assert second["badge"] == "1" and update in second["preview"]
    assert second["badge_after"] == 0

    def run_it(page):
        log_in(page, gateway_server, bob_email, path=f"/reviews/{review.pk}/")
        doc_shot(page, "review-run-it")
        page.click("#run")
        page.wait_for_selector("#result[data-status=completed]")
        out = {"meta": page.inner_text("#result-meta")}
        page.goto(f"{url}/reviews/{review.pk}/")
        out["ran"] = page.inner_text("#ran")
        out["run_again"] = page.locator("#run").count()
        return out

    third = in_browser(run_it)
    assert "It ran" in third["ran"] and third["run_again"] == 0
    review.refresh_from_db()
    assert review.status == "EXECUTED"
    with sqlite3.connect(shops["acme"].config["path"]) as db:
        assert db.execute("select name from customers where id = 2").fetchone() == ("renamed",)
    assert Session.objects.filter(input=update).count() == 1  # once

    # Phone width: the console, the inbox and an approved review stay usable.
    again = pipeline.exec_start(
        actor=cast.bob.actor(), connection_name="orders", input="delete from customers where id = 3"
    )
    pending = Review.objects.get(session=again)
    review_services.review_decide(actor=_actor(setup), review_id=pending.pk, status="APPROVED")
    other = pipeline.exec_start(
        actor=cast.bob.actor(), connection_name="orders", input="delete from customers where id = 1"
    )
    assert other.status == "pending_review"

    def phone(page):
        log_in(page, gateway_server, bob_email, path="/console/")
        page.select_option("#connection", "shop")
        page.fill("#input", "select name, email from customers order by id")
        page.click("#run")
        page.wait_for_selector("#result[data-status=completed]")
        widths = [page.evaluate("document.documentElement.scrollWidth")]
        doc_shot(page, "console-result-phone")
        page.goto(f"{url}/reviews/{pending.pk}/")
        page.wait_for_selector("#run")
        widths.append(page.evaluate("document.documentElement.scrollWidth"))
        doc_shot(page, "review-run-it-phone")
        return widths

    assert all(w <= PHONE["width"] for w in in_browser(phone, width=PHONE["width"], height=PHONE["height"]))

    def reviewer_phone(page):
        log_in(page, gateway_server, frank_email, path="/reviews/")
        doc_shot(page, "reviews-inbox-phone")
        return page.evaluate("document.documentElement.scrollWidth")

    assert in_browser(reviewer_phone, width=PHONE["width"], height=PHONE["height"]) <= PHONE["width"]


def _actor(user):
    from governance.policy import Actor

    return Actor.for_user(user, surface="web", client="pytest")


def test_the_dashboard_shows_whole_user_names(gateway_server, chromium, cast, shops, transactional_db):  # noqa: F811
    long_user = user_create(org=cast.acme, email=LONG_NAME, groups=[])
    for _ in range(2):
        pipeline.exec_start(actor=_actor(long_user), connection_name="shop", input="select 1")
    email = with_password(cast.alice)

    def dashboard(page):
        log_in(page, gateway_server, email, path="/dashboard/")
        labels = page.evaluate(
            """() => Array.from(document.querySelectorAll('#chart-users svg text[text-anchor=end]')).map(t => {
                 const box = t.getBBox();
                 return {text: t.textContent, x: box.x, title: t.querySelector('title')?.textContent};
               })"""
        )
        doc_shot(page, "dashboard-labels")
        return labels

    labels = in_browser(dashboard)
    mine = [label for label in labels if label["title"] == LONG_NAME]
    assert mine, labels
    assert all(label["x"] >= 0 for label in labels), labels  # nothing clipped on the left
    assert mine[0]["text"].endswith(LONG_NAME)  # the whole name, not "margaret.hamilton-ap…"
