"""Authentication of MCP callers, inside the SDK's TokenVerifier (so the SDK answers 401s with
the RFC 9728 `resource_metadata` pointer).

Personal API tokens (`pcu_...`) work in every state. Anything else is an OAuth access token, looked
at only while OAuth is on (`manage.py mcp_auth`): the built-in authorization server's opaque tokens
or an external issuer's JWTs, both checked in `governance.oauth`. The token's scopes travel on the
access token (`scopes`) and are enforced per tool in `mcpserver.scopes`.
"""

from __future__ import annotations

from channels.db import database_sync_to_async
from mcp.server.auth.provider import AccessToken
from pydantic import PrivateAttr

from governance.models import ApiToken
from governance.oauth import MCP_SCOPES, verify_oauth_token
from governance.policy import Actor
from governance.services import token_actor

API_TOKEN_SCOPES = list(MCP_SCOPES)  # an API token's limits are its capability, not scopes


class GatewayAccessToken(AccessToken):
    """The SDK's AccessToken, carrying the resolved actor (never serialised to clients)."""

    _actor: Actor | None = PrivateAttr(default=None)

    @property
    def actor(self) -> Actor | None:
        return self._actor


@database_sync_to_async
def _resolve(raw: str):
    return token_actor(raw, surface="mcp")


class GatewayTokenVerifier:
    async def verify_token(self, token: str) -> AccessToken | None:
        if not token.startswith(ApiToken.PREFIX):
            return await self._verify_oauth(token)
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

    async def _verify_oauth(self, token: str) -> AccessToken | None:
        caller = await database_sync_to_async(verify_oauth_token)(token)
        if caller is None:
            return None
        access = GatewayAccessToken(
            token="oauth",  # the raw token is not kept
            client_id=caller.client_id,
            scopes=list(caller.scopes),
            expires_at=caller.expires_at,
            resource=caller.resource,
            subject=str(caller.actor.user.pk),
        )
        access._actor = caller.actor
        return access
