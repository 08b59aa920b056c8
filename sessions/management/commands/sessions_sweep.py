from django.core.management.base import BaseCommand

from sessions.services import sessions_sweep_orphans


class Command(BaseCommand):
    help = "Mark failed the sessions whose gateway process stopped. Prints how many."

    def handle(self, *args, **options):
        self.stdout.write(str(sessions_sweep_orphans()))
