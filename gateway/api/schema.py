"""drf-spectacular extensions: how the OpenAPI schema describes our authentication."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema


class TokenAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "gateway.api.auth.TokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A personal API token (`manage.py token_issue`), the same as for MCP.",
        }


class PortcullisAutoSchema(AutoSchema):
    """Our list views answer a page object (not a bare array), so drf-spectacular cannot tell them
    from detail views; name their GET operations `<resource>_list`."""

    def get_operation_id(self):
        operation_id = super().get_operation_id()
        if self.method == "GET" and type(self.view).__name__.endswith("ListView"):
            return operation_id.removesuffix("_retrieve") + "_list"
        return operation_id
