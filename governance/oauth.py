"""OAuth 2.1 for MCP callers: the settings switch, token verification and authorized clients.

Three ways in at /api/mcp, decided here and nowhere else:

* personal API tokens (`pcu_...`): always, whatever the OAuth state (`mcpserver.auth`);
* built-in authorization server (django-oauth-toolkit; OAuth on, no issuer): opaque access tokens,
  hashed at rest, bound to the resource URI (RFC 8707) and to the client that obtained them;
* external issuer (OAuth on, `issuer` set): JWTs checked against the issuer's JWKS - signature,
  expiry, issuer, `aud` equal to the canonical resource URI -, the user matched by subject or
  e-mail, groups taken from a configured claim and mapped onto the org's groups.

Scopes are tool groups (`mcp:read`, `mcp:exec`, `mcp:admin`; see `mcpserver.scopes`); the role
and capability checks of `governance.policy` still apply on top of them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import threading
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

import httpx2
import jwt
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from oauth2_provider.models import get_access_token_model, get_grant_model, get_refresh_token_model

from governance.errors import InvalidInput, NotFound
from governance.models import ExternalIdentity, MCPAuthSettings, Organization, User, UserGroup
from governance.policy import ROLE_ADMIN, Actor, has_role
from governance.services import user_create
from sessions.audit import Outcome, audit_record

logger = logging.getLogger("portcullis.oauth")

MCP_SCOPES = ("mcp:read", "mcp:exec", "mcp:admin")
# Asymmetric algorithms only: `none` and the HMAC family (a public key used as a shared secret)
# are never accepted from an external issuer.
JWT_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
CLOCK_SKEW_SECONDS = 30
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
CLAIM_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,100}")


# --- settings ----------------------------------------------------------------------------------


def mcp_auth_get() -> MCPAuthSettings:
    """The current MCP auth settings (the defaults, unsaved, until someone changes them)."""
    return (
        MCPAuthSettings.objects.select_related("create_users_org").filter(pk=1).first() or MCPAuthSettings()
    )


def resource_uri_of(row: MCPAuthSettings) -> str:
    """The canonical resource URI tokens must be issued for: configured, or <public URL>/api/mcp."""
    return row.resource_uri or f"{settings.PUBLIC_BASE_URL}/api/mcp"


def builtin_server_active(row: MCPAuthSettings | None = None) -> bool:
    row = row or mcp_auth_get()
    return row.enabled and not row.issuer


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(value: str, what: str) -> str:
    """An absolute https URL (http only on loopback, for local testing), no fragment or credentials."""
    value = (value or "").strip()
    if len(value) > 500:
        raise InvalidInput(f"{what} must be at most 500 characters")
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise InvalidInput(f"{what} must be an absolute https URL, not {value!r}")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise InvalidInput(f"{what} must use https (http only on a loopback address)")
    if parts.fragment or "@" in parts.netloc or "#" in value:
        raise InvalidInput(f"{what} must not carry a fragment or credentials")
    return value  # kept exactly: an issuer's `iss` is compared as a string (some end in "/")


def discover_jwks_uri(issuer: str) -> str:
    """The issuer's `jwks_uri` from its RFC 8414 or OpenID Connect metadata."""
    for suffix in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        try:
            response = httpx2.get(issuer.rstrip("/") + suffix, timeout=10)
            if response.status_code == 200:
                uri = response.json().get("jwks_uri")
                if isinstance(uri, str) and uri:
                    return _check_url(uri, "the issuer's jwks_uri")
        except (httpx2.HTTPError, ValueError):
            continue
    raise InvalidInput(f"could not find the jwks_uri in {issuer}'s metadata; pass --jwks-uri")


_UNSET = object()


