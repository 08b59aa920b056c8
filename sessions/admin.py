"""Session records, analyses and the audit log in the admin: read-only for everyone (no add, no
change, no delete, no bulk delete), scoped by the policy like every other surface."""

from django import forms
from django.contrib import admin, messages

from governance.admin_base import GovernedModelAdmin, ReadOnlyModelAdmin, SecretField, admin_actor
from governance.errors import PortcullisError
from governance.policy import may
from sessions.events import EVENT_TYPES
from sessions.models import Analysis, AuditEvent, Session, WebhookDelivery, WebhookEndpoint
from sessions.webhooks import (
    webhook_delivery_retry,
    webhook_endpoint_create,
    webhook_endpoint_delete,
    webhook_endpoint_update,
)

RelatedOnly = admin.RelatedOnlyFieldListFilter


@admin.register(Session)
class SessionAdmin(ReadOnlyModelAdmin):
    list_display = (
        "created_at",
        "user",
        "connection_name",
        "verb",
        "status",
        "surface",
        "exit_code",
        "row_count",
    )
    list_filter = ("status", "verb", "surface", "connection_kind", ("user", RelatedOnly))
    search_fields = ("connection_name", "user__email", "input")
    date_hierarchy = "created_at"
    list_select_related = ("user",)
    exclude = ("result",)  # the capped rows stay on the session page of the web app


@admin.register(Analysis)
class AnalysisAdmin(ReadOnlyModelAdmin):
    list_display = ("session", "risk_level", "title", "analyzer", "created_at")
    list_filter = ("risk_level", "analyzer")
    search_fields = ("title", "session__connection_name")
    list_select_related = ("session",)


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyModelAdmin):
    list_display = ("id", "created_at", "actor_email", "surface", "action", "target_repr", "outcome")
    list_filter = ("surface", "outcome", "action")
    search_fields = ("actor_email", "action", "target_repr", "target_id")
    date_hierarchy = "created_at"
    exclude = ("actor",)


# --- outbound webhooks ----------------------------------------------------------------------------


class WebhookEndpointForm(forms.ModelForm):
    """The HMAC secret is write-only: required to add an endpoint, never shown, kept when left empty."""

    secret = SecretField(
        help_text="The HMAC-SHA256 key receivers verify signatures with (at least 16 characters). "
        "Write-only: it is never shown again; leave empty to keep the current one."
    )
    url = forms.URLField(max_length=2000, assume_scheme="https")
    event_types = forms.MultipleChoiceField(
        choices=[(t, t) for t in EVENT_TYPES],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None checked: every event type.",
    )

    class Meta:
        model = WebhookEndpoint
        fields = ("name", "url", "event_types", "enabled", "allow_private_network")


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(GovernedModelAdmin):
    form = WebhookEndpointForm
    list_display = ("name", "url", "enabled", "allow_private_network", "has_secret", "updated_at")
    list_filter = ("enabled",)
    search_fields = ("name", "url")

    @admin.display(boolean=True, description="secret set")
    def has_secret(self, obj):
        return obj.has_secret

    def save_through_service(self, request, actor, form, formsets, change):
        data = form.cleaned_data
        fields = {
            "name": data["name"],
            "url": data["url"],
            "event_types": list(data.get("event_types") or []),
            "enabled": data["enabled"],
            "allow_private_network": data["allow_private_network"],
        }
        if change:
            return webhook_endpoint_update(
                actor=actor, endpoint_id=form.instance.pk, secret=data.get("secret") or None, **fields
            )
        return webhook_endpoint_create(actor=actor, secret=data.get("secret") or "", **fields)

    def delete_through_service(self, request, actor, obj):
        webhook_endpoint_delete(actor=actor, endpoint_id=obj.pk)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyModelAdmin):
    """Deliveries are records: read-only, with one action (admins): send failed or dead ones again."""

    list_display = (
        "id",
        "created_at",
        "event_type",
        "endpoint",
        "status",
        "attempts",
        "response_code",
        "next_attempt_at",
    )
    list_filter = ("status", "event_type", ("endpoint", RelatedOnly))
    search_fields = ("event_id", "event_type", "last_error")
    list_select_related = ("endpoint",)
    actions = ["retry"]

    def get_actions(self, request):
        actions = super().get_actions(request)
        if not may(admin_actor(request), "manage", WebhookDelivery):
            actions.pop("retry", None)
        return actions

    @admin.action(description="Retry the selected failed or dead deliveries")
    def retry(self, request, queryset):
        try:
            count = webhook_delivery_retry(
                actor=admin_actor(request), delivery_ids=list(queryset.values_list("pk", flat=True))
            )
        except PortcullisError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return
        self.message_user(request, f"{count} deliveries queued again", messages.SUCCESS)
