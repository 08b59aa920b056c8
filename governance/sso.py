"""OpenID Connect sign-in for the web app and the admin, per organization (docs/sso.md).

The protocol is Authlib's: `OAuth2Session` builds the authorization request (PKCE S256, state,
nonce) and exchanges the code (client secret by HTTP Basic); joserfc checks the ID token's
signature against the IdP's JWKS; Authlib's `CodeIDToken` checks its claims (`iss`, `aud`, `exp`,
`iat`, `nonce`, `azp`, `at_hash`). What is ours is the gateway's rules around it:

* the IdP of an org is found from the e-mail's domain (`allowed_domains`) or its slug;
* discovery: the document's `issuer` must be the configured issuer exactly (no trailing-slash
  games), its endpoints https (http only on loopback, for local IdPs);
* a user is matched by (issuer, subject) (`ExternalIdentity`, shared with the external-issuer mode
  at /api/mcp, so both resolve to the same user). Only on a first sign-in, and only within the
  IdP's org, an existing user with the same verified e-mail who has no identity at this issuer yet
  is linked; an e-mail outside `allowed_domains` (another org's, say) is refused;
* the org's mapped groups are set from the groups claim at every sign-in;
* every refusal is an `auth.login_failed` event, every success `auth.login`.

Configuring an org's IdP (`idp_configure`) is a CLI and admin service, audited as `sso.configure`.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from authlib.oidc.core import CodeIDToken
from django.conf import settings
from django.db import transaction
from django.utils.text import slugify
from joserfc import jwt as jose_jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from gateway.crypto import decrypt_json, encrypt_json
from governance.errors import Conflict, InvalidInput, NotFound
from governance.models import (
    ExternalIdentity,
    IdentityProvider,
    Organization,
    User,
    UserGroup,
    token_digest,
)
from governance.oauth import CLAIM_NAME, _check_url
from governance.policy import ROLE_ADMIN, Actor, require_role
from governance.services import user_create
from sessions.audit import audit_record

logger = logging.getLogger("portcullis.sso")

# Asymmetric signatures only: `none` and HMAC (the client secret as a key) are refused.
ID_TOKEN_ALGORITHMS = [
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
]
CLOCK_SKEW_SECONDS = 60
DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
CALLBACK_PATH = "/login/sso/callback/"


class SignInRefused(Exception):
    """The IdP's answer does not let this person in; `reason` goes to the audit log, `message` to
    the page (which never says more than the person needs)."""

    def __init__(self, reason: str, message: str = "Sign-in was refused.", *, org_id=None, email: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.message = message
        self.org_id = org_id
        self.email = email


# --- configuration ------------------------------------------------------------------------------


def _check_domains(domains, org: Organization) -> list[str]:
    if not isinstance(domains, list | tuple) or not domains:
        raise InvalidInput("allowed domains: list at least one e-mail domain (example.com)")
    clean = []
    for domain in domains:
        domain = str(domain).strip().lower().lstrip("@")
        if not DOMAIN.match(domain):
            raise InvalidInput(f"allowed domains: {domain!r} is not a domain name")
        clean.append(domain)
    for other in IdentityProvider.objects.exclude(org=org).only("allowed_domains", "org"):
        taken = set(clean) & set(other.allowed_domains or [])
        if taken:
            # One domain, one org: the domain decides where a sign-in goes.
            raise Conflict(f"domain {sorted(taken)[0]} belongs to another organization's sign-in")
    return sorted(set(clean))


def _check_group_map(group_map, org: Organization) -> dict[str, str]:
    if not isinstance(group_map, dict):
        raise InvalidInput("group map must map IdP group names to Portcullis group names")
    existing = set(UserGroup.objects.filter(org=org).values_list("name", flat=True))
    clean = {}
    for source, target in group_map.items():
        if not isinstance(source, str) or not source or len(source) > 255:
            raise InvalidInput("group map: IdP group names must be 1-255 characters")
        if not isinstance(target, str) or target not in existing:
            raise InvalidInput(f"group map: {target!r} is not a group of {org.name} (create it first)")
        clean[source] = target
    return clean


def idp_get(*, org: Organization) -> IdentityProvider:
    idp = IdentityProvider.objects.filter(org=org).first()
    if idp is None:
        raise NotFound(f"{org.name} has no identity provider configured")
    return idp


def idp_configure(
    *,
    org: Organization | None = None,
    actor: Actor | None = None,
    issuer: str | None = None,
    client_id: str | None = None,
    client_secret: str | None = None,
    scopes: str | None = None,
    groups_claim: str | None = None,
    group_map: dict | None = None,
    allowed_domains: list[str] | None = None,
    password_login: bool | None = None,
    break_glass_email: str | None = None,
    enabled: bool | None = None,
    slug: str | None = None,
) -> IdentityProvider:
    """Create or change an org's IdP. With `actor` an admin changes their own org; with `org` (CLI)
    the system does. `None` leaves a field as it is. The client secret is write-only: stored
    encrypted, audited only as "changed". Turning passwords off needs a break-glass admin (an
    active member of `admin` with a usable password), so an IdP outage cannot lock everyone out.
    Raises InvalidInput, Conflict, NotFound, PolicyDenied."""

    if (org is None) == (actor is None):
        raise InvalidInput("give either an actor or an organization")
    if actor is not None:
        require_role(actor, ROLE_ADMIN)
        org = actor.user.org
    with transaction.atomic():
        idp = IdentityProvider.objects.select_for_update().filter(org=org).first()
        creating = idp is None
        if creating:
            if not (issuer and client_id and allowed_domains):
                raise InvalidInput("a new identity provider needs an issuer, a client id and allowed domains")
            idp = IdentityProvider(org=org, slug=slugify(slug or org.name)[:63] or str(org.pk)[:8])
        changes: dict = {}

        def put(field, value):
            if getattr(idp, field) != value:
                setattr(idp, field, value)
                changes[field] = value

        if issuer is not None:
            put("issuer", _check_url(issuer, "issuer"))
        if client_id is not None:
            if not client_id.strip() or len(client_id) > 255:
                raise InvalidInput("client id must be 1-255 characters")
            put("client_id", client_id.strip())
        if client_secret is not None:
            if len(client_secret) > 2000:
                raise InvalidInput("client secret must be at most 2000 characters")
            idp.client_secret_encrypted = encrypt_json({"secret": client_secret}) if client_secret else ""
            changes["client_secret"] = "changed" if client_secret else "cleared"
        if scopes is not None:
            words = scopes.split()
            if "openid" not in words or len(scopes) > 300:
                raise InvalidInput('scopes must include "openid" (at most 300 characters)')
            put("scopes", " ".join(words))
        if groups_claim is not None:
            if groups_claim and not CLAIM_NAME.fullmatch(groups_claim):
                raise InvalidInput("groups claim must be a claim name (letters, digits, _ - . : /)")
            put("groups_claim", groups_claim)
        if group_map is not None:
            put("group_map", _check_group_map(group_map, org))
        if allowed_domains is not None:
            put("allowed_domains", _check_domains(allowed_domains, org))
        if slug is not None and not creating:
            put("slug", slugify(slug)[:63])
        if enabled is not None:
            put("enabled", bool(enabled))
        if break_glass_email is not None:
            user = None
            if break_glass_email:
                user = User.objects.filter(org=org, email=break_glass_email.strip().lower()).first()
                if user is None:
                    raise NotFound(f'user "{break_glass_email}" not found')
            if (user.pk if user else None) != idp.break_glass_user_id:
                idp.break_glass_user = user
                changes["break_glass_user"] = user.email if user else ""
        if password_login is not None:
            put("password_login", bool(password_login))
        if not idp.password_login:
            user = idp.break_glass_user
            ok = (
                user is not None
                and user.is_active
                and user.has_usable_password()
                and user.user_groups.filter(org=org, name="admin").exists()
            )
            if not ok:
                raise InvalidInput(
                    "turning passwords off needs a break-glass admin: an active admin with a password"
                )
        if IdentityProvider.objects.exclude(org=org).filter(slug=idp.slug).exists():
            raise Conflict(f"the sign-in URL name {idp.slug!r} is taken; pass another slug")
        idp.save()
        audit_record(
            actor=actor,
            org_id=org.pk,
            surface="cli",
            action="sso.configure",
            target=idp,
            detail={"created": creating, "changes": changes},
        )
    _forget(idp.issuer)
    return idp


def scim_secret_issue(*, org: Organization | None = None, actor: Actor | None = None) -> str:
    """A new SCIM bearer secret for the org (the old one stops working). Returned once; only its
    SHA-256 is kept. Raises NotFound (no IdP configured), PolicyDenied."""

    if actor is not None:
        require_role(actor, ROLE_ADMIN)
        org = actor.user.org
    raw = "pcs_" + secrets.token_urlsafe(32)
    with transaction.atomic():
        idp = IdentityProvider.objects.select_for_update().filter(org=org).first()
        if idp is None:
            raise NotFound(f"{org.name} has no identity provider configured")
        idp.scim_token_digest = token_digest(raw)
        idp.scim_token_prefix = raw[:10]
        idp.save(update_fields=["scim_token_digest", "scim_token_prefix", "updated_at"])
        audit_record(
            actor=actor,
            org_id=org.pk,
            surface="cli",
            action="scim.secret_issue",
            target=idp,
            detail={"prefix": idp.scim_token_prefix},
        )
    return raw


def idp_status(idp: IdentityProvider) -> dict:
    return {
        "org": idp.org.name,
        "enabled": idp.enabled,
        "issuer": idp.issuer,
        "client_id": idp.client_id,
        "client_secret": "set" if idp.client_secret_encrypted else "not set",
        "scopes": idp.scopes,
        "groups_claim": idp.groups_claim,
        "group_map": idp.group_map,
        "allowed_domains": idp.allowed_domains,
        "password_login": idp.password_login,
        "break_glass": idp.break_glass_user.email if idp.break_glass_user_id else "",
        "sign_in_url": f"{settings.PUBLIC_BASE_URL}/login/sso/{idp.slug}/",
        "redirect_uri": callback_url(),
        "scim_base_url": f"{settings.PUBLIC_BASE_URL}/scim/v2/{idp.slug}",
        "scim_secret": f"{idp.scim_token_prefix}…" if idp.scim_token_digest else "not issued",
    }


def idp_for_email(email: str) -> IdentityProvider | None:
    domain = (email or "").strip().lower().rpartition("@")[2]
    if not domain:
        return None
    for idp in IdentityProvider.objects.select_related("org").filter(enabled=True):
        if domain in (idp.allowed_domains or []):
            return idp
    return None


def callback_url() -> str:
    return settings.PUBLIC_BASE_URL + CALLBACK_PATH


# --- discovery and keys ---------------------------------------------------------------------------

_cache_lock = threading.Lock()
_metadata: dict[str, tuple[float, dict]] = {}
_jwks: dict[str, tuple[float, dict]] = {}


def _forget(issuer: str) -> None:
    with _cache_lock:
        _metadata.pop(issuer, None)
        _jwks.pop(issuer, None)


def _get_json(url: str, what: str) -> dict:
    try:
        response = requests.get(url, timeout=settings.SSO_HTTP_TIMEOUT_SECONDS, allow_redirects=False)
        response.raise_for_status()
        data = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise SignInRefused(
            f"{what} could not be read: {type(exc).__name__}", "The identity provider did not answer."
        ) from None
    if not isinstance(data, dict):
        raise SignInRefused(f"{what} is not a JSON object", "The identity provider did not answer.")
    return data


def _endpoint(meta: dict, name: str, required: bool = True) -> str:
    value = meta.get(name)
    if not value:
        if required:
            raise SignInRefused(f"discovery has no {name}", "The identity provider is misconfigured.")
        return ""
    try:
        return _check_url(value, name)
    except InvalidInput as exc:
        raise SignInRefused(f"discovery: {exc.message}", "The identity provider is misconfigured.") from None


def metadata(idp: IdentityProvider) -> dict:
    """The IdP's discovery document, cached per process. Its `issuer` must be ours exactly."""
    now = time.monotonic()
    with _cache_lock:
        hit = _metadata.get(idp.issuer)
    if hit and now - hit[0] < settings.SSO_METADATA_CACHE_SECONDS:
        return hit[1]
    meta = _get_json(idp.issuer.rstrip("/") + "/.well-known/openid-configuration", "discovery")
    if meta.get("issuer") != idp.issuer:
        raise SignInRefused(
            f"discovery names issuer {str(meta.get('issuer'))[:200]!r}, not {idp.issuer!r}",
            "The identity provider is misconfigured.",
        )
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        _endpoint(meta, name)
    with _cache_lock:
        _metadata[idp.issuer] = (now, meta)
    return meta


