"""The Django admin in a real browser (headless Chromium driven by Playwright), through the
structured editors only (no JSON typed anywhere): an admin creates a connection of every kind and
tests each in the page, writes a guardrail and a masking rule, tests and previews them in the page,
and then the rules take effect over MCP. No secret ever appears in a page source."""

from __future__ import annotations

import json

import pytest

from gateway.models import Connection
from governance.models import GuardrailRule, MaskingRule
from sessions.models import AuditEvent
from tests.conftest import make_shop_sqlite, structured
from tests.screens import PHONE, doc_shot
from tests.test_upstream_mcp import BEARER, upstream_server
from tests.test_web_browser import PASSWORD, chromium, in_browser, with_password  # noqa: F401

pytestmark = pytest.mark.live

SECRET = "Adm1n-Br0wser-S3cret-9f2c"


def admin_login(page, url):
    page.goto(f"{url}/admin/login/?next=/admin/")
    page.fill("input[name=username]", "alice@acme.test")
    page.fill("input[name=password]", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")


def add_connection(page, url, name, kind, fields: dict, *, secrets: dict | None = None, ticks=()):
    """Fill the add form for `kind` with its own fields, save and continue, and return the page."""
    page.goto(f"{url}/admin/gateway/connection/add/")
    page.fill("#id_name", name)
    page.select_option("#id_kind", kind)
    for key, value in fields.items():
        page.fill(f"#id_config__{kind}__{key}", value)
    for key in ticks:
        page.check(f"#id_config__{kind}__{key}")
    for key, value in (secrets or {}).items():
        page.fill(f"#id_secret_{key}", value)
    page.click("input[name=_continue]")
    page.wait_for_selector("#pc-conn-button")


def run_connection_test(page) -> str:
    page.click("#pc-conn-button")
    page.wait_for_function("document.getElementById('pc-conn-result').textContent.length > 2")
    return page.inner_text("#pc-conn-result")


def test_an_admin_builds_connections_and_rules_with_the_editors_only(
    cast,
    pg_target,
    mysql_target,
    gateway_server,
    mcp,
    tmp_path,
    chromium,  # noqa: F811
):
    with_password(cast.alice)
    url = gateway_server.url
    shop_file = make_shop_sqlite(tmp_path / "shop.sqlite3", "acme")

    def work(page):
        admin_login(page, url)
        results = {}

        # The form shows only the chosen kind's settings and secrets.
        page.goto(f"{url}/admin/gateway/connection/add/")
        page.select_option("#id_kind", "")
        assert page.is_visible("#pc-nokind") and not page.is_visible("#id_config__postgres__host")
        page.select_option("#id_kind", "sqlite")
        assert not page.is_visible("#pc-nokind")
        assert page.is_visible("#id_config__sqlite__path") and not page.is_visible(
            "#id_config__postgres__host"
        )
        assert not page.is_visible("#id_secret_password") and not page.is_visible("#id_secret_env")
        page.select_option("#id_kind", "postgres")
        assert page.is_visible("#id_secret_password") and not page.is_visible("#id_secret_headers")
        assert "agent.ORG_ID.NAME" in page.inner_text(".field-agent_queue")
        doc_shot(page, "admin-connection-add")

        pg = {k: str(v) for k, v in pg_target.items() if k != "password"}
        add_connection(page, url, "prod-pg", "postgres", pg, secrets={"password": SECRET})
        results["postgres"] = run_connection_test(page)
        doc_shot(page, "admin-connection-test")
        sources = [page.content()]

        add_connection(page, url, "analytics", "mysql", {k: str(v) for k, v in mysql_target.items()})
        results["mysql"] = run_connection_test(page)
        add_connection(page, url, "shop", "sqlite", {"path": str(shop_file)})
        results["sqlite"] = run_connection_test(page)
        add_connection(page, url, "shell", "command", {"argv": "cat"})
        results["command"] = run_connection_test(page)
        with upstream_server() as upstream:
            add_connection(
                page,
                url,
                "tools",
                "mcp",
                {"url": upstream},
                secrets={"bearer_token": BEARER},
                ticks=("allow_private_network",),
            )
            results["mcp"] = run_connection_test(page)
        sources.append(page.content())

        # A guardrail: tick "drop", bind it to prod-pg, test it in the page before saving.
        page.goto(f"{url}/admin/governance/guardrailrule/add/")
        page.fill("#id_name", "no-drop")
        page.fill("#id_message", "Dropping tables goes through a migration.")
        page.check("input[name=input_conditions__deny_statements][value=drop]")
        page.check("#id_input_conditions_require_where")
        page.select_option("#id_connections_from", label="prod-pg")
        page.click("#id_connections_add")
        page.fill("#pc-sample", "DROP TABLE items")
        page.click("#pc-test-button")
        page.wait_for_selector("#pc-test-result.bad")
        results["guard_blocked"] = page.inner_text("#pc-test-result")
        doc_shot(page, "admin-guardrail-editor")
        page.locator("#pc-test-panel").scroll_into_view_if_needed()
        doc_shot(page, "admin-guardrail-test", full_page=False)
        page.fill("#pc-sample", "select count(*) from items")
        page.click("#pc-test-button")
        page.wait_for_selector("#pc-test-result.ok")
        results["guard_passes"] = page.inner_text("#pc-test-result")
        page.click("input[name=_save]")
        page.wait_for_url("**/admin/governance/guardrailrule/")

        # A masking rule: pick e-mail addresses, preview on text and on a query, bind to shop.
        page.goto(f"{url}/admin/governance/maskingrule/add/")
        page.fill("#id_name", "mask-emails")
        page.check("input[name=spec__entities][value=EMAIL_ADDRESS]")
        page.check("input[name=spec__method][value=pseudonym]")
        page.fill("#id_spec_columns", "(?i)^email$")  # the sample data's .test domains are no real e-mail
        page.click("#pc-preview-button")
        page.wait_for_selector("#pc-preview-text-out")
        results["mask_text"] = page.inner_text("#pc-preview-text-out")
        page.select_option("#pc-preview-connection", "shop")
        page.fill("#pc-preview-query", "select name, email from customers")
        page.click("#pc-preview-button")
        page.wait_for_selector("#pc-preview-rows")
        results["mask_rows"] = page.inner_text("#pc-preview-rows")
        doc_shot(page, "admin-masking-editor")
        page.locator("#pc-preview-panel").scroll_into_view_if_needed()
        doc_shot(page, "admin-masking-preview", full_page=False)
        page.select_option("#id_connections_from", label="shop")
        page.click("#id_connections_add")
        page.click("input[name=_save]")
        page.wait_for_url("**/admin/governance/maskingrule/")

        for path in (
            "/admin/gateway/connection/",
            "/admin/governance/guardrailrule/",
            "/admin/records/auditevent/",
        ):
            page.goto(f"{url}{path}")
            sources.append(page.content())
        results["sources"] = sources
        return results

    results = in_browser(work)
    for kind in ("postgres", "mysql", "sqlite", "command", "mcp"):
        assert results[kind].startswith("Connected."), (kind, results[kind])
    assert (
        "Blocked by this rule" in results["guard_blocked"]
        and "sql.deny_statements" in results["guard_blocked"]
    )
    assert "Passes" in results["guard_passes"]
    assert "@example.com" not in results["mask_text"] and "<EMAIL_ADDRESS:" in results["mask_text"]
    assert "acme.test" not in results["mask_rows"] and "<COLUMN:" in results["mask_rows"]
    assert "acme one" in results["mask_rows"]  # names are not e-mail addresses: left alone

    assert all(SECRET not in html and BEARER not in html for html in results["sources"])
    assert "password" in results["sources"][0]  # the page says which secret is set, never its value
    assert {c.kind for c in Connection.objects.filter(org=cast.acme)} == {
        "postgres",
        "mysql",
        "sqlite",
        "command",
        "mcp",
    }
    assert Connection.objects.get(name="prod-pg").get_secrets()["password"] == SECRET
    assert Connection.objects.get(name="tools").config["allow_private_network"] is True
    rule = GuardrailRule.objects.get(org=cast.acme, name="no-drop")
    assert rule.input_conditions["sql"]["deny_statements"] == ["drop"]
    assert [c.name for c in rule.connections.all()] == ["prod-pg"]
    assert MaskingRule.objects.get(name="mask-emails").spec["method"] == "pseudonym"
    assert AuditEvent.objects.filter(action="connection.create", surface="admin").count() == 5
    assert AuditEvent.objects.filter(action="connection.test", surface="admin").count() == 5
    assert SECRET not in json.dumps(list(AuditEvent.objects.values_list("detail", flat=True)))

    # The rules take effect over MCP.
    blocked = structured(
        mcp(cast.bob).call("exec", {"connection_name": "prod-pg", "input": "drop table items"})
    )
    assert blocked["status"] == "blocked" and blocked["rule"] == "no-drop"
    ran = structured(
        mcp(cast.bob).call("exec", {"connection_name": "prod-pg", "input": "select count(*) from items"})
    )
    assert ran["status"] == "completed" and ran["rows"] == [[50]]
    masked = structured(
        mcp(cast.bob).call("exec", {"connection_name": "shop", "input": "select email from customers"})
    )
    assert masked["status"] == "completed" and masked["masking"] == {"COLUMN": 3}
    assert all(row[0].startswith("<COLUMN:") for row in masked["rows"])

    # The same pages at phone width.
    guard, mask = GuardrailRule.objects.get(name="no-drop"), MaskingRule.objects.get(name="mask-emails")
    prod = Connection.objects.get(name="prod-pg")

    def phone(page):
        admin_login(page, url)
        page.goto(f"{url}/admin/governance/guardrailrule/{guard.pk}/change/")
        doc_shot(page, "admin-guardrail-phone")
        page.goto(f"{url}/admin/governance/maskingrule/{mask.pk}/change/")
        doc_shot(page, "admin-masking-phone")
        page.goto(f"{url}/admin/gateway/connection/{prod.pk}/change/")
        doc_shot(page, "admin-connection-phone")

    in_browser(phone, width=PHONE["width"], height=PHONE["height"])
