"""`python -m tests.idp.serve`: migrate the IdP's SQLite database, then serve it on IDP_PORT."""

import os

if __name__ == "__main__":
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.idp.settings"
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    call_command("runserver", f"127.0.0.1:{os.environ['IDP_PORT']}", use_reloader=False, use_threading=True)
