"""Admin operations that were only in the Django admin: runbooks_create|update|delete and
webhooks_list|create|update|delete. Thin calls into the same services the admin and REST use;
webhook secrets are write-only (`has_secret` says whether one is set)."""

from __future__ import annotations

from typing import Annotated, Any

from channels.db import database_sync_to_async as db
from pydantic import Field

from gateway import runbooks
from governance.policy import ROLE_ADMIN
from mcpserver.registry import Args, Result, shared, tool
from mcpserver.tools.rule_crud import Kind, register_kind
from sessions import webhooks

Ref = Annotated[str, Field(min_length=1, max_length=63)]


class RunbookAdminOut(Result):
    model_config = shared("runbooks_create")

    id: str
    name: str
    connection_name: str
    description: str
    parameters: list[dict[str, Any]]
    template: str
    enabled: bool
    updated_at: str


class RunbookCreate(Args):
    connection_name: Ref
    name: Ref
    template: str = Field(
        min_length=1, max_length=100_000, description="SQL or a command with {{parameter}} placeholders."
    )
    # runbooks_run's `parameters` are values; these are the declarations (one name, one type).
    parameter_specs: list[dict[str, Any]] | None = Field(
        None,
        max_length=50,
        description="Each: name, type (string|integer|number|boolean|enum|identifier), ...",
    )
    description: str | None = Field(None, max_length=500)
    enabled: bool | None = None


class RunbookUpdate(Args):
    connection_name: Ref
    runbook_name: Ref
    name: Ref | None = None
    template: str | None = Field(None, min_length=1, max_length=100_000)
    parameter_specs: list[dict[str, Any]] | None = Field(None, max_length=50)
    description: str | None = Field(None, max_length=500)
    enabled: bool | None = None


class RunbookRef(Args):
    connection_name: Ref
    runbook_name: Ref


class Deleted(Result):
    name: str
    deleted: bool


@tool(
    "runbooks_create",
    description="Add a runbook to a connection; who may run it is set by runbook_rules.",
    args=RunbookCreate,
    result=RunbookAdminOut,
    role=ROLE_ADMIN,
    read_only=False,
)
async def runbooks_create(actor, args: RunbookCreate, ctx) -> RunbookAdminOut:
    fields = args.model_dump(exclude_none=True)
    if "parameter_specs" in fields:
        fields["parameters"] = fields.pop("parameter_specs")

    @db
    def run():
        return runbooks.runbook_to_dict(runbooks.runbook_create(actor=actor, **fields))

    return RunbookAdminOut(**await run())


@tool(
    "runbooks_update",
    description="Change a runbook.",
    args=RunbookUpdate,
    result=RunbookAdminOut,
    role=ROLE_ADMIN,
    read_only=False,
    idempotent=True,
    fields_as="runbooks_create",
)
async def runbooks_update(actor, args: RunbookUpdate, ctx) -> RunbookAdminOut:
    fields = args.model_dump(exclude_none=True, exclude={"connection_name", "runbook_name", "name"})
    if args.name:
        fields["new_name"] = args.name
    if "parameter_specs" in fields:
        fields["parameters"] = fields.pop("parameter_specs")

    @db
    def run():
        runbook = runbooks.runbook_update(
            actor=actor, connection_name=args.connection_name, name=args.runbook_name, **fields
        )
        return runbooks.runbook_to_dict(runbook)

    return RunbookAdminOut(**await run())


@tool(
    "runbooks_delete",
    description="Delete a runbook.",
    args=RunbookRef,
    result=Deleted,
    role=ROLE_ADMIN,
    read_only=False,
    destructive=True,
)
async def runbooks_delete(actor, args: RunbookRef, ctx) -> Deleted:
    await db(
        lambda: runbooks.runbook_delete(
            actor=actor, connection_name=args.connection_name, name=args.runbook_name
        )
    )()
    return Deleted(name=args.runbook_name, deleted=True)


class WebhookOut(Result):
    model_config = shared("config_get")

    id: str
    name: str
    url: str
    event_types: list[str]
    enabled: bool
    allow_private_network: bool
    has_secret: bool
    created_at: str
    updated_at: str


class WebhookCreate(Args):
    name: Ref
    url: str = Field(min_length=1, max_length=2000)
    secret: str = Field(min_length=16, max_length=500, description="HMAC key; write-only, never returned.")
    event_types: list[str] | None = Field(None, max_length=50, description="Empty: every event type.")
    enabled: bool = True
    allow_private_network: bool = False


class WebhookChanges(Args):
    name: Ref | None = None
    url: str | None = Field(None, min_length=1, max_length=2000)
    secret: str | None = Field(None, min_length=16, max_length=500)
    event_types: list[str] | None = Field(None, max_length=50)
    enabled: bool | None = None
    allow_private_network: bool | None = None


def _webhooks_page(actor, limit, offset):
    items, total = webhooks.webhook_endpoint_list(actor=actor, limit=limit, offset=offset)
    return [webhooks.webhook_endpoint_to_dict(e) for e in items], total


def _webhook_update(actor, ref, changes):
    fields = WebhookChanges.model_validate(changes).model_dump(exclude_none=True)
    secret = fields.pop("secret", None)
    endpoint = webhooks.webhook_endpoint_update(actor=actor, endpoint_id=ref, secret=secret, **fields)
    return webhooks.webhook_endpoint_to_dict(endpoint)


def _webhook_delete(actor, ref):
    webhooks.webhook_endpoint_delete(actor=actor, endpoint_id=ref)
    return ref


register_kind(
    Kind(
        name="webhook",
        what="webhook endpoint",
        create_tool="webhooks_create",
        out=WebhookOut,
        list=_webhooks_page,
        get=lambda actor, ref: webhooks.webhook_endpoint_to_dict(
            webhooks.webhook_endpoint_get(actor=actor, endpoint_id=ref)
        ),
        update=_webhook_update,
        delete=_webhook_delete,
    )
)


@tool(
    "webhooks_create",
    description="Add an endpoint the org's events are POSTed to, signed with the secret (never returned).",
    args=WebhookCreate,
    result=WebhookOut,
    role=ROLE_ADMIN,
    read_only=False,
)
async def webhooks_create(actor, args: WebhookCreate, ctx) -> WebhookOut:
    @db
    def run():
        return webhooks.webhook_endpoint_to_dict(
            webhooks.webhook_endpoint_create(actor=actor, **args.model_dump())
        )

    return WebhookOut(**await run())
