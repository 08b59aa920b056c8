"""Signing in and out of the web app and the admin: password backends, throttling, and the audit
record of every attempt (docs/sso.md).

* `PasswordBackend` is Django's model backend plus one rule: an organization that turned local
  passwords off (`IdentityProvider.password_login`) lets in only its break-glass admin with a
  password; everyone else is told to use SSO. The rule is checked before the password, so the
  answer never says whether a password was right.
* `SSOBackend` is how a user signed in by `governance.sso` is logged in; it never takes a password.
  Both reload the user on each request, so a deactivated user's session ends at once.
* django-axes counts failures per e-mail + client address and locks the pair out after
  `PORTCULLIS_LOGIN_FAILURE_LIMIT` failures (`AxesStandaloneBackend` runs first and refuses a
  locked pair before any password is checked). `lockout_response` renders the login page, 429.
* `login_record` / `logout_record` write `auth.login`, `auth.login_failed`, `auth.lockout`,
  `auth.break_glass` and `auth.logout` into the org's audit log with surface `web` or `admin`.
  Both login forms (ours and the admin's) call `record_password_attempt` after the form ran.
"""

from __future__ import annotations

import logging

from django.contrib.auth.backends import ModelBackend
from django.db import transaction
from django.shortcuts import render

from governance.models import IdentityProvider, User
from governance.policy import Actor
from sessions.audit import audit_record

logger = logging.getLogger("portcullis.auth")

SSO_REQUIRED = "Your organization signs in with its identity provider: use “Continue with SSO”."
LOCKED_OUT = (
    "Too many failed sign-ins. This account is locked for a while from this address; try again later."
)


def axes_username(request, credentials) -> str:
    """The e-mail axes counts failures for, lower-cased so case variants share one counter."""
    raw = (credentials or {}).get("username")
    if raw is None and request is not None:
        raw = request.POST.get("username", "")
    return str(raw or "").strip().lower()[:254]


def axes_client_ip(request) -> str:
    """The connecting address (behind a proxy, the proxy's: see docs/sso.md)."""
    return request.META.get("REMOTE_ADDR", "") if request is not None else ""


def _client(request) -> str:
    return request.headers.get("User-Agent", "")[:200] if request is not None else ""


def surface_of(request, next_url: str = "") -> str:
    """`admin` for the admin's login page or a sign-in that goes on to the admin, else `web`."""
    path = request.path if request is not None else ""
    return "admin" if path.startswith("/admin/") or (next_url or "").startswith("/admin/") else "web"


def _org_of(email: str):
    """The org an attempt belongs to: the user's, else the org whose IdP owns the domain."""
    user = User.objects.filter(email=email).only("pk", "org_id", "email").first()
    if user is not None:
        return user.org_id, user
    domain = email.rpartition("@")[2]
    if domain:
        for idp in IdentityProvider.objects.only("org_id", "allowed_domains"):
            if domain in (idp.allowed_domains or []):
                return idp.org_id, None
    return None, None


def login_record(
    *,
    request,
    surface: str,
    outcome: str,
    action: str = "auth.login",
    user: User | None = None,
    email: str = "",
    method: str = "password",
    reason: str = "",
    detail: dict | None = None,
    org_id=None,
) -> None:
    """One audit event for a sign-in attempt, in the org it concerns. A success is recorded with
    the user as actor; a failure is the system's record about the user (the attempt may be anyone's).
    An attempt for an e-mail no org knows is only logged (there is no org chain to write it to)."""

    email = (email or (user.email if user else "")).strip().lower()[:254]
    if org_id is None:
        org_id, known = (user.org_id, user) if user is not None else _org_of(email)
        user = user or known
    info = {"email": email, "method": method, "address": axes_client_ip(request), **(detail or {})}
    if reason:
        info["reason"] = reason
    if org_id is None:
        logger.info("%s for an unknown e-mail (%s): %s", action, method, reason or outcome)
        return
    if outcome == "success" and user is not None:
        actor = Actor.for_user(user, surface=surface, client=_client(request))
        audit_record(actor=actor, action=action, target=user, detail=info)
    else:
        audit_record(
            actor=None,
            org_id=org_id,
            surface=surface,
            action=action,
            outcome=outcome,
            target=user,
            target_type="" if user else "governance.user",
            target_repr="" if user else email,
            detail=info,
        )


def logout_record(*, request, user: User, method: str) -> None:

    actor = Actor.for_user(user, surface=surface_of(request), client=_client(request))
    audit_record(actor=actor, action="auth.logout", target=user, detail={"method": method})


def record_password_attempt(request, *, surface: str, user: User | None, email: str) -> None:
    """After a password form ran: success, lockout, or failure (with why, when we know it)."""
    if user is not None:
        with transaction.atomic():
            login_record(request=request, surface=surface, outcome="success", user=user)
            if getattr(request, "_portcullis_break_glass", False):
                login_record(
                    request=request,
                    surface=surface,
                    outcome="success",
                    action="auth.break_glass",
                    user=user,
                    reason="password sign-in while the organization's passwords are off",
                )
        return
    if getattr(request, "axes_locked_out", False):
        login_record(
            request=request,
            surface=surface,
            outcome="denied",
            action="auth.lockout",
            email=email,
            reason="locked out",
        )
        return
    reason = getattr(request, "_portcullis_refusal", "") or "wrong e-mail or password"
    login_record(
        request=request,
        surface=surface,
        outcome="denied",
        action="auth.login_failed",
        email=email,
        reason=reason,
    )


class PasswordBackend(ModelBackend):
    """Passwords, unless the user's org turned them off (its break-glass admin excepted)."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        email = (username or kwargs.get("email") or "").strip().lower()
        if not email or password is None:
            return None
        idp = (
            IdentityProvider.objects.filter(org__users__email=email)
            .only("password_login", "break_glass_user_id", "enabled")
            .first()
        )
        user = super().authenticate(request, username=email, password=password, **kwargs)
        if idp is not None and idp.enabled and not idp.password_login:
            if user is None or user.pk != idp.break_glass_user_id:
                if request is not None:
                    request._portcullis_refusal = "password sign-in is off for this organization"
                return None
            if request is not None:
                request._portcullis_break_glass = True
        return user


class SSOBackend(ModelBackend):
    """The backend of sessions started by an SSO sign-in: it authenticates nothing by itself."""

    def authenticate(self, request, **kwargs):
        return None


def lockout_response(request, original_response=None, credentials=None):
    """What a locked-out attempt sees: the login page with the reason, 429."""
    if request.path.startswith("/admin/"):
        return render(request, "login.html", {"lockout": LOCKED_OUT, "next": "/admin/"}, status=429)
    return render(
        request, "login.html", {"lockout": LOCKED_OUT, "next": request.POST.get("next", "")}, status=429
    )


def admin_login(site_login, request, extra_context=None):
    """The admin's own login view, with each POST recorded (surface `admin`)."""
    response = site_login(request, extra_context)
    if request.method == "POST":
        user = request.user if request.user.is_authenticated else None
        record_password_attempt(request, surface="admin", user=user, email=request.POST.get("username", ""))
    return response
