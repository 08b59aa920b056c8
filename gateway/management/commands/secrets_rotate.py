from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from gateway import crypto
from gateway.models import Connection
from sessions.models import WebhookEndpoint


class Command(BaseCommand):
    help = (
        "Re-encrypt every connection's secrets with the newest key of PORTCULLIS_ENCRYPTION_KEYS. Run it after "
        "prepending a new key; then the old key can be removed. Prints how many connections and webhook "
        "endpoints were re-encrypted."
    )

    def handle(self, *args, **options):
        count = 0
        with transaction.atomic():
            for connection in Connection.objects.select_for_update().exclude(secrets_encrypted=""):
                try:
                    connection.secrets_encrypted = crypto.rotate(connection.secrets_encrypted)
                except Exception:
                    raise CommandError(
                        f'the secrets of connection "{connection.name}" (org {connection.org_id}) cannot be '
                        "decrypted with any configured key; nothing was changed"
                    ) from None
                connection.save(update_fields=["secrets_encrypted"])
                count += 1
            # Webhook endpoints' HMAC secrets use the same keys.
            for endpoint in WebhookEndpoint.objects.select_for_update().exclude(secret_encrypted=""):
                try:
                    endpoint.secret_encrypted = crypto.rotate(endpoint.secret_encrypted)
                except Exception:
                    raise CommandError(
                        f'the secret of webhook endpoint "{endpoint.name}" (org {endpoint.org_id}) cannot be '
                        "decrypted with any configured key; nothing was changed"
                    ) from None
                endpoint.save(update_fields=["secret_encrypted"])
                count += 1
        self.stdout.write(str(count))
