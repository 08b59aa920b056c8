"""SCIM 2.0 provisioning of users and groups (RFC 7643/7644), what Okta and Entra ID push
(docs/sso.md).

Each organization has its own endpoint, `/scim/v2/<slug>/`, and bearer secret
(`manage.py sso scim-secret ORG`; only its SHA-256 is kept). The secret decides the org: nothing
here ever reads or changes another org's rows. The IdP acts as the system with surface `scim`;
every change is one audit event written in its transaction (`scim.user_create`, `scim.user_update`,
`scim.user_deactivate`, `scim.group_create`, `scim.group_update`, `scim.group_delete`).

* Users: `userName` is the e-mail (matched case-insensitively); `name` / `displayName` the name;
  `active` false deactivates: the user can no longer sign in, open web sessions end on their next
  request, and every API token and OAuth token of theirs is revoked at once (reactivating does not
  bring tokens back). DELETE deactivates too: records keep their user.
* Groups: `displayName` is the group name, `members` user ids. The reserved groups `admin` and
  `auditor` are not provisioned over SCIM (roles come from the SSO group map).
* Filters: `eq`, `co`, `sw`, `pr`, `and`/`or` on `userName`, `externalId`, `emails.value`,
  `displayName`, `active` (scim2-filter-parser turns them into a Django query).
"""

from __future__ import annotations

import re
import uuid

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from scim2_filter_parser.transpilers.django_q_object import get_query

from governance.errors import Conflict, InvalidInput
from governance.models import (
    RESERVED_GROUPS,
    ApiToken,
    IdentityProvider,
    Organization,
    ScimResource,
    User,
    UserGroup,
    token_digest,
)
from governance.services import user_create as create
from sessions.audit import audit_record

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
LIST_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"
MAX_RESULTS = 200

USER_FILTERS = {
    ("userName", None, None): "email",
    ("externalId", None, None): "scim__external_id",
    ("emails", "value", None): "email",
    ("emails", None, None): "email",
    ("displayName", None, None): "name",
    ("active", None, None): "is_active",
    ("id", None, None): "id",
}
GROUP_FILTERS = {
    ("displayName", None, None): "name",
    ("externalId", None, None): "scim__external_id",
}


class ScimError(Exception):
    """An RFC 7644 §3.12 error: HTTP status, `scimType` and a detail for the client."""

    def __init__(self, status: int, detail: str, scim_type: str = ""):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.scim_type = scim_type

    def body(self) -> dict:
        body = {"schemas": [ERROR_SCHEMA], "status": str(self.status), "detail": self.detail}
        if self.scim_type:
            body["scimType"] = self.scim_type
        return body


def scim_org_for(slug: str, authorization: str) -> IdentityProvider:
    """The org a request acts for: its bearer secret must be the slug's org's. Raises ScimError 401."""
    raw = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
    if not raw or len(raw) > 200:
        raise ScimError(401, "a bearer secret is required")
    idp = IdentityProvider.objects.select_related("org").filter(scim_token_digest=token_digest(raw)).first()
    if idp is None or idp.slug != slug:
        raise ScimError(401, "the bearer secret is not valid for this endpoint")
    return idp


def _audit(idp: IdentityProvider, action: str, target, detail: dict) -> None:

    audit_record(actor=None, org_id=idp.org_id, surface="scim", action=action, target=target, detail=detail)


def _base() -> str:
    return settings.PUBLIC_BASE_URL


# --- representations -----------------------------------------------------------------------------


def user_resource(idp: IdentityProvider, user: User) -> dict:
    link = getattr(user, "scim", None)  # None when no SCIM client created or linked this user
    groups = [g for g in user.user_groups.all() if g.org_id == idp.org_id and g.name not in RESERVED_GROUPS]
    body = {
        "schemas": [USER_SCHEMA],
        "id": str(user.pk),
        "userName": user.email,
        "displayName": user.name or user.email,
        "name": {"formatted": user.name},
        "emails": [{"value": user.email, "type": "work", "primary": True}],
        "active": user.is_active,
        "groups": [{"value": str(_group_link(idp, g).pk), "display": g.name} for g in groups],
        "meta": {
            "resourceType": "User",
            "created": user.date_joined.isoformat(),
            "location": f"{_base()}/scim/v2/{idp.slug}/Users/{user.pk}",
        },
    }
    if link is not None and link.external_id:
        body["externalId"] = link.external_id
    return body


def _group_link(idp: IdentityProvider, group: UserGroup) -> ScimResource:
    link = ScimResource.objects.filter(group=group).first()
    if link is None:
        link = ScimResource.objects.create(org_id=idp.org_id, kind=ScimResource.Kind.GROUP, group=group)
    return link


