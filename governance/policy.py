"""The one answer to "may this actor do this to that?".

Every surface (MCP tools, the admin, REST, tasks) builds an `Actor` and calls the services; the
services call `can`, `require` and `scope` here. Nothing else compares group names.

Roles: members of the reserved `admin` group administer their org; `auditor` members read every
record of their org (sessions, audit, rules) and administer nothing; everyone else is standard.
What anyone but an admin may run on a target is decided by access groups alone, for auditors too.

Access control on connections: a connection with no access groups is usable by every member of
its org; once an admin names groups on a connection, only members of those groups (and admins)
may use it. Naming groups on one connection never changes who sees any other connection.

Token capability (the ceiling an API token puts on its user): `Actor.capability` is `admin` (no
ceiling: web, admin, CLI, and tokens issued as admin), `read_write` (the admin role does not count:
`is_admin` is False, so an admin acts as a standard member) or `read_only` (that, and no writes:
`capability_allows`; exec runs reads only, see `gateway.pipeline`). The auditor role survives every
capability: it only ever reads, so a ceiling on writes takes nothing from it (`is_auditor`).
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass, field

from django.db import connection
from django.db.models import Q, QuerySet

from gateway.models import Connection
from governance.errors import NotFound, PolicyDenied
from governance.models import ADMIN_GROUP, AUDITOR_GROUP, TokenCapability, User, UserGroup
from sessions.models import Session

SURFACES = ("web", "admin", "api", "mcp", "task", "cli", "slack")

ROLE_ANY = "any"
ROLE_AUDITOR = "auditor"  # auditors and admins
ROLE_ADMIN = "admin"

CAPABILITIES = tuple(TokenCapability.values)  # weakest first: read_only, read_write, admin


@dataclass(frozen=True)
class Actor:
    """Who is acting, from where. Passed explicitly into every service (`actor=` keyword)."""

    user: User
    groups: frozenset[str]
    surface: str
    group_ids: frozenset[int] = frozenset()
    client: str = ""
    token_id: str | None = field(default=None, compare=False)
    capability: str = TokenCapability.ADMIN  # no ceiling unless a token sets one

    def __post_init__(self):
        if self.surface not in SURFACES:
            raise ValueError(f"unknown surface {self.surface!r}")
        if self.capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {self.capability!r}")

    @property
    def org_id(self):
        return self.user.org_id

    @property
    def is_admin(self) -> bool:
        return ADMIN_GROUP in self.groups and self.capability == TokenCapability.ADMIN

    @property
    def is_auditor(self) -> bool:
        # Read-only by nature: no token capability lowers it (see the module docstring).
        return AUDITOR_GROUP in self.groups

    @property
    def read_only(self) -> bool:
        """A read-only token: no writes anywhere, exec of reads only."""
        return self.capability == TokenCapability.READ_ONLY

    @classmethod
    def for_user(
        cls,
        user: User,
        *,
        surface: str,
        client: str = "",
        token_id: str | None = None,
        capability: str = TokenCapability.ADMIN,
        group_rows: list[tuple[int, str]] | None = None,
    ) -> Actor:
        """`group_rows`: the user's (id, name) groups when the caller loaded them with the user
        (`governance.services.token_authenticate`), else read here."""
        rows = _group_rows(user) if group_rows is None else group_rows
        return cls(
            user=user,
            groups=frozenset(name for _, name in rows),
            group_ids=frozenset(pk for pk, _ in rows),
            surface=surface,
            client=client[:200],
            token_id=token_id,
            capability=str(capability),
        )

    @classmethod
    def for_token(cls, user: User, token, *, surface: str, group_rows=None) -> Actor:
        """The actor of an API token: its user, capped by the token's capability."""
        return cls.for_user(
            user,
            surface=surface,
            client=f"token:{token.name}",
            token_id=str(token.pk),
            capability=token.capability,
            group_rows=group_rows,
        )


def _group_rows(user: User) -> list[tuple[int, str]]:
    """(id, name) of the user's groups. Only groups of the user's own org count, whatever the
    membership table says. Every request builds an actor: on PostgreSQL one plain statement."""
    if connection.vendor != "postgresql":
        return list(user.user_groups.filter(org_id=user.org_id).values_list("pk", "name"))
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT g.id, g.name {groups_sql_from('%s', '%s')}", [user.pk, user.org_id])
        return cursor.fetchall()


