"""The dispatch stage: a recorded session goes to this process's bounded pool (`gateway.runner`)
or, through the outbox, to its agent queue (the Celery task `session_run`); the worker claims it,
runs the connector, protects the output (`protect`) and finishes the record. Also what the sweep
calls: resuming an open session whose dispatcher died, and asking the target what became of an
abandoned exactly-once run."""

from __future__ import annotations

import dataclasses
import logging
import time

from celery import shared_task
from django.conf import settings
from django.db import close_old_connections

from gateway import runner
from gateway.connectors import ExecResult, Limits
from gateway.connectors.base import CheckpointFailed, cap_text
from gateway.connectors.postgres import transaction_outcome
from gateway.models import Connection
from gateway.pipeline import protect
from gateway.pipeline.common import block_message, connector_for
from governance import guardrails
from governance.errors import AffectedRowsExceeded, ConnectorError, PortcullisError
from governance.policy import Actor
from sessions import lifecycle, outbox
from sessions.audit import Outcome
from sessions.models import Session, SessionStatus
from sessions.outbox import outbox_put

logger = logging.getLogger("portcullis.pipeline")


def submit_local(session_id, limits: Limits, preloaded=None, *, claimed: bool) -> None:
    """Run a recorded session in this process's bounded pool. `claimed`: it was recorded running
    and held by this runner; otherwise the job claims it first (it may have been taken meanwhile)."""
    runner.submit(
        str(session_id),
        lambda: _run(session_id, limits, preloaded, claimed=claimed),
        timeout_seconds=limits.timeout_seconds,
    )


def release_reviewed(actor: Actor, session: Session, connection: Connection, findings, spec: dict) -> bool:
    """A reviewed session leaves `pending_review`: blocked (and finished) when today's guardrails
    find something, else open, with a dispatch lease, for this process (or any other, if this one
    dies first) to claim and run. Returns True when it may run."""
    if findings:
        lifecycle.transition(
            session.pk,
            SessionStatus.BLOCKED,
            actor=actor,
            action="exec.blocked",
            outcome=Outcome.BLOCKED,
            fields={
                "guardrail_findings": [f.as_dict() for f in findings],
                "error": block_message(connection, findings),
            },
        )
        return False
    lifecycle.transition(
        session.pk,
        SessionStatus.OPEN,
        actor=actor,
        action="exec.release",
        fields={"run_spec": spec, "runner": runner.runner_id()},
        lease=float(
            settings.AGENT_QUEUE_EXPIRY_SECONDS
            if "agent_queue" in spec
            else settings.SESSION_DISPATCH_LEASE_SECONDS
        ),
    )
    if "agent_queue" in spec:
        outbox_put("dispatch", {"session_id": str(session.pk), "queue": spec["agent_queue"]})
    return True


@outbox.handler("dispatch")
def _dispatch_to_agent(payload: dict) -> None:
    """The outbox relay's hand-over of an open session to its agent queue (raises while the broker
    is away; the message waits). The agent's claim makes a duplicate message harmless."""
    session_run.apply_async(args=[payload["session_id"]], queue=payload["queue"])


def run_on_agent(session_id: str, limits: dict | None = None) -> None:
    """The agent worker's side of the dispatch: claim and run one session in this process."""
    session = Session.objects.filter(pk=session_id).only("run_spec").first()
    if session is None:
        return
    spec_limits = (session.run_spec or {}).get("limits") or limits
    if not spec_limits:
        return
    limits = Limits(**spec_limits)
    runner.run_here(
        session_id, lambda: _run(session_id, limits, claimed=False), timeout_seconds=limits.timeout_seconds
    )


