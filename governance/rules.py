"""Rule services: attributes, guardrail rules and masking rules, for every surface.

Reading rules is for admins and auditors; changing them is for admins. Every change is audited.
The pipeline reads the rules that bind a connection through `bound_rules` (cached per process by
the org's rules version) and `masker_for`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet, Value
from django.db.models.functions import Concat

from gateway.models import NAME_VALIDATOR, Connection
from governance import guardrails, masking
from governance.errors import Conflict, InvalidInput, NotFound
from governance.models import Attribute, GuardrailRule, MaskingRule, Organization
from governance.policy import ROLE_ADMIN, ROLE_AUDITOR, Actor, require_role, scope
from sessions.analysis import analyze_input
from sessions.audit import audit_record, change_detail, snapshot

MAX_LIMIT = 100


# --- shared helpers ----------------------------------------------------------------------------


def rule_changed(*, actor: Actor, action: str, target, detail: dict | None = None) -> None:
    """Audit a change to rules or bindings and bump the org's rules version (same transaction)."""
    audit_record(actor=actor, action=action, target=target, detail=detail)
    Organization.rules_changed(actor.org_id)


def check_name(name: str, what: str) -> str:
    name = (name or "").strip()
    try:
        NAME_VALIDATOR(name)
    except Exception:
        raise InvalidInput(f"{what} name: use 1-63 letters, digits, '-', '_' or '.'") from None
    return name


def _connections(actor: Actor, names: list[str] | None) -> list[Connection]:
    """The actor's org's connections by name; every name must exist there."""
    if not names:
        return []
    found = {c.name: c for c in Connection.objects.filter(org_id=actor.org_id, name__in=names)}
    missing = sorted(set(names) - set(found))
    if missing:
        raise NotFound(f'connection "{missing[0]}" not found or not accessible')
    return [found[n] for n in names]


def _attributes(actor: Actor, names: list[str] | None) -> list[Attribute]:
    if not names:
        return []
    found = {a.name: a for a in Attribute.objects.filter(org_id=actor.org_id, name__in=names)}
    missing = sorted(set(names) - set(found))
    if missing:
        hint = ""
        if "=" not in missing[0]:
            hint = f" (to bind every {missing[0]}=<value>, create the attribute {missing[0]} first)"
        raise NotFound(f'attribute "{missing[0]}" not found{hint}')
    return [found[n] for n in names]


def by_ref(qs: QuerySet, actor: Actor, ref: str, what: str, action: str = "view"):
    """A rule the actor may `action` (the policy's `scope`: its org, its role) by id or by name."""
    qs = scope(qs, actor, action)
    try:
        obj = qs.filter(pk=uuid.UUID(str(ref))).first()
    except ValueError:
        obj = None
    obj = obj or qs.filter(name=ref).first()
    if obj is None:
        raise NotFound(f'{what} "{ref}" not found')
    return obj


def page_of(qs: QuerySet, limit: int, offset: int) -> tuple[list, int]:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}")
    if offset < 0:
        raise InvalidInput("offset must not be negative")
    return list(qs[offset : offset + limit]), qs.count()


def rule_bindings(obj) -> dict:
    return {
        "connections": sorted(c.name for c in obj.connections.all()),
        "attributes": sorted(a.name for a in obj.attributes.all()),
    }


def save_unique(obj, what: str) -> None:
    """Save `obj`, refusing a name its org already has in any case (a database constraint too)."""
    # A runbook's name is unique on its connection; everything else's in its org.
    owner = {"connection_id": obj.connection_id} if hasattr(obj, "connection_id") else {"org_id": obj.org_id}
    existing = (
        type(obj)
        ._default_manager.filter(**owner, name__iexact=obj.name)
        .exclude(pk=obj.pk)
        .values_list("name", flat=True)
        .first()
    )
    if existing is not None:
        suffix = "" if existing == obj.name else f' as "{existing}" (names are unique regardless of case)'
        raise Conflict(f'{what} "{obj.name}" already exists{suffix}')
    try:
        with transaction.atomic():
            obj.save()
    except IntegrityError:
        raise Conflict(f'{what} "{obj.name}" already exists') from None


