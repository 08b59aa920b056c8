from django.contrib import admin
from django.urls import include, path

from gateway import health
from gateway.views import jwks_view
from reviews.slack import slack_interactions_view

handler500 = "gateway.unavailable.handler500"  # 503 + Retry-After when the database is away

# Each area owns its URL module; the web pages share `templates/base.html` and `/login/`.
urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", health.healthz),  # liveness: the process answers
    path("readyz", health.readyz),  # readiness: database, Redis, migrations
    path("metrics", health.metrics),  # Prometheus (token or allowed networks)
    path(".well-known/jwks.json", jwks_view),  # keys of the identity JWTs sent upstream (gateway_jwt)
    path("api/v1/", include("gateway.api_urls")),  # REST API
    path("", include("gateway.web_urls")),  # login, logout, home, "connect your agent"
    path("", include("sessions.urls")),  # session browser, session page, replay, dashboard
    path("", include("sessions.export_urls")),  # CSV / JSON Lines downloads
    path("", include("reviews.urls")),  # reviewers' inbox and review pages
    path("slack/interactions", slack_interactions_view),  # Slack's interactivity URL (Approve / Reject)
    path("", include("gateway.console_urls")),  # the web console, "Run it" on approved reviews
    path("", include("governance.urls")),  # OAuth authorization server and authorized clients
    path("", include("governance.scim_urls")),  # SCIM 2.0 provisioning per organization (docs/sso.md)
]
