"""Identity services: organizations, users, groups, API tokens.

Headless setup (management commands) acts as the system, before any admin exists: those
functions take no actor and are only reachable from the CLI. Everything an admin or agent can
reach takes `actor=` and checks it through the policy module.
"""

from __future__ import annotations

import functools
import secrets
import uuid
from datetime import timedelta

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Q
from django.utils import timezone

from gateway import hotsql
from gateway.models import Connection
from governance.errors import Conflict, InvalidInput, NotFound, PolicyDenied
from governance.models import (
    ADMIN_GROUP,
    AUDITOR_GROUP,
    RESERVED_GROUPS,
    ApiToken,
    Organization,
    TokenCapability,
    User,
    UserGroup,
    UserManager,
    token_digest,
)
from governance.policy import ROLE_ADMIN, Actor, get_scoped, groups_sql_from, require_role, scope
from sessions.audit import audit_record, change_detail, redact


def _audit_system(org_id, action: str, target, detail: dict | None = None, surface: str = "cli") -> None:
    """These services run from the CLI (headless setup) as the system; surfaces with an actor
    will pass one when they are built. SSO sign-in (`web`) and SCIM (`scim`) also act as the system."""

    audit_record(actor=None, org_id=org_id, action=action, target=target, detail=detail, surface=surface)


def _audit_actor(
    actor: Actor, action: str, target, detail: dict | None = None, *, before=None, after=None
) -> None:
    """Audit a change. With `before` and `after` (dicts of the audited fields) the detail says what
    changed from what to what (`changed`, `before`, `after`; secrets redacted) beside `detail`."""

    if before is not None or after is not None:
        diff = change_detail(redact(before or {}), redact(after or {}))
        if before is not None and after is not None and not diff["changed"]:
            diff = {}  # e.g. only a password changed: `detail` says so, with no value
        elif before is None:
            diff = {"after": diff["after"]}
        elif after is None:
            diff = {"before": diff["before"]}
        detail = {**(detail or {}), **diff}
    audit_record(actor=actor, action=action, target=target, detail=detail)


def org_create(*, name: str) -> Organization:
    name = (name or "").strip()
    if not name or len(name) > 100:
        raise InvalidInput("organization name must be 1-100 characters")
    with transaction.atomic():
        org = (
            Organization.objects.create(name=name)
            if not Organization.objects.filter(name=name).exists()
            else None
        )
        if org is None:
            raise Conflict(f'organization "{name}" already exists')
        for group in RESERVED_GROUPS:
            UserGroup.objects.create(org=org, name=group)
        _audit_system(org.pk, "org.create", org)
    return org


def org_get(*, name: str) -> Organization:
    org = Organization.objects.filter(name=name).first()
    if org is None:
        raise NotFound(f'organization "{name}" not found')
    return org


def user_create(
    *,
    org: Organization | None = None,
    actor: Actor | None = None,
    email: str,
    name: str = "",
    groups: list[str] = (),
    password: str | None = None,
    surface: str = "cli",
) -> User:
    """Create a user, adding them to `groups`.

    With `actor=` (every surface): an admin creates the user in their own org; the groups must
    exist there. With `org=` and no actor (headless setup, CLI and tests only): groups missing in
    the org are created, and the system is the actor in the audit log, recorded from `surface`
    (`cli`; `web` for a first SSO sign-in, `scim` for provisioning).
    Raises InvalidInput, Conflict (e-mail taken), NotFound (group), PolicyDenied."""
    if (org is None) == (actor is None):
        raise InvalidInput("give either an actor or an organization")
    if actor is not None:
        require_role(actor, ROLE_ADMIN)
        org = actor.user.org
    email = (email or "").strip().lower()
    try:
        validate_email(email)
    except ValidationError:
        raise InvalidInput(f"{email!r} is not a valid email address") from None
    if len(name or "") > 150:
        raise InvalidInput("name must be at most 150 characters")
    for group in groups:
        if not group or len(group) > 100:
            raise InvalidInput("group names must be 1-100 characters")
    if password and actor is not None:  # the CLI checks its own input before calling
        try:
            validate_password(password)
        except ValidationError as exc:
            raise InvalidInput("password: " + " ".join(exc.messages)) from None
    try:
        with transaction.atomic():
            existing = _groups_by_name(actor, list(groups)) if actor is not None else None
            user = User.objects.create_user(email, password, org=org, name=name)
            for group in groups:
                if existing is None:
                    user_group, _ = UserGroup.objects.get_or_create(org=org, name=group)
                    user_group.members.add(user)
            for user_group in existing or []:
                user_group.members.add(user)
            detail = {"groups": sorted(groups)}
            if actor is not None:
                _audit_actor(actor, "user.create", user, detail)
            else:
                _audit_system(org.pk, "user.create", user, detail, surface=surface)
    except IntegrityError:
        raise Conflict(f"a user with email {email} already exists") from None
    return user