@functools.cache
def groups_sql_from(user_id: str, org_id: str) -> str:
    """`FROM ... WHERE ...` of a user's groups in their org (PostgreSQL), with `user_id` and
    `org_id` as SQL expressions (placeholders, or columns of an enclosing query)."""
    qn = connection.ops.quote_name
    through = UserGroup.members.through._meta
    return (
        f"FROM {qn(UserGroup._meta.db_table)} g "
        f"JOIN {qn(through.db_table)} m ON m.{qn(through.get_field('usergroup').column)} = g.id "
        f"WHERE m.{qn(through.get_field('user').column)} = {user_id} AND g.org_id = {org_id}"
    )


def has_role(actor: Actor, role: str) -> bool:
    if role == ROLE_ANY:
        return True
    if role == ROLE_AUDITOR:
        return actor.is_admin or actor.is_auditor
    if role == ROLE_ADMIN:
        return actor.is_admin
    return False  # an unknown role is a deny, never a guess


def capability_allows(actor: Actor, needed: str) -> bool:
    """True if the actor's token capability reaches `needed` (unknown: deny)."""
    if needed not in CAPABILITIES:
        return False
    return CAPABILITIES.index(actor.capability) >= CAPABILITIES.index(needed)


def capability_message(needed: str) -> str:
    return f"this token's capability does not allow it ({needed} needed)"


def require_capability(actor: Actor, needed: str) -> None:
    if not capability_allows(actor, needed):
        raise PolicyDenied(capability_message(needed))


def role_denied_message(actor: Actor, role: str) -> str:
    message = "admin access required" if role == ROLE_ADMIN else "admin or auditor access required"
    if actor.capability != TokenCapability.ADMIN and ADMIN_GROUP in actor.groups:
        message += f" (this token's capability is {actor.capability}; issue one with capability admin)"
    return message


def capability_explained(actor: Actor) -> str:
    """One sentence on what the actor's token capability does to their roles (me_get, REST /me)."""
    roles = [r for r, g in (("admin", ADMIN_GROUP), ("auditor", AUDITOR_GROUP)) if g in actor.groups]
    if actor.capability == TokenCapability.ADMIN:
        held = " and ".join(roles) if roles else "standard member"
        return f"capability admin: no ceiling; you act with your roles ({held})."
    parts = [f"capability {actor.capability}:"]
    if ADMIN_GROUP in actor.groups:
        parts.append("your admin role does not count under it (a token with capability admin restores it);")
    if AUDITOR_GROUP in actor.groups:
        parts.append("your auditor role counts (it only reads);")
    if actor.read_only:
        parts.append("nothing is written and exec runs reads only (read_write would allow writes).")
    else:
        parts.append("reads and writes as your groups allow.")
    return " ".join(parts)


def require_role(actor: Actor, role: str) -> None:
    if not has_role(actor, role):
        raise PolicyDenied(role_denied_message(actor, role))


def _connection_scope(qs: QuerySet, actor: Actor, action: str) -> QuerySet:
    qs = qs.filter(org_id=actor.org_id)
    if actor.is_admin:
        return qs
    if action == "view" and actor.is_auditor:
        return qs
    if action in ("view", "exec"):
        return qs.filter(Q(access_groups__isnull=True) | Q(access_groups__in=actor.group_ids)).distinct()
    return qs.none()  # manage, or anything unknown


def connection_scope_sql(actor: Actor, action: str, alias: str) -> tuple[str, list]:
    """`_connection_scope` as a PostgreSQL condition on the connection row `alias`, with its
    parameters: for the lookup every exec makes, written by hand (`governance.access`). Rule for
    rule the same as the queryset above; tests/test_authorize_sql.py holds the two to one answer."""
    org = f"{alias}.org_id = %s"
    if actor.is_admin:
        return org, [actor.org_id]
    if action == "view" and actor.is_auditor:
        return org, [actor.org_id]
    if action in ("view", "exec"):
        return f"{org} AND {_access_groups_sql(alias)}", [actor.org_id, sorted(actor.group_ids)]
    return "FALSE", []  # manage, or anything unknown