# --- attributes --------------------------------------------------------------------------------


def attribute_to_dict(attribute: Attribute) -> dict:
    return {
        "id": str(attribute.pk),
        "name": attribute.name,
        "description": attribute.description,
        "connections": sorted(c.name for c in attribute.connections.all()),
        "created_at": attribute.created_at.isoformat(),
    }


def attribute_list(*, actor: Actor, limit: int = 50, offset: int = 0) -> tuple[list[Attribute], int]:
    require_role(actor, ROLE_ADMIN)
    qs = scope(Attribute.objects.prefetch_related("connections"), actor, "view").order_by("name")
    return page_of(qs, limit, offset)


def attribute_get(*, actor: Actor, name: str) -> Attribute:
    require_role(actor, ROLE_ADMIN)
    return by_ref(Attribute.objects.prefetch_related("connections"), actor, name, "attribute")


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


def attribute_create(
    *, actor: Actor, name: str, description: str = "", connections: list[str] | None = None
) -> Attribute:
    require_role(actor, ROLE_ADMIN)
    with transaction.atomic():
        attribute = Attribute(org_id=actor.org_id, name=check_attribute_name(name), description=description)
        save_unique(attribute, "attribute")
        attribute.connections.set(_connections(actor, connections))
        rule_changed(
            actor=actor,
            action="attribute.create",
            target=attribute,
            detail={"connections": connections or [], "after": snapshot(attribute)},
        )
    return attribute


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
    require_role(actor, ROLE_ADMIN)
    if connections is not None and (add_connections or remove_connections):
        raise InvalidInput(
            "give connections (the whole list) or add_connections/remove_connections, not both"
        )
    with transaction.atomic():
        attribute = by_ref(Attribute.objects.select_for_update(), actor, name, "attribute", "change")
        before = snapshot(attribute)
        if description is not None:
            attribute.description = description
            attribute.save(update_fields=["description"])
        if connections is not None:
            attribute.connections.set(_connections(actor, connections))
        if add_connections:
            attribute.connections.add(*_connections(actor, add_connections))
        if remove_connections:
            attribute.connections.remove(*_connections(actor, remove_connections))
        rule_changed(
            actor=actor,
            action="attribute.update",
            target=attribute,
            detail=change_detail(before, snapshot(attribute)),
        )
    return attribute


def attribute_delete(*, actor: Actor, name: str) -> None:
    require_role(actor, ROLE_ADMIN)
    with transaction.atomic():
        attribute = by_ref(Attribute.objects.all(), actor, name, "attribute", "change")
        rule_changed(
            actor=actor, action="attribute.delete", target=attribute, detail={"before": snapshot(attribute)}
        )
        attribute.delete()


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


def guardrail_list(*, actor: Actor, limit: int = 50, offset: int = 0) -> tuple[list[GuardrailRule], int]:
    require_role(actor, ROLE_AUDITOR)
    qs = scope(GuardrailRule.objects.prefetch_related("connections", "attributes"), actor, "view")
    return page_of(qs.order_by("name"), limit, offset)


def guardrail_get(*, actor: Actor, ref: str) -> GuardrailRule:
    require_role(actor, ROLE_AUDITOR)
    return by_ref(
        GuardrailRule.objects.prefetch_related("connections", "attributes"), actor, ref, "guardrail"
    )


def save_with_bindings(rule, actor: Actor, fields: dict, what: str) -> list[str]:
    """Save a rule, then set the bindings given (lists replace); returns the changed field names."""
    changed = sorted(k for k in fields if k not in ("connections", "attributes"))
    save_unique(rule, what)
    if "connections" in fields:
        rule.connections.set(_connections(actor, fields["connections"]))
        changed.append("connections")
    if "attributes" in fields:
        rule.attributes.set(_attributes(actor, fields["attributes"]))
        changed.append("attributes")
    return changed


def rule_update(model, what: str, action: str, apply, *, actor: Actor, ref: str, fields: dict):
    require_role(actor, ROLE_ADMIN)
    with transaction.atomic():
        rule = by_ref(model.objects.select_for_update(), actor, ref, what, "change")
        before = snapshot(rule)
        apply(rule, actor, fields)
        rule_changed(actor=actor, action=action, target=rule, detail=change_detail(before, snapshot(rule)))
    return rule


