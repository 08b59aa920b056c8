"""Human approval through the services: rules, the gate, quorum, separation of duties, execution
exactly once, JIT grants and expiry. Each property is attacked, not just exercised.

The live, over-HTTP flow with the official SDK client is in test_reviews_live.py.
"""

import sqlite3
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection as db_connection
from django.utils import timezone

from gateway import pipeline
from gateway.reviewed import review_execute
from governance.errors import Conflict, InvalidInput, NotFound, PolicyDenied
from governance.policy import Actor
from governance.services import user_create, usergroup_create, usergroup_delete
from reviews import services
from reviews.models import Review, ReviewSettings, ReviewStatus
from sessions.models import ACTIVE_STATUSES, AuditEvent, Session, SessionStatus


def _actor(user, surface="web") -> Actor:
    return Actor.for_user(user, surface=surface, client="pytest")


@pytest.fixture
def team(cast, shops):
    """Reviewers: frank (dba), grace (dba and security), heidi (security)."""
    frank = user_create(org=cast.acme, email="frank@acme.test", groups=["dba"])
    grace = user_create(org=cast.acme, email="grace@acme.test", groups=["dba", "security"])
    heidi = user_create(org=cast.acme, email="heidi@acme.test", groups=["security"])
    return {"frank": frank, "grace": grace, "heidi": heidi, "shop": shops["acme"]}


def _rule(cast, **fields):
    defaults = {
        "access_type": "command",
        "connections": ["shop"],
        "reviewer_groups": ["dba"],
        "min_approvals": 1,
    }
    return services.access_rule_create(
        actor=cast.alice.actor(), name=fields.pop("name", "prod"), **{**defaults, **fields}
    )


def _exec(person_or_user, text, connection="shop"):
    user = getattr(person_or_user, "user", person_or_user)  # a cast Person or a User
    return pipeline.exec_start(actor=_actor(user, "mcp"), connection_name=connection, input=text)


def _rows(shop_connection):
    conn = sqlite3.connect(shop_connection.config["path"])
    try:
        return conn.execute("select count(*) from customers").fetchone()[0]
    finally:
        conn.close()


