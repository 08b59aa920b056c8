"""The exec stage: authorize -> input guardrails -> review gate -> record the session (input
first), then hand it to `dispatch`. Also the run of an approved review (`exec_reviewed`), cancel,
and explain (what would happen, nothing run).

The review gate asks `reviews.services.command_gate` whether an access request rule makes the
input wait for people; then the session is recorded as `pending_review` with its `Review`, and
`exec_reviewed` later runs exactly that stored input, once (see `gateway.reviewed.review_execute`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re

from django.conf import settings
from django.db import transaction

from gateway import runner
from gateway.connectors import Limits
from gateway.models import Connection
from gateway.pipeline import dispatch, tools
from gateway.pipeline.common import (
    agent_queue_name,
    block_message,
    idempotent_replay,
    limits_for,
    new_session,
    refuse_without_exec,
    risk_of,
)
from governance import capability, guardrails
from governance import rules as rules_service
from governance.access import authorize
from governance.errors import Conflict, InvalidInput
from governance.policy import ROLE_AUDITOR, Actor, get_scoped, has_role, parse_id
from reviews.services import command_gate, input_risk, review_open
from sessions import idempotency, lifecycle
from sessions.audit import Outcome, audit_record
from sessions.models import Session, SessionStatus, Verb
from sessions.outbox import outbox_put

logger = logging.getLogger("portcullis.pipeline")

MAX_METADATA_BYTES = 8 * 1024


def _check_metadata(metadata) -> dict:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidInput("metadata must be an object")
    if len(json.dumps(metadata)) > MAX_METADATA_BYTES:
        raise InvalidInput(f"metadata is larger than {MAX_METADATA_BYTES} bytes")
    return metadata


def _run_spec(connection: Connection, limits: Limits) -> dict:
    """What any process needs to run an open session: its limits, and its agent queue if any."""
    spec = {"limits": dataclasses.asdict(limits)}
    if connection.agent_queue and not settings.CELERY_TASK_ALWAYS_EAGER:
        spec["agent_queue"] = agent_queue_name(connection)
    return spec


def exec_start(
    *,
    actor: Actor,
    connection_name: str,
    input: str,
    max_rows: int | None = None,
    metadata: dict | None = None,
    verb: str = Verb.EXEC,
    idempotency_key: str | None = None,
) -> Session:
    """Authorize, record and start one exec (or a rendered runbook: verb `runbook`). Returns the
    session (final already if refused).

    Raises NotFound/PolicyDenied (recorded in the audit log) when the actor may not use the
    connection, InvalidInput for malformed arguments. An oversize input is not an exception: it
    is recorded as a failed session, so the attempt is never lost. With an `idempotency_key`, a
    retry by the same user answers with the first attempt's session and runs nothing again.
    """
    if not isinstance(input, str) or not input.strip():
        raise InvalidInput("input is required")
    if max_rows is not None and max_rows < 1:
        raise InvalidInput("max_rows must be at least 1")
    metadata = _check_metadata(metadata)
    request = {"connection": connection_name, "input": input, "max_rows": max_rows, "verb": verb}
    replay = idempotent_replay(actor, idempotency_key, "exec", request)
    if replay is not None:
        return replay
    connection = authorize(
        actor=actor, connection_name=connection_name, mode="runbooks" if verb == Verb.RUNBOOK else "exec"
    )
    refuse_without_exec(connection)

    data = input.encode()
    too_large = len(data) > settings.MAX_INPUT_BYTES
    # Input guardrails: every statement of the parsed batch, before anything is recorded as runnable.
    findings, rules, rules_error = [], [], ""
    if not too_large:
        try:
            rules = rules_service.bound_rules(connection).guardrails
            findings = guardrails.evaluate_input(
                rules,
                input,
                dialect=guardrails.DIALECTS.get(connection.kind),
                assess_risk=risk_of(connection, input),
            )
        except Exception:  # fail closed, and keep the record
            logger.exception("loading or evaluating the rules of connection %s failed", connection.pk)
            rules, rules_error = (
                [],
                "the rules bound to this connection could not be evaluated, so nothing ran",
            )
    if not too_large and not rules_error:  # a read-only token's ceiling: one more read_only rule
        rules, findings = capability.apply_exec_ceiling(actor, connection.kind, input, rules, findings)
    limits = limits_for(connection, max_rows, read_only=guardrails.requires_read_only(rules), rules=rules)

    # The review gate: a rule may make this input wait for people (`pending_approval`).
    gate = None
    if not findings and not rules_error and not too_large:
        gate = command_gate(actor=actor, connection=connection, input=input)

    session = new_session(
        actor,
        connection,
        verb,
        input,
        data[: settings.MAX_INPUT_BYTES].decode(errors="ignore") if too_large else input,
        input_truncated=too_large,
        metadata=metadata,
    )
    outcome, lease, status = Outcome.SUCCESS, None, SessionStatus.OPEN
    spec = _run_spec(connection, limits)
    if findings:
        status, outcome = SessionStatus.BLOCKED, Outcome.BLOCKED
        session.guardrail_findings = [f.as_dict() for f in findings]
        session.error = block_message(connection, findings)
    elif rules_error:
        status, outcome, session.error = SessionStatus.FAILED, Outcome.FAILED, rules_error
    elif gate is not None:
        status = SessionStatus.PENDING_REVIEW
    elif too_large:
        status, outcome = SessionStatus.FAILED, Outcome.INVALID
        session.error = (
            f"input is {len(data)} bytes; this gateway accepts at most {settings.MAX_INPUT_BYTES} bytes"
        )
    elif "agent_queue" not in spec and runner.busy():
        status, outcome = SessionStatus.FAILED, Outcome.FAILED
        session.error = "the gateway is at capacity; try again shortly"
    elif "agent_queue" in spec:  # an agent claims it; if none does in time, it fails (the sweep)
        lease = float(settings.AGENT_QUEUE_EXPIRY_SECONDS)
    elif runner.has_idle_worker():  # it starts at once here: recorded as running, one commit
        status, lease = SessionStatus.RUNNING, lifecycle.lease_seconds()
    else:  # queued here: claimable by any process if this one dies before it gets to it
        lease = float(settings.SESSION_DISPATCH_LEASE_SECONDS)
    session.run_spec = spec if status in (SessionStatus.OPEN, SessionStatus.RUNNING) else {}
    try:
        with transaction.atomic():
            lifecycle.record(
                session,
                status=status,
                actor=actor,
                action="exec.request",
                outcome=outcome,
                lease=lease,
                detail={
                    "connection": connection.name,
                    "input_bytes": len(data),
                    "input_sha256": session.input_sha256,
                    **({"blocked_by": sorted({f.rule for f in findings})} if findings else {}),
                },
            )
            idempotency.remember(
                user=actor.user, key=idempotency_key, operation="exec", request=request, session=session
            )
            if gate is not None:
                rule, risk = gate
                session.pending_review = review_open(
                    actor=actor, session=session, connection=connection, rule=rule, risk=risk
                )
            if "agent_queue" in spec and status == SessionStatus.OPEN:
                outbox_put("dispatch", {"session_id": str(session.pk), "queue": spec["agent_queue"]})
    except idempotency.IntegrityError:  # a concurrent retry with the same key recorded it first
        return idempotency.find(user=actor.user, key=idempotency_key, operation="exec", request=request)
    if status in (SessionStatus.OPEN, SessionStatus.RUNNING) and "agent_queue" not in spec:
        # At once when called outside a transaction (every surface); after the caller's commit otherwise.
        preloaded = (session.input, connection, rules)
        transaction.on_commit(
            lambda: dispatch.submit_local(
                session.pk, limits, preloaded, claimed=status == SessionStatus.RUNNING
            )
        )
    return session


def exec_reviewed(*, actor: Actor, review) -> Session:
    """Run the input a one-time review approved, exactly as stored (called by `reviews_execute`
    inside its transaction, after it claimed the review APPROVED -> EXECUTED).

    The actor must still be allowed on the connection, and the input passes the guardrails as
    they are now: an approval never overrides a rule added since. The session's input must still
    hash to what was approved, so nothing swapped in the database can run. The session is open,
    with a dispatch lease, when this transaction commits: run here right after, or by another
    process if this one dies first — exactly once either way (the claim is one conditional UPDATE).
    """

    session = Session.objects.select_for_update(of=("self",)).get(pk=review.session_id)
    mode = "runbooks" if session.verb == Verb.RUNBOOK else "exec"
    if session.verb == Verb.TOOL:
        connection = tools.upstream_connection(actor=actor, connection_name=review.connection_name)
    else:
        connection = authorize(actor=actor, connection_name=review.connection_name, mode=mode)
    if session.status != SessionStatus.PENDING_REVIEW:
        raise Conflict(f"the session of this review is {session.status}, not waiting for its review")
    approved_hash = hashlib.sha256(review.input.encode()).hexdigest()
    if (
        approved_hash != review.input_sha256
        or session.input_sha256 != review.input_sha256
        or (session.verb != Verb.TOOL and session.input != review.input)  # tool sessions store it masked
        or session.connection_id != connection.pk
    ):
        logger.error("session %s no longer matches its approved review %s", session.pk, review.pk)
        raise Conflict("the session's input no longer matches what was approved; nothing ran")
    if session.verb == Verb.TOOL:
        return tools.tool_reviewed(actor, review, session, connection)
    rules = rules_service.bound_rules(connection).guardrails
    findings = guardrails.evaluate_input(
        rules,
        session.input,
        dialect=guardrails.DIALECTS.get(connection.kind),
        assess_risk=risk_of(connection, session.input),
    )
    rules, findings = capability.apply_exec_ceiling(actor, connection.kind, session.input, rules, findings)
    limits = limits_for(connection, read_only=guardrails.requires_read_only(rules), rules=rules)
    limits = dataclasses.replace(limits, exactly_once=exactly_once_possible(connection, session.input))
    spec = _run_spec(connection, limits)
    released = dispatch.release_reviewed(actor, session, connection, findings, spec)
    session.refresh_from_db()
    if not released:
        return session
    if "agent_queue" not in spec:
        preloaded = (session.input, connection, rules)
        transaction.on_commit(lambda: dispatch.submit_local(session.pk, limits, preloaded, claimed=False))
    return session


# Inputs that control transactions themselves, or cannot run inside one: their runs are not made
# exactly-once (a crash mid-run then ends them "outcome unknown", as every other kind's).
_NOT_WRAPPABLE = re.compile(
    r"\b(begin|commit|rollback|abort|end|savepoint|release|start\s+transaction|prepare\s+transaction|"
    r"vacuum|concurrently|database|tablespace|system|discard|call|do)\b",
    re.IGNORECASE,
)


def exactly_once_possible(connection: Connection, text: str) -> bool:
    """Whether an approved execution can run exactly once, whatever happens to this process: on
    PostgreSQL, as one transaction whose id is recorded before it commits (docs/durability.md)."""
    return connection.kind == "postgres" and not _NOT_WRAPPABLE.search(text)


def exec_cancel(*, actor: Actor, session_id: str) -> Session:
    """Stop a queued or running session the actor owns (admins: any in their org).

    Raises NotFound ("session not found") for missing or invisible sessions, Conflict when the
    session has already ended. A queued session ends at once; a running one is interrupted by the
    process running it (here, or another replica within a second).
    """

    session_pk = parse_id(session_id, "session not found")
    with transaction.atomic():
        session = get_scoped(
            Session.objects.select_for_update(of=("self",)),
            actor,
            "cancel",
            not_found="session not found",
            pk=session_pk,
        )
        if session.is_final:
            raise Conflict(f"session is already {session.status}")
        Session.objects.filter(pk=session_pk).update(cancel_requested=True)
        if session.status == SessionStatus.OPEN:
            session = lifecycle.transition(
                session_pk,
                SessionStatus.CANCELLED,
                actor=actor,
                action="exec.cancel",
                fields={"error": "cancelled before it ran", "cancel_requested": True},
            )
        else:
            session.cancel_requested = True
            audit_record(actor=actor, action="exec.cancel", target=session)
    runner.cancel_local(str(session_pk))
    return session


def exec_explain(*, actor: Actor, connection_name: str, input: str) -> dict:
    """What would happen to `input` on the connection, without running anything: the guardrails
    that fire, whether it runs read-only, which masking rules apply. Audited.

    Callers who are not admins or auditors see which rules fire, not the findings' details.
    """
    if not isinstance(input, str) or not input.strip():
        raise InvalidInput("input is required")
    connection = authorize(actor=actor, connection_name=connection_name, mode="exec")
    refuse_without_exec(connection)
    if len(input.encode()) > settings.MAX_INPUT_BYTES:
        raise InvalidInput(f"input is larger than {settings.MAX_INPUT_BYTES} bytes; exec would refuse it")
    bound = rules_service.bound_rules(connection)
    rules = bound.guardrails
    findings = guardrails.evaluate_input(
        rules,
        input,
        dialect=guardrails.DIALECTS.get(connection.kind),
        assess_risk=risk_of(connection, input),
    )
    masker, masking_rules = bound.masker, bound.masking_rules
    privileged = has_role(actor, ROLE_AUDITOR)

    review = None if findings else command_gate(actor=actor, connection=connection, input=input)
    risk = review[1] if review is not None else input_risk(connection, input)
    audit_record(
        actor=actor,
        action="exec.explain",
        target=connection,
        detail={"would_block": bool(findings), "input_sha256": hashlib.sha256(input.encode()).hexdigest()},
    )
    return {
        "connection_name": connection.name,
        "would_run": not findings,
        "blocked_by": sorted({f.rule for f in findings}),
        "findings": [f.as_dict() for f in findings] if privileged else [],
        "read_only": guardrails.requires_read_only(rules),
        "max_affected_rows": (guardrails.affected_rows_ceiling(rules) or (None,))[0],
        "guardrails_evaluated": [r.name for r in rules],
        "masking_rules": masking_rules,
        "unavailable_entities": masker.unavailable_entities,
        "review_required": review is not None,
        "review_rule": review[0].name if review is not None else None,
        "risk": risk,
    }
