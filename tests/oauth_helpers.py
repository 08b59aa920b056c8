"""Helpers for the OAuth tests: a browser stand-in that logs in and answers the consent page over
real HTTP, an in-memory token store for the SDK's OAuthClientProvider, and a local external issuer
(RSA keys generated here, JWKS served on loopback by a real HTTP server)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx2
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp.shared.auth import AuthorizationCodeResult

PASSWORD = "correct horse battery staple"


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(64)[:96]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


class Browser:
    """A person at a browser: logs in on /login/ and answers the consent page (httpx2, cookies kept)."""

    def __init__(self, base_url: str, email: str, password: str = PASSWORD, allow: bool = True):
        self.base_url = base_url
        self.email = email
        self.password = password
        self.allow = allow
        self.http = httpx2.Client(base_url=base_url, follow_redirects=False, timeout=30)
        self.consent_page = ""

    def close(self):
        self.http.close()

    def _csrf(self, html: str) -> str:
        return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)

    def login(self) -> None:
        page = self.http.get("/login/")
        response = self.http.post(
            "/login/",
            data={
                "csrfmiddlewaretoken": self._csrf(page.text),
                "username": self.email,
                "password": self.password,
            },
            headers={"Referer": f"{self.base_url}/login/"},
        )
        assert response.status_code == 302, f"login failed: {response.status_code}"

    def authorize(self, url: str) -> httpx2.Response:
        """Open the authorization URL, log in if asked, answer the consent page; returns the
        final response (a redirect to the client, or an error page)."""
        response = self.http.get(url)
        if response.status_code == 302 and "/login/" in response.headers["location"]:
            self.login()
            response = self.http.get(url)
        if response.status_code != 200 or 'id="authorizationForm"' not in response.text:
            return response
        self.consent_page = response.text
        form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', response.text))
        form = {k: _unescape(v) for k, v in form.items()}
        if self.allow:
            form["allow"] = "Authorize"
        return self.http.post(url, data=form, headers={"Referer": urljoin(self.base_url, url)})


def _unescape(value: str) -> str:
    return (
        value.replace("&amp;", "&")
        .replace("&quot;", '"')
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
    )


def code_from(response: httpx2.Response) -> dict:
    assert response.status_code == 302, (
        f"expected a redirect to the client, got {response.status_code}: {response.text[:500]}"
    )
    return {k: v[0] for k, v in parse_qs(urlsplit(response.headers["location"]).query).items()}


class MemoryStorage:
    """The SDK's TokenStorage, in memory."""

    def __init__(self):
        self.tokens = None
        self.client_info = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client_info

    async def set_client_info(self, client_info):
        self.client_info = client_info


class BrowserHandlers:
    """The SDK's redirect and callback handlers, driven by a Browser."""

    def __init__(self, browser: Browser):
        self.browser = browser
        self.result: AuthorizationCodeResult | None = None
        self.authorizations = 0

    async def redirect(self, url: str) -> None:
        import anyio

        self.authorizations += 1
        response = await anyio.to_thread.run_sync(self.browser.authorize, url)
        params = code_from(response)
        self.result = AuthorizationCodeResult(
            code=params["code"], state=params.get("state"), iss=params.get("iss")
        )

    async def callback(self) -> AuthorizationCodeResult:
        return self.result


# --- a local external issuer ------------------------------------------------------------------


class Issuer:
    """An OAuth issuer on loopback: RSA keys made here, its JWKS and RFC 8414 metadata served over HTTP."""

    def __init__(self):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "test-key-1"
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.jwks_hits = 0
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self):
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/jwks.json":
                    issuer.jwks_hits += 1
                    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(issuer.key.public_key()))
                    body = {"keys": [dict(jwk, kid=issuer.kid, use="sig", alg="RS256")]}
                elif self.path == "/.well-known/oauth-authorization-server":
                    body = {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/jwks.json"}
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        return Handler

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def token(
        self,
        *,
        audience,
        subject="sub-1",
        email=None,
        scope="mcp:read mcp:exec",
        key=None,
        issuer=None,
        expires_in=300,
        extra=None,
        kid=None,
        algorithm="RS256",
    ) -> str:
        now = int(time.time())
        claims = {
            "iss": issuer or self.url,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "exp": now + expires_in,
            "scope": scope,
            "azp": "test-agent",
        }
        if email:
            claims["email"] = email
        claims.update(extra or {})
        return jwt.encode(claims, key or self.key, algorithm=algorithm, headers={"kid": kid or self.kid})


def unsigned_token(claims: dict, kid: str) -> str:
    """An `alg: none` JWT (no signature)."""

    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none', 'typ': 'JWT', 'kid': kid})}.{part(claims)}."
