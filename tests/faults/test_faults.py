"""The fault suite: real processes (two daphne replicas behind a balancer, a Celery worker and beat,
private PostgreSQL and Redis), real faults (kill -9, outages, an unreachable target), and after each
one the same invariants, counted from the gateway database and from the target itself:

* 0 lost approved executions: an approved review runs exactly once, or is executable again;
* 0 duplicate executions: every statement inserts its marker into the target's `execs` (and
  the target logs every statement it receives), and no marker is there twice;
* 0 lost outbound events: every session that ended has its end event in the JSON-lines sink, and
  every session that ran has its `session.started`;
* 0 sessions left `open`/`running` past their lease;
* 0 `internal error` answers and no plain-text 500s (the database being down is a JSON-RPC error or
  a 503 with Retry-After);
* 0 worker deaths: the worker that lived through the fault still runs new tasks afterwards;
* `manage.py audit_verify` intact.

See tests/faults/harness.py for the processes, and docs/fault-suite.md for how to run it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import psycopg
import pytest

from tests.faults.checks import (
    Traffic,
    check_invariants,
    execute_until_known,
    idempotency_supported,
    in_thread,
    lease_budget,
    new_marker,
    redis_unacked,
    session_of,
    statement,
    wait_session,
    worker_children,
)
from tests.faults.harness import ROOT, wait_for

pytestmark = pytest.mark.faults


def test_it_survives_a_replica_killed_mid_exec(h, scenario):
    marker = new_marker("midexec")
    bob = scenario.agent("bob", replica=0)
    key = str(uuid.uuid4()) if idempotency_supported(bob, "exec") else None
    args = {"connection_name": "target", "input": statement(marker, sleep=3)} | (
        {"idempotency_key": key} if key else {}
    )
    thread, box = in_thread(lambda: bob.call("exec", args, timeout=60))
    # Mid-exec: the statement has started on the target and the session is running somewhere.
    wait_for(lambda: h.target_running(marker), timeout=60, what="the statement to run on the target")
    running = wait_for(
        lambda: (s := session_of(h, marker)) and s["status"] == "running" and s, timeout=30, what="running"
    )
    victim = h.replica_running(running["runner"])
    assert victim is not None, f"session {running['id']} runs on no replica we know ({running['runner']})"
    h.replicas[victim].kill9()
    thread.join(timeout=60)
    scenario.notes.append(f"the caller's first answer: {box.get('value')}")

    # The agent asks again (with its idempotency key when the gateway has them) until it knows.
    retry = scenario.agent("bob")
    deadline = time.monotonic() + lease_budget(h) + 30
    if key:
        answer = retry.call("exec", args, timeout=60)
        assert answer.ok, answer
        assert answer.data["session_id"] == str(running["id"]), "the retry ran a second session"
    envelope = wait_session(retry, str(running["id"]), deadline)
    assert envelope is not None and envelope["status"] != "running", envelope
    h.ensure_replicas()
    check_invariants(scenario)


DELAYS_MS = [0, 50, 200, 400, 1000]


@pytest.mark.parametrize("delay_ms", DELAYS_MS)
def test_an_approved_execution_survives_its_replica_killed_after_reviews_execute(h, scenario, delay_ms):
    marker = new_marker(f"approved{delay_ms}")
    victim = DELAYS_MS.index(delay_ms) % 2  # alternate the replicas
    bob = scenario.agent("bob")
    pending = bob.call("exec", {"connection_name": "reviewed", "input": statement(marker, sleep=0.5)})
    assert pending.ok and pending.data["status"] == "pending_approval", pending
    review_id, session_id = pending.data["review_id"], pending.data["session_id"]
    approved = scenario.agent("frank").call("reviews_update", {"id": review_id, "status": "APPROVED"})
    assert approved.ok, approved
    scenario.approved[marker] = review_id

    direct = scenario.agent("bob", replica=victim)
    key = str(uuid.uuid4()) if idempotency_supported(direct, "reviews_execute") else None
    args = {"id": review_id} | ({"idempotency_key": key} if key else {})
    sent = threading.Event()

    def execute():
        sent.set()
        return direct.call("reviews_execute", args, timeout=60)

    thread, box = in_thread(execute)
    sent.wait(10)
    time.sleep(delay_ms / 1000)  # the fault's timing, deliberately
    h.replicas[victim].kill9()
    thread.join(timeout=60)
    h.replicas[victim].start(wait=False)  # back for the next scenario; the agent retries via the balancer

    envelope = execute_until_known(scenario.agent("bob"), review_id, session_id, key=key)
    ran = h.target_count(marker)
    scenario.notes.append(
        f"delay {delay_ms} ms: first answer {box.get('value')}, then {envelope}, ran {ran}x"
    )
    assert envelope is not None, "the agent never learned how its approved execution ended"
    check_invariants(scenario)
    assert ran == 1, (
        f"the approved execution ran {ran}x (review {h.review(review_id)}, session {h.session(session_id)})"
    )


def test_an_approved_execution_survives_its_replica_killed_mid_statement(h, scenario):
    """The deterministic form of the late kill: the approved statement is running on the target when
    the replica running it dies, and the target aborts it. It never took effect, so the requester must
    be able to run it (or the gateway must run it again), exactly once."""
    marker = new_marker("approvedmid")
    bob = scenario.agent("bob")
    pending = bob.call("exec", {"connection_name": "reviewed", "input": statement(marker, sleep=3)})
    assert pending.ok and pending.data["status"] == "pending_approval", pending
    review_id, session_id = pending.data["review_id"], pending.data["session_id"]
    approved = scenario.agent("frank").call("reviews_update", {"id": review_id, "status": "APPROVED"})
    assert approved.ok, approved
    scenario.approved[marker] = review_id

    direct = scenario.agent("bob", replica=1)
    key = str(uuid.uuid4()) if idempotency_supported(direct, "reviews_execute") else None
    args = {"id": review_id} | ({"idempotency_key": key} if key else {})
    thread, box = in_thread(lambda: direct.call("reviews_execute", args, timeout=60))
    wait_for(lambda: h.target_running(marker), timeout=60, what="the approved statement to run on the target")
    running = h.session(session_id)
    victim = h.replica_running(running["runner"] or "")
    assert victim is not None, f"session {session_id} runs on no replica we know ({running})"
    h.replicas[victim].kill9()
    thread.join(timeout=60)
    h.replicas[victim].start(wait=False)

    envelope = execute_until_known(scenario.agent("bob"), review_id, session_id, key=key)
    ran = h.target_count(marker)
    scenario.notes.append(f"first answer {box.get('value')}, then {envelope}, ran {ran}x")
    check_invariants(scenario)
    assert ran == 1, (
        f"the approved execution ran {ran}x (review {h.review(review_id)}, session {h.session(session_id)})"
    )


def test_agent_work_expires_while_its_agent_is_down_and_never_runs_late(h, scenario):
    """Queued agent-queue work with no agent running fails with a clear message once it expires, and
    the agent that comes back later does not run it (issue 12: it ran hours late)."""
    marker = new_marker("edge")
    bob = scenario.agent("bob")
    queued = bob.call("exec", {"connection_name": "edge-target", "input": statement(marker)})
    assert queued.ok and queued.data["status"] == "running", queued  # waiting for an agent
    session_id = queued.data["session_id"]
    budget = h.agent_expiry_seconds + lease_budget(h)
    ended = wait_session(bob, session_id, time.monotonic() + budget)

    h.agent_worker.start()  # the agent comes back; FIFO: anything still queued for it runs first
    fresh = new_marker("edge")
    after = bob.call(
        "exec",
        {"connection_name": "edge-target", "input": statement(fresh), "timeout_seconds": 60},
        timeout=90,
    )
    late = h.target_attempts(marker)
    h.agent_worker.stop()
    scenario.notes.append(f"queued work ended as {ended}; the statement reached the target {late}x")
    assert ended is not None and ended["status"] == "failed", f"still {ended} {budget:.0f}s later"
    assert after.ok and after.data["status"] == "completed", after
    assert late == 0 and h.target_count(marker) == 0, "the expired work ran when its agent came back"
    check_invariants(scenario)


def test_events_survive_a_worker_killed_with_prefetched_tasks(h, scenario):
    # Freeze the pool's children: the worker keeps reserving tasks (its prefetch) but runs none,
    # which is the state a busy worker is in when it is killed.
    children = worker_children(h)
    assert children, "the worker has no pool processes"
    for pid in children:
        os.kill(pid, signal.SIGSTOP)
    bob = scenario.agent("bob")
    for _ in range(6):
        answer = bob.call("exec", {"connection_name": "target", "input": statement(new_marker("wkill"))})
        assert answer.ok and answer.data["status"] == "completed", answer
    wait_for(lambda: redis_unacked(h) > 0, timeout=30, what="the worker to reserve tasks")
    scenario.notes.append(f"unacked at the kill: {redis_unacked(h)}")
    h.worker.kill9()
    h.worker.start()
    check_invariants(scenario)


def test_analyses_survive_a_worker_killed_mid_batch(h, scenario):
    """The worker has claimed a batch of analysis requests and is storing it when it is killed: the
    requests are claimed again once their lease lapses and every session gets its analysis once.
    Mid-batch is made deterministic with a lock: an uncommitted analysis row of the session's own
    (the unique session_id) holds the worker's store until the kill."""
    bob = scenario.agent("bob")
    answer = bob.call("exec", {"connection_name": "target", "input": statement(new_marker("mid"), sleep=7)})
    assert answer.ok and answer.data["status"] == "running", answer
    session_id = answer.data["session_id"]
    with psycopg.connect(h.pg.dsn("portcullis")) as blocker:  # a transaction held open
        blocker.execute(
            "insert into records_analysis (session_id, risk_level, title, explanation, suggested_action, "
            "analyzer, fallback_reason, reasons, created_at) values (%s, 'low', 'held', '', '', 'test', '', "
            "'[]', now())",
            (session_id,),
        )
        claimed = (
            "select count(*) from records_outboxmessage where kind = 'analysis' and attempts >= 1 "
            "and payload->>'session_id' = %s"
        )
        wait_for(lambda: h.gateway_rows(claimed, (session_id,))[0][0] == 1, timeout=60, what="the claim")
        wait_for(
            lambda: (
                h.gateway_rows(
                    "select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
                    "and query like '%%records_analysis%%'"
                )[0][0]
                >= 1
            ),
            timeout=30,
            what="the worker's store to wait on the held row",
        )
        h.worker.kill9()
        blocker.rollback()
    h.worker.start()
    check_invariants(scenario)
    rows = h.gateway_rows("select analyzer from records_analysis where session_id = %s", (session_id,))
    assert rows == [("builtin",)], rows


