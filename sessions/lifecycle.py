"""The one writer of `Session.status`.

    record ──> open ──claim──> running ──> done | failed | blocked | cancelled
      │          └──────────────────────> cancelled | failed (agent work expired)
      ├──> pending_review ──> open (approved, executed) | rejected | cancelled (expired, revoked)
      └──> blocked | failed (refused before anything ran)

Every change of state goes through `record`, `claim` or `transition`. A transition writes, in the
caller's transaction: the status and its fields, one audit event, the outbound events
(`session.started`, `session.finished`, `session.blocked`, `guardrail.violation`) and, when the
session becomes final, the analysis request — the last two as outbox rows (sessions.outbox), so a
broker outage delays them and never loses them. Waiters are woken on commit.

Leases are on the database clock. An open session carries a dispatch lease: if nobody claimed it
when it lapses (the process that recorded it died), any process may claim it and run it. A running
session carries a run lease its runner renews (gateway.runner); when it lapses, `sweep` ends the
session as failed with its outcome unknown — whether or not the runner's process is still alive —
and the runner's own late finish is refused (`transition` checks the runner).
"""

from __future__ import annotations

import functools
import logging
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import DateTimeField, ExpressionWrapper, Value
from django.db.models.functions import Now
from django.utils import timezone

from gateway import hotsql
from governance.models import User
from governance.policy import Actor
from sessions import events, outbox
from sessions.audit import Outcome, audit_record
from sessions.models import ACTIVE_STATUSES, FINAL_STATUSES, Session, SessionStatus
from sessions.wakeup import notify_session_finished

logger = logging.getLogger("portcullis.lifecycle")

# Which transitions exist. Anything else is a programming error, refused loudly.
_ALLOWED = {
    SessionStatus.OPEN: {
        SessionStatus.RUNNING,
        SessionStatus.CANCELLED,
        SessionStatus.FAILED,
        SessionStatus.BLOCKED,
    },
    SessionStatus.PENDING_REVIEW: {
        SessionStatus.OPEN,
        SessionStatus.BLOCKED,
        SessionStatus.REJECTED,
        SessionStatus.CANCELLED,
        SessionStatus.FAILED,
    },
    SessionStatus.RUNNING: {
        SessionStatus.OPEN,  # requeued: an exactly-once run that surely did not commit
        SessionStatus.DONE,
        SessionStatus.FAILED,
        SessionStatus.BLOCKED,
        SessionStatus.CANCELLED,
    },
}


def lease_seconds() -> float:
    return float(settings.SESSION_LEASE_SECONDS)


def db_now_plus(seconds: float):
    """`now() + seconds` evaluated by the database: every replica's leases use one clock."""
    return ExpressionWrapper(Now() + Value(timedelta(seconds=seconds)), output_field=DateTimeField())


def _lease_sql(lease: float | None) -> dict:
    """`db_now_plus(lease)` as raw SQL for gateway.hotsql (the same clock: the statement's)."""
    if lease is None:
        return {}
    return {"lease_expires_at": ("statement_timestamp() + %s", [timedelta(seconds=lease)])}


def _merged_sql(merged: dict) -> dict:
    """`merged` (JSON field -> dict) as raw SQL for gateway.hotsql: the stored object || the dict."""
    raw = {}
    for name, more in merged.items():
        field = Session._meta.get_field(name)
        column = f"s.{connection.ops.quote_name(str(field.column))}"
        raw[field.attname] = (
            f"COALESCE({column}, '{{}}'::jsonb) || %s",
            [field.get_db_prep_save(more, connection)],
        )
    return raw


def _system_actor_fields(session: Session, actor) -> dict:
    if actor is not None:
        return {"actor": actor}
    return {"actor": None, "org_id": session.org_id, "surface": "task"}


def _emit_for(session: Session, previous: str | None) -> None:
    """The outbound events of entering `session.status`."""
    status = session.status
    if status in ACTIVE_STATUSES and previous in (None, SessionStatus.PENDING_REVIEW):
        events.emit_session(session, events.SESSION_STARTED)
    elif session.is_final:
        events.emit_session_end(session)


def _after_final(session: Session) -> None:
    session_id = session.pk
    transaction.on_commit(lambda: notify_session_finished(session_id))
    outbox.outbox_put("analysis", {"session_id": str(session_id)})


