"""REST API throttles: per token and per org, counted in Redis by `gateway.ratelimit` (the
`limits` library). DRF answers 429 and the API's error handler adds Retry-After.

DRF's own SimpleRateThrottle keeps a list of timestamps in the cache and writes it back without
a lock, so concurrent replicas undercount; `limits`' moving window is one atomic script in Redis.
"""

from __future__ import annotations

from django.conf import settings
from rest_framework.throttling import BaseThrottle

from gateway import metrics, ratelimit
from governance.policy import Actor


class _LimitsThrottle(BaseThrottle):
    setting = ""
    scope = ""

    def __init__(self):
        self.item = ratelimit.parse_rate(getattr(settings, self.setting), f"PORTCULLIS_{self.setting}")
        self.retry_after: float | None = None

    def key(self, actor: Actor) -> str | None:
        raise NotImplementedError

    def allow_request(self, request, view) -> bool:
        actor = getattr(request, "auth", None)
        if self.item is None or not isinstance(actor, Actor):
            return True  # unauthenticated requests are refused with 401 before any work
        if getattr(request, "_portcullis_throttled", False):
            return True  # refused by the token's limit already: not counted against the org
        key = self.key(actor)
        if key is None:
            return True
        self.retry_after = ratelimit.take(self.item, self.scope, key)
        if self.retry_after is None:
            return True
        metrics.RATE_LIMITED.labels(self.scope).inc()
        request._portcullis_throttled = True
        return False

    def wait(self) -> float | None:
        return self.retry_after


class ApiTokenThrottle(_LimitsThrottle):
    """PORTCULLIS_API_RATE_PER_TOKEN requests per token (a web session has no token: not counted here)."""

    setting = "API_RATE_PER_TOKEN"
    scope = "api_token"

    def key(self, actor: Actor) -> str | None:
        return str(actor.token_id) if actor.token_id else None


class ApiOrgThrottle(_LimitsThrottle):
    """PORTCULLIS_API_RATE_PER_ORG requests per org, all its tokens together."""

    setting = "API_RATE_PER_ORG"
    scope = "api_org"

    def key(self, actor: Actor) -> str | None:
        return str(actor.org_id)
