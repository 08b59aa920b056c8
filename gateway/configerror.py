"""The error a bad environment setting raises at start-up. Nothing of Django: the settings module,
the log configuration and the rate parser all raise it."""


class ImproperlyConfiguredEnv(RuntimeError):
    pass