def token_issue(
    *,
    user: User,
    name: str = "default",
    expires_days: int | None = None,
    actor: Actor | None = None,
    capability: str = TokenCapability.READ_WRITE,
) -> tuple[ApiToken, str]:
    """Issue an API token. Returns (token row, raw value); the raw value is never stored or shown again.

    With `actor` (a surface such as the web page "Connect your agent"), people issue tokens for
    themselves only (PolicyDenied otherwise) and the audit event names them; without, the CLI acts
    as the system."""
    if actor is not None and actor.user.pk != user.pk:
        raise PolicyDenied("you can only issue tokens for yourself")
    # `capability` caps the token below its user's roles (never above them); see TokenCapability.
    if capability not in TokenCapability.values:
        raise InvalidInput(f"capability must be one of: {', '.join(TokenCapability.values)}")
    if expires_days is not None and not 1 <= expires_days <= 3650:
        raise InvalidInput("expires-days must be between 1 and 3650")
    name = (name or "").strip()
    if not name or len(name) > 100:
        raise InvalidInput("token name must be 1-100 characters")
    raw = ApiToken.PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        token = ApiToken.objects.create(
            user=user,
            name=name,
            prefix=raw[:12],
            digest=token_digest(raw),
            capability=capability,
            expires_at=timezone.now() + timedelta(days=expires_days) if expires_days else None,
        )
        detail = {"user": user.email, "expires_at": str(token.expires_at), "capability": capability}
        if actor is None:
            _audit_system(user.org_id, "token.issue", token, detail)
        else:
            _audit_actor(actor, "token.issue", token, detail)
    return token, raw


def token_list(*, actor: Actor) -> list[ApiToken]:
    """The actor's own API tokens, newest first, revoked and expired ones included (never a digest
    or raw value: only the prefix identifies a token)."""
    return list(ApiToken.objects.filter(user_id=actor.user.pk).order_by("-created_at"))


def token_revoke(*, token: ApiToken | None = None, actor: Actor | None = None, token_id=None) -> ApiToken:
    """Revoke a token. The CLI passes `token` and acts as the system; a surface passes `actor` and
    `token_id`, and may revoke only the actor's own tokens (NotFound("token not found") for any
    other, so tokens of others are not revealed). Revoking a revoked token changes nothing."""
    with transaction.atomic():
        if actor is not None:
            try:
                pk = uuid.UUID(str(token_id))
            except ValueError:
                raise NotFound("token not found") from None
            token = ApiToken.objects.select_for_update().filter(pk=pk, user_id=actor.user.pk).first()
            if token is None:
                raise NotFound("token not found")
        if token.revoked_at is not None:
            return token
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        if actor is None:
            _audit_system(token.user.org_id, "token.revoke", token)
        else:
            _audit_actor(actor, "token.revoke", token)
    return token


def token_authenticate(raw: str) -> tuple[User, ApiToken] | None:
    """The active user behind a raw API token, or None. One indexed query; revocation is immediate.

    `last_used_at` is written at most once a minute, so a busy agent does not turn every call
    into a write.
    """
    found = _token_usable(raw)
    return None if found is None else found[:2]


def token_actor(raw: str, *, surface: str) -> tuple[Actor, ApiToken] | None:
    """The actor behind a raw API token (its user, groups and capability), or None: what every API
    and MCP request asks first, in one statement on PostgreSQL (token, user, org and groups)."""
    found = _token_usable(raw)
    if found is None:
        return None
    user, token, group_rows = found
    return Actor.for_token(user, token, surface=surface, group_rows=group_rows), token


