from django.core.management.base import BaseCommand

from sessions import outbox


class Command(BaseCommand):
    help = "Show what waits in the outbox (per kind: count, age of the oldest); --relay delivers what is due."

    def add_arguments(self, parser):
        parser.add_argument("--relay", action="store_true", help="deliver what is due now")

    def handle(self, *args, relay=False, **options):
        if relay:
            self.stdout.write(f"delivered {outbox.relay_all()}")
        backlog = outbox.backlog()
        if not backlog:
            self.stdout.write("the outbox is empty")
        for kind, info in sorted(backlog.items()):
            self.stdout.write(f"{kind}: {info['count']} waiting, oldest {info['oldest_seconds']} s")
