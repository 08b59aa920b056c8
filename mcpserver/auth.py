"""Authentication of MCP callers, inside the SDK's TokenVerifier (so the SDK answers 401s with
the RFC 9728 `resource_metadata` pointer). Personal API tokens today; OAuth JWTs join here.
"""

from __future__ import annotations

from channels.db import database_sync_to_async
from mcp.server.auth.provider import AccessToken
from pydantic import PrivateAttr

from governance.policy import Actor
from governance.services import token_authenticate

API_TOKEN_SCOPES = ["mcp:read", "mcp:exec", "mcp:admin"]


class GatewayAccessToken(AccessToken):
    """The SDK's AccessToken, carrying the resolved actor (never serialised to clients)."""

    _actor: Actor | None = PrivateAttr(default=None)

    @property
    def actor(self) -> Actor | None:
        return self._actor


@database_sync_to_async
def _resolve(raw: str):
    found = token_authenticate(raw)
    if found is None:
        return None
    user, token = found
    actor = Actor.for_token(user, token, surface="mcp")
    return actor, token


class GatewayTokenVerifier:
    async def verify_token(self, token: str) -> AccessToken | None:
        resolved = await _resolve(token)
        if resolved is None:
            return None
        actor, api_token = resolved
        access = GatewayAccessToken(
            token=api_token.prefix,  # never keep the raw secret in memory longer than needed
            client_id=f"api-token:{api_token.pk}",
            scopes=API_TOKEN_SCOPES,
            expires_at=int(api_token.expires_at.timestamp()) if api_token.expires_at else None,
            subject=str(actor.user.pk),
        )
        access._actor = actor
        return access
