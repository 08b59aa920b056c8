"""The Django admin as a governed surface, driven with Django's test client as each role.

alice (admin) changes things, carol (auditor) reads, bob and dave (standard) have no admin, and
eve (admin of globex) never sees acme's rows, even by guessing URLs. Saves go through the services
(audit events with surface "admin"), secrets never come back, CSV imports are all or nothing.
"""

from __future__ import annotations

import re

import pytest
from django.test import Client

from gateway.models import Connection
from gateway.services import connection_create_headless
from governance.models import GuardrailRule, Organization, UserGroup
from sessions.audit import audit_record
from sessions.models import AuditEvent, Session

SECRET = "s3cr3t-Pa55word-never-shown"


def client_for(person) -> Client:
    client = Client()
    client.force_login(person.user)
    return client


@pytest.fixture
def pg(cast):
    return connection_create_headless(
        org=cast.acme,
        name="pg",
        kind="postgres",
        settings={"host": "db.acme.test", "database": "app", "user": "ro", "password": SECRET},
        options={},
    )


@pytest.fixture
def session_row(cast, pg):
    return Session.objects.create(
        org=cast.acme,
        user=cast.bob.user,
        connection=pg,
        connection_name="pg",
        connection_kind="postgres",
        surface="mcp",
        input="select 1",
        input_sha256="0" * 64,
        status="done",
    )


def connection_form(**overrides) -> dict:
    data = {
        "name": "orders",
        "kind": "postgres",
        "description": "",
        "config": '{"host": "orders.acme.test", "database": "orders", "user": "app"}',
        "max_rows": "1000",
        "max_output_bytes": "1048576",
        "timeout_seconds": "60",
        "exec_enabled": "on",
        "schema_enabled": "on",
        "runbooks_enabled": "on",
        "agent_queue": "",
    }
    data.update(overrides)
    return data


def management_prefix(html: str) -> str:
    return re.search(r'name="([^"]+)-TOTAL_FORMS"', html).group(1)


def inline_data(prefix: str, field: str, values: list, initial: int = 0) -> dict:
    data = {
        f"{prefix}-TOTAL_FORMS": str(len(values)),
        f"{prefix}-INITIAL_FORMS": str(initial),
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
    }
    for i, value in enumerate(values):
        data[f"{prefix}-{i}-{field}"] = str(value)
    return data


# --- who gets in -------------------------------------------------------------------------------


def test_it_lets_admins_and_auditors_in_by_role_not_is_staff(cast):
    assert client_for(cast.alice).get("/admin/").status_code == 200
    assert client_for(cast.carol).get("/admin/").status_code == 200
    for person in (cast.bob, cast.dave):
        response = client_for(person).get("/admin/")
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
    # is_staff and is_superuser give nothing: bob stays a standard member.
    cast.bob.user.is_staff = cast.bob.user.is_superuser = True
    cast.bob.user.set_password("pw-bob-123")
    cast.bob.user.save()
    assert client_for(cast.bob).get("/admin/gateway/connection/").status_code == 302
    response = Client().post("/admin/login/", {"username": "bob@acme.test", "password": "pw-bob-123"})
    assert response.status_code == 200 and "admin or auditor account" in response.content.decode()
    cast.carol.user.set_password("pw-carol-123")
    cast.carol.user.save()
    response = Client().post(
        "/admin/login/", {"username": "carol@acme.test", "password": "pw-carol-123", "next": "/admin/"}
    )
    assert response.status_code == 302 and response["Location"] == "/admin/"


def test_it_shows_no_admin_models_to_a_deactivated_admin(cast):
    client = client_for(cast.alice)
    cast.alice.user.is_active = False
    cast.alice.user.save()
    assert client.get("/admin/").status_code == 302


# --- scoping -----------------------------------------------------------------------------------


def _shown(text: str, page: str) -> bool:
    """Whether `text` is the whole text of an element of `page` (a cell, a link, an option)."""
    return re.search(rf">\s*{re.escape(text)}\s*<", page) is not None


