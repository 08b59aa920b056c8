"""The "Connect your agent" page: the MCP URL, ready-to-paste client configs, personal API tokens.

Thin adapter over `governance.services` (`token_list`, `token_issue`, `token_revoke`, all with the
viewer as `actor`, audited there). A new token's value is rendered once, in the answer to the POST
that issued it, with `Cache-Control: no-store`; it is never stored, so it can never be shown again.
"""

from __future__ import annotations

import json

from django import forms
from django.conf import settings
from django.contrib import messages
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from gateway import upstream_identity
from gateway.web import role_label, web_actor, web_view
from governance.models import TokenCapability
from governance.oauth import mcp_auth_get
from governance.services import token_issue, token_list, token_revoke

EXPIRY_CHOICES = [("30", "30 days"), ("90", "90 days"), ("365", "1 year"), ("", "Never")]
PLACEHOLDER = "<your token>"


CAPABILITY_CHOICES = [
    (TokenCapability.READ_ONLY, "Read only"),
    (TokenCapability.READ_WRITE, "Read and write"),
    (TokenCapability.ADMIN, "All my roles (admin, auditor)"),
]


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, initial="my-agent")
    expires_days = forms.ChoiceField(choices=EXPIRY_CHOICES, required=False, initial="90", label="Expires")
    # A ceiling under the user's own roles, never above them (see TokenCapability).
    capability = forms.ChoiceField(choices=CAPABILITY_CHOICES, initial=TokenCapability.READ_WRITE)


def client_configs(mcp_url: str, token: str) -> list[dict]:
    """Snippets for the common MCP clients, with `token` filled in (or a placeholder)."""
    header = f"Authorization: Bearer {token}"
    mcp_json = {
        "mcpServers": {
            "portcullis": {"type": "http", "url": mcp_url, "headers": {"Authorization": f"Bearer {token}"}}
        }
    }
    cursor_json = {
        "mcpServers": {"portcullis": {"url": mcp_url, "headers": {"Authorization": f"Bearer {token}"}}}
    }
    return [
        {
            "id": "claude-code",
            "title": "Claude Code",
            "hint": "Run once in your terminal.",
            "text": f'claude mcp add --transport http portcullis {mcp_url} \\\n  --header "{header}"',
        },
        {
            "id": "mcp-json",
            "title": "Project .mcp.json (Claude Code, shared with your team)",
            "hint": "At the root of a project. Keep any file that holds a token out of version control.",
            "text": json.dumps(mcp_json, indent=2),
        },
        {
            "id": "cursor",
            "title": "Cursor (~/.cursor/mcp.json)",
            "hint": "Or .cursor/mcp.json in a project.",
            "text": json.dumps(cursor_json, indent=2),
        },
    ]


def _oauth_mode() -> str:
    """ "builtin", "external" or "" (off): whether clients can sign in without a token."""

    row = mcp_auth_get()
    return ("external" if row.issuer else "builtin") if row.enabled else ""


def _render(request, actor, form, new_token: str | None = None, status: int = 200):
    mcp_url = settings.PUBLIC_BASE_URL + "/api/mcp"
    now = timezone.now()
    tokens = [{"token": t, "usable": t.is_usable(now)} for t in token_list(actor=actor)]
    response = render(
        request,
        "connect.html",
        {
            "active": "connect",
            "viewer_role": role_label(actor),
            "mcp_url": mcp_url,
            "configs": client_configs(mcp_url, new_token or PLACEHOLDER),
            "new_token": new_token,
            "form": form,
            "tokens": tokens,
            "oauth": _oauth_mode(),
        },
        status=status,
    )
    return response


@never_cache
@web_view
def connect_view(request):
    """GET: the page. POST: issue a token for the viewer and show it once."""
    actor = web_actor(request)
    if request.method != "POST":
        return _render(request, actor, TokenForm())
    form = TokenForm(request.POST)
    if not form.is_valid():
        return _render(request, actor, form, status=400)
    days = form.cleaned_data["expires_days"]
    token, raw = token_issue(
        user=request.user,
        actor=actor,
        name=form.cleaned_data["name"],
        expires_days=int(days) if days else None,
        capability=form.cleaned_data["capability"],
    )
    messages.success(request, f'Token "{token.name}" issued. Copy it now: it will not be shown again.')
    return _render(request, actor, TokenForm(), new_token=raw)


@require_POST
@web_view
def token_revoke_view(request, token_id):
    """Revoke one of the viewer's own tokens (anyone else's is "token not found")."""
    token = token_revoke(actor=web_actor(request), token_id=token_id)
    messages.success(request, f'Token "{token.name}" ({token.prefix}…) is revoked.')
    return redirect("connect")


@require_GET
def jwks_view(request):
    """The public keys of the identity JWTs sent to upstream MCP servers (`gateway_jwt`), as a JWKS:
    every configured key, the signing one first (gateway/upstream_identity.py)."""
    response = JsonResponse(upstream_identity.jwks())
    response["Cache-Control"] = "public, max-age=300"
    return response
