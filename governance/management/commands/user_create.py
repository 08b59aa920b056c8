import sys

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from governance.errors import PortcullisError
from governance.services import org_get, user_create


class Command(BaseCommand):
    help = "Create a user in an organization. Prints the user's id."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="Organization name.")
        parser.add_argument("--email", required=True)
        parser.add_argument("--name", default="")
        parser.add_argument("--groups", default="", help="Comma-separated group names, e.g. admin,dba.")
        parser.add_argument("--password-stdin", action="store_true", help="Read the password from stdin.")

    def handle(self, *args, **options):
        password = None
        if options["password_stdin"]:
            password = sys.stdin.readline().rstrip("\n")
            if not password:
                raise CommandError("no password on stdin")
            try:
                validate_password(password)
            except ValidationError as exc:
                raise CommandError("; ".join(exc.messages)) from None
        groups = [g.strip() for g in options["groups"].split(",") if g.strip()]
        try:
            org = org_get(name=options["org"])
            user = user_create(
                org=org, email=options["email"], name=options["name"], groups=groups, password=password
            )
        except PortcullisError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(str(user.pk))
