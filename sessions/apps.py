from django.apps import AppConfig


class SessionRecordsConfig(AppConfig):
    """Session records and the audit log. Labelled `records`: Django's own sessions app owns `sessions`.
    The outbox relay's delivery functions register themselves when their modules load (gateway/wiring.py)."""

    name = "sessions"
    label = "records"
    verbose_name = "Sessions and audit"