def group_resource(idp: IdentityProvider, link: ScimResource) -> dict:
    group = link.group
    members = group.members.filter(org_id=idp.org_id).order_by("email")
    body = {
        "schemas": [GROUP_SCHEMA],
        "id": str(link.pk),
        "displayName": group.name,
        "members": [{"value": str(u.pk), "display": u.email} for u in members],
        "meta": {
            "resourceType": "Group",
            "created": group.created_at.isoformat(),
            "location": f"{_base()}/scim/v2/{idp.slug}/Groups/{link.pk}",
        },
    }
    if link.external_id:
        body["externalId"] = link.external_id
    return body


def list_response(resources: list[dict], total: int, start: int) -> dict:
    return {
        "schemas": [LIST_SCHEMA],
        "totalResults": total,
        "itemsPerPage": len(resources),
        "startIndex": start,
        "Resources": resources,
    }


def _page(params) -> tuple[int, int]:
    try:
        start = max(int(params.get("startIndex") or 1), 1)
        count = min(max(int(params.get("count") or 100), 0), MAX_RESULTS)
    except ValueError:
        raise ScimError(400, "startIndex and count must be integers", "invalidValue") from None
    return start, count


def _filtered(qs, params, attr_map):
    expression = params.get("filter")
    if not expression:
        return qs
    if len(expression) > 1000:
        raise ScimError(400, "filter too long", "invalidFilter")
    try:
        return qs.filter(get_query(expression, attr_map))
    except Exception as exc:  # the parser raises a variety of errors on bad input
        raise ScimError(400, f"unsupported or invalid filter: {str(exc)[:200]}", "invalidFilter") from None


# --- users ---------------------------------------------------------------------------------------


def _users(idp: IdentityProvider):
    return User.objects.filter(org_id=idp.org_id).prefetch_related("user_groups")


def user_list(idp: IdentityProvider, params) -> dict:
    start, count = _page(params)
    qs = _filtered(_users(idp), params, USER_FILTERS).order_by("date_joined", "id")
    total = qs.count()
    return list_response([user_resource(idp, u) for u in qs[start - 1 : start - 1 + count]], total, start)


def user_get(idp: IdentityProvider, user_id: str) -> User:
    try:
        pk = uuid.UUID(str(user_id))
    except ValueError:
        raise ScimError(404, "user not found") from None
    user = _users(idp).filter(pk=pk).first()
    if user is None:
        raise ScimError(404, "user not found")
    return user


def _name_of(data: dict) -> str | None:
    name = data.get("name")
    if isinstance(name, dict):
        formatted = name.get("formatted")
        if isinstance(formatted, str) and formatted.strip():
            return formatted.strip()
        parts = [name.get("givenName"), name.get("familyName")]
        joined = " ".join(p.strip() for p in parts if isinstance(p, str) and p.strip())
        if joined:
            return joined
    display = data.get("displayName")
    return display.strip() if isinstance(display, str) and display.strip() else None


def _email_of(data: dict) -> str:
    email = data.get("userName")
    if not isinstance(email, str) or not email.strip():
        emails = data.get("emails")
        if isinstance(emails, list):
            primary = [e for e in emails if isinstance(e, dict) and e.get("primary")] or emails
            email = primary[0].get("value") if primary and isinstance(primary[0], dict) else None
    if not isinstance(email, str) or "@" not in email or len(email) > 254:
        raise ScimError(400, "userName must be the user's e-mail address", "invalidValue")
    return email.strip().lower()


