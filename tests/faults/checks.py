"""What the fault scenarios share: the statement every exec runs, what a careful agent does after
losing an answer, background traffic, and the invariants checked after every fault (see
docs/fault-suite.md)."""

from __future__ import annotations

import re
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field

from tests.faults.harness import Agent, Harness, wait_for

FINAL = ("done", "failed", "blocked", "rejected", "cancelled")
ACTIVE = ("open", "running")
MARKER = re.compile(r"values \('([a-z0-9-]+)'\)")


def statement(marker: str, sleep: float = 0.0) -> str:
    """A write that says on the target itself whether it took effect: one transaction (PostgreSQL runs
    a multi-statement simple query as one) that inserts `marker` into `execs` only if it runs to its
    end. The target's statement log says how often it was attempted."""
    prefix = f"select pg_sleep({sleep}); " if sleep else ""
    return prefix + f"insert into execs(marker) values ('{marker}') returning marker"


def new_marker(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class Scenario:
    h: Harness
    name: str
    since: object
    agents: list[Agent] = field(default_factory=list)
    approved: dict[str, str] = field(default_factory=dict)  # marker -> review id
    notes: list[str] = field(default_factory=list)

    def agent(self, who: str, replica: int | None = None) -> Agent:
        agent = self.h.agent(who, replica)
        self.agents.append(agent)
        return agent


def restore(h: Harness) -> None:
    """Bring every piece back (a failed scenario must not break the next one)."""
    if not h.redis.ping():
        h.redis.start()
    for cluster in (h.pg, h.target_pg):
        if not (cluster.data / "postmaster.pid").exists():
            cluster.start()
    h.target_proxy.restore()
    h.agent_worker.stop()  # scenarios that need the agent start it themselves
    for proc in (h.worker, h.beat):
        if not proc.alive:
            proc.start(wait=False)
    h.ensure_replicas()
    for proc in (h.worker, h.beat):
        proc.wait_ready(90)


# --- what an agent does -------------------------------------------------------------------------


def idempotency_supported(agent: Agent, tool: str) -> bool:
    return "idempotency_key" in agent.tool_arguments(tool)


def wait_session(agent: Agent, session_id: str, deadline: float) -> dict | None:
    """sessions_wait until the session is final or `deadline` (monotonic) passes."""
    envelope = None
    while time.monotonic() < deadline:
        answer = agent.call("sessions_wait", {"session_id": session_id, "timeout_seconds": 10}, timeout=30)
        if answer.ok:
            envelope = answer.data
            if envelope["status"] != "running":
                return envelope
        elif answer.kind == "tool_error":
            return None
    return envelope


def execute_until_known(
    agent: Agent, review_id: str, session_id: str, *, key: str | None, budget: float = 120
):
    """A careful agent after losing the answer of reviews_execute: ask again until it knows how
    the approved execution ended (running again only what the gateway says is still executable)."""
    deadline = time.monotonic() + budget
    args = {"id": review_id, "timeout_seconds": 10} | ({"idempotency_key": key} if key else {})
    while time.monotonic() < deadline:
        answer = agent.call("reviews_execute", args, timeout=30)
        if answer.ok:
            if answer.data["status"] == "running":
                return wait_session(agent, answer.data["session_id"], deadline)
            return answer.data
        if answer.kind == "tool_error" and "already executed" in answer.text:
            return wait_session(agent, session_id, deadline)
        if answer.kind == "tool_error":
            return {"status": "refused", "message": answer.text}
        time.sleep(0.5)  # a transport error: the replica is gone; the balancer sends the retry elsewhere
    return None


def in_thread(fn):
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


class Traffic:
    """Agents calling in a loop from threads until stopped: exec, sessions_wait, reviews_wait."""

    def __init__(self, sc: Scenario, *, execs: int = 2, sleep: float = 0.0, review_waiter: bool = True):
        self.sc, self.sleep = sc, sleep
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._execs, args=(i,), daemon=True) for i in range(execs)]
        if review_waiter:
            self.threads.append(threading.Thread(target=self._review_waits, daemon=True))

    def _execs(self, index: int) -> None:
        agent = self.sc.agent("bob")
        while not self.stop_event.is_set():
            answer = agent.call(
                "exec",
                {"connection_name": "target", "input": statement(new_marker("traffic"), self.sleep)},
                timeout=30,
            )
            if answer.ok and answer.data["status"] == "running":
                agent.call(
                    "sessions_wait",
                    {"session_id": answer.data["session_id"], "timeout_seconds": 3},
                    timeout=30,
                )
            elif not answer.ok:
                time.sleep(0.2)  # the gateway is down: an agent backs off a little

    def _review_waits(self) -> None:
        agent = self.sc.agent("bob")
        pending = agent.call(
            "exec", {"connection_name": "reviewed", "input": statement(new_marker("waiter"))}
        )
        if not pending.ok:
            return
        while not self.stop_event.is_set():
            answer = agent.call(
                "reviews_wait", {"id": pending.data["review_id"], "timeout_seconds": 2}, timeout=30
            )
            if not answer.ok:
                time.sleep(0.2)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=90)