def _key_set(idp: IdentityProvider, meta: dict, *, refresh: bool = False) -> KeySet:
    now = time.monotonic()
    with _cache_lock:
        hit = _jwks.get(idp.issuer)
    if refresh or not hit or now - hit[0] >= settings.SSO_METADATA_CACHE_SECONDS:
        if refresh and hit and now - hit[0] < 30:
            data = hit[1]  # refetched moments ago: junk key ids cannot make us hammer the IdP
        else:
            data = _get_json(_endpoint(meta, "jwks_uri"), "the IdP's keys (JWKS)")
            with _cache_lock:
                _jwks[idp.issuer] = (now, data)
    else:
        data = hit[1]
    try:
        return KeySet.import_key_set(data)
    except (JoseError, ValueError, TypeError, KeyError):
        raise SignInRefused(
            "the IdP's JWKS cannot be read", "The identity provider is misconfigured."
        ) from None


# --- the flow -----------------------------------------------------------------------------------


@dataclass
class Flow:
    """What the browser's session keeps between the redirect to the IdP and the callback."""

    idp_id: int
    state: str
    nonce: str
    verifier: str
    next_url: str
    surface: str
    started: float

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def client_secret(idp: IdentityProvider) -> str:
    return decrypt_json(idp.client_secret_encrypted).get("secret", "") if idp.client_secret_encrypted else ""


