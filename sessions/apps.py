from django.apps import AppConfig


class SessionRecordsConfig(AppConfig):
    """Session records and the audit log. Labelled `records`: Django's own sessions app owns `sessions`."""

    name = "sessions"
    label = "records"
    verbose_name = "Sessions and audit"

    def ready(self):
        # The outbox relay's delivery functions register themselves when their modules load.
        from sessions import delivery, services  # noqa: F401