def mcp_auth_update(
    *,
    enabled: bool | None = None,
    resource_uri: str | None = None,
    issuer: str | None = None,
    jwks_uri: str | None = None,
    groups_claim: str | None = None,
    create_users_org=_UNSET,
    surface: str = "cli",
) -> MCPAuthSettings:
    """Change the MCP auth settings (CLI, as the system). `None` leaves a field as it is; an empty
    string clears it (`issuer=""` returns to the built-in authorization server). One audit event per
    organization, since the setting governs every org's /api/mcp. Raises InvalidInput."""

    changes: dict = {}
    if enabled is not None:
        changes["enabled"] = bool(enabled)
    if resource_uri is not None:
        changes["resource_uri"] = _check_url(resource_uri, "--resource-uri") if resource_uri else ""
    if issuer is not None:
        changes["issuer"] = _check_url(issuer, "--issuer") if issuer else ""
        if not issuer:
            changes["jwks_uri"] = ""
    if jwks_uri is not None:
        changes["jwks_uri"] = _check_url(jwks_uri, "--jwks-uri") if jwks_uri else ""
    if groups_claim is not None:
        groups_claim = groups_claim.strip()
        if groups_claim and not CLAIM_NAME.fullmatch(groups_claim):
            raise InvalidInput(
                "--groups-claim must be a claim name (letters, digits, _ - . : /), 1-100 characters"
            )
        changes["groups_claim"] = groups_claim
    if create_users_org is not _UNSET:
        changes["create_users_org"] = create_users_org
    if changes.get("issuer") and not changes.get("jwks_uri") and jwks_uri is None:
        changes["jwks_uri"] = discover_jwks_uri(changes["issuer"])  # network: outside the transaction

    with transaction.atomic():
        row, _ = MCPAuthSettings.objects.select_for_update().get_or_create(pk=1)
        before = _describe(row)
        for field, value in changes.items():
            setattr(row, field, value)
        if row.enabled and row.issuer and not row.jwks_uri:
            raise InvalidInput("an external issuer needs a JWKS URI (--jwks-uri)")
        row.save()
        after = _describe(row)
        delta = {k: {"from": before[k], "to": after[k]} for k in after if before[k] != after[k]}
        for org_id in Organization.objects.values_list("pk", flat=True):
            audit_record(
                actor=None,
                org_id=org_id,
                surface=surface,
                action="mcp_auth.update",
                target=row,
                detail={"changes": delta},
            )
    return row


def _describe(row: MCPAuthSettings) -> dict:
    return {
        "enabled": row.enabled,
        "mode": "external" if row.issuer else "built-in",
        "resource_uri": resource_uri_of(row),
        "issuer": row.issuer or f"{settings.PUBLIC_BASE_URL} (built-in)",
        "jwks_uri": row.jwks_uri,
        "groups_claim": row.groups_claim,
        "create_users_org": row.create_users_org.name if row.create_users_org_id else "",
    }


def mcp_auth_status() -> dict:
    return _describe(mcp_auth_get())


# --- verifying OAuth access tokens (called by mcpserver.auth, on an ORM thread) ----------------


@dataclass(frozen=True)
class OAuthCaller:
    actor: Actor
    scopes: tuple[str, ...]
    client_id: str
    expires_at: int | None
    resource: str


def verify_oauth_token(raw: str) -> OAuthCaller | None:
    """The caller behind an OAuth access token, or None (OAuth off, unknown, expired, revoked,
    issued for another resource, or for a user who is gone or inactive)."""
    if not raw or len(raw) > 8192:
        return None
    row = mcp_auth_get()
    if not row.enabled:
        return None
    if row.issuer:
        return _verify_external(raw, row)
    return _verify_builtin(raw, row)


def _scopes_in(values) -> tuple[str, ...]:
    if isinstance(values, str):
        values = values.split()
    if not isinstance(values, list | tuple):
        return ()
    return tuple(s for s in MCP_SCOPES if s in values)


def _verify_builtin(raw: str, row: MCPAuthSettings) -> OAuthCaller | None:
    AccessToken = get_access_token_model()
    checksum = hashlib.sha256(raw.encode()).hexdigest()
    token = (
        AccessToken.objects.select_related("user__org", "application").filter(token_checksum=checksum).first()
    )
    # Tokens without a user or application are not MCP tokens (e.g. DCR registration tokens).
    if token is None or token.user is None or token.application is None or token.is_expired():
        return None
    resource = resource_uri_of(row)
    if token.resource and resource.rstrip("/") not in {str(r).rstrip("/") for r in token.resource}:
        return None  # issued for another resource (RFC 8707)
    if not token.user.is_active:
        return None
    scopes = _scopes_in(token.scope)
    if not scopes:
        return None
    app = token.application
    client = f"oauth:{(app.name or 'unnamed client')[:100]} ({app.client_id[:40]})"
    actor = Actor.for_user(token.user, surface="mcp", client=client, token_id=f"oauth:{token.pk}")
    return OAuthCaller(
        actor=actor,
        scopes=scopes,
        client_id=app.client_id,
        expires_at=int(token.expires.timestamp()),
        resource=resource,
    )


