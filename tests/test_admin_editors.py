"""The admin's structured rule editors and their Test / Preview panels, with Django's test client.

The editors only translate fields to the spec JSON; the services validate. So: a structured post
saves exactly what the service normalizes, shows it back in the fields, a bad value comes back with
the service's message, the raw JSON toggle still wins when ticked, and the panels answer with the
same services as the MCP tools (`guardrail_test`, `masking_preview`, `connection_test`).
"""

from __future__ import annotations

import json

import pytest
from django.test import Client

from gateway import admin_editors, pipeline
from gateway.connectors import REGISTRY
from gateway.models import Connection
from gateway.services import connection_create_headless
from governance.models import GuardrailRule, MaskingRule
from sessions.models import AuditEvent
from tests.conftest import make_shop_sqlite

GUARD_ADD = "/admin/governance/guardrailrule/add/"
MASK_ADD = "/admin/governance/maskingrule/add/"
CONN_ADD = "/admin/gateway/connection/add/"


def client_for(person) -> Client:
    client = Client()
    client.force_login(person.user)
    return client


def guardrail_post(**extra) -> dict:
    data = {
        "name": "safe-writes",
        "message": "Writes need a WHERE.",
        "enabled": "on",
        "input_conditions__editor": "structured",
        "output_conditions__editor": "structured",
        "input_conditions": "{}",
        "output_conditions": "{}",
    }
    data.update(extra)
    return data


def test_it_lists_each_kinds_settings_as_the_connectors_declare_them():
    for kind, cls in REGISTRY.items():
        declared = [k for k in (*cls.required_keys, *cls.optional_keys) if k not in cls.secret_keys]
        listed = admin_editors.KIND_SETTINGS[kind]
        assert sorted(k for k, _ in listed) == sorted(declared), kind
        assert {k for k, required in listed if required} == set(cls.required_keys), kind
    assert set(admin_editors.KIND_SETTINGS) == set(pipeline.connection_kinds())


