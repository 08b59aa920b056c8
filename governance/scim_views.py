"""SCIM 2.0 endpoints under /scim/v2/<slug>/ (thin over `governance.scim`): bearer secret of the
slug's org, JSON in and out (`application/scim+json`), errors in the RFC 7644 shape, never a 500
for bad input."""

from __future__ import annotations

import json

from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt

from governance import scim

CONTENT_TYPE = "application/scim+json"
MAX_BODY = 1024 * 1024


def _json(data, status: int = 200) -> HttpResponse:
    return HttpResponse(json.dumps(data), status=status, content_type=CONTENT_TYPE)


def _body(request) -> dict:
    if len(request.body) > MAX_BODY:
        raise scim.ScimError(413, "request body too large")
    try:
        data = json.loads(request.body or b"{}")
    except (ValueError, RecursionError):
        raise scim.ScimError(400, "the body must be JSON", "invalidSyntax") from None
    if not isinstance(data, dict):
        raise scim.ScimError(400, "the body must be a JSON object", "invalidSyntax")
    return data


def scim_endpoint(handler):
    @csrf_exempt
    def view(request, slug: str, *args, **kwargs):
        try:
            idp = scim.scim_org_for(slug, request.headers.get("Authorization", ""))
            return handler(request, idp, *args, **kwargs)
        except scim.ScimError as exc:
            response = _json(exc.body(), status=exc.status)
            if exc.status == 401:
                response["WWW-Authenticate"] = 'Bearer realm="scim"'
            return response

    return view


def _method_not_allowed():
    return _json(scim.ScimError(405, "method not allowed").body(), status=405)


@scim_endpoint
def users(request, idp):
    if request.method == "GET":
        return _json(scim.user_list(idp, request.GET))
    if request.method == "POST":
        user = scim.user_create(idp, _body(request))
        return _json(scim.user_resource(idp, user), status=201)
    return _method_not_allowed()


@scim_endpoint
def user(request, idp, user_id: str):
    if request.method == "GET":
        return _json(scim.user_resource(idp, scim.user_get(idp, user_id)))
    if request.method == "PUT":
        return _json(scim.user_resource(idp, scim.user_replace(idp, user_id, _body(request))))
    if request.method == "PATCH":
        return _json(scim.user_resource(idp, scim.user_patch(idp, user_id, _body(request))))
    if request.method == "DELETE":
        scim.user_delete(idp, user_id)
        return HttpResponse(status=204)
    return _method_not_allowed()


@scim_endpoint
def groups(request, idp):
    if request.method == "GET":
        return _json(scim.group_list(idp, request.GET))
    if request.method == "POST":
        return _json(scim.group_resource(idp, scim.group_create(idp, _body(request))), status=201)
    return _method_not_allowed()


@scim_endpoint
def group(request, idp, group_id: str):
    if request.method == "GET":
        return _json(scim.group_resource(idp, scim.group_get(idp, group_id)))
    if request.method == "PUT":
        return _json(scim.group_resource(idp, scim.group_replace(idp, group_id, _body(request))))
    if request.method == "PATCH":
        return _json(scim.group_resource(idp, scim.group_patch(idp, group_id, _body(request))))
    if request.method == "DELETE":
        scim.group_delete(idp, group_id)
        return HttpResponse(status=204)
    return _method_not_allowed()


@scim_endpoint
def service_provider_config(request, idp):
    return _json(scim.service_provider_config())