def test_it_never_shows_another_orgs_rows_even_by_guessed_urls(cast, pg, session_row):
    eve = client_for(cast.eve)
    engineering = UserGroup.objects.get(org=cast.acme, name="engineering")
    event = audit_record(actor=cast.alice.actor("admin"), action="probe.acme-only")
    guarded = GuardrailRule.objects.create(
        org=cast.acme, name="acme-rule", input_conditions={"deny_words": ["x"]}
    )
    pages = {
        "/admin/gateway/connection/": (pg.pk, "pg"),
        "/admin/governance/user/": (cast.bob.user.pk, "bob@acme.test"),
        "/admin/governance/usergroup/": (engineering.pk, "engineering"),
        "/admin/governance/guardrailrule/": (guarded.pk, "acme-rule"),
        "/admin/records/session/": (session_row.pk, "bob@acme.test"),
        "/admin/records/auditevent/": (event.pk, "probe.acme-only"),
    }
    for url, (pk, text) in pages.items():
        listing = eve.get(url)
        assert listing.status_code == 200, url
        page = listing.content.decode()
        # As a cell's or a link's text, or a link to the row: not inside a random CSRF token.
        assert not _shown(text, page) and f"{url}{pk}/" not in page, url
        for suffix in ("change/", "delete/", "history/"):
            assert eve.get(f"{url}{pk}/{suffix}").status_code == 404, (url, suffix)
        # A missing id answers exactly like another org's.
        assert eve.get(f"{url}00000000-0000-0000-0000-000000000000/change/").status_code == 404
    # Posting a change to acme's connection is the same 404, and changes nothing.
    assert (
        eve.post(f"/admin/gateway/connection/{pg.pk}/change/", connection_form(name="pg")).status_code == 404
    )
    assert eve.post(f"/admin/gateway/connection/{pg.pk}/delete/", {"post": "yes"}).status_code == 404
    assert Connection.objects.filter(pk=pg.pk).exists()
    # Filters list only the org's related rows.
    assert "engineering" not in eve.get("/admin/governance/user/").content.decode()
    # The check above would see the rows: acme's own admin is shown them.
    alice = client_for(cast.alice)
    assert all(_shown(text, alice.get(url).content.decode()) for url, (_, text) in pages.items())


def test_it_confines_a_django_superuser_to_their_org(cast, pg):
    cast.eve.user.is_superuser = cast.eve.user.is_staff = True
    cast.eve.user.save()
    eve = client_for(cast.eve)
    page = eve.get("/admin/gateway/connection/").content.decode()
    assert not _shown("pg", page) and f"/admin/gateway/connection/{pg.pk}/" not in page
    assert eve.get(f"/admin/gateway/connection/{pg.pk}/change/").status_code == 404


def test_it_offers_only_the_orgs_rows_as_choices(cast, pg):
    connection_create_headless(
        org=cast.globex, name="globex-db", kind="sqlite", settings={"path": "/tmp/x.db"}, options={}
    )
    html = client_for(cast.alice).get("/admin/governance/guardrailrule/add/").content.decode()
    assert "pg" in html and "globex-db" not in html
    html = client_for(cast.alice).get("/admin/governance/usergroup/add/").content.decode()
    assert "bob@acme.test" in html and "eve@globex.test" not in html


def test_it_refuses_a_foreign_connection_id_posted_into_a_rule(cast, pg):
    other = connection_create_headless(
        org=cast.globex, name="globex-db", kind="sqlite", settings={"path": "/tmp/x.db"}, options={}
    )
    response = client_for(cast.alice).post(
        "/admin/governance/guardrailrule/add/",
        {
            "name": "r",
            "enabled": "on",
            "input_conditions": '{"deny_words": ["drop"]}',
            "output_conditions": "{}",
            "connections": [str(other.pk)],
        },
    )
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    assert not GuardrailRule.objects.filter(name="r").exists()


# --- roles -------------------------------------------------------------------------------------


