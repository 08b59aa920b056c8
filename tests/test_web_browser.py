"""The web app in a real browser: headless Chromium (Debian's `/usr/bin/chromium`, driven by
Playwright's Python API) against the live daphne gateway. An agent runs a query over MCP, then a
person logs in, filters the session browser, opens the session, the replay and the dashboard, and
issues a token that then works for MCP. Screenshots go to `test-artifacts/` (git-ignored)."""

from __future__ import annotations

import os
import re
import shutil
import threading
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest

from governance.services import token_authenticate
from sessions.models import Analysis, Session
from tests.conftest import structured

pytestmark = pytest.mark.live

CHROMIUM = os.environ.get("PORTCULLIS_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def chromium():
    if not shutil.which(CHROMIUM):
        if os.environ.get("CI"):
            raise RuntimeError(f"{CHROMIUM} is missing; .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium); CI runs these")
    ARTIFACTS.mkdir(exist_ok=True)
    return CHROMIUM


def in_browser(fn, *, width=1360, height=900, **context_args):
    """Run `fn(page)` in a fresh headless Chromium on a thread of its own and return its result.

    Playwright's sync API keeps an asyncio loop running on the thread that uses it, and Django
    refuses ORM calls (and `asyncio.run` refuses the MCP client) on a thread with a running loop.
    So the browser gets its own thread, and the test's database work stays on the main one."""
    from playwright.sync_api import sync_playwright

    outcome: dict = {}

    def run():
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                try:
                    context = browser.new_context(viewport={"width": width, "height": height}, **context_args)
                    page = context.new_page()
                    page.set_default_timeout(15_000)
                    outcome["value"] = fn(page)
                finally:
                    browser.close()
        except BaseException as exc:  # re-raised on the test's thread, assertion errors included
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="chromium")
    thread.start()
    thread.join(timeout=180)
    assert not thread.is_alive(), "the browser session did not finish in 180 s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def shot(page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    return path


def with_password(person):
    person.user.set_password(PASSWORD)
    person.user.save()
    return person.user.email


def log_in(page, server, email, path="/sessions/", screenshot: str | None = None):
    page.goto(server.url + path)
    assert "/login/" in page.url  # anonymous: sent to the login page first
    if screenshot:
        shot(page, screenshot)
    page.fill("#id_username", email)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(re.escape(path) + "$"))


@pytest.fixture
def activity(cast, shops, mcp):
    """A real query run by bob's agent over MCP, plus two weeks of recorded history for the charts."""
    result = structured(
        mcp(cast.bob).call("exec", {"connection_name": "shop", "input": "select * from customers"})
    )
    assert result["status"] == "completed"
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    people = [cast.bob.user, cast.dave.user, cast.alice.user]
    connections = [("prod-postgres", "postgres"), ("analytics", "mysql"), ("shop", "sqlite")]
    statuses = [
        "done",
        "done",
        "done",
        "blocked",
        "done",
        "failed",
        "done",
        "pending_review",
        "done",
        "cancelled",
    ]
    risks = ["low", "low", "medium", "critical", "low", "high", None, "medium", "low", None]
    verdicts = {
        "low": ("A read by primary key", "Reads one row of orders by its id.", ""),
        "medium": (
            "Reads a whole table",
            "Reads every row of orders; no filter limits it.",
            "Check it is needed.",
        ),
        "high": ("A write that failed", "An UPDATE of orders failed on the server.", "Look at the error."),
        "critical": (
            "Drops a table",
            "DROP TABLE orders removes the table and all of its data; a guardrail blocked it before it ran.",
            "Talk to the person who asked for it; use a migration with a review instead.",
        ),
    }
    finding = {
        "rule": "no-drops-on-prod",
        "direction": "input",
        "condition": "sql.deny_statements",
        "statement": 1,
        "detail": "DROP TABLE orders",
    }
    n = 0
    for day in range(13, -1, -1):
        for i in range(3 + (day * 7) % 5):
            n += 1
            name, kind = connections[(n + day) % 3]
            status, risk = statuses[n % 10], risks[n % 10]
            created = now - timedelta(days=day, hours=i * 2 + 1)
            text = "drop table orders" if status == "blocked" else f"select * from orders where id = {n}"
            session = Session.objects.create(
                org=cast.acme,
                user=people[(n * 5 + day) % 3],
                connection_name=name,
                connection_kind=kind,
                surface="mcp" if n % 4 else "web",
                status=status,
                input=text,
                input_bytes=len(text),
                input_sha256="x",
                created_at=created,
                ended_at=None if status == "pending_review" else created + timedelta(milliseconds=20 + n),
                execution_time_ms=20 + n,
                guardrail_findings=[finding] if status == "blocked" else [],
            )
            if risk:
                title, explanation, action = verdicts[risk]
                Analysis.objects.create(
                    session=session,
                    risk_level=risk,
                    title=title,
                    explanation=explanation,
                    suggested_action=action,
                    analyzer="builtin",
                    created_at=created + timedelta(seconds=2),
                )
    Session.objects.create(
        org=cast.acme,
        user=cast.bob.user,
        connection_name="deploy-box",
        connection_kind="command",
        surface="mcp",
        status="done",
        input="systemctl status nginx",
        output="".join(f"line {i}: nginx worker {i} is running\n" for i in range(40)) + "REPLAY-END\n",
        input_sha256="x",
        exit_code=0,
        execution_time_ms=4000,
        created_at=now - timedelta(minutes=5),
    )
    return result