_jwks_lock = threading.Lock()
_jwks_clients: dict[str, jwt.PyJWKClient] = {}


def _jwks_client(uri: str) -> jwt.PyJWKClient:
    """One client per JWKS URI per process: it caches the issuer's public keys (5 minutes) and
    refetches for an unknown key id at most every 30 s (PyJWT's cooldown), so junk tokens cannot
    make the gateway hammer the issuer."""
    with _jwks_lock:
        client = _jwks_clients.get(uri)
        if client is None:
            client = jwt.PyJWKClient(uri, cache_keys=True, lifespan=300, timeout=10)
            _jwks_clients[uri] = client
        return client


def _verify_external(raw: str, row: MCPAuthSettings) -> OAuthCaller | None:
    resource = resource_uri_of(row)
    try:
        key = _jwks_client(row.jwks_uri).get_signing_key_from_jwt(raw)
        claims = jwt.decode(
            raw,
            key.key,
            algorithms=JWT_ALGORITHMS,
            audience=resource,
            issuer=row.issuer,
            leeway=CLOCK_SKEW_SECONDS,
            options={"require": ["exp", "iss", "aud", "sub"]},
        )
    except jwt.PyJWTError as exc:
        logger.info("external OAuth token refused: %s", type(exc).__name__)
        return None
    user = _external_user(row, claims)
    if user is None or not user.is_active:
        return None
    scopes = _scopes_in(claims.get("scope", claims.get("scp")))
    client_name = claims.get("azp") or claims.get("client_id") or row.issuer
    client = f"oauth:{str(client_name)[:150]}"
    if row.groups_claim:
        names = _claim_groups(claims.get(row.groups_claim))
        groups = list(UserGroup.objects.filter(org_id=user.org_id, name__in=names).values_list("pk", "name"))
        actor = Actor(
            user=user,
            groups=frozenset(name for _, name in groups),
            group_ids=frozenset(pk for pk, _ in groups),
            surface="mcp",
            client=client[:200],
            token_id=f"jwt:{claims.get('jti', '')}"[:64],
        )
    else:
        actor = Actor.for_user(user, surface="mcp", client=client)
    return OAuthCaller(
        actor=actor,
        scopes=scopes,
        client_id=str(client_name)[:200],
        expires_at=int(claims["exp"]),
        resource=resource,
    )


def _claim_groups(value) -> list[str]:
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str) and 0 < len(v) <= 100][:100]


def _external_user(row: MCPAuthSettings, claims: dict) -> User | None:
    """The user an external issuer's token speaks for: by (issuer, subject), else by a verified
    e-mail (then linked), else created in `create_users_org` when the admin allowed it."""

    subject = str(claims["sub"])[:255]
    link = (
        ExternalIdentity.objects.select_related("user__org")
        .filter(issuer=row.issuer, subject=subject)
        .first()
    )
    if link is not None:
        return link.user
    email = claims.get("email")
    if not isinstance(email, str) or not email or claims.get("email_verified") is False:
        return None
    email = email.strip().lower()
    user = User.objects.select_related("org").filter(email=email).first()
    if user is None and row.create_users_org_id is None:
        return None
    with transaction.atomic():
        if user is None:
            name = claims.get("name") if isinstance(claims.get("name"), str) else ""
            user = user_create(org=row.create_users_org, email=email, name=name[:150])
        ExternalIdentity.objects.get_or_create(issuer=row.issuer, subject=subject, defaults={"user": user})
        audit_record(
            actor=None,
            org_id=user.org_id,
            surface="mcp",
            action="user.link_identity",
            target=user,
            detail={"issuer": row.issuer, "subject": subject},
        )
    return user


# --- authorized clients (the web page) --------------------------------------------------------


@dataclass
class AuthorizedClient:
    user_id: str
    user_email: str
    application_id: int
    client_id: str
    client_name: str
    scopes: list[str]
    last_issued: datetime | None
    expires: datetime | None


