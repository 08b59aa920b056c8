"""A real OpenID Connect provider for the SSO tests: a small Django project on django-oauth-toolkit's
OIDC provider, run in a process of its own on loopback (`python -m tests.idp.serve`)."""
