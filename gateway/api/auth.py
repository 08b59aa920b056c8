"""Token authentication and the declarative permission of the REST API.

Kept apart from the views: DRF loads these classes from settings while `rest_framework.views`
is still importing, so this module must not import it.
"""

from __future__ import annotations

import dataclasses

from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import BasePermission

from gateway import logs
from governance.policy import Actor, capability_allows, capability_message, has_role, role_denied_message
from governance.services import token_actor
from sessions.audit import Outcome, audit_record

# --- authentication ------------------------------------------------------------------------------


class TokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer pcu_…` with a personal API token (the same tokens as MCP).

    `request.user` is the token's user and `request.auth` the `Actor` (surface `api`, client
    `token:<name>; <user agent>`, capped by the token's capability)."""

    def authenticate(self, request):
        header = get_authorization_header(request)
        if not header:
            return None
        try:
            parts = header.decode("ascii").split()
        except UnicodeDecodeError:
            raise AuthenticationFailed("malformed Authorization header") from None
        if not parts or parts[0].lower() != "bearer":
            return None  # not ours: unauthenticated, answered 401 with our challenge
        if len(parts) != 2:
            raise AuthenticationFailed("malformed Authorization header; use: Bearer pcu_…")
        found = token_actor(parts[1], surface="api")
        if found is None:
            raise AuthenticationFailed("invalid, expired or revoked token")
        actor, _ = found
        user = actor.user
        agent = request.META.get("HTTP_USER_AGENT", "")
        if agent:
            actor = dataclasses.replace(actor, client=f"{actor.client}; {agent}"[:200])
        logs.bind_actor(actor)
        return user, actor

    def authenticate_header(self, request):
        return 'Bearer realm="portcullis"'


# --- permission ----------------------------------------------------------------------------------


class ActorPermission(BasePermission):
    """Translates what a view declares into the policy's answer; decides nothing itself.

    A view declares `role` (per method, like an MCP tool's role) and the token capability a
    method needs (reads: read_only; writes: read_write unless the view says otherwise). A refusal
    here is audited (`api.request`, denied), as MCP audits a refused tool. The services check
    again: this is the surface's early answer, not the only check.
    """

    def has_permission(self, request, view):
        actor = getattr(request, "auth", None)
        if not isinstance(actor, Actor):
            return False  # -> 401 with the Bearer challenge
        role = view.role_for(request.method)
        capability = view.capability_for(request.method)
        message = None
        if not has_role(actor, role):
            message = role_denied_message(actor, role)
        elif not capability_allows(actor, capability):
            message = capability_message(capability)
        if message is None:
            return True
        audit_record(
            actor=actor,
            action="api.request",
            outcome=Outcome.DENIED,
            target_type="api.endpoint",
            target_repr=f"{request.method} {request.path}"[:200],
            detail={"reason": message},
        )
        self.message = message
        return False
