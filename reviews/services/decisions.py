"""Reviews: the rules that ask for them, the gate the pipeline calls, and every transition.

    PENDING ──(quorum met)──> APPROVED ──(reviews_execute, once)──> EXECUTED      one-time
       │                         │
       ├──(any reviewer)──> REJECTED            APPROVED ──(revoke)──> REVOKED    JIT
       └──(deadline)──> EXPIRED   <──(deadline)──┘

Each transition is one function here: it locks the review row, refuses a wrong state, writes the
audit log in the same transaction and, on commit, wakes `reviews_wait` in every process and
queues the outbound notifications. Separation of duties: nobody approves their own request
(admins included) unless the org turns that on; decisions over MCP are off unless an admin turns
them on. Quorum: every reviewer group approves, or `min_approvals` distinct people do (`>=`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from gateway.models import Connection
from governance import rules as rule_helpers
from governance.access import authorize
from governance.errors import Conflict, InvalidInput, NotFound, PolicyDenied
from governance.models import UserGroup
from governance.policy import (
    ROLE_ADMIN,
    ROLE_AUDITOR,
    Actor,
    has_role,
    in_groups,
    parse_id,
    require_role,
    scope,
)
from reviews import notify
from reviews.models import (
    AccessRequestRule,
    AccessType,
    Review,
    ReviewDecision,
    ReviewSettings,
    ReviewStatus,
    ReviewType,
)
from sessions import lifecycle
from sessions.analysis import analyze_input
from sessions.audit import Outcome, audit_record, change_detail
from sessions.models import RISK_ORDER, RiskLevel, Session, SessionStatus

logger = logging.getLogger("portcullis.reviews")

NOT_FOUND = "review not found"
# Surfaces an agent reaches with a token: decisions there are off unless the org turns them on.
TOKEN_SURFACES = ("mcp", "api")
MAX_LIMIT = 100
MAX_JIT_SECONDS = 30 * 24 * 3600
DEFAULT_JIT_SECONDS = 3600


def review_settings(org_id) -> ReviewSettings:
    return ReviewSettings.objects.get_or_create(org_id=org_id)[0]


def review_settings_update(
    *,
    actor: Actor,
    allow_self_approval: bool | None = None,
    mcp_decisions_enabled: bool | None = None,
    review_ttl_seconds: int | None = None,
) -> ReviewSettings:
    require_role(actor, ROLE_ADMIN)
    changed = {}
    with transaction.atomic():
        current = review_settings(actor.org_id)
        current = ReviewSettings.objects.select_for_update().get(pk=current.pk)
        before = review_settings_to_dict(current)
        for field, value in (
            ("allow_self_approval", allow_self_approval),
            ("mcp_decisions_enabled", mcp_decisions_enabled),
            ("review_ttl_seconds", review_ttl_seconds),
        ):
            if value is not None:
                if field == "review_ttl_seconds" and not 60 <= value <= MAX_JIT_SECONDS:
                    raise InvalidInput("review_ttl_seconds must be between 60 and 2592000 (30 days)")
                setattr(current, field, value)
                changed[field] = value
        current.save()
        audit_record(
            actor=actor,
            action="review.settings",
            target=current,
            detail={**changed, **change_detail(before, review_settings_to_dict(current))},
        )
    return current


def review_settings_to_dict(current: ReviewSettings) -> dict:
    return {
        "allow_self_approval": current.allow_self_approval,
        "mcp_decisions_enabled": current.mcp_decisions_enabled,
        "review_ttl_seconds": current.review_ttl_seconds,
    }


def review_settings_get(*, actor: Actor) -> dict:
    """The org's review settings (admins and auditors)."""
    require_role(actor, ROLE_AUDITOR)
    return review_settings_to_dict(review_settings(actor.org_id))


# --- access request rules -------------------------------------------------------------------------

_GROUP_FIELDS = ("approval_required_groups", "skip_review_groups", "reviewer_groups", "force_approval_groups")


def access_rule_to_dict(rule: AccessRequestRule) -> dict:
    def names(field):
        return sorted(g.name for g in getattr(rule, field).all())

    return {
        "id": str(rule.pk),
        "name": rule.name,
        "description": rule.description,
        "enabled": rule.enabled,
        "access_type": rule.access_type,
        **{field: names(field) for field in _GROUP_FIELDS},
        "all_groups_must_approve": rule.all_groups_must_approve,
        "min_approvals": None if rule.all_groups_must_approve else rule.min_approvals,
        "max_jit_duration_seconds": rule.max_jit_duration_seconds,
        "time_window": _window_dict(rule.window_start, rule.window_end),
        "min_risk": rule.min_risk or None,
        **rule_helpers.rule_bindings(rule),
        "created_at": rule.created_at.isoformat(),
        "updated_at": rule.updated_at.isoformat(),
    }


