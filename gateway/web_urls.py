from django.urls import path
from django.views.generic import RedirectView

from gateway import views
from governance import sso_views

urlpatterns = [
    path("login/", sso_views.LoginView.as_view(), name="login"),
    path("login/sso/callback/", sso_views.sso_callback, name="sso-callback"),
    path("login/sso/<slug:slug>/", sso_views.sso_start_org, name="sso-start"),
    path("logout/", sso_views.logout_view, name="logout"),
    path("", RedirectView.as_view(url="/sessions/", permanent=False), name="home"),
    path("connect/", views.connect_view, name="connect"),
    path("connect/tokens/<str:token_id>/revoke/", views.token_revoke_view, name="token-revoke"),
]
