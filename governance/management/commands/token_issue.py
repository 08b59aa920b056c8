from django.core.management.base import BaseCommand, CommandError

from governance.errors import PortcullisError
from governance.models import TokenCapability, User
from governance.services import token_issue


class Command(BaseCommand):
    help = "Issue an API token for a user. Prints only the token; it is not stored and cannot be shown again."

    def add_arguments(self, parser):
        parser.add_argument("--email", required=True)
        parser.add_argument("--name", default="cli")
        parser.add_argument("--expires-days", type=int, default=None)
        parser.add_argument(
            "--capability",
            choices=TokenCapability.values,
            default=TokenCapability.READ_WRITE,
            help="Ceiling on what the token may do: read_only (reads and read-only exec), read_write "
            "(default; a standard member's powers), admin (the user's own roles, admin tools included).",
        )

    def handle(self, *args, **options):
        user = User.objects.filter(email=options["email"].strip().lower(), is_active=True).first()
        if user is None:
            raise CommandError(f"no active user with email {options['email']}")
        try:
            _, raw = token_issue(
                user=user,
                name=options["name"],
                expires_days=options["expires_days"],
                capability=options["capability"],
            )
        except PortcullisError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(raw)
