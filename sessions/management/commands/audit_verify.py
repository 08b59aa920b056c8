from django.core.management.base import BaseCommand, CommandError

from governance.models import Organization
from sessions.audit import audit_verify


class Command(BaseCommand):
    help = (
        "Walk each organization's audit hash chain and report the first broken link. Prints one line per "
        "organization; exits non-zero if any chain is broken."
    )

    def add_arguments(self, parser):
        parser.add_argument("--org", help="Only this organization (by name).")

    def handle(self, *args, **options):
        orgs = Organization.objects.order_by("name")
        if options["org"]:
            orgs = orgs.filter(name=options["org"])
            if not orgs.exists():
                raise CommandError(f'organization "{options["org"]}" not found')
        broken = 0
        for org in orgs:
            report = audit_verify(org.pk)
            if report.ok:
                self.stdout.write(f"{org.name}: ok, {report.events} events")
            else:
                broken += 1
                self.stdout.write(f"{org.name}: BROKEN after {report.events} good events: {report.problem}")
        if broken:
            raise CommandError(f"{broken} audit chain(s) broken")