def _active_of(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"  # Entra ID has sent "False" as a string
    raise ScimError(400, "active must be true or false", "invalidValue")


def user_create(idp: IdentityProvider, data: dict) -> User:

    email = _email_of(data)
    if email.rpartition("@")[2] not in (idp.allowed_domains or []):
        raise ScimError(400, f"{email} is not in one of the organization's allowed domains", "invalidValue")
    name = _name_of(data) or ""
    active = _active_of(data["active"]) if "active" in data else True
    external_id = str(data.get("externalId") or "")[:255]
    try:
        with transaction.atomic():
            user = create(org=idp.org, email=email, name=name[:150], surface="scim")
            ScimResource.objects.create(
                org_id=idp.org_id, kind=ScimResource.Kind.USER, user=user, external_id=external_id
            )
            if not active:
                _deactivate(user)
            _audit(
                idp, "scim.user_create", user, {"email": email, "active": active, "externalId": external_id}
            )
    except (IntegrityError, Conflict):
        raise ScimError(409, f"a user with userName {email} already exists", "uniqueness") from None
    except InvalidInput as exc:
        raise ScimError(400, exc.message, "invalidValue") from None
    return user_get(idp, user.pk)


def _deactivate(user: User) -> dict:
    """Inactive at once: no sign-in, no web session, no API or OAuth token (revoked, for good)."""
    from oauth2_provider.models import get_access_token_model, get_grant_model, get_refresh_token_model

    now = timezone.now()
    user.is_active = False
    user.save(update_fields=["is_active"])
    api = ApiToken.objects.filter(user=user, revoked_at__isnull=True).update(revoked_at=now)
    refresh = get_refresh_token_model().objects.filter(user=user, revoked__isnull=True).update(revoked=now)
    access = get_access_token_model().objects.filter(user=user).delete()[0]
    get_grant_model().objects.filter(user=user).delete()
    return {"api_tokens_revoked": api, "oauth_tokens_revoked": refresh + access}


def _apply_user(idp: IdentityProvider, user: User, changes: dict) -> dict:
    """Set the given attributes (already parsed); returns what changed, for the audit event."""
    done: dict = {}
    if "email" in changes and changes["email"] != user.email:
        email = changes["email"]
        if email.rpartition("@")[2] not in (idp.allowed_domains or []):
            raise ScimError(
                400, f"{email} is not in one of the organization's allowed domains", "invalidValue"
            )
        if User.objects.filter(email=email).exclude(pk=user.pk).exists():
            raise ScimError(409, f"a user with userName {email} already exists", "uniqueness")
        done["email"] = {"from": user.email, "to": email}
        user.email = email
    if "name" in changes and changes["name"] is not None and changes["name"][:150] != user.name:
        user.name = changes["name"][:150]
        done["name"] = user.name
    user.save(update_fields=["email", "name"])
    if "external_id" in changes:
        link, _ = ScimResource.objects.get_or_create(
            user=user, defaults={"org_id": idp.org_id, "kind": ScimResource.Kind.USER}
        )
        if link.external_id != changes["external_id"]:
            link.external_id = changes["external_id"]
            link.save(update_fields=["external_id", "updated_at"])
            done["externalId"] = link.external_id
    if "active" in changes and changes["active"] != user.is_active:
        if changes["active"]:
            user.is_active = True
            user.save(update_fields=["is_active"])
            done["active"] = True
        else:
            done["active"] = False
            done.update(_deactivate(user))
    return done


def _record_user_change(idp: IdentityProvider, user: User, done: dict) -> None:
    if done:
        action = "scim.user_deactivate" if done.get("active") is False else "scim.user_update"
        _audit(idp, action, user, done)


def user_replace(idp: IdentityProvider, user_id: str, data: dict) -> User:
    """PUT: the attributes Portcullis keeps are set from the body; others are ignored."""
    with transaction.atomic():
        user = User.objects.select_for_update().get(pk=user_get(idp, user_id).pk)
        changes = {"email": _email_of(data), "name": _name_of(data) or ""}
        if "active" in data:
            changes["active"] = _active_of(data["active"])
        if "externalId" in data:
            changes["external_id"] = str(data.get("externalId") or "")[:255]
        _record_user_change(idp, user, _apply_user(idp, user, changes))
    return user_get(idp, user.pk)


USER_PATHS = {
    "active": "active",
    "username": "email",
    "externalid": "external_id",
    "displayname": "name",
    "name.formatted": "name",
    'emails[type eq "work"].value': "email",
    "emails.value": "email",
}


def _user_changes_from_op(user: User, op: dict) -> dict:
    path = op.get("path")
    value = op.get("value")
    if path is None:
        if not isinstance(value, dict):
            raise ScimError(400, "an operation without a path needs an object value", "invalidValue")
        changes = {}
        for key, item in value.items():
            changes.update(_user_changes_from_op(user, {"op": op.get("op"), "path": key, "value": item}))
        return changes
    if not isinstance(path, str):
        raise ScimError(400, "path must be a string", "invalidPath")
    key = re.sub(r"\s+", " ", path.strip()).lower()
    if key.startswith(USER_SCHEMA.lower() + ":"):
        key = key[len(USER_SCHEMA) + 1 :]
    if key == "name" and isinstance(value, dict):
        return {"name": _name_of({"name": value})}
    if key in ("name.givenname", "name.familyname"):
        return {}  # the formatted name carries it; Portcullis keeps one name
    target = USER_PATHS.get(key)
    if target is None:
        return {}  # an attribute Portcullis does not keep (title, phone numbers, ...): ignored
    if target == "active":
        return {"active": _active_of(value)}
    if target == "email":
        if isinstance(value, list) and value and isinstance(value[0], dict):
            value = value[0].get("value")
        return {"email": _email_of({"userName": value})}
    if target == "external_id":
        return {"external_id": str(value or "")[:255]}
    return {"name": str(value or "")[:150]}


def user_patch(idp: IdentityProvider, user_id: str, data: dict) -> User:
    operations = _operations(data)
    with transaction.atomic():
        user = User.objects.select_for_update().get(pk=user_get(idp, user_id).pk)
        changes: dict = {}
        for op in operations:
            if str(op.get("op", "")).lower() not in ("add", "replace"):
                raise ScimError(400, "users take add and replace operations", "invalidValue")
            changes.update(_user_changes_from_op(user, op))
        _record_user_change(idp, user, _apply_user(idp, user, changes))
    return user_get(idp, user.pk)


def user_delete(idp: IdentityProvider, user_id: str) -> None:
    """Deactivates (records keep their user); the tokens are revoked as for `active: false`."""
    with transaction.atomic():
        user = User.objects.select_for_update().get(pk=user_get(idp, user_id).pk)
        done = _deactivate(user) if user.is_active else {}
        _audit(idp, "scim.user_deactivate", user, {"active": False, "deleted": True, **done})


def _operations(data: dict) -> list[dict]:
    operations = data.get("Operations") if isinstance(data, dict) else None
    if not isinstance(operations, list) or not operations or len(operations) > 1000:
        raise ScimError(400, "a PATCH needs 1-1000 Operations", "invalidValue")
    if not all(isinstance(op, dict) for op in operations):
        raise ScimError(400, "each operation must be an object", "invalidValue")
    return operations


# --- groups --------------------------------------------------------------------------------------


def _groups(idp: IdentityProvider):
    return UserGroup.objects.filter(org_id=idp.org_id).exclude(name__in=RESERVED_GROUPS)


def group_list(idp: IdentityProvider, params) -> dict:
    start, count = _page(params)
    qs = _filtered(_groups(idp), params, GROUP_FILTERS).order_by("name")
    total = qs.count()
    return list_response(
        [group_resource(idp, _group_link(idp, g)) for g in qs[start - 1 : start - 1 + count]], total, start
    )


def group_get(idp: IdentityProvider, group_id: str) -> ScimResource:
    try:
        pk = uuid.UUID(str(group_id))
    except ValueError:
        raise ScimError(404, "group not found") from None
    link = (
        ScimResource.objects.select_related("group")
        .filter(pk=pk, org_id=idp.org_id, kind=ScimResource.Kind.GROUP, group__isnull=False)
        .exclude(group__name__in=RESERVED_GROUPS)
        .first()
    )
    if link is None:
        raise ScimError(404, "group not found")
    return link


def _group_name(value) -> str:
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > 100:
        raise ScimError(400, "displayName must be 1-100 characters", "invalidValue")
    name = value.strip()
    if name in RESERVED_GROUPS:
        raise ScimError(
            400, f"{name} is a reserved group: roles come from the SSO group map, not SCIM", "invalidValue"
        )
    return name


def _member_users(idp: IdentityProvider, members) -> list[User]:
    if members is None:
        return []
    if not isinstance(members, list):
        raise ScimError(400, "members must be a list", "invalidValue")
    ids = []
    for member in members:
        value = member.get("value") if isinstance(member, dict) else None
        try:
            ids.append(uuid.UUID(str(value)))
        except ValueError:
            raise ScimError(400, f"member {str(value)[:50]!r} is not a user id", "invalidValue") from None
    found = list(User.objects.filter(org_id=idp.org_id, pk__in=ids))
    if len(found) != len(set(ids)):
        raise ScimError(400, "a member is not a user of this organization", "invalidValue")
    return found


def group_create(idp: IdentityProvider, data: dict) -> ScimResource:
    name = _group_name(data.get("displayName"))
    members = _member_users(idp, data.get("members"))
    with transaction.atomic():
        if UserGroup.objects.filter(org_id=idp.org_id, name=name).exists():
            raise ScimError(409, f"a group named {name} already exists", "uniqueness")
        group = UserGroup.objects.create(org_id=idp.org_id, name=name)
        group.members.add(*members)
        link = ScimResource.objects.create(
            org_id=idp.org_id,
            kind=ScimResource.Kind.GROUP,
            group=group,
            external_id=str(data.get("externalId") or "")[:255],
        )
        _audit(idp, "scim.group_create", group, {"name": name, "members": sorted(u.email for u in members)})
    return link


def _set_members(group: UserGroup, users: list[User], *, add=(), remove=()) -> dict:
    current = set(group.members.all())
    wanted = set(users) if users is not None else (current | set(add)) - set(remove)
    added, removed = wanted - current, current - wanted
    if added:
        group.members.add(*added)
    if removed:
        group.members.remove(*removed)
    out = {}
    if added:
        out["members_added"] = sorted(u.email for u in added)
    if removed:
        out["members_removed"] = sorted(u.email for u in removed)
    return out


def group_replace(idp: IdentityProvider, group_id: str, data: dict) -> ScimResource:
    with transaction.atomic():
        link = group_get(idp, group_id)
        group = UserGroup.objects.select_for_update().get(pk=link.group_id)
        done = {}
        name = _group_name(data.get("displayName"))
        if name != group.name:
            if UserGroup.objects.filter(org_id=idp.org_id, name=name).exists():
                raise ScimError(409, f"a group named {name} already exists", "uniqueness")
            done["name"] = {"from": group.name, "to": name}
            group.name = name
            group.save(update_fields=["name"])
        done.update(_set_members(group, _member_users(idp, data.get("members") or [])))
        if done:
            _audit(idp, "scim.group_update", group, done)
    return group_get(idp, group_id)


MEMBER_FILTER = re.compile(r'^members\[\s*value\s+eq\s+"([^"]+)"\s*\]$', re.IGNORECASE)


def group_patch(idp: IdentityProvider, group_id: str, data: dict) -> ScimResource:
    operations = _operations(data)
    with transaction.atomic():
        link = group_get(idp, group_id)
        group = UserGroup.objects.select_for_update().get(pk=link.group_id)
        done: dict = {}
        for op in operations:
            kind = str(op.get("op", "")).lower()
            path = str(op.get("path") or "").strip()
            value = op.get("value")
            if not path and isinstance(value, dict):  # {"op": "replace", "value": {"displayName": ...}}
                if "displayName" in value:
                    path, value = "displayName", value["displayName"]
                elif "members" in value:
                    path, value = "members", value["members"]
            single = MEMBER_FILTER.match(path)
            if path.lower() == "displayname" and kind in ("replace", "add"):
                name = _group_name(value)
                if name != group.name:
                    if UserGroup.objects.filter(org_id=idp.org_id, name=name).exists():
                        raise ScimError(409, f"a group named {name} already exists", "uniqueness")
                    done["name"] = {"from": group.name, "to": name}
                    group.name = name
                    group.save(update_fields=["name"])
            elif path.lower() == "members" and kind == "add":
                _merge(done, _set_members(group, None, add=_member_users(idp, value)))
            elif path.lower() == "members" and kind == "replace":
                _merge(done, _set_members(group, _member_users(idp, value or [])))
            elif path.lower() == "members" and kind == "remove":
                if value is None:
                    _merge(done, _set_members(group, []))
                else:
                    _merge(done, _set_members(group, None, remove=_member_users(idp, value)))
            elif single and kind == "remove":
                _merge(
                    done, _set_members(group, None, remove=_member_users(idp, [{"value": single.group(1)}]))
                )
            elif path.lower() == "externalid":
                link.external_id = str(value or "")[:255]
                link.save(update_fields=["external_id", "updated_at"])
            else:
                raise ScimError(400, f"unsupported operation {kind} on {path or 'the group'}", "invalidPath")
        if done:
            _audit(idp, "scim.group_update", group, done)
    return group_get(idp, group_id)


def _merge(done: dict, more: dict) -> None:
    for key, values in more.items():
        done[key] = sorted(set(done.get(key, [])) | set(values))


def group_delete(idp: IdentityProvider, group_id: str) -> None:
    with transaction.atomic():
        link = group_get(idp, group_id)
        group = link.group
        members = sorted(group.members.values_list("email", flat=True))
        _audit(idp, "scim.group_delete", group, {"name": group.name, "members": members})
        group.delete()
        Organization.rules_changed(group.org_id)  # rules bound through the group change at once


def service_provider_config() -> dict:
    return {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
        "documentationUri": "https://github.com/portcullis/portcullis/blob/main/docs/sso.md",
        "patch": {"supported": True},
        "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": True, "maxResults": MAX_RESULTS},
        "changePassword": {"supported": False},
        "sort": {"supported": False},
        "etag": {"supported": False},
        "authenticationSchemes": [
            {
                "type": "oauthbearertoken",
                "name": "Bearer secret",
                "description": "The organization's SCIM secret (manage.py sso scim-secret ORG)",
                "primary": True,
            }
        ],
    }
