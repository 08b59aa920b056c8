"""Session records (every exec, schema call, runbook run, proxied tool call) and the audit log."""

import uuid

from django.db import models, transaction
from django.db.models.functions import Lower
from django.utils import timezone

from gateway import crypto
from governance.models import Organization, User


class Verb(models.TextChoices):
    EXEC = "exec"
    SCHEMA = "schema"
    RUNBOOK = "runbook"
    TOOL = "tool"
    RESOURCE = "resource"  # an upstream MCP resource read
    PROMPT = "prompt"  # an upstream MCP prompt get


class SessionStatus(models.TextChoices):
    OPEN = "open"  # recorded, not yet running
    PENDING_REVIEW = "pending_review"
    RUNNING = "running"
    DONE = "done"  # ran; exit_code says how it went
    BLOCKED = "blocked"  # refused before anything ran (a guardrail, a rate limit)
    REJECTED = "rejected"  # a reviewer refused it; nothing ran
    FAILED = "failed"  # could not run, or the gateway lost it
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (SessionStatus.OPEN, SessionStatus.RUNNING)
FINAL_STATUSES = (
    SessionStatus.DONE,
    SessionStatus.BLOCKED,
    SessionStatus.REJECTED,
    SessionStatus.FAILED,
    SessionStatus.CANCELLED,
)


