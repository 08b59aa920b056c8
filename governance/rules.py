"""Rule services: attributes, guardrail rules and masking rules, for every surface.

Each is a kind of the one rule service (`governance.crud.RuleKind`): reading guardrail and masking
rules is for admins and auditors, attributes for admins; changing them is for admins. Every change
is audited and bumps the org's rules version.
The pipeline reads the rules that bind a connection through `bound_rules` (cached per process by
the org's rules version) and `masker_for`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Exists, OuterRef, Q, QuerySet, Value
from django.db.models.functions import Concat

from gateway.models import Connection
from governance import guardrails, masking
from governance.crud import (
    RuleKind,
    by_ref,
    check_name,
    connections_named,
    register,
    rule_bindings,
)
from governance.errors import InvalidInput
from governance.models import Attribute, GuardrailRule, MaskingRule
from governance.policy import ROLE_ADMIN, ROLE_AUDITOR, Actor, require_role
from sessions.analysis import analyze_input
from sessions.audit import snapshot

# --- attributes --------------------------------------------------------------------------------


def attribute_to_dict(attribute: Attribute) -> dict:
    return {
        "id": str(attribute.pk),
        "name": attribute.name,
        "description": attribute.description,
        "connections": sorted(c.name for c in attribute.connections.all()),
        "created_at": attribute.created_at.isoformat(),
    }


_ATTRIBUTE_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}(=[a-zA-Z0-9_.:/-]+)?$")


def check_attribute_name(name: str) -> str:
    """An attribute is a plain tag (`pci`) or a key=value pair (`env=prod`), 63 characters at most."""
    name = (name or "").strip()
    if len(name) > 63 or not _ATTRIBUTE_NAME.match(name):
        raise InvalidInput(
            "attribute name: a tag (letters, digits, '-', '_', '.') or key=value such as env=prod, "
            "63 characters at most"
        )
    return name


def selector_filter(selector: str) -> Q:
    """Connections matching a selector: comma-separated terms that must all hold; `env=prod` is
    the attribute env=prod, `env` any env=<value> (or the tag env). Case-insensitive, as names are."""
    terms = [t.strip() for t in (selector or "").split(",") if t.strip()]
    if not terms or len(terms) > 10:
        raise InvalidInput("selector: one to ten comma-separated terms such as env=prod,tier")
    q = Q()
    for term in terms:
        if "=" in term:
            check_attribute_name(term)
            match = Attribute.objects.filter(name__iexact=term)
        else:
            check_attribute_name(term)
            match = Attribute.objects.filter(Q(name__iexact=term) | Q(name__istartswith=term + "="))
        q &= Q(pk__in=match.values("connections"))
    return q


def _apply_attribute(attribute: Attribute, actor: Actor, fields: dict) -> None:
    if "name" in fields:
        attribute.name = check_attribute_name(fields["name"])
    if fields.get("description") is not None:
        attribute.description = fields["description"]
    if fields.get("connections") is not None and (
        fields.get("add_connections") or fields.get("remove_connections")
    ):
        raise InvalidInput(
            "give connections (the whole list) or add_connections/remove_connections, not both"
        )


def _tag_connections(attribute: Attribute, actor: Actor, fields: dict) -> None:
    if fields.get("connections") is not None:
        attribute.connections.set(connections_named(actor, fields["connections"]))
    if fields.get("add_connections"):
        attribute.connections.add(*connections_named(actor, fields["add_connections"]))
    if fields.get("remove_connections"):
        attribute.connections.remove(*connections_named(actor, fields["remove_connections"]))


# Attributes tag connections (they are not bound themselves) and only admins read them.
ATTRIBUTES = register(
    RuleKind(
        name="attribute",
        model=Attribute,
        what="attribute",
        apply=_apply_attribute,
        after_save=_tag_connections,
        to_dict=attribute_to_dict,
        bindings=False,
        related=("connections",),
        read_role=ROLE_ADMIN,
        created_detail=lambda attribute, fields: {
            "connections": fields.get("connections") or [],
            "after": snapshot(attribute),
        },
    )
)
attribute_list = ATTRIBUTES.list


def attribute_get(*, actor: Actor, name: str) -> Attribute:
    return ATTRIBUTES.get(actor=actor, ref=name)


def attribute_create(
    *, actor: Actor, name: str, description: str = "", connections: list[str] | None = None
) -> Attribute:
    return ATTRIBUTES.create(actor=actor, name=name, description=description, connections=connections)


def attribute_update(
    *,
    actor: Actor,
    name: str,
    description: str | None = None,
    connections: list[str] | None = None,
    add_connections: list[str] | None = None,
    remove_connections: list[str] | None = None,
) -> Attribute:
    """Change an attribute: `connections` replaces the whole list; `add_connections` and
    `remove_connections` tag and untag without knowing the rest of the list."""
    return ATTRIBUTES.update(
        actor=actor,
        ref=name,
        description=description,
        connections=connections,
        add_connections=add_connections,
        remove_connections=remove_connections,
    )


def attribute_delete(*, actor: Actor, name: str) -> None:
    ATTRIBUTES.delete(actor=actor, ref=name)


# --- guardrail rules ---------------------------------------------------------------------------


def guardrail_to_dict(rule: GuardrailRule) -> dict:
    return {
        "id": str(rule.pk),
        "name": rule.name,
        "description": rule.description,
        "message": rule.message,
        "enabled": rule.enabled,
        "input": rule.input_conditions,
        "output": rule.output_conditions,
        **rule_bindings(rule),
        "created_at": rule.created_at.isoformat(),
        "updated_at": rule.updated_at.isoformat(),
    }


def _apply_guardrail(rule: GuardrailRule, actor: Actor, fields: dict) -> None:
    """Fields: name, description, message, enabled, input, output (and the bindings)."""
    if "name" in fields:
        rule.name = check_name(fields["name"], "guardrail")
    for key in ("description", "message", "enabled"):
        if key in fields:
            setattr(rule, key, fields[key])
    if "input" in fields:
        rule.input_conditions = guardrails.validate_conditions(fields["input"] or {}, direction="input")
    if "output" in fields:
        rule.output_conditions = guardrails.validate_conditions(fields["output"] or {}, direction="output")
    if not rule.input_conditions and not rule.output_conditions:
        raise InvalidInput("a guardrail needs at least one input or output condition")


GUARDRAILS = register(
    RuleKind(
        name="guardrail",
        model=GuardrailRule,
        what="guardrail",
        apply=_apply_guardrail,
        to_dict=guardrail_to_dict,
    )
)
guardrail_list = GUARDRAILS.list
guardrail_get = GUARDRAILS.get
guardrail_create = GUARDRAILS.create
guardrail_update = GUARDRAILS.update
guardrail_delete = GUARDRAILS.delete


def bound_queryset(qs: QuerySet, connection: Connection) -> QuerySet:
    """The enabled rules that bind `connection`: named directly, or through an attribute it carries.
    An attribute without a value is also a key, as in a selector: a rule bound to `env` binds every
    connection tagged `env=<anything>`, including values added later."""
    keyed = Attribute.objects.filter(
        connections=connection, name__istartswith=Concat(OuterRef("attributes__name"), Value("="))
    )
    return (
        qs.filter(org_id=connection.org_id, enabled=True)
        .filter(Q(connections=connection) | Q(attributes__connections=connection) | Exists(keyed))
        .distinct()
        .order_by("name")
    )


def guardrail_rules_bound(connection: Connection) -> list[GuardrailRule]:
    return list(bound_queryset(GuardrailRule.objects.all(), connection))


def as_engine_rules(rules: list[GuardrailRule]) -> list[guardrails.Rule]:
    return [guardrails.Rule(name=r.name, input=r.input_conditions, output=r.output_conditions) for r in rules]


def guardrail_test(
    *,
    actor: Actor,
    input: str,
    ref: str | None = None,
    connection_name: str | None = None,
    direction: str = "input",
    dialect: str | None = None,
    conditions: dict | None = None,
) -> dict:
    """Evaluate text against one rule, or against every rule bound to a connection, or against
    unsaved `conditions` ({"input": ..., "output": ...}, validated exactly as a save validates
    them; the admin's editor tests what is on the page with it). Runs nothing."""
    require_role(actor, ROLE_AUDITOR)
    if conditions is not None:
        if ref is not None or connection_name is not None:
            raise InvalidInput("give a rule, a connection_name or inline conditions, not several")
        if not isinstance(conditions, dict):
            raise InvalidInput("conditions must be an object with input and/or output")
    elif (ref is None) == (connection_name is None):
        raise InvalidInput("give either a rule (id or name) or a connection_name")
    if direction not in ("input", "output"):
        raise InvalidInput("direction must be input or output")
    if conditions is not None:
        draft = GuardrailRule(
            name="this rule",
            input_conditions=guardrails.validate_conditions(conditions.get("input") or {}, direction="input"),
            output_conditions=guardrails.validate_conditions(
                conditions.get("output") or {}, direction="output"
            ),
        )
        rules = [draft]
    elif connection_name is not None:
        connection = connections_named(actor, [connection_name])[0]
        rules = guardrail_rules_bound(connection)
        dialect = dialect or guardrails.DIALECTS.get(connection.kind)
    else:
        rules = [by_ref(GuardrailRule.objects.all(), actor, ref, "guardrail")]
    if dialect is not None and dialect not in guardrails.DIALECTS.values():
        raise InvalidInput(f"dialect must be one of: {', '.join(sorted(set(guardrails.DIALECTS.values())))}")
    engine_rules = as_engine_rules(rules)
    if direction == "input":
        kind = next((k for k, d in guardrails.DIALECTS.items() if d == dialect), "command")

        def assess_risk():
            return analyze_input(connection_name=connection_name or "test", connection_kind=kind, text=input)

        findings = guardrails.evaluate_input(engine_rules, input, dialect=dialect, assess_risk=assess_risk)
    else:
        findings = guardrails.evaluate_output(engine_rules, input)
    return {
        "blocked": bool(findings),
        "rules_evaluated": [r.name for r in rules],
        "findings": [f.as_dict() for f in findings],
        "read_only": direction == "input" and guardrails.requires_read_only(engine_rules),
    }


# --- masking rules -----------------------------------------------------------------------------


def masking_rule_to_dict(rule: MaskingRule) -> dict:
    return {
        "id": str(rule.pk),
        "name": rule.name,
        "description": rule.description,
        "enabled": rule.enabled,
        "spec": rule.spec,
        **rule_bindings(rule),
        "created_at": rule.created_at.isoformat(),
        "updated_at": rule.updated_at.isoformat(),
    }


def _apply_masking(rule: MaskingRule, actor: Actor, fields: dict) -> None:
    """Fields: name, description, enabled, spec (and the bindings)."""
    if "name" in fields:
        rule.name = check_name(fields["name"], "masking rule")
    for key in ("description", "enabled"):
        if key in fields:
            setattr(rule, key, fields[key])
    if "spec" in fields:
        rule.spec = masking.validate_spec(fields["spec"] or {})


MASKING_RULES = register(
    RuleKind(
        name="masking_rule",
        model=MaskingRule,
        what="masking rule",
        apply=_apply_masking,
        to_dict=masking_rule_to_dict,
    )
)
masking_rule_list = MASKING_RULES.list
masking_rule_get = MASKING_RULES.get
masking_rule_update = MASKING_RULES.update
masking_rule_delete = MASKING_RULES.delete


def masking_rule_create(*, actor: Actor, name: str, spec: dict, **fields) -> MaskingRule:
    """A masking rule needs its spec."""
    return MASKING_RULES.create(actor=actor, name=name, spec=spec, **fields)


def masking_key(org_id) -> bytes:
    """The org's pseudonym key: stable for the deployment, different per org (so pseudonyms never
    correlate across orgs)."""
    base = (settings.MASKING_KEY or settings.SECRET_KEY).encode()
    return hmac.new(base, f"portcullis-masking:{org_id}".encode(), hashlib.sha256).digest()


def masking_rules_bound(connection: Connection) -> list[MaskingRule]:
    return list(bound_queryset(MaskingRule.objects.all(), connection))


def masker_for(connection: Connection) -> tuple[masking.Masker, list[str]]:
    """The masker for a connection's results, and the names of the rules it applies."""
    bound = bound_rules(connection)
    return bound.masker, bound.masking_rules


@dataclass(frozen=True)
class Bound:
    guardrails: list  # engine rules (governance.guardrails.Rule)
    masker: masking.Masker
    masking_rules: list[str]


_bound_cache: OrderedDict = OrderedDict()
_bound_lock = threading.Lock()
BOUND_CACHE_SIZE = 2048


def bound_rules(connection: Connection) -> Bound:
    """The guardrails and masker that bind `connection`, cached per process by the org's rules
    version (read with the connection, so a change is seen on the next request everywhere).
    `connection.org` should be loaded with it (select_related)."""
    key = (connection.pk, connection.org.rules_version)
    with _bound_lock:
        hit = _bound_cache.get(key)
        if hit is not None:
            _bound_cache.move_to_end(key)
            return hit
    masking_rules = masking_rules_bound(connection)
    bound = Bound(
        guardrails=as_engine_rules(guardrail_rules_bound(connection)),
        masker=masking.Masker([r.spec for r in masking_rules], key=masking_key(connection.org_id)),
        masking_rules=[r.name for r in masking_rules],
    )
    with _bound_lock:
        _bound_cache[key] = bound
        while len(_bound_cache) > BOUND_CACHE_SIZE:
            _bound_cache.popitem(last=False)
    return bound


def masking_preview_check(*, actor: Actor, ref, spec) -> None:
    """What every masking preview checks first: the role, and a rule or a spec (not both)."""
    require_role(actor, ROLE_AUDITOR)
    if (ref is None) == (spec is None):
        raise InvalidInput("give either a rule (id or name) or an inline spec")


def masking_preview(
    *,
    actor: Actor,
    ref: str | None = None,
    spec: dict | None = None,
    text: str | None = None,
    columns: list[str] | None = None,
    rows: list[list] | None = None,
) -> dict:
    """Mask a sample with a stored rule or an inline spec. Returns only masked data.

    The sample is text, or columns and rows the caller provides. (The first rows of a query as
    the sample: `gateway.previews.masking_preview`, which runs it through the exec engine.)
    """
    masking_preview_check(actor=actor, ref=ref, spec=spec)
    if text is None and rows is None:
        raise InvalidInput("give a sample text, or columns and rows, or a connection_name and input")
    if rows is not None and (columns is None or any(len(r) != len(columns) for r in rows)):
        raise InvalidInput("every sample row needs one value per column")
    checked = masking.validate_spec(spec) if spec is not None else None
    rule_spec = checked or by_ref(MaskingRule.objects.all(), actor, ref, "masking rule").spec
    masker = masking.Masker([rule_spec], key=masking_key(actor.org_id))
    result: dict = {"counts": {}, "unavailable_entities": masker.unavailable_entities}
    try:
        if text is not None:
            result["text"], counts = masker.mask_text(text)
            result["counts"] = dict(counts)
        if rows is not None and columns is not None:  # (columns were checked with the rows)
            result["columns"] = columns
            result["rows"], counts = masker.mask_rows(columns, rows)
            for name, count in counts.items():
                result["counts"][name] = result["counts"].get(name, 0) + count
    except masking.MaskingError as exc:
        raise InvalidInput(f"masking failed: {exc}") from None
    return result
