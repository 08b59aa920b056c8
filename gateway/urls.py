from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path

from reviews.slack import slack_interactions_view


def healthz(request):
    return JsonResponse({"status": "ok"})


# Each area owns its URL module; the web pages share `templates/base.html` and `/login/`.
urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz),
    path("api/v1/", include("gateway.api_urls")),  # REST API
    path("", include("gateway.web_urls")),  # login, logout, home, "connect your agent"
    path("", include("sessions.urls")),  # session browser, session page, replay, dashboard
    path("", include("sessions.export_urls")),  # CSV / JSON Lines downloads
    path("", include("reviews.urls")),  # reviewers' inbox and review pages
    path("slack/interactions", slack_interactions_view),  # Slack's interactivity URL (Approve / Reject)
    path("", include("gateway.console_urls")),  # the web console, "Run it" on approved reviews
    path("", include("governance.urls")),  # OAuth authorization server and authorized clients
]
