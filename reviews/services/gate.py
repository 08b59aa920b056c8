"""The review gate the pipeline calls before an exec runs (`command_gate`): whether a command rule
holds this input back for people, unless the actor holds an active JIT grant. The command rules
are cached per process by the org's rules version."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from django.utils import timezone

from gateway.models import Connection
from governance import rules as rule_helpers
from governance.policy import Actor
from reviews.models import AccessRequestRule, AccessType, Review, ReviewStatus, ReviewType
from reviews.services.rules import access_rule_queryset, access_rules_for
from sessions.analysis import analyze_input
from sessions.models import RISK_ORDER


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
            return access_rule_queryset().get(pk=rule.pk), risk  # fresh: the review snapshots its groups
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
        for r in access_rules_for(connection, (AccessType.COMMAND, AccessType.JIT_COMMAND))
    ]
    with _gate_lock:
        _gate_cache[key] = rules
        while len(_gate_cache) > rule_helpers.BOUND_CACHE_SIZE:
            _gate_cache.popitem(last=False)
    return rules