@functools.cache
def _access_groups_sql(alias: str) -> str:
    """True if connection `alias` has no access groups or one of the actor's (`%s`: their ids)."""
    qn = connection.ops.quote_name
    through = Connection.access_groups.through._meta
    rows = (
        f"SELECT 1 FROM {qn(through.db_table)} a "
        f"WHERE a.{qn(through.get_field('connection').column)} = {alias}.id"
    )
    group = qn(through.get_field("usergroup").column)
    return f"(NOT EXISTS ({rows}) OR EXISTS ({rows} AND a.{group} = ANY(%s)))"


def _session_scope(qs: QuerySet, actor: Actor, action: str) -> QuerySet:
    qs = qs.filter(org_id=actor.org_id)
    if actor.is_admin or (actor.is_auditor and action in ("view", "view_content")):
        return qs
    if action == "view" and actor.group_ids:
        # Sessions waiting for (or decided by) a review the actor's groups are reviewers of: their
        # metadata, not their content (that stays with the owner, admins and auditors).
        # Fetched first (a short list, from the reviews' group index), so the visibility filter is
        # `user_id = me OR id = ANY(ids)`: two index lookups instead of a scan of the org.
        reviewable = list(
            qs.model._default_manager.filter(org_id=actor.org_id, review__eligible_groups__in=actor.group_ids)
            .values_list("pk", flat=True)
            .distinct()
        )
        if not reviewable:
            return qs.filter(user_id=actor.user.pk)
        return qs.filter(Q(user_id=actor.user.pk) | Q(pk__in=reviewable))
    if action in ("view", "view_content", "cancel"):
        return qs.filter(user_id=actor.user.pk)
    return qs.none()


def _directory_scope(qs: QuerySet, actor: Actor, action: str) -> QuerySet:
    """Users and groups: every member sees their org's directory (as hoop's users_list and
    usergroups_list do); only admins change it."""
    qs = qs.filter(org_id=actor.org_id)
    if action == "view" or (action == "manage" and actor.is_admin):
        return qs
    return qs.none()


def _token_scope(qs: QuerySet, actor: Actor, action: str) -> QuerySet:
    """API tokens: admins and auditors see the org's (never their values), admins revoke any;
    everyone sees and revokes their own."""
    qs = qs.filter(user__org_id=actor.org_id)
    if actor.is_admin or (actor.is_auditor and action == "view"):
        return qs
    if action in ("view", "manage"):
        return qs.filter(user_id=actor.user.pk)
    return qs.none()


def _rule_scope(qs: QuerySet, actor: Actor, action: str) -> QuerySet:
    """Guardrail and masking rules: admins and auditors read, admins change."""
    qs = qs.filter(org_id=actor.org_id)
    if actor.is_admin or (actor.is_auditor and action == "view"):
        return qs
    return qs.none()


def _admin_only_scope(qs: QuerySet, actor: Actor, action: str) -> QuerySet:
    """Attributes: admins only, reading included (as `governance.rules` decides)."""
    return qs.filter(org_id=actor.org_id) if actor.is_admin else qs.none()


def _audit_scope(qs: QuerySet, actor: Actor, action: str) -> QuerySet:
    """The audit log: admins and auditors read it; nobody changes it."""
    if action == "view" and (actor.is_admin or actor.is_auditor):
        return qs.filter(org_id=actor.org_id)
    return qs.none()


def _analysis_scope(qs: QuerySet, actor: Actor, action: str) -> QuerySet:
    """An analysis is visible with its session; nobody changes it."""
    if action != "view":
        return qs.none()

    return qs.filter(session__in=_session_scope(Session.objects.all(), actor, "view").values("pk"))


