"""The security team's web pages with Django's test client: who sees what (per role, across orgs),
filters, bad input (a clear 400, never a 500), the "Connect your agent" tokens, CSRF."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from governance.models import ApiToken
from governance.services import token_authenticate, token_issue
from sessions.models import Analysis, AuditEvent, Session
from sessions.services import STATS_MAX_DAYS

DAY = datetime(2026, 11, 17, 9, 15, tzinfo=UTC)  # a Tuesday


def _session(org, user, *, connection="prod-pg", kind="postgres", status="done", when=DAY, **extra):
    defaults = {"surface": "mcp", "input": "select 1", "input_sha256": "x", "verb": "exec"}
    defaults.update(extra)
    return Session.objects.create(
        org=org,
        user=user,
        connection_name=connection,
        connection_kind=kind,
        status=status,
        created_at=when,
        **defaults,
    )


@pytest.fixture
def history(cast):
    """Bob: a query with rows and an analysis, a blocked DROP, a command. Dave: one on staging.
    Eve (globex): one on a connection of the same name."""
    bob, dave = cast.bob.user, cast.dave.user
    rows = _session(
        cast.acme,
        bob,
        input="select name, email from customers where id < 3",
        output="name | email\nBOB-ROW | <EMAIL_ADDRESS>",
        result={"columns": ["name", "email"], "rows": [["BOB-ROW", "<EMAIL_ADDRESS>"], ["second", None]]},
        row_count=2,
        masking={"counts": {"EMAIL_ADDRESS": 1}},
        started_at=DAY,
        ended_at=DAY + timedelta(seconds=1),
        execution_time_ms=42,
        exit_code=0,
    )
    Analysis.objects.create(
        session=rows,
        risk_level="medium",
        title="Reads customer e-mails",
        explanation="A read of a table with personal data.",
        suggested_action="Check the purpose.",
        analyzer="builtin",
    )
    blocked = _session(
        cast.acme,
        bob,
        status="blocked",
        when=DAY + timedelta(days=1),
        input="drop table customers",
        guardrail_findings=[
            {
                "rule": "no-drops",
                "direction": "input",
                "condition": "sql.deny_statements",
                "statement": 1,
                "detail": "DROP TABLE customers",
            }
        ],
        error="blocked by guardrail no-drops",
    )
    Analysis.objects.create(
        session=blocked, risk_level="critical", title="Drops a table", explanation="e", analyzer="builtin"
    )
    command = _session(
        cast.acme,
        bob,
        connection="box",
        kind="command",
        when=DAY + timedelta(days=2),
        input="ls -la /srv",
        output="total 0\ndrwxr-xr-x 2 root root 40 .\n",
        surface="web",
        execution_time_ms=1500,
        exit_code=0,
    )
    staging = _session(
        cast.acme, dave, connection="staging", status="failed", when=DAY + timedelta(days=1), surface="api"
    )
    other = _session(cast.globex, cast.eve.user, input="select 'GLOBEX-SECRET'", output="GLOBEX-SECRET")
    return {"rows": rows, "blocked": blocked, "command": command, "staging": staging, "other": other}


def login(person) -> Client:
    client = Client()
    client.force_login(person.user)
    return client


def ids(response) -> set[str]:
    return {str(s.pk) for s in response.context["sessions"]}


# --- access ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/sessions/", "/dashboard/", "/connect/", "/sessions/00000000-0000-0000-0000-000000000000/"]
)
def test_it_sends_anonymous_visitors_to_the_login_page(db, path):
    response = Client().get(path)
    assert response.status_code == 302 and response["Location"].startswith(f"/login/?next={path}")


def test_it_logs_in_with_email_and_password(cast):
    cast.bob.user.set_password("correct horse battery")
    cast.bob.user.save()
    client = Client()
    assert (
        client.post("/login/", {"username": "bob@acme.test", "password": "wrong password!"}).status_code
        == 200
    )
    response = client.post("/login/", {"username": "bob@acme.test", "password": "correct horse battery"})
    assert response.status_code == 302
    assert client.get("/", follow=True).redirect_chain[-1][0] == "/sessions/"


def test_logging_out_ends_the_web_session(cast):
    client = login(cast.bob)
    assert client.post("/logout/").status_code == 302
    assert client.get("/sessions/").status_code == 302


# --- the session browser ----------------------------------------------------------------------------


def test_it_lists_own_sessions_for_members_and_the_org_for_admins_and_auditors(cast, history):
    bobs = {str(history[k].pk) for k in ("rows", "blocked", "command")}
    assert ids(login(cast.bob).get("/sessions/")) == bobs
    assert ids(login(cast.dave).get("/sessions/")) == {str(history["staging"].pk)}
    org = bobs | {str(history["staging"].pk)}
    for person in (cast.alice, cast.carol):
        response = login(person).get("/sessions/")
        assert response.status_code == 200 and ids(response) == org
        assert "GLOBEX-SECRET" not in response.content.decode()
    assert ids(login(cast.eve).get("/sessions/")) == {str(history["other"].pk)}


def test_it_never_shows_session_content_in_the_list(cast, history):
    page = login(cast.alice).get("/sessions/").content.decode()
    assert "drop table customers" not in page and "BOB-ROW" not in page


@pytest.mark.parametrize(
    "query, expected",
    [
        ("status=blocked", {"blocked"}),
        ("user=DAVE@acme.test", {"staging"}),
        ("connection=box", {"command"}),
        ("risk_level=critical", {"blocked"}),
        ("risk_level=medium", {"rows"}),
        ("surface=api", {"staging"}),
        ("verb=schema", set()),
        ("start_date=2026-11-18&end_date=2026-11-18", {"blocked", "staging"}),  # the end day is inclusive
        ("start_date=2026-11-19", {"command"}),
        ("end_date=2026-11-17T10:00:00Z", {"rows"}),
        ("status=done&connection=prod-pg", {"rows"}),
    ],
)
def test_it_filters(cast, history, query, expected):
    response = login(cast.carol).get(f"/sessions/?{query}")
    assert response.status_code == 200
    assert ids(response) == {str(history[name].pk) for name in expected}


def test_filters_never_widen_what_a_member_sees(cast, history):
    assert ids(login(cast.dave).get("/sessions/?user=bob@acme.test")) == set()
    assert ids(login(cast.eve).get("/sessions/?connection=prod-pg")) == {str(history["other"].pk)}


@pytest.mark.parametrize(
    "query, message",
    [
        ("start_date=2026-13-01", "Enter a date (YYYY-MM-DD)"),
        ("start_date=yesterday", "Enter a date (YYYY-MM-DD)"),
        ("end_date=2026-11-17T10:00:00", "needs a time zone"),
        ("start_date=2026-11-20&end_date=2026-11-10", "The end must come after the start."),
        ("status=exploded", "Select a valid choice"),
        ("risk_level=extreme", "Select a valid choice"),
        ("user=not-an-email", "valid email address"),
        ("page=0", "greater than or equal to 1"),
        ("page=abc", "Enter a whole number"),
        ("page=999999", "less than or equal to 401"),
        ("connection=" + "x" * 64, "at most 63 characters"),
    ],
)
def test_bad_filters_get_a_clear_400(cast, history, query, message):
    response = login(cast.alice).get(f"/sessions/?{query}")
    assert response.status_code == 400
    assert message in response.content.decode()
    assert response.context["sessions"] == []


def test_it_paginates(cast):
    for i in range(30):
        _session(cast.acme, cast.bob.user, when=DAY + timedelta(minutes=i))
    client = login(cast.bob)
    first = client.get("/sessions/")
    assert len(first.context["sessions"]) == 25 and first.context["total"] == 30
    assert first.context["next_query"] == "page=2"
    second = client.get("/sessions/?page=2")
    assert len(second.context["sessions"]) == 5 and second.context["next_query"] is None
    assert not ids(first) & ids(second)


def test_the_list_costs_the_same_queries_for_a_short_or_a_full_page(cast):
    def queries_for_page():
        client = login(cast.alice)
        with CaptureQueriesContext(connection) as captured:
            assert client.get("/sessions/").status_code == 200
        return len(captured)

    for i in range(3):
        _session(cast.acme, cast.bob.user, when=DAY + timedelta(minutes=i))
    few = queries_for_page()
    for i in range(40):
        _session(cast.acme, cast.dave.user, when=DAY + timedelta(hours=1, minutes=i))
    assert queries_for_page() == few  # no query per row (users, risk levels are joined or batched)


def test_download_links_carry_the_filters_and_download_what_the_page_shows(cast, history):
    client = login(cast.carol)
    page = client.get(
        "/sessions/?user=bob@acme.test&start_date=2026-11-17&end_date=2026-11-18"
    ).content.decode()
    link = re.search(r'href="(/sessions/export\.csv\?[^"]+)"', page).group(1).replace("&amp;", "&")
    assert link == (
        "/sessions/export.csv?user_email=bob%40acme.test"
        "&start_date=2026-11-17T00%3A00%3A00Z&end_date=2026-11-19T00%3A00%3A00Z"
    )
    download = client.get(link)
    assert download.status_code == 200, download.content
    body = b"".join(download.streaming_content).decode()
    assert str(history["rows"].pk) in body and str(history["blocked"].pk) in body
    assert str(history["command"].pk) not in body and str(history["staging"].pk) not in body
    assert "/audit/export.jsonl" in page
    assert (
        "/audit/export.csv" not in login(cast.bob).get("/sessions/").content.decode()
    )  # members: no audit log


# --- the session page -------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["bob", "alice", "carol"])
def test_owner_admins_and_auditors_read_the_content(cast, history, who):
    response = login(getattr(cast, who)).get(f"/sessions/{history['rows'].pk}/")
    page = response.content.decode()
    assert response.status_code == 200
    assert 'class="highlight"' in page and "customers" in page  # the input, highlighted
    assert "BOB-ROW" in page and "&lt;EMAIL_ADDRESS&gt;" in page  # the masked rows
    assert "Reads customer e-mails" in page and "Check the purpose." in page  # the analysis
    assert "EMAIL_ADDRESS</td>" in page  # masking counts
    assert [e["label"] for e in response.context["timeline"]] == ["Recorded", "Started", "Done", "Analysed"]


@pytest.mark.parametrize("who", ["dave", "eve"])
def test_anyone_else_gets_the_same_not_found_as_for_a_missing_session(cast, history, who):
    client = login(getattr(cast, who))
    target = history["rows"] if who == "dave" else history["blocked"]
    forbidden = client.get(f"/sessions/{target.pk}/")
    missing = client.get("/sessions/7d4b5a40-0000-4000-8000-000000000000/")
    garbage = client.get("/sessions/not-a-uuid/")
    for response in (forbidden, missing, garbage):
        assert response.status_code == 404
        assert "session not found" in response.content.decode()
    assert "BOB-ROW" not in forbidden.content.decode() and "prod-pg" not in forbidden.content.decode()


def test_guardrail_findings_are_for_admins_and_auditors(cast, history):
    path = f"/sessions/{history['blocked'].pk}/"
    own = login(cast.bob).get(path).content.decode()
    assert "no-drops" in own and "DROP TABLE customers" not in own
    assert "shown to admins and auditors" in own
    for person in (cast.alice, cast.carol):
        assert "DROP TABLE customers" in login(person).get(path).content.decode()


def test_content_is_escaped(cast):
    evil = _session(
        cast.acme,
        cast.bob.user,
        kind="command",
        input="echo '<script>alert(1)</script>'",
        output="<img src=x onerror=alert(2)></script>",
        client="<b>agent</b>",
    )
    client = login(cast.bob)
    for path in (f"/sessions/{evil.pk}/", f"/sessions/{evil.pk}/replay/", "/sessions/"):
        page = client.get(path).content.decode()
        assert "<script>alert(1)" not in page and "<img src=x" not in page and "<b>agent</b>" not in page
    # json_script escapes "<" so the stored output cannot close the player's <script> tag
    assert "\\u003C/script\\u003E" in client.get(f"/sessions/{evil.pk}/replay/").content.decode()


def test_large_output_is_paged_by_bytes(cast):
    big = _session(cast.acme, cast.bob.user, kind="command", output="A" * 70_000 + "THE-END")
    client = login(cast.bob)
    first = client.get(f"/sessions/{big.pk}/").content.decode()
    assert "THE-END" not in first and "?offset=65536" in first
    assert "THE-END" in client.get(f"/sessions/{big.pk}/?offset=65536").content.decode()
    for bad in ("-1", "abc", "1e3"):
        response = client.get(f"/sessions/{big.pk}/?offset={bad}")
        assert response.status_code == 400 and "offset must be a whole number" in response.content.decode()


def test_replay_is_for_command_sessions(cast, history):
    client = login(cast.bob)
    response = client.get(f"/sessions/{history['command'].pk}/replay/")
    assert response.status_code == 200
    assert 'id="replay-output"' in response.content.decode() and "drwxr-xr-x" in response.content.decode()
    sql = client.get(f"/sessions/{history['rows'].pk}/replay/", follow=True)
    assert sql.redirect_chain[-1][0] == f"/sessions/{history['rows'].pk}/"
    assert "Replay is for command sessions" in sql.content.decode()
    assert login(cast.dave).get(f"/sessions/{history['command'].pk}/replay/").status_code == 404
    assert login(cast.eve).get(f"/sessions/{history['command'].pk}/replay/").status_code == 404


# --- the dashboard ----------------------------------------------------------------------------------


def _dashboard(person, query="start_date=2026-11-10&end_date=2026-11-23"):
    return login(person).get(f"/dashboard/?{query}")


def test_dashboard_counts_what_the_viewer_may_see(cast, history):
    org = _dashboard(cast.carol)
    assert org.status_code == 200
    kpis = {label: value for label, value, _ in org.context["kpis"]}
    assert kpis == {"Sessions": 4, "Blocked": 1, "Failed": 1, "High or critical risk": 1}
    page = org.content.decode()
    for chart in ("chart-per-day", "chart-attention", "chart-risk", "chart-connections", "chart-users"):
        assert f'id="{chart}"' in page
    assert page.count("<svg") >= 6  # logo + five charts
    assert "2026-11-18: 1 blocked" in page  # a hover title on the right day's column
    assert "dave@acme.test" in page and "eve@globex.test" not in page
    own = _dashboard(cast.bob)
    assert {label: value for label, value, _ in own.context["kpis"]}["Sessions"] == 3
    assert "dave@acme.test" not in own.content.decode()


def test_dashboard_defaults_to_the_last_two_weeks(cast):
    _session(cast.acme, cast.bob.user, when=datetime.now(UTC) - timedelta(days=1))
    _session(cast.acme, cast.bob.user, when=datetime.now(UTC) - timedelta(days=40))
    response = login(cast.bob).get("/dashboard/")
    assert response.status_code == 200 and response.context["total"] == 1


@pytest.mark.parametrize(
    "query, message",
    [
        ("start_date=2026-02-30", "Enter a date"),
        ("start_date=2026-01-01&end_date=2026-11-01", f"at most {STATS_MAX_DAYS} days"),
        ("start_date=2025-11-01&end_date=2026-11-20", f"at most {STATS_MAX_DAYS} days"),
        ("start_date=2026-11-20&end_date=2026-11-01", "The end must come after the start."),
        ("end_date=tomorrow", "Enter a date"),
    ],
)
def test_dashboard_bad_range_gets_a_clear_400(cast, query, message):
    response = _dashboard(cast.alice, query)
    assert response.status_code == 400 and message in response.content.decode()


# --- connect your agent -----------------------------------------------------------------------------


def test_connect_page_shows_the_mcp_url_and_client_configs(cast, settings):
    settings.PUBLIC_BASE_URL = "https://gw.example.test"
    page = login(cast.bob).get("/connect/").content.decode()
    assert "https://gw.example.test/api/mcp" in page
    assert "claude mcp add --transport http portcullis https://gw.example.test/api/mcp" in page
    assert "&quot;mcpServers&quot;" in page


def test_issuing_a_token_shows_it_once_and_audits_it(cast):
    client = login(cast.bob)
    response = client.post(
        "/connect/", {"name": "laptop agent", "expires_days": "30", "capability": "read_only"}
    )
    assert response.status_code == 200 and response["Cache-Control"].startswith("max-age=0")
    raw = response.context["new_token"]
    assert raw.startswith("pcu_") and raw in response.content.decode()
    assert f"Bearer {raw}" in response.content.decode()  # the configs carry it, ready to paste
    user, token = token_authenticate(raw)
    assert user == cast.bob.user and token.name == "laptop agent" and token.expires_at is not None
    assert token.capability == "read_only"
    event = AuditEvent.objects.filter(action="token.issue", target_id=str(token.pk)).get()
    assert (event.actor_email, event.surface) == ("bob@acme.test", "web")
    again = client.get("/connect/").content.decode()
    assert raw not in again and token.prefix in again


def test_bad_token_requests_get_a_clear_400(cast):
    client = login(cast.bob)
    for data in (
        {"name": "", "expires_days": "30"},
        {"name": "x", "expires_days": "7"},
        {"name": "y" * 101},
        {"name": "z", "capability": "root"},
    ):
        response = client.post("/connect/", data)
        assert response.status_code == 400 and response.context["new_token"] is None
    assert not ApiToken.objects.filter(user=cast.bob.user).exclude(name="pytest").exists()


def test_people_revoke_their_own_tokens_only(cast):
    _, bobs_raw = token_issue(user=cast.bob.user, name="bob-agent")
    bobs = ApiToken.objects.get(user=cast.bob.user, name="bob-agent")
    eves = ApiToken.objects.get(user=cast.eve.user)
    alices = ApiToken.objects.get(user=cast.alice.user)
    bob = login(cast.bob)
    for other in (eves, alices):  # another org's, and an admin's of the same org
        response = bob.post(f"/connect/tokens/{other.pk}/revoke/")
        assert response.status_code == 404 and "token not found" in response.content.decode()
    assert token_authenticate(cast.eve.token) is not None and token_authenticate(cast.alice.token) is not None
    assert login(cast.alice).post(f"/connect/tokens/{bobs.pk}/revoke/").status_code == 404  # admins too
    assert bob.post("/connect/tokens/nope/revoke/").status_code == 404
    assert bob.get(f"/connect/tokens/{bobs.pk}/revoke/").status_code == 405
    response = bob.post(f"/connect/tokens/{bobs.pk}/revoke/", follow=True)
    assert "is revoked" in response.content.decode()
    assert token_authenticate(bobs_raw) is None
    assert (
        AuditEvent.objects.filter(action="token.revoke", target_id=str(bobs.pk), surface="web").count() == 1
    )


def test_state_changes_need_a_csrf_token(cast):
    client = Client(enforce_csrf_checks=True)
    client.force_login(cast.bob.user)
    token = ApiToken.objects.get(user=cast.bob.user)
    assert client.post(f"/connect/tokens/{token.pk}/revoke/").status_code == 403
    assert client.post("/connect/", {"name": "csrf"}).status_code == 403
    assert token_authenticate(cast.bob.token) is not None


def test_unknown_pages_get_the_styled_404(cast):
    response = login(cast.bob).get("/no-such-page/")
    assert response.status_code == 404 and "There is no page at this address." in response.content.decode()


def test_a_huge_input_is_shown_plain_and_escaped(cast):
    huge = _session(cast.acme, cast.bob.user, input="select '<b>x</b>' " + "-- pad\n" * 20_000)
    page = login(cast.bob).get(f"/sessions/{huge.pk}/").content.decode()
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page


def test_a_reviewer_sees_the_record_but_not_the_content(cast, history):
    """The policy lets the reviewer groups of a session's review see its record (`view`), never its
    content (`view_content`): the page shows the metadata and says why the rest is hidden."""
    from django.utils import timezone

    from governance.models import UserGroup
    from reviews.models import Review

    review = Review.objects.create(
        org=cast.acme,
        type="onetime",
        status="PENDING",
        session=history["blocked"],
        requester=cast.bob.user,
        connection_name="prod-pg",
        input="drop table customers",
        expires_at=timezone.now() + timedelta(hours=1),
    )
    reviewers = UserGroup.objects.create(org=cast.acme, name="dba")
    reviewers.members.add(cast.dave.user)
    review.eligible_groups.add(reviewers)
    dave = login(cast.dave)
    assert str(history["blocked"].pk) in ids(dave.get("/sessions/"))
    response = dave.get(f"/sessions/{history['blocked'].pk}/")
    page = response.content.decode()
    assert response.status_code == 200 and response.context["content_hidden"]
    assert 'id="content-hidden"' in page and "drop table customers" not in page
    assert "Drops a table" not in page  # nor the analysis
    rows = dave.get("/sessions/").context["risks"]
    assert str(history["blocked"].pk) not in rows  # nor its risk level in the list
    assert dave.get(f"/sessions/{history['rows'].pk}/").status_code == 404  # not under review: nothing
