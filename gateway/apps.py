from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "gateway"
    verbose_name = "Gateway"

    def ready(self):
        # The outbox's `dispatch` delivery (to agent queues) registers itself with the pipeline.
        from gateway import pipeline  # noqa: F401