def test_an_auditor_browses_filters_and_opens_sessions(gateway_server, chromium, cast, activity):
    email, session_id = with_password(cast.carol), activity["session_id"]

    def browse(page):
        log_in(page, gateway_server, email, screenshot="login")
        assert page.locator("#session-table tbody tr").count() == 25  # a full first page
        shot(page, "sessions-list")

        # filter: blocked sessions only
        page.select_option("#id_status", "blocked")
        page.click("#filters button[type=submit]")
        page.wait_for_url(re.compile(r"status=blocked"))
        statuses = page.locator("#session-table [data-status]").all_inner_texts()
        assert statuses and set(statuses) == {"blocked"}
        assert "status=blocked" in page.get_attribute("a:has-text('Download CSV')", "href")
        shot(page, "sessions-filtered")
        page.locator("#session-table tbody tr a").first.click()
        page.wait_for_selector("#analysis")
        assert "critical" in page.locator("#analysis .badge").inner_text()
        shot(page, "session-blocked")

        # the agent's real query, found by its filters, opened
        page.goto(gateway_server.url + "/sessions/?connection=shop&surface=mcp&verb=exec&user=bob@acme.test")
        page.locator(f"tr[data-session='{session_id}'] a").first.click()
        page.wait_for_url(re.compile(session_id))
        assert "select" in page.locator("#input .highlight").inner_text()
        assert page.locator("#input .highlight span").count() > 2  # highlighted tokens
        assert page.locator("#result-rows tbody tr").count() == 3
        assert "acme one" in page.locator("#result-rows").inner_text()
        assert page.locator("#timeline li").count() >= 3
        shot(page, "session-page")

        # bad input answers with a message, not a crash
        response = page.goto(gateway_server.url + "/sessions/?start_date=2026-13-45")
        assert response.status == 400 and "Enter a date" in page.content()
        response = page.goto(gateway_server.url + "/sessions/00000000-0000-4000-8000-000000000000/")
        assert response.status == 404 and "session not found" in page.content()
        shot(page, "not-found")

    in_browser(browse)


def test_the_replay_reveals_the_output_progressively(gateway_server, chromium, cast, activity):
    email = with_password(cast.bob)
    url = f"{gateway_server.url}/sessions/{Session.objects.get(connection_name='deploy-box').pk}/replay/"

    def replay(page):
        log_in(page, gateway_server, email)
        page.goto(url)
        page.wait_for_function("document.getElementById('typed').textContent.length > 5")
        assert "REPLAY-END" not in page.locator("#typed").inner_text()
        page.wait_for_timeout(1500)
        shot(page, "replay-playing")
        page.click("#end")
        text = page.locator("#typed").inner_text()
        assert text.startswith("systemctl status nginx") and text.rstrip().endswith("REPLAY-END")
        shot(page, "replay-done")

    in_browser(replay)


def test_the_dashboard_draws_its_charts(gateway_server, chromium, cast, activity):
    email = with_password(cast.alice)
    since = datetime.combine(datetime.now(UTC).date() - timedelta(days=13), time.min, tzinfo=UTC)
    expected = Session.objects.filter(org=cast.acme, created_at__gte=since).count()  # the default 14 days

    def dashboard(page):
        log_in(page, gateway_server, email, path="/dashboard/")
        for chart in (
            "#chart-per-day",
            "#chart-attention",
            "#chart-risk",
            "#chart-connections",
            "#chart-users",
        ):
            assert page.locator(f"{chart} svg").count() == 1, chart
        assert page.locator("#chart-per-day svg rect").count() > 20
        box = page.locator("#chart-per-day svg").bounding_box()
        assert box["width"] > 600 and box["height"] > 200  # drawn at a readable size
        shot(page, "dashboard")
        return int(page.locator(".kpi .value").first.inner_text())

    assert in_browser(dashboard) == expected


def test_it_works_on_a_phone(gateway_server, chromium, cast, activity):
    email = with_password(cast.carol)

    def phone(page):
        log_in(page, gateway_server, email)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # tables scroll in their card
        assert page.locator("nav.nav a:has-text('Dashboard')").is_visible()
        shot(page, "phone-sessions")
        page.goto(gateway_server.url + "/dashboard/")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        shot(page, "phone-dashboard")

    in_browser(phone, width=390, height=844, device_scale_factor=2, is_mobile=True)


def test_a_token_issued_in_the_browser_works_for_mcp(gateway_server, chromium, cast, mcp):
    email = with_password(cast.dave)

    def issue(page):
        log_in(page, gateway_server, email, path="/connect/")
        assert page.locator("#mcp-url").inner_text().endswith("/api/mcp")
        page.fill("#id_name", "browser-agent")
        page.click("button:has-text('Issue token')")
        raw = page.locator("#new-token").inner_text().strip()
        assert f"Bearer {raw}" in page.locator("#cfg-claude-code").inner_text()
        shot(page, "connect")
        return raw

    raw = in_browser(issue)
    assert raw.startswith("pcu_") and "me_get" in mcp(raw).tools()

    def revoke(page):
        log_in(page, gateway_server, email, path="/connect/")
        assert raw not in page.content()  # shown once
        page.on("dialog", lambda dialog: dialog.accept())
        page.locator("tr:has-text('browser-agent') button:has-text('Revoke')").click()
        page.wait_for_selector("text=is revoked")

    in_browser(revoke)
    assert token_authenticate(raw) is None