def record(
    session: Session,
    *,
    status: str,
    actor,
    action: str,
    outcome: str = Outcome.SUCCESS,
    detail: dict | None = None,
    lease: float | None = None,
) -> Session:
    """Insert a new session in its first state, with its audit event and events, in the caller's
    transaction. `lease` (seconds) gives an open session its dispatch lease and a running one its
    run lease (owned by `session.runner`)."""
    if status not in (
        SessionStatus.OPEN,
        SessionStatus.RUNNING,
        SessionStatus.PENDING_REVIEW,
        SessionStatus.BLOCKED,
        SessionStatus.FAILED,
    ):
        raise ValueError(f"a session cannot start as {status}")
    session.status = status
    if status == SessionStatus.RUNNING and session.started_at is None:
        session.started_at = timezone.now()
    if session.is_final and session.ended_at is None:
        session.ended_at = timezone.now()
    with transaction.atomic(savepoint=False):
        if connection.vendor == "postgresql":  # every exec inserts one: written once (gateway.hotsql)
            hotsql.insert(session, raw=_lease_sql(lease))
        else:
            if lease is not None:
                session.lease_expires_at = db_now_plus(lease)  # evaluated by the INSERT
            session.save(force_insert=True)
        session.lease_expires_at = None  # (computed by the database; read it from there)
        with outbox.batched():  # its events and analysis request: one statement
            _emit_for(session, None)
            if session.is_final:
                _after_final(session)
        # Last: appending locks the org's chain head until commit, so it is held for as short as can be.
        audit_record(actor=actor, action=action, outcome=outcome, target=session, detail=detail or {})
    return session


def claim(session_id, *, runner: str, lease: float | None = None, lapsed_only: bool = False) -> bool:
    """open -> running for `runner`, if the session is still open (and, with `lapsed_only`, only
    when its dispatch lease has lapsed: the recovery path). One conditional UPDATE: of several
    claimers exactly one wins. Cancelled-while-queued sessions are not claimed."""
    qs = Session.objects.filter(pk=session_id, status=SessionStatus.OPEN, cancel_requested=False)
    if lapsed_only:
        qs = qs.filter(lease_expires_at__lt=Now())
    return bool(
        qs.update(
            status=SessionStatus.RUNNING,
            started_at=timezone.now(),
            runner=runner,
            lease_expires_at=db_now_plus(lease if lease is not None else lease_seconds()),
        )
    )


def renew(session_ids, *, runner: str) -> set:
    """Extend the run leases of `runner`'s running sessions; returns the ids it still holds (a
    session missing from the answer was taken from it: ended by the sweep, or cancelled)."""
    if not session_ids:
        return set()
    held = Session.objects.filter(pk__in=list(session_ids), status=SessionStatus.RUNNING, runner=runner)
    ids = set(str(pk) for pk in held.values_list("pk", flat=True))
    if ids:
        Session.objects.filter(pk__in=ids, status=SessionStatus.RUNNING, runner=runner).update(
            lease_expires_at=db_now_plus(lease_seconds())
        )
    return ids


def _locked(session_id) -> Session:
    """The session row, locked to the end of the transaction, with its user (Session.DoesNotExist
    when it is gone). Every exec ends through here: on PostgreSQL the statement is written once."""
    if connection.vendor != "postgresql":
        return Session.objects.select_for_update(of=("self",)).select_related("user").get(pk=session_id)
    loaded = hotsql.fetch_one(_locked_sql(), [str(session_id)], Session, User)
    if loaded is None:
        raise Session.DoesNotExist(f"session {session_id} not found")
    session, user = loaded
    session.user = user
    return session


@functools.cache
def _locked_sql() -> str:
    return (
        f"SELECT {hotsql.columns('s', Session)}, {hotsql.columns('u', User)} "
        f"FROM {hotsql.table(Session)} s JOIN {hotsql.table(User)} u ON u.id = s.user_id "
        "WHERE s.id = %s FOR UPDATE OF s"
    )