# --- the invariants ---------------------------------------------------------------------------------


def lease_budget(h: Harness) -> float:
    """How long a session may stay open/running after its process died: the lease plus a sweep,
    and a generous margin for a loaded machine."""
    return h.runner_stale_seconds + 60


def check_invariants(sc: Scenario, *, probe: bool = True) -> None:
    h = sc.h
    problems: list[str] = []

    # Answers: no internal errors, no plain 500s; a 5xx must be a 503 with Retry-After.
    for agent in sc.agents:
        for tool, answer in agent.answers:
            if answer.kind == "internal_error":
                problems.append(f"{tool} answered an internal error: {answer.text[:200]}")
            elif answer.kind == "http_error" and (answer.status_code != 503 or not answer.retry_after):
                problems.append(
                    f"{tool} answered HTTP {answer.status_code} ({answer.content_type}, Retry-After "
                    f"{answer.retry_after!r}): {answer.text[:120]!r}"
                )

    # Sessions: none left open/running past the lease.
    try:
        wait_for(
            lambda: not [s for s in h.sessions_since(sc.since) if s["status"] in ACTIVE],
            timeout=lease_budget(h),
            what="every session to end",
            interval=0.5,
        )
    except TimeoutError:
        stuck = [s for s in h.sessions_since(sc.since) if s["status"] in ACTIVE]
        problems.append(
            f"{len(stuck)} session(s) still open/running {lease_budget(h):.0f}s later: "
            + ", ".join(f"{s['id']} {s['status']} runner {s['runner']}" for s in stuck[:5])
        )
    sessions = h.sessions_since(sc.since)

    # The target: nothing twice; the record agrees with what ran; approved executions ran once.
    for s in sessions:
        found = MARKER.search(s["input"] or "")
        if not found:
            continue
        marker = found.group(1)
        ran, started = h.target_count(marker), h.target_attempts(marker)
        if ran > 1:
            problems.append(
                f"DUPLICATE: {marker} ran {ran}x (started {started}x) on the target (session {s['id']})"
            )
        if started > 1:
            sc.notes.append(f"{marker} started {started}x on the target and took effect {ran}x")
        if s["status"] == "failed" and "unknown" in (s["error"] or "") and ran:
            sc.notes.append(f"session {s['id']} is failed with an unknown outcome, but {marker} took effect")
        if s["status"] == "done" and s["exit_code"] == 0 and ran != 1:
            problems.append(f"session {s['id']} is recorded done but {marker} is on the target {ran}x")
        if s["status"] in ("blocked", "rejected", "cancelled") and started:
            problems.append(f"session {s['id']} is recorded {s['status']} but {marker} started on the target")
    for marker, review_id in sc.approved.items():
        review = h.review(review_id)
        ran = h.target_count(marker)
        if ran == 0 and review.get("status") != "APPROVED":
            session = h.session(str(review["session_id"]))
            problems.append(
                f"LOST approved execution: review {review_id} is {review.get('status')}, its session is "
                f"{session.get('status')} ({(session.get('error') or '')[:120]}), and {marker} never ran"
            )

    # A probe: the worker that lived through the fault still works (events reach the sink).
    probe_session = None
    if probe:
        answer = sc.agent("bob").call(
            "exec", {"connection_name": "target", "input": statement(new_marker("probe"))}, timeout=60
        )
        if answer.ok:
            probe_session = answer.data["session_id"]
        else:
            problems.append(f"after the fault a plain exec answered {answer.kind}: {answer.text[:200]}")
        sessions = h.sessions_since(sc.since)

    # Events: every session that ended has its end event, every one that ran its start.
    def missing_events():
        seen: dict[str, set] = {}
        for event in h.events():
            sid = (event.get("data") or {}).get("session_id")
            if sid and event["type"].startswith("session."):
                seen.setdefault(sid, set()).add(event["type"])
        missing = []
        for s in sessions:
            types = seen.get(str(s["id"]), set())
            if s["status"] in FINAL and not types & {"session.finished", "session.blocked"}:
                missing.append((s, "end"))
            if s["started_at"] is not None and "session.started" not in types:
                missing.append((s, "session.started"))
        return missing

    try:
        wait_for(
            lambda: not missing_events(), timeout=45, what="every session event in the sink", interval=0.5
        )
    except TimeoutError:
        missing = missing_events()
        problems.append(
            f"LOST events: {len(missing)} missing from the sink 45s later, e.g. "
            + "; ".join(
                f"{kind} of {s['id']} ({s['status']}: {(s['error'] or '')[:60]})" for s, kind in missing[:4]
            )
        )
        if probe_session and any(str(s["id"]) == probe_session for s, _ in missing):
            problems.append("the worker did not deliver the probe's events: it is not processing")

    # Analyses: every session that ended has its analysis (the worker claims them from the outbox;
    # a worker killed mid-batch leaves them to be claimed again when the lease lapses).
    def unanalysed():
        rows = h.gateway_rows(
            "select s.id from records_session s left join records_analysis a on a.session_id = s.id "
            "where s.created_at >= %s and s.status = any(%s) and a.id is null",
            (sc.since, list(FINAL)),
        )
        return [str(row[0]) for row in rows]

    try:
        wait_for(
            lambda: not unanalysed(),
            timeout=h.analysis_lease_seconds + 60,
            what="every analysis",
            interval=0.5,
        )
    except TimeoutError:
        missing = unanalysed()
        backlog = h.gateway_rows(
            "select count(*), max(attempts) from records_outboxmessage where kind = 'analysis'"
        )
        problems.append(
            f"LOST analyses: {len(missing)} ended session(s) without one {h.analysis_lease_seconds + 60}s later, "
            f"e.g. {missing[:3]}; analysis requests in the outbox (count, most claims): {backlog[0]}"
        )

    # At least once, with stable ids: a transition delivered twice is the same event (same id).
    ids: dict[tuple, set] = {}
    ours = {str(s["id"]) for s in sessions}
    for event in h.events():
        sid = (event.get("data") or {}).get("session_id")
        if sid in ours and event["type"].startswith("session."):
            ids.setdefault((sid, event["type"]), set()).add(event["id"])
    unstable = {key: found for key, found in ids.items() if len(found) > 1}
    if unstable:
        (sid, kind), found = next(iter(unstable.items()))
        problems.append(
            f"{len(unstable)} session transition(s) announced under several event ids, e.g. {kind} of "
            f"{sid}: {sorted(found)}"
        )

    # The worker: alive, never an unrecoverable error.
    if not h.worker.alive:
        problems.append("the Celery worker process died")
    if "Unrecoverable error" in h.worker.log_text(True):
        tail = h.worker.log_text(True)
        at = tail.find("Unrecoverable error")
        problems.append(f"WORKER DEATH: {tail[at : at + 300]}")

    verify = h.audit_verify()
    if verify.returncode != 0:
        problems.append(f"audit_verify failed: {verify.stdout[-300:]}{verify.stderr[-300:]}")

    for note in sc.notes:
        print(f"{sc.name}: {note}")
    assert not problems, f"{sc.name}:\n  " + "\n  ".join(problems)


def session_of(h: Harness, marker: str) -> dict:
    rows = h.gateway_rows("select id from records_session where input like %s", (f"%'{marker}'%",))
    return h.session(str(rows[0][0])) if rows else {}


def worker_children(h: Harness) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(h.worker.pid)], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def redis_unacked(h: Harness) -> int:
    out = subprocess.run(
        ["redis-cli", "-p", str(h.redis.port), "-n", "0", "hlen", "unacked"], capture_output=True, text=True
    ).stdout.strip()
    return int(out or 0)
