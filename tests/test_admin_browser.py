"""The Django admin in a real browser (headless Chromium driven by Playwright): an admin creates a
connection with a secret and a guardrail bound to it; the secret never appears in any page source
afterwards, and the guardrail then blocks over MCP."""

from __future__ import annotations

import json

import pytest

from gateway.models import Connection
from governance.models import GuardrailRule
from sessions.models import AuditEvent
from tests.conftest import structured
from tests.test_web_browser import PASSWORD, chromium, in_browser, shot, with_password  # noqa: F401

pytestmark = pytest.mark.live

SECRET = "Adm1n-Br0wser-S3cret-9f2c"


def test_an_admin_creates_a_connection_with_a_secret_and_a_guardrail(
    cast,
    pg_target,
    gateway_server,
    mcp,
    chromium,  # noqa: F811
):
    with_password(cast.alice)
    url = gateway_server.url
    config = {k: v for k, v in pg_target.items() if k != "password"}

    def work(page):
        page.goto(f"{url}/admin/login/?next=/admin/")
        page.fill("input[name=username]", "alice@acme.test")
        page.fill("input[name=password]", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_selector("#site-name")

        page.goto(f"{url}/admin/gateway/connection/add/")
        page.fill("#id_name", "prod-pg")
        page.select_option("#id_kind", "postgres")
        page.fill("#id_config", json.dumps(config))
        page.fill("#id_secret_password", SECRET)
        page.click("input[name=_save]")
        page.wait_for_url("**/admin/gateway/connection/")

        page.goto(f"{url}/admin/governance/guardrailrule/add/")
        page.fill("#id_name", "no-drop")
        page.fill("#id_message", "Dropping tables goes through a migration.")
        page.fill("#id_input_conditions", json.dumps({"sql": {"deny_statements": ["drop"]}}))
        page.select_option("#id_connections_from", label="prod-pg")
        page.click("#id_connections_add")
        page.click("input[name=_save]")
        page.wait_for_url("**/admin/governance/guardrailrule/")

        page.goto(f"{url}/admin/gateway/connection/")
        page.click("#result_list a:text-is('prod-pg')")
        page.wait_for_selector("input[name=_save]")
        shot(page, "admin-connection")
        sources = [page.content()]
        for path in (
            "/admin/gateway/connection/",
            "/admin/governance/guardrailrule/",
            "/admin/records/auditevent/",
        ):
            page.goto(f"{url}{path}")
            sources.append(page.content())
        return sources

    sources = in_browser(work)
    assert all(SECRET not in html for html in sources)
    assert "password" in sources[0]  # the page says which secret is set, never its value
    connection = Connection.objects.get(org=cast.acme, name="prod-pg")
    assert connection.get_secrets()["password"] == SECRET
    rule = GuardrailRule.objects.get(org=cast.acme, name="no-drop")
    assert [c.name for c in rule.connections.all()] == ["prod-pg"]
    assert AuditEvent.objects.filter(action="connection.create", surface="admin").count() == 1
    assert SECRET not in json.dumps(list(AuditEvent.objects.values_list("detail", flat=True)))
    blocked = structured(
        mcp(cast.bob).call("exec", {"connection_name": "prod-pg", "input": "drop table items"})
    )
    assert blocked["status"] == "blocked" and blocked["rule"] == "no-drop"
    ran = structured(
        mcp(cast.bob).call("exec", {"connection_name": "prod-pg", "input": "select count(*) from items"})
    )
    assert ran["status"] == "completed" and ran["rows"] == [[50]]
