from django.core.management.base import BaseCommand, CommandError

from governance.errors import PortcullisError
from governance.services import org_create


class Command(BaseCommand):
    help = "Create an organization (with its reserved admin and auditor groups). Prints its id."

    def add_arguments(self, parser):
        parser.add_argument("name")

    def handle(self, *args, name, **options):
        try:
            org = org_create(name=name)
        except PortcullisError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(str(org.pk))
