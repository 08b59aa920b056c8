"""The built-in authorization server's endpoints and the "authorized clients" page.

django-oauth-toolkit does the protocol (authorization code + PKCE, token, refresh rotation,
RFC 7009 revocation, RFC 7591 registration, RFC 8414 metadata). These subclasses add what the
gateway needs on top: every endpoint answers 404 unless the built-in server is switched on
(`manage.py mcp_auth`), registration input is bounded and its redirect URIs must be https,
http on a loopback address or a configured private-use scheme (RFC 8252), authorization requests
may only name this gateway's resource URI (RFC 8707), consent decisions are audited, and the
consent page says plainly which client asks for which scopes.
"""

from __future__ import annotations

import json
from datetime import timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods
from oauth2_provider import views as dot_views
from oauth2_provider.exceptions import OAuthToolkitError
from oauth2_provider.models import get_application_model
from oauth2_provider.views.dynamic_client_registration import (
    DynamicClientRegistrationManagementView,
    DynamicClientRegistrationView,
)
from oauthlib.common import add_params_to_uri

from gateway.web import web_actor
from governance.errors import NotFound
from governance.oauth import (
    MCP_SCOPES,
    _is_loopback,
    builtin_server_active,
    mcp_auth_get,
    oauth_authorize_record,
    oauth_client_revoke,
    oauth_clients_list,
    resource_uri_of,
)

MAX_REGISTRATION_BYTES = 8 * 1024
MAX_REDIRECT_URIS = 5
MAX_URI_LENGTH = 512
MAX_CLIENT_NAME = 100
GRANT_TYPES = {"authorization_code", "refresh_token"}


def _not_active() -> JsonResponse:
    return JsonResponse(
        {"error": "not_found", "error_description": "the built-in authorization server is off"}, status=404
    )


def open_cors(response):
    """Browser-based MCP clients (the MCP Inspector) call the metadata, registration, token and
    revocation endpoints from their own origin. Those requests carry no cookies (credentials go in
    headers or the body), so any origin may call them."""
    response["Access-Control-Allow-Origin"] = "*"
    response["Access-Control-Allow-Methods"] = "GET, POST, PUT, DELETE, OPTIONS"
    response["Access-Control-Allow-Headers"] = "Authorization, Content-Type, MCP-Protocol-Version"
    response["Access-Control-Max-Age"] = "3600"
    return response


class BuiltinOnly:
    """Answer 404 unless OAuth is on with the built-in authorization server."""

    cors = True

    def dispatch(self, request, *args, **kwargs):
        if not builtin_server_active():
            response = _not_active()
        else:
            response = super().dispatch(request, *args, **kwargs)
        return open_cors(response) if self.cors else response


class ServerMetadataView(BuiltinOnly, dot_views.OAuthServerMetadataView):
    """RFC 8414 metadata at /.well-known/oauth-authorization-server."""


@require_http_methods(["GET", "OPTIONS"])
def protected_resource_metadata(request):
    """RFC 9728 metadata for /api/mcp, always served: it names the authorization server only while
    OAuth is on (API tokens need none)."""
    row = mcp_auth_get()
    data = {
        "resource": resource_uri_of(row),
        "scopes_supported": list(MCP_SCOPES),
        "bearer_methods_supported": ["header"],
        "resource_name": "Portcullis MCP gateway",
        "resource_documentation": "https://github.com/portcullis/portcullis/blob/main/docs/oauth.md",
    }
    if row.enabled:
        data["authorization_servers"] = [row.issuer or settings.PUBLIC_BASE_URL]
    return open_cors(JsonResponse(data))


def _invalid(description: str, status: int = 400) -> JsonResponse:
    return JsonResponse({"error": "invalid_client_metadata", "error_description": description}, status=status)