def test_it_makes_auditors_read_only(cast, pg):
    carol = client_for(cast.carol)
    page = carol.get(f"/admin/gateway/connection/{pg.pk}/change/")
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    assert carol.get("/admin/gateway/connection/add/").status_code == 403
    assert (
        carol.post(f"/admin/gateway/connection/{pg.pk}/change/", connection_form(name="pg")).status_code
        == 403
    )
    assert carol.post(f"/admin/gateway/connection/{pg.pk}/delete/", {"post": "yes"}).status_code == 403
    assert carol.get("/admin/gateway/connection/import-csv/").status_code == 403
    assert (
        carol.post(
            "/admin/governance/usergroup/add/", {"name": "ops", **inline_data("x", "user", [])}
        ).status_code
        == 403
    )
    assert Connection.objects.filter(pk=pg.pk).exists() and not UserGroup.objects.filter(name="ops").exists()
    # Auditors read the rules and the audit log, not attributes (admins only, as the services say).
    assert carol.get("/admin/governance/guardrailrule/").status_code == 200
    assert carol.get("/admin/records/auditevent/").status_code == 200
    assert carol.get("/admin/governance/attribute/").status_code == 403


def test_it_keeps_sessions_and_audit_events_read_only_for_everyone(cast, session_row):
    alice = client_for(cast.alice)
    event = AuditEvent.objects.filter(org=cast.acme).first()
    for url, pk in (("/admin/records/session/", session_row.pk), ("/admin/records/auditevent/", event.pk)):
        listing = alice.get(url).content.decode()
        assert "delete_selected" not in listing
        assert alice.get(f"{url}add/").status_code == 403
        assert alice.get(f"{url}{pk}/change/").status_code == 200  # a view-only page
        assert 'name="_save"' not in alice.get(f"{url}{pk}/change/").content.decode()
        assert alice.post(f"{url}{pk}/change/", {"status": "failed"}).status_code == 403
        assert alice.post(f"{url}{pk}/delete/", {"post": "yes"}).status_code == 403
        # The bulk action cannot be forced by posting it either.
        alice.post(url, {"action": "delete_selected", "_selected_action": [str(pk)], "post": "yes"})
    assert Session.objects.filter(pk=session_row.pk, status="done").exists()
    assert AuditEvent.objects.filter(pk=event.pk).exists()


# --- saves go through the services ---------------------------------------------------------------


def test_it_creates_a_connection_with_a_secret_that_never_comes_back(cast):
    alice = client_for(cast.alice)
    response = alice.post("/admin/gateway/connection/add/", connection_form(secret_password=SECRET))
    assert response.status_code == 302, response.content.decode()[:3000]
    connection = Connection.objects.get(org=cast.acme, name="orders")
    assert connection.get_secrets() == {"password": SECRET} and "password" not in connection.config
    event = AuditEvent.objects.get(org=cast.acme, action="connection.create", target_id=str(connection.pk))
    assert event.surface == "admin" and event.actor_email == "alice@acme.test"
    assert event.detail == {"secret_keys": ["password"]}
    pages = [
        alice.get("/admin/gateway/connection/"),
        alice.get(f"/admin/gateway/connection/{connection.pk}/change/"),
        alice.post(
            "/admin/gateway/connection/", {"action": "export_csv", "_selected_action": [str(connection.pk)]}
        ),
        alice.get(f"/admin/records/auditevent/{event.pk}/change/"),
    ]
    for page in pages:
        assert page.status_code == 200
        assert SECRET not in page.content.decode()
    change = pages[1].content.decode()
    assert "Write-only (set - type a new value to replace it)" in change
    assert 'type="password" name="secret_password"' in change
    assert "password" not in pages[2].content.decode().splitlines()[0]


def test_it_updates_and_removes_a_secret_and_keeps_it_when_left_blank(cast, pg):
    alice = client_for(cast.alice)
    url = f"/admin/gateway/connection/{pg.pk}/change/"
    config = '{"host": "db2.acme.test", "database": "app", "user": "ro"}'
    assert alice.post(url, connection_form(name="pg", config=config)).status_code == 302
    pg.refresh_from_db()
    assert pg.config["host"] == "db2.acme.test" and pg.get_secrets() == {"password": SECRET}
    event = AuditEvent.objects.filter(org=cast.acme, action="connection.update").get()
    assert event.surface == "admin" and "host" in event.detail["changed"]
    assert (
        alice.post(url, connection_form(name="pg", config=config, secret_password="new-one")).status_code
        == 302
    )
    pg.refresh_from_db()
    assert pg.get_secrets() == {"password": "new-one"}
    assert (
        alice.post(url, connection_form(name="pg", config=config, clear_secrets=["password"])).status_code
        == 302
    )
    pg.refresh_from_db()
    assert pg.get_secrets() == {} and pg.secret_keys == []


