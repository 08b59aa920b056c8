"""SCIM 2.0 provisioning, one endpoint per organization (docs/sso.md)."""

from django.urls import path

from governance import scim_views

urlpatterns = [
    path("scim/v2/<slug:slug>/Users", scim_views.users, name="scim-users"),
    path("scim/v2/<slug:slug>/Users/<str:user_id>", scim_views.user, name="scim-user"),
    path("scim/v2/<slug:slug>/Groups", scim_views.groups, name="scim-groups"),
    path("scim/v2/<slug:slug>/Groups/<str:group_id>", scim_views.group, name="scim-group"),
    path(
        "scim/v2/<slug:slug>/ServiceProviderConfig",
        scim_views.service_provider_config,
        name="scim-service-provider-config",
    ),
]
