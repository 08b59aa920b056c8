"""The tool registry: each tool is declared once with its arguments model, result model, role
and annotations, and is a thin call into a service. `mcpserver.server` serves the registry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from mcp.types import ToolAnnotations
from pydantic import BaseModel, ConfigDict

from gateway.shapes import Shape
from governance.models import TokenCapability
from governance.policy import ROLE_ANY, Actor, capability_allows, has_role


class Args(BaseModel):
    """Base of every tool's arguments: unknown keys are rejected, not ignored."""

    model_config = ConfigDict(extra="forbid")


# Every tool's result model is an output shape (gateway/shapes.py): the entities' shapes are the REST
# API's too, and the MCP-only results are declared on the same base (unknown keys refused).
Result = Shape


def shared(owner: str) -> ConfigDict:
    """The config of a record model that several tools return: only `owner` (the tool that reads one
    record, e.g. reviews_get) carries its full schema; every other tool's outputSchema names it
    (`compact_schema`). Same record, one definition, instead of the same schema five times."""
    return ConfigDict(extra="forbid", json_schema_extra={SHARED_KEY: owner})


SHARED_KEY = "x-shared"
# JSON Schema keywords that validate nothing an agent needs to read: titles repeat the property
# name, and `default: null` is what "not required" already says.
_NOISE = ("title", SHARED_KEY)
# Output schemas say which fields come back and their types; what a field means is in the tool's
# description or the owner tool's; a string's format (date-time, uuid: for the OpenAPI schema, see
# gateway/shapes.py) is what its name says. String lengths are checked by the server and cost every agent
# bytes in its context, so they are not listed (numeric bounds such as limit <= 100 are).
_OUTPUT_NOISE = ("required", "description", "format")
_INPUT_NOISE = ("minLength", "maxLength")
# Bounds above this are sanity caps (an offset of 10000, a million rows, 64 MiB of output), checked by
# the server; the bounds an agent works within (limit <= 100, timeout <= 300 s) are listed.
_CAP = 1000


