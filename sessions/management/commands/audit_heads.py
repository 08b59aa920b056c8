import json

from django.core.management.base import BaseCommand, CommandError

from sessions.heads import audit_heads, audit_heads_publish


class Command(BaseCommand):
    help = (
        "Print each organization's audit chain head (count, last event id and hash), one JSON line per "
        "org by default: save the output somewhere the database's administrators cannot write, and "
        "check it later with `audit_verify --heads FILE`. --publish also sends them as audit.head events."
    )

    def add_arguments(self, parser):
        parser.add_argument("--org", help="Only this organization (by name).")
        parser.add_argument("--format", choices=["jsonl", "text"], default="jsonl")
        parser.add_argument("--publish", action="store_true", help="Also emit audit.head events now.")

    def handle(self, *args, **options):
        heads = audit_heads(org_name=options["org"])
        if options["org"] and not heads:
            raise CommandError(f'organization "{options["org"]}" not found or has no audit events')
        for head in heads:
            if options["format"] == "jsonl":
                self.stdout.write(json.dumps(head, sort_keys=True))
            else:
                self.stdout.write(
                    f"{head['org_name']}: {head['count']} events, #{head['last_id']} {head['last_hash']}"
                )
        if options["publish"]:
            audit_heads_publish()
