"""What every web view shares: the acting user as an `Actor` of surface `web`."""

from django.contrib.auth.decorators import login_required

from governance.policy import Actor

__all__ = ["login_required", "web_actor"]


def web_actor(request) -> Actor:
    """The logged-in user as an Actor; the client is the browser's user agent (capped)."""
    return Actor.for_user(request.user, surface="web", client=request.headers.get("User-Agent", "")[:200])