def transition(
    session_id,
    to,
    *,
    actor=None,
    as_owner: bool = False,
    action: str,
    outcome: str = Outcome.SUCCESS,
    detail: dict | None = None,
    fields: dict | None = None,
    expect: tuple | None = None,
    runner: str | None = None,
    lease: float | None = None,
    cancelled: dict | None = None,
    merged: dict | None = None,
) -> Session | None:
    """Move one session to `to` under its row lock, with its audit event, events, wake-up and (when
    final) analysis request, in one transaction (the caller's, if any). `to` may be a function of
    the locked session; with `cancelled`, a session whose cancel was requested meanwhile (from any
    replica) goes to `cancelled` instead, with these fields over `fields`. `merged` maps a JSON
    field to a dict merged (one level) over what the row holds, whichever way it goes. `as_owner`
    audits the change as the session's own user (surface and client of the session). Returns the session, or
    None when it is no longer in a state this move may leave (`expect`, default: every state that
    may go to `to`) or, with `runner`, no longer held by that runner: a late writer never
    overwrites the verdict of another.

    A move from one known state (a runner's finish: `expect=(RUNNING,)`) is on PostgreSQL one
    conditional UPDATE that locks and returns the row; only when it matches nothing (gone, moved,
    taken, cancelled) is the row locked and read first, as for every other move."""
    fields = {} if fields is None else fields
    with transaction.atomic(savepoint=False):
        merged = merged or {}
        moved = _moved_from_known(session_id, to, fields, expect, runner, lease, cancelled, merged)
        if moved is None:
            moved = _moved_under_lock(session_id, to, fields, expect, runner, lease, cancelled, merged)
        if moved is None:
            return None
        session, previous = moved
        if as_owner:
            actor = Actor(
                user=session.user, groups=frozenset(), surface=session.surface, client=session.client
            )
        with outbox.batched():  # its events and analysis request: one statement
            _emit_for(session, previous)
            if session.is_final:
                _after_final(session)
        if not session.is_final and previous == SessionStatus.PENDING_REVIEW:
            transaction.on_commit(lambda: notify_session_finished(session.pk))
        actor_fields = _system_actor_fields(session, actor)  # last: the chain head's lock is held to commit
        audit_record(**actor_fields, action=action, outcome=outcome, target=session, detail=detail or {})
    return session


def _allowed_from(to, expect: tuple | None) -> tuple:
    return expect if expect is not None else tuple(s for s, to_ in _ALLOWED.items() if to in to_)


def _moved_under_lock(session_id, to, fields, expect, runner, lease, cancelled, merged) -> tuple | None:
    """(the session moved, its state before) with the row locked and read first; None if refused."""
    session = _locked(session_id)
    fields = {**fields, **{name: {**(getattr(session, name) or {}), **more} for name, more in merged.items()}}
    previous = session.status
    if cancelled is not None and session.cancel_requested:
        to, fields = SessionStatus.CANCELLED, {**fields, **cancelled}
    elif callable(to):
        to = to(session)
    if previous not in _allowed_from(to, expect) or to not in _ALLOWED.get(previous, ()):
        return None
    if runner is not None and session.runner != runner:
        return None
    for name, value in fields.items():
        setattr(session, name, value)
    session.status = to
    update = ["status", *fields]
    if session.is_final:
        session.ended_at = session.ended_at or timezone.now()
        session.lease_expires_at = None
        update += ["ended_at", "lease_expires_at"]
    if lease is not None:
        update.append("lease_expires_at")
    if connection.vendor == "postgresql":  # written once (gateway.hotsql)
        hotsql.update(session, sorted(set(update)), raw=_lease_sql(lease))
    else:
        if lease is not None:
            session.lease_expires_at = db_now_plus(lease)
        session.save(update_fields=sorted(set(update)))
    return session, previous


