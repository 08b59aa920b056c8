"""Human approval: which work needs a person (access request rules), the reviews themselves, each
reviewer's decision, and the org's review settings.

A `Review` is bound to the exact input it approves (stored with its SHA-256) and, for one-time
reviews, to the session recorded as `pending_review`; `reviews_execute` runs that stored input,
never a new one. A JIT review grants its requester access to one connection until `access_until`.
Every transition goes through `reviews.services`, which refuses wrong states and writes the audit log.
"""

import uuid

from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

from governance.models import BoundRule, Organization, User, UserGroup


class AccessType(models.TextChoices):
    COMMAND = "command", "Review of each command"  # one-time review of each exec
    JIT = "jit", "JIT access (time-bound)"  # time-bound access to the connection
    JIT_COMMAND = (
        "jit_command",
        "JIT access, else a review per command",
    )  # exec needs a review unless a JIT grant is active


class AccessRequestRule(BoundRule):
    """Who needs approval for what, and who approves.

    Applies to connections directly or through attributes (`BoundRule`). `approval_required_groups`
    empty means everyone except `skip_review_groups`; otherwise only members of those groups.
    Quorum: every reviewer group approves (`all_groups_must_approve`) or `min_approvals` distinct
    reviewers do. Members of `force_approval_groups` may approve alone.
    """

    access_type = models.CharField(max_length=16, choices=AccessType.choices)
    approval_required_groups = models.ManyToManyField(UserGroup, blank=True, related_name="+")
    skip_review_groups = models.ManyToManyField(UserGroup, blank=True, related_name="+")
    reviewer_groups = models.ManyToManyField(UserGroup, related_name="+")
    force_approval_groups = models.ManyToManyField(UserGroup, blank=True, related_name="+")
    all_groups_must_approve = models.BooleanField(default=False)
    min_approvals = models.PositiveSmallIntegerField(default=1)
    max_jit_duration_seconds = models.PositiveIntegerField(null=True, blank=True)
    # Reviewed work may run only inside this daily window (UTC), when set.
    window_start = models.TimeField(null=True, blank=True)
    window_end = models.TimeField(null=True, blank=True)
    # Pre-execution analysis: review only input whose built-in risk is at least this level.
    min_risk = models.CharField(max_length=16, blank=True)

    class Meta(BoundRule.Meta):
        constraints = [
            models.UniqueConstraint(Lower("name"), "org", name="accessrequestrule_unique_name_ci_per_org")
        ]


class ReviewType(models.TextChoices):
    ONETIME = "onetime", "One-time execution"
    JIT = "jit", "JIT access"


class ReviewStatus(models.TextChoices):
    PENDING = "PENDING"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    REVOKED = "REVOKED"
    EXECUTED = "EXECUTED"
    EXPIRED = "EXPIRED"


FINAL_REVIEW_STATUSES = (
    ReviewStatus.REJECTED,
    ReviewStatus.REVOKED,
    ReviewStatus.EXECUTED,
    ReviewStatus.EXPIRED,
)


class Review(models.Model):
    """One request for approval. The rule's reviewers and quorum are snapshotted at creation, so
    editing the rule later never changes who decides an open review."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    type = models.CharField(max_length=8, choices=ReviewType.choices)
    status = models.CharField(max_length=10, choices=ReviewStatus.choices, default=ReviewStatus.PENDING)
    session = models.OneToOneField(
        "records.Session", null=True, blank=True, on_delete=models.PROTECT, related_name="review"
    )
    requester = models.ForeignKey(User, on_delete=models.PROTECT, related_name="+")
    connection = models.ForeignKey(
        "gateway.Connection", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    connection_name = models.CharField(max_length=63)
    input = models.TextField(blank=True)
    input_sha256 = models.CharField(max_length=64, blank=True)
    reason = models.CharField(max_length=1000, blank=True)

    rule = models.ForeignKey(
        AccessRequestRule, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    rule_name = models.CharField(max_length=100, blank=True)
    reviewer_groups = models.JSONField(default=list, help_text="[{id, name}] at creation")
    force_approval_groups = models.JSONField(default=list, blank=True)
    # The reviewer and force-approval groups again, as rows: what visibility queries join on.
    eligible_groups = models.ManyToManyField(UserGroup, blank=True, related_name="+")
    all_groups_must_approve = models.BooleanField(default=False)
    min_approvals = models.PositiveSmallIntegerField(default=1)
    window_start = models.TimeField(null=True, blank=True)
    window_end = models.TimeField(null=True, blank=True)
    risk = models.JSONField(default=dict, blank=True, help_text="Pre-execution analysis of the input.")

    duration_seconds = models.PositiveIntegerField(null=True, blank=True, help_text="JIT access length.")
    access_until = models.DateTimeField(null=True, blank=True, help_text="JIT grant end, once approved.")
    expires_at = models.DateTimeField(help_text="An undecided (or approved, unexecuted) review expires here.")
    decided_at = models.DateTimeField(null=True, blank=True)
    rejection_reason = models.CharField(max_length=1000, blank=True)
    executed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["org", "status", "-created_at"]),
            models.Index(fields=["requester", "connection", "type", "status"]),
            models.Index(fields=["status", "expires_at"]),
        ]

    def __str__(self):
        return f"{self.type} review of {self.connection_name} by {self.requester_id}: {self.status}"

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_REVIEW_STATUSES


class ReviewDecision(models.Model):
    """One reviewer's decision, once per review group they decided for."""

    class Decision(models.TextChoices):
        APPROVED = "APPROVED"
        REJECTED = "REJECTED"
        REVOKED = "REVOKED"

    review = models.ForeignKey(Review, on_delete=models.CASCADE, related_name="decisions")
    reviewer = models.ForeignKey(User, on_delete=models.PROTECT, related_name="+")
    group_name = models.CharField(max_length=100)
    decision = models.CharField(max_length=10, choices=Decision.choices)
    reason = models.CharField(max_length=1000, blank=True)
    forced = models.BooleanField(default=False)
    surface = models.CharField(max_length=16)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["review", "reviewer", "group_name", "decision"], name="reviewdecision_once_per_group"
            )
        ]

    def __str__(self):
        return f"{self.decision} by {self.reviewer_id} for {self.group_name}"


class ReviewSettings(models.Model):
    """Per-org switches. Both are off by default: separation of duties is the safe default."""

    org = models.OneToOneField(Organization, on_delete=models.CASCADE, primary_key=True, related_name="+")
    allow_self_approval = models.BooleanField(
        default=False, help_text="Let reviewers (admins included) approve their own requests."
    )
    mcp_decisions_enabled = models.BooleanField(
        default=False,
        help_text="Let reviewers approve or reject with a token: over MCP (reviews_update) and the REST API.",
    )
    review_ttl_seconds = models.PositiveIntegerField(
        default=24 * 3600, help_text="How long a review waits for a decision, and then for execution."
    )

    class Meta:
        verbose_name_plural = "review settings"

    def __str__(self):
        return f"review settings of {self.org_id}"