def test_it_shows_the_services_validation_errors_on_the_form(cast, pg):
    alice = client_for(cast.alice)
    response = alice.post(
        "/admin/gateway/connection/add/",
        connection_form(config='{"host": "h", "database": "d", "user": "u", "port": "five"}'),
    )
    assert response.status_code == 200
    assert "setting &#x27;port&#x27; must be an integer between 1 and 65535" in response.content.decode()
    assert not Connection.objects.filter(name="orders").exists()
    response = alice.post("/admin/gateway/connection/add/", connection_form(name="pg"))
    assert (
        response.status_code == 200
        and "connection &quot;pg&quot; already exists" in response.content.decode()
    )
    response = alice.post(
        "/admin/governance/guardrailrule/add/",
        {"name": "empty", "enabled": "on", "input_conditions": "{}", "output_conditions": "{}"},
    )
    assert response.status_code == 200
    assert "a guardrail needs at least one input or output condition" in response.content.decode()
    response = alice.post(
        "/admin/governance/guardrailrule/add/",
        {"name": "bad", "enabled": "on", "input_conditions": '{"sql": {"deny_statements": ["nope"]}}'},
    )
    assert response.status_code == 200 and "errornote" in response.content.decode()
    assert not GuardrailRule.objects.filter(name__in=["empty", "bad"]).exists()
    assert not AuditEvent.objects.filter(org=cast.acme, action="guardrail.create").exists()


