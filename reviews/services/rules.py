"""Access request rules: which connections (or attributes) need a review for whom, who reviews, the
quorum, the JIT limits, the time window and the risk threshold. Validated, audited, rules version
bumped (`governance.rules` helpers); two enabled rules never overlap."""

from __future__ import annotations

from datetime import datetime, time

from gateway.models import Connection
from governance import crud
from governance import rules as rule_helpers
from governance.errors import Conflict, InvalidInput, NotFound
from governance.models import UserGroup
from governance.policy import Actor
from reviews.models import AccessRequestRule, AccessType
from reviews.services.common import MAX_JIT_SECONDS, window_dict
from sessions.models import RiskLevel

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
        "time_window": window_dict(rule.window_start, rule.window_end),
        "min_risk": rule.min_risk or None,
        **crud.rule_bindings(rule),
        "created_at": rule.created_at.isoformat(),
        "updated_at": rule.updated_at.isoformat(),
    }


def _parse_hhmm(value, field: str) -> time:  # value: whatever the caller sent
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


def access_rule_queryset():
    """Access request rules with everything `access_rule_to_dict` and the gate read."""
    return AccessRequestRule.objects.prefetch_related("connections", "attributes", *_GROUP_FIELDS)


def _apply_access_rule(rule: AccessRequestRule, actor: Actor, fields: dict) -> None:
    """Validate and apply `fields` (hoop's checks, without its one-rule limit)."""
    if "name" in fields:
        rule.name = crud.check_name(fields["name"], "access request rule")
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


def _set_groups(rule: AccessRequestRule, actor: Actor, fields: dict) -> None:
    """With the rule saved and bound: its groups, and the checks that need its bindings."""
    if not rule.connections.exists() and not rule.attributes.exists():
        raise InvalidInput("either connections or attributes must have at least 1 entry")
    for field in _GROUP_FIELDS:
        if fields.get(field) is not None:
            getattr(rule, field).set(_groups(actor, fields[field]))
    _refuse_overlap(rule)


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


# Fields: description, enabled, access_type, connections, attributes, approval_required_groups,
# skip_review_groups, reviewer_groups, force_approval_groups, all_groups_must_approve,
# min_approvals, max_jit_duration_seconds, time_window, min_risk. Group lists replace their lists.
ACCESS_RULES = crud.register(
    crud.RuleKind(
        name="access_request_rule",
        model=AccessRequestRule,
        what="access request rule",
        apply=_apply_access_rule,
        after_save=_set_groups,
        to_dict=access_rule_to_dict,
        related=(*crud.BINDINGS, *_GROUP_FIELDS),
        created_detail=lambda rule, fields: crud.rule_bindings(rule),
    )
)
access_rule_list = ACCESS_RULES.list
access_rule_get = ACCESS_RULES.get
access_rule_create = ACCESS_RULES.create
access_rule_update = ACCESS_RULES.update
access_rule_delete = ACCESS_RULES.delete


def access_rules_for(connection: Connection, access_types) -> list[AccessRequestRule]:
    """Enabled rules binding `connection` for any of `access_types`, in name order."""
    qs = rule_helpers.bound_queryset(AccessRequestRule.objects.all(), connection).filter(
        access_type__in=access_types
    )
    return list(qs.prefetch_related(*_GROUP_FIELDS))