def _session(idp: IdentityProvider) -> OAuth2Session:
    secret = client_secret(idp)
    return OAuth2Session(
        client_id=idp.client_id,
        client_secret=secret or None,
        scope=idp.scopes,
        redirect_uri=callback_url(),
        code_challenge_method="S256",
        token_endpoint_auth_method="client_secret_basic" if secret else "none",
    )


def begin(idp: IdentityProvider, *, next_url: str, surface: str) -> tuple[str, Flow]:
    """The IdP's authorization URL and the flow to keep in the browser's session."""
    meta = metadata(idp)
    flow = Flow(
        idp_id=idp.pk,
        state=secrets.token_urlsafe(32),
        nonce=secrets.token_urlsafe(32),
        verifier=secrets.token_urlsafe(64),
        next_url=next_url,
        surface=surface,
        started=time.time(),
    )
    url, _ = _session(idp).create_authorization_url(
        _endpoint(meta, "authorization_endpoint"),
        state=flow.state,
        nonce=flow.nonce,
        code_verifier=flow.verifier,
    )
    return url, flow


def finish(idp: IdentityProvider, flow: Flow, *, code: str) -> tuple[dict, str]:
    """Exchange the code (with the PKCE verifier) and validate the ID token: (claims, raw ID token).
    Raises SignInRefused with why."""
    meta = metadata(idp)
    client = _session(idp)
    try:
        token = client.fetch_token(
            _endpoint(meta, "token_endpoint"),
            grant_type="authorization_code",
            code=code,
            code_verifier=flow.verifier,
            timeout=settings.SSO_HTTP_TIMEOUT_SECONDS,
        )
    except (OAuthError, requests.RequestException, ValueError) as exc:
        raise SignInRefused(f"code exchange failed: {str(exc)[:200]}", org_id=idp.org_id) from None
    raw = token.get("id_token")
    if not isinstance(raw, str) or not raw:
        raise SignInRefused("the token response has no ID token", org_id=idp.org_id)
    claims = validate_id_token(idp, meta, raw, nonce=flow.nonce, access_token=token.get("access_token"))
    claims = _with_userinfo(idp, meta, claims, token.get("access_token"))
    return claims, raw


