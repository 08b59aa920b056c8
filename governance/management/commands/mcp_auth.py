"""`manage.py mcp_auth enable|disable|status|configure`: OAuth 2.1 for MCP clients (docs/oauth.md).

API tokens keep working in every state; these switch the OAuth path on /api/mcp and choose the
built-in authorization server (no --issuer) or an external issuer's JWTs.
"""

from django.core.management.base import BaseCommand, CommandError

from governance.errors import PortcullisError
from governance.models import Organization
from governance.oauth import mcp_auth_status, mcp_auth_update

SETTING_FLAGS = ("resource_uri", "groups_claim", "issuer", "jwks_uri", "create_users_in", "no_create_users")


class Command(BaseCommand):
    help = "Switch and configure OAuth 2.1 for MCP clients at /api/mcp (API tokens always work)."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="{enable,disable,status,configure}")
        for name, text in (
            ("enable", "turn OAuth on (optionally changing settings)"),
            ("configure", "change settings without switching (at least one flag)"),
        ):
            p = sub.add_parser(name, help=text)
            p.add_argument(
                "--resource-uri",
                help="canonical resource URI tokens must be issued for (default <public URL>/api/mcp)",
            )
            p.add_argument(
                "--issuer",
                help='external issuer URL whose JWTs are accepted; "" returns to the built-in server',
            )
            p.add_argument("--jwks-uri", help="the external issuer's JWKS URL (default: from its metadata)")
            p.add_argument(
                "--groups-claim",
                help='JWT claim holding group names, mapped onto the org\'s groups ("" to stop)',
            )
            p.add_argument(
                "--create-users-in",
                metavar="ORG",
                help="create unknown users of the external issuer in this org",
            )
            p.add_argument(
                "--no-create-users", action="store_true", help="never create users on first sight (default)"
            )
        sub.add_parser("disable", help="turn OAuth off (API tokens only)")
        sub.add_parser("status", help="print the state and settings")

    def handle(self, *args, **options):
        action = options["action"]
        try:
            if action == "status":
                pass
            elif action == "disable":
                mcp_auth_update(enabled=False)
            else:
                changes = self._changes(options)
                if action == "configure" and not changes:
                    raise CommandError(
                        "configure needs at least one of --resource-uri, --issuer, --jwks-uri, --groups-claim, "
                        "--create-users-in, --no-create-users"
                    )
                mcp_auth_update(enabled=True if action == "enable" else None, **changes)
        except PortcullisError as exc:
            raise CommandError(exc.message) from None
        self._print_status()

    def _changes(self, options) -> dict:
        changes = {}
        for flag in ("resource_uri", "issuer", "jwks_uri", "groups_claim"):
            if options.get(flag) is not None:
                changes[flag] = options[flag]
        if options.get("create_users_in") and options.get("no_create_users"):
            raise CommandError("--create-users-in and --no-create-users exclude each other")
        if options.get("create_users_in"):
            org = Organization.objects.filter(name=options["create_users_in"]).first()
            if org is None:
                raise CommandError(f'organization "{options["create_users_in"]}" not found')
            changes["create_users_org"] = org
        elif options.get("no_create_users"):
            changes["create_users_org"] = None
        return changes

    def _print_status(self) -> None:
        status = mcp_auth_status()
        lines = [
            f"OAuth for MCP clients: {'enabled' if status['enabled'] else 'disabled'} (API tokens always accepted)",
            f"resource URI:  {status['resource_uri']}",
            f"mode:          {status['mode']}",
            f"issuer:        {status['issuer']}",
        ]
        if status["mode"] == "external":
            lines.append(f"JWKS URI:      {status['jwks_uri']}")
            lines.append(f"create users:  {status['create_users_org'] or 'no'}")
        lines.append(f"groups claim:  {status['groups_claim'] or '(none: groups from the database)'}")
        self.stdout.write("\n".join(lines))