def _token_usable(raw: str):
    if not raw or not raw.startswith(ApiToken.PREFIX) or len(raw) > 200:
        return None
    token, group_rows = _token_by_digest(token_digest(raw))
    now = timezone.now()
    if token is None or not token.is_usable(now) or not token.user.is_active:
        return None
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user, token, group_rows


def _token_by_digest(digest: str) -> tuple[ApiToken | None, list[tuple[int, str]] | None]:
    """The token with its user and the user's org (as select_related loads them), and on
    PostgreSQL the user's (id, name) groups too (None: not loaded). Every API call asks, so on
    PostgreSQL the statement is written once (gateway.hotsql)."""
    if connection.vendor != "postgresql":
        return ApiToken.objects.select_related("user", "user__org").filter(digest=digest).first(), None
    with connection.cursor() as cursor:
        cursor.execute(_token_sql(), [digest])
        row = cursor.fetchone()
    if row is None:
        return None, None
    token, user, org = hotsql.load(row[:-1], ApiToken, User, Organization)
    user.org = org
    token.user = user
    return token, [(pk, name) for pk, name in row[-1]]


@functools.cache
def _token_sql() -> str:
    return (
        f"SELECT {hotsql.columns('t', ApiToken)}, {hotsql.columns('u', User)}, {hotsql.columns('o', Organization)}, "
        f"COALESCE((SELECT json_agg(json_build_array(g.id, g.name)) {groups_sql_from('u.id', 'u.org_id')}), '[]') "
        f"FROM {hotsql.table(ApiToken)} t JOIN {hotsql.table(User)} u ON u.id = t.user_id "
        f"JOIN {hotsql.table(Organization)} o ON o.id = u.org_id WHERE t.digest = %s"
    )


# --- users and groups, for admins and agents (actor-first) --------------------------------------
#
# Who may do what is decided by `governance.policy` ("view": every member of the org sees its
# users and groups, as in hoop's users_list/usergroups_list; "manage": admins). Every change is
# audited in its transaction. Two safety rules hold whatever the surface:
#   * the reserved groups `admin` and `auditor` cannot be deleted or renamed;
#   * an org always keeps at least one active admin (no removal, deactivation or demotion of the
#     last one). Changes that could break it lock the org's admin group row first, so two
#     concurrent demotions cannot both pass the check.

MAX_LIMIT = 100


def _page(qs, limit: int, offset: int) -> tuple[list, int]:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}")
    if offset < 0:
        raise InvalidInput("offset must not be negative")
    return list(qs[offset : offset + limit]), qs.count()


def _check_group_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 100 or not name.isprintable():
        raise InvalidInput("group name must be 1-100 printable characters")
    return name


def _refuse_taken_group_name(org_id, name: str, *, exclude=None) -> None:
    """Group names are unique in an org regardless of case (a database constraint too)."""
    taken = (
        UserGroup.objects.filter(org_id=org_id, name__iexact=name)
        .exclude(pk=exclude)
        .values_list("name", flat=True)
        .first()
    )
    if taken is not None:
        suffix = "" if taken == name else f' as "{taken}" (names are unique regardless of case)'
        raise Conflict(f'group "{name}" already exists{suffix}')


def _lock_admin_group(org_id) -> None:
    """Serialize every change that could leave the org without an active admin."""
    list(UserGroup.objects.select_for_update().filter(org_id=org_id, name=ADMIN_GROUP).values_list("pk"))


def _ensure_an_admin_remains(org_id) -> None:
    """Raise (rolling the caller's transaction back) if the org has no active admin left."""
    if not User.objects.filter(
        org_id=org_id, is_active=True, user_groups__org_id=org_id, user_groups__name=ADMIN_GROUP
    ).exists():
        raise Conflict("an organization must keep at least one active admin; make someone else admin first")


def _users_by_email(actor: Actor, emails: list[str]) -> list[User]:
    """Users of the actor's org by e-mail; every address must exist there (same answer otherwise)."""
    wanted = [(e or "").strip().lower() for e in emails]
    found = {u.email: u for u in User.objects.filter(org_id=actor.org_id, email__in=wanted)}
    for email in wanted:
        if email not in found:
            raise NotFound(f'user "{email}" not found')
    return [found[e] for e in dict.fromkeys(wanted)]


