"""The 401 challenge of /api/mcp, per RFC 6750 §3 and RFC 9728 §5.1.

The SDK answers every unauthenticated request with `error="invalid_token"`; RFC 6750 says a
request that sent no credentials gets no error code. This wrapper keeps the SDK's
`resource_metadata` pointer and states `invalid_token`, with a description that reveals nothing
about why, only when a bearer token was actually presented.
"""

from __future__ import annotations

import re

_METADATA = re.compile(rb'resource_metadata="([^"]+)"')


class BearerChallenge:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        presented = any(
            name == b"authorization" and value[:7].lower() == b"bearer " and value[7:].strip()
            for name, value in scope.get("headers", [])
        )

        async def send_challenge(message):
            if message["type"] == "http.response.start" and message.get("status") == 401:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"www-authenticate"]
                old = b" ".join(v for k, v in message.get("headers", []) if k.lower() == b"www-authenticate")
                parts = []
                if presented:
                    parts += [
                        b'error="invalid_token"',
                        b'error_description="The access token is invalid or expired"',
                    ]
                found = _METADATA.search(old)
                if found:
                    parts.append(b'resource_metadata="' + found.group(1) + b'"')
                headers.append((b"www-authenticate", b"Bearer " + b", ".join(parts) if parts else b"Bearer"))
                message = {**message, "headers": headers}
            await send(message)

        return await self.app(scope, receive, send_challenge)
