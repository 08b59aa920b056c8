"""Installs `PortcullisAdminSite` as Django's default admin site (`admin.site`), so every app's
`@admin.register` lands on the site that lets in admins and auditors by role, not `is_staff`."""

from django.contrib.admin.apps import AdminConfig


class PortcullisAdminConfig(AdminConfig):
    default_site = "governance.admin_base.PortcullisAdminSite"
