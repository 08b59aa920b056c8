"""The SSO pages: start a sign-in (from an e-mail or an org's URL), the IdP's callback, log out.

Thin over `governance.sso` (protocol and user resolution) and `governance.auth` (audit records).
The flow's state, nonce and PKCE verifier live in the browser's Django session, keyed by state and
removed at the callback, so a replayed or forged state finds nothing and is refused.
"""

from __future__ import annotations

import hashlib
import time

from django.contrib import auth
from django.contrib.auth import views as auth_views
from django.core.cache import cache
from django.db import transaction
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods

from governance.auth import SSO_REQUIRED, login_record, logout_record, record_password_attempt, surface_of
from governance.models import IdentityProvider
from governance.sso import Flow, SignInRefused, begin, end_session_url, finish, idp_for_email, sign_in

FLOWS_KEY = "sso_flows"
MAX_FLOWS = 5  # sign-ins started in other tabs still finish; older ones expire
FLOW_SECONDS = 600


def _safe_next(request, next_url: str) -> str:
    if next_url and url_has_allowed_host_and_scheme(
        next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return next_url
    return "/"


def _login_page(request, message: str, status: int = 400, next_url: str = ""):
    return render(request, "login.html", {"sso_error": message, "next": next_url}, status=status)


def _start(request, idp: IdentityProvider, next_url: str):
    next_url = _safe_next(request, next_url)
    try:
        url, flow = begin(idp, next_url=next_url, surface=surface_of(request, next_url))
    except SignInRefused as exc:
        login_record(
            request=request,
            surface=surface_of(request, next_url),
            outcome="failed",
            action="auth.login_failed",
            method="sso",
            reason=exc.reason,
            org_id=idp.org_id,
        )
        return _login_page(request, exc.message, status=502, next_url=next_url)
    flows = request.session.get(FLOWS_KEY, {})
    flows = dict(sorted(flows.items(), key=lambda kv: kv[1]["started"])[-(MAX_FLOWS - 1) :])
    flows[flow.state] = flow.as_dict()
    request.session[FLOWS_KEY] = flows
    return redirect(url)


def sso_start_for_email(request, email: str, next_url: str):
    """From the login form: the org's IdP is the one that owns the e-mail's domain."""
    idp = idp_for_email(email)
    if idp is None:
        return _login_page(
            request,
            "No single sign-on is set up for this e-mail address; use your password.",
            next_url=next_url,
        )
    return _start(request, idp, next_url)


@never_cache
@require_GET
def sso_start_org(request, slug: str):
    """The org-specific sign-in URL, /login/sso/<slug>/ (bookmarkable; also the IdP's "initiate
    login URI")."""
    idp = IdentityProvider.objects.select_related("org").filter(slug=slug, enabled=True).first()
    if idp is None:
        return _login_page(request, "No such sign-in.", status=404)
    return _start(request, idp, request.GET.get("next", ""))


@never_cache
@require_GET
def sso_callback(request):
    """The IdP sends the browser back here with a code (or an error) and our state."""
    state = request.GET.get("state", "")
    flows = request.session.get(FLOWS_KEY, {})
    data = flows.pop(state, None) if state else None
    request.session[FLOWS_KEY] = flows  # used once: a replayed state is refused below
    if data is not None:
        # Remember (server-side, for the flow's lifetime) which org a spent state was for, so a
        # replay from any browser is recorded in that org's audit log.
        cache.set(_spent_key(state), data["idp_id"], FLOW_SECONDS)
    if data is None:
        login_record(
            request=request,
            surface=surface_of(request),
            outcome="denied",
            action="auth.login_failed",
            method="sso",
            reason="unknown or already used state",
            org_id=_org_of_spent_state(request, state),
        )
        return _login_page(request, "This sign-in link is not valid any more; start again.")
    flow = Flow(**data)
    idp = IdentityProvider.objects.select_related("org").filter(pk=flow.idp_id, enabled=True).first()
    if idp is None:
        return _login_page(request, "Single sign-on is off for this organization.")

    def refuse(reason: str, message: str, email: str = ""):
        login_record(
            request=request,
            surface=flow.surface,
            outcome="denied",
            action="auth.login_failed",
            method="sso",
            reason=reason,
            email=email,
            org_id=idp.org_id,
            detail={"issuer": idp.issuer},
        )
        return _login_page(request, message, status=403, next_url=flow.next_url)

    if time.time() - flow.started > FLOW_SECONDS:
        return refuse("the sign-in took too long (state expired)", "The sign-in took too long; start again.")
    if request.GET.get("error"):
        error = request.GET.get("error", "")[:100]
        return refuse(
            f"the IdP answered {error}: {request.GET.get('error_description', '')[:200]}",
            "The identity provider did not sign you in.",
        )
    code = request.GET.get("code", "")
    if not code or len(code) > 2000:
        return refuse("the callback carries no code", "The identity provider did not sign you in.")
    try:
        claims, id_token = finish(idp, flow, code=code)
        with transaction.atomic():
            user, changes = sign_in(idp, claims)
            auth.login(request, user, backend="governance.auth.SSOBackend")
            login_record(
                request=request,
                surface=flow.surface,
                outcome="success",
                user=user,
                method="sso",
                detail={"issuer": idp.issuer, "subject": str(claims.get("sub"))[:255], **changes},
            )
    except SignInRefused as exc:
        return refuse(exc.reason, exc.message, email=exc.email)
    request.session["sso_idp"] = idp.pk
    request.session["sso_id_token"] = id_token
    return redirect(flow.next_url or "/")


def _spent_key(state: str) -> str:
    return "sso:spent:" + hashlib.sha256(state.encode()).hexdigest()


def _org_of_spent_state(request, state: str):
    idp_id = cache.get(_spent_key(state)) if state else None
    return (
        IdentityProvider.objects.filter(pk=idp_id).values_list("org_id", flat=True).first()
        if idp_id
        else None
    )


@require_http_methods(["POST"])
def logout_view(request):
    """End the local session (audited); then the IdP's too, when it offers RP-initiated logout."""
    idp_id, id_token = request.session.get("sso_idp"), request.session.get("sso_id_token", "")
    user = request.user if request.user.is_authenticated else None
    if user is not None:
        logout_record(request=request, user=user, method="sso" if idp_id else "password")
    auth.logout(request)
    if idp_id:
        idp = IdentityProvider.objects.filter(pk=idp_id).first()
        url = end_session_url(idp, id_token) if idp else ""
        if url:
            return redirect(url)
    return redirect("/login/")


class LoginView(auth_views.LoginView):
    """The web login page: e-mail first; "Continue with SSO" sends the user to the org's IdP
    (found from the e-mail's domain), the password form stays for orgs that allow it."""

    template_name = "login.html"

    def post(self, request, *args, **kwargs):
        email = request.POST.get("username", "").strip()
        if "sso" in request.POST or (email and not request.POST.get("password")):
            return sso_start_for_email(request, email, request.POST.get("next", ""))
        return super().post(request, *args, **kwargs)

    def form_valid(self, form):
        response = super().form_valid(form)
        record_password_attempt(
            self.request,
            surface=surface_of(self.request, self.get_redirect_url()),
            user=form.get_user(),
            email=form.cleaned_data.get("username", ""),
        )
        return response

    def form_invalid(self, form):
        record_password_attempt(
            self.request,
            surface=surface_of(self.request, self.request.POST.get("next", "")),
            user=None,
            email=self.request.POST.get("username", ""),
        )
        refusal = getattr(self.request, "_portcullis_refusal", "")
        if refusal:
            form.errors.clear()
            form.add_error(None, SSO_REQUIRED)
        return super().form_invalid(form)