def rule_delete(model, what: str, action: str, *, actor: Actor, ref: str) -> str:
    require_role(actor, ROLE_ADMIN)
    with transaction.atomic():
        rule = by_ref(model.objects.all(), actor, ref, what, "change")
        name = rule.name
        rule_changed(actor=actor, action=action, target=rule, detail={"before": snapshot(rule)})
        rule.delete()
    return name


def _apply_guardrail(rule: GuardrailRule, actor: Actor, fields: dict) -> list[str]:
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
    return save_with_bindings(rule, actor, fields, "guardrail")


def guardrail_create(*, actor: Actor, name: str, **fields) -> GuardrailRule:
    """Create a guardrail rule. Fields: description, message, enabled, input, output, connections, attributes."""
    require_role(actor, ROLE_ADMIN)
    with transaction.atomic():
        rule = GuardrailRule(org_id=actor.org_id)
        _apply_guardrail(rule, actor, {"name": name, **fields})
        rule_changed(
            actor=actor,
            action="guardrail.create",
            target=rule,
            detail={**rule_bindings(rule), "after": snapshot(rule)},
        )
    return rule


def guardrail_update(*, actor: Actor, ref: str, **fields) -> GuardrailRule:
    """Change the fields given; `connections` and `attributes` replace their lists."""
    return rule_update(
        GuardrailRule, "guardrail", "guardrail.update", _apply_guardrail, actor=actor, ref=ref, fields=fields
    )


def guardrail_delete(*, actor: Actor, ref: str) -> str:
    return rule_delete(GuardrailRule, "guardrail", "guardrail.delete", actor=actor, ref=ref)


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
        connection = _connections(actor, [connection_name])[0]
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


def masking_rule_list(*, actor: Actor, limit: int = 50, offset: int = 0) -> tuple[list[MaskingRule], int]:
    require_role(actor, ROLE_AUDITOR)
    qs = scope(MaskingRule.objects.prefetch_related("connections", "attributes"), actor, "view")
    return page_of(qs.order_by("name"), limit, offset)


def masking_rule_get(*, actor: Actor, ref: str) -> MaskingRule:
    require_role(actor, ROLE_AUDITOR)
    return by_ref(
        MaskingRule.objects.prefetch_related("connections", "attributes"), actor, ref, "masking rule"
    )


def _apply_masking(rule: MaskingRule, actor: Actor, fields: dict) -> list[str]:
    if "name" in fields:
        rule.name = check_name(fields["name"], "masking rule")
    for key in ("description", "enabled"):
        if key in fields:
            setattr(rule, key, fields[key])
    if "spec" in fields:
        rule.spec = masking.validate_spec(fields["spec"] or {})
    return save_with_bindings(rule, actor, fields, "masking rule")


def masking_rule_create(*, actor: Actor, name: str, spec: dict, **fields) -> MaskingRule:
    require_role(actor, ROLE_ADMIN)
    with transaction.atomic():
        rule = MaskingRule(org_id=actor.org_id)
        _apply_masking(rule, actor, {"name": name, "spec": spec, **fields})
        rule_changed(
            actor=actor,
            action="masking_rule.create",
            target=rule,
            detail={**rule_bindings(rule), "after": snapshot(rule)},
        )
    return rule


def masking_rule_update(*, actor: Actor, ref: str, **fields) -> MaskingRule:
    return rule_update(
        MaskingRule,
        "masking rule",
        "masking_rule.update",
        _apply_masking,
        actor=actor,
        ref=ref,
        fields=fields,
    )


def masking_rule_delete(*, actor: Actor, ref: str) -> str:
    return rule_delete(MaskingRule, "masking rule", "masking_rule.delete", actor=actor, ref=ref)


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
        if rows is not None:
            result["columns"] = columns
            result["rows"], counts = masker.mask_rows(columns, rows)
            for name, count in counts.items():
                result["counts"][name] = result["counts"].get(name, 0) + count
    except masking.MaskingError as exc:
        raise InvalidInput(f"masking failed: {exc}") from None
    return result