def _groups_by_name(actor: Actor, names: list[str]) -> list[UserGroup]:
    found = {g.name: g for g in UserGroup.objects.filter(org_id=actor.org_id, name__in=names)}
    for name in names:
        if name not in found:
            raise NotFound(f'group "{name}" not found')
    return [found[n] for n in dict.fromkeys(names)]


def user_to_dict(user: User) -> dict:
    """The public shape of a user (never a password hash or token)."""
    groups = sorted(g.name for g in user.user_groups.all() if g.org_id == user.org_id)
    return {
        "id": str(user.pk),
        "email": user.email,
        "name": user.name,
        "status": "active" if user.is_active else "inactive",
        "groups": groups,
        "is_admin": ADMIN_GROUP in groups,
        "is_auditor": AUDITOR_GROUP in groups,
        "date_joined": user.date_joined.isoformat(),
    }


def user_list(
    *,
    actor: Actor,
    search: str | None = None,
    group: str | None = None,
    active: bool | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[User], int]:
    """Users of the actor's org (any member may list them), by e-mail. Returns (page, total)."""
    qs = scope(User.objects.all(), actor, "view")
    if search:
        qs = qs.filter(Q(email__icontains=search) | Q(name__icontains=search))
    if group:
        qs = qs.filter(user_groups__org_id=actor.org_id, user_groups__name=group)
    if active is not None:
        qs = qs.filter(is_active=active)
    qs = qs.distinct().prefetch_related("user_groups").order_by("email")
    return _page(qs, limit, offset)


def user_get(*, actor: Actor, ref: str) -> User:
    """One user of the actor's org by e-mail or id. Raises NotFound("user not found") otherwise."""
    ref = (ref or "").strip()
    lookup = Q(email=ref.lower())
    try:
        lookup |= Q(pk=uuid.UUID(ref))
    except ValueError:
        pass
    user = scope(User.objects.prefetch_related("user_groups"), actor, "view").filter(lookup).first()
    if user is None:
        raise NotFound("user not found")
    return user


def user_update(
    *,
    actor: Actor,
    ref: str,
    name: str | None = None,
    is_active: bool | None = None,
    groups: list[str] | None = None,
    password: str | None = None,
) -> User:
    """Change a user of the actor's org (admins). `groups`, when given, replaces their groups;
    `password` sets a new one (checked by the configured password validators; its value is never
    audited, only that it changed).

    Raises NotFound, PolicyDenied, InvalidInput, Conflict (the last active admin)."""
    require_role(actor, ROLE_ADMIN)
    with transaction.atomic():
        _lock_admin_group(actor.org_id)
        user = user_get(actor=actor, ref=ref)
        user = User.objects.select_for_update().get(pk=user.pk)
        detail: dict = {}

        def state() -> dict:
            groups = sorted(g.name for g in user.user_groups.filter(org_id=actor.org_id))
            return {"name": user.name, "is_active": user.is_active, "groups": groups}

        before = state()
        if name is not None and name != user.name:
            if len(name) > 150:
                raise InvalidInput("name must be at most 150 characters")
            user.name = name
            detail["name"] = name
        if is_active is not None and is_active != user.is_active:
            user.is_active = is_active
            detail["is_active"] = is_active
        if password:
            try:
                validate_password(password, user)
            except ValidationError as exc:
                raise InvalidInput("password: " + " ".join(exc.messages)) from None
            user.set_password(password)
            detail["password"] = "changed"
        user.save(update_fields=["name", "is_active", "password"])
        if groups is not None:
            wanted = _groups_by_name(actor, [_check_group_name(g) for g in groups])
            current = set(user.user_groups.filter(org_id=actor.org_id))
            added, removed = set(wanted) - current, current - set(wanted)
            for group in added:
                group.members.add(user)
            for group in removed:
                group.members.remove(user)
            if added or removed:
                detail["groups_added"] = sorted(g.name for g in added)
                detail["groups_removed"] = sorted(g.name for g in removed)
        _ensure_an_admin_remains(actor.org_id)
        action = "user.deactivate" if detail.get("is_active") is False else "user.update"
        _audit_actor(actor, action, user, detail, before=before, after=state())
    return user


