"""drf-spectacular extensions: how the OpenAPI schema describes our authentication and our output
shapes (the pydantic models of gateway/shapes.py)."""

from drf_spectacular.contrib.pydantic import PydanticExtension
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ResolvedComponent
from pydantic.json_schema import model_json_schema


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


class ShapeExtension(PydanticExtension):
    """drf-spectacular's pydantic support, in the OpenAPI version we publish (3.0): pydantic writes
    JSON Schema 2020-12, where an optional value is `anyOf: [X, {type: null}]`; OpenAPI 3.0 says
    `nullable: true` instead, has no `const`, and wants `items` on every array."""

    priority = 1  # before drf-spectacular's own extension for the same models

    def map_serializer(self, auto_schema, direction):
        schema = model_json_schema(
            self.target, ref_template="#/components/schemas/{model}", mode="serialization"
        )
        schema = _openapi30(schema)
        for name, sub in schema.pop("$defs", {}).items():
            component = ResolvedComponent(name=name, type=ResolvedComponent.SCHEMA, object=name, schema=sub)
            auto_schema.registry.register_on_missing(component)
        return schema


def _openapi30(node):
    if isinstance(node, list):
        return [_openapi30(x) for x in node]
    if not isinstance(node, dict):
        return node
    node = {k: (v if k == "properties" else _openapi30(v)) for k, v in node.items()}
    if "properties" in node:
        node["properties"] = {name: _openapi30(sub) for name, sub in node["properties"].items()}
    node.pop("title", None)  # pydantic's titles repeat the property's or the component's name
    if "const" in node:
        node["enum"] = [node.pop("const")]
    kinds = node.get("type")
    if isinstance(kinds, list) and "null" in kinds and len(kinds) == 2:
        node["type"] = next(k for k in kinds if k != "null")
        node["nullable"] = True
    either = node.get("anyOf")
    if isinstance(either, list) and {"type": "null"} in either:
        rest = [x for x in either if x != {"type": "null"}]
        node.pop("anyOf")
        if len(rest) == 1 and "$ref" not in rest[0]:
            node = {**rest[0], **node}
        else:
            node["anyOf" if len(rest) > 1 else "allOf"] = rest
        node["nullable"] = True
    if node.get("type") == "array":
        node.setdefault("items", {})  # 3.0 wants items on every array; {} is any value
    return node
