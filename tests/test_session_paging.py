"""sessions_list's cursor, the session's copy of its risk level and sessions_stats' date range:
the query changes that bench/sessions_scale.py drove, held to the behaviour they replace."""

import base64
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from governance.errors import InvalidInput
from sessions.models import Analysis, Session
from sessions.services import (
    STATS_DEFAULT_DAYS,
    STATS_MAX_DAYS,
    session_cursor,
    session_list,
    session_stats,
)
from tests.conftest import error_text, structured


def _session(org, user, when, connection="prod-pg", status="done"):
    return Session.objects.create(
        org=org,
        user=user,
        connection_name=connection,
        connection_kind="postgres",
        surface="mcp",
        status=status,
        input="select 1",
        input_sha256="x",
        created_at=when,
    )


@pytest.fixture
def bobs_history(cast):
    """Nine sessions of bob, three of them at one instant (ties are broken by id), one of dave's."""
    base = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)
    same = base + timedelta(minutes=30)
    times = [base + timedelta(minutes=i) for i in range(6)] + [same, same, same]
    sessions = [_session(cast.acme, cast.bob.user, when) for when in times]
    _session(cast.acme, cast.dave.user, same)
    return sessions


def _walk(actor, limit, **filters):
    """Every page by cursor; returns the ids in the order they came."""
    seen, cursor = [], None
    for _ in range(100):
        page, total = session_list(actor=actor, limit=limit, cursor=cursor, **filters)
        seen += [s.pk for s in page]
        if len(page) < limit:
            return seen, total
        cursor = session_cursor(page[-1])
    raise AssertionError("the cursor never reached the end")


def test_it_pages_by_cursor_through_every_session_once_in_offset_order(cast, bobs_history):
    bob = cast.bob.actor()
    by_offset, total = session_list(actor=bob, limit=100)
    for limit in (1, 2, 3, 4):
        by_cursor, cursor_total = _walk(bob, limit)
        assert by_cursor == [s.pk for s in by_offset]  # the same order, nothing twice, nothing lost
        assert cursor_total == total == 9
    assert len(set(by_cursor)) == 9


def test_it_keeps_the_filters_and_the_visibility_behind_a_cursor(cast, bobs_history):
    # A cursor taken from dave's session, handed to bob, still shows bob only his own sessions.
    daves = Session.objects.get(user=cast.dave.user)
    page, total = session_list(actor=cast.bob.actor(), limit=100, cursor=session_cursor(daves))
    assert total == 9 and page and all(s.user_id == cast.bob.user.pk for s in page)
    # ... and eve, admin of the other org, gets nothing from an acme cursor
    page, total = session_list(actor=cast.eve.actor(), limit=100, cursor=session_cursor(daves))
    assert (page, total) == ([], 0)
    # filters apply to the pages after the cursor too
    _session(cast.acme, cast.bob.user, datetime(2026, 11, 17, 9, 1, 30, tzinfo=UTC), status="failed")
    failed, _ = _walk(cast.alice.actor(), 1, status="failed")
    assert len(failed) == 1


@pytest.mark.parametrize(
    "cursor",
    [
        "not base64!",
        base64.urlsafe_b64encode(b"2026-11-17T09:00:00|not-a-uuid").decode(),
        base64.urlsafe_b64encode(
            b"2026-11-17T09:00:00|00000000-0000-0000-0000-000000000000"
        ).decode(),  # naive
        base64.urlsafe_b64encode(b"no separator").decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)
def test_it_refuses_a_forged_or_broken_cursor(cast, bobs_history, cursor):
    with pytest.raises(InvalidInput, match="invalid cursor"):
        session_list(actor=cast.bob.actor(), cursor=cursor)


def test_it_refuses_cursor_and_offset_together_and_an_unknown_risk_level(cast, bobs_history):
    with pytest.raises(InvalidInput, match="either cursor or offset"):
        session_list(actor=cast.bob.actor(), offset=2, cursor=session_cursor(bobs_history[0]))
    with pytest.raises(InvalidInput, match="unknown risk level"):
        session_list(actor=cast.bob.actor(), risk_level="apocalyptic")


def test_the_session_carries_its_analysis_risk_level(cast, bobs_history):
    session = bobs_history[0]
    assert Session.objects.get(pk=session.pk).risk_level is None
    Analysis.objects.create(session=session, risk_level="critical", title="t", explanation="e")
    assert Session.objects.get(pk=session.pk).risk_level == "critical"
    critical, total = session_list(actor=cast.alice.actor(), risk_level="critical")
    assert total == 1 and [s.pk for s in critical] == [session.pk]
    assert session_list(actor=cast.dave.actor(), risk_level="critical") == ([], 0)  # not his


def test_stats_count_the_last_days_by_default_and_refuse_long_ranges(cast):
    now = timezone.now()
    _session(cast.acme, cast.bob.user, now - timedelta(days=1))
    _session(cast.acme, cast.bob.user, now - timedelta(days=STATS_DEFAULT_DAYS + 5))
    alice = cast.alice.actor()
    recent = session_stats(actor=alice, group_by=["user"])
    assert recent["total"] == 1
    counted = datetime.fromisoformat(recent["end_date"]) - datetime.fromisoformat(recent["start_date"])
    assert counted == timedelta(days=STATS_DEFAULT_DAYS)
    start = (now - timedelta(days=STATS_MAX_DAYS - 1)).isoformat()
    assert session_stats(actor=alice, group_by=["user"], start_date=start)["total"] == 2
    too_long = (now - timedelta(days=STATS_MAX_DAYS + 1)).isoformat()
    with pytest.raises(InvalidInput, match=f"longer than {STATS_MAX_DAYS} days"):
        session_stats(actor=alice, group_by=["user"], start_date=too_long)
    with pytest.raises(InvalidInput, match="end_date must be after start_date"):
        session_stats(
            actor=alice, group_by=["day"], start_date="2026-11-20T00:00:00Z", end_date="2026-11-20T00:00:00Z"
        )


@pytest.mark.live
def test_sessions_list_pages_by_cursor_over_mcp(cast, mcp):
    bob = mcp(cast.bob)
    base = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)
    ids = {str(_session(cast.acme, cast.bob.user, base + timedelta(minutes=i)).pk) for i in range(5)}
    _session(cast.acme, cast.dave.user, base)
    first = structured(bob.call("sessions_list", {"limit": 2}))
    assert first["total"] == 5 and first["next_offset"] == 2 and first["next_cursor"]
    seen, page = [i["id"] for i in first["items"]], first
    while page["next_cursor"]:
        page = structured(bob.call("sessions_list", {"limit": 2, "cursor": page["next_cursor"]}))
        assert page["next_offset"] is None
        seen += [i["id"] for i in page["items"]]
    assert len(seen) == 5 and set(seen) == ids
    assert "invalid cursor" in error_text(bob.call("sessions_list", {"cursor": "garbage"}))
    refused = bob.call("sessions_stats", {"group_by": ["day"], "start_date": "2020-01-01T00:00:00Z"})
    assert f"longer than {STATS_MAX_DAYS} days" in error_text(refused)