def user_deactivate(*, actor: Actor, ref: str) -> User:
    """Deactivate a user (admins): they can no longer log in or use their tokens. Their records stay."""
    return user_update(actor=actor, ref=ref, is_active=False)


def usergroup_to_dict(group: UserGroup) -> dict:
    return {
        "id": str(group.pk),
        "name": group.name,
        "reserved": group.name in RESERVED_GROUPS,
        "members": sorted(u.email for u in group.members.all() if u.org_id == group.org_id),
        "connections": sorted(c.name for c in group.connections.all()),
        "created_at": group.created_at.isoformat(),
    }


def usergroup_list(
    *, actor: Actor, search: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[UserGroup], int]:
    """Groups of the actor's org (any member may list them), by name."""
    qs = scope(UserGroup.objects.all(), actor, "view")
    if search:
        qs = qs.filter(name__icontains=search)
    return _page(qs.prefetch_related("members", "connections").order_by("name"), limit, offset)


def usergroup_get(*, actor: Actor, name: str, action: str = "view") -> UserGroup:
    return get_scoped(
        UserGroup.objects.prefetch_related("members", "connections"),
        actor,
        action,
        not_found=f'group "{name}" not found',
        name=name,
    )


def usergroup_create(*, actor: Actor, name: str, members: list[str] | None = None) -> UserGroup:
    """Create a group in the actor's org (admins), optionally with members (e-mails).

    Binding a group to connections is access control's job (`access_control_set`), so creating a
    group never changes who may use a connection. Raises InvalidInput, Conflict, NotFound."""
    require_role(actor, ROLE_ADMIN)
    name = _check_group_name(name)
    with transaction.atomic():
        users = _users_by_email(actor, members or [])
        _refuse_taken_group_name(actor.org_id, name)
        try:
            with transaction.atomic():
                group = UserGroup.objects.create(org_id=actor.org_id, name=name)
        except IntegrityError:
            raise Conflict(f'group "{name}" already exists') from None
        group.members.add(*users)
        members = [u.email for u in users]
        _audit_actor(
            actor,
            "usergroup.create",
            group,
            {"members": members},
            after={"name": name, "members": sorted(members)},
        )
    return group


def usergroup_rename(*, actor: Actor, name: str, new_name: str) -> UserGroup:
    """Rename a group (admins). Reserved groups keep their names."""
    require_role(actor, ROLE_ADMIN)
    new_name = _check_group_name(new_name)
    with transaction.atomic():
        group = usergroup_get(actor=actor, name=name, action="manage")
        if new_name == group.name:
            return group
        if group.name in RESERVED_GROUPS or new_name in RESERVED_GROUPS:
            raise InvalidInput(f"the reserved groups ({', '.join(RESERVED_GROUPS)}) cannot be renamed")
        _refuse_taken_group_name(actor.org_id, new_name, exclude=group.pk)
        old, group.name = group.name, new_name
        group.save(update_fields=["name"])
        _audit_actor(
            actor,
            "usergroup.rename",
            group,
            {"from": old, "to": new_name},
            before={"name": old},
            after={"name": new_name},
        )
    return group


def usergroup_delete(*, actor: Actor, name: str) -> str:
    """Delete a group (admins). The reserved groups cannot be deleted, and neither can a group that
    is the only access group of a connection: deleting it would silently open that connection to
    the whole org. Raises InvalidInput, Conflict, NotFound."""
    require_role(actor, ROLE_ADMIN)
    with transaction.atomic():
        group = usergroup_get(actor=actor, name=name, action="manage")
        if group.name in RESERVED_GROUPS:
            raise InvalidInput(f"cannot delete the {group.name} group")
        # Count every access group of the group's connections, not only this one (a fresh
        # queryset: counting through `group.connections` would count the filtered join).

        bound = Connection.objects.filter(pk__in=group.connections.values("pk"))
        sole = sorted(c.name for c in bound.annotate(n=Count("access_groups")).filter(n=1))
        if sole:
            raise Conflict(
                f'group "{group.name}" is the only access group of connection(s) {", ".join(sole)}; '
                "change their access control first"
            )
        members = sorted(u.email for u in group.members.all())
        _audit_actor(
            actor,
            "usergroup.delete",
            group,
            {"members": members},
            before={"name": group.name, "members": members},
        )
        group.delete()
        Organization.rules_changed(actor.org_id)  # rules bound through the group change at once
    return name


