"""Webhook signatures in the Standard Webhooks format (https://www.standardwebhooks.com), made with
the `standardwebhooks` library, so receivers verify with any off-the-shelf verifier.

Each delivery carries `webhook-id` (the event id: the same on every retry, for deduplication),
`webhook-timestamp` (Unix seconds) and `webhook-signature` (`v1,<base64 HMAC-SHA256 of
"<id>.<timestamp>.<body>">`).

The signing key is the endpoint's secret: a `whsec_<base64>` secret (what the spec recommends, and
what a Standard Webhooks receiver library generates) is base64-decoded; any other secret is used
as its UTF-8 bytes, which a receiver passes as bytes: `Webhook(secret.encode())`, or as the
string `"whsec_" + base64(secret)` (docs/events-and-export.md).
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

PREFIX = "whsec_"
ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER = "webhook-id", "webhook-timestamp", "webhook-signature"


def signing_key(secret: str) -> bytes:
    """The HMAC key of an endpoint secret. Raises ValueError for a `whsec_` value that is not base64."""
    if secret.startswith(PREFIX):
        try:
            key = base64.b64decode(secret[len(PREFIX) :] + "==", validate=False)
        except (binascii.Error, ValueError):
            raise ValueError("a secret starting with whsec_ must be base64 after the prefix") from None
        if len(key) < 16:
            raise ValueError("a whsec_ secret must decode to at least 16 bytes")
        return key
    return secret.encode()


def receiver_secret(secret: str) -> str:
    """The secret in the `whsec_<base64>` form a receiver's library takes as a string."""
    return secret if secret.startswith(PREFIX) else PREFIX + base64.b64encode(secret.encode()).decode()


def sign_headers(secret: str, *, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt."""
    signature = Webhook(signing_key(secret)).sign(msg_id, datetime.fromtimestamp(timestamp, tz=UTC), body)
    return {ID_HEADER: msg_id, TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: signature}


def verify(secret: str, headers, body: bytes) -> bool:
    """What a receiver does, with the same library: signature and the 5-minute timestamp window."""
    from standardwebhooks.webhooks import WebhookVerificationError

    try:
        Webhook(signing_key(secret)).verify(body, dict(headers), json_parse=False)
    except (WebhookVerificationError, ValueError):
        return False
    return True
