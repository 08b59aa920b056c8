"""/api/v1/: the REST API (gateway/api/), its OpenAPI schema and its docs page."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from gateway.api import views

urlpatterns = [
    path("me/", views.MeView.as_view(), name="api-me"),
    path("serverinfo/", views.ServerInfoView.as_view(), name="api-serverinfo"),
    path("connections/", views.ConnectionListView.as_view(), name="api-connections"),
    path("connections/import/", views.ConnectionImportView.as_view(), name="api-connections-import"),
    path("connections/<str:name>/", views.ConnectionDetailView.as_view(), name="api-connection"),
    path(
        "connections/<str:name>/access-control/",
        views.AccessControlView.as_view(),
        name="api-connection-access-control",
    ),
    path("access-control/", views.AccessControlListView.as_view(), name="api-access-control"),
    path("users/", views.UserListView.as_view(), name="api-users"),
    path("users/<str:ref>/", views.UserDetailView.as_view(), name="api-user"),
    path("groups/", views.GroupListView.as_view(), name="api-groups"),
    path("groups/<str:name>/", views.GroupDetailView.as_view(), name="api-group"),
    path("guardrails/", views.GuardrailListView.as_view(), name="api-guardrails"),
    path("guardrails/<str:ref>/", views.GuardrailDetailView.as_view(), name="api-guardrail"),
    path("masking-rules/", views.MaskingRuleListView.as_view(), name="api-masking-rules"),
    path("masking-rules/<str:ref>/", views.MaskingRuleDetailView.as_view(), name="api-masking-rule"),
    path("attributes/", views.AttributeListView.as_view(), name="api-attributes"),
    path("attributes/<str:name>/", views.AttributeDetailView.as_view(), name="api-attribute"),
    path("sessions/", views.SessionListView.as_view(), name="api-sessions"),
    path("sessions/stats/", views.SessionStatsView.as_view(), name="api-session-stats"),
    path("sessions/<str:session_id>/", views.SessionDetailView.as_view(), name="api-session"),
    path(
        "sessions/<str:session_id>/content/", views.SessionContentView.as_view(), name="api-session-content"
    ),
    path("sessions/<str:session_id>/cancel/", views.SessionCancelView.as_view(), name="api-session-cancel"),
    path("sessions/<str:session_id>/wait/", views.SessionWaitView.as_view(), name="api-session-wait"),
    path("audit-events/", views.AuditEventListView.as_view(), name="api-audit-events"),
    path("exec/", views.ExecView.as_view(), name="api-exec"),
    path("reviews/", views.ReviewListView.as_view(), name="api-reviews"),
    path("reviews/<str:review_id>/", views.ReviewDetailView.as_view(), name="api-review"),
    path("reviews/<str:review_id>/execute/", views.ReviewExecuteView.as_view(), name="api-review-execute"),
    path("reviews/<str:review_id>/wait/", views.ReviewWaitView.as_view(), name="api-review-wait"),
    path("access-request-rules/", views.AccessRuleListView.as_view(), name="api-access-rules"),
    path("access-request-rules/<str:ref>/", views.AccessRuleDetailView.as_view(), name="api-access-rule"),
    path("runbook-rules/", views.RunbookRuleListView.as_view(), name="api-runbook-rules"),
    path("runbook-rules/<str:ref>/", views.RunbookRuleDetailView.as_view(), name="api-runbook-rule"),
    path("access-requests/", views.AccessRequestView.as_view(), name="api-access-requests"),
    path("guardrails-test/", views.GuardrailTestView.as_view(), name="api-guardrails-test"),
    path("masking-preview/", views.MaskingPreviewView.as_view(), name="api-masking-preview"),
    path("connections/<str:name>/test/", views.ConnectionTestView.as_view(), name="api-connection-test"),
    path(
        "connections/<str:name>/upstream-tools/", views.UpstreamToolsView.as_view(), name="api-upstream-tools"
    ),
    path(
        "connections/<str:name>/upstream-tools/call/",
        views.UpstreamCallView.as_view(),
        name="api-upstream-call",
    ),
    path(
        "connections/<str:name>/upstream-contracts/",
        views.UpstreamContractsView.as_view(),
        name="api-upstream-contracts",
    ),
    path(
        "connections/<str:name>/upstream-contracts/accept/",
        views.UpstreamContractsAcceptView.as_view(),
        name="api-upstream-contracts-accept",
    ),
    path("exec/explain/", views.ExplainView.as_view(), name="api-exec-explain"),
    path(
        "connections/<str:name>/databases/", views.SchemaDatabasesView.as_view(), name="api-schema-databases"
    ),
    path("connections/<str:name>/tables/", views.SchemaTablesView.as_view(), name="api-schema-tables"),
    path("connections/<str:name>/columns/", views.SchemaColumnsView.as_view(), name="api-schema-columns"),
    path(
        "sessions/<str:session_id>/analysis/",
        views.SessionAnalysisView.as_view(),
        name="api-session-analysis",
    ),
    path("review-settings/", views.ReviewSettingsView.as_view(), name="api-review-settings"),
    path("runbooks/", views.RunbookListView.as_view(), name="api-runbooks"),
    path("runbooks/<str:connection_name>/<str:name>/", views.RunbookDetailView.as_view(), name="api-runbook"),
    path(
        "runbooks/<str:connection_name>/<str:name>/run/",
        views.RunbookRunView.as_view(),
        name="api-runbook-run",
    ),
    path("webhooks/", views.WebhookListView.as_view(), name="api-webhooks"),
    path("webhook-deliveries/", views.WebhookDeliveryListView.as_view(), name="api-webhook-deliveries"),
    path(
        "webhook-deliveries/retry/",
        views.WebhookDeliveryRetryView.as_view(),
        name="api-webhook-deliveries-retry",
    ),
    path("webhooks/<str:ref>/", views.WebhookDetailView.as_view(), name="api-webhook"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]
