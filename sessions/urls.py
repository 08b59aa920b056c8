"""The security team's pages: session browser, session page, replay, dashboard."""

from django.urls import path

from sessions import views

urlpatterns = [
    path("sessions/", views.session_list_view, name="session-list"),
    path("sessions/<str:session_id>/", views.session_detail_view, name="session-detail"),
    path("sessions/<str:session_id>/replay/", views.session_replay_view, name="session-replay"),
    path("dashboard/", views.dashboard_view, name="dashboard"),
]
