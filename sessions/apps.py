from django.apps import AppConfig


class SessionRecordsConfig(AppConfig):
    """Session records and the audit log. Labelled `records`: Django's own sessions app owns `sessions`."""

    name = "sessions"
    label = "records"
    verbose_name = "Sessions and audit"
