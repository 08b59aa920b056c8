"""`manage.py sso configure|status|scim-secret ORG ...`: an organization's OpenID Connect sign-in
and SCIM provisioning (docs/sso.md)."""

import json
import sys

from django.core.management.base import BaseCommand, CommandError

from governance.errors import PortcullisError
from governance.services import org_get
from governance.sso import idp_configure, idp_get, idp_status, scim_secret_issue


def _bool(value: str) -> bool:
    if value.lower() in ("on", "true", "yes", "1"):
        return True
    if value.lower() in ("off", "false", "no", "0"):
        return False
    raise ValueError(f"expected on or off, not {value!r}")


class Command(BaseCommand):
    help = "Configure an organization's SSO (OpenID Connect) sign-in and SCIM secret."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="{configure,status,scim-secret}")
        p = sub.add_parser("configure", help="create or change the org's identity provider")
        p.add_argument("org")
        p.add_argument("--issuer", help="the IdP's issuer URL, exactly as its ID tokens write it")
        p.add_argument("--client-id")
        p.add_argument(
            "--client-secret-stdin",
            action="store_true",
            help="read the client secret from standard input (never from the command line)",
        )
        p.add_argument("--scopes", help='default "openid email profile"')
        p.add_argument("--groups-claim", help='the ID token claim with group names (default "groups")')
        p.add_argument(
            "--map-group",
            action="append",
            metavar="IDP_GROUP=GROUP",
            help="map an IdP group onto a Portcullis group (repeat; replaces the map)",
        )
        p.add_argument("--clear-group-map", action="store_true")
        p.add_argument("--domains", help="comma-separated e-mail domains this IdP signs in")
        p.add_argument("--passwords", type=_bool, metavar="on|off", help="local password sign-in for the org")
        p.add_argument(
            "--break-glass", metavar="EMAIL", help="the admin who keeps a password when they are off"
        )
        p.add_argument("--enabled", type=_bool, metavar="on|off")
        p.add_argument("--slug", help="the name in /login/sso/<slug>/ and /scim/v2/<slug>/")
        s = sub.add_parser("status", help="print the org's SSO settings (never the secrets)")
        s.add_argument("org")
        t = sub.add_parser("scim-secret", help="issue a new SCIM bearer secret (shown once)")
        t.add_argument("org")

    def handle(self, *args, **options):
        try:
            org = org_get(name=options["org"])
            if options["action"] == "status":
                self.stdout.write(json.dumps(idp_status(idp_get(org=org)), indent=2))
                return
            if options["action"] == "scim-secret":
                self.stdout.write(scim_secret_issue(org=org))
                return
            group_map = None
            if options["clear_group_map"]:
                group_map = {}
            elif options["map_group"]:
                group_map = {}
                for item in options["map_group"]:
                    source, sep, target = item.partition("=")
                    if not sep:
                        raise CommandError(f"--map-group takes IDP_GROUP=GROUP, not {item!r}")
                    group_map[source.strip()] = target.strip()
            secret = sys.stdin.read().strip() if options["client_secret_stdin"] else None
            domains = options["domains"]
            idp = idp_configure(
                org=org,
                issuer=options["issuer"],
                client_id=options["client_id"],
                client_secret=secret,
                scopes=options["scopes"],
                groups_claim=options["groups_claim"],
                group_map=group_map,
                allowed_domains=[d for d in domains.split(",") if d.strip()] if domains is not None else None,
                password_login=options["passwords"],
                break_glass_email=options["break_glass"],
                enabled=options["enabled"],
                slug=options["slug"],
            )
            self.stdout.write(json.dumps(idp_status(idp), indent=2))
        except PortcullisError as exc:
            raise CommandError(exc.message) from None
