from django.contrib.auth import views as auth_views
from django.urls import path
from django.views.generic import RedirectView

from gateway import views

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(template_name="login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", RedirectView.as_view(url="/sessions/", permanent=False), name="home"),
    path("connect/", views.connect_view, name="connect"),
    path("connect/tokens/<str:token_id>/revoke/", views.token_revoke_view, name="token-revoke"),
]