def _window_dict(start: time | None, end: time | None) -> dict | None:
    if start is None or end is None:
        return None
    return {"start_time": start.strftime("%H:%M"), "end_time": end.strftime("%H:%M"), "timezone": "UTC"}


def _parse_hhmm(value: str, field: str) -> time:
    try:
        return datetime.strptime(value, "%H:%M").time()
    except (TypeError, ValueError):
        raise InvalidInput(f"{field} must be HH:MM (24-hour, UTC)") from None


def _groups(actor: Actor, names: list[str] | None) -> list[UserGroup]:
    if not names:
        return []
    found = {g.name: g for g in UserGroup.objects.filter(org_id=actor.org_id, name__in=names)}
    missing = sorted(set(names) - set(found))
    if missing:
        raise NotFound(f'user group "{missing[0]}" not found')
    return [found[n] for n in dict.fromkeys(names)]


def _rules_qs():
    return AccessRequestRule.objects.prefetch_related("connections", "attributes", *_GROUP_FIELDS)


def access_rule_list(*, actor: Actor, limit: int = 50, offset: int = 0):
    require_role(actor, ROLE_AUDITOR)
    return rule_helpers.page_of(scope(_rules_qs(), actor, "view").order_by("name"), limit, offset)


def access_rule_get(*, actor: Actor, ref: str) -> AccessRequestRule:
    require_role(actor, ROLE_AUDITOR)
    return rule_helpers.by_ref(_rules_qs(), actor, ref, "access request rule")


def _apply_access_rule(rule: AccessRequestRule, actor: Actor, fields: dict) -> list[str]:
    """Validate and apply `fields` (hoop's checks, without its one-rule limit); save with bindings."""
    if "name" in fields:
        rule.name = rule_helpers.check_name(fields["name"], "access request rule")
    for key in ("description", "enabled", "all_groups_must_approve"):
        if key in fields and fields[key] is not None:
            setattr(rule, key, fields[key])
    if "access_type" in fields:
        if fields["access_type"] not in AccessType.values:
            raise InvalidInput("access_type must be one of 'jit', 'command' or 'jit_command'")
        rule.access_type = fields["access_type"]
    if "min_approvals" in fields and fields["min_approvals"] is not None:
        rule.min_approvals = fields["min_approvals"]
    if not rule.all_groups_must_approve and (rule.min_approvals or 0) < 1:
        raise InvalidInput("min_approvals must be at least 1 when all_groups_must_approve is false")
    if "max_jit_duration_seconds" in fields:
        value = fields["max_jit_duration_seconds"]
        if value is not None and not 60 <= value <= MAX_JIT_SECONDS:
            raise InvalidInput("max_jit_duration_seconds must be between 60 and 2592000 (30 days)")
        rule.max_jit_duration_seconds = value
    if "time_window" in fields:
        window = fields["time_window"]
        if window is None:
            rule.window_start = rule.window_end = None
        else:
            if not isinstance(window, dict) or set(window) - {"start_time", "end_time", "timezone"}:
                raise InvalidInput("time_window must be {start_time: 'HH:MM', end_time: 'HH:MM'} (UTC)")
            if window.get("timezone", "UTC") != "UTC":
                raise InvalidInput("time_window times are in UTC")
            rule.window_start = _parse_hhmm(window.get("start_time"), "time_window.start_time")
            rule.window_end = _parse_hhmm(window.get("end_time"), "time_window.end_time")
            if rule.window_start == rule.window_end:
                raise InvalidInput("time_window start_time and end_time must differ")
    if "min_risk" in fields:
        value = fields["min_risk"] or ""
        if value and value not in RiskLevel.values:
            raise InvalidInput(f"min_risk must be one of: {', '.join(RiskLevel.values)}")
        rule.min_risk = value

    groups = {f: _groups(actor, fields[f]) for f in _GROUP_FIELDS if f in fields and fields[f] is not None}
    current = {
        f: groups[f] if f in groups else (list(getattr(rule, f).all()) if rule.pk else [])
        for f in _GROUP_FIELDS
    }
    if not current["reviewer_groups"]:
        raise InvalidInput("reviewer_groups must have at least 1 entry")
    if current["skip_review_groups"] and current["approval_required_groups"]:
        raise InvalidInput("skip_review_groups can only be set when approval_required_groups is empty")
    if not rule.access_type:
        raise InvalidInput("access_type is required: 'jit', 'command' or 'jit_command'")

    changed = rule_helpers.save_with_bindings(rule, actor, fields, "access request rule")
    if not rule.connections.exists() and not rule.attributes.exists():
        raise InvalidInput("either connections or attributes must have at least 1 entry")
    for field, values in groups.items():
        getattr(rule, field).set(values)
    _refuse_overlap(rule)
    return changed