def test_it_saves_a_guardrail_from_the_fields_and_shows_it_back(cast):
    alice = client_for(cast.alice)
    data = guardrail_post(
        input_conditions__deny_statements=["drop", "truncate"],
        input_conditions__require_where="1",
        input_conditions__deny_tables="billing.*\n\n  secrets ",
        input_conditions__deny_words="rm -rf",
        input_conditions__risk_at_least="critical",
        output_conditions__secrets="1",
    )
    response = alice.post(GUARD_ADD, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    rule = GuardrailRule.objects.get(org=cast.acme, name="safe-writes")
    assert rule.input_conditions["sql"]["deny_statements"] == ["drop", "truncate"]
    assert rule.input_conditions["sql"]["require_where"] is True
    assert rule.input_conditions["sql"]["deny_tables"] == ["billing.*", "secrets"]
    assert rule.input_conditions["deny_words"] == ["rm -rf"]
    assert rule.input_conditions["risk_at_least"] == "critical"
    assert rule.output_conditions["secrets"] is True
    assert AuditEvent.objects.filter(action="guardrail.create", surface="admin").count() == 1

    page = alice.get(f"/admin/governance/guardrailrule/{rule.pk}/change/").content.decode()
    assert 'name="input_conditions__deny_statements" value="drop" checked' in page
    assert 'name="input_conditions__deny_statements" value="select">' in page  # not ticked
    assert 'id="id_input_conditions_require_where" checked' in page
    assert '<option value="critical" selected>' in page
    assert "billing.*\nsecrets</textarea>" in page
    assert "Advanced: edit as JSON" in page and "Test this rule" in page


def test_it_answers_a_bad_field_with_the_services_message_and_saves_nothing(cast):
    response = client_for(cast.alice).post(GUARD_ADD, guardrail_post(input_conditions__regex="(unclosed"))
    assert response.status_code == 200
    assert "not a valid" in response.content.decode() or "regex" in response.content.decode()
    assert not GuardrailRule.objects.filter(name="safe-writes").exists()
    empty = client_for(cast.alice).post(GUARD_ADD, guardrail_post())
    assert "a guardrail needs at least one input or output condition" in empty.content.decode()


def test_the_raw_json_toggle_wins_when_ticked(cast):
    data = guardrail_post(
        input_conditions__deny_words="ignored",
        input_conditions__mode="raw",
        input_conditions=json.dumps({"deny_words": ["from-json"]}),
    )
    assert client_for(cast.alice).post(GUARD_ADD, data).status_code == 302
    rule = GuardrailRule.objects.get(name="safe-writes")
    assert rule.input_conditions["deny_words"] == ["from-json"]


def test_the_test_panel_checks_the_unsaved_conditions_with_guardrail_test(cast):
    url = "/admin/governance/guardrailrule/test/"
    form = guardrail_post(input_conditions__require_where="1")
    blocked = client_for(cast.alice).post(
        url, {**form, "sample": "DELETE FROM orders", "dialect": "postgres"}
    )
    assert blocked.status_code == 200
    answer = blocked.json()
    assert answer["blocked"] is True and answer["findings"][0]["condition"] == "sql.require_where"
    passes = client_for(cast.carol).post(  # auditors may test (read-only role), as over MCP
        url, {**form, "sample": "DELETE FROM orders WHERE id = 4", "dialect": "postgres"}
    )
    assert passes.json()["blocked"] is False
    bad = client_for(cast.alice).post(url, {**form, "sample": "x", "direction": "sideways"})
    assert bad.status_code == 400 and bad.json()["error"] == "direction must be input or output"
    assert client_for(cast.alice).get(url).status_code == 405
    member = client_for(cast.bob).post(url, {**form, "sample": "x"})
    assert member.status_code == 302 and "/login/" in member["Location"]  # no admin for members
    assert not GuardrailRule.objects.exists()  # testing saves nothing


def test_it_saves_a_masking_rule_from_the_fields_and_previews_it(cast):
    alice = client_for(cast.alice)
    form = {
        "name": "pii",
        "enabled": "on",
        "spec__editor": "structured",
        "spec": "{}",
        "spec__entities": ["EMAIL_ADDRESS", "CREDIT_CARD"],
        "spec__method": "partial",
        "spec__keep_last": "4",
        "spec__score_threshold": "0.5",
        "spec__columns": "(?i)^ssn$",
        "spec__column_types": "IBAN_CODE (?i)^iban$\nEMPLOYEE_ID (?i)^staff_no$",
        "spec__custom_total": "3",
        "spec__custom-0-name": "EMPLOYEE_ID",
        "spec__custom-0-type": "regex",
        "spec__custom-0-pattern": r"E\d{6}",
        "spec__custom-0-score": "",
        "spec__custom-1-name": "PROJECT",
        "spec__custom-1-type": "deny_list",
        "spec__custom-1-pattern": "apollo\ngemini",
        "spec__custom-1-score": "0.9",
    }
    preview = alice.post(
        "/admin/governance/maskingrule/preview/", {**form, "sample_text": "mail jo@example.com about E123456"}
    )
    assert preview.status_code == 200, preview.content
    masked = preview.json()
    assert "jo@example.com" not in masked["text"] and "E123456" not in masked["text"]
    assert masked["counts"] == {"EMAIL_ADDRESS": 1, "EMPLOYEE_ID": 1}
    assert not MaskingRule.objects.exists()

    assert alice.post(MASK_ADD, form).status_code == 302
    rule = MaskingRule.objects.get(name="pii")
    assert rule.spec["entities"] == ["EMAIL_ADDRESS", "CREDIT_CARD"]
    assert rule.spec["method"] == "partial" and rule.spec["columns"] == ["(?i)^ssn$"]
    assert rule.spec["column_types"] == {"(?i)^iban$": "IBAN_CODE", "(?i)^staff_no$": "EMPLOYEE_ID"}
    assert rule.spec["custom"] == [
        {"name": "EMPLOYEE_ID", "score": 1.0, "regex": r"E\d{6}"},
        {"name": "PROJECT", "score": 0.9, "deny_list": ["apollo", "gemini"]},
    ]
    page = alice.get(f"/admin/governance/maskingrule/{rule.pk}/change/").content.decode()
    assert 'value="EMAIL_ADDRESS" checked' in page and 'value="partial" checked' in page
    assert 'value="PROJECT"' in page and "apollo\ngemini</textarea>" in page
    assert "E-mail addresses" in page  # entities come with a description
    assert "IBAN_CODE (?i)^iban$\nEMPLOYEE_ID (?i)^staff_no$</textarea>" in page

    bad = alice.post(MASK_ADD, {**form, "name": "pii2", "spec__custom-1-score": "0.1"})
    assert "custom[1].score (0.1) is below score_threshold (0.5)" in bad.content.decode()
    nothing = alice.post(
        MASK_ADD, {"name": "none", "enabled": "on", "spec__editor": "structured", "spec": "{}"}
    )
    assert (
        "a masking spec needs at least one of entities, custom, columns or column_types"
        in nothing.content.decode()
    )


def connection_post(**extra) -> dict:
    data = {
        "name": "orders",
        "kind": "postgres",
        "description": "",
        "config__editor": "structured",
        "config": "{}",
        "max_rows": "1000",
        "max_output_bytes": "1048576",
        "timeout_seconds": "60",
        "exec_enabled": "on",
        "schema_enabled": "on",
        "runbooks_enabled": "on",
        "agent_queue": "",
    }
    data.update(extra)
    return data


def test_it_saves_a_connection_from_the_chosen_kinds_fields_only(cast, tmp_path):
    alice = client_for(cast.alice)
    data = connection_post(
        config__postgres__host="orders.acme.test",
        config__postgres__database="orders",
        config__postgres__user="app",
        config__postgres__port="5433",
        config__sqlite__path="/tmp/not-this-kind.sqlite3",  # another kind's field: ignored
        secret_password="pw-9f1",
    )
    assert alice.post(CONN_ADD, data).status_code == 302
    orders = Connection.objects.get(name="orders")
    assert orders.config == {"host": "orders.acme.test", "database": "orders", "user": "app", "port": 5433}
    assert orders.get_secrets() == {"password": "pw-9f1"}

    bad = alice.post(
        CONN_ADD,
        connection_post(
            name="o2",
            config__postgres__host="h",
            config__postgres__database="d",
            config__postgres__user="u",
            config__postgres__port="five",
        ),
    )
    assert "must be an integer between 1 and 65535" in bad.content.decode()
    missing = alice.post(CONN_ADD, connection_post(name="o3", config__postgres__host="h"))
    assert "setting &#x27;database&#x27; is required for a postgres connection" in missing.content.decode()

    page = alice.get(f"/admin/gateway/connection/{orders.pk}/change/").content.decode()
    assert 'data-fixed-kind="postgres"' in page and 'value="orders.acme.test"' in page
    assert "pw-9f1" not in page
    assert "For mysql, postgres connections" in page  # each secret says which kinds have it
    assert "agent.ORG_ID.NAME" in page and "&lt;org id&gt;" not in page and "<org id>" not in page


def test_the_connection_test_button_calls_connection_test(cast, tmp_path):
    shop = connection_create_headless(
        org=cast.acme,
        name="shop",
        kind="sqlite",
        settings={"path": str(make_shop_sqlite(tmp_path / "shop.sqlite3", "acme"))},
        options={},
    )
    missing = connection_create_headless(
        org=cast.acme, name="gone", kind="sqlite", settings={"path": str(tmp_path / "nope.db")}, options={}
    )
    alice = client_for(cast.alice)
    ok = alice.post(f"/admin/gateway/connection/{shop.pk}/test/").json()
    assert ok["ok"] is True and "sqlite" in ok["message"].lower()
    failed = alice.post(f"/admin/gateway/connection/{missing.pk}/test/").json()
    assert failed["ok"] is False and "no such file" in failed["message"]
    assert AuditEvent.objects.filter(action="connection.test", surface="admin").count() == 2
    other = connection_create_headless(
        org=cast.globex, name="theirs", kind="sqlite", settings={"path": str(tmp_path / "x.db")}, options={}
    )
    assert alice.post(f"/admin/gateway/connection/{other.pk}/test/").status_code == 404


def test_the_access_rule_minimum_risk_is_a_choice_and_labels_read_well(cast):
    page = client_for(cast.alice).get("/admin/reviews/accessrequestrule/add/").content.decode()
    assert '<select name="min_risk"' in page and '<option value="critical">critical</option>' in page
    assert "JIT access (time-bound)" in page and ">Jit<" not in page
    index = client_for(cast.alice).get("/admin/").content.decode()
    assert "API tokens" in index and "Api tokens" not in index


@pytest.mark.parametrize("path", [GUARD_ADD, MASK_ADD, CONN_ADD])
def test_the_editor_pages_render_for_an_auditor_read_only(cast, path):
    carol = client_for(cast.carol)
    assert carol.get(path).status_code == 403  # auditors add nothing


def test_spec_keys_the_editor_has_no_field_for_survive_a_save(cast):
    """A newer spec field (here one the guardrail editor shows nowhere) rides along in the form."""
    from governance import rules

    rule = rules.guardrail_create(actor=cast.alice.actor(), name="g", input={"deny_words": ["x"]})
    GuardrailRule.objects.filter(pk=rule.pk).update(input_conditions={"deny_words": ["x"], "future": [1]})
    page = client_for(cast.alice).get(f"/admin/governance/guardrailrule/{rule.pk}/change/").content.decode()
    assert 'name="input_conditions__extra" value="{&quot;future&quot;: [1]}"' in page
    from django.http import QueryDict

    from governance.admin import GuardrailRuleForm

    data = QueryDict(mutable=True)
    data.update({"input_conditions__editor": "structured", "input_conditions__deny_words": "y"})
    data["input_conditions__extra"] = '{"future": [1], "deny_words": ["stale"]}'
    widget = GuardrailRuleForm.base_fields["input_conditions"].widget
    assert json.loads(widget.value_from_datadict(data, {}, "input_conditions")) == {
        "future": [1],
        "deny_words": ["y"],  # the fields win over what rode along
    }


def test_no_help_text_holds_something_the_admin_would_take_for_html():
    """The admin renders help texts as HTML: "<org id>" would vanish as an unknown tag."""
    import re

    from django.apps import apps

    tag = re.compile(r"<\s*[A-Za-z/!]")
    offenders = [
        f"{model._meta.label}.{field.name}: {field.help_text}"
        for model in apps.get_models()
        for field in model._meta.get_fields()
        if tag.search(str(getattr(field, "help_text", "") or ""))
    ]
    assert offenders == []


def test_connection_kinds_are_named_as_products(cast):
    page = client_for(cast.alice).get(CONN_ADD).content.decode()
    for label in ("PostgreSQL", "MySQL / MariaDB", "SQLite", "MCP server"):
        assert f">{label}</option>" in page


def test_the_affected_rows_ceiling_and_side_effects_have_fields(cast):
    alice = client_for(cast.alice)
    data = guardrail_post(
        input_conditions__max_affected_rows="100",
        input_conditions__allow_side_effects=["file"],
    )
    assert alice.post(GUARD_ADD, data).status_code == 302
    rule = GuardrailRule.objects.get(name="safe-writes")
    assert rule.input_conditions["sql"]["max_affected_rows"] == 100
    assert rule.input_conditions["sql"]["allow_side_effects"] == ["file"]
    page = alice.get(f"/admin/governance/guardrailrule/{rule.pk}/change/").content.decode()
    assert 'id="id_input_conditions_max_affected_rows" min="0" step="1" value="100"' in page
    assert 'name="input_conditions__allow_side_effects" value="file" checked' in page
    bad = alice.post(GUARD_ADD, guardrail_post(name="g2", input_conditions__max_affected_rows="-1"))
    assert "sql.max_affected_rows must be a whole number from 0" in bad.content.decode()

    # A SQL condition the editor has no field for rides along inside "sql".
    from django.http import QueryDict

    from governance.admin import GuardrailRuleForm

    widget = GuardrailRuleForm.base_fields["input_conditions"].widget
    assert widget.extra_of({"sql": {"read_only": True, "future_check": 3}}) == {"sql": {"future_check": 3}}
    data = QueryDict(mutable=True)
    data.update({"input_conditions__editor": "structured", "input_conditions__read_only": "1"})
    data["input_conditions__extra"] = '{"sql": {"future_check": 3}}'
    assert json.loads(widget.value_from_datadict(data, {}, "input_conditions")) == {
        "sql": {"future_check": 3, "read_only": True}
    }