def test_redis_down_for_20_seconds_under_traffic(h, scenario):
    bob, frank = scenario.agent("bob"), scenario.agent("frank")
    pending = bob.call("exec", {"connection_name": "reviewed", "input": statement(new_marker("rejected"))})
    assert pending.ok and pending.data["status"] == "pending_approval", pending
    with Traffic(scenario, execs=2):
        wait_for(lambda: len(h.sessions_since(scenario.since)) >= 3, timeout=60, what="traffic")
        h.redis.stop()
        down_at = time.monotonic()
        # A reviewer's decision during the outage: its session ends, and that end must be announced.
        rejected = frank.call(
            "reviews_update", {"id": pending.data["review_id"], "status": "REJECTED", "reason": "not now"}
        )
        assert rejected.ok, rejected
        time.sleep(max(0.0, 20 - (time.monotonic() - down_at)))  # the outage, deliberately
        h.redis.start()
        seen = len(h.sessions_since(scenario.since))
        wait_for(lambda: len(h.sessions_since(scenario.since)) >= seen + 3, timeout=60, what="traffic after")
    check_invariants(scenario)


def test_the_gateway_database_restarts_under_traffic(h, scenario):
    with Traffic(scenario, execs=2, sleep=0.5, review_waiter=False):
        wait_for(lambda: len(h.sessions_since(scenario.since)) >= 3, timeout=60, what="traffic")
        h.pg.stop("fast")
        time.sleep(10)  # the outage, deliberately
        h.pg.start()
        seen = len(h.sessions_since(scenario.since))
        wait_for(lambda: len(h.sessions_since(scenario.since)) >= seen + 3, timeout=90, what="traffic after")
    # Recovery without restarting anything: both replicas serve an exec again.
    for index in (0, 1):
        answer = scenario.agent("bob", replica=index).call(
            "exec", {"connection_name": "target", "input": statement(new_marker("after"))}, timeout=60
        )
        assert answer.ok and answer.data["status"] == "completed", (index, answer)
    check_invariants(scenario)


def test_the_worker_survives_a_broker_outage_while_holding_reserved_tasks(h, scenario):
    """The worker death of issue 12, made deterministic: one task reserved but not started (a busy
    pool) and a BRPOP in flight (the prefetch window not full) when Redis goes away."""
    h.beat.stop()  # nothing else may reach the worker meanwhile; it comes back below
    children = worker_children(h)
    for pid in children:
        os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: redis_unacked(h) == 0, timeout=30, what="the worker to have nothing reserved")
        subprocess.run(
            [sys.executable, "-m", "celery", "-A", "gateway", "call", "sessions.tasks.webhooks_retry_due"],
            cwd=ROOT,
            env=h.env(),
            check=True,
            capture_output=True,
        )
        wait_for(lambda: redis_unacked(h) == 1, timeout=30, what="the worker to reserve the task")
        before = len(h.worker.log_text(True))
        h.redis.stop()
        wait_for(
            lambda: "Connection to broker lost" in h.worker.log_text(True)[before:] or not h.worker.alive,
            timeout=60,
            what="the worker to notice the outage",
        )
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    h.redis.start()
    h.beat.start()
    check_invariants(scenario)
