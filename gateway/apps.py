from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "gateway"
    verbose_name = "Gateway"

    def ready(self):
        # Modules that register hooks with lower layers when they load (gateway/wiring.py).
        from gateway import wiring  # noqa: F401