class Session(models.Model):
    """One governed request. The input is stored before anything runs; the rest is filled in after.

    `output` is the masked, capped rendering the caller saw; `result` keeps SQL columns and rows
    (capped to the connection's row limit). Connection name and kind are snapshotted so the
    record survives the connection's deletion.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="sessions")
    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="sessions")
    connection = models.ForeignKey(
        "gateway.Connection", null=True, blank=True, on_delete=models.SET_NULL, related_name="sessions"
    )
    connection_name = models.CharField(max_length=63)
    connection_kind = models.CharField(max_length=16)
    surface = models.CharField(max_length=16)
    client = models.CharField(max_length=200, blank=True)
    verb = models.CharField(max_length=16, choices=Verb.choices, default=Verb.EXEC)
    status = models.CharField(max_length=16, choices=SessionStatus.choices, default=SessionStatus.OPEN)

    input = models.TextField(blank=True)
    input_sha256 = models.CharField(max_length=64)
    input_bytes = models.PositiveBigIntegerField(default=0)
    input_truncated = models.BooleanField(default=False)
    metadata = models.JSONField(default=dict, blank=True)

    output = models.TextField(blank=True)
    result = models.JSONField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    row_count = models.IntegerField(null=True, blank=True)
    truncated = models.BooleanField(default=False)
    error = models.TextField(blank=True)

    # Seams for later pipeline steps: findings of guardrails, counts of masked values.
    guardrail_findings = models.JSONField(default=list, blank=True)
    masking = models.JSONField(default=dict, blank=True)

    runner = models.CharField(max_length=120, blank=True, help_text="The gateway process that ran it.")
    cancel_requested = models.BooleanField(default=False)
    # The lease, on the database clock (sessions.lifecycle): an open session is claimable by any
    # process once it lapses (its dispatcher died); a running one whose runner stopped renewing it is
    # ended by the sweep, even when that runner's process is alive.
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # How to run it (row/byte/time limits, read-only, the agent queue and its deadline): any
    # process can pick up an open session from this alone.
    run_spec = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    execution_time_ms = models.IntegerField(null=True, blank=True)
    # A copy of analysis.risk_level, written with the analysis (Analysis.save), so that filtering
    # and counting by risk needs no join: sessions_list and sessions_stats at a million rows.
    risk_level = models.CharField(max_length=16, null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        # Each filter of sessions_list gets an index that ends in created_at, so a page is read in
        # order and a count is an index scan. "stats" covers every column sessions_stats groups by,
        # so counting a date range is an index-only scan (bench/sessions_scale.py measures them).
        indexes = [
            models.Index(
                fields=["org", "-created_at"],
                include=["user", "connection_name", "status", "verb", "surface", "risk_level"],
                name="records_session_stats",
            ),
            models.Index(fields=["org", "user", "-created_at"]),
            models.Index(fields=["org", "connection_name", "-created_at"], name="records_session_org_conn"),
            models.Index(fields=["org", "status", "-created_at"], name="records_session_org_status"),
            models.Index(fields=["org", "risk_level", "-created_at"], name="records_session_org_risk"),
            models.Index(
                fields=["org", "verb", "surface", "-created_at"], name="records_session_org_verb_surf"
            ),
            models.Index(fields=["status"]),
            models.Index(
                fields=["lease_expires_at"],
                name="records_session_active_lease",
                condition=models.Q(status__in=["open", "running"]),
            ),
        ]

    def __str__(self):
        return f"{self.verb} on {self.connection_name} ({self.status})"

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


class RiskLevel(models.TextChoices):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


RISK_ORDER = {level: rank for rank, level in enumerate(RiskLevel.values)}


class Analysis(models.Model):
    """The risk analysis of one finished session: written once, by `sessions.services.analyses_store`
    (the worker's batches, sessions.analysis_drain) or `analysis_run` (embedded mode, the sweep).

    `analyzer` names what produced it ("builtin", "llm:<model>"); `fallback_reason` says why the
    built-in analyzer answered when an LLM analyzer is configured. `reasons` are short machine-readable
    codes (e.g. "ddl.drop", "write.no_where") for filtering and statistics.
    """

    session = models.OneToOneField(Session, on_delete=models.CASCADE, related_name="analysis")
    risk_level = models.CharField(max_length=16, choices=RiskLevel.choices)
    title = models.CharField(max_length=200)
    explanation = models.TextField()
    suggested_action = models.TextField(blank=True)
    analyzer = models.CharField(max_length=120)
    fallback_reason = models.CharField(max_length=300, blank=True)
    reasons = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "analyses"
        indexes = [models.Index(fields=["risk_level"])]

    def __str__(self):
        return f"{self.risk_level}: {self.title}"

    def save(self, *args, **kwargs):
        """Written once; the session's copy of the risk level is set in the same transaction."""
        with transaction.atomic():
            super().save(*args, **kwargs)
            Session.objects.filter(pk=self.session_id).update(risk_level=self.risk_level)


class Runner(models.Model):
    """A gateway or worker process that runs connectors; its heartbeat tells live from dead."""

    id = models.CharField(primary_key=True, max_length=120)
    started_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return self.id


class AppendOnlyQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise RuntimeError("audit events are append-only")

    def delete(self):
        raise RuntimeError("audit events are append-only")


class AuditEvent(models.Model):
    """Append-only: one row per state change or attempt, from every surface, written by services.

    Rows cannot be changed or deleted through the ORM, and an organization with audit events
    cannot be deleted (PROTECT).
    """

    class Outcome(models.TextChoices):
        SUCCESS = "success"
        DENIED = "denied"
        BLOCKED = "blocked"
        FAILED = "failed"
        INVALID = "invalid"

    id = models.BigAutoField(primary_key=True)
    org = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="audit_events")
    actor = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    actor_email = models.CharField(max_length=254, blank=True)
    # The actor's user id as written, covered by the hash: the foreign key above is set to NULL
    # when the user is deleted, so the chain cannot cover it directly (audit_verify checks that
    # the key, when still set, agrees with this copy).
    actor_key = models.CharField(max_length=64, blank=True)
    surface = models.CharField(max_length=16)
    client = models.CharField(max_length=200, blank=True)
    action = models.CharField(max_length=64, db_index=True)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_repr = models.CharField(max_length=200, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # Hash chain, per org: `hash` = SHA-256 of `prev_hash` and this row's content (see
    # sessions.audit.event_digest). `manage.py audit_verify` walks it.
    prev_hash = models.CharField(max_length=64, blank=True)
    hash = models.CharField(max_length=64, blank=True)

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]

    def __str__(self):
        return f"{self.action} {self.target_repr} by {self.actor_email}: {self.outcome}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise RuntimeError("audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise RuntimeError("audit events are append-only")