def _wait_final(session_id, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        session = Session.objects.get(pk=session_id)
        if session.is_final:
            return session
        time.sleep(0.05)
    raise AssertionError(f"session {session_id} did not finish")


# --- rules ---------------------------------------------------------------------------------------


def test_rule_validation_says_what_to_fix(cast, team):
    admin = cast.alice.actor()
    cases = [
        ({"reviewer_groups": []}, "reviewer_groups must have at least 1 entry"),
        ({"access_type": "sometimes"}, "access_type must be one of"),
        ({"min_approvals": 0}, "min_approvals must be at least 1"),
        ({"connections": [], "attributes": []}, "either connections or attributes"),
        (
            {"approval_required_groups": ["engineering"], "skip_review_groups": ["dba"]},
            "skip_review_groups can only",
        ),
        ({"time_window": {"start_time": "25:00", "end_time": "10:00"}}, "HH:MM"),
        ({"min_risk": "apocalyptic"}, "min_risk must be one of"),
        ({"max_jit_duration_seconds": 5}, "max_jit_duration_seconds must be between"),
    ]
    for fields, message in cases:
        with pytest.raises(InvalidInput, match=message):
            _rule(cast, **fields)
    with pytest.raises(NotFound, match='user group "ghosts" not found'):
        _rule(cast, reviewer_groups=["ghosts"])
    with pytest.raises(NotFound):
        _rule(cast, connections=["nope"])
    assert not services.access_rule_list(actor=admin)[0]  # nothing half-created
    with pytest.raises(PolicyDenied, match="admin access required"):
        services.access_rule_create(
            actor=cast.bob.actor(),
            name="x",
            access_type="command",
            connections=["shop"],
            reviewer_groups=["dba"],
        )


def test_overlapping_rules_are_refused_but_more_than_one_rule_is_fine(cast, team, tmp_path):
    _rule(cast, name="first")
    with pytest.raises(Conflict, match="same connection and access type"):
        _rule(cast, name="second")
    with pytest.raises(Conflict, match="same connection and access type"):
        _rule(cast, name="third", access_type="jit_command")
    _rule(cast, name="jit-only", access_type="jit")  # a different access type is no overlap
    assert [r.name for r in services.access_rule_list(actor=cast.carol.actor())[0]] == ["first", "jit-only"]
    # an auditor reads rules, never changes them; another org sees none of them
    with pytest.raises(PolicyDenied):
        services.access_rule_delete(actor=cast.carol.actor(), ref="first")
    with pytest.raises(NotFound):
        services.access_rule_get(actor=cast.eve.actor(), ref="first")


# --- the gate ------------------------------------------------------------------------------------


def test_a_covered_exec_waits_for_review_and_nothing_runs(cast, team):
    _rule(cast)
    session = _exec(cast.bob, "delete from customers")
    assert session.status == SessionStatus.PENDING_REVIEW and session.started_at is None
    envelope = pipeline.exec_envelope(session)
    review = Review.objects.get(session=session)
    assert envelope["status"] == "pending_approval"
    assert envelope["review_id"] == str(review.pk)
    assert envelope["review_url"].endswith(f"/reviews/{review.pk}/")
    assert "reviews_wait" in envelope["next_step"] and "reviews_execute" in envelope["next_step"]
    assert review.input == "delete from customers" and review.input_sha256 == session.input_sha256
    assert review.risk["risk_level"] in ("high", "critical")  # a delete without WHERE
    assert _rows(team["shop"]) == 3
    assert AuditEvent.objects.filter(action="review.create", target_id=str(review.pk)).count() == 1


def test_who_needs_approval_follows_the_rule(cast, team):
    _rule(cast, approval_required_groups=["engineering"])
    assert _exec(cast.bob, "select 1").status == SessionStatus.PENDING_REVIEW  # bob is in engineering
    assert _exec(cast.dave, "select 1").status in ACTIVE_STATUSES  # dave is not
    services.access_rule_update(
        actor=cast.alice.actor(), ref="prod", approval_required_groups=[], skip_review_groups=["engineering"]
    )
    assert _exec(cast.bob, "select 1").status in ACTIVE_STATUSES
    assert _exec(cast.dave, "select 1").status == SessionStatus.PENDING_REVIEW
    services.access_rule_update(actor=cast.alice.actor(), ref="prod", enabled=False)
    assert _exec(cast.dave, "select 1").status in ACTIVE_STATUSES


def test_the_gate_sees_a_deleted_group_at_once(cast, team):
    """The gate's rules are cached per process by the org's rules version: deleting a group that
    a rule names must reach the gate on the next exec, not when the cache is evicted."""
    usergroup_create(actor=cast.alice.actor(), name="night-shift")
    _rule(cast, approval_required_groups=["night-shift"])  # nobody is on the night shift
    assert _exec(cast.bob, "select 1").status in ACTIVE_STATUSES
    usergroup_delete(actor=cast.alice.actor(), name="night-shift")
    # The rule names no group any more: it holds back everyone.
    assert _exec(cast.bob, "select 1").status == SessionStatus.PENDING_REVIEW


def test_pre_execution_risk_decides_when_min_risk_is_set(cast, team):
    _rule(cast, min_risk="high")
    assert _exec(cast.bob, "select name from customers where id = 1").status in ACTIVE_STATUSES
    risky = _exec(cast.bob, "delete from customers")
    assert risky.status == SessionStatus.PENDING_REVIEW
    explained = pipeline.exec_explain(
        actor=cast.bob.actor(), connection_name="shop", input="drop table customers"
    )
    assert explained["review_required"] is True and explained["review_rule"] == "prod"
    assert explained["risk"]["risk_level"] in ("high", "critical")


# --- decisions -----------------------------------------------------------------------------------


def test_nobody_approves_their_own_request_not_even_an_admin(cast, team):
    _rule(cast, reviewer_groups=["dba", "admin"])
    frank = _actor(team["frank"])
    session = _exec(team["frank"], "update customers set name = 'x'")
    with pytest.raises(PolicyDenied, match="unable to self approve review"):
        services.review_decide(actor=frank, review_id=session.pk, status="APPROVED")
    admin_session = _exec(cast.alice, "update customers set name = 'y'")
    with pytest.raises(PolicyDenied, match="unable to self approve review"):
        services.review_decide(actor=cast.alice.actor("web"), review_id=admin_session.pk, status="APPROVED")
    refusals = AuditEvent.objects.filter(action="review.approve", outcome="denied")
    assert refusals.count() == 2  # refused attempts are on the record
    assert Review.objects.get(session=session).status == ReviewStatus.PENDING
    # the org can turn self-approval on, explicitly
    services.review_settings_update(actor=cast.alice.actor(), allow_self_approval=True)
    assert (
        services.review_decide(actor=frank, review_id=session.pk, status="APPROVED").status
        == ReviewStatus.APPROVED
    )


def test_only_eligible_reviewers_decide_and_others_cannot_even_see(cast, team):
    _rule(cast)
    session = _exec(cast.bob, "update customers set name = 'x'")
    for outsider in (cast.carol, cast.alice):  # they see every review, but review none of these
        with pytest.raises(PolicyDenied, match="not eligible for review"):
            services.review_decide(actor=outsider.actor("web"), review_id=session.pk, status="APPROVED")
    with pytest.raises(NotFound, match="review not found"):  # dave neither asked nor reviews
        services.review_get(actor=cast.dave.actor(), review_id=session.pk)
    with pytest.raises(NotFound, match="review not found"):  # another org: same answer as missing
        services.review_decide(actor=cast.eve.actor("web"), review_id=session.pk, status="APPROVED")
    # the auditor sees it (with the input) but decides nothing
    seen = services.review_to_dict(
        services.review_get(actor=cast.carol.actor(), review_id=session.pk), actor=cast.carol.actor()
    )
    assert seen["input"] == "update customers set name = 'x'" and not seen["you_can_decide"]
    # an eligible reviewer sees the exact input and its risk
    frank = _actor(team["frank"])
    as_frank = services.review_to_dict(services.review_get(actor=frank, review_id=session.pk), actor=frank)
    assert as_frank["input"] == "update customers set name = 'x'" and as_frank["risk"]["risk_level"]
    assert as_frank["you_can_decide"]
    # heidi is not eligible: she does not see it at all (neither requester nor reviewer)
    with pytest.raises(NotFound):
        services.review_get(actor=_actor(team["heidi"]), review_id=session.pk)
    # the reviewer sees the pending session's metadata in the session list, not its content
    from sessions.services import session_content, session_list

    assert [s.pk for s in session_list(actor=frank)[0]] == [session.pk]
    with pytest.raises(NotFound):
        session_content(actor=frank, session_id=session.pk)


def test_quorum_counts_people_not_group_memberships(cast, team):
    _rule(cast, reviewer_groups=["dba", "security"], min_approvals=2)
    session = _exec(cast.bob, "update customers set name = 'x'")
    grace = _actor(team["grace"])  # in both reviewer groups
    review = services.review_decide(actor=grace, review_id=session.pk, status="APPROVED")
    assert review.status == ReviewStatus.PENDING  # one person, even for two groups, is one approval
    assert {d.group_name for d in review.decisions.all()} == {"dba", "security"}
    with pytest.raises(Conflict, match="already decided"):
        services.review_decide(actor=grace, review_id=session.pk, status="APPROVED")
    review = services.review_decide(actor=_actor(team["heidi"]), review_id=session.pk, status="APPROVED")
    assert review.status == ReviewStatus.APPROVED and review.decided_at is not None


def test_one_reviewer_in_two_groups_meets_a_quorum_of_one(cast, team):
    # hoop compares with == and leaves this PENDING forever; a quorum is met at >=.
    _rule(cast, reviewer_groups=["dba", "security"], min_approvals=1)
    session = _exec(cast.bob, "update customers set name = 'x'")
    review = services.review_decide(actor=_actor(team["grace"]), review_id=session.pk, status="APPROVED")
    assert review.status == ReviewStatus.APPROVED


def test_all_groups_must_approve(cast, team):
    _rule(cast, reviewer_groups=["dba", "security"], all_groups_must_approve=True)
    session = _exec(cast.bob, "update customers set name = 'x'")
    assert (
        services.review_decide(actor=_actor(team["frank"]), review_id=session.pk, status="APPROVED").status
        == "PENDING"
    )
    assert (
        services.review_decide(actor=_actor(team["heidi"]), review_id=session.pk, status="APPROVED").status
        == "APPROVED"
    )


def test_force_approval(cast, team):
    _rule(
        cast,
        reviewer_groups=["dba", "security"],
        all_groups_must_approve=True,
        force_approval_groups=["security"],
    )
    session = _exec(cast.bob, "update customers set name = 'x'")
    with pytest.raises(PolicyDenied, match="force-approval"):
        services.review_decide(
            actor=_actor(team["frank"]), review_id=session.pk, status="APPROVED", force=True
        )
    review = services.review_decide(
        actor=_actor(team["heidi"]), review_id=session.pk, status="APPROVED", force=True
    )
    assert review.status == ReviewStatus.APPROVED
    assert review.decisions.get().forced


def test_rejection_needs_a_reason_and_ends_the_session(cast, team):
    _rule(cast, reviewer_groups=["dba", "security"], min_approvals=2)
    session = _exec(cast.bob, "delete from customers")
    frank = _actor(team["frank"])
    services.review_decide(actor=frank, review_id=session.pk, status="APPROVED")
    with pytest.raises(InvalidInput, match="reason is required"):
        services.review_decide(actor=_actor(team["heidi"]), review_id=session.pk, status="REJECTED")
    review = services.review_decide(
        actor=_actor(team["heidi"]), review_id=session.pk, status="REJECTED", reason="no WHERE"
    )
    assert review.status == ReviewStatus.REJECTED and review.rejection_reason == "no WHERE"
    session.refresh_from_db()
    assert session.status == SessionStatus.REJECTED and "no WHERE" in session.error
    with pytest.raises(Conflict, match="wrong state"):
        services.review_decide(actor=_actor(team["grace"]), review_id=session.pk, status="APPROVED")
    with pytest.raises(Conflict, match="not approved or already executed"):
        review_execute(actor=cast.bob.actor(), review_id=session.pk)
    assert _rows(team["shop"]) == 3


def test_decisions_over_mcp_are_off_until_an_admin_turns_them_on(cast, team):
    _rule(cast)
    session = _exec(cast.bob, "update customers set name = 'x'")
    with pytest.raises(PolicyDenied, match="turned off"):
        services.review_decide(actor=_actor(team["frank"], "mcp"), review_id=session.pk, status="APPROVED")
    with pytest.raises(PolicyDenied):
        services.review_settings_update(actor=cast.bob.actor(), mcp_decisions_enabled=True)
    services.review_settings_update(actor=cast.alice.actor(), mcp_decisions_enabled=True)
    assert (
        services.review_decide(
            actor=_actor(team["frank"], "mcp"), review_id=session.pk, status="APPROVED"
        ).status
        == "APPROVED"
    )
    assert ReviewSettings.objects.get(org=cast.acme).mcp_decisions_enabled
    assert AuditEvent.objects.filter(action="review.settings").count() == 1


# --- execution ------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_execute_runs_the_stored_input_exactly_once(cast, team):
    _rule(cast)
    session = _exec(cast.bob, "delete from customers where id = 1")
    services.review_decide(actor=_actor(team["frank"]), review_id=session.pk, status="APPROVED")
    with pytest.raises(PolicyDenied, match="only the requester"):
        review_execute(actor=cast.alice.actor(), review_id=session.pk)  # not even an admin
    with pytest.raises(NotFound):
        review_execute(actor=cast.eve.actor(), review_id=session.pk)
    ran = review_execute(actor=cast.bob.actor(), review_id=session.pk)
    assert ran.pk == session.pk
    final = _wait_final(session.pk)
    assert final.status == SessionStatus.DONE and _rows(team["shop"]) == 2
    review = Review.objects.get(session=session)
    assert review.status == ReviewStatus.EXECUTED and review.executed_at is not None
    with pytest.raises(Conflict, match="not approved or already executed"):
        review_execute(actor=cast.bob.actor(), review_id=session.pk)
    assert _rows(team["shop"]) == 2
    denied = AuditEvent.objects.filter(action="review.execute", outcome="denied")
    assert denied.count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_executes_run_it_once(cast, team):
    if db_connection.vendor != "postgresql":
        pytest.skip("concurrency needs a server database")
    _rule(cast)
    session = _exec(cast.bob, "insert into customers (name, email) values ('new', 'new@acme.test')")
    services.review_decide(actor=_actor(team["frank"]), review_id=session.pk, status="APPROVED")
    barrier = threading.Barrier(4)
    outcomes = []

    def attempt():
        from django.db import close_old_connections

        barrier.wait()
        try:
            review_execute(actor=cast.bob.actor(), review_id=session.pk)
            outcomes.append("ran")
        except Conflict:
            outcomes.append("refused")
        finally:
            close_old_connections()

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ran", "refused", "refused", "refused"]
    _wait_final(session.pk)
    assert _rows(team["shop"]) == 4  # inserted once


@pytest.mark.django_db(transaction=True)
def test_the_approved_input_cannot_be_swapped(cast, team):
    _rule(cast)
    session = _exec(cast.bob, "select count(*) from customers")
    services.review_decide(actor=_actor(team["frank"]), review_id=session.pk, status="APPROVED")
    # someone with database access swaps the stored input after approval
    Session.objects.filter(pk=session.pk).update(input="delete from customers")
    with pytest.raises(Conflict, match="no longer matches what was approved"):
        review_execute(actor=cast.bob.actor(), review_id=session.pk)
    assert _rows(team["shop"]) == 3
    assert Review.objects.get(session=session).status == ReviewStatus.APPROVED  # the claim rolled back too
    # and the MCP tool has no argument through which an input could be passed
    from mcpserver.tools.reviews import ExecuteArgs

    with pytest.raises(Exception, match="Extra inputs"):
        ExecuteArgs(id=str(session.pk), input="delete from customers")


@pytest.mark.django_db(transaction=True)
def test_a_guardrail_added_after_approval_still_blocks(cast, team):
    from governance.rules import guardrail_create

    _rule(cast)
    session = _exec(cast.bob, "delete from customers where id = 2")
    services.review_decide(actor=_actor(team["frank"]), review_id=session.pk, status="APPROVED")
    guardrail_create(
        actor=cast.alice.actor(),
        name="no-deletes",
        input={"sql": {"deny_statements": ["delete"]}},
        connections=["shop"],
    )
    ran = review_execute(actor=cast.bob.actor(), review_id=session.pk)
    assert ran.status == SessionStatus.BLOCKED and _rows(team["shop"]) == 3


def test_execution_outside_the_time_window_is_refused(cast, team):
    now = timezone.now()
    start = (now + timedelta(hours=2)).strftime("%H:%M")
    end = (now + timedelta(hours=3)).strftime("%H:%M")
    _rule(cast, time_window={"start_time": start, "end_time": end})
    session = _exec(cast.bob, "update customers set name = 'x'")
    services.review_decide(actor=_actor(team["frank"]), review_id=session.pk, status="APPROVED")
    with pytest.raises(PolicyDenied, match=f"outside the time window {start} to {end} UTC"):
        review_execute(actor=cast.bob.actor(), review_id=session.pk)


# --- JIT and expiry --------------------------------------------------------------------------------


def test_jit_grant_skips_review_until_it_expires(cast, team):
    _rule(cast, access_type="jit_command", max_jit_duration_seconds=7200)
    bob = cast.bob.actor()
    with pytest.raises(InvalidInput, match="between 60 and 7200"):
        services.access_request(actor=bob, connection_name="shop", duration_seconds=86400, reason="incident")
    with pytest.raises(InvalidInput, match="reason is required"):
        services.access_request(actor=bob, connection_name="shop", duration_seconds=600, reason=" ")
    review = services.access_request(
        actor=bob, connection_name="shop", duration_seconds=600, reason="incident 42"
    )
    with pytest.raises(Conflict, match="already have a pending"):
        services.access_request(actor=bob, connection_name="shop", duration_seconds=600, reason="again")
    assert _exec(cast.bob, "select 1").status == SessionStatus.PENDING_REVIEW  # not approved yet
    approved = services.review_decide(actor=_actor(team["frank"]), review_id=review.pk, status="APPROVED")
    assert approved.access_until is not None
    assert timedelta(seconds=590) < approved.access_until - approved.decided_at <= timedelta(seconds=600)
    assert _exec(cast.bob, "select 1").status in ACTIVE_STATUSES  # the grant skips review
    assert _exec(cast.dave, "select 1").status == SessionStatus.PENDING_REVIEW  # for bob only
    with pytest.raises(InvalidInput, match="not a one-time review"):
        review_execute(actor=bob, review_id=review.pk)
    # the beat task expires it; review is needed again
    assert services.reviews_expire(now=approved.access_until + timedelta(seconds=1)) >= 1
    review.refresh_from_db()
    assert review.status == ReviewStatus.EXPIRED
    assert _exec(cast.bob, "select 1").status == SessionStatus.PENDING_REVIEW
    assert AuditEvent.objects.filter(
        action="review.expire", target_id=str(review.pk), surface="task"
    ).exists()


def test_a_jit_grant_can_be_revoked(cast, team):
    _rule(cast, access_type="jit_command")
    review = services.access_request(
        actor=cast.bob.actor(), connection_name="shop", duration_seconds=3600, reason="debugging"
    )
    services.review_decide(actor=_actor(team["frank"]), review_id=review.pk, status="APPROVED")
    assert _exec(cast.bob, "select 1").status in ACTIVE_STATUSES
    with pytest.raises(NotFound):  # dave cannot even see it
        services.review_decide(actor=cast.dave.actor("web"), review_id=review.pk, status="REVOKED")
    with pytest.raises(PolicyDenied, match="not eligible"):  # the auditor sees it, revokes nothing
        services.review_decide(actor=cast.carol.actor("web"), review_id=review.pk, status="REVOKED")
    revoked = services.review_decide(
        actor=_actor(team["frank"]), review_id=review.pk, status="REVOKED", reason="done"
    )
    assert revoked.status == ReviewStatus.REVOKED
    assert _exec(cast.bob, "select 1").status == SessionStatus.PENDING_REVIEW


def test_access_request_without_a_jit_rule_says_so(cast, team):
    _rule(cast)  # command only
    with pytest.raises(InvalidInput, match="no access request rule asks for JIT access"):
        services.access_request(
            actor=cast.bob.actor(), connection_name="shop", duration_seconds=600, reason="x"
        )
    # globex has its own "shop"; acme's rules never apply to it
    _rule(cast, name="acme-jit", access_type="jit")
    with pytest.raises(InvalidInput, match="no access request rule"):
        services.access_request(
            actor=cast.eve.actor(), connection_name="shop", duration_seconds=600, reason="x"
        )
    with pytest.raises(NotFound, match='connection "nope" not found'):
        services.access_request(
            actor=cast.bob.actor(), connection_name="nope", duration_seconds=600, reason="x"
        )


def test_pending_reviews_expire_and_their_sessions_end(cast, team):
    _rule(cast)
    session = _exec(cast.bob, "update customers set name = 'x'")
    review = Review.objects.get(session=session)
    assert services.reviews_expire(now=review.expires_at - timedelta(seconds=1)) == 0
    assert services.reviews_expire(now=review.expires_at + timedelta(seconds=1)) == 1
    review.refresh_from_db()
    session.refresh_from_db()
    assert review.status == ReviewStatus.EXPIRED
    assert session.status == SessionStatus.CANCELLED and "expired" in session.error
    with pytest.raises(Conflict):
        services.review_decide(actor=_actor(team["frank"]), review_id=review.pk, status="APPROVED")


def test_review_list_visibility_and_inbox(cast, team):
    _rule(cast)
    mine = _exec(cast.bob, "update customers set name = 'x'")
    _exec(team["frank"], "update customers set name = 'y'")
    frank, grace = _actor(team["frank"]), _actor(team["grace"])
    inbox, total = services.review_list(actor=frank, waiting_for_me=True)
    assert [r.session_id for r in inbox] == [mine.pk] and total == 1  # not his own request
    assert services.review_list(actor=grace, waiting_for_me=True)[1] == 2
    assert services.review_list(actor=cast.bob.actor())[1] == 1
    assert services.review_list(actor=cast.dave.actor())[1] == 0
    assert services.review_list(actor=cast.carol.actor())[1] == 2
    assert services.review_list(actor=cast.eve.actor())[1] == 0
    with pytest.raises(InvalidInput):
        services.review_list(actor=frank, status="MAYBE")
    services.review_decide(actor=grace, review_id=mine.pk, status="APPROVED")
    assert services.review_list(actor=frank, waiting_for_me=True)[1] == 0


def test_a_guardrail_blocks_high_risk_input_before_it_runs(cast, team):
    from governance.rules import guardrail_create, guardrail_test

    with pytest.raises(InvalidInput, match="risk_at_least must be one of"):
        guardrail_create(
            actor=cast.alice.actor(), name="bad", input={"risk_at_least": "extreme"}, connections=["shop"]
        )
    guardrail_create(
        actor=cast.alice.actor(),
        name="no-high-risk",
        message="High-risk statements need a change ticket.",
        input={"risk_at_least": "high"},
        connections=["shop"],
    )
    blocked = _exec(cast.bob, "delete from customers")
    assert blocked.status == SessionStatus.BLOCKED
    assert blocked.guardrail_findings[0]["condition"] == "risk.at_least"
    assert "rated" in blocked.guardrail_findings[0]["detail"]
    assert pipeline.exec_envelope(blocked)["message"].startswith("High-risk statements need a change ticket.")
    assert _exec(cast.bob, "select name from customers where id = 1").status in ACTIVE_STATUSES
    assert _rows(team["shop"]) == 3
    # the dry runs agree
    tested = guardrail_test(actor=cast.alice.actor(), input="drop table customers", connection_name="shop")
    assert tested["blocked"] and tested["findings"][0]["condition"] == "risk.at_least"
    explained = pipeline.exec_explain(
        actor=cast.bob.actor(), connection_name="shop", input="drop table customers"
    )
    assert explained["would_run"] is False and explained["blocked_by"] == ["no-high-risk"]


@pytest.mark.django_db(transaction=True)
def test_the_session_timeline_and_review_status_filter(cast, team):
    from sessions.services import session_content, session_list

    _rule(cast)
    session = _exec(cast.bob, "update customers set name = 'z' where id = 3")
    other = _exec(cast.bob, "update customers set name = 'w' where id = 2")
    services.review_decide(actor=_actor(team["frank"]), review_id=session.pk, status="APPROVED", reason="ok")
    review_execute(actor=cast.bob.actor(), review_id=session.pk)
    _wait_final(session.pk)
    bob = cast.bob.actor()
    events = [e["event"] for e in session_content(actor=bob, session_id=session.pk)["timeline"]]
    assert events[:5] == ["recorded", "queued_for_review", "review_approved", "approved", "run_requested"]
    assert events[5:7] == ["started", "finished"]
    assert [s.pk for s in session_list(actor=bob, review_status="EXECUTED")[0]] == [session.pk]
    assert [s.pk for s in session_list(actor=bob, review_status="pending")[0]] == [other.pk]
    with pytest.raises(InvalidInput, match="unknown review status"):
        session_list(actor=bob, review_status="MAYBE")