def _types_overlapping(access_type: str) -> list[str]:
    if access_type == AccessType.JIT_COMMAND:
        return list(AccessType.values)
    return [access_type, AccessType.JIT_COMMAND]


def _refuse_overlap(rule: AccessRequestRule) -> None:
    """Two enabled rules naming the same connection (or attribute) for the same access type would
    make who reviews ambiguous: refuse, as hoop does."""
    if not rule.enabled:
        return
    others = AccessRequestRule.objects.filter(
        org_id=rule.org_id, enabled=True, access_type__in=_types_overlapping(rule.access_type)
    ).exclude(pk=rule.pk)
    clash = others.filter(connections__in=rule.connections.all()).first()
    if clash is not None:
        raise Conflict(
            f'an access request rule with the same connection and access type already exists: "{clash.name}"'
        )
    clash = others.filter(attributes__in=rule.attributes.all()).first()
    if clash is not None:
        raise Conflict(
            f'an access request rule with the same attribute and access type already exists: "{clash.name}"'
        )


def access_rule_create(*, actor: Actor, name: str, **fields) -> AccessRequestRule:
    """Fields: description, enabled, access_type, connections, attributes, approval_required_groups,
    skip_review_groups, reviewer_groups, force_approval_groups, all_groups_must_approve,
    min_approvals, max_jit_duration_seconds, time_window, min_risk."""
    require_role(actor, ROLE_ADMIN)
    with transaction.atomic():
        rule = AccessRequestRule(org_id=actor.org_id)
        _apply_access_rule(rule, actor, {"name": name, **fields})
        rule_helpers.rule_changed(
            actor=actor,
            action="access_request_rule.create",
            target=rule,
            detail=rule_helpers.rule_bindings(rule),
        )
    return rule


def access_rule_update(*, actor: Actor, ref: str, **fields) -> AccessRequestRule:
    """Change the fields given; list fields replace their lists."""
    return rule_helpers.rule_update(
        AccessRequestRule,
        "access request rule",
        "access_request_rule.update",
        _apply_access_rule,
        actor=actor,
        ref=ref,
        fields=fields,
    )


def access_rule_delete(*, actor: Actor, ref: str) -> str:
    return rule_helpers.rule_delete(
        AccessRequestRule, "access request rule", "access_request_rule.delete", actor=actor, ref=ref
    )


# --- the gate -------------------------------------------------------------------------------------


def _applies_to(actor: Actor, rule: AccessRequestRule) -> bool:
    required = {g.pk for g in rule.approval_required_groups.all()}
    if required:
        return in_groups(actor, required)
    return not in_groups(actor, (g.pk for g in rule.skip_review_groups.all()))


def _rules_for(connection: Connection, access_types) -> list[AccessRequestRule]:
    """Enabled rules binding `connection` for any of `access_types`, in name order."""
    qs = rule_helpers.bound_queryset(AccessRequestRule.objects.all(), connection).filter(
        access_type__in=access_types
    )
    return list(qs.prefetch_related(*_GROUP_FIELDS))


def active_grant(*, user_id, connection_id, now=None) -> Review | None:
    """The approved, unexpired JIT review giving `user_id` access to the connection, if any."""
    now = now or timezone.now()
    return (
        Review.objects.filter(
            requester_id=user_id,
            connection_id=connection_id,
            type=ReviewType.JIT,
            status=ReviewStatus.APPROVED,
            access_until__gt=now,
        )
        .order_by("-access_until")
        .first()
    )


def input_risk(connection: Connection, text: str) -> dict:
    """The built-in analyzer's verdict on input that has not run (no network, no queries)."""

    return analyze_input(connection_name=connection.name, connection_kind=connection.kind, text=text)


def command_gate(
    *, actor: Actor, connection: Connection, input: str
) -> tuple[AccessRequestRule, dict] | None:
    """The rule that makes this exec wait for a review, and the input's risk; None if it may run.

    A one-time review is needed when a `command`/`jit_command` rule covers the connection and the
    actor, unless the actor holds an active JIT grant for it, and (for rules with `min_risk`) the
    built-in analyzer rates the input at least that risky.
    """
    rules = [r for r in _command_rules(connection) if r.applies_to(actor.group_ids)]
    if not rules:
        return None
    if active_grant(user_id=actor.user.pk, connection_id=connection.pk) is not None:
        return None
    risk = input_risk(connection, input)
    for rule in rules:
        if not rule.min_risk or RISK_ORDER[risk["risk_level"]] >= RISK_ORDER[rule.min_risk]:
            return _rules_qs().get(pk=rule.pk), risk  # fresh: the review snapshots its groups
    return None