def validate_id_token(idp: IdentityProvider, meta: dict, raw: str, *, nonce: str, access_token=None) -> dict:
    """Signature (JWKS; asymmetric algorithms only), then iss, aud, exp, iat, nonce, azp, at_hash."""
    registry = JWSRegistry(algorithms=ID_TOKEN_ALGORITHMS)
    try:
        try:
            decoded = jose_jwt.decode(raw, _key_set(idp, meta), registry=registry)
        except InvalidKeyIdError:  # the IdP rotated its keys: fetch them again (rate-limited)
            decoded = jose_jwt.decode(raw, _key_set(idp, meta, refresh=True), registry=registry)
        params = {"nonce": nonce, "client_id": idp.client_id}
        if access_token:
            params["access_token"] = access_token
        options = {
            "iss": {"essential": True, "value": idp.issuer},
            "aud": {"essential": True, "value": idp.client_id},
            "sub": {"essential": True},
        }
        claims = CodeIDToken(decoded.claims, decoded.header, options, params)
        claims.validate(leeway=CLOCK_SKEW_SECONDS)
    except JoseError as exc:
        raise SignInRefused(
            f"ID token refused: {type(exc).__name__}: {str(exc)[:200]}", org_id=idp.org_id
        ) from None
    except (ValueError, TypeError) as exc:
        raise SignInRefused(f"ID token unreadable: {type(exc).__name__}", org_id=idp.org_id) from None
    return dict(claims)