class AuditChainHead(models.Model):
    """The newest link of an org's audit chain. Its row lock orders the org's audit writes, and
    its hash lets `audit_verify` notice when the newest events were deleted."""

    org = models.OneToOneField(Organization, on_delete=models.PROTECT, primary_key=True, related_name="+")
    last_id = models.BigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, blank=True)
    count = models.BigIntegerField(default=0)

    def __str__(self):
        return f"audit chain of {self.org_id}: {self.count} events"


class WebhookEndpoint(models.Model):
    """Where an org's outbound events are POSTed, signed with the endpoint's HMAC secret.

    The secret is encrypted at rest like connection secrets and write-only: no page, API or tool
    renders it back (`has_secret` says whether one is set). `event_types` empty means every type.
    Private, loopback and link-local targets are refused unless `allow_private_network` is set.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="webhook_endpoints")
    name = models.CharField(max_length=63)
    url = models.URLField(max_length=2000)
    event_types = models.JSONField(default=list, blank=True, help_text="Empty: every event type.")
    secret_encrypted = models.TextField(blank=True, default="", editable=False)
    enabled = models.BooleanField(default=True)
    allow_private_network = models.BooleanField(
        default=False, help_text="Allow private, loopback and link-local addresses (an SSRF risk)."
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(Lower("name"), "org", name="webhook_unique_name_ci_per_org")]
        ordering = ["name"]

    def __str__(self):
        return self.name

    @property
    def has_secret(self) -> bool:
        return bool(self.secret_encrypted)

    def get_secret(self) -> str:
        """The plaintext HMAC key, for signing only. Never render or return this."""

        return crypto.decrypt_json(self.secret_encrypted).get("secret", "")

    def set_secret(self, value: str) -> None:

        self.secret_encrypted = crypto.encrypt_json({"secret": value})

    def wants(self, event_type: str) -> bool:
        return not self.event_types or event_type in self.event_types


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"  # not tried yet
    DELIVERED = "delivered"  # a 2xx answer
    FAILED = "failed"  # the last attempt failed; another is scheduled at next_attempt_at
    DEAD = "dead"  # gave up after WEBHOOK_MAX_ATTEMPTS; an admin may retry it


class WebhookDelivery(models.Model):
    """One event for one endpoint: its payload, and how delivering it went. Written by
    `sessions.delivery` only; the admin shows it read-only (with a retry action)."""

    id = models.BigAutoField(primary_key=True)
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event_id = models.UUIDField()
    event_type = models.CharField(max_length=64)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    response_code = models.IntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "webhook deliveries"
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["endpoint", "event_id"], name="webhook_delivery_once_per_event")
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"])]

    def __str__(self):
        return f"{self.event_type} to {self.endpoint_id}: {self.status}"


class IdempotencyKey(models.Model):
    """A caller's `idempotency_key` for a call that runs something, and the session it made: a retry
    with the same key by the same user finds that session instead of running again."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=200)
    operation = models.CharField(max_length=32)
    request_sha256 = models.CharField(max_length=64)
    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="idempotency_key_once_per_user")]

    def __str__(self):
        return f"{self.operation} {self.key}"


class OutboxKind(models.TextChoices):
    EVENT = "event"  # an outbound event: sinks and webhooks
    ANALYSIS = "analysis"  # a finished session to analyse
    DISPATCH = "dispatch"  # an open session to hand to its agent queue
    SINK = "sink"  # an event the JSON-lines or syslog sink could not take yet


class OutboxMessage(models.Model):
    """Something that must leave the process after a commit, written in that commit. The relay
    (sessions.outbox) delivers it at least once and deletes it; until then it waits here, so a broker
    or worker outage delays it and never loses it."""

    id = models.BigAutoField(primary_key=True)
    kind = models.CharField(max_length=16, choices=OutboxKind.choices)
    payload = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)
    available_at = models.DateTimeField(default=timezone.now, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self):
        return f"{self.kind} #{self.pk}"