@dataclass(frozen=True)
class _GateRule:
    """What the gate needs of a command rule, cached (`_command_rules`)."""

    pk: int
    min_risk: str
    required: frozenset
    skipped: frozenset

    def applies_to(self, group_ids) -> bool:
        if self.required:
            return bool(self.required & group_ids)
        return not (self.skipped & group_ids)


_gate_cache: OrderedDict = OrderedDict()
_gate_lock = threading.Lock()


def _command_rules(connection: Connection) -> list[_GateRule]:
    """The command rules binding `connection`, cached per process by the org's rules version like
    the bound guardrails (every rule, binding or group change bumps it), so an exec that no rule
    holds back costs the gate no query."""
    key = (connection.pk, connection.org.rules_version)
    with _gate_lock:
        hit = _gate_cache.get(key)
        if hit is not None:
            _gate_cache.move_to_end(key)
            return hit
    rules = [
        _GateRule(
            pk=r.pk,
            min_risk=r.min_risk,
            required=frozenset(g.pk for g in r.approval_required_groups.all()),
            skipped=frozenset(g.pk for g in r.skip_review_groups.all()),
        )
        for r in _rules_for(connection, (AccessType.COMMAND, AccessType.JIT_COMMAND))
    ]
    with _gate_lock:
        _gate_cache[key] = rules
        while len(_gate_cache) > rule_helpers.BOUND_CACHE_SIZE:
            _gate_cache.popitem(last=False)
    return rules


def _group_snapshot(groups) -> list[dict]:
    return [{"id": g.pk, "name": g.name} for g in sorted(groups, key=lambda g: g.name)]


def _expiry(org_id, now) -> datetime:
    return now + timedelta(seconds=review_settings(org_id).review_ttl_seconds)


def review_open(
    *,
    actor: Actor,
    session: Session,
    connection: Connection,
    rule: AccessRequestRule | None = None,
    reviewer_groups=None,
    min_approvals: int = 1,
    all_groups_must_approve: bool = False,
    force_approval_groups=(),
    risk: dict | None = None,
    input: str | None = None,
) -> Review:
    """Open a one-time review for `session`, which the caller has just recorded as pending_review
    (inside the caller's transaction). Reviewers and quorum come from `rule`, or are given directly
    (per-tool approval of upstream MCP tools). `input` is the exact input to approve when the
    session stores it masked (tool calls); it must hash to the session's `input_sha256`."""
    now = timezone.now()
    input = session.input if input is None else input
    if hashlib.sha256(input.encode()).hexdigest() != session.input_sha256:
        raise InvalidInput("the input to review is not the session's input")
    if rule is not None:
        reviewer_groups = list(rule.reviewer_groups.all())
        force_approval_groups = list(rule.force_approval_groups.all())
        min_approvals, all_groups_must_approve = rule.min_approvals, rule.all_groups_must_approve
    if not reviewer_groups:
        raise InvalidInput("a review needs at least one reviewer group")
    review = Review.objects.create(
        org_id=actor.org_id,
        type=ReviewType.ONETIME,
        session=session,
        requester=actor.user,
        connection=connection,
        connection_name=connection.name,
        input=input,
        input_sha256=session.input_sha256,
        rule=rule,
        rule_name=rule.name if rule else "",
        reviewer_groups=_group_snapshot(reviewer_groups),
        force_approval_groups=_group_snapshot(force_approval_groups),
        min_approvals=min_approvals,
        all_groups_must_approve=all_groups_must_approve,
        window_start=rule.window_start if rule else None,
        window_end=rule.window_end if rule else None,
        risk=risk or {},
        expires_at=_expiry(actor.org_id, now),
        created_at=now,
    )
    review.eligible_groups.set([*reviewer_groups, *force_approval_groups])
    audit_record(
        actor=actor,
        action="review.create",
        target=review,
        detail={"session_id": str(session.pk), "rule": review.rule_name, "input_sha256": review.input_sha256},
    )
    _after_commit(review, "review.created")
    return review


def review_find_identical(*, actor: Actor, connection: Connection, input_sha256: str) -> Review | None:
    """The newest one-time review of `actor`'s own identical request (same connection, same exact
    input) that may still lead to a run: pending, approved and not expired, or executed with its
    session not yet finished. What a retry of an upstream tool call joins (`pipeline`)."""
    now = timezone.now()
    return (
        Review.objects.filter(
            org_id=actor.org_id,
            requester_id=actor.user.pk,
            connection=connection,
            type=ReviewType.ONETIME,
            input_sha256=input_sha256,
        )
        .filter(
            Q(status__in=(ReviewStatus.PENDING, ReviewStatus.APPROVED), expires_at__gt=now)
            | Q(status=ReviewStatus.EXECUTED, session__status__in=(SessionStatus.OPEN, SessionStatus.RUNNING))
        )
        .select_related("session__user")
        .order_by("-created_at")
        .first()
    )


