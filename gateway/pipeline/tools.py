"""The one exec path. Every surface that runs anything against a target comes through here, and
this is the only module that imports the connectors (a test enforces it).

    authorize -> input guardrails -> review gate -> record the session (input first)
      -> run in the bounded pool (read-only when a rule asks) -> output guardrails -> mask
      -> finish the record -> enqueue analysis -> envelope

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
import time

from celery import shared_task
from django.conf import settings
from django.db import close_old_connections, transaction

from gateway import runner, upstream
from gateway.connectors import REGISTRY, ExecResult, Limits
from gateway.connectors.base import CheckpointFailed, cap_text, json_value, render_table
from gateway.connectors.postgres import transaction_outcome
from gateway.kinds import KINDS
from gateway.models import Connection, ContractStatus
from gateway.upstream_identity import Caller
from governance import capability, guardrails, masking, masking_lineage
from governance import rules as rules_service
from governance.access import authorize
from governance.errors import (
    AffectedRowsExceeded,
    Conflict,
    ConnectorError,
    InvalidInput,
    NotFound,
    PolicyDenied,
    PortcullisError,
)
from governance.models import GuardrailRule, UserGroup
from governance.policy import ROLE_AUDITOR, Actor, get_scoped, has_role, parse_id
from reviews import services as review_services
from reviews.models import Review
from reviews.services import command_gate, input_risk, review_open
from sessions import idempotency, lifecycle, outbox
from sessions.analysis import analyze_input
from sessions.audit import Outcome, audit_record
from sessions.models import Analysis, Session, SessionStatus, Verb
from sessions.outbox import outbox_put
from sessions.services import analysis_to_dict
from sessions.wakeup import wait_for_final

logger = logging.getLogger("portcullis.pipeline")

MAX_METADATA_BYTES = 8 * 1024
SCHEMA_TIMEOUT_SECONDS = 30


# --- connection settings (the services validate through here; they never import connectors) ---


def connection_kinds() -> list[str]:
    return sorted(KINDS)


def validate_connection_settings(kind: str, values: dict) -> tuple[dict, dict]:
    """Check a full set of settings for `kind`; return (config, secrets) split by what is secret."""
    cls = REGISTRY.get(kind)
    if cls is None:
        raise InvalidInput(f"unknown connection kind {kind!r}; use one of: {', '.join(connection_kinds())}")
    record = KINDS[kind]
    if record.enabled_setting and not getattr(settings, record.enabled_setting):
        raise InvalidInput(f"{kind} connections are disabled on this gateway ({record.enabled_env})")
    cls.validate_settings(values)
    config = {k: v for k, v in values.items() if k not in cls.secret_keys}
    secrets = {k: v for k, v in values.items() if k in cls.secret_keys}
    return config, secrets


def connection_setting_names(kind: str) -> tuple[tuple[str, bool], ...]:
    """The non-secret settings of `kind` as its connector declares them: (name, required), required first."""
    cls = REGISTRY[kind]
    required = tuple((key, True) for key in cls.required_keys if key not in cls.secret_keys)
    return required + tuple((key, False) for key in cls.optional_keys if key not in cls.secret_keys)


def secret_setting_names(kind: str) -> tuple[str, ...]:
    cls = REGISTRY.get(kind)
    return cls.secret_keys if cls else ()


# --- authorization -----------------------------------------------------------------------


def refuse_without_exec(connection: Connection) -> None:
    """A kind that has no exec (its record says so: `mcp` proxies tools) answers with what to use."""
    kind = KINDS.get(connection.kind)
    if kind is not None and not kind.exec:
        raise InvalidInput(f'connection "{connection.name}" {kind.exec_refusal}')


def _limits(
    connection: Connection, max_rows: int | None = None, *, read_only: bool = False, rules=()
) -> Limits:
    rows = connection.max_rows if max_rows is None else min(max_rows, connection.max_rows)
    ceiling = guardrails.affected_rows_ceiling(list(rules))  # issue 14: affected-rows ceiling
    return Limits(
        max_rows=rows,
        max_output_bytes=connection.max_output_bytes,
        timeout_seconds=connection.timeout_seconds,
        read_only=read_only,
        max_affected_rows=ceiling[0] if ceiling else None,
        ceiling_rule=ceiling[1] if ceiling else "",
    )


def _block_message(connection: Connection, findings, *, withheld: bool = False) -> str:
    """What the caller is told: the rule's name and its admin's message, never its conditions."""
    first = findings[0].rule
    unparsed = next((f for f in findings if f.condition == "sql.parse_error"), None)
    if unparsed is not None:
        # Fail closed, and say why: the rule cannot check what it cannot parse.
        return (
            f"blocked because the input could not be checked: it {unparsed.detail}. Guardrail "
            f"{unparsed.rule} checks SQL statements and lets nothing through that it cannot read"
        )
    rule = GuardrailRule.objects.filter(org_id=connection.org_id, name=first).first()
    default = "the result was withheld by a guardrail" if withheld else "blocked by a guardrail"
    message = rule.message if rule is not None and rule.message else default
    return f"{message} (guardrail: {first})"


def _risk_of(connection: Connection, text: str):
    """The analyzer's verdict on `text`, for guardrails with `risk_at_least` (called lazily)."""

    return lambda: analyze_input(connection_name=connection.name, connection_kind=connection.kind, text=text)


def _connector(connection: Connection, limits: Limits):
    return REGISTRY[connection.kind](connection.config, connection.get_secrets(), limits)


def _check_metadata(metadata) -> dict:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidInput("metadata must be an object")
    if len(json.dumps(metadata)) > MAX_METADATA_BYTES:
        raise InvalidInput(f"metadata is larger than {MAX_METADATA_BYTES} bytes")
    return metadata


# --- exec ---------------------------------------------------------------------------------