def _review_scope(qs: QuerySet, actor: Actor, action: str) -> QuerySet:
    """Reviews: admins and auditors see all of their org's; others see their own requests and those
    their groups review. Decisions are not a row permission: `reviews.services` checks eligibility
    (reviewer groups, no self-approval) on every decision; nobody edits a review row."""
    if action != "view":
        return qs.none()
    qs = qs.filter(org_id=actor.org_id)
    if actor.is_admin or actor.is_auditor:
        return qs
    mine = Q(requester_id=actor.user.pk) | Q(eligible_groups__in=actor.group_ids)
    return qs.filter(pk__in=qs.model._default_manager.filter(mine).values("pk"))


def _virtual_server_scope(qs: QuerySet, actor: Actor, action: str) -> QuerySet:
    """Virtual MCP servers: every member of the org may see and use one (each member connection's
    own access still decides what they get); only admins change them."""
    qs = qs.filter(org_id=actor.org_id)
    if action in ("view", "use") or (action == "manage" and actor.is_admin):
        return qs
    return qs.none()


_SCOPES = {
    "gateway.connection": _connection_scope,
    "gateway.virtualserver": _virtual_server_scope,
    "reviews.accessrequestrule": _rule_scope,
    "reviews.reviewsettings": _rule_scope,
    "reviews.review": _review_scope,
    "gateway.runbook": _rule_scope,
    "gateway.runbookrule": _rule_scope,
    "records.session": _session_scope,
    "governance.user": _directory_scope,
    "governance.usergroup": _directory_scope,
    "governance.apitoken": _token_scope,
    "governance.guardrailrule": _rule_scope,
    "governance.maskingrule": _rule_scope,
    "governance.attribute": _admin_only_scope,
    # The org's SSO settings (docs/sso.md): admins and auditors read, admins change.
    "governance.identityprovider": _rule_scope,
    "records.auditevent": _audit_scope,
    "records.analysis": _analysis_scope,
    # Webhook endpoints and deliveries: admins and auditors read, admins change (and retry).
    "records.webhookendpoint": _rule_scope,
    "records.webhookdelivery": _rule_scope,
}


def scope(qs: QuerySet, actor: Actor, action: str) -> QuerySet:
    """Restrict `qs` to the rows `actor` may `action`. Unknown models are denied."""
    scoper = _SCOPES.get(qs.model._meta.label_lower)
    if scoper is None:
        return qs.none()
    return scoper(qs, actor, action)


def may(actor: Actor, action: str, model) -> bool:
    """True if `actor` may `action` at least some rows of `model` (their role allows it at all).
    Asks `scope` itself, so it can never disagree with it; runs no query."""
    return not scope(model._default_manager.all(), actor, action).query.is_empty()


def can(actor: Actor, action: str, target) -> bool:
    """True if `actor` may `action` the model instance `target`."""
    return scope(type(target)._default_manager.filter(pk=target.pk), actor, action).exists()


def get_scoped(qs: QuerySet, actor: Actor, action: str, *, not_found: str, **lookup):
    """Fetch one object that `actor` may `action`, or raise one `NotFound` for missing and forbidden."""
    obj = scope(qs, actor, action).filter(**lookup).first()
    if obj is None:
        raise NotFound(not_found)
    return obj


def parse_id(value, not_found: str) -> uuid.UUID:
    """An id from a caller: a malformed one is answered like a missing one (`NotFound(not_found)`)."""
    try:
        return uuid.UUID(str(value))
    except (ValueError, TypeError):
        raise NotFound(not_found) from None


def not_found_message(name: str) -> str:
    """The one answer for a connection that does not exist and one the caller may not see."""
    return f'connection "{name}" not found or not accessible'


# --- group checks: tools, runbooks, reviewers ------------------------------------------------------


def in_groups(actor: Actor, group_ids) -> bool:
    """True if the actor is a member of one of `group_ids`. Rules that name groups (runbook rules,
    access request rules, a review's reviewer groups) store them as rows, and they are matched by
    id: a group renamed or re-created under the same name is not the same group."""
    return not actor.group_ids.isdisjoint(group_ids)


def in_named_groups(actor: Actor, names) -> bool:
    """True if the actor is a member of one of the groups called `names` in their org: for the
    settings that name groups in JSON (an mcp connection's tool, resource and prompt policy).
    `Actor.groups` holds only groups of the actor's own org, so a name cannot reach another org's."""
    return not actor.groups.isdisjoint(names)
