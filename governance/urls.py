"""OAuth 2.1 for MCP clients (docs/oauth.md): the built-in authorization server's endpoints, the
RFC 8414 and RFC 9728 metadata at the root, and the "authorized clients" page."""

from django.urls import include, path

from governance import oauth_views

# Named inside the `oauth2_provider` namespace, so django-oauth-toolkit's metadata view finds them.
oauth_server = [
    path("authorize/", oauth_views.AuthorizationView.as_view(), name="authorize"),
    path("token/", oauth_views.TokenView.as_view(), name="token"),
    path("revoke/", oauth_views.RevokeTokenView.as_view(), name="revoke-token"),
    path("register/", oauth_views.RegistrationView.as_view(), name="dcr-register"),
    path(
        "register/<str:client_id>/",
        oauth_views.RegistrationManagementView.as_view(),
        name="dcr-register-management",
    ),
]

urlpatterns = [
    path("oauth/", include((oauth_server, "oauth2_provider"))),
    path("oauth/clients/", oauth_views.authorized_clients, name="oauth-clients"),
    path(".well-known/oauth-authorization-server", oauth_views.ServerMetadataView.as_view()),
    path(".well-known/oauth-protected-resource", oauth_views.protected_resource_metadata),
    path(".well-known/oauth-protected-resource/api/mcp", oauth_views.protected_resource_metadata),
]