def access_request(
    *, actor: Actor, connection_name: str, duration_seconds: int | None, reason: str
) -> Review:
    """Ask for JIT access to a connection: a review that, once approved, lets `exec` skip
    per-command review on it until the grant expires or is revoked."""
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("reason is required: say why you need access")
    if len(reason) > 1000:
        raise InvalidInput("reason is longer than 1000 characters")
    connection = authorize(actor=actor, connection_name=connection_name, mode="exec")
    rules = [
        r for r in _rules_for(connection, (AccessType.JIT, AccessType.JIT_COMMAND)) if _applies_to(actor, r)
    ]
    if not rules:
        raise InvalidInput(
            f'no access request rule asks for JIT access to "{connection.name}" for you: '
            "exec on it needs no JIT grant"
        )
    rule = rules[0]
    limit = rule.max_jit_duration_seconds or MAX_JIT_SECONDS
    duration = duration_seconds or min(DEFAULT_JIT_SECONDS, limit)
    if not 60 <= duration <= limit:
        raise InvalidInput(f"duration_seconds must be between 60 and {limit} for this connection")
    now = timezone.now()
    with transaction.atomic():
        existing = Review.objects.filter(
            requester=actor.user,
            connection=connection,
            type=ReviewType.JIT,
            status=ReviewStatus.PENDING,
        ).first()
        if existing is not None:
            raise Conflict(f"you already have a pending access request for this connection: {existing.pk}")
        review = Review.objects.create(
            org_id=actor.org_id,
            type=ReviewType.JIT,
            requester=actor.user,
            connection=connection,
            connection_name=connection.name,
            reason=reason,
            rule=rule,
            rule_name=rule.name,
            reviewer_groups=_group_snapshot(rule.reviewer_groups.all()),
            force_approval_groups=_group_snapshot(rule.force_approval_groups.all()),
            min_approvals=rule.min_approvals,
            all_groups_must_approve=rule.all_groups_must_approve,
            duration_seconds=duration,
            expires_at=_expiry(actor.org_id, now),
            created_at=now,
        )
        review.eligible_groups.set([*rule.reviewer_groups.all(), *rule.force_approval_groups.all()])
        audit_record(
            actor=actor,
            action="review.create",
            target=review,
            detail={"type": "jit", "duration_seconds": duration, "rule": rule.name},
        )
        _after_commit(review, "review.created")
    return review


# --- who may see and decide ---------------------------------------------------------------------


def _reviewer_ids(review: Review) -> set[int]:
    return {g["id"] for g in review.reviewer_groups}


def _force_ids(review: Review) -> set[int]:
    return {g["id"] for g in review.force_approval_groups}


def is_eligible_reviewer(actor: Actor, review: Review) -> bool:
    return in_groups(actor, _reviewer_ids(review) | _force_ids(review))


def _visible(actor: Actor):
    """Reviews the actor may see (the policy decides: see `governance.policy._review_scope`)."""
    return scope(Review.objects.all(), actor, "view")


def _parse_review_id(review_id):
    return parse_id(review_id, NOT_FOUND)


def review_get(*, actor: Actor, review_id) -> Review:
    """A review the actor may see, by review id or by its session's id; NotFound otherwise."""
    pk = _parse_review_id(review_id)
    review = (
        _visible(actor).select_related("requester", "session").filter(Q(pk=pk) | Q(session_id=pk)).first()
    )
    if review is None:
        raise NotFound(NOT_FOUND)
    return review


def review_reload(review: Review) -> Review:
    """A fresh copy of a review the caller already got through `review_get` (for waiting loops)."""
    return Review.objects.get(pk=review.pk)


