"""The tool registry: each tool is declared once with its arguments model, result model, role
and annotations, and is a thin call into a service. `mcpserver.server` serves the registry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from mcp.types import ToolAnnotations
from pydantic import BaseModel, ConfigDict

from governance.models import TokenCapability
from governance.policy import ROLE_ANY


class Args(BaseModel):
    """Base of every tool's arguments: unknown keys are rejected, not ignored."""

    model_config = ConfigDict(extra="forbid")


class Result(BaseModel):
    model_config = ConfigDict(extra="forbid")


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

    @property
    def annotations(self) -> ToolAnnotations:
        return ToolAnnotations(
            title=self.title,
            read_only_hint=self.read_only,
            destructive_hint=self.destructive if not self.read_only else False,
            idempotent_hint=self.idempotent or self.read_only,
            open_world_hint=False,
        )


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
        )
        return handler

    return decorate
