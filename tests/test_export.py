"""Exports: streamed in bounded memory, the same visibility as the lists (per role, across orgs),
safe CSV, clear errors for bad filters, audited; and audit chain heads kept outside the database
catch a rewritten tail that the chain alone no longer can."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import time
import tracemalloc
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import sync_to_async
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import AsyncClient

from governance.errors import InvalidInput, PolicyDenied
from sessions.audit import audit_record, event_digest
from sessions.export import audit_events_export, csv_cell, sessions_export
from sessions.models import Analysis, AuditChainHead, AuditEvent, Session

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _session(person, n=0, org=None, **fields):
    text = fields.pop("input", f"select {n}")
    values = dict(
        org_id=(org or person.user.org).pk,
        user=person.user,
        connection_name="shop",
        connection_kind="sqlite",
        surface="mcp",
        client="pytest",
        verb="exec",
        status="done",
        input=text,
        input_sha256=hashlib.sha256(text.encode()).hexdigest(),
        input_bytes=len(text),
        exit_code=0,
        created_at=T0 + timedelta(seconds=n),
    )
    values.update(fields)
    return Session(**values)


def _lines(export) -> list[str]:
    return "".join(export.chunks).splitlines()


def _jsonl(export) -> list[dict]:
    return [json.loads(line) for line in _lines(export)]


def _csv(export) -> list[dict]:
    return list(csv.DictReader(io.StringIO("".join(export.chunks))))


@pytest.fixture
def some(cast):
    """Two sessions of bob, one of dave, one of alice in acme; one of eve in globex."""
    rows = [
        _session(cast.bob, 1, input="select secret from bob"),
        _session(cast.bob, 2, status="blocked", guardrail_findings=[{"rule": "no-drop"}]),
        _session(cast.dave, 3),
        _session(cast.alice, 4),
        _session(cast.eve, 5, connection_name="globex-db"),
    ]
    Session.objects.bulk_create(rows)
    Analysis.objects.create(session=rows[0], risk_level="high", title="Reads a secret", explanation="x")
    return rows


def test_it_exports_100k_sessions_in_bounded_memory(cast):
    """Peak Python memory while streaming 100,000 sessions stays under 16 MB; holding them (as a
    list of rows or of model instances) would take several hundred."""
    began = time.monotonic()
    batch = 5000
    for start in range(0, 100_000, batch):
        Session.objects.bulk_create(
            [_session(cast.alice, n) for n in range(start, start + batch)], batch_size=batch
        )
    inserted = time.monotonic()
    tracemalloc.start()
    try:
        export = sessions_export(actor=cast.alice.actor("cli"), format="jsonl")
        count, first, last, size = 0, None, None, 0
        for chunk in export.chunks:
            size += len(chunk)
            for line in chunk.splitlines():
                count += 1
                if first is None:
                    first = line
                last = line
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(  # figures for the report, not assertions
        f"\n100k sessions: inserted in {inserted - began:.1f} s, exported (under tracemalloc) in "
        f"{time.monotonic() - inserted:.1f} s: {size / 1e6:.1f} MB of JSON Lines, peak traced memory {peak / 1e6:.1f} MB"
    )
    assert count == 100_000
    assert json.loads(first)["input"] == "select 0" and json.loads(last)["input"] == "select 99999"
    assert peak < 16 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
    assert size > 30 * 1024 * 1024  # the output alone is bigger than the bound: it was streamed


def test_pages_follow_the_keyset_with_equal_timestamps(cast, monkeypatch):
    from sessions import export as export_module

    monkeypatch.setattr(export_module, "PAGE_SIZE", 3)
    Session.objects.bulk_create([_session(cast.alice, 0) for _ in range(7)] + [_session(cast.alice, 1)])
    rows = _jsonl(sessions_export(actor=cast.alice.actor(), format="jsonl"))
    assert len(rows) == 8 and len({r["id"] for r in rows}) == 8


def test_session_exports_follow_the_roles_and_never_cross_orgs(cast, some):
    def ids(person):
        return {r["id"] for r in _jsonl(sessions_export(actor=person.actor("web"), format="jsonl"))}

    acme = {str(s.pk) for s in some[:4]}
    assert ids(cast.alice) == acme  # admin: the org's
    assert ids(cast.carol) == acme  # auditor: the org's
    assert ids(cast.bob) == {str(some[0].pk), str(some[1].pk)}  # standard: own
    assert ids(cast.dave) == {str(some[2].pk)}
    assert ids(cast.eve) == {str(some[4].pk)}  # the other org: its own only


def test_session_rows_carry_analysis_guardrails_and_the_review_slot(cast, some):
    rows = {r["id"]: r for r in _jsonl(sessions_export(actor=cast.carol.actor(), format="jsonl"))}
    first = rows[str(some[0].pk)]
    assert (first["risk_level"], first["analysis_title"], first["user_email"]) == (
        "high",
        "Reads a secret",
        "bob@acme.test",
    )
    assert first["input"] == "select secret from bob"
    assert rows[str(some[1].pk)]["guardrails"] == ["no-drop"]
    assert "review_status" in first and first["review_status"] is None


def test_session_rows_carry_the_review_outcome(cast, some):
    from django.utils import timezone

    from reviews.models import Review

    review = Review.objects.create(
        org=cast.acme,
        type="onetime",
        status="REJECTED",
        session=some[2],
        requester=cast.dave.user,
        connection_name="shop",
        input="select 3",
        expires_at=timezone.now() + timedelta(hours=1),
    )
    rows = {r["id"]: r for r in _csv(sessions_export(actor=cast.alice.actor(), format="csv"))}
    assert (rows[str(some[2].pk)]["review_id"], rows[str(some[2].pk)]["review_status"]) == (
        str(review.pk),
        "REJECTED",
    )
    assert rows[str(some[3].pk)]["review_status"] == ""


def test_filters_are_those_of_sessions_list_and_bad_ones_are_clear_errors(cast, some):
    rows = _jsonl(sessions_export(actor=cast.alice.actor(), format="jsonl", status="blocked"))
    assert [r["id"] for r in rows] == [str(some[1].pk)]
    rows = _jsonl(sessions_export(actor=cast.alice.actor(), format="jsonl", user_email="DAVE@acme.test"))
    assert [r["id"] for r in rows] == [str(some[2].pk)]
    rows = _jsonl(
        sessions_export(
            actor=cast.alice.actor(),
            format="jsonl",
            start_date="2026-03-02T09:00:02Z",
            end_date="2026-03-02T09:00:04Z",
        )
    )
    assert [r["id"] for r in rows] == [str(some[1].pk), str(some[2].pk)]
    audited = AuditEvent.objects.filter(action="sessions.export").count()
    for bad, message in [
        ({"format": "xlsx"}, "unknown format"),
        ({"format": "csv", "status": "exploded"}, "unknown status"),
        ({"format": "csv", "start_date": "last tuesday"}, "RFC 3339"),
        ({"format": "csv", "end_date": "2026-01-01T00:00:00"}, "time zone"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            sessions_export(actor=cast.alice.actor(), **bad)
    assert AuditEvent.objects.filter(action="sessions.export").count() == audited  # refused before audit


def test_the_export_itself_is_audited_with_its_filters(cast, some):
    sessions_export(actor=cast.carol.actor("web"), format="csv", status="done", connection="shop")
    event = AuditEvent.objects.get(action="sessions.export")
    assert (event.org_id, event.actor_email, event.surface) == (cast.acme.pk, "carol@acme.test", "web")
    assert event.detail == {"format": "csv", "filters": {"status": "done", "connection": "shop"}}


def test_csv_cells_cannot_become_formulas(cast):
    Session.objects.bulk_create(
        [
            _session(
                cast.alice,
                1,
                input='=HYPERLINK("http://evil.test","x")',
                client="@SUM(1+1)",
                error="+cmd|' /C calc'!A0",
            ),
            _session(cast.alice, 2, input="-2+3", client="\tTAB", error="plain", exit_code=-1),
        ]
    )
    rows = _csv(sessions_export(actor=cast.alice.actor(), format="csv"))
    assert rows[0]["input"] == '\'=HYPERLINK("http://evil.test","x")'
    assert rows[0]["client"] == "'@SUM(1+1)" and rows[0]["error"].startswith("'+cmd")
    assert rows[1]["input"] == "'-2+3" and rows[1]["client"] == "'\tTAB" and rows[1]["error"] == "plain"
    assert rows[1]["exit_code"] == "-1"  # numbers stay numbers
    assert csv_cell(None) == "" and csv_cell(["a"]) == '["a"]' and csv_cell({"=": 1}) == '{"=": 1}'
    assert csv_cell(True) == "true" and csv_cell("ok=1") == "ok=1"


def test_audit_exports_are_for_admins_and_auditors_of_their_org(cast):
    audit_record(actor=cast.alice.actor(), action="test.acme", detail={"n": 1})
    audit_record(actor=cast.eve.actor(), action="test.globex", detail={"n": 2})
    for person in (cast.bob, cast.dave):
        with pytest.raises(PolicyDenied):
            audit_events_export(actor=person.actor(), format="jsonl")
    rows = _jsonl(audit_events_export(actor=cast.carol.actor(), format="jsonl", action="test."))
    assert [r["action"] for r in rows] == ["test.acme"]
    rows = _jsonl(audit_events_export(actor=cast.eve.actor(), format="jsonl"))
    assert "test.acme" not in {r["action"] for r in rows} and "test.globex" in {r["action"] for r in rows}
    # The rows carry their hashes: the file can be checked against the chain.
    acme = _jsonl(audit_events_export(actor=cast.alice.actor(), format="jsonl"))
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(acme, acme[1:], strict=False))


# --- the web downloads ---------------------------------------------------------------------------


def test_web_downloads_need_a_login_and_follow_the_roles(cast, some, client):
    assert client.get("/sessions/export.csv").status_code == 302
    assert client.get("/sessions/export.csv")["Location"].startswith("/login/")
    client.force_login(cast.bob.user)
    response = client.get("/sessions/export.csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert 'filename="sessions.csv"' in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert {r["id"] for r in rows} == {str(some[0].pk), str(some[1].pk)}
    assert client.get("/audit/export.jsonl").status_code == 403
    response = client.get("/sessions/export.jsonl?status=exploded")
    assert response.status_code == 400 and b"unknown status" in response.content
    response = client.get("/sessions/export.jsonl?stauts=done")
    assert (
        response.status_code == 400
        and b"unknown filter" in response.content
        and b"stauts" in response.content
    )
    assert client.post("/sessions/export.csv").status_code == 405
    client.force_login(cast.eve.user)
    rows = [
        json.loads(x) for x in b"".join(client.get("/sessions/export.jsonl").streaming_content).splitlines()
    ]
    assert [r["id"] for r in rows] == [str(some[4].pk)]


def test_web_downloads_stream_under_asgi(cast, transactional_db):
    """Under ASGI (what daphne serves) the body is an async iterator pulled chunk by chunk."""
    Session.objects.bulk_create([_session(cast.carol, n) for n in range(450)])

    async def download():
        client = AsyncClient()
        await client.aforce_login(cast.carol.user)
        response = await client.get("/audit/export.csv?action=sessions.export")
        assert response.status_code == 200  # nothing exported yet: a header only
        response = await client.get("/sessions/export.jsonl")
        assert response.is_async
        chunks = [chunk async for chunk in response.streaming_content]
        await sync_to_async(response.close, thread_sensitive=True)()  # as the ASGI handler does
        return chunks

    chunks = asyncio.run(download())
    lines = b"".join(chunks).splitlines()
    assert len(lines) == 450 and len(chunks) >= 3  # 200 rows a chunk
    assert (
        AuditEvent.objects.filter(
            action="sessions.export", surface="web", actor_email="carol@acme.test"
        ).count()
        == 1
    )


# --- the CLI -------------------------------------------------------------------------------------


def test_the_cli_exports_an_org_as_the_system_and_is_audited(cast, some, tmp_path):
    out = tmp_path / "sessions.csv"
    call_command("sessions_export", org="acme", since="2026-03-01T00:00:00Z", format="csv", output=str(out))
    rows = list(csv.DictReader(out.open()))
    assert {r["id"] for r in rows} == {str(s.pk) for s in some[:4]}
    event = AuditEvent.objects.get(action="sessions.export")
    assert (event.actor_email, event.surface, event.org_id) == ("", "cli", cast.acme.pk)
    stdout = io.StringIO()
    call_command("sessions_export", org="acme", since="2026-03-02T09:00:04Z", stdout=stdout)
    assert [json.loads(x)["id"] for x in stdout.getvalue().splitlines()] == [str(some[3].pk)]
    stdout = io.StringIO()
    call_command("sessions_export", org="acme", since="2026-01-01T00:00:00Z", audit=True, stdout=stdout)
    assert "sessions.export" in {json.loads(x)["action"] for x in stdout.getvalue().splitlines()}
    with pytest.raises(CommandError, match="RFC 3339"):
        call_command("sessions_export", org="acme", since="yesterday")
    with pytest.raises(CommandError, match="not found"):
        call_command("sessions_export", org="nope", since="2026-01-01T00:00:00Z")


# --- audit chain heads ---------------------------------------------------------------------------


def _heads_file(tmp_path):
    stdout = io.StringIO()
    call_command("audit_heads", stdout=stdout)
    path = tmp_path / "heads.jsonl"
    path.write_text(stdout.getvalue())
    return path, [json.loads(x) for x in stdout.getvalue().splitlines()]


def _verify(*args):
    out = io.StringIO()
    try:
        call_command("audit_verify", *args, stdout=out)
    except CommandError as exc:
        return out.getvalue(), str(exc)
    return out.getvalue(), None


def _rewrite_tail(org, keep: int):
    """What an attacker with database access does: drop the newest events after `keep` and
    recompute the head, so the chain verifies again on its own."""
    events = list(AuditEvent.objects.filter(org=org).order_by("id"))
    kept = events[:keep]
    with connection.cursor() as cursor:
        cursor.execute("delete from records_auditevent where org_id = %s and id > %s", [org.pk, kept[-1].pk])
        cursor.execute(
            "update records_auditchainhead set last_id = %s, last_hash = %s, count = %s where org_id = %s",
            [kept[-1].pk, kept[-1].hash, len(kept), org.pk],
        )


def test_a_saved_head_catches_a_rewritten_tail_that_the_chain_alone_misses(cast, tmp_path):
    for i in range(5):
        audit_record(actor=cast.alice.actor(), action="test.event", detail={"n": i})
    path, heads = _heads_file(tmp_path)
    acme = next(h for h in heads if h["org_name"] == "acme")
    head = AuditChainHead.objects.get(pk=cast.acme.pk)
    assert (acme["count"], acme["last_id"], acme["last_hash"]) == (head.count, head.last_id, head.last_hash)
    output, error = _verify("--heads", str(path))
    assert error is None and "acme: ok" in output

    _rewrite_tail(cast.acme, keep=acme["count"] - 2)
    output, error = _verify()
    assert error is None and "acme: ok" in output  # the gap the saved heads close
    output, error = _verify("--heads", str(path))
    assert error == "1 audit chain(s) broken"
    assert "acme: BROKEN" in output and f"event #{acme['last_id']}" in output and "is gone" in output
    assert "globex: ok" in output


def test_a_saved_head_catches_a_rewritten_event_with_recomputed_hashes(cast, tmp_path):
    events = [audit_record(actor=cast.alice.actor(), action="test.event", detail={"n": i}) for i in range(3)]
    path, _ = _heads_file(tmp_path)
    # Rewrite the last event's detail and recompute its hash and the head: the chain is whole again.
    last = AuditEvent.objects.get(pk=events[-1].pk)
    last.detail = {"n": "rewritten"}
    new_hash = event_digest(last.prev_hash, last)
    with connection.cursor() as cursor:
        cursor.execute(
            "update records_auditevent set detail = %s, hash = %s where id = %s",
            [json.dumps(last.detail), new_hash, last.pk],
        )
        cursor.execute(
            "update records_auditchainhead set last_hash = %s where org_id = %s", [new_hash, cast.acme.pk]
        )
    assert _verify()[1] is None
    output, error = _verify("--heads", str(path))
    assert error and "no longer has the hash" in output


def test_audit_verify_refuses_an_unreadable_heads_file(cast, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(CommandError, match="not a saved head"):
        call_command("audit_verify", "--heads", str(bad))
    with pytest.raises(CommandError, match="cannot read"):
        call_command("audit_verify", "--heads", str(tmp_path / "missing.jsonl"))


def test_audit_heads_are_published_as_events(cast, settings, tmp_path):
    from sessions.heads import audit_heads_publish
    from sessions.models import OutboxMessage

    settings.EVENTS_JSONL_PATH = str(tmp_path / "events.jsonl")
    audit_record(actor=cast.alice.actor(), action="test.event")
    assert audit_heads_publish() >= 1
    published = [m.payload for m in OutboxMessage.objects.filter(kind="event")]  # what the relay sends
    heads = {e["data"]["org_name"]: e for e in published}
    assert heads["acme"]["type"] == "audit.head" and heads["acme"]["org"] == str(cast.acme.pk)
    assert heads["acme"]["data"]["last_hash"] == AuditChainHead.objects.get(pk=cast.acme.pk).last_hash