def review_list(
    *,
    actor: Actor,
    status: str | None = None,
    type: str | None = None,
    connection: str | None = None,
    waiting_for_me: bool = False,
    mine: bool = False,
    limit: int = 20,
    offset: int = 0,
) -> tuple[list[Review], int]:
    if status and status.upper() not in ReviewStatus.values:
        raise InvalidInput(f"unknown status {status!r}; use one of: {', '.join(ReviewStatus.values)}")
    if type and type not in ReviewType.values:
        raise InvalidInput("type must be onetime or jit")
    qs = _visible(actor).select_related("requester")
    if status:
        qs = qs.filter(status=status.upper())
    if type:
        qs = qs.filter(type=type)
    if connection:
        qs = qs.filter(connection_name=connection)
    if mine:
        qs = qs.filter(requester_id=actor.user.pk)
    if waiting_for_me:  # pending, for one of my groups, asked by someone else, not yet decided by me
        waiting = Review.objects.filter(
            org_id=actor.org_id, status=ReviewStatus.PENDING, eligible_groups__in=actor.group_ids
        ).exclude(requester_id=actor.user.pk)
        qs = qs.filter(pk__in=waiting.values("pk")).exclude(decisions__reviewer_id=actor.user.pk)
    return rule_helpers.page_of(qs.order_by("-created_at", "-pk"), limit, offset)


def can_see_input(actor: Actor, review: Review) -> bool:
    """The exact input is for the requester, the eligible reviewers, admins and auditors."""
    return (
        review.requester_id == actor.user.pk
        or is_eligible_reviewer(actor, review)
        or has_role(actor, ROLE_AUDITOR)
    )


def review_to_dict(review: Review, *, actor: Actor) -> dict:
    decisions = list(review.decisions.select_related("reviewer").all())
    data = {
        "id": str(review.pk),
        "session_id": str(review.session_id) if review.session_id else None,
        "type": review.type,
        "status": review.status,
        "connection_name": review.connection_name,
        "requester_email": review.requester.email,
        "reason": review.reason,
        "access_request_rule_name": review.rule_name or None,
        "reviewer_groups": [g["name"] for g in review.reviewer_groups],
        "force_approval_groups": [g["name"] for g in review.force_approval_groups],
        "quorum": (
            "all reviewer groups"
            if review.all_groups_must_approve
            else f"{review.min_approvals} distinct approver(s)"
        ),
        "min_approvals": None if review.all_groups_must_approve else review.min_approvals,
        "all_groups_must_approve": review.all_groups_must_approve,
        "decisions": [
            {
                "group": d.group_name,
                "decision": d.decision,
                "reviewer_email": d.reviewer.email,
                "reason": d.reason,
                "forced": d.forced,
                "decided_at": d.created_at.isoformat(),
            }
            for d in decisions
        ],
        "time_window": _window_dict(review.window_start, review.window_end),
        "duration_seconds": review.duration_seconds,
        "access_until": review.access_until.isoformat() if review.access_until else None,
        "expires_at": review.expires_at.isoformat(),
        "created_at": review.created_at.isoformat(),
        "decided_at": review.decided_at.isoformat() if review.decided_at else None,
        "executed_at": review.executed_at.isoformat() if review.executed_at else None,
        "rejection_reason": review.rejection_reason or None,
        "review_url": review_url(review),
        "you_can_decide": review.status == ReviewStatus.PENDING and _may_decide(actor, review),
        "you_can_revoke": review.status == ReviewStatus.APPROVED
        and _surface_decides(actor)
        and may_revoke(actor, review),
    }
    if can_see_input(actor, review):
        data["input"] = review.input
        data["input_sha256"] = review.input_sha256 or None
        data["risk"] = review.risk or None
    return data


def review_url(review: Review) -> str:
    return f"{settings.PUBLIC_BASE_URL}/reviews/{review.pk}/"


def _surface_decides(actor: Actor) -> bool:
    """Whether the actor's surface may decide at all (review_decide refuses token surfaces unless the
    org turned MCP/API decisions on): flags must not promise what the next call refuses."""
    return actor.surface not in TOKEN_SURFACES or review_settings(actor.org_id).mcp_decisions_enabled


def _may_decide(actor: Actor, review: Review) -> bool:
    if not _surface_decides(actor) or not is_eligible_reviewer(actor, review):
        return False
    if review.requester_id == actor.user.pk and not review_settings(actor.org_id).allow_self_approval:
        return False
    return True


# --- decisions ------------------------------------------------------------------------------------


def _tally(review: Review) -> str:
    approvals = [d for d in review.decisions.all() if d.decision == ReviewDecision.Decision.APPROVED]
    if any(d.forced for d in approvals):
        return ReviewStatus.APPROVED
    if review.all_groups_must_approve:
        needed = {g["name"] for g in review.reviewer_groups}
        return ReviewStatus.APPROVED if needed <= {d.group_name for d in approvals} else ReviewStatus.PENDING
    approvers = {d.reviewer_id for d in approvals}
    return ReviewStatus.APPROVED if len(approvers) >= review.min_approvals else ReviewStatus.PENDING


def _locked(actor: Actor, review_id) -> Review:
    pk = _parse_review_id(review_id)
    visible = _visible(actor).filter(Q(pk=pk) | Q(session_id=pk)).values_list("pk", flat=True).first()
    if visible is None:
        raise NotFound(NOT_FOUND)
    return Review.objects.select_for_update(of=("self",)).select_related("requester").get(pk=visible)


