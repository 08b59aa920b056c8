import json

from django.core.management.base import BaseCommand, CommandError

from governance.models import Organization
from sessions.audit import audit_verify
from sessions.heads import audit_head_check


class Command(BaseCommand):
    help = (
        "Walk each organization's audit hash chain and report the first broken link. Prints one line per "
        "organization; exits non-zero if any chain is broken."
    )

    def add_arguments(self, parser):
        parser.add_argument("--org", help="Only this organization (by name).")
        parser.add_argument(
            "--heads",
            help="A file of saved chain heads (JSON lines from `audit_heads`): each must still be in its chain.",
        )

    def handle(self, *args, **options):
        orgs = Organization.objects.order_by("name")
        if options["org"]:
            orgs = orgs.filter(name=options["org"])
            if not orgs.exists():
                raise CommandError(f'organization "{options["org"]}" not found')
        saved = self._saved_heads(options["heads"]) if options["heads"] else {}
        broken = 0
        for org in orgs:
            report = audit_verify(org.pk)
            problems = [report.problem] if not report.ok else []
            problems += [p for p in (audit_head_check(h) for h in saved.pop(str(org.pk), [])) if p]
            if not problems:
                self.stdout.write(f"{org.name}: ok, {report.events} events")
            else:
                broken += 1
                self.stdout.write(
                    f"{org.name}: BROKEN after {report.events} good events: {'; '.join(problems)}"
                )
        for org_id, heads in saved.items():
            if not options["org"]:  # heads of an org that is gone
                broken += 1
                self.stdout.write(f"{heads[0].get('org_name', org_id)}: BROKEN: {audit_head_check(heads[0])}")
        if broken:
            raise CommandError(f"{broken} audit chain(s) broken")

    def _saved_heads(self, path: str) -> dict[str, list[dict]]:
        """The saved heads by org id; a file that cannot be read is an error, not an empty check."""
        heads: dict[str, list[dict]] = {}
        try:
            with open(path, encoding="utf-8") as fh:
                for number, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        head = json.loads(line)
                        heads.setdefault(str(head["org"]), []).append(head)
                    except (ValueError, KeyError, TypeError):
                        raise CommandError(f"{path}:{number}: not a saved head (JSON with an org)") from None
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror}") from None
        return heads
