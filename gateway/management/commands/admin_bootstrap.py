"""The first admin of a fresh deployment, in one idempotent step (docs/operations.md):

    docker compose run --rm -T web python manage.py admin_bootstrap --org acme \
        --email ops@acme.example --password-stdin < password.txt

Creates the organization if it does not exist, then the user in its `admin` group. Run again,
it changes nothing once the org has an active admin, and exits 0, so it is safe in a deploy script.
"""

import secrets
import sys

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from governance.errors import PortcullisError
from governance.models import ADMIN_GROUP, Organization, User
from governance.services import org_create, user_create


class Command(BaseCommand):
    help = "Create the first organization and its first admin, unless the org already has an admin."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="Organization name (created when missing).")
        parser.add_argument("--email", required=True, help="The admin's e-mail (their login).")
        parser.add_argument("--name", default="")
        parser.add_argument(
            "--password-stdin",
            action="store_true",
            help="Read the password from stdin; without it a random one is generated and printed once.",
        )

    def handle(self, *args, **options):
        generated = not options["password_stdin"]
        if generated:
            password = secrets.token_urlsafe(18)
        else:
            password = sys.stdin.readline().rstrip("\n")
            if not password:
                raise CommandError("no password on stdin")
        try:
            validate_password(password)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        try:
            with transaction.atomic():
                org = Organization.objects.select_for_update().filter(name=options["org"]).first()
                if org is None:
                    org = org_create(name=options["org"])
                admins = User.objects.filter(
                    org=org, is_active=True, user_groups__org=org, user_groups__name=ADMIN_GROUP
                )
                if admins.exists():
                    self.stdout.write(f'organization "{org.name}" already has an admin; nothing changed')
                    return
                user = user_create(
                    org=org,
                    email=options["email"],
                    name=options["name"],
                    groups=[ADMIN_GROUP],
                    password=password,
                )
        except PortcullisError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f'created admin {user.email} in organization "{org.name}"')
        if generated:
            self.stdout.write(f"password (shown once; change it after signing in): {password}")