def review_decide(*, actor: Actor, review_id, status: str, reason: str = "", force: bool = False) -> Review:
    """APPROVED or REJECTED for a pending review, REVOKED for an approved one."""
    status = (status or "").upper()
    if status not in (ReviewStatus.APPROVED, ReviewStatus.REJECTED, ReviewStatus.REVOKED):
        raise InvalidInput("status must be APPROVED, REJECTED or REVOKED")
    reason = (reason or "").strip()
    if len(reason) > 1000:
        raise InvalidInput("reason is longer than 1000 characters")
    org_settings = review_settings(actor.org_id)
    if actor.surface in TOKEN_SURFACES and not org_settings.mcp_decisions_enabled:
        raise PolicyDenied(
            f"review decisions over {'MCP' if actor.surface == 'mcp' else 'the API'} are turned off for this "
            "organization: decide in the web app (an admin can turn them on)"
        )
    if status == ReviewStatus.REVOKED:
        with transaction.atomic():
            return _revoke(actor, _locked(actor, review_id), reason)
    # Who may decide depends only on the review's snapshot of groups: check, and record a refusal,
    # before taking the lock.
    review = review_get(actor=actor, review_id=review_id)
    groups = [g for g in review.reviewer_groups if g["id"] in actor.group_ids]
    forced_groups = [g for g in review.force_approval_groups if g["id"] in actor.group_ids]
    refusal = None
    if force and not forced_groups:
        refusal = "not eligible for a forced review: you are in none of its force-approval groups"
    elif not groups and not forced_groups:
        refusal = "not eligible for review"
    elif review.requester_id == actor.user.pk and not org_settings.allow_self_approval:
        refusal = "unable to self approve review"
    if refusal:
        audit_record(
            actor=actor,
            action="review.approve" if status == ReviewStatus.APPROVED else "review.reject",
            outcome=Outcome.DENIED,
            target=review,
            detail={"reason": refusal},
        )
        raise PolicyDenied(refusal)
    if status == ReviewStatus.REJECTED and not reason:
        raise InvalidInput("a reason is required to reject")
    with transaction.atomic():
        review = _locked(actor, review.pk)
        if review.status != ReviewStatus.PENDING:
            raise Conflict(f"review is in wrong state: it is {review.status}")
        decided = set(review.decisions.filter(reviewer_id=actor.user.pk).values_list("group_name", flat=True))
        targets = [(g, True) for g in forced_groups[:1]] if force else [(g, False) for g in groups]
        if not force and not targets:  # only in force groups: an ordinary decision counts for those
            targets = [(g, False) for g in forced_groups]
        targets = [(g, forced) for g, forced in targets if g["name"] not in decided]
        if not targets:
            raise Conflict("you have already decided this review")
        now = timezone.now()
        ReviewDecision.objects.bulk_create(
            ReviewDecision(
                review=review,
                reviewer=actor.user,
                group_name=g["name"],
                decision=status,
                reason=reason,
                forced=forced,
                surface=actor.surface,
                created_at=now,
            )
            for g, forced in targets
        )
        new_status = ReviewStatus.REJECTED if status == ReviewStatus.REJECTED else _tally(review)
        audit_record(
            actor=actor,
            action="review.approve" if status == ReviewStatus.APPROVED else "review.reject",
            target=review,
            detail={
                "groups": [g["name"] for g, _ in targets],
                "forced": force,
                "review_status": new_status,
                **({"reason": reason} if reason else {}),
            },
        )
        if new_status != review.status:
            review.status = new_status
            review.decided_at = now
            fields = ["status", "decided_at", "updated_at"]
            if new_status == ReviewStatus.APPROVED:
                if review.type == ReviewType.JIT:
                    review.access_until = now + timedelta(
                        seconds=review.duration_seconds or DEFAULT_JIT_SECONDS
                    )
                    fields.append("access_until")
                else:  # the approved input may be run until this deadline
                    review.expires_at = _expiry(review.org_id, now)
                    fields.append("expires_at")
            else:
                review.rejection_reason = reason
                fields.append("rejection_reason")
                review.status = new_status
                _end_session(review, SessionStatus.REJECTED, f"rejected by a reviewer: {reason}", actor=actor)
            review.save(update_fields=fields)
            _after_commit(
                review, "review.approved" if new_status == ReviewStatus.APPROVED else "review.rejected"
            )
        else:
            _after_commit(review, None)
    return review