def _with_userinfo(idp: IdentityProvider, meta: dict, claims: dict, access_token) -> dict:
    """Some IdPs put e-mail or groups only in UserInfo: fetch it when the ID token lacks them.
    UserInfo's `sub` must be the ID token's (OIDC Core 5.3.2)."""
    wanted = {"email"} | ({idp.groups_claim} if idp.groups_claim else set())
    endpoint = meta.get("userinfo_endpoint")
    if wanted <= claims.keys() or not endpoint or not access_token:
        return claims
    try:
        response = requests.get(
            _endpoint(meta, "userinfo_endpoint"),
            headers={"Authorization": f"Bearer {access_token}"},
            timeout=settings.SSO_HTTP_TIMEOUT_SECONDS,
        )
        info = response.json() if response.status_code == 200 else {}
    except (requests.RequestException, ValueError):
        info = {}
    if isinstance(info, dict) and info.get("sub") == claims.get("sub"):
        return {**{k: v for k, v in info.items() if k in wanted}, **claims}
    return claims


def idp_groups(idp: IdentityProvider, claims: dict) -> list[str]:
    value = claims.get(idp.groups_claim) if idp.groups_claim else None
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str) and 0 < len(v) <= 255][:500]


def sign_in(idp: IdentityProvider, claims: dict) -> tuple[User, dict]:
    """The user these validated claims speak for, created or linked on first sign-in, with the
    org's mapped groups set from the claim. Returns (user, what changed). Raises SignInRefused."""

    org_id = idp.org_id
    subject = str(claims.get("sub") or "")[:255]
    email = claims.get("email")
    email = email.strip().lower() if isinstance(email, str) else ""
    if not subject:
        raise SignInRefused("the ID token has no subject", org_id=org_id)
    if not email:
        raise SignInRefused("the IdP sent no e-mail address", org_id=org_id)
    if claims.get("email_verified") is False:
        raise SignInRefused("the IdP says the e-mail is not verified", org_id=org_id, email=email)
    if email.rpartition("@")[2] not in (idp.allowed_domains or []):
        raise SignInRefused(
            f"e-mail domain {email.rpartition('@')[2]!r} is not allowed for this organization",
            "This e-mail address may not sign in to this organization.",
            org_id=org_id,
            email=email,
        )
    changes: dict = {}
    with transaction.atomic():
        link = (
            ExternalIdentity.objects.select_related("user").filter(issuer=idp.issuer, subject=subject).first()
        )
        if link is not None:
            user = link.user
            if user.org_id != org_id:
                raise SignInRefused(
                    "this identity belongs to another organization's user", org_id=org_id, email=email
                )
        else:
            user = User.objects.filter(email=email).first()
            if user is not None and user.org_id != org_id:
                raise SignInRefused(
                    "the e-mail belongs to a user of another organization",
                    "This e-mail address may not sign in to this organization.",
                    org_id=org_id,
                    email=email,
                )
            if user is not None and ExternalIdentity.objects.filter(user=user, issuer=idp.issuer).exists():
                # Already linked to another subject at this IdP: the e-mail alone never moves it.
                raise SignInRefused(
                    "the e-mail's user is linked to another subject at this IdP", org_id=org_id, email=email
                )
            if user is None:
                name = claims.get("name") if isinstance(claims.get("name"), str) else ""
                user = user_create(org=idp.org, email=email, name=name[:150], surface="web")
                changes["created"] = True
            ExternalIdentity.objects.create(issuer=idp.issuer, subject=subject, user=user)
            changes["linked"] = subject
        if not user.is_active:
            raise SignInRefused("the user is deactivated in Portcullis", org_id=org_id, email=email)
        name = claims.get("name")
        if isinstance(name, str) and name.strip() and name.strip()[:150] != user.name:
            user.name = name.strip()[:150]  # the IdP's directory is where names are kept
            user.save(update_fields=["name"])
            changes["name"] = user.name
        changes.update(_refresh_groups(idp, user, idp_groups(idp, claims)))
    return user, changes