def _new_session(
    actor: Actor, connection: Connection, verb: str, full_input: str, stored_input: str, **fields
) -> Session:
    """A session about to be recorded (by sessions.lifecycle): who, where, from which surface, and
    the input (its hash and size always of the full input, even when only a prefix is stored)."""
    data = full_input.encode()
    return Session(
        org_id=actor.org_id,
        user=actor.user,
        connection=connection,
        connection_name=connection.name,
        connection_kind=connection.kind,
        surface=actor.surface,
        client=actor.client,
        verb=verb,
        input=stored_input,
        input_sha256=hashlib.sha256(data).hexdigest(),
        input_bytes=len(data),
        runner=runner.runner_id(),
        **fields,
    )


def _run_spec(connection: Connection, limits: Limits) -> dict:
    """What any process needs to run an open session: its limits, and its agent queue if any."""
    spec = {"limits": dataclasses.asdict(limits)}
    if connection.agent_queue and not settings.CELERY_TASK_ALWAYS_EAGER:
        spec["agent_queue"] = agent_queue_name(connection)
    return spec


def _idempotent_replay(actor: Actor, key, operation: str, request: dict) -> Session | None:
    """The session of an earlier call with this key (a retry), or None."""
    key = idempotency.check_key(key)
    if key is None:
        return None
    return idempotency.find(user=actor.user, key=key, operation=operation, request=request)


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
    replay = _idempotent_replay(actor, idempotency_key, "exec", request)
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
                assess_risk=_risk_of(connection, input),
            )
        except Exception:  # fail closed, and keep the record
            logger.exception("loading or evaluating the rules of connection %s failed", connection.pk)
            rules, rules_error = (
                [],
                "the rules bound to this connection could not be evaluated, so nothing ran",
            )
    if not too_large and not rules_error:  # a read-only token's ceiling: one more read_only rule
        rules, findings = capability.apply_exec_ceiling(actor, connection.kind, input, rules, findings)
    limits = _limits(connection, max_rows, read_only=guardrails.requires_read_only(rules), rules=rules)

    # The review gate: a rule may make this input wait for people (`pending_approval`).
    gate = None
    if not findings and not rules_error and not too_large:
        gate = command_gate(actor=actor, connection=connection, input=input)

    session = _new_session(
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
        session.error = _block_message(connection, findings)
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
            lambda: _submit_local(session.pk, limits, preloaded, claimed=status == SessionStatus.RUNNING)
        )
    return session


def _submit_local(session_id, limits: Limits, preloaded=None, *, claimed: bool) -> None:
    """Run a recorded session in this process's bounded pool. `claimed`: it was recorded running
    and held by this runner; otherwise the job claims it first (it may have been taken meanwhile)."""
    runner.submit(
        str(session_id),
        lambda: _run(session_id, limits, preloaded, claimed=claimed),
        timeout_seconds=limits.timeout_seconds,
    )


def _release_reviewed(actor: Actor, session: Session, connection: Connection, findings, spec: dict) -> bool:
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
                "error": _block_message(connection, findings),
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
        connection = _upstream_connection(actor=actor, connection_name=review.connection_name)
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
        return _tool_reviewed(actor, review, session, connection)
    rules = rules_service.bound_rules(connection).guardrails
    findings = guardrails.evaluate_input(
        rules,
        session.input,
        dialect=guardrails.DIALECTS.get(connection.kind),
        assess_risk=_risk_of(connection, session.input),
    )
    rules, findings = capability.apply_exec_ceiling(actor, connection.kind, session.input, rules, findings)
    limits = _limits(connection, read_only=guardrails.requires_read_only(rules), rules=rules)
    limits = dataclasses.replace(limits, exactly_once=_exactly_once_possible(connection, session.input))
    spec = _run_spec(connection, limits)
    released = _release_reviewed(actor, session, connection, findings, spec)
    session.refresh_from_db()
    if not released:
        return session
    if "agent_queue" not in spec:
        preloaded = (session.input, connection, rules)
        transaction.on_commit(lambda: _submit_local(session.pk, limits, preloaded, claimed=False))
    return session


def agent_queue_name(connection: Connection) -> str:
    """Agent queues are per org: `agent.<org id>.<name>`, so no org can route work to another's agent."""
    return f"agent.{connection.org_id}.{connection.agent_queue}"


