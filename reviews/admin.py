"""Admin pages for access request rules (saved through `reviews.services`, validated and audited
exactly as the MCP tools are), the org's review settings, and reviews (read-only records: people
decide on the review page of the web app, where eligibility and separation of duties apply)."""

from __future__ import annotations

from django import forms
from django.contrib import admin

from governance import guardrails
from governance.admin import RelatedOnly, _RuleAdmin
from governance.admin_base import GovernedModelAdmin, ReadOnlyModelAdmin
from reviews import services
from reviews.models import AccessRequestRule, Review, ReviewSettings

GROUP_FIELDS = ("approval_required_groups", "skip_review_groups", "reviewer_groups", "force_approval_groups")


def _names(values) -> list[str]:
    return [v.name for v in values or []]


@admin.register(AccessRequestRule)
class AccessRequestRuleAdmin(_RuleAdmin):
    list_display = ("name", "access_type", "enabled", "reviewer_names", "connection_names", "updated_at")
    list_filter = ("access_type", "enabled", ("connections", RelatedOnly), ("attributes", RelatedOnly))
    filter_horizontal = ("connections", "attributes", *GROUP_FIELDS)
    fieldsets = (
        (None, {"fields": ("name", "description", "enabled", "access_type")}),
        (
            "Applies to",
            {"fields": ("connections", "attributes", "approval_required_groups", "skip_review_groups")},
        ),
        (
            "Who approves",
            {
                "fields": (
                    "reviewer_groups",
                    "all_groups_must_approve",
                    "min_approvals",
                    "force_approval_groups",
                )
            },
        ),
        ("Limits", {"fields": ("max_jit_duration_seconds", "window_start", "window_end", "min_risk")}),
    )
    rule_fields = {
        "name": "name",
        "description": "description",
        "enabled": "enabled",
        "access_type": "access_type",
        "all_groups_must_approve": "all_groups_must_approve",
        "min_approvals": "min_approvals",
        "max_jit_duration_seconds": "max_jit_duration_seconds",
        "min_risk": "min_risk",
    }
    create = staticmethod(services.access_rule_create)
    update = staticmethod(services.access_rule_update)
    delete = staticmethod(services.access_rule_delete)

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "min_risk":  # one of the analysis's levels, not free text
            return forms.ChoiceField(
                choices=[("", "any risk (no minimum)"), *((x, x) for x in guardrails.RISK_LEVELS)],
                required=False,
                label="Minimum risk",
                help_text="Ask for a review only when the risk analysis of the input is at least this level.",
            )
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("reviewer_groups")

    @admin.display(description="reviewers")
    def reviewer_names(self, obj):
        return ", ".join(sorted(g.name for g in obj.reviewer_groups.all())) or "-"

    def _fields(self, data) -> dict:
        fields = super()._fields(data)
        for field in GROUP_FIELDS:
            fields[field] = _names(data.get(field))
        start, end = data.get("window_start"), data.get("window_end")
        fields["time_window"] = (
            {"start_time": start.strftime("%H:%M"), "end_time": end.strftime("%H:%M")}
            if start and end
            else None
        )
        return fields


@admin.register(ReviewSettings)
class ReviewSettingsAdmin(GovernedModelAdmin):
    list_display = ("org", "allow_self_approval", "mcp_decisions_enabled", "review_ttl_seconds")
    fields = ("allow_self_approval", "mcp_decisions_enabled", "review_ttl_seconds")

    def has_add_permission(self, request):
        return False  # one row per org, created on first use

    def save_through_service(self, request, actor, form, formsets, change):
        data = form.cleaned_data
        return services.review_settings_update(
            actor=actor,
            allow_self_approval=data.get("allow_self_approval"),
            mcp_decisions_enabled=data.get("mcp_decisions_enabled"),
            review_ttl_seconds=data.get("review_ttl_seconds"),
        )


@admin.register(Review)
class ReviewAdmin(ReadOnlyModelAdmin):
    list_display = ("created_at", "type", "status", "connection_name", "requester", "rule_name")
    list_filter = ("status", "type")
    search_fields = ("connection_name", "requester__email", "rule_name")
    exclude = ("eligible_groups",)
    ordering = ("-created_at",)
