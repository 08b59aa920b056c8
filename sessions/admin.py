"""Session records, analyses and the audit log in the admin: read-only for everyone (no add, no
change, no delete, no bulk delete), scoped by the policy like every other surface."""

from django.contrib import admin

from governance.admin_base import ReadOnlyModelAdmin
from sessions.models import Analysis, AuditEvent, Session

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
