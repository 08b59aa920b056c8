"""What every web view shares: the acting user as an `Actor` of surface `web`, and the one place
where domain errors become pages.

Web views are thin adapters (parse the request, call a service with `actor=`, render). They never
decide who may see what: the services do, through `governance.policy`. `web_errors` translates the
domain exceptions once for the whole web surface:

* `NotFound`     -> 404 with the service's message ("session not found"): the same page whether
                    the object is missing or belongs to someone the viewer may not see;
* `PolicyDenied` -> 403 with the message;
* `InvalidInput` -> 400 with the message, so bad input is a clear answer and never a 500.
"""

from __future__ import annotations

import functools

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from governance.errors import InvalidInput, NotFound, PolicyDenied, PortcullisError
from governance.policy import ROLE_ADMIN, ROLE_AUDITOR, Actor, has_role

__all__ = ["login_required", "web_actor", "web_errors", "web_view", "role_label"]

_STATUS = {NotFound: 404, PolicyDenied: 403, InvalidInput: 400}
_TITLES = {404: "Not found", 403: "Not allowed", 400: "Invalid request"}


def web_actor(request) -> Actor:
    """The logged-in user as an Actor; the client is the browser's user agent (capped)."""
    return Actor.for_user(request.user, surface="web", client=request.headers.get("User-Agent", "")[:200])


def role_label(actor: Actor) -> str:
    """What the page header says the viewer is (display only; decisions stay in the policy)."""
    if has_role(actor, ROLE_ADMIN):
        return "admin"
    if has_role(actor, ROLE_AUDITOR):
        return "auditor"
    return "member"


def error_page(request, status: int, message: str):
    return render(
        request,
        "error.html",
        {"status": status, "title": _TITLES.get(status, "Error"), "message": message},
        status=status,
    )


def web_errors(view):
    """Render the domain errors a service raises as an error page with the right status."""

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except PortcullisError as exc:
            status = next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 400)
            return error_page(request, status, exc.message)

    return wrapper


def web_view(view):
    """A logged-in page whose domain errors are rendered: `@web_view` on every web view."""
    return login_required(web_errors(view))