def redirect_uri_problem(uri) -> str | None:
    """Why a redirect URI may not be registered, or None. https anywhere; http only on a loopback
    address (native apps, RFC 8252 §7.3, any port at use); a private-use scheme from
    PORTCULLIS_OAUTH_REDIRECT_SCHEMES (RFC 8252 §7.1)."""
    if not isinstance(uri, str) or not uri or len(uri) > MAX_URI_LENGTH:
        return f"each redirect URI must be a string of 1-{MAX_URI_LENGTH} characters"
    parts = urlsplit(uri)
    if "#" in uri or "@" in parts.netloc or any(c.isspace() for c in uri):
        return "redirect URIs must not carry a fragment, credentials or whitespace"
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http":
        if _is_loopback(parts.hostname):
            return None
        return (
            "http redirect URIs must point at a loopback address (127.0.0.1, [::1] or localhost); use https"
        )
    if parts.scheme in settings.OAUTH_REDIRECT_SCHEMES:
        return None
    return f"redirect URI scheme {parts.scheme!r} is not allowed"


def registration_problem(request, *, creating: bool = True) -> JsonResponse | None:
    """Bounded, checked client metadata before django-oauth-toolkit sees it."""
    recent = get_application_model().objects.filter(created__gte=timezone.now() - timedelta(hours=1))
    if creating and recent.count() >= settings.OAUTH_REGISTRATIONS_PER_HOUR:
        return JsonResponse(
            {
                "error": "temporarily_unavailable",
                "error_description": "too many registrations; try again later",
            },
            status=429,
        )
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > MAX_REGISTRATION_BYTES or len(request.body) > MAX_REGISTRATION_BYTES:
        return _invalid(f"registration requests are limited to {MAX_REGISTRATION_BYTES} bytes", status=413)
    try:
        data = json.loads(request.body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return _invalid("request body must be valid JSON")
    if not isinstance(data, dict):
        return _invalid("request body must be a JSON object")
    uris = data.get("redirect_uris")
    if not isinstance(uris, list) or not 1 <= len(uris) <= MAX_REDIRECT_URIS:
        return JsonResponse(
            {
                "error": "invalid_redirect_uri",
                "error_description": f"redirect_uris must list 1-{MAX_REDIRECT_URIS} URIs",
            },
            status=400,
        )
    for uri in uris:
        problem = redirect_uri_problem(uri)
        if problem:
            return JsonResponse({"error": "invalid_redirect_uri", "error_description": problem}, status=400)
    name = data.get("client_name", "")
    if not isinstance(name, str) or len(name) > MAX_CLIENT_NAME:
        return _invalid(f"client_name must be a string of at most {MAX_CLIENT_NAME} characters")
    grant_types = data.get("grant_types", ["authorization_code"])
    if (
        not isinstance(grant_types, list)
        or not all(isinstance(g, str) for g in grant_types)
        or not set(grant_types) <= GRANT_TYPES
        or "authorization_code" not in grant_types
    ):
        return _invalid("grant_types must be authorization_code, optionally with refresh_token")
    response_types = data.get("response_types", ["code"])
    if response_types != ["code"]:
        return _invalid('response_types must be ["code"]')
    scope = data.get("scope", "")
    if not isinstance(scope, str) or not set(scope.split()) <= set(MCP_SCOPES) | {"offline_access"}:
        return _invalid(f"scope may only name {', '.join(MCP_SCOPES)}")
    return None


@method_decorator(csrf_exempt, name="dispatch")
class RegistrationView(BuiltinOnly, DynamicClientRegistrationView):
    """RFC 7591 dynamic client registration, open to anyone while the built-in server is on."""

    def post(self, request, *args, **kwargs):
        return registration_problem(request) or super().post(request, *args, **kwargs)


@method_decorator(csrf_exempt, name="dispatch")
class RegistrationManagementView(BuiltinOnly, DynamicClientRegistrationManagementView):
    """RFC 7592 read/update/delete with the registration access token; updates are bounded alike."""

    def put(self, request, *args, **kwargs):
        return registration_problem(request, creating=False) or super().put(request, *args, **kwargs)


class AuthorizationView(BuiltinOnly, dot_views.AuthorizationView):
    """Login, then the consent page naming the client and the scopes it asks for."""

    cors = False  # a page for people, with their session cookie

    template_name = "oauth/consent.html"

    def _foreign_resource(self, values: list[str]) -> str | None:
        ours = resource_uri_of(mcp_auth_get())
        for value in values:
            if value.rstrip("/") != ours.rstrip("/"):
                return value
        return None

    def get(self, request, *args, **kwargs):
        foreign = self._foreign_resource(request.GET.getlist("resource"))
        if foreign:
            return render(
                request,
                "oauth/error.html",
                {
                    "error": "invalid_target",
                    "description": f"this server issues tokens only for {resource_uri_of(mcp_auth_get())}",
                },
                status=400,
            )
        try:
            _, credentials = self.validate_authorization_request(request)
        except OAuthToolkitError:
            return super().get(request, *args, **kwargs)  # django-oauth-toolkit answers the error
        if credentials.get("code_challenge_method") != "S256":
            # Refused before anyone is asked to consent (the toolkit would only refuse `plain`
            # when issuing the code, after the consent page).
            application = get_application_model().objects.get(client_id=credentials["client_id"])
            params = [
                ("error", "invalid_request"),
                ("error_description", 'PKCE with code_challenge_method "S256" is required'),
            ]
            if credentials.get("state"):
                params.append(("state", credentials["state"]))
            return self.redirect(add_params_to_uri(credentials["redirect_uri"], params), application)
        return super().get(request, *args, **kwargs)

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        redirect_uri = context.get("redirect_uri") or ""
        context["scope_items"] = list(
            zip(context.get("scopes", []), context.get("scopes_descriptions", []), strict=False)
        )
        context["redirect_host"] = urlsplit(redirect_uri).netloc or redirect_uri
        context["active"] = "oauth"
        return context

    def form_valid(self, form):
        resources = (form.cleaned_data.get("resource") or "").split()
        if self._foreign_resource(resources):  # the hidden field was tampered with
            return render(
                self.request,
                "oauth/error.html",
                {"error": "invalid_target", "description": "unknown resource"},
                status=400,
            )
        application = (
            get_application_model().objects.filter(client_id=form.cleaned_data.get("client_id")).first()
        )
        with transaction.atomic():
            response = super().form_valid(form)
            if application is not None:
                oauth_authorize_record(
                    actor=web_actor(self.request),
                    application=application,
                    scopes=(form.cleaned_data.get("scope") or "").split(),
                    allowed=bool(form.cleaned_data.get("allow")),
                    issued="code=" in (response.get("Location") or ""),
                )
        return response


@method_decorator(csrf_exempt, name="dispatch")
class TokenView(BuiltinOnly, dot_views.TokenView):
    """Authorization code (with the PKCE verifier) and refresh (rotating) grants."""


@method_decorator(csrf_exempt, name="dispatch")
class RevokeTokenView(BuiltinOnly, dot_views.RevokeTokenView):
    """RFC 7009 revocation of access and refresh tokens."""


@login_required
@require_http_methods(["GET", "POST"])
def authorized_clients(request):
    """The clients holding tokens: one's own, or the whole org's for admins, each revocable."""
    actor = web_actor(request)
    if request.method == "POST":
        try:
            count = oauth_client_revoke(
                actor=actor,
                user_id=request.POST.get("user_id"),
                application_id=request.POST.get("application_id"),
            )
        except NotFound as exc:
            raise Http404(exc.message) from None
        from django.contrib import messages

        messages.success(request, f"Access revoked ({count} token{'s' if count != 1 else ''}).")
        return HttpResponseRedirect(request.path)
    clients = oauth_clients_list(actor=actor)
    return render(
        request,
        "oauth/clients.html",
        {
            "clients": clients,
            "show_users": actor.is_admin,
            "oauth": mcp_auth_get(),
            "active": "oauth",
        },
    )
