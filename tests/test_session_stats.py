"""sessions_stats against hand-computed answers, with the visibility rules of sessions_list."""

from datetime import UTC, datetime

import pytest

from governance.errors import InvalidInput
from sessions.models import Analysis, Session
from sessions.services import session_list, session_stats
from tests.conftest import structured


def _session(cast, person, connection, status, when, risk=None):
    session = Session.objects.create(
        org=cast.acme,
        user=getattr(cast, person).user,
        connection_name=connection,
        connection_kind="postgres",
        surface="mcp",
        status=status,
        input="select 1",
        input_sha256="x",
        created_at=when,
    )
    if risk:
        Analysis.objects.create(session=session, risk_level=risk, title="t", explanation="e")
    return session


@pytest.fixture
def history(cast):
    tuesday_9 = datetime(2026, 11, 17, 9, 15, tzinfo=UTC)  # a Tuesday
    tuesday_10 = datetime(2026, 11, 17, 10, 5, tzinfo=UTC)
    friday_9 = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
    _session(cast, "bob", "prod-pg", "done", tuesday_9, "low")
    _session(cast, "bob", "prod-pg", "blocked", tuesday_9, "high")
    _session(cast, "bob", "prod-pg", "done", tuesday_10)
    _session(cast, "dave", "prod-pg", "done", friday_9, "high")
    _session(cast, "dave", "staging", "failed", friday_9, "critical")
    Session.objects.create(  # another org: never counted
        org=cast.globex, user=cast.eve.user, connection_name="prod-pg", connection_kind="postgres",
        surface="mcp", status="done", input="x", input_sha256="x", created_at=tuesday_9,
    )  # fmt: skip


# The history's month: sessions_stats counts the last 30 days unless given a range.
NOVEMBER = {"start_date": "2026-11-01T00:00:00Z", "end_date": "2026-12-01T00:00:00Z"}


def _counts(result):
    return {tuple(v for k, v in g.items() if k != "count"): g["count"] for g in result["groups"]}


def test_counts_match_hand_computed_answers(cast, history):
    alice = cast.alice.actor()
    assert _counts(session_stats(actor=alice, group_by=["user"], **NOVEMBER)) == {
        ("bob@acme.test",): 3,
        ("dave@acme.test",): 2,
    }
    on_prod = session_stats(actor=alice, group_by=["weekday", "hour"], connection="prod-pg", **NOVEMBER)
    assert _counts(on_prod) == {("tuesday", 9): 2, ("tuesday", 10): 1, ("friday", 9): 1}
    assert on_prod["total"] == 4
    assert _counts(session_stats(actor=alice, group_by=["risk_level"], **NOVEMBER)) == {
        ("high",): 2,
        ("low",): 1,
        ("critical",): 1,
        (None,): 1,
    }
    by_day = session_stats(
        actor=alice,
        group_by=["day", "status"],
        start_date="2026-11-18T00:00:00Z",
        end_date="2026-11-21T00:00:00Z",
    )
    assert _counts(by_day) == {("2026-11-20", "done"): 1, ("2026-11-20", "failed"): 1}


def test_visibility_follows_sessions_list(cast, history):
    bob = cast.bob.actor()
    assert _counts(session_stats(actor=bob, group_by=["user"], **NOVEMBER)) == {("bob@acme.test",): 3}
    assert (
        session_stats(actor=cast.carol.actor(), group_by=["status"], **NOVEMBER)["total"] == 5
    )  # auditor: the org
    assert (
        session_stats(actor=cast.eve.actor(), group_by=["status"], **NOVEMBER)["total"] == 1
    )  # her own org only
    high, total = session_list(actor=cast.alice.actor(), risk_level="high")
    assert total == 2 and {s.user.email for s in high} == {"bob@acme.test", "dave@acme.test"}


def test_bad_groups_are_refused(cast, history):
    with pytest.raises(InvalidInput, match="unknown group"):
        session_stats(actor=cast.alice.actor(), group_by=["planet"])
    with pytest.raises(InvalidInput, match="one to three"):
        session_stats(actor=cast.alice.actor(), group_by=[])
    with pytest.raises(InvalidInput, match="RFC 3339"):
        session_stats(actor=cast.alice.actor(), group_by=["user"], start_date="last tuesday")


@pytest.mark.live
def test_sessions_stats_over_mcp(cast, history, mcp):
    result = structured(
        mcp(cast.carol).call("sessions_stats", {"group_by": ["connection", "status"], **NOVEMBER})
    )
    assert {(g["connection"], g["status"]): g["count"] for g in result["groups"]} == {
        ("prod-pg", "done"): 3,
        ("prod-pg", "blocked"): 1,
        ("staging", "failed"): 1,
    }
    refused = mcp(cast.carol).call("sessions_stats", {"group_by": ["planet"]})
    assert refused.is_error and "group_by.0: Input should be 'user'" in refused.content[0].text
