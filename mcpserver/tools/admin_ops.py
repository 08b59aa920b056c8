"""Admin operations that were only in the Django admin: runbooks_create and webhooks_create, and the
runbook and webhook kinds of config_list|get|update|delete. Thin calls into the same services the admin and REST use;
webhook secrets are write-only (`has_secret` says whether one is set)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from channels.db import database_sync_to_async as db
from pydantic import Field

from gateway import runbooks, shapes
from governance.policy import ROLE_ADMIN
from mcpserver.registry import Args, Result, page, shared, tool
from mcpserver.tools.rule_crud import Kind, register_kind
from sessions import webhooks

Ref = Annotated[str, Field(min_length=1, max_length=63)]


class RunbookAdminOut(shapes.RunbookOut):
    model_config = shared("config_get")


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


class RunbookChanges(Args):
    name: Ref | None = None
    template: str | None = Field(None, min_length=1, max_length=100_000)
    parameter_specs: list[dict[str, Any]] | None = Field(None, max_length=50)
    description: str | None = Field(None, max_length=500)
    enabled: bool | None = None


@tool(
    "runbooks_create",
    description="Add a runbook (config name <connection>/<name>); runbook rules say who may run it.",
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


def _runbooks_page(actor, limit, offset):
    items, total = runbooks.runbook_admin_list(actor=actor, limit=limit, offset=offset)
    return [runbooks.runbook_to_dict(r) for r in items], total


def _runbook_get(actor, ref):
    connection_name, name = runbooks.split_ref(ref)
    return runbooks.runbook_to_dict(
        runbooks.runbook_get(actor=actor, connection_name=connection_name, name=name)
    )


def _runbook_update(actor, ref, changes):
    connection_name, name = runbooks.split_ref(ref)
    fields = RunbookChanges.model_validate(changes).model_dump(exclude_none=True)
    if "name" in fields:
        fields["new_name"] = fields.pop("name")
    if "parameter_specs" in fields:
        fields["parameters"] = fields.pop("parameter_specs")
    runbook = runbooks.runbook_update(actor=actor, connection_name=connection_name, name=name, **fields)
    return runbooks.runbook_to_dict(runbook)


def _runbook_delete(actor, ref):
    connection_name, name = runbooks.split_ref(ref)
    runbooks.runbook_delete(actor=actor, connection_name=connection_name, name=name)
    return ref


register_kind(
    Kind(
        name="runbook",
        what="runbook",
        create_tool="runbooks_create",
        out=RunbookAdminOut,
        list=_runbooks_page,
        get=_runbook_get,
        update=_runbook_update,
        delete=_runbook_delete,
    )
)


class WebhookOut(shapes.WebhookOut):
    model_config = shared("config_get")


class WebhookCreate(Args):
    name: Ref
    url: str = Field(min_length=1, max_length=2000)
    secret: str = Field(min_length=16, max_length=500, description="HMAC key, write-only.")
    event_types: list[str] | None = Field(None, max_length=50, description="Empty: all.")
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
    description="Add an endpoint the org's events are POSTed to, signed with the secret.",
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


DeliveryOut = shapes.DeliveryOut


class DeliveriesArgs(Args):
    webhook_name: Ref | None = None
    status: Literal["pending", "delivered", "failed", "dead"] | None = None
    retry: list[int] | None = Field(
        None,
        max_length=500,
        description="Failed or dead delivery ids to send again first.",
    )
    limit: Annotated[int, Field(ge=1, le=100)] = 50
    offset: Annotated[int, Field(ge=0, le=10_000)] = 0


class DeliveriesResult(Result):
    retried: int
    items: list[DeliveryOut]
    total: int
    has_next_page: bool
    next_offset: int | None


@tool(
    "webhooks_deliveries",
    description="The org's webhook deliveries, newest first.",
    args=DeliveriesArgs,
    result=DeliveriesResult,
    role=ROLE_ADMIN,
    read_only=False,
    idempotent=True,
)
async def webhooks_deliveries(actor, args: DeliveriesArgs, ctx) -> DeliveriesResult:
    @db
    def run():
        retried = webhooks.webhook_delivery_retry(actor=actor, delivery_ids=args.retry) if args.retry else 0
        items, total = webhooks.webhook_delivery_list(
            actor=actor,
            endpoint_id=args.webhook_name,
            status=args.status,
            limit=args.limit,
            offset=args.offset,
        )
        return retried, [webhooks.webhook_delivery_to_dict(d) for d in items], total

    retried, items, total = await run()
    return DeliveriesResult(retried=retried, **page(items, total, args.offset))