def may_revoke(actor: Actor, review: Review) -> bool:
    """An approval can be withdrawn by its reviewers, an admin, or the requester."""
    return (
        is_eligible_reviewer(actor, review)
        or has_role(actor, ROLE_ADMIN)
        or review.requester_id == actor.user.pk
    )


def _revoke(actor: Actor, review: Review, reason: str) -> Review:
    if review.status != ReviewStatus.APPROVED:
        raise Conflict(f"review is in wrong state: it is {review.status}")
    if not may_revoke(actor, review):
        raise PolicyDenied("not eligible for review")
    now = timezone.now()
    review.status = ReviewStatus.REVOKED
    review.decided_at = now
    review.rejection_reason = reason
    if review.access_until and review.access_until > now:
        review.access_until = now
    review.save(update_fields=["status", "decided_at", "rejection_reason", "access_until", "updated_at"])
    ReviewDecision.objects.create(
        review=review,
        reviewer=actor.user,
        group_name=next((g["name"] for g in review.reviewer_groups if g["id"] in actor.group_ids), "admin"),
        decision=ReviewDecision.Decision.REVOKED,
        reason=reason,
        surface=actor.surface,
        created_at=now,
    )
    _end_session(review, SessionStatus.CANCELLED, "the approval was revoked before it ran", actor=actor)
    audit_record(
        actor=actor, action="review.revoke", target=review, detail={"reason": reason} if reason else {}
    )
    _after_commit(review, "review.revoked")
    return review


def _end_session(review: Review, status: str, error: str, *, actor: Actor | None = None) -> None:
    """End the pending session of a review that will never run (rejected, revoked, expired), through
    the lifecycle: its audit event, its `session.*` events, the wake-up and the analysis."""
    if review.session_id is None:
        return

    lifecycle.transition(
        review.session_id,
        status,
        actor=actor,
        action="session.rejected" if status == SessionStatus.REJECTED else "session.cancelled",
        outcome=Outcome.BLOCKED if status == SessionStatus.REJECTED else Outcome.SUCCESS,
        detail={"review_id": str(review.pk), "review_status": review.status},
        fields={"error": error},
        expect=(SessionStatus.PENDING_REVIEW,),
    )


# --- execution ------------------------------------------------------------------------------------


def _in_window(review: Review, now: datetime) -> bool:
    if review.window_start is None or review.window_end is None:
        return True
    current = now.astimezone(UTC).time()
    if review.window_start < review.window_end:
        return review.window_start <= current < review.window_end
    return current >= review.window_start or current < review.window_end  # spans midnight


def review_window_refusal(review: Review, now: datetime) -> str | None:
    """Why an approved review may not run at `now` (its time window), or None."""
    if review.status != ReviewStatus.APPROVED or _in_window(review, now):
        return None
    window = _window_dict(review.window_start, review.window_end)
    return f"execution not allowed outside the time window {window['start_time']} to {window['end_time']} UTC"


def review_changed(review: Review, event: str | None) -> None:
    """After the caller's transaction commits: wake waiters, emit `event`, notify people."""
    _after_commit(review, event)


# --- expiry -----------------------------------------------------------------------------------------


def reviews_expire(*, now=None, limit: int = 500) -> int:
    """EXPIRED: pending reviews past their deadline, approved one-time reviews never run in time,
    and JIT grants past their end. Run by Celery beat (and the embedded sweeper)."""
    now = now or timezone.now()
    due = Review.objects.filter(
        Q(status=ReviewStatus.PENDING, expires_at__lte=now)
        | Q(status=ReviewStatus.APPROVED, type=ReviewType.ONETIME, expires_at__lte=now)
        | Q(status=ReviewStatus.APPROVED, type=ReviewType.JIT, access_until__lte=now)
    ).values_list("pk", flat=True)[:limit]
    count = 0
    for pk in list(due):
        with transaction.atomic():
            review = Review.objects.select_for_update(of=("self",)).get(pk=pk)
            if review.status not in (ReviewStatus.PENDING, ReviewStatus.APPROVED):
                continue
            previous = review.status
            review.status = ReviewStatus.EXPIRED
            review.save(update_fields=["status", "updated_at"])
            _end_session(review, SessionStatus.CANCELLED, "the review expired before it ran")
            audit_record(
                actor=None,
                org_id=review.org_id,
                surface="task",
                action="review.expire",
                target=review,
                detail={"was": previous},
            )
            _after_commit(review, "review.expired")
            count += 1
    return count


# --- after commit: wake waiters, events, notifications -------------------------------------------------


def _after_commit(review: Review, event: str | None) -> None:
    review_id = review.pk
    if event:
        notify.emit(review, event)

    def run():
        notify.wake(review_id)
        if event:
            notify.dispatch(review_id, event)

    transaction.on_commit(run)