def test_it_saves_rules_through_the_rules_services_and_bumps_the_cache_version(cast, pg):
    alice = client_for(cast.alice)
    before = Organization.objects.get(pk=cast.acme.pk).rules_version
    response = alice.post(
        "/admin/governance/guardrailrule/add/",
        {
            "name": "no-drop",
            "message": "No.",
            "enabled": "on",
            "input_conditions": '{"sql": {"deny_statements": ["drop"]}}',
            "output_conditions": "{}",
            "connections": [str(pg.pk)],
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    rule = GuardrailRule.objects.get(org=cast.acme, name="no-drop")
    assert [c.name for c in rule.connections.all()] == ["pg"]
    assert Organization.objects.get(pk=cast.acme.pk).rules_version == before + 1
    event = AuditEvent.objects.get(org=cast.acme, action="guardrail.create")
    assert (
        event.surface == "admin"
        and event.detail["connections"] == ["pg"]
        and event.detail["attributes"] == []
    )
    assert event.detail["after"]["name"] == "no-drop"  # what was made, not only that something was
    # Bulk delete goes through the service too: one audited delete per rule.
    response = alice.post(
        "/admin/governance/guardrailrule/",
        {"action": "delete_selected", "_selected_action": [str(rule.pk)], "post": "yes"},
    )
    assert response.status_code == 302
    assert not GuardrailRule.objects.filter(pk=rule.pk).exists()
    assert AuditEvent.objects.get(org=cast.acme, action="guardrail.delete").surface == "admin"


# --- users and groups ---------------------------------------------------------------------------


def test_it_edits_group_members_inline_through_the_service(cast):
    alice = client_for(cast.alice)
    engineering = UserGroup.objects.get(org=cast.acme, name="engineering")
    url = f"/admin/governance/usergroup/{engineering.pk}/change/"
    prefix = management_prefix(alice.get(url).content.decode())
    membership = engineering.members.through.objects.get(usergroup=engineering)
    data = {
        "name": "engineering",
        **inline_data(prefix, "user", [cast.bob.user.pk, cast.dave.user.pk], initial=1),
    }
    data[f"{prefix}-0-id"] = str(membership.pk)
    data[f"{prefix}-0-usergroup"] = str(engineering.pk)
    data[f"{prefix}-1-usergroup"] = str(engineering.pk)
    response = alice.post(url, data)
    assert response.status_code == 302, response.content.decode()[:3000]
    assert sorted(u.email for u in engineering.members.all()) == ["bob@acme.test", "dave@acme.test"]
    event = AuditEvent.objects.get(org=cast.acme, action="usergroup.members")
    assert event.surface == "admin" and (event.detail["added"], event.detail["removed"]) == (
        ["dave@acme.test"],
        [],
    )
    assert event.detail["after"]["members"] == ["bob@acme.test", "dave@acme.test"]


def test_it_creates_a_user_with_groups_in_one_audited_service_call(cast):
    alice = client_for(cast.alice)
    html = alice.get("/admin/governance/user/add/").content.decode()
    prefix = management_prefix(html)
    engineering = UserGroup.objects.get(org=cast.acme, name="engineering")
    data = {"email": "frank@acme.test", "name": "Frank", "password": "pw-frank-123"}
    data.update(inline_data(prefix, "usergroup", [engineering.pk]))
    response = alice.post("/admin/governance/user/add/", data)
    assert response.status_code == 302, response.content.decode()[:3000]
    event = AuditEvent.objects.get(org=cast.acme, action="user.create", target_repr="frank@acme.test")
    assert event.surface == "admin" and event.detail == {"groups": ["engineering"]}
    assert "pw-frank-123" not in str(event.detail)


def test_it_keeps_the_last_admin(cast):
    alice = client_for(cast.alice)
    url = f"/admin/governance/user/{cast.alice.user.pk}/change/"
    prefix = management_prefix(alice.get(url).content.decode())
    membership = UserGroup.members.through.objects.get(user=cast.alice.user)
    data = {
        "name": "Alice",
        "is_active": "on",
        **inline_data(prefix, "usergroup", [membership.usergroup_id], initial=1),
    }
    data[f"{prefix}-0-id"] = str(membership.pk)
    data[f"{prefix}-0-user"] = str(cast.alice.user.pk)
    data[f"{prefix}-0-DELETE"] = "on"
    response = alice.post(url, data)
    assert response.status_code == 200
    assert "an organization must keep at least one active admin" in response.content.decode()
    # Deactivating herself through the bulk action is refused too, and changes nothing.
    response = alice.post(
        "/admin/governance/user/",
        {"action": "deactivate_users", "_selected_action": [str(cast.alice.user.pk), str(cast.dave.user.pk)]},
        follow=True,
    )
    assert "at least one active admin" in response.content.decode()
    cast.alice.user.refresh_from_db()
    cast.dave.user.refresh_from_db()
    assert cast.alice.user.is_active and cast.dave.user.is_active  # all or nothing
    assert UserGroup.objects.get(org=cast.acme, name="admin").members.filter(pk=cast.alice.user.pk).exists()


def test_it_never_deletes_the_reserved_groups(cast):
    alice = client_for(cast.alice)
    admin_group = UserGroup.objects.get(org=cast.acme, name="admin")
    assert alice.get(f"/admin/governance/usergroup/{admin_group.pk}/delete/").status_code == 403
    # Selected for a bulk delete, a reserved group is refused like any object one may not delete.
    response = alice.post(
        "/admin/governance/usergroup/",
        {"action": "delete_selected", "_selected_action": [str(admin_group.pk)], "post": "yes"},
    )
    assert response.status_code == 403
    assert UserGroup.objects.filter(pk=admin_group.pk).exists()
    page = alice.get(f"/admin/governance/usergroup/{admin_group.pk}/change/").content.decode()
    assert 'name="name"' not in page  # reserved names are read-only


def test_it_writes_no_django_log_entries(cast, pg):
    from django.contrib.admin.models import LogEntry

    client_for(cast.alice).post("/admin/gateway/connection/add/", connection_form())
    assert Connection.objects.filter(name="orders").exists()
    assert LogEntry.objects.count() == 0


# --- CSV import and export ----------------------------------------------------------------------

CSV_OK = (
    "name,kind,host,database,user,port,password,max_rows,description,path\n"
    f"billing,postgres,billing.acme.test,billing,app,5433,{SECRET},500,Billing,\n"
    "local,sqlite,,,,,,,,/tmp/local.db\n"
)


def _upload(client, text: str):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post(
        "/admin/gateway/connection/import-csv/",
        {"file": SimpleUploadedFile("c.csv", text.encode(), content_type="text/csv")},
    )


def test_it_previews_a_csv_import_as_a_dry_run_then_imports_on_confirm(cast):
    alice = client_for(cast.alice)
    text = CSV_OK
    preview = _upload(alice, text)
    html = preview.content.decode()
    assert preview.status_code == 200 and "Dry run: all 2 rows are valid" in html
    assert SECRET not in html  # the confirm form carries the file encrypted
    assert not Connection.objects.filter(org=cast.acme, name__in=["billing", "local"]).exists()
    assert not AuditEvent.objects.filter(org=cast.acme, action="connection.create", surface="admin").exists()
    payload = re.search(r'name="payload" value="([^"]+)"', html).group(1)
    # Another admin cannot replay alice's preview.
    eve = client_for(cast.eve)
    eve.post("/admin/gateway/connection/import-csv/", {"payload": payload})
    assert not Connection.objects.filter(name="billing").exists()
    done = alice.post("/admin/gateway/connection/import-csv/", {"payload": payload})
    assert done.status_code == 302
    billing = Connection.objects.get(org=cast.acme, name="billing")
    assert billing.config == {"host": "billing.acme.test", "database": "billing", "user": "app", "port": 5433}
    assert billing.get_secrets() == {"password": SECRET} and billing.max_rows == 500
    assert Connection.objects.filter(org=cast.acme, name="local").exists()
    assert AuditEvent.objects.filter(org=cast.acme, action="connection.create", surface="admin").count() == 2
    # The export round-trips everything but the secret.
    export = alice.post(
        "/admin/gateway/connection/",
        {"action": "export_csv", "_selected_action": [str(billing.pk)]},
    ).content.decode()
    assert export.splitlines()[1].startswith("billing,postgres,Billing,500,")
    assert SECRET not in export and "billing.acme.test" in export


def test_it_imports_nothing_when_one_row_is_bad(cast, pg):
    alice = client_for(cast.alice)
    text = (
        "name,kind,host,database,user,port\n"
        "one,postgres,h,d,u,5432\n"
        "pg,postgres,h,d,u,5432\n"  # already exists
        "three,postgres,h,d,u,notaport\n"
        "four,oracle,h,d,u,1\n"
        "one,postgres,h,d,u,5432\n"  # twice in the file
    )
    html = _upload(alice, text).content.decode()
    assert "4 of 5 rows have problems" in html
    assert "connection &quot;pg&quot; already exists" in html
    assert "setting &#x27;port&#x27; must be" in html
    assert "unknown connection kind &#x27;oracle&#x27;" in html
    assert 'name="payload"' not in html  # nothing to confirm
    assert not Connection.objects.filter(org=cast.acme, name__in=["one", "three", "four"]).exists()
    # A bad header is one clear error.
    assert "must have the columns name and kind" in _upload(alice, "title,type\nx,y\n").content.decode()
    assert "the file has no rows" in _upload(alice, "name,kind\n").content.decode()
    assert (
        "must not contain NUL characters"
        in _upload(alice, "name,kind,path\nx,sqlite,/tmp/\0x\n").content.decode()
    )
    huge = "name,kind,description\nx,sqlite," + "d" * 200_000 + "\n"
    assert "not valid CSV near line 2" in _upload(alice, huge).content.decode()
    from django.core.files.uploadedfile import SimpleUploadedFile

    not_utf8 = SimpleUploadedFile("c.csv", b"name,kind\n\xff\xfe,x\n", content_type="text/csv")
    html = alice.post("/admin/gateway/connection/import-csv/", {"file": not_utf8}).content.decode()
    assert "The file is not UTF-8 text." in html


def test_it_rolls_back_a_confirmed_import_that_became_invalid(cast):
    alice = client_for(cast.alice)
    html = _upload(alice, "name,kind,path\nlate,sqlite,/tmp/late.db\n").content.decode()
    payload = re.search(r'name="payload" value="([^"]+)"', html).group(1)
    connection_create_headless(
        org=cast.acme, name="late", kind="sqlite", settings={"path": "/tmp/x"}, options={}
    )
    html = alice.post("/admin/gateway/connection/import-csv/", {"payload": payload}).content.decode()
    assert "the data changed since the preview" in html
    assert Connection.objects.filter(org=cast.acme, name="late").count() == 1


def test_it_makes_createsuperuser_an_admin_of_an_org(db):
    from django.core.management import call_command

    call_command("createsuperuser", "--noinput", "--email", "root@example.test", verbosity=0)
    from governance.models import User

    root = User.objects.get(email="root@example.test")
    assert root.org.name == "default" and root.is_superuser
    assert sorted(g.name for g in root.user_groups.all()) == ["admin"]
    assert sorted(root.org.groups.values_list("name", flat=True)) == ["admin", "auditor"]
    assert Client().get("/admin/").status_code == 302
    client = Client()
    client.force_login(root)
    assert client.get("/admin/").status_code == 200


def test_it_serves_only_governed_pages(cast):
    from django.contrib import admin

    from governance.admin_base import GovernedModelAdmin, ReadOnlyModelAdmin

    assert admin.site._registry, "the governed pages are registered"
    for model, model_admin in admin.site._registry.items():
        assert isinstance(model_admin, GovernedModelAdmin | ReadOnlyModelAdmin), model
    # Django's auth groups and the OAuth toolkit's tokens (plain ModelAdmins that trust the
    # superuser flag and see every org) are not served, not even to a superuser.
    cast.alice.user.is_superuser = True
    cast.alice.user.save()
    alice = client_for(cast.alice)
    assert alice.get("/admin/auth/group/").status_code == 404
    assert alice.get("/admin/oauth2_provider/accesstoken/").status_code == 404


def test_it_sets_access_groups_through_the_access_control_service(cast, pg):
    alice = client_for(cast.alice)
    url = f"/admin/gateway/connection/{pg.pk}/change/"
    config = '{"host": "db.acme.test", "database": "app", "user": "ro"}'
    current = {k: str(getattr(pg, k)) for k in ("max_rows", "max_output_bytes", "timeout_seconds")}
    engineering = UserGroup.objects.get(org=cast.acme, name="engineering")
    response = alice.post(
        url, connection_form(name="pg", config=config, **current, access_groups=[str(engineering.pk)])
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert [g.name for g in pg.access_groups.all()] == ["engineering"]
    event = AuditEvent.objects.get(org=cast.acme, action="access_control.set")
    assert event.surface == "admin" and event.detail["groups"] == ["engineering"]
    assert event.detail["before"] == {"access_groups": []}
    assert event.detail["after"] == {"access_groups": ["engineering"]}
    assert not AuditEvent.objects.filter(
        org=cast.acme, action="connection.update"
    ).exists()  # nothing else changed
    # Another org's group is not a valid choice.
    globex_admins = UserGroup.objects.get(org=cast.globex, name="admin")
    response = alice.post(
        url, connection_form(name="pg", config=config, **current, access_groups=[str(globex_admins.pk)])
    )
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    assert alice.post(url, connection_form(name="pg", config=config, **current)).status_code == 302
    assert pg.access_groups.count() == 0
    assert AuditEvent.objects.get(org=cast.acme, action="access_control.unset").surface == "admin"


def test_it_sets_a_password_write_only_and_validated(cast):
    alice = client_for(cast.alice)
    url = f"/admin/governance/user/{cast.bob.user.pk}/change/"
    page = alice.get(url).content.decode()
    prefix = management_prefix(page)
    membership = UserGroup.members.through.objects.get(user=cast.bob.user)
    base = {
        "name": "Bob",
        "is_active": "on",
        **inline_data(prefix, "usergroup", [membership.usergroup_id], initial=1),
    }
    base[f"{prefix}-0-id"] = str(membership.pk)
    base[f"{prefix}-0-user"] = str(cast.bob.user.pk)
    response = alice.post(url, {**base, "new_password": "short"})
    assert response.status_code == 200 and "This password is too short" in response.content.decode()
    assert "short" not in re.findall(r'name="new_password"[^>]*>', response.content.decode())[0]
    response = alice.post(url, {**base, "new_password": "a-long-enough-passphrase"})
    assert response.status_code == 302, response.content.decode()[:2000]
    cast.bob.user.refresh_from_db()
    assert cast.bob.user.check_password("a-long-enough-passphrase")
    event = AuditEvent.objects.get(org=cast.acme, action="user.update", target_id=str(cast.bob.user.pk))
    assert event.surface == "admin" and event.detail == {"password": "changed"}
    page = alice.get(url).content.decode()
    assert "a-long-enough-passphrase" not in page and cast.bob.user.password not in page


def test_it_changes_ones_own_password_through_the_service(cast):
    cast.carol.user.set_password("carol-old-passphrase")
    cast.carol.user.save()
    carol = client_for(cast.carol)
    url = "/admin/password_change/"
    response = carol.post(
        url,
        {
            "old_password": "wrong",
            "new_password1": "carol-new-passphrase",
            "new_password2": "carol-new-passphrase",
        },
    )
    assert (
        response.status_code == 200
        and "Your old password was entered incorrectly" in response.content.decode()
    )
    response = carol.post(
        url,
        {
            "old_password": "carol-old-passphrase",
            "new_password1": "carol-new-passphrase",
            "new_password2": "carol-new-passphrase",
        },
    )
    assert response.status_code == 302
    cast.carol.user.refresh_from_db()
    assert cast.carol.user.check_password("carol-new-passphrase")
    event = AuditEvent.objects.get(org=cast.acme, action="user.password_change")
    assert event.surface == "admin" and event.actor_email == "carol@acme.test" and event.detail == {}


def test_it_lists_tokens_read_only_without_their_digest(cast):
    from governance.models import ApiToken

    token = ApiToken.objects.get(user=cast.bob.user)
    for person in (cast.alice, cast.carol):
        client = client_for(person)
        listing = client.get("/admin/governance/apitoken/").content.decode()
        page = client.get(f"/admin/governance/apitoken/{token.pk}/change/").content.decode()
        for html in (listing, page):
            assert token.prefix in html
            assert token.digest not in html and cast.bob.token not in html
        assert 'name="_save"' not in page
    assert client_for(cast.alice).get("/admin/governance/apitoken/add/").status_code == 403
    assert client_for(cast.eve).get(f"/admin/governance/apitoken/{token.pk}/change/").status_code == 404


def test_it_audits_a_refused_change_as_denied(cast, pg, session_row):
    carol = client_for(cast.carol)
    before = AuditEvent.objects.filter(org=cast.acme).count()
    assert carol.post("/admin/gateway/connection/add/", connection_form()).status_code == 403
    assert carol.post(f"/admin/gateway/connection/{pg.pk}/delete/", {"post": "yes"}).status_code == 403
    assert (
        client_for(cast.alice).post(f"/admin/records/session/{session_row.pk}/change/", {}).status_code == 403
    )
    events = list(AuditEvent.objects.filter(org=cast.acme).order_by("id"))[before:]
    assert [(e.action, e.outcome, e.surface, e.actor_email, e.target_repr) for e in events] == [
        ("admin.request", "denied", "admin", "carol@acme.test", "POST /admin/gateway/connection/add/"),
        (
            "admin.request",
            "denied",
            "admin",
            "carol@acme.test",
            f"POST /admin/gateway/connection/{pg.pk}/delete/",
        ),
        (
            "admin.request",
            "denied",
            "admin",
            "alice@acme.test",
            f"POST /admin/records/session/{session_row.pk}/change/",
        ),
    ]
    assert [e.detail["reason"] for e in events] == ["admin access required"] * 2 + [
        "read-only here for everyone"
    ]
    # Reading is not an attempt to change anything: no event.
    carol.get(f"/admin/gateway/connection/{pg.pk}/change/")
    assert AuditEvent.objects.filter(org=cast.acme).count() == before + 3