def _moved_from_known(session_id, to, fields, expect, runner, lease, cancelled, merged) -> tuple | None:
    """The move in one statement, when `to` is a status reached from exactly one state: UPDATE the
    row if it is in that state (held by `runner`; with `cancelled`, no cancel requested), returning
    what the caller did not set, with its user. None when that is not the case or nothing matched."""
    previous = _allowed_from(to, expect) if not callable(to) else ()
    if connection.vendor != "postgresql" or len(previous) != 1 or to not in _ALLOWED.get(previous[0], ()):
        return None
    values = {Session._meta.get_field(name).attname: value for name, value in fields.items()}
    values["status"] = to
    raw = {**_lease_sql(lease), **_merged_sql(merged)}
    if to in FINAL_STATUSES:
        values["lease_expires_at"] = None
        raw["ended_at"] = ("COALESCE(s.ended_at, %s)", [timezone.now()])
    known = {name: value for name, value in values.items() if name not in raw}
    returned = [f for f in Session._meta.concrete_fields if f.attname not in known]
    assignments, params = hotsql.assignments(Session, values, raw=raw)
    conditions = ["s.id = %s", "s.status = %s", "u.id = s.user_id"]
    params += [str(session_id), previous[0]]
    if runner is not None:
        conditions.append("s.runner = %s")
        params.append(runner)
    if cancelled is not None:
        conditions.append("NOT s.cancel_requested")
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {hotsql.table(Session)} s SET {assignments} FROM {hotsql.table(User)} u "
            f"WHERE {' AND '.join(conditions)} "
            f"RETURNING {hotsql.columns('s', Session, returned)}, {hotsql.columns('u', User)}",
            params,
        )
        row = cursor.fetchone()
    if row is None:
        return None
    session, user = hotsql.load(row, (Session, returned), User)
    session.user = user
    for name, value in known.items():
        setattr(session, name, value)
    return session, previous[0]


# --- the sweep: leases that lapsed ----------------------------------------------------------------


def sweep_grace_seconds() -> float:
    """How long past its lapse a run lease is left before the sweep ends the session: after a
    database outage every lease has lapsed at once, and the runners that still hold a result must
    get to write it (they retry every second) before a sweeper declares the outcome unknown."""
    return lease_seconds() / 2


def lapsed(limit: int = 200) -> tuple[list, list]:
    """(running sessions whose run lease lapsed, with the grace, open ones whose dispatch lease
    lapsed), by id."""
    running = list(
        Session.objects.filter(
            status=SessionStatus.RUNNING, lease_expires_at__lt=db_now_plus(-sweep_grace_seconds())
        ).values_list("pk", flat=True)[:limit]
    )
    waiting = list(
        Session.objects.filter(status=SessionStatus.OPEN, lease_expires_at__lt=Now()).values_list(
            "pk", flat=True
        )[:limit]
    )
    return running, waiting


def requeue(session_id, *, runner: str | None = None, lapsed_only: bool = False) -> Session | None:
    """running -> open, claimable at once: a run that surely did not commit on the target (its
    runner could not record the commit point, or the target says it aborted) runs again. By its own
    `runner`, or by a sweeper (`lapsed_only`: only once its lease lapsed, with the grace)."""
    with transaction.atomic():
        qs = Session.objects.select_for_update(of=("self",)).filter(
            pk=session_id, status=SessionStatus.RUNNING
        )
        if lapsed_only:
            qs = qs.filter(lease_expires_at__lt=db_now_plus(-sweep_grace_seconds()))
        if runner is not None:
            qs = qs.filter(runner=runner)
        session = qs.first()
        if session is None:
            return None
        return transition(
            session_id,
            SessionStatus.OPEN,
            action="session.requeued",
            detail={"runner": session.runner},
            fields={"runner": "", "started_at": None},
            lease=-1.0,  # lapsed: the next sweep, here or elsewhere, claims it
            expect=(SessionStatus.RUNNING,),
        )


def end_lapsed_run(session_id, *, error: str = "") -> Session | None:
    """A running session whose runner stopped renewing its lease: failed, outcome unknown (or what
    `error` says, when the target told)."""
    with transaction.atomic():
        session = (
            Session.objects.select_for_update(of=("self",))
            .filter(
                pk=session_id,
                status=SessionStatus.RUNNING,
                lease_expires_at__lt=db_now_plus(-sweep_grace_seconds()),
            )
            .first()
        )
        if session is None:
            return None
        return transition(
            session_id,
            SessionStatus.FAILED,
            action="session.orphaned",
            outcome=Outcome.FAILED,
            detail={"runner": session.runner},
            fields={
                "error": error
                or (
                    f"the gateway process running this session stopped renewing its lease (runner "
                    f"{session.runner or '?'}); its outcome is unknown: check the target before running it again"
                )
            },
        )


def expire_waiting(session_id, message: str) -> Session | None:
    """An open session nobody will run (its agent never took it in time): failed, with why."""
    return transition(
        session_id,
        SessionStatus.FAILED,
        action="session.expired",
        outcome=Outcome.FAILED,
        fields={"error": message},
        expect=(SessionStatus.OPEN,),
    )