def usergroup_set_members(
    *,
    actor: Actor,
    name: str,
    members: list[str] | None = None,
    add: list[str] | None = None,
    remove: list[str] | None = None,
) -> UserGroup:
    """Change a group's members (admins): `members` replaces the list, `add`/`remove` edit it.

    Raises NotFound (group or user), InvalidInput, Conflict (the last active admin)."""
    require_role(actor, ROLE_ADMIN)
    if members is None and not add and not remove:
        raise InvalidInput("give members, or users to add or remove")
    with transaction.atomic():
        _lock_admin_group(actor.org_id)
        group = usergroup_get(actor=actor, name=name, action="manage")
        current = set(group.members.filter(org_id=actor.org_id))
        wanted = set(_users_by_email(actor, members)) if members is not None else set(current)
        wanted |= set(_users_by_email(actor, add or []))
        wanted -= set(_users_by_email(actor, remove or []))
        added, removed = wanted - current, current - wanted
        group.members.add(*added)
        group.members.remove(*removed)
        if group.name == ADMIN_GROUP:
            _ensure_an_admin_remains(actor.org_id)
        _audit_actor(
            actor,
            "usergroup.members",
            group,
            {"added": sorted(u.email for u in added), "removed": sorted(u.email for u in removed)},
            before={"members": sorted(u.email for u in current)},
            after={"members": sorted(u.email for u in wanted)},
        )
    return group


def usergroup_update(
    *,
    actor: Actor,
    name: str,
    new_name: str | None = None,
    members: list[str] | None = None,
    add: list[str] | None = None,
    remove: list[str] | None = None,
) -> UserGroup:
    """Rename a group and/or change its members (admins), all or nothing: one transaction, one
    audit event per change. Raises as usergroup_rename and usergroup_set_members."""
    with transaction.atomic():
        if new_name:
            name = usergroup_rename(actor=actor, name=name, new_name=new_name).name
        if members is not None or add or remove:
            usergroup_set_members(actor=actor, name=name, members=members, add=add, remove=remove)
        return usergroup_get(actor=actor, name=name)


def usergroup_add_members(*, actor: Actor, name: str, members: list[str]) -> UserGroup:
    return usergroup_set_members(actor=actor, name=name, add=members)


def usergroup_remove_members(*, actor: Actor, name: str, members: list[str]) -> UserGroup:
    return usergroup_set_members(actor=actor, name=name, remove=members)


def user_set_own_password(*, actor: Actor, old_password: str, new_password: str) -> User:
    """Change the actor's own password (any member, on any surface that has a login). The old
    password must match and the new one pass the password validators. Raises InvalidInput."""
    with transaction.atomic():
        user = User.objects.select_for_update().get(pk=actor.user.pk)
        if not user.check_password(old_password or ""):
            raise InvalidInput("old_password: your old password was entered incorrectly")
        try:
            validate_password(new_password or "", user)
        except ValidationError as exc:
            raise InvalidInput("new_password: " + " ".join(exc.messages)) from None
        user.set_password(new_password)
        user.save(update_fields=["password"])
        _audit_actor(actor, "user.password_change", user, {})
    return user


# --- createsuperuser ----------------------------------------------------------------------------


def superuser_create(email: str, password: str | None = None, **extra) -> User:
    """`createsuperuser`: an admin (member of the reserved `admin` group) of the first org, or
    of a new org "default" (it has no org prompt). Roles come from groups only: the superuser
    flag gives nothing beyond them (see governance.admin_base)."""
    org = extra.pop("org", None) or Organization.objects.order_by("created_at").first()
    org = org or org_create(name="default")
    user = user_create(org=org, email=email, password=password, name=extra.pop("name", ""), groups=["admin"])
    user.is_staff = extra.get("is_staff", True)
    user.is_superuser = extra.get("is_superuser", True)
    user.save(update_fields=["is_staff", "is_superuser"])
    return user


UserManager.superuser_factory = superuser_create  # the manager (a layer below) calls back here
