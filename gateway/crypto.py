"""Encryption at rest for connection secrets (Fernet, keys from settings, newest first)."""

import json
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


@lru_cache(maxsize=1)
def _fernet() -> MultiFernet:
    return MultiFernet(
        [Fernet(key.encode() if isinstance(key, str) else key) for key in settings.ENCRYPTION_KEYS]
    )


def encrypt_json(value: dict) -> str:
    return _fernet().encrypt(json.dumps(value, sort_keys=True).encode()).decode()


def decrypt_json(token: str) -> dict:
    if not token:
        return {}
    try:
        return json.loads(_fernet().decrypt(token.encode()))
    except InvalidToken:
        # Wrong or rotated-away key: say so without revealing anything about the ciphertext.
        raise RuntimeError(
            "connection secrets cannot be decrypted with the configured encryption keys"
        ) from None


def rotate(token: str) -> str:
    """Re-encrypt a token with the newest key (it may have been made with any configured key)."""
    return _fernet().rotate(token.encode()).decode()
