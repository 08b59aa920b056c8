"""The REST API's one error translation: every error body is

    {"error": {"code": "<stable code>", "message": "<what to fix>", "fields": {...}?}}

Domain errors (`governance.errors`) keep their stable messages; "not found" and "not allowed to
see" are the same 404, so nothing leaks across orgs. Malformed JSON, wrong types and unknown
keys are 400s that name the field. Anything unexpected is logged and answered with a generic 500
body, never a traceback.
"""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response

from governance import errors

logger = logging.getLogger("portcullis.api")

DOMAIN_STATUS = {
    errors.NotFound: status.HTTP_404_NOT_FOUND,
    errors.PolicyDenied: status.HTTP_403_FORBIDDEN,
    errors.InvalidInput: status.HTTP_400_BAD_REQUEST,
    errors.Conflict: status.HTTP_409_CONFLICT,
    errors.ConnectorError: status.HTTP_502_BAD_GATEWAY,
    errors.GuardrailBlocked: status.HTTP_422_UNPROCESSABLE_ENTITY,
    errors.ReviewRequired: status.HTTP_409_CONFLICT,
}

DRF_CODES = {
    exceptions.ParseError: "invalid_json",
    exceptions.ValidationError: "invalid",
    exceptions.NotAuthenticated: "unauthenticated",
    exceptions.AuthenticationFailed: "unauthenticated",
    exceptions.PermissionDenied: "denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "throttled",
}


def error_body(code: str, message: str, fields: dict | None = None) -> dict:
    body = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    return {"error": body}


def _flatten(detail, prefix: str = "") -> dict[str, str]:
    """{"a": ["msg"], "b": {"c": ["msg"]}} -> {"a": "msg", "b.c": "msg"}."""
    if isinstance(detail, dict):
        out = {}
        for key, value in detail.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(detail, list):
        if detail and all(not isinstance(d, (dict, list)) for d in detail):
            return {prefix or "non_field_errors": str(detail[0])}
        out = {}
        for i, value in enumerate(detail):
            out.update(_flatten(value, f"{prefix}.{i}" if prefix else str(i)))
        return out
    return {prefix or "non_field_errors": str(detail)}


def exception_handler(exc, context):
    if isinstance(exc, errors.PortcullisError):
        code = DOMAIN_STATUS.get(type(exc))
        if code is None:
            code = next((s for cls, s in DOMAIN_STATUS.items() if isinstance(exc, cls)), 400)
        return Response(error_body(exc.code, exc.message), status=code)
    if isinstance(exc, Http404):
        return Response(error_body("not_found", "not found"), status=404)
    if isinstance(exc, DjangoPermissionDenied):
        return Response(error_body("denied", "not allowed"), status=403)
    if isinstance(exc, RequestDataTooBig):  # a body above DATA_UPLOAD_MAX_MEMORY_SIZE: the client's fault
        return Response(error_body("too_large", "request body too large"), status=413)
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        message = "invalid input: " + "; ".join(f"{k}: {v}" for k, v in list(fields.items())[:5])
        return Response(error_body("invalid", message, fields), status=400)
    if isinstance(exc, exceptions.APIException):
        code = next((c for cls, c in DRF_CODES.items() if isinstance(exc, cls)), "error")
        headers = {}
        if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
            authenticator = context["request"].successful_authenticator or None
            view = context.get("view")
            challenge = view.get_authenticate_header(context["request"]) if view else None
            if challenge and authenticator is None:
                headers["WWW-Authenticate"] = challenge
            status_code = 401 if challenge else exc.status_code
        else:
            status_code = exc.status_code
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(int(exc.wait))
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return Response(error_body(code, str(message)), status=status_code, headers=headers)
    logger.exception("REST API request crashed", exc_info=exc)
    return Response(error_body("internal", "internal error; the gateway log has details"), status=500)
