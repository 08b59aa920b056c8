"""One list/get/create/update/delete service for every kind of rule record.

Guardrail rules, masking rules and attributes (`governance.rules`), access request rules
(`reviews.services.rules`), runbook rules (`gateway.runbooks`) and webhook endpoints
(`sessions.webhooks`) are all named records of one org that admins change and admins (for most,
auditors too) read. Each module declares its kind once, as a `RuleKind`: the model, what it is
called, how its fields are checked and set, its dict, and what its audit events say. The services
themselves are written here once:

* the role (`require_role`) and the policy's `scope()` on every read and write; one `NotFound`
  for a record that is missing and one the actor may not see;
* paging; names unique in the org regardless of case (a database constraint too);
* the audit event `<kind>.create|update|delete`, in the write's transaction, and the org's rules
  version bumped with it (the pipeline's binding cache and the review gate's are keyed by it).

Adding a kind: docs/architecture.md, "Rule kinds". The shared helpers below (`by_ref`, `page_of`,
`save_unique`, `check_name`, the binding lookups) serve the rule modules' other services too.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, models, transaction
from django.db.models import QuerySet

from gateway.models import NAME_VALIDATOR, Connection
from governance.errors import Conflict, InvalidInput, NotFound
from governance.models import Attribute, Organization
from governance.policy import ROLE_ADMIN, ROLE_AUDITOR, Actor, require_role, scope
from sessions.audit import audit_record, change_detail, snapshot

MAX_LIMIT = 100
NOT_FOUND = '{what} "{ref}" not found'
TAKEN = '{what} "{name}" already exists{case}'
CASE = ' as "{existing}" (names are unique regardless of case)'
BINDINGS = ("connections", "attributes")


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


def connections_named(actor: Actor, names: list[str] | None) -> list[Connection]:
    """The actor's org's connections by name; every name must exist there."""
    if not names:
        return []
    found = {c.name: c for c in Connection.objects.filter(org_id=actor.org_id, name__in=names)}
    missing = sorted(set(names) - set(found))
    if missing:
        raise NotFound(f'connection "{missing[0]}" not found or not accessible')
    return [found[n] for n in names]


def attributes_named(actor: Actor, names: list[str] | None) -> list[Attribute]:
    """The actor's org's attributes by name; every name must exist there."""
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


def by_ref(qs: QuerySet, actor: Actor, ref, what: str, action: str = "view", *, not_found: str = NOT_FOUND):
    """A record the actor may `action` (the policy's `scope`: its org, its role) by id or by name;
    `NotFound` alike for one that is missing and one the actor may not see."""
    qs = scope(qs, actor, action)
    try:
        obj = qs.filter(pk=uuid.UUID(str(ref))).first()
    except ValueError:
        obj = None
    obj = obj or qs.filter(name=ref).first()
    if obj is None:
        raise NotFound(not_found.format(what=what, ref=ref))
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


def save_unique(obj, what: str, *, taken: str = TAKEN) -> None:
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
        case = "" if existing == obj.name else CASE.format(existing=existing)
        raise Conflict(taken.format(what=what, name=obj.name, case=case))
    try:
        with transaction.atomic():
            obj.save()
    except IntegrityError:
        raise Conflict(taken.format(what=what, name=obj.name, case="")) from None


def set_bindings(rule, actor: Actor, fields: dict) -> None:
    """Set the bindings given (`connections`, `attributes`: each list replaces the old one)."""
    if "connections" in fields:
        rule.connections.set(connections_named(actor, fields["connections"]))
    if "attributes" in fields:
        rule.attributes.set(attributes_named(actor, fields["attributes"]))


# --- the generic service -----------------------------------------------------------------------


def _no_op(obj, actor: Actor, fields: dict) -> None:
    return None


@dataclass(frozen=True, kw_only=True)
class RuleKind:
    """One kind of rule record and its five services (`list`, `get`, `create`, `update`, `delete`).

    A kind declares only what differs; the defaults fit a rule bound to connections and
    attributes that auditors may read. Every service takes `actor=` and raises `PolicyDenied`
    (role), `NotFound` (missing or not visible), `InvalidInput` (from `apply`) and `Conflict`
    (name taken). Writes need the admin role; reads `read_role`.
    """

    name: str  # the registry key and the audit actions' prefix: `<name>.create|update|delete`
    model: type[models.Model]
    what: str  # how messages name one: 'guardrail "x" not found'
    apply: Callable[[Any, Actor, dict], None]  # check the fields given and set them on the row
    to_dict: Callable[[Any], dict]  # the record as every surface returns it
    after_save: Callable[[Any, Actor, dict], None] = _no_op  # what needs the saved row (its groups)
    bindings: bool = True  # `connections` and `attributes` fields bind the rule
    related: tuple[str, ...] = BINDINGS  # prefetched for reading
    read_role: str = ROLE_AUDITOR
    bumps_rules_version: bool = True  # rules bound to connections are cached by the version
    state: Callable[[Any], dict] = snapshot  # the audited state: before and after an update
    created_detail: Callable[[Any, dict], dict] | None = None  # default: bindings and state
    updated_detail: Callable[[dict, Any, dict], dict] | None = None  # default: what changed
    deleted_detail: Callable[[Any], dict] | None = None  # default: the state before
    not_found: str = NOT_FOUND  # formatted with `what` and `ref`
    taken: str = TAKEN  # formatted with `what`, `name` and `case`

    def list(self, *, actor: Actor, limit: int = 50, offset: int = 0) -> tuple[list, int]:
        """The org's records by name, a page of them, and how many there are."""
        require_role(actor, self.read_role)
        return page_of(scope(self._read(), actor, "view").order_by("name"), limit, offset)

    def get(self, *, actor: Actor, ref) -> Any:
        """One record by id or name."""
        require_role(actor, self.read_role)
        return self.find(self._read(), actor, ref, "view")

    def create(self, *, actor: Actor, name: str, **fields) -> Any:
        """A new record in the actor's org, named `name`, with `fields`."""
        require_role(actor, ROLE_ADMIN)
        with transaction.atomic():
            obj = self.model(org_id=actor.org_id)
            self._write(obj, actor, {"name": name, **fields})
            detail = self.created_detail(obj, fields) if self.created_detail else self._created(obj)
            self._record(actor, "create", obj, detail)
        return obj

    def update(self, *, actor: Actor, ref, **fields) -> Any:
        """Change the fields given; list fields (bindings, groups) replace their lists."""
        require_role(actor, ROLE_ADMIN)
        with transaction.atomic():
            obj = self.find(self.model._default_manager.select_for_update(), actor, ref, "change")
            before = self.state(obj)
            self._write(obj, actor, fields)
            if self.updated_detail:
                detail = self.updated_detail(before, obj, fields)
            else:
                detail = change_detail(before, self.state(obj))
            self._record(actor, "update", obj, detail)
        return obj

    def delete(self, *, actor: Actor, ref) -> str:
        """Delete one record; returns its name."""
        require_role(actor, ROLE_ADMIN)
        with transaction.atomic():
            obj = self.find(self.model._default_manager.select_for_update(), actor, ref, "change")
            name = obj.name  # type: ignore[attr-defined]
            detail = self.deleted_detail(obj) if self.deleted_detail else {"before": self.state(obj)}
            self._record(actor, "delete", obj, detail)
            obj.delete()
        return name

    def find(self, qs: QuerySet, actor: Actor, ref, action: str) -> Any:
        """A record of `qs` the actor may `action`, by id or name, or this kind's `NotFound`."""
        return by_ref(qs, actor, ref, self.what, action, not_found=self.not_found)

    def _read(self) -> QuerySet:
        return self.model._default_manager.prefetch_related(*self.related)

    def _write(self, obj, actor: Actor, fields: dict) -> None:
        self.apply(obj, actor, fields)
        save_unique(obj, self.what, taken=self.taken)
        if self.bindings:
            set_bindings(obj, actor, fields)
        self.after_save(obj, actor, fields)

    def _created(self, obj) -> dict:
        return (
            {**rule_bindings(obj), "after": self.state(obj)} if self.bindings else {"after": self.state(obj)}
        )

    def _record(self, actor: Actor, verb: str, obj, detail: dict) -> None:
        audit_record(actor=actor, action=f"{self.name}.{verb}", target=obj, detail=detail)
        if self.bumps_rules_version:
            Organization.rules_changed(actor.org_id)


RULE_KINDS: dict[str, RuleKind] = {}


def register(kind: RuleKind) -> RuleKind:
    """Add a kind to `RULE_KINDS` (each module declares its own when it loads)."""
    if kind.name in RULE_KINDS:
        raise RuntimeError(f"rule kind {kind.name} registered twice")
    RULE_KINDS[kind.name] = kind
    return kind
