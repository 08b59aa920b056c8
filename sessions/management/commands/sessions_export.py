from django.core.management.base import BaseCommand, CommandError

from governance.errors import PortcullisError
from governance.models import Organization
from sessions.export import audit_events_export, sessions_export


class Command(BaseCommand):
    help = (
        "Export one organization's sessions (with analysis and review outcome), or its audit events "
        "with --audit, as CSV or JSON Lines, streamed in constant memory. Acts as the system; the "
        "export is recorded in the org's audit log."
    )

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="The organization (by name).")
        parser.add_argument(
            "--since", required=True, help="From this time on (RFC 3339, e.g. 2026-01-01T00:00:00Z)."
        )
        parser.add_argument("--until", help="Before this time (RFC 3339).")
        parser.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
        parser.add_argument("--output", help="Write to this file instead of standard output.")
        parser.add_argument("--audit", action="store_true", help="Export audit events instead of sessions.")

    def handle(self, *args, **options):
        org = Organization.objects.filter(name=options["org"]).first()
        if org is None:
            raise CommandError(f'organization "{options["org"]}" not found')
        export = audit_events_export if options["audit"] else sessions_export
        try:
            started = export(
                actor=None,
                org_id=org.pk,
                format=options["format"],
                start_date=options["since"],
                end_date=options["until"],
            )
        except PortcullisError as exc:
            raise CommandError(exc.message) from None
        if not options["output"]:
            for chunk in started.chunks:
                self.stdout.write(chunk, ending="")
            return
        with open(options["output"], "w", encoding="utf-8", newline="") as out:
            for chunk in started.chunks:
                out.write(chunk)
