import json
import sys

from django.core.management.base import BaseCommand, CommandError

from gateway.services import connection_create_headless, split_options
from governance.errors import PortcullisError
from governance.services import org_get


class Command(BaseCommand):
    help = (
        "Create a connection from a JSON object on stdin (settings and secrets, e.g. host, port, database, user, "
        "password; path for sqlite; argv for command). Prints the connection's id."
    )

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True)
        parser.add_argument("--name", required=True)
        parser.add_argument("--kind", required=True)
        parser.add_argument("--config-stdin", action="store_true", required=True)

    def handle(self, *args, **options):
        raw = sys.stdin.read()
        try:
            values = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CommandError(
                f"stdin is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        if not isinstance(values, dict):
            raise CommandError("stdin must hold a JSON object")
        settings, opts = split_options(values)
        try:
            org = org_get(name=options["org"])
            connection = connection_create_headless(
                org=org, name=options["name"], kind=options["kind"], settings=settings, options=opts
            )
        except PortcullisError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(str(connection.pk))