def _refuse_agent_connection(connection: Connection, what: str) -> None:
    if connection.agent_queue and not settings.CELERY_TASK_ALWAYS_EAGER:
        raise InvalidInput(
            f'{what} is not available for connection "{connection.name}": it runs on agent queue '
            f'"{connection.agent_queue}", and only exec is dispatched to agents so far'
        )


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
    _submit_local(session_id, limits, claimed=True)
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
        _finish_with_retry(
            session_id,
            lambda s: SessionStatus.FAILED,
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
        connector = _connector(connection, limits)
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
            result, findings, masking_info, error = _protect(connection, result, limits, rules, sql=text)
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


def _protect(connection: Connection, result: ExecResult, limits: Limits, rules=None, sql: str | None = None):
    """Output guardrails, then masking, on a result before it is stored or leaves the gateway.

    Returns (result or None if withheld, output findings, masking info, error).
    """
    bound = rules_service.bound_rules(connection)
    rules = bound.guardrails if rules is None else rules
    findings = guardrails.evaluate_output(rules, result.output) if rules else []
    if findings:
        return None, findings, {}, _block_message(connection, findings, withheld=True)
    masker, names = bound.masker, bound.masking_rules
    if not masker.active:
        return result, [], {}, ""
    try:
        if result.columns is not None:
            plans = _lineage_plans(connection, masker, sql, limits, len(result.columns))  # issue 14
            rows, counts = masker.mask_rows(result.columns, result.rows or [], plans=plans)
            text, cut = render_table(result.columns, rows, limits.max_output_bytes)
            result = dataclasses.replace(result, rows=rows, output=text, truncated=result.truncated or cut)
        else:
            text, counts = masker.mask_text(result.output)
            result = dataclasses.replace(result, output=text)
    except masking.MaskingError:
        logger.exception("masking failed on a result of connection %s", connection.pk)
        info = {"rules": names, "counts": {}, "failed": True}
        return (
            None,
            [],
            info,
            "masking failed, so the result was withheld (the masking rules are not best-effort)",
        )
    info = {"rules": names, "counts": dict(counts)}
    if masker.unavailable_entities:
        info["unavailable_entities"] = masker.unavailable_entities
    return result, [], info, ""


# Inputs that control transactions themselves, or cannot run inside one: their runs are not made
# exactly-once (a crash mid-run then ends them "outcome unknown", as every other kind's).
_NOT_WRAPPABLE = re.compile(
    r"\b(begin|commit|rollback|abort|end|savepoint|release|start\s+transaction|prepare\s+transaction|"
    r"vacuum|concurrently|database|tablespace|system|discard|call|do)\b",
    re.IGNORECASE,
)


def _exactly_once_possible(connection: Connection, text: str) -> bool:
    """Whether an approved execution can run exactly once, whatever happens to this process: on
    PostgreSQL, as one transaction whose id is recorded before it commits (docs/durability.md)."""
    return connection.kind == "postgres" and not _NOT_WRAPPABLE.search(text)


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
        outcome = transaction_outcome(_connector(session.connection, limits), marker)
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


def _finish_with_retry(session_id, to, fields: dict, **audit) -> Session | None:
    """The runner's final write, retried while the gateway database is unreachable (the result is
    only in memory until it is written). Gives up after FINISH_RETRY_SECONDS; the sweep then ends
    the session once its lease lapses. A session taken from this runner meanwhile is left alone."""
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


def _lineage_plans(connection: Connection, masker, sql: str | None, limits: Limits, width: int):
    """Issue 14: whole-value masking for output columns fed by masked columns (any expression)."""
    dialect = guardrails.DIALECTS.get(connection.kind)
    if sql is None or dialect is None or not masker.follows_lineage:
        return None
    return masking_lineage.derived_plans(
        masker,
        sql,
        dialect,
        key=connection.pk,
        loader=lambda: _connector(connection, dataclasses.replace(limits, read_only=True)).schema_columns(),
        width=width,
        default_db=(connection.config.get("database") or "").lower() or None
        if connection.kind == "mysql"
        else None,
    )


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

    def status_of(session: Session) -> str:  # on the locked row: a cancel may have come meanwhile
        if session.cancel_requested:
            fields["error"] = error or "cancelled"
            return SessionStatus.CANCELLED
        if findings:
            return SessionStatus.BLOCKED
        return SessionStatus.DONE if result is not None else SessionStatus.FAILED

    ok = result is not None and not findings and result.exit_code == 0
    return _finish_with_retry(
        session_id,
        status_of,
        fields,
        action="exec.finish",
        outcome=Outcome.SUCCESS if ok else Outcome.FAILED,
        detail={
            "exit_code": result.exit_code if result is not None else None,
            "execution_time_ms": elapsed_ms,
        },
    )


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


def _loaded_analysis(session: Session) -> dict | None:
    """The session's analysis if it was loaded with it (select_related("analysis")), else None.
    Never queries: the envelope is built in async code, and the analysis usually comes later
    (sessions_get_analysis / sessions_wait_analysis)."""
    if not Session.analysis.is_cached(session):
        return None
    try:
        analysis = session.analysis
    except Analysis.DoesNotExist:
        return None
    data = analysis_to_dict(session.pk, analysis)
    return {k: data[k] for k in ("risk_level", "title", "explanation", "suggested_action", "analyzer")}


def _loaded_review_id(session: Session) -> str | None:
    """The review's id if it was loaded with the session (select_related("review")); never queries."""

    if not Session.review.is_cached(session):
        return None
    try:
        return str(session.review.pk)
    except Review.DoesNotExist:
        return None


def exec_envelope(session: Session) -> dict:
    """The agent-facing answer for a session; `status` is what the agent branches on."""
    envelope: dict = {"session_id": str(session.pk), "session_status": session.status}
    if session.status in (SessionStatus.OPEN, SessionStatus.RUNNING):
        envelope.update(
            status="running",
            message="still running; the gateway keeps running it and records the result",
            next_step="call sessions_wait with session_id until it finishes, or exec_cancel to stop it",
        )
        return envelope
    if session.status == SessionStatus.PENDING_REVIEW:
        review = getattr(session, "pending_review", None)
        review_id = str(review.pk) if review is not None else _loaded_review_id(session)
        envelope.update(
            status="pending_approval",
            review_id=review_id,
            review_url=f"{settings.PUBLIC_BASE_URL}/reviews/{review_id}/" if review_id else None,
            message="approval required before this execution can run; nothing has run",
            next_step=(
                "call reviews_wait with review_id (long-polls until the reviewers decide); once its status "
                "is APPROVED call reviews_execute with review_id to run exactly this input"
            ),
        )
        return envelope
    if session.status == SessionStatus.BLOCKED:
        envelope.update(
            status="blocked",
            rule=session.guardrail_findings[0]["rule"] if session.guardrail_findings else None,
            message=session.error,
            exit_code=session.exit_code,
        )
        return envelope
    output = session.output
    if session.error:
        output = f"{output}\n{session.error}" if output else session.error
    completed = session.status == SessionStatus.DONE and session.exit_code == 0
    envelope.update(
        status="completed" if completed else "failed",
        output=output,
        exit_code=session.exit_code,
        row_count=session.row_count,
        truncated=session.truncated,
        execution_time_ms=session.execution_time_ms,
        analysis=_loaded_analysis(session),
    )
    if session.result:
        envelope["columns"] = session.result.get("columns")
        envelope["rows"] = session.result.get("rows")
    if session.masking:
        envelope["masking"] = session.masking.get("counts", {})
    return envelope


# --- schema introspection ------------------------------------------------------------------


def schema_list(
    *,
    actor: Actor,
    connection_name: str,
    what: str,
    database: str | None = None,
    table: str | None = None,
    schema: str | None = None,
) -> list[dict]:
    """List databases, tables or columns of a SQL connection. Each call is a recorded session."""
    if what not in ("databases", "tables", "columns"):
        raise InvalidInput(f"unknown schema listing {what!r}")
    connection = authorize(actor=actor, connection_name=connection_name, mode="schema")
    cls = REGISTRY[connection.kind]
    if not cls.is_sql:
        raise InvalidInput(f'connection "{connection_name}" is not a database type')
    _refuse_agent_connection(connection, "schema listing")
    described = " ".join(
        f"{k}={v}" for k, v in (("database", database), ("schema", schema), ("table", table)) if v
    )
    text = f"list {what}" + (f" {described}" if described else "")
    session = lifecycle.record(
        _new_session(actor, connection, Verb.SCHEMA, text, text),
        status=SessionStatus.RUNNING,
        actor=actor,
        action=f"schema.{what}.start",
        detail={"connection": connection.name},
        lease=SCHEMA_TIMEOUT_SECONDS + lifecycle.lease_seconds(),  # not renewed: it runs within the request
    )
    limits = Limits(
        max_rows=connection.max_rows,
        max_output_bytes=connection.max_output_bytes,
        timeout_seconds=min(connection.timeout_seconds, SCHEMA_TIMEOUT_SECONDS),
    )
    started = time.monotonic()
    items: list[dict] = []
    error = ""
    try:
        connector = _connector(connection, limits)
        if what == "databases":
            items = connector.list_databases()
        elif what == "tables":
            items = connector.list_tables(database or connection.config.get("database", "main"), schema)
        else:
            items = connector.list_columns(
                database or connection.config.get("database", "main"), table, schema
            )
    except PortcullisError as exc:
        error = exc.message
    except Exception as exc:  # a driver error on an introspection query
        error = f"schema query failed: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}"
    items = [{k: json_value(v) for k, v in item.items()} for item in items[: connection.max_rows]]
    masking_info = {}
    if not error:
        try:
            masker, names = rules_service.masker_for(connection)
            if masker.active:
                items, counts = masker.mask_json(items)
                masking_info = {"rules": names, "counts": dict(counts)}
        except Exception:  # fail closed: nothing unmasked leaves, and the session still ends
            logger.exception("masking a schema listing of connection %s failed", connection.pk)
            items, error = [], "masking failed, so the result was withheld"
    output, truncated = cap_text(json.dumps(items), connection.max_output_bytes)
    lifecycle.transition(
        session.pk,
        SessionStatus.FAILED if error else SessionStatus.DONE,
        actor=actor,
        action=f"schema.{what}",
        outcome=Outcome.FAILED if error else Outcome.SUCCESS,
        detail={"connection": connection.name},
        expect=(SessionStatus.RUNNING,),
        fields={
            "execution_time_ms": int((time.monotonic() - started) * 1000),
            "exit_code": 1 if error else 0,
            "error": error,
            "row_count": len(items),
            "result": {"items": items},
            "masking": masking_info,
            "output": output,
            "truncated": truncated,
        },
    )
    if error:
        raise ConnectorError(error)
    return items


def connection_test(*, actor: Actor, connection_name: str) -> dict:
    """Connect to the target and report its version; audited. Needs the right to run on it."""
    connection = authorize(actor=actor, connection_name=connection_name, mode="exec")
    _refuse_agent_connection(connection, "testing")
    limits = Limits(max_rows=1, max_output_bytes=4096, timeout_seconds=10)
    started = time.monotonic()
    try:
        message = _connector(connection, limits).test()
        ok = True
    except PortcullisError as exc:
        message, ok = exc.message, False
    except Exception as exc:
        message, ok = f"test failed: {type(exc).__name__}", False
    latency_ms = int((time.monotonic() - started) * 1000)
    audit_record(
        actor=actor,
        action="connection.test",
        outcome=Outcome.SUCCESS if ok else Outcome.FAILED,
        target=connection,
        detail={"latency_ms": latency_ms},
    )
    return {"connection_name": connection.name, "ok": ok, "message": message[:500], "latency_ms": latency_ms}


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
        assess_risk=_risk_of(connection, input),
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


# --- upstream MCP tools (connection kind "mcp") ---------------------------------------------------
#
#   authorize -> tool policy (allow/deny per group) -> argument guardrails -> [approval] ->
#   rate limit -> record the session (masked arguments first) -> upstream: list tools, check the
#   pinned contract, call -> size limit -> output guardrails -> mask every content block and the
#   structured content -> finish the record -> enqueue analysis -> envelope


def _tool_not_found(connection_name: str, tool: str) -> str:
    # One answer for "no such tool", "denied to you" and "removed": existence never leaks.
    return f'tool "{tool}" not found or not accessible on connection "{connection_name}"'


def _upstream_connection(*, actor: Actor, connection_name: str) -> Connection:
    connection = authorize(actor=actor, connection_name=connection_name, mode="exec")
    if connection.kind != "mcp":
        raise InvalidInput(f'connection "{connection_name}" is not an mcp connection')
    if actor.read_only:
        raise PolicyDenied("a read-only token cannot call upstream tools")
    _refuse_agent_connection(connection, "calling upstream tools")
    return connection


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# (connection, connector, kinds) -> None: what an upstream's list_changed announcement triggers
# (`gateway.upstream_protocol` registers its contract check; called on the upstream loop).
_LIST_CHANGED_HOOK = None


def set_list_changed_hook(hook) -> None:
    global _LIST_CHANGED_HOOK
    _LIST_CHANGED_HOOK = hook


def _upstream_connector(connection: Connection, limits: Limits, caller=None):
    """The connector of an mcp connection, with its pooled upstream sessions (`mcp_pool`), calling
    as `caller` (an `upstream_identity.Caller`, for a `gateway_jwt` connection)."""
    connector = REGISTRY[connection.kind](
        connection.config,
        connection.get_secrets(),
        limits,
        pool_scope=str(connection.pk),
        caller=caller,
        connection_name=connection.name,
    )
    hook = _LIST_CHANGED_HOOK
    if hook is not None:  # the upstream's announcements trigger a contract check
        setattr(connector, "on_list_changed", lambda kinds: hook(connection, connector, kinds))  # noqa: B010
    return connector


def upstream_caller(user, groups, *, session_id=None):
    """Who an upstream sees calling (gateway/upstream_identity.py): the user, their groups, org and
    the session of the call. `user` with its org loaded."""
    return Caller(
        user_id=str(user.pk),
        email=user.email,
        name=user.name,
        groups=tuple(sorted(groups)),
        org_id=str(user.org_id),
        org_name=user.org.name,
        session_id=str(session_id) if session_id else None,
    )


def _session_caller(session_id, connection: Connection):
    """The caller of a recorded tool session, for a `gateway_jwt` connection (None otherwise)."""
    if "gateway_jwt" not in connection.config:
        return None
    session = Session.objects.select_related("user__org").get(pk=session_id)
    if session.user is None:
        return None
    groups = UserGroup.objects.filter(members=session.user).values_list("name", flat=True)
    return upstream_caller(session.user, list(groups), session_id=session.pk)


async def _upstream_listing(connection: Connection, limits: Limits, caller=None):
    """(connector, the upstream's tools) within the connection's time limit; ConnectorError else.
    The exchange runs on the upstream loop, where the pooled sessions live."""
    import asyncio

    import anyio

    connector = _upstream_connector(connection, limits, caller)

    async def listing():
        with anyio.fail_after(limits.timeout_seconds):
            async with connector.session() as client:
                return await connector.list_tools(client)

    try:
        return connector, await asyncio.wrap_future(connector.submit(listing()))
    except Exception as exc:  # every failure is a clear, secret-free message
        raise ConnectorError(connector.describe_failure(exc)) from None


def _observe(connection: Connection, tools: list, surface: str) -> dict:
    from django.db import IntegrityError

    try:
        return upstream.contracts_observe(connection, tools, surface=surface)
    except IntegrityError:  # a concurrent first listing pinned them: compare with that
        return upstream.contracts_observe(connection, tools, surface=surface)


async def upstream_tools_list(*, actor: Actor, connection_name: str) -> list[dict]:
    """The upstream tools `actor` may call now, with their pinned contracts: allowed to them by the
    tool policy and with an accepted contract. Fetching the listing also pins or compares the
    contracts (a drifted tool drops out of this list until an admin accepts it).

    Raises NotFound/PolicyDenied (audited) for the connection, ConnectorError when the upstream fails."""
    from channels.db import database_sync_to_async as db

    connection = await db(lambda: _upstream_connection(actor=actor, connection_name=connection_name))()
    caller = (
        await db(lambda: upstream_caller(actor.user, actor.groups))()
        if "gateway_jwt" in connection.config
        else None
    )
    _, tools = await _upstream_listing(connection, _limits(connection), caller)
    rows = await db(lambda: _observe(connection, tools, actor.surface))()
    visible = []
    for name in sorted(rows):
        row = rows[name]
        if row.status != ContractStatus.ACCEPTED:
            continue
        rule = upstream.tool_rule_for(connection, actor, name)
        if rule is None:
            continue
        visible.append({**row.pinned, "requires_approval": rule.requires_approval})
    return visible


def _tool_prepare(*, actor: Actor, connection_name: str, tool: str, arguments: dict, idem=(None, None)):
    """Everything before the upstream is reached; returns (session, connection, limits).
    The session is already final when the call was refused (blocked, rate-limited, invalid)."""

    if not isinstance(tool, str) or not tool or len(tool) > 128:
        raise InvalidInput("tool must be a tool name of 1-128 characters")
    if not isinstance(arguments, dict):
        raise InvalidInput("arguments must be an object")
    connection = _upstream_connection(actor=actor, connection_name=connection_name)
    rule = upstream.tool_rule_for(connection, actor, tool)
    if rule is None:
        audit_record(
            actor=actor,
            action="tool.request",
            outcome=Outcome.DENIED,
            target=connection,
            detail={"tool": tool[:128], "reason": "denied by the connection's tool policy"},
        )
        raise NotFound(_tool_not_found(connection.name, tool))
    arguments_json = _canonical(arguments)
    size = len(arguments_json.encode())
    max_arguments = min(rule.max_argument_bytes or settings.MAX_INPUT_BYTES, settings.MAX_INPUT_BYTES)
    max_result = min(rule.max_result_bytes or connection.max_output_bytes, connection.max_output_bytes)
    limits = dataclasses.replace(_limits(connection), max_output_bytes=max_result)

    approval = rule.needs_approval(arguments)
    findings, error, outcome, stored_arguments, masking_info = [], "", Outcome.SUCCESS, None, {}
    try:
        bound = rules_service.bound_rules(connection)
        if size <= max_arguments:
            findings = upstream.argument_findings(rule, bound.guardrails, arguments, arguments_json)
        stored_arguments, counts = (
            bound.masker.mask_json(arguments) if bound.masker.active else (arguments, {})
        )
        if counts:
            masking_info = {"input_counts": dict(counts)}
    except Exception:  # fail closed, and keep the record (without the unchecked arguments)
        logger.exception("checking a tool call on connection %s failed", connection.pk)
        error, outcome = (
            "the rules bound to this connection could not be evaluated, so nothing ran",
            Outcome.FAILED,
        )
        stored_arguments = {"[withheld]": "the arguments could not be masked"}
    if not error and size > max_arguments:
        error, outcome = (
            f"the arguments are {size} bytes; tool {tool!r} accepts at most {max_arguments} bytes",
            Outcome.INVALID,
        )
    elif not error and findings:
        error, outcome = _block_message(connection, findings), Outcome.BLOCKED
    elif not error and approval:
        pass  # recorded below as pending_review, with a review of the exact call
    elif not error and runner.busy():
        error, outcome = "the gateway is at capacity; try again shortly", Outcome.FAILED
    elif not error:
        error = upstream.rate_limit_take(connection, rule, tool)
        outcome = Outcome.DENIED if error else Outcome.SUCCESS

    stored = _canonical({"tool": tool, "arguments": stored_arguments})
    exact = _canonical({"tool": tool, "arguments": arguments})
    reviewer_groups = []
    if not error and approval:
        reviewer_groups = list(UserGroup.objects.filter(org_id=actor.org_id, name__in=rule.reviewers))
        if not reviewer_groups:  # nobody could ever approve it
            error, outcome = (
                f"tool {tool!r} requires approval, but none of its reviewer groups exists",
                Outcome.DENIED,
            )
    session = _new_session(
        actor, connection, Verb.TOOL, exact, stored, metadata={"tool": tool}, masking=masking_info
    )
    if error:
        status = (
            SessionStatus.BLOCKED if outcome in (Outcome.BLOCKED, Outcome.DENIED) else SessionStatus.FAILED
        )
        session.error = error
        session.guardrail_findings = [f.as_dict() for f in findings]
    else:
        status = SessionStatus.PENDING_REVIEW if reviewer_groups else SessionStatus.OPEN
    key, request = idem
    with transaction.atomic():
        if status == SessionStatus.PENDING_REVIEW:
            joined = _tool_join_review(actor, connection, session, tool)
            if joined is not None:
                idempotency.remember(
                    user=actor.user, key=key, operation="upstream_call", request=request, session=joined
                )
                return joined, connection, limits
        lifecycle.record(
            session,
            status=status,
            actor=actor,
            action="tool.request",
            outcome=outcome,
            # An upstream call cannot be resumed by another process (its exact arguments live only in
            # this request): the lease lets the sweep end it if this process dies before it ran.
            lease=float(settings.SESSION_DISPATCH_LEASE_SECONDS) if status == SessionStatus.OPEN else None,
            detail={
                "connection": connection.name,
                "tool": tool,
                "arguments_bytes": size,
                "input_sha256": session.input_sha256,
                **({"blocked_by": sorted({f.rule for f in findings})} if findings else {}),
            },
        )
        idempotency.remember(
            user=actor.user, key=key, operation="upstream_call", request=request, session=session
        )
        if status == SessionStatus.PENDING_REVIEW:
            session.pending_review = review_services.review_open(
                actor=actor,
                session=session,
                connection=connection,
                reviewer_groups=reviewer_groups,
                min_approvals=rule.min_approvals,
                input=exact,
            )
    return session, connection, limits


def _tool_join_review(actor: Actor, connection: Connection, session: Session, tool: str) -> Session | None:
    """The session of an identical earlier call (same requester, connection, tool and canonical
    arguments) whose review may still lead to a run: pending, approved, or approved and running.
    A retry by a client that knows nothing of reviews joins it instead of opening another review.
    Identical calls are serialized on the connection's row, so two at once open one review."""
    Connection.objects.select_for_update().filter(pk=connection.pk).first()  # until the caller commits
    review = review_services.review_find_identical(
        actor=actor, connection=connection, input_sha256=session.input_sha256
    )
    if review is None:
        return None
    audit_record(
        actor=actor,
        action="tool.request",
        target=connection,
        detail={
            "connection": connection.name,
            "tool": tool,
            "joined_review": str(review.pk),
            "session_id": str(review.session_id),
        },
    )
    joined = review.session
    joined.pending_review = review
    return joined


_BINARY_WITHHELD = "[portcullis: {kind} content withheld: masking rules apply to this connection and binary content cannot be checked]"


def _mask_tool_result(masker, result: dict) -> tuple[dict, dict]:
    """Mask every text content block, embedded text resource, resource link and the structured
    content of a wire-format CallToolResult. Binary blocks are withheld when masking is active."""
    counts: dict = {}

    def add(more):
        for key, value in more.items():
            counts[key] = counts.get(key, 0) + value

    content = []
    for block in result.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            text, c = masker.mask_text(block.get("text") or "")
            add(c)
            content.append({**block, "text": text})
        elif kind == "resource" and isinstance(block.get("resource"), dict) and "text" in block["resource"]:
            text, c = masker.mask_text(block["resource"]["text"] or "")
            add(c)
            content.append({**block, "resource": {**block["resource"], "text": text}})
        elif kind == "resource_link":
            masked, c = masker.mask_json(block)
            add(c)
            content.append(masked)
        else:
            content.append({"type": "text", "text": _BINARY_WITHHELD.format(kind=kind)})
    out = {**result, "content": content}
    if result.get("structuredContent") is not None:
        out["structuredContent"], c = masker.mask_json(result["structuredContent"])
        add(c)
    return out, counts


def _tool_text(result: dict) -> str:
    """The text rendering of a tool result (stored as the session's output, checked by guardrails)."""
    parts = []
    for block in result.get("content") or []:
        if block.get("type") == "text":
            parts.append(block.get("text") or "")
        elif block.get("type") == "resource" and isinstance(block.get("resource"), dict):
            parts.append(block["resource"].get("text") or "")
    if result.get("structuredContent") is not None:
        parts.append(_canonical(result["structuredContent"]))
    return "\n".join(p for p in parts if p)


def _tool_finish(
    session_id,
    *,
    connection: Connection,
    limits: Limits,
    tool: str,
    result: dict | None,
    error: str,
    blocked: str,
    elapsed_ms: int,
) -> Session:
    return upstream_finish(
        session_id,
        connection=connection,
        max_bytes=limits.max_output_bytes,
        subject=f"tool {tool!r}",
        result=result,
        error=error,
        blocked=blocked,
        elapsed_ms=elapsed_ms,
        text_of=_tool_text,
        mask=_mask_tool_result,
        exit_code_of=lambda r: 1 if r.get("isError") else 0,
        action="tool.finish",
        detail={"tool": tool},
    )


def upstream_finish(
    session_id,
    *,
    connection: Connection,
    max_bytes: int,
    subject: str,
    result: dict | None,
    error: str,
    blocked: str,
    elapsed_ms: int,
    text_of,
    mask,
    exit_code_of=lambda result: 0,
    action: str,
    detail: dict,
) -> Session:
    """The end of one upstream MCP exchange (a tool call, a resource read, a prompt get), the same
    for every kind: the size cap, output protection (the bound guardrails on `text_of(result)`, then
    `mask(masker, result)`), and the final transition. What cannot be checked is withheld."""
    findings, masking_info = [], {}
    if result is not None and not error:
        size = len(_canonical(result).encode())
        if size > max_bytes:
            result, error = (
                None,
                f"the upstream answer is {size} bytes; {subject} may return at most {max_bytes} bytes",
            )
    if result is not None and not error:
        try:
            bound = rules_service.bound_rules(connection)
            findings = (
                guardrails.evaluate_output(bound.guardrails, text_of(result)) if bound.guardrails else []
            )
            if findings:
                result, blocked = None, _block_message(connection, findings, withheld=True)
            elif bound.masker.active:
                result, counts = mask(bound.masker, result)
                masking_info = {"rules": bound.masking_rules, "counts": dict(counts)}
        except Exception:  # never store or return what could not be checked
            logger.exception("output protection failed on %s session %s", subject, session_id)
            result, error = (
                None,
                "the result could not be checked and was withheld; the gateway log has details",
            )
    fields: dict = {"execution_time_ms": elapsed_ms}
    if findings:
        fields["guardrail_findings"] = [f.as_dict() for f in findings]

    def status_of(session: Session) -> str:  # on the locked row: a cancel may have come meanwhile
        fields["masking"] = {**(session.masking or {}), **masking_info}
        if session.cancel_requested:
            fields.update(error=error or "cancelled", result=None)
            return SessionStatus.CANCELLED
        if blocked:
            fields["error"] = blocked
            return SessionStatus.BLOCKED
        if error or result is None:
            fields["error"] = error or "the upstream gave no result"
            return SessionStatus.FAILED
        output, truncated = cap_text(text_of(result), max_bytes)
        fields.update(exit_code=exit_code_of(result), result=result, output=output, truncated=truncated)
        return SessionStatus.DONE

    finished = _finish_with_retry(
        session_id,
        status_of,
        fields,
        action=action,
        outcome=Outcome.BLOCKED
        if blocked
        else Outcome.SUCCESS
        if result is not None and not error
        else Outcome.FAILED,
        detail={**detail, "execution_time_ms": elapsed_ms},
    )
    return finished or Session.objects.select_related("user").get(pk=session_id)


async def tool_call(
    *,
    actor: Actor,
    connection_name: str,
    tool: str,
    arguments: dict | None = None,
    idempotency_key: str | None = None,
) -> Session:
    """Call one tool of an upstream MCP server through the policy path; returns the final session.

    Raises NotFound/PolicyDenied (audited) when the actor may not use the connection or the tool
    (one answer for both), InvalidInput for malformed arguments. Everything after that is a
    recorded session: blocked (guardrail, contract drift, approval, rate limit), failed (upstream
    down, slow, protocol error, oversize answer), cancelled (exec_cancel) or done (exit code 1 when
    the tool itself answered isError). The upstream exchange runs in the runner's bounded pool,
    like exec: heartbeats, exec_cancel from any replica and the deadline apply; if the caller goes
    away, the call still finishes and is recorded.
    """
    import asyncio

    from channels.db import database_sync_to_async as db

    arguments = {} if arguments is None else arguments
    request = {"connection": connection_name, "tool": tool, "arguments": arguments}
    replay = await db(lambda: _idempotent_replay(actor, idempotency_key, "upstream_call", request))()
    if replay is not None:  # a retry: the first attempt's session, waited for if it still runs
        if replay.status in (SessionStatus.OPEN, SessionStatus.RUNNING):
            replay, _ = await wait_for_final(replay.pk, float(settings.EXEC_HANDOFF_SECONDS))
        return replay
    session, connection, limits = await db(
        lambda: _tool_prepare(
            actor=actor,
            connection_name=connection_name,
            tool=tool,
            arguments=arguments,
            idem=(idempotency.check_key(idempotency_key), request),
        )
    )()
    if session.is_final or session.status == SessionStatus.PENDING_REVIEW:
        return session
    future = await db(  # the runner beats its heartbeat in the database: not from the event loop
        lambda: tool_dispatch(
            session, connection, limits, tool=tool, arguments=arguments, surface=actor.surface
        )
    )()
    try:
        finished = await asyncio.shield(asyncio.wrap_future(future))
    except asyncio.CancelledError:
        raise
    except Exception:  # the job records its own failure; read what it left
        finished = None
    if finished is not None:
        return finished
    return await db(lambda: Session.objects.select_related("user").get(pk=session.pk))()


def _tool_reviewed(actor: Actor, review, session: Session, connection: Connection) -> Session:
    """`exec_reviewed` for a tool call: the tool policy and argument guardrails as they are now,
    then the exact approved call (from the review; the session holds it masked) in the pool."""

    call = json.loads(review.input)
    tool, arguments = call["tool"], call["arguments"]
    rule = upstream.tool_rule_for(connection, actor, tool)
    if rule is None:
        raise NotFound(_tool_not_found(connection.name, tool))
    findings = upstream.argument_findings(
        rule, rules_service.bound_rules(connection).guardrails, arguments, review.input
    )
    max_result = min(rule.max_result_bytes or connection.max_output_bytes, connection.max_output_bytes)
    limits = dataclasses.replace(_limits(connection), max_output_bytes=max_result)
    # No run spec: an upstream call is not resumed by another process (see _tool_prepare).
    released = _release_reviewed(actor, session, connection, findings, {})
    session.refresh_from_db()
    if not released:
        return session
    surface = actor.surface
    transaction.on_commit(
        lambda: tool_dispatch(session, connection, limits, tool=tool, arguments=arguments, surface=surface)
    )
    return session


def tool_dispatch(
    session: Session, connection: Connection, limits: Limits, *, tool: str, arguments: dict, surface: str
):
    """Run a recorded (open) tool session in the runner's pool; returns the job's future."""
    return runner.submit(
        str(session.pk),
        lambda: _tool_run(session.pk, connection, limits, tool, arguments, surface),
        timeout_seconds=limits.timeout_seconds,
    )


def _tool_run(session_id, connection: Connection, limits: Limits, tool: str, arguments: dict, surface: str):
    """Pool-thread body: claim the session, talk to the upstream, finish the record. Whatever goes
    wrong, the session does not stay open."""
    try:
        close_old_connections()
        if not lifecycle.claim(session_id, runner=runner.runner_id()):
            return  # cancelled while queued; exec_cancel already finished the record
        connector = _upstream_connector(connection, limits, _session_caller(session_id, connection))
        outcome = {"result": None, "error": "", "blocked": ""}
        started = time.monotonic()
        try:  # on the upstream loop, where the pooled sessions live; this pool thread waits
            connector.submit(
                _tool_exchange(session_id, connector, connection, limits, tool, arguments, surface, outcome)
            ).result()
        except Exception as exc:  # down, slow, protocol error, oversize: a clear message, recorded
            outcome["error"] = connector.describe_failure(exc)
        return _tool_finish(
            session_id,
            connection=connection,
            limits=limits,
            tool=tool,
            elapsed_ms=int((time.monotonic() - started) * 1000),
            **outcome,
        )
    except Exception:
        logger.exception("tool session %s failed before finishing its record", session_id)
        _finish_with_retry(
            session_id,
            lambda s: SessionStatus.FAILED,
            {"error": "internal error while calling the upstream; the gateway log has details"},
            action="tool.finish",
            outcome=Outcome.FAILED,
            detail={"status": "failed"},
        )


async def _tool_exchange(
    session_id, connector, connection, limits, tool, arguments, surface, outcome
) -> None:
    """One upstream session: list the tools, check the pinned contract, call. Cancellable from
    another thread (exec_cancel) and bounded by the connection's deadline."""
    import anyio
    import anyio.from_thread
    import anyio.lowlevel
    import anyio.to_thread

    with anyio.CancelScope() as scope:
        token = anyio.lowlevel.current_token()

        def cancel():
            try:
                anyio.from_thread.run_sync(scope.cancel, token=token)
            except RuntimeError:  # the exchange already ended
                pass

        runner.set_cancel_callback(str(session_id), cancel)
        with anyio.fail_after(limits.timeout_seconds):
            async with connector.session() as client:
                listing = await connector.list_tools(client)
                rows = await anyio.to_thread.run_sync(
                    lambda: _observe_in_thread(connection, listing, surface)
                )
                row = rows.get(tool)
                if row is None or row.status != ContractStatus.ACCEPTED:
                    outcome["blocked"] = upstream.contract_block_message(connection, row, tool)
                    return
                answer = await client.call_tool(tool, arguments)
                outcome["result"] = answer.model_dump(mode="json", by_alias=True, exclude_none=True)
    if scope.cancelled_caught:
        outcome["error"] = "cancelled while the upstream was answering"


def _observe_in_thread(connection: Connection, listing: list, surface: str) -> dict:
    from django.db import connections

    try:
        return _observe(connection, listing, surface)
    finally:
        connections.close_all()  # a short-lived helper thread must not keep a database connection


def tool_envelope(session: Session) -> dict:
    """The agent-facing answer for a tool session; `status` is what the agent branches on."""
    result = session.result if isinstance(session.result, dict) else {}
    if session.status == SessionStatus.PENDING_REVIEW:
        review = getattr(session, "pending_review", None)
        review_id = str(review.pk) if review is not None else _loaded_review_id(session)
        url = f"{settings.PUBLIC_BASE_URL}/reviews/{review_id}/"
        return {
            "status": "pending_approval",
            "session_id": str(session.pk),
            "session_status": session.status,
            "connection_name": session.connection_name,
            "tool": (session.metadata or {}).get("tool", ""),
            "content": [],
            "structured_content": None,
            "is_error": True,
            "message": (
                f"approval required before this call can run: review {review_id} is pending ({url}); "
                "nothing has run. Make the same call again (same tool, same arguments) to wait for the "
                "decision: once approved, that call runs it, once. Or call reviews_wait with the review_id, "
                "then reviews_execute"
            ),
            "review_id": review_id,
            "review_url": url,
            "execution_time_ms": None,
            "masking": None,
            "rule": None,
        }
    completed = session.status == SessionStatus.DONE and session.exit_code == 0
    status = (
        "blocked"
        if session.status in (SessionStatus.BLOCKED, SessionStatus.REJECTED)
        else "completed"
        if completed
        else "running"
        if session.status in (SessionStatus.OPEN, SessionStatus.RUNNING)
        else "failed"
    )
    return {
        "status": status,
        "session_id": str(session.pk),
        "session_status": session.status,
        "connection_name": session.connection_name,
        "tool": (session.metadata or {}).get("tool", ""),
        "content": result.get("content") or [],
        "structured_content": result.get("structuredContent"),
        "is_error": bool(result.get("isError")) or status in ("failed", "blocked"),
        "message": session.error or None,
        "execution_time_ms": session.execution_time_ms,
        "masking": (session.masking or {}).get("counts") or None,
        "rule": session.guardrail_findings[0]["rule"] if session.guardrail_findings else None,
    }
