import json
import os

from django.conf import settings
from django.core.management.base import BaseCommand

from gateway.demo import DEMO_ADMIN, seed


class Command(BaseCommand):
    help = "Seed the demo organization (idempotent) and print how to connect an agent."

    def add_arguments(self, parser):
        parser.add_argument(
            "--postgres",
            default=os.environ.get(
                "PORTCULLIS_DEMO_POSTGRES", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
            ),
            help="libpq connection string of a PostgreSQL to add as demo-postgres when it answers.",
        )

    def handle(self, *args, **options):
        report = seed(postgres_dsn=options["postgres"])
        url = f"{settings.PUBLIC_BASE_URL}/api/mcp"
        token = report.get("token") or "<your API token>"
        out = self.stdout
        out.write("")
        if report["created"]:
            out.write("Portcullis demo created. These credentials are shown once; keep them.")
            out.write(f"  admin login : {report['email']}")
            out.write(f"  password    : {report['password']}")
            out.write(f"  API token   : {token}")
        else:
            out.write(
                "Portcullis demo already set up (data kept). Credentials were printed on the first run;"
            )
            out.write(
                f"  a new token: .venv/bin/python manage.py token_issue --email {DEMO_ADMIN} --name agent"
            )
        out.write(f"  connections : {', '.join(report['connections'])}")
        out.write(f"  gateway     : {settings.PUBLIC_BASE_URL}   (admin at /admin/)")
        config = {
            "mcpServers": {
                "portcullis": {"type": "http", "url": url, "headers": {"Authorization": f"Bearer {token}"}}
            }
        }
        out.write("\nMCP client configuration (Claude Code .mcp.json, Cursor mcp.json):")
        out.write(json.dumps(config, indent=2))
        out.write(
            f'\nor: claude mcp add --transport http portcullis {url} --header "Authorization: Bearer {token}"\n'
        )
