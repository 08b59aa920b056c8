"""Connections: the targets the gateway alone holds credentials for."""

import uuid

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

from gateway import crypto
from gateway.kinds import KINDS
from governance.models import BoundRule, Organization, UserGroup

NAME_VALIDATOR = RegexValidator(
    r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$",
    "use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit",
)


# The choices come from the kind records (gateway/kinds.py): a new kind is a new choice, and
# `makemigrations` writes the migration that lists it.
ConnectionKind = models.TextChoices(  # type: ignore[call-overload]
    "ConnectionKind", [(kind.name.upper(), (kind.name, kind.label)) for kind in KINDS.values()]
)


def _default_max_rows():
    return settings.DEFAULT_MAX_ROWS


def _default_max_output_bytes():
    return settings.DEFAULT_MAX_OUTPUT_BYTES


def _default_timeout():
    return settings.DEFAULT_TIMEOUT_SECONDS


class Connection(models.Model):
    """A target of one org. `config` holds non-secret settings; secrets are encrypted and write-only.

    No page, API or tool ever returns `secrets_encrypted` or its plaintext: callers see
    `secret_keys`, the names of the secrets that are set.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="connections")
    name = models.CharField(max_length=63, validators=[NAME_VALIDATOR])
    kind = models.CharField(max_length=16, choices=ConnectionKind.choices)
    description = models.CharField(max_length=500, blank=True)
    config = models.JSONField(default=dict, blank=True)
    secrets_encrypted = models.TextField(blank=True, default="", editable=False)
    secret_keys = models.JSONField(default=list, blank=True, editable=False)
    access_groups = models.ManyToManyField(
        UserGroup,
        blank=True,
        related_name="connections",
        help_text="Empty: every member of the org may use it. Otherwise only these groups (and admins).",
    )
    max_rows = models.PositiveIntegerField(
        default=_default_max_rows, validators=[MinValueValidator(1), MaxValueValidator(1_000_000)]
    )
    max_output_bytes = models.PositiveIntegerField(
        default=_default_max_output_bytes,
        validators=[MinValueValidator(1024), MaxValueValidator(64 * 1024 * 1024)],
    )
    timeout_seconds = models.PositiveIntegerField(
        default=_default_timeout, validators=[MinValueValidator(1), MaxValueValidator(24 * 3600)]
    )
    exec_enabled = models.BooleanField(default=True)
    schema_enabled = models.BooleanField(default=True)
    runbooks_enabled = models.BooleanField(default=True)
    agent_queue = models.CharField(
        max_length=63,
        blank=True,
        validators=[NAME_VALIDATOR],
        help_text="Run on the Celery workers of queue agent.ORG_ID.NAME (this organization's id, then this "
        "name), near the target; empty runs it in the gateway.",
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(Lower("name"), "org", name="connection_unique_name_ci_per_org")
        ]
        ordering = ["name"]

    def __str__(self):
        return self.name

    def get_secrets(self) -> dict:
        """Plaintext secrets, for the connector only. Never render or return this."""
        return crypto.decrypt_json(self.secrets_encrypted)

    def set_secrets(self, values: dict) -> None:
        clean = {k: v for k, v in values.items() if v not in (None, "")}
        self.secrets_encrypted = crypto.encrypt_json(clean) if clean else ""
        self.secret_keys = sorted(clean)


# --- upstream MCP servers (connection kind "mcp") ------------------------------------------------


class ContractStatus(models.TextChoices):
    ACCEPTED = "accepted"  # the upstream shows exactly the pinned contract
    CHANGED = "changed"  # its description or a schema differs from the pinned one: blocked
    ADDED = "added"  # appeared after the first listing: blocked until an admin accepts it
    REMOVED = "removed"  # no longer listed by the upstream


class ContractKind(models.TextChoices):
    TOOL = "tool"
    RESOURCE = "resource"  # named by its URI
    TEMPLATE = "template"  # a resource template, named by its URI template
    PROMPT = "prompt"


class UpstreamTool(models.Model):
    """The pinned contract of one tool (or resource, resource template, prompt: `kind`) of an
    upstream MCP server (trust on first sight).

    `pinned` is what an admin accepted (or what the first listing showed); `observed` is what
    the upstream showed last. A tool is callable only while its status is `accepted`; any drift
    blocks it until `upstream_contract_accept` pins the observed contract.
    """

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="upstream_tools")
    kind = models.CharField(max_length=16, choices=ContractKind.choices, default=ContractKind.TOOL)
    name = models.CharField(max_length=1024)
    status = models.CharField(max_length=16, choices=ContractStatus.choices)
    pinned = models.JSONField(null=True, blank=True)
    pinned_sha256 = models.CharField(max_length=64, blank=True)
    observed = models.JSONField(default=dict, blank=True)
    observed_sha256 = models.CharField(max_length=64, blank=True)
    first_seen_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["connection", "kind", "name"], name="upstream_contract_unique_per_connection"
            )
        ]
        ordering = ["kind", "name"]

    def __str__(self):
        return f"{self.name} ({self.status})"


class Runbook(models.Model):
    """A parameterized, pre-approved script for one connection (see `gateway.runbooks`).

    `template` holds `{{ name }}` placeholders; `parameters` declares each one's type and limits.
    Rendered values are quoted for the target (SQL literals in the connection's dialect, shell words
    for command connections), so a parameter cannot change what the script does.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="runbooks")
    name = models.CharField(max_length=63, validators=[NAME_VALIDATOR])
    description = models.CharField(max_length=500, blank=True)
    template = models.TextField()
    parameters = models.JSONField(default=list, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(Lower("name"), "connection", name="runbook_unique_name_ci_per_connection")
        ]
        ordering = ["name"]

    def __str__(self):
        return self.name


class RunbookRule(BoundRule):
    """Which groups may run which runbooks (names or globs) on the connections it binds."""

    groups = models.ManyToManyField(UserGroup, related_name="+")
    runbooks = models.JSONField(default=list, help_text='Runbook names or globs, e.g. ["restart-*"].')

    class Meta(BoundRule.Meta):
        constraints = [
            models.UniqueConstraint(Lower("name"), "org", name="runbookrule_unique_name_ci_per_org")
        ]


class VirtualServer(models.Model):
    """Several upstream MCP connections (and optionally Portcullis's own tools) published as one MCP
    endpoint, `/api/mcp/v/<name>`, with namespaced tool names (`<connection>__<tool>`,
    `portcullis__<tool>`). Each call still goes through its connection's policy (gateway.virtual_servers)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="virtual_servers")
    name = models.CharField(max_length=63, validators=[NAME_VALIDATOR])
    description = models.CharField(max_length=500, blank=True)
    connections = models.ManyToManyField(
        Connection,
        blank=True,
        related_name="virtual_servers",
        help_text="Upstream MCP connections (kind mcp) whose tools this endpoint publishes.",
    )
    include_portcullis_tools = models.BooleanField(
        default=False,
        help_text="Also publish Portcullis's own tools, each named portcullis__ and the tool's name.",
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(Lower("name"), "org", name="virtualserver_unique_name_ci_per_org")
        ]
        ordering = ["name"]

    def __str__(self):
        return self.name
