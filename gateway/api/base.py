"""What every REST view shares: pagination, strict input serializers and the base view."""

from __future__ import annotations

import base64
import binascii

from pydantic import BaseModel
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.views import APIView

from gateway.api.auth import ActorPermission
from governance.errors import InvalidInput
from governance.models import TokenCapability
from governance.policy import ROLE_ANY, Actor

MAX_LIMIT = 100
DEFAULT_LIMIT = 50
MAX_OFFSET = 10_000


# --- input ---------------------------------------------------------------------------------------


class StrictSerializer(serializers.Serializer):
    """An input serializer that refuses unknown keys (as MCP arguments do) instead of dropping them."""

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise ValidationError({"non_field_errors": ["expected a JSON object"]})
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise ValidationError({key: ["unknown field"] for key in unknown})
        return super().to_internal_value(data)


class Char(serializers.CharField):
    """A string field that takes only strings (DRF's CharField turns 5 into "5")."""

    default_error_messages = {"invalid": "Not a valid string."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


def parse(serializer_class, data, *, partial: bool = False) -> dict:
    serializer = serializer_class(data=data, partial=partial)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


# --- pagination ----------------------------------------------------------------------------------


def encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, value = raw.split(":", 1)
        offset = int(value)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidInput("invalid cursor; pass the next_cursor of the previous page") from None
    if kind != "o" or not 0 <= offset <= MAX_OFFSET:
        raise InvalidInput("invalid cursor; pass the next_cursor of the previous page")
    return offset


def page_body(request, items: list, total: int, offset: int) -> dict:
    """The page every list answers with: items, total, and the cursor of the next page."""
    end = offset + len(items)
    more = end < total and end <= MAX_OFFSET
    next_cursor = encode_cursor(end) if more else None
    next_url = None
    if next_cursor:
        query = request.query_params.copy()
        query["cursor"] = next_cursor
        next_url = request.build_absolute_uri(f"{request.path}?{query.urlencode()}")
    return {"items": items, "total": total, "next_cursor": next_cursor, "next": next_url}


# --- the base view -------------------------------------------------------------------------------

_READS = ("GET", "HEAD", "OPTIONS")


class ServiceView(APIView):
    """Parse, call a service with `actor=`, render. Subclasses declare `roles` ({method: role}) and
    optionally `capabilities` ({method: capability}); the permission class reads them."""

    permission_classes = [ActorPermission]
    roles: dict[str, str] = {}
    capabilities: dict[str, str] = {}

    @property
    def actor(self) -> Actor:
        return self.request.auth

    def role_for(self, method: str) -> str:
        return self.roles.get(method, self.roles.get("*", ROLE_ANY))

    def capability_for(self, method: str) -> str:
        if method in self.capabilities:
            return self.capabilities[method]
        return TokenCapability.READ_ONLY if method in _READS else TokenCapability.READ_WRITE

    def query(self, serializer_class) -> dict:
        return parse(serializer_class, self.request.query_params.dict())

    def finalize_response(self, request, response, *args, **kwargs):
        """Check a success body against the output shape the view documents (`answers`): the model
        MCP answers with, so a key one surface returns and the other lacks fails here (a server
        error), never silently. The body itself is the service's dict, unchanged."""
        code, shape = getattr(getattr(self, request.method.lower(), None), "answers", (None, None))
        if response.status_code == code and isinstance(shape, type) and issubclass(shape, BaseModel):
            shape.model_validate(response.data)
        return super().finalize_response(request, response, *args, **kwargs)