@shared_task(name="gateway.tasks.session_run", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def session_run(session_id: str, limits: dict | None = None) -> None:
    """Claim and run a recorded session on this agent worker (queue `agent.<org id>.<name>`, near
    the target). Acknowledged late: a worker killed before the claim leaves the message to another
    worker; after the claim a redelivered message finds the session taken and does nothing. The
    Celery task lives beside the code that queues it; gateway/tasks.py lists it."""
    run_on_agent(session_id, limits)


def recover_open(session_id) -> bool:
    """Take over an open session whose dispatch lease lapsed (the process that should have run it
    died): claim it for this runner and run it here. Agent work is re-sent to its queue, or failed
    once its deadline passed. Returns True when this process took it."""
    session = Session.objects.filter(pk=session_id, status=SessionStatus.OPEN).only("run_spec").first()
    if session is None:
        return False
    spec = session.run_spec or {}
    if "agent_queue" in spec:
        lifecycle.expire_waiting(
            session_id,
            f"no agent on queue {spec['agent_queue']!r} took this session within "
            f"{settings.AGENT_QUEUE_EXPIRY_SECONDS} s; nothing ran. Check that the agent is running, then run it again",
        )
        return False
    if "limits" not in spec:
        lifecycle.expire_waiting(session_id, "this session cannot be resumed; nothing ran")
        return False
    limits = Limits(**spec["limits"])
    if not lifecycle.claim(session_id, runner=runner.runner_id(), lapsed_only=True):
        return False
    logger.warning("resuming session %s, whose dispatcher went away before running it", session_id)
    submit_local(session_id, limits, claimed=True)
    return True


def _run(session_id, limits: Limits, preloaded: tuple | None = None, *, claimed: bool = False) -> None:
    """Worker-thread body: claim the session (unless recorded running for this runner), run the
    connector, finish the record. Whatever goes wrong, the session does not stay running: it is
    finished as failed here, or by the sweep once its lease lapses."""
    try:
        close_old_connections()
        if not claimed and not lifecycle.claim(session_id, runner=runner.runner_id()):
            return None  # cancelled while queued, or another process took it
        return _run_claimed(session_id, limits, preloaded)  # the final session: a local waiter's answer
    except Exception:
        logger.exception("exec job for session %s failed before finishing its record", session_id)
        finish_with_retry(
            session_id,
            SessionStatus.FAILED,
            {"error": "internal error while running the session; the gateway log has details"},
            action="exec.finish",
            outcome=Outcome.FAILED,
            detail={"status": "failed"},
        )


def _run_claimed(session_id, limits: Limits, preloaded: tuple | None) -> None:
    rules = None
    if preloaded is not None:
        text, connection, rules = preloaded
    else:
        session = Session.objects.select_related("connection__org").get(pk=session_id)
        text, connection = session.input, session.connection
    result: ExecResult | None = None
    error = ""
    started = time.monotonic()
    ceiling_findings: list = []  # issue 14: a write over the affected-rows ceiling was rolled back
    try:
        if connection is None:
            raise ConnectorError("the connection was deleted before the session ran")
        connector = connector_for(connection, limits)
        runner.set_cancel_callback(str(session_id), connector.cancel)
        if limits.exactly_once:
            connector.before_commit = lambda marker: _record_target_txn(session_id, limits, marker)
        result = connector.execute(text)
    except CheckpointFailed:
        # Nothing was committed on the target: give the session back to be run again.
        logger.warning("session %s: its target transaction could not be recorded; requeued", session_id)
        try:
            lifecycle.requeue(session_id, runner=runner.runner_id())
        except Exception:  # the database is away: the sweep requeues it once the lease lapses
            logger.warning("session %s: requeue failed; the sweep will", session_id, exc_info=True)
        return None
    except AffectedRowsExceeded as exc:  # issue 14: rolled back by the connector -> blocked
        error = exc.message
        ceiling_findings = [
            guardrails.Finding(
                exc.rule, "input", "sql.max_affected_rows", None, f"changed {exc.touched} rows"
            )
        ]
    except PortcullisError as exc:
        error = exc.message
    except Exception:
        logger.exception("connector crashed on session %s", session_id)
        error = "internal error while running the connector; the gateway log has details"
    elapsed_ms = int((time.monotonic() - started) * 1000)
    findings, masking_info = ceiling_findings, {}
    if result is not None and connection is not None:
        try:
            result, findings, masking_info, error = protect.protect_output(
                connection, result, limits, rules, sql=text
            )
        except Exception:  # never store or return what could not be checked
            logger.exception("output protection crashed on session %s", session_id)
            result, error = (
                None,
                "the result could not be checked and was withheld; the gateway log has details",
            )
    return _finish(
        session_id,
        result=result,
        error=error,
        elapsed_ms=elapsed_ms,
        max_bytes=limits.max_output_bytes,
        findings=findings,
        masking_info=masking_info,
    )


def _record_target_txn(session_id, limits: Limits, marker: dict) -> None:
    """Before the target commits: record its transaction id with the session (still ours), so a
    sweeper that finds the run abandoned can ask the target whether it committed. Raises
    CheckpointFailed (the connector then rolls back) when that cannot be written."""
    try:
        spec = {"limits": dataclasses.asdict(limits), "target_txn": marker}
        held = Session.objects.filter(
            pk=session_id, status=SessionStatus.RUNNING, runner=runner.runner_id()
        ).update(run_spec=spec)
    except Exception as exc:
        raise CheckpointFailed(str(exc)) from exc
    if not held:
        raise CheckpointFailed("the session is no longer held by this runner")


def resolve_abandoned_run(session_id) -> str:
    """A running exactly-once session whose lease lapsed (its runner died): ask the target what
    became of its transaction. Committed: it ran once, ended failed with its result unknown.
    Aborted, or never recorded (the runner died before the commit point): run again, once.
    In progress: its backend is stopped and the next sweep looks again. Returns what it did."""
    session = Session.objects.select_related("connection").filter(pk=session_id).first()
    if session is None or session.status != SessionStatus.RUNNING:
        return "gone"
    marker = (session.run_spec or {}).get("target_txn")
    if marker is None:
        return "requeued" if lifecycle.requeue(session_id, lapsed_only=True) else "kept"
    if session.connection is None:
        lifecycle.end_lapsed_run(session_id)
        return "ended"

    limits = Limits(**session.run_spec["limits"])
    try:
        outcome = transaction_outcome(connector_for(session.connection, limits), marker)
    except Exception as exc:  # the target is away: ask again on the next sweep
        logger.warning("session %s: cannot ask the target about transaction %s: %s", session_id, marker, exc)
        return "unknown"
    if outcome == "committed":
        lifecycle.end_lapsed_run(
            session_id,
            error=(
                f"the gateway process running this session stopped after the target committed it (transaction "
                f"{marker['xid']}): it ran once; its result was not recorded"
            ),
        )
        return "committed"
    if outcome == "aborted":
        return "requeued" if lifecycle.requeue(session_id, lapsed_only=True) else "kept"
    return "waiting"


FINISH_RETRY_SECONDS = 60.0


def finish_with_retry(
    session_id, to, fields: dict, *, cancelled: dict | None = None, merged: dict | None = None, **audit
) -> Session | None:
    """The runner's final write, retried while the gateway database is unreachable (the result is
    only in memory until it is written). Gives up after FINISH_RETRY_SECONDS; the sweep then ends
    the session once its lease lapses. A session taken from this runner meanwhile is left alone.
    `to` a status and `cancelled` the fields of a cancel that came meanwhile (lifecycle.transition):
    one statement for the move instead of a locked read and an update; `merged` as there."""
    from django.db import DatabaseError, InterfaceError, OperationalError

    deadline = time.monotonic() + FINISH_RETRY_SECONDS
    delay = 0.2
    while True:
        try:
            return lifecycle.transition(
                session_id,
                to,
                as_owner=True,
                fields=fields,
                expect=(SessionStatus.RUNNING,),
                runner=runner.runner_id(),
                cancelled=cancelled,
                merged=merged,
                **audit,
            )
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() > deadline:
                logger.error("could not record the end of session %s: %s", session_id, exc)
                return None
            logger.warning("recording the end of session %s failed (%s); retrying", session_id, exc)
            close_old_connections()
            time.sleep(delay)
            delay = min(delay * 2, 1.0)  # within the sweep's grace once the database is back
        except DatabaseError:
            raise


def _finish(
    session_id,
    *,
    result: ExecResult | None,
    error: str,
    elapsed_ms: int,
    max_bytes: int,
    findings=(),
    masking_info: dict | None = None,
) -> Session | None:
    fields = {"execution_time_ms": elapsed_ms, "error": error, "masking": masking_info or {}}
    if result is not None:
        output, cut = cap_text(result.output, max_bytes)
        fields.update(
            output=output,
            truncated=result.truncated or cut,
            exit_code=result.exit_code,
            row_count=result.row_count,
        )
        if result.columns is not None:
            fields["result"] = {"columns": result.columns, "rows": result.rows or []}
    if findings:
        fields["guardrail_findings"] = [f.as_dict() for f in findings]

    status = SessionStatus.DONE if result is not None else SessionStatus.FAILED
    if findings:
        status = SessionStatus.BLOCKED
    ok = result is not None and not findings and result.exit_code == 0
    return finish_with_retry(
        session_id,
        status,
        fields,
        cancelled={"error": error or "cancelled"},  # a cancel may have come meanwhile
        action="exec.finish",
        outcome=Outcome.SUCCESS if ok else Outcome.FAILED,
        detail={
            "exit_code": result.exit_code if result is not None else None,
            "execution_time_ms": elapsed_ms,
        },
    )
