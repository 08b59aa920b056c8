"""Who is calling, for upstream MCP servers that trust the gateway: a short-lived JWT signed by the
gateway, naming the user, their groups, the org and the session (`gateway_jwt` on an mcp connection).

The signing keys are `settings.UPSTREAM_JWT_KEYS` (PEM, from the environment; unset, a development
key is generated once into the data directory when first needed). The first key signs; every key is published as a JWKS at
`/.well-known/jwks.json`, so a key can be rotated without breaking upstreams: publish the new key
first (second in the list), let upstreams refresh their JWKS cache, make it first, then drop the old
one. The `kid` of a key is its RFC 7638 thumbprint. JOSE is joserfc's (the library Authlib uses).

Claims (docs/upstream-mcp.md, "Who is calling"):

    iss    the gateway's public base URL
    aud    the connection's `gateway_jwt.audience` (one audience per connection: a token minted
           for one upstream is refused by another that checks its own audience)
    sub    the user's id; email, name: the user's; groups: their group names (sorted)
    org    {"id", "name"} of the user's organization
    sid    the Portcullis session id of the call (absent for a listing, which records none)
    cid    the connection's name
    iat, nbf, exp (iat + UPSTREAM_JWT_TTL_SECONDS), jti (random, unique per token)
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.conf import settings
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

JWKS_PATH = "/.well-known/jwks.json"


@dataclass(frozen=True)
class Caller:
    """The identity a token names. `user_id` None: the gateway itself (a connection test)."""

    user_id: str | None
    email: str = ""
    name: str = ""
    groups: tuple[str, ...] = ()
    org_id: str = ""
    org_name: str = ""
    session_id: str | None = None


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    key: ECKey | RSAKey


def _load(pem: str) -> SigningKey:
    private = serialization.load_pem_private_key(pem.strip().encode(), password=None)
    if isinstance(private, ec.EllipticCurvePrivateKey):
        if private.curve.name != "secp256r1":
            raise ValueError("an EC signing key must be on P-256 (ES256)")
        key: ECKey | RSAKey = ECKey.import_key(pem.strip())
        alg = "ES256"
    elif isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < 2048:
            raise ValueError("an RSA signing key must have at least 2048 bits")
        key, alg = RSAKey.import_key(pem.strip()), "RS256"
    else:
        raise ValueError("a signing key must be EC P-256 or RSA")
    return SigningKey(kid=key.thumbprint(), alg=alg, key=key)


DEVELOPMENT_KEY_FILE = "upstream_jwt_key.pem"


def _development_key() -> str:
    """The key used when PORTCULLIS_UPSTREAM_JWT_KEYS is unset: generated once into the data
    directory (mode 0600, outside git), created only when first needed; never in the repository."""
    path = settings.DATA_DIR / DEVELOPMENT_KEY_FILE
    if not path.exists():
        pem = (
            ec.generate_private_key(ec.SECP256R1())
            .private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            .decode()
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside, then linked into place: another process sees the whole key or none.
        partial = path.with_name(f".{DEVELOPMENT_KEY_FILE}.{os.getpid()}.{uuid.uuid4().hex}")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(pem)
        try:
            os.link(partial, path)
        except FileExistsError:  # another process made it first: use theirs
            pass
        finally:
            partial.unlink()
    return path.read_text()


@lru_cache(maxsize=1)
def signing_keys() -> tuple[SigningKey, ...]:
    """Every configured key, the active (signing) one first."""
    keys = []
    for index, pem in enumerate(settings.UPSTREAM_JWT_KEYS or [_development_key()]):
        try:
            keys.append(_load(pem))
        except (ValueError, TypeError) as exc:
            raise RuntimeError(
                f"PORTCULLIS_UPSTREAM_JWT_KEYS key #{index + 1} is not usable: {exc}"
            ) from None
    return tuple(keys)


def jwks() -> dict:
    """The public half of every key, as a JSON Web Key Set."""
    return {
        "keys": [
            {**k.key.as_dict(private=False), "kid": k.kid, "alg": k.alg, "use": "sig"} for k in signing_keys()
        ]
    }


def issuer() -> str:
    return settings.PUBLIC_BASE_URL


def mint(caller: Caller, *, audience: str, connection: str, ttl_seconds: int | None = None) -> str:
    """A signed identity token for one upstream exchange."""
    active = signing_keys()[0]
    now = int(time.time())
    ttl = settings.UPSTREAM_JWT_TTL_SECONDS if ttl_seconds is None else ttl_seconds
    claims: dict = {
        "iss": issuer(),
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
        "cid": connection,
    }
    if caller.user_id is None:
        claims["sub"] = "portcullis-gateway"
    else:
        claims.update(
            sub=caller.user_id,
            email=caller.email,
            name=caller.name,
            groups=sorted(caller.groups),
            org={"id": caller.org_id, "name": caller.org_name},
        )
    if caller.session_id:
        claims["sid"] = caller.session_id
    return jwt.encode({"alg": active.alg, "kid": active.kid, "typ": "JWT"}, claims, active.key)
