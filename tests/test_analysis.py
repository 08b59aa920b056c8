"""AI risk analysis: the built-in analyzer over a corpus, the LLM analyzer against a local stand-in
of the chat-completions API, storing (once), the sweep, and the MCP tools end to end on the live
gateway with a real Celery worker."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from gateway import pipeline
from gateway.services import connection_create_headless
from sessions import analysis as analyzer
from sessions.models import Analysis, Session, SessionStatus
from sessions.services import analysis_run, analysis_sweep_missing
from tests.conftest import celery_worker_process, error_text, structured

NOON = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def _session(cast, kind: str, text: str, *, status=SessionStatus.DONE, **fields) -> Session:
    values = dict(
        org=cast.acme,
        user=cast.bob.user,
        connection_name="target",
        connection_kind=kind,
        surface="mcp",
        input=text,
        input_sha256="x",
        status=status,
        created_at=NOON,
        started_at=None if status == SessionStatus.BLOCKED else NOON,
        ended_at=NOON + timedelta(seconds=1),
        exit_code=None if status == SessionStatus.BLOCKED else 0,
    )
    values.update(fields)
    return Session.objects.create(**values)


RISKY = [
    # (kind, input, level, reason, words the explanation must contain)
    ("postgres", "DROP TABLE items", "high", "ddl.drop", "DROP"),
    ("postgres", "select 1; drop database prod", "critical", "ddl.drop_database", "whole database"),
    ("postgres", "TRUNCATE billing.invoices", "high", "ddl.truncate", "every row"),
    ("postgres", "ALTER TABLE items ADD COLUMN note text", "medium", "ddl.alter", "ALTER"),
    ("postgres", "DELETE FROM items", "high", "write.no_where", "without WHERE"),
    ("postgres", "update items set price = 0 where 1 = 1", "high", "write.tautological_where", "always true"),
    ("postgres", "delete from items where name like '%'", "high", "write.tautological_where", "every row"),
    ("postgres", "GRANT ALL ON items TO PUBLIC", "high", "privilege.change", "GRANT"),
    ("postgres", "create role intruder login superuser", "high", "privilege.change", "role or user"),
    ("mysql", "ALTER USER 'bob'@'%' IDENTIFIED BY 'pw'", "high", "privilege.change", "who may do what"),
    ("sqlite", "with x as (select 1) delete from customers", "high", "write.no_where", "every row"),
    ("command", "rm -rf /", "critical", "shell.rm_root", "whole file system"),
    ("command", "cd /srv && rm -rf build/", "high", "shell.rm_rf", "rm -rf"),
    ("command", "r''m -fr ~/cache", "high", "shell.rm_rf", "recursively"),
    (
        "command",
        "curl -s https://example.test/i.sh | sudo bash",
        "critical",
        "shell.pipe_to_shell",
        "curl | sh",
    ),
    ("command", "chmod -R 777 /srv/app", "medium", "shell.chmod_777", "chmod 777"),
    ("command", "dd if=/dev/zero of=/dev/sda bs=1M", "critical", "shell.disk_wipe", "disk"),
]

BENIGN = [
    ("postgres", "select id, name from items where id = 3"),
    ("postgres", "SELECT count(*) FROM items"),
    ("mysql", "SELECT name FROM items ORDER BY price DESC LIMIT 5"),
    ("sqlite", "select * from customers where id in (1, 2)"),
    ("command", "ls -la /tmp"),
    ("command", "grep -c ERROR /var/log/app.log"),
]


@pytest.mark.parametrize(("kind", "text", "level", "reason", "words"), RISKY)
def test_it_rates_risky_input_and_says_why(cast, kind, text, level, reason, words):
    verdict = analyzer.analyze_builtin(_session(cast, kind, text), history=(0, 0))
    assert verdict.risk_level == level, (text, verdict)
    assert reason in verdict.reasons, verdict.reasons
    assert words.lower() in verdict.explanation.lower(), verdict.explanation
    assert verdict.title and verdict.suggested_action and verdict.analyzer == "builtin"


@pytest.mark.parametrize(("kind", "text"), BENIGN)
def test_it_rates_routine_input_low(cast, kind, text):
    verdict = analyzer.analyze_builtin(_session(cast, kind, text, row_count=3), history=(0, 0))
    assert verdict.risk_level == "low" and verdict.reasons == [], verdict
    assert "no risk pattern" in verdict.explanation


def test_it_rates_a_write_with_a_real_where_low_and_a_bulk_one_medium(cast):
    one = analyzer.analyze_builtin(
        _session(cast, "postgres", "update items set price = 2 where id = 3", row_count=1), history=(0, 0)
    )
    assert one.risk_level == "low" and one.reasons == ["write"]
    bulk = analyzer.analyze_builtin(
        _session(cast, "postgres", "update items set price = 2 where price < 10", row_count=5000),
        history=(0, 0),
    )
    assert bulk.risk_level == "medium" and "write.bulk" in bulk.reasons and "5000 rows" in bulk.explanation


def test_it_flags_bulk_reads_of_masked_data_and_large_exports(cast):
    masked = _session(
        cast,
        "postgres",
        "select * from customers",
        row_count=500,
        masking={"rules": ["pii"], "counts": {"EMAIL_ADDRESS": 500}},
    )
    verdict = analyzer.analyze_builtin(masked, history=(0, 0))
    assert verdict.risk_level == "medium" and "masked.bulk_read" in verdict.reasons
    assert "500 value(s) were masked" in verdict.explanation

    few = _session(cast, "postgres", "select * from customers", row_count=3, masking={"counts": {"EMAIL": 3}})
    assert analyzer.analyze_builtin(few, history=(0, 0)).risk_level == "low"

    large = analyzer.analyze_builtin(
        _session(cast, "postgres", "select * from events", row_count=20_000), history=(0, 0)
    )
    assert (
        large.risk_level == "medium"
        and "export.large" in large.reasons
        and "20000 row(s)" in large.explanation
    )
    huge = analyzer.analyze_builtin(
        _session(cast, "postgres", "select * from events", row_count=200_000), history=(0, 0)
    )
    assert huge.risk_level == "high"


def test_it_explains_blocked_and_failed_sessions(cast):
    findings = [{"rule": "no-ddl", "direction": "input", "condition": "sql.deny_statements"}]
    blocked_drop = analyzer.analyze_builtin(
        _session(
            cast, "postgres", "drop table items", status=SessionStatus.BLOCKED, guardrail_findings=findings
        ),
        history=(0, 0),
    )
    assert blocked_drop.risk_level == "high"
    assert {"ddl.drop", "blocked"} <= set(blocked_drop.reasons)
    assert "no-ddl" in blocked_drop.explanation and "Nothing ran" in blocked_drop.explanation

    blocked_select = analyzer.analyze_builtin(
        _session(cast, "postgres", "select 1", status=SessionStatus.BLOCKED, guardrail_findings=findings),
        history=(0, 0),
    )
    assert blocked_select.risk_level == "medium" and blocked_select.reasons == ["blocked"]
    assert "before it ran" in blocked_select.explanation

    failed = analyzer.analyze_builtin(
        _session(
            cast,
            "postgres",
            "select * from nope",
            status=SessionStatus.FAILED,
            exit_code=1,
            error='relation "nope" does not exist',
        ),
        history=(0, 0),
    )
    assert (
        failed.risk_level == "low" and failed.reasons == ["failed"] and "does not exist" in failed.explanation
    )

    unparsed = analyzer.analyze_builtin(_session(cast, "postgres", "selec x from y"), history=(0, 0))
    assert unparsed.risk_level == "medium" and "sql.unparsed" in unparsed.reasons


def test_it_notices_an_unusual_hour_for_this_user_in_one_query(cast, django_assert_num_queries):
    for day in range(25):  # bob works around 10:00 UTC
        _session(cast, "postgres", "select 1", created_at=NOON - timedelta(days=day + 1, hours=2))
    night = _session(cast, "postgres", "select 1", created_at=NOON.replace(hour=3))
    with django_assert_num_queries(1):
        verdict = analyzer.analyze_builtin(night)
    assert verdict.risk_level == "medium" and verdict.reasons == ["time.unusual_hour"]
    assert "03:00 UTC" in verdict.explanation and "25 sessions" in verdict.explanation

    usual = _session(cast, "postgres", "select 1", created_at=NOON.replace(hour=10, minute=30))
    assert analyzer.analyze_builtin(usual).risk_level == "low"
    # a new user has no usual hours yet
    newcomer = _session(cast, "postgres", "select 1", user=cast.dave.user, created_at=NOON.replace(hour=3))
    assert analyzer.analyze_builtin(newcomer).risk_level == "low"


def test_it_stores_one_analysis_per_session_however_often_it_runs(cast):
    session = _session(cast, "postgres", "DROP TABLE items")
    first = analysis_run(session_id=session.pk)
    second = analysis_run(session_id=session.pk)
    assert first.pk == second.pk and Analysis.objects.filter(session=session).count() == 1
    assert first.risk_level == "high" and first.analyzer == "builtin" and first.fallback_reason == ""
    # unfinished and missing sessions are left alone
    running = _session(cast, "postgres", "select 1", status=SessionStatus.RUNNING)
    assert analysis_run(session_id=running.pk) is None
    assert analysis_run(session_id="00000000-0000-0000-0000-000000000000") is None


def test_it_settles_a_race_between_two_workers_on_the_unique_constraint(cast, monkeypatch):
    session = _session(cast, "postgres", "select 1")
    real = analyzer.analyze

    def slow_and_overtaken(s, **options):
        verdict = real(s, **options)
        # another worker stores its analysis while this one was thinking
        Analysis.objects.create(session=s, risk_level="low", title="other", explanation="x", analyzer="other")
        return verdict

    monkeypatch.setattr(analyzer, "analyze", slow_and_overtaken)
    stored = analysis_run(session_id=session.pk)
    assert stored.title == "other" and Analysis.objects.filter(session=session).count() == 1


def test_the_sweep_analyses_sessions_whose_task_was_lost(cast):
    now = timezone.now()
    lost = _session(
        cast,
        "postgres",
        "select 1",
        created_at=now - timedelta(minutes=10),
        ended_at=now - timedelta(minutes=9),
    )
    fresh = _session(cast, "postgres", "select 1", created_at=now, ended_at=now)  # its task may still come
    running = _session(
        cast,
        "postgres",
        "select 1",
        status=SessionStatus.RUNNING,
        created_at=now - timedelta(minutes=10),
        ended_at=None,
    )
    assert analysis_sweep_missing(now=now) == 1
    assert Analysis.objects.filter(session=lost).exists()
    assert not Analysis.objects.filter(session__in=[fresh, running]).exists()
    assert analysis_sweep_missing(now=now) == 0


# --- the LLM analyzer against a local stand-in of the chat-completions API ----------------------------


class StandIn:
    """POST /v1/chat/completions on 127.0.0.1; `behaviour` picks the answer."""

    def __init__(self):
        self.behaviour = "good"
        self.requests: list[dict] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stand_in.requests.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), **body}
                )
                status, content = stand_in.answer()
                if status == "sleep":
                    time.sleep(3)
                    status = 200
                payload = json.dumps(
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "model": body.get("model"),
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {"role": "assistant", "content": content},
                            }
                        ],
                    }
                ).encode()
                if status != 200:
                    payload = b'{"error": {"message": "boom"}}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self):
        good = {
            "risk_level": "high",
            "title": "Table dropped in production",
            "explanation": "The user dropped the items table.",
            "suggested_action": "Restore from backup and ask the user why.",
        }
        return {
            "good": (200, json.dumps(good)),
            "low": (200, json.dumps(dict(good, risk_level="low", title="Harmless"))),
            "garbage": (200, "Sure! The risk is high, because tables were dropped."),
            "wrong_schema": (200, json.dumps(dict(good, risk_level="severe", extra="x"))),
            "http_500": (500, ""),
            "timeout": ("sleep", json.dumps(good)),
        }[self.behaviour]


@pytest.fixture
def stand_in(settings):
    server = StandIn()
    settings.ANALYZER_URL = server.url
    settings.ANALYZER_MODEL = "test-model"
    settings.ANALYZER_KEY = "sk-test"
    settings.ANALYZER_TIMEOUT_SECONDS = 1
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_it_uses_a_good_llm_answer(cast, stand_in):
    session = _session(cast, "postgres", "drop table items; select 1")
    stored = analysis_run(session_id=session.pk)
    assert stored.analyzer == "llm:test-model" and stored.fallback_reason == ""
    assert stored.risk_level == "high" and stored.title == "Table dropped in production"
    assert stored.suggested_action.startswith("Restore")
    request = stand_in.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    assert request["model"] == "test-model" and request["messages"][0]["role"] == "system"
    summary = json.loads(request["messages"][1]["content"])
    assert summary["connection_kind"] == "postgres" and "ddl.drop" in summary["rule_based_findings"]


def test_the_llm_never_rates_below_the_builtin_analyzer(cast, stand_in):
    stand_in.behaviour = "low"
    verdict = analyzer.analyze(_session(cast, "postgres", "DROP TABLE items"))
    assert verdict.analyzer == "llm:test-model" and verdict.risk_level == "high"
    assert "floor.builtin" in verdict.reasons


@pytest.mark.parametrize(
    ("behaviour", "why"),
    [
        ("garbage", "not the JSON object"),
        ("wrong_schema", "does not match the schema"),
        ("http_500", "HTTP 500"),
        ("timeout", "timed out after 1 s"),
    ],
)
def test_it_falls_back_to_the_builtin_analyzer_when_the_llm_fails(cast, stand_in, behaviour, why):
    stand_in.behaviour = behaviour
    session = _session(cast, "postgres", "DELETE FROM items")
    started = time.monotonic()
    stored = analysis_run(session_id=session.pk)
    assert time.monotonic() - started < 2.5
    assert stored.analyzer == "builtin" and stored.risk_level == "high"
    assert "write.no_where" in stored.reasons
    assert stored.fallback_reason.startswith("LLM analyzer failed") and why in stored.fallback_reason


def test_it_falls_back_when_the_llm_is_unreachable(cast, settings):
    settings.ANALYZER_URL = "http://127.0.0.1:9/v1"  # discard port: nothing listens
    settings.ANALYZER_MODEL = "m"
    stored = analysis_run(session_id=_session(cast, "postgres", "select 1").pk)
    assert stored.analyzer == "builtin" and "request failed" in stored.fallback_reason


# --- embedded mode: analysed in the background after commit ----------------------------------------


def _until(predicate, seconds: float = 15):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_embedded_mode_analyses_after_commit_without_delaying_or_breaking_the_exec(
    cast, shops, transactional_db, settings, monkeypatch
):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    session = pipeline.exec_start(
        actor=cast.bob.actor(), connection_name="shop", input="delete from customers"
    )
    stored = _until(lambda: Analysis.objects.filter(session_id=session.pk).first())
    assert Session.objects.get(pk=session.pk).status == SessionStatus.DONE
    assert stored.risk_level == "high" and "write.no_where" in stored.reasons

    def broken(s, **options):
        raise RuntimeError("analyzer bug")

    monkeypatch.setattr(analyzer, "analyze", broken)
    session = pipeline.exec_start(actor=cast.bob.actor(), connection_name="shop", input="select 1")
    _until(lambda: Session.objects.get(pk=session.pk).is_final)
    assert Session.objects.get(pk=session.pk).status == SessionStatus.DONE
    time.sleep(0.3)
    assert not Analysis.objects.filter(session_id=session.pk).exists()  # the sweep will make it later


# --- end to end over MCP on the live gateway, with a real Celery worker -----------------------------


@pytest.fixture
def celery_worker(cast, tmp_path_factory):
    """A `celery worker` on the default queue, as in production (docker-compose's `worker`)."""
    queue = django_settings.CELERY_TASK_DEFAULT_QUEUE
    with celery_worker_process(queue, tmp_path_factory.mktemp("analysis"), purge=True) as process:
        yield process


@pytest.fixture
def pg(cast, pg_target):
    return connection_create_headless(
        org=cast.acme, name="pg", kind="postgres", settings=pg_target, options={}
    )


@pytest.mark.live
def test_every_session_gets_an_analysis_over_mcp(cast, pg, shops, celery_worker, mcp):
    bob = mcp(cast.bob)
    envelope = structured(bob.call("exec", {"connection_name": "pg", "input": "select count(*) from items"}))
    assert envelope["status"] == "completed"
    ready = structured(
        bob.call("sessions_get_analysis", {"id": envelope["session_id"], "timeout_seconds": 30})
    )
    assert ready["status"] == "ready" and ready["timed_out"] is False
    assert ready["risk_level"] == "low" and ready["analyzer"] == "builtin" and ready["reasons"] == []
    assert ready["session_id"] == envelope["session_id"] and ready["waited_seconds"] < 30

    # a risky write (that changes no value), a blocked attempt and a failure get theirs too
    structured(
        mcp(cast.alice).call(
            "guardrails_create",
            {"name": "no-drop", "input": {"sql": {"deny_statements": ["drop"]}}, "connections": ["pg"]},
        )
    )
    cases = [
        ("update items set price = price where 1 = 1", "completed", "high", "write.tautological_where"),
        ("drop table items", "blocked", "high", "blocked"),
        ("select * from no_such_table", "failed", "low", "failed"),
    ]
    for text, status, level, reason in cases:
        envelope = structured(bob.call("exec", {"connection_name": "pg", "input": text}))
        assert envelope["status"] == status, envelope
        got = structured(
            bob.call("sessions_get_analysis", {"id": envelope["session_id"], "timeout_seconds": 30})
        )
        assert got["status"] == "ready" and got["risk_level"] == level and reason in got["reasons"], got
        again = structured(bob.call("sessions_get_analysis", {"id": envelope["session_id"]}))
        assert got == {**again, "waited_seconds": got["waited_seconds"]} and again["timed_out"] is False

    # the exec envelope carries the analysis once it is ready
    waited = structured(
        bob.call("sessions_wait", {"session_id": envelope["session_id"], "timeout_seconds": 5})
    )
    assert waited["analysis"]["risk_level"] == "low" and waited["analysis"]["analyzer"] == "builtin"

    # schema listings are sessions too
    structured(bob.call("connection_tables", {"connection_name": "shop"}))
    schema = Session.objects.filter(verb="schema", user=cast.bob.user).latest("created_at")
    assert (
        structured(bob.call("sessions_get_analysis", {"id": str(schema.pk), "timeout_seconds": 30}))["status"]
        == "ready"
    )


@pytest.mark.live
def test_waiting_for_an_analysis_always_ends_and_reports_progress(cast, pg, celery_worker, mcp):
    bob = mcp(cast.bob)
    envelope = structured(bob.call("exec", {"connection_name": "pg", "input": "select pg_sleep(12), 1"}))
    assert envelope["status"] == "running"
    progress = []

    async def on_progress(value, total, message):
        progress.append((value, total, message))

    pending = structured(
        bob.call(
            "sessions_get_analysis",
            {"id": envelope["session_id"], "timeout_seconds": 2.5},
            progress=on_progress,
        )
    )
    assert pending["status"] == "pending" and pending["timed_out"] is True and pending["risk_level"] is None
    assert 2.5 <= pending["waited_seconds"] < 10
    assert progress and all(total == 2.5 for _, total, _ in progress)
    assert (
        structured(bob.call("sessions_get_analysis", {"id": envelope["session_id"]}))["status"] == "pending"
    )
    ready = structured(
        bob.call("sessions_get_analysis", {"id": envelope["session_id"], "timeout_seconds": 30})
    )
    assert ready["status"] == "ready" and ready["timed_out"] is False


@pytest.mark.live
def test_only_the_owner_admins_and_auditors_see_an_analysis(cast, shops, mcp):
    envelope = structured(mcp(cast.bob).call("exec", {"connection_name": "shop", "input": "select 1"}))
    analysis_run(session_id=envelope["session_id"])
    for reader in (cast.bob, cast.alice, cast.carol):
        assert (
            structured(mcp(reader).call("sessions_get_analysis", {"id": envelope["session_id"]}))["status"]
            == "ready"
        )
    for outsider in (cast.dave, cast.eve):
        for tool, args in (
            ("sessions_get_analysis", {"id": envelope["session_id"]}),
            ("sessions_get_analysis", {"id": envelope["session_id"], "timeout_seconds": 1}),
        ):
            assert error_text(mcp(outsider).call(tool, args)) == "session not found"
    assert (
        error_text(mcp(cast.bob).call("sessions_get_analysis", {"id": "not-a-uuid"})) == "session not found"
    )
