"""The audit log is a hash chain per org: tampering, deleting and reordering are caught, and
concurrent writers never fork it."""

import io
import threading

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections

from sessions.audit import audit_record, audit_verify
from sessions.models import AuditChainHead, AuditEvent
from tests.conftest import structured


def _write(cast, n, org="acme"):
    actor = getattr(cast, "alice" if org == "acme" else "eve").actor()
    return [audit_record(actor=actor, action="test.event", detail={"n": i, "note": "é ✓"}) for i in range(n)]


def _raw(sql, params=()):
    # Straight SQL: the ORM refuses to change audit rows, an attacker with database access does not.
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _verify_output():
    out = io.StringIO()
    try:
        call_command("audit_verify", stdout=out)
    except CommandError as exc:
        return out.getvalue(), str(exc)
    return out.getvalue(), None


def test_an_untouched_chain_verifies(cast, db):
    events = _write(cast, 5)
    assert (
        events[0].prev_hash
        == AuditEvent.objects.filter(org=cast.acme, id__lt=events[0].pk).order_by("id").last().hash
    )
    for before, after in zip(events, events[1:], strict=False):
        assert after.prev_hash == before.hash
    report = audit_verify(cast.acme.pk)
    assert report.ok and report.events == AuditEvent.objects.filter(org=cast.acme).count()
    output, error = _verify_output()
    assert error is None and "acme: ok" in output and "globex: ok" in output


def test_a_changed_row_is_caught_at_that_row(cast, db):
    events = _write(cast, 5)
    _raw("update records_auditevent set outcome = 'denied' where id = %s", [events[2].pk])
    report = audit_verify(cast.acme.pk)
    assert not report.ok and f"event #{events[2].pk} was changed" in report.problem
    output, error = _verify_output()
    assert error == "1 audit chain(s) broken" and "acme: BROKEN" in output and "globex: ok" in output


def test_a_changed_detail_or_time_is_caught(cast, db):
    events = _write(cast, 3)
    _raw("""update records_auditevent set detail = '{"n": 99}' where id = %s""", [events[1].pk])
    assert f"#{events[1].pk} was changed" in audit_verify(cast.acme.pk).problem


def test_a_deleted_row_in_the_middle_is_caught(cast, db):
    events = _write(cast, 5)
    _raw("delete from records_auditevent where id = %s", [events[2].pk])
    report = audit_verify(cast.acme.pk)
    assert f"event #{events[3].pk} does not follow" in report.problem


def test_deleting_the_newest_events_is_caught(cast, db):
    events = _write(cast, 5)
    _raw("delete from records_auditevent where id >= %s", [events[3].pk])
    report = audit_verify(cast.acme.pk)
    assert "the newest events were removed" in report.problem


def test_a_rehashed_forgery_still_breaks_the_next_link(cast, db):
    from sessions.audit import event_digest

    events = _write(cast, 4)
    forged = AuditEvent.objects.get(pk=events[1].pk)
    forged.outcome = "denied"
    new_hash = event_digest(forged.prev_hash, forged)
    _raw("update records_auditevent set outcome = 'denied', hash = %s where id = %s", [new_hash, forged.pk])
    assert f"event #{events[2].pk} does not follow" in audit_verify(cast.acme.pk).problem


def test_orgs_have_separate_chains(cast, db):
    _write(cast, 2, "acme")
    _write(cast, 2, "globex")
    acme = list(AuditEvent.objects.filter(org=cast.acme).order_by("id"))
    assert all(b.prev_hash == a.hash for a, b in zip(acme, acme[1:], strict=False))
    assert AuditChainHead.objects.get(org=cast.acme).count == len(acme)


def test_concurrent_writers_do_not_fork_the_chain(cast, transactional_db):
    actor = cast.bob.actor()
    errors = []

    def writer(i):
        try:
            for j in range(10):
                audit_record(actor=actor, action="test.concurrent", detail={"w": i, "j": j})
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    report = audit_verify(cast.acme.pk)
    assert report.ok, report.problem
    assert AuditEvent.objects.filter(action="test.concurrent").count() == 80


@pytest.mark.live
def test_audit_events_list_over_mcp(cast, shops, mcp):
    structured(mcp(cast.bob).call("exec", {"connection_name": "shop", "input": "select 1"}))
    mcp(cast.bob).call("exec", {"connection_name": "nope", "input": "select 1"})
    carol = mcp(cast.carol)
    page = structured(carol.call("audit_events_list", {"actor": "bob@acme.test", "limit": 10}))
    actions = [e["action"] for e in page["items"]]
    assert "exec.request" in actions and "exec.finish" in actions
    denied = structured(carol.call("audit_events_list", {"outcome": "denied"}))
    assert denied["total"] == 1 and denied["items"][0]["target"] == "nope"
    prefixed = structured(carol.call("audit_events_list", {"action": "exec.", "limit": 1}))
    assert prefixed["total"] == 3 and prefixed["has_next_page"] is True
    assert structured(mcp(cast.eve).call("audit_events_list", {"action": "exec."}))["total"] == 0
    assert mcp(cast.bob).call("audit_events_list").is_error


def test_pointing_an_event_at_another_actor_is_caught(cast, db):
    """Issue 14: the hash covers every column that identifies the actor (the user id too)."""
    events = _write(cast, 3)
    _raw("update records_auditevent set actor_id = %s where id = %s", [cast.bob.user.pk, events[1].pk])
    assert f"event #{events[1].pk} names another actor" in audit_verify(cast.acme.pk).problem


def test_rewriting_the_hashed_actor_copy_is_caught(cast, db):
    events = _write(cast, 3)
    _raw(
        "update records_auditevent set actor_id = %s, actor_key = %s where id = %s",
        [cast.bob.user.pk, str(cast.bob.user.pk), events[1].pk],
    )
    assert f"event #{events[1].pk} was changed" in audit_verify(cast.acme.pk).problem
    for column, value in (("surface", "rest"), ("client", "forged"), ("actor_email", "bob@acme.test")):
        _raw(
            "update records_auditevent set actor_id = %s, actor_key = %s where id = %s",
            [cast.alice.user.pk, str(cast.alice.user.pk), events[1].pk],
        )
        assert audit_verify(cast.acme.pk).ok
        _raw(f"update records_auditevent set {column} = %s where id = %s", [value, events[2].pk])
        assert f"event #{events[2].pk} was changed" in audit_verify(cast.acme.pk).problem
        _raw(
            f"update records_auditevent set {column} = %s where id = %s",
            [getattr(events[2], column), events[2].pk],
        )


def test_a_deleted_user_leaves_the_chain_whole(cast, db):
    _write(cast, 2)
    _raw("update records_auditevent set actor_id = null where actor_id = %s", [cast.alice.user.pk])
    assert audit_verify(cast.acme.pk).ok


def test_the_head_is_checked_against_the_chain(cast, db):
    events = _write(cast, 3)
    _raw("update records_auditchainhead set last_id = %s where org_id = %s", [events[1].pk, cast.acme.pk])
    assert "the newest events were removed" in audit_verify(cast.acme.pk).problem
    _raw("delete from records_auditchainhead where org_id = %s", [cast.acme.pk])
    assert "head record is missing" in audit_verify(cast.acme.pk).problem