def _refresh_groups(idp: IdentityProvider, user: User, names: list[str]) -> dict:
    """Membership of every group named in the map follows the claim; other groups stay as the
    admins set them."""
    managed = set(idp.group_map.values())
    if not managed:
        return {}
    wanted = {idp.group_map[n] for n in names if n in idp.group_map}
    groups = {g.name: g for g in UserGroup.objects.filter(org_id=idp.org_id, name__in=managed)}
    current = set(user.user_groups.filter(org_id=idp.org_id, name__in=managed).values_list("name", flat=True))
    added, removed = wanted - current, current - wanted
    for name in added:
        if name in groups:
            groups[name].members.add(user)
    for name in removed:
        groups[name].members.remove(user)
    out = {}
    if added:
        out["groups_added"] = sorted(added)
    if removed:
        out["groups_removed"] = sorted(removed)
    out["groups"] = sorted(wanted)
    return out


def end_session_url(idp: IdentityProvider, id_token: str) -> str:
    """RP-initiated logout at the IdP, when its discovery document offers it; else ""."""
    try:
        meta = metadata(idp)
        endpoint = _endpoint(meta, "end_session_endpoint", required=False)
    except SignInRefused:
        return ""
    if not endpoint:
        return ""
    from urllib.parse import urlencode

    query = {"post_logout_redirect_uri": settings.PUBLIC_BASE_URL + "/login/", "client_id": idp.client_id}
    if id_token:
        query["id_token_hint"] = id_token
    return endpoint + ("&" if urlsplit(endpoint).query else "?") + urlencode(query)