def compact_schema(schema: dict, *, tool: str, output: bool, fields_as: str | None = None) -> dict:
    """A tool's schema as tools/list sends it: the same types, a fraction of the bytes.

    * titles go, and defaults an agent assumes anyway (null, false, 0, empty); `anyOf [X, null]`
      becomes `type: [X, "null"]` in an output, X alone in an argument;
    * a shared record (see `shared`) is described in full by its owner tool only, and as
      `{"type": "object", "description": "As in <owner>."}` by the others;
    * $defs used once are inlined, unused ones dropped;
    * output schemas keep types (null included) but drop descriptions and `required` (an output
      schema states what comes back);
    * input schemas keep descriptions and the numeric bounds an agent works within, not string
      lengths nor sanity caps (the server checks them), and an optional argument is typed without
      `null` (leave it out instead);
    * no `additionalProperties`: the server refuses an unknown argument and names it, so `false`
      in every schema (1.5 KB of an admin's listing) told an agent nothing it would not learn;
    * an enum is typed by its values: no `type` beside it;
    * `fields_as` (an update tool whose fields are its create tool's): the arguments stay typed, their
      descriptions are said once, by the create tool.
    """
    defs = schema.get("$defs", {})

    def walk(node):
        if isinstance(node, list):
            return [walk(x) for x in node]
        if not isinstance(node, dict):
            return node
        owner = node.get(SHARED_KEY)
        if owner and owner != tool:
            return {"type": "object", "description": f"As in {owner}."}
        out: dict = {}
        for key, value in node.items():
            if key in _NOISE or key == "$defs" or (key == "default" and _obvious_default(value)):
                continue
            if key == "additionalProperties" and value in (True, False):
                continue  # true is the default; false is enforced by the server, which names the key
            if key in (_OUTPUT_NOISE if output else _INPUT_NOISE):
                continue
            if key == "minimum" and value in (0, 1) and node.get("type") in ("integer", "number"):
                continue  # a count, an offset, a timeout: its lower bound says nothing an agent needs
            if key in ("maximum", "maxItems") and isinstance(value, int) and value > _CAP:
                continue  # a sanity cap no ordinary call reaches; the server names it when one does
            if key == "properties":
                out[key] = {name: walk(sub) for name, sub in value.items()}
            else:
                out[key] = walk(value)
        if set(out) == {"$ref"}:
            return out
        if "enum" in out and "type" in out:
            del out["type"]  # the listed values say it (and null, when null is one of them)
        return _optional(out, output)

    body = walk(schema)
    new_defs = {name: walk(sub) for name, sub in defs.items()}
    uses: dict[str, int] = {}

    def count(node):
        if isinstance(node, list):
            for x in node:
                count(x)
        elif isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                uses[ref[8:]] = uses.get(ref[8:], 0) + 1
            for v in node.values():
                count(v)

    count(body)
    for sub in new_defs.values():
        count(sub)

    def inline(node, seen=()):
        if isinstance(node, list):
            return [inline(x, seen) for x in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref[8:]
            if uses.get(name) == 1 and name not in seen and name in new_defs:
                extra = {k: v for k, v in node.items() if k != "$ref"}
                return {**inline(new_defs[name], (*seen, name)), **extra}
            return node
        return {k: inline(v, seen) for k, v in node.items()}

    body = _tidy(inline(body), output)
    if fields_as:
        body = _without_descriptions(body, keep=("id",))
        body["description"] = f"As in {fields_as}; only those given change."
    kept = {
        name: _tidy(inline(sub, (name,)), output) for name, sub in new_defs.items() if uses.get(name, 0) > 1
    }
    if kept:
        body["$defs"] = kept
    return body


def _optional(node: dict, output: bool) -> dict:
    """`anyOf [X, null]` as one schema: an output says `type: [X, "null"]` (or null among an enum's
    values); an argument is typed as X alone (leaving it out is how an agent says "none")."""
    either = node.get("anyOf")
    if not either or len(either) != 2 or {"type": "null"} not in either:
        return node
    other = next(x for x in either if x != {"type": "null"})
    if "$ref" in other or not (isinstance(other.get("type"), str) or "enum" in other):
        return node
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    if not output:
        return {**other, **rest}
    if "enum" in other:
        return {**other, "enum": [*other["enum"], None], **rest}
    return {**other, "type": [other["type"], "null"], **rest}


def _tidy(node, output: bool):
    """`_optional` again once single-use definitions are inlined (an optional nested model)."""
    if isinstance(node, list):
        return [_tidy(x, output) for x in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: ({n: _tidy(v, output) for n, v in sub.items()} if k == "properties" else _tidy(sub, output))
        for k, sub in node.items()
    }
    return _optional(out, output)


def _obvious_default(value) -> bool:
    """A default an agent assumes anyway when it leaves an argument out: none, false, zero, empty."""
    return value is None or (value in (False, 0, "", [], {}) and not isinstance(value, float))


def page(items: list, total: int, offset: int) -> dict:
    """The pagination fields every list tool answers with."""
    end = offset + len(items)
    more = end < total
    return {"items": items, "total": total, "has_next_page": more, "next_offset": end if more else None}


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    args: type[Args]
    result: type[Result]
    handler: Callable[..., Awaitable[Result]]
    role: str = ROLE_ANY
    read_only: bool = True
    destructive: bool = False
    idempotent: bool = False
    render: Callable[[Result], str] | None = None
    title: str | None = None
    # The token capability a caller needs (see governance.policy): read-only tools need read_only,
    # writes read_write, unless the tool enforces the ceiling itself (exec runs reads only).
    capability: str = TokenCapability.READ_WRITE
    # An update tool whose arguments are its create tool's: described once, by that tool.
    fields_as: str | None = None

    @property
    def annotations(self) -> ToolAnnotations:
        # Only hints that differ from the MCP defaults (readOnly false, destructive true, idempotent
        # false) are sent; a client reads an absent hint as its default, so this says the same in
        # fewer bytes. destructive and idempotent mean something only for tools that change state.
        # openWorldHint stays at its default (true), the cautious reading: exec, schema browsing,
        # connection tests and upstream calls reach systems outside the gateway, and 22 bytes per
        # tool of "false" on the others bought an agent nothing (issue 15's tools/list budget).
        if self.read_only:
            return ToolAnnotations(read_only_hint=True)
        hints: dict = {}
        if not self.destructive:
            hints["destructive_hint"] = False
        if self.idempotent:
            hints["idempotent_hint"] = True
        return ToolAnnotations(**hints)


def tool_allowed(actor: Actor, spec: ToolSpec) -> bool:
    """The caller's role and their token's capability both reach the tool."""
    return has_role(actor, spec.role) and capability_allows(actor, spec.capability)


def _without_descriptions(node, keep=()):
    if isinstance(node, list):
        return [_without_descriptions(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "description":
            continue
        if key == "properties":
            out[key] = {n: sub if n in keep else _without_descriptions(sub) for n, sub in value.items()}
        else:
            out[key] = _without_descriptions(value)
    return out


TOOLS: dict[str, ToolSpec] = {}


def tool(
    name: str,
    *,
    description: str,
    args: type[Args],
    result: type[Result],
    role: str = ROLE_ANY,
    read_only: bool = True,
    destructive: bool = False,
    idempotent: bool = False,
    render: Callable[[Any], str] | None = None,
    title: str | None = None,
    capability: str | None = None,
    fields_as: str | None = None,
):
    """Register `handler(actor, args, ctx) -> result` as the MCP tool `name`."""

    def decorate(handler):
        if name in TOOLS:
            raise RuntimeError(f"tool {name} registered twice")
        TOOLS[name] = ToolSpec(
            name=name,
            description=description,
            args=args,
            result=result,
            handler=handler,
            role=role,
            read_only=read_only,
            destructive=destructive,
            idempotent=idempotent,
            render=render,
            title=title,
            capability=capability or (TokenCapability.READ_ONLY if read_only else TokenCapability.READ_WRITE),
            fields_as=fields_as,
        )
        return handler

    return decorate