def oauth_clients_list(*, actor: Actor) -> list[AuthorizedClient]:
    """The clients holding live tokens: the actor's own, or every user's of the org for admins."""
    AccessToken, RefreshToken = get_access_token_model(), get_refresh_token_model()
    users = User.objects.filter(org_id=actor.org_id)
    if not has_role(actor, ROLE_ADMIN):
        users = users.filter(pk=actor.user.pk)
    now = timezone.now()
    found: dict[tuple, AuthorizedClient] = {}
    live_access = AccessToken.objects.filter(user__in=users, application__isnull=False, expires__gt=now)
    live_refresh = RefreshToken.objects.filter(user__in=users, revoked__isnull=True)
    for token in live_access.select_related("user", "application"):
        _add(found, token.user, token.application, token.scope, token.created, token.expires)
    for token in live_refresh.select_related("user", "application", "access_token"):
        scope = token.access_token.scope if token.access_token_id else ""
        _add(found, token.user, token.application, scope, token.created, None)
    return sorted(found.values(), key=lambda c: (c.user_email, c.client_name.lower(), c.client_id))


def _add(found, user, app, scope, created, expires) -> None:
    key = (user.pk, app.pk)
    entry = found.get(key)
    if entry is None:
        entry = found[key] = AuthorizedClient(
            user_id=str(user.pk),
            user_email=user.email,
            application_id=app.pk,
            client_id=app.client_id,
            client_name=app.name or "unnamed client",
            scopes=[],
            last_issued=None,
            expires=None,
        )
    entry.scopes = [s for s in MCP_SCOPES if s in set(entry.scopes) | set((scope or "").split())]
    if entry.last_issued is None or created > entry.last_issued:
        entry.last_issued = created
    if expires and (entry.expires is None or expires > entry.expires):
        entry.expires = expires


def oauth_client_revoke(*, actor: Actor, user_id, application_id) -> int:
    """Revoke every token and pending code `application_id` holds for `user_id`: one's own, or any
    user's of the org for admins. Raises NotFound for anything else (the same answer either way)."""

    AccessToken, RefreshToken, Grant = get_access_token_model(), get_refresh_token_model(), get_grant_model()
    not_found = NotFound("authorized client not found")
    try:
        application_id = int(application_id)
    except (TypeError, ValueError):
        raise not_found from None
    users = User.objects.filter(org_id=actor.org_id)
    if not has_role(actor, ROLE_ADMIN):
        users = users.filter(pk=actor.user.pk)
    try:
        user = users.filter(pk=user_id).first()
    except ValidationError:  # not a UUID
        user = None
    if user is None:
        raise not_found
    with transaction.atomic():
        refresh = list(
            RefreshToken.objects.filter(user=user, application_id=application_id, revoked__isnull=True)
        )
        access = list(AccessToken.objects.filter(user=user, application_id=application_id))
        if not refresh and not access:
            raise not_found
        app = (refresh or access)[0].application
        for token in refresh:
            token.revoke()  # also revokes its access token
        AccessToken.objects.filter(user=user, application_id=application_id).delete()
        Grant.objects.filter(user=user, application_id=application_id).delete()
        audit_record(
            actor=actor,
            action="oauth.revoke",
            target_type="oauth2_provider.application",
            target_id=str(app.pk),
            target_repr=f"{app.name or 'unnamed client'} ({app.client_id})",
            detail={"user": user.email, "tokens": len(refresh) + len(access)},
        )
    return len(refresh) + len(access)


def oauth_authorize_record(
    *, actor: Actor, application, scopes: list[str], allowed: bool, issued: bool
) -> None:
    """Record a consent decision (the grant itself is django-oauth-toolkit's, same transaction):
    success when a code was issued, denied when the user said no, invalid when the request failed."""

    outcome = Outcome.DENIED if not allowed else Outcome.SUCCESS if issued else Outcome.INVALID
    audit_record(
        actor=actor,
        action="oauth.authorize",
        outcome=outcome,
        target_type="oauth2_provider.application",
        target_id=str(application.pk),
        target_repr=f"{application.name or 'unnamed client'} ({application.client_id})",
        detail={"scopes": scopes},
    )
