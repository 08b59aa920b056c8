"""The real OpenID Connect provider of the SSO tests (tests/idp: django-oauth-toolkit's OIDC
provider in a process of its own on loopback) and a person signing in through it over HTTP.

`idp` (session-scoped) starts the provider; `IdP.control` changes its users, its client and, for
attack tests, makes it misbehave (another issuer or audience in the ID token, no nonce).
`sso_sign_in` drives one sign-in like a browser: the gateway's login form -> the IdP's login page
-> the IdP's redirect back -> the gateway's callback (the gateway side runs in Django's test
client, the IdP side over real HTTP)."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.conf import settings

from tests.conftest import ROOT, _free_port

CLIENT_ID = "portcullis-test"
CLIENT_SECRET = "s3cret-of-the-test-client-" + "x" * 20
IDP_PASSWORD = "idp password 1234"


@dataclass
class IdP:
    url: str
    issuer: str
    process: subprocess.Popen
    log: Path
    control_token: str

    def control(self, **op) -> dict:
        response = httpx2.post(
            f"{self.url}/control/", json=op, headers={"X-Control-Token": self.control_token}, timeout=30
        )
        assert response.status_code == 200, response.text
        return response.json()

    def user(self, username: str, email: str, groups=(), active: bool = True) -> str:
        """Create or change a user at the IdP; returns their subject."""
        return self.control(
            op="user",
            username=username,
            email=email,
            groups=list(groups),
            password=IDP_PASSWORD,
            active=active,
        )["sub"]

    def client(self, *gateway_urls: str) -> None:
        self.control(
            op="client",
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            redirect_uris=[f"{u}/login/sso/callback/" for u in gateway_urls],
            post_logout_redirect_uris=[f"{u}/login/" for u in gateway_urls],
        )

    def tamper(self, **tamper) -> None:
        self.control(op="tamper", tamper=tamper)


@pytest.fixture(scope="session")
def idp(tmp_path_factory):
    data = tmp_path_factory.mktemp("idp")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (data / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    port = _free_port()
    token = secrets.token_urlsafe(16)
    env = {
        "PATH": "/usr/bin:/bin",
        "IDP_DATA_DIR": str(data),
        "IDP_PORT": str(port),
        "IDP_SECRET_KEY": secrets.token_urlsafe(40),
        "IDP_CONTROL_TOKEN": token,
        "IDP_KEY_FILE": str(data / "key.pem"),
        "PYTHONUNBUFFERED": "1",
    }
    log = data / "idp.log"
    with open(log, "wb") as fh:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.idp.serve"], cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx2.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx2.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the test IdP did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    provider = IdP(url=url, issuer=f"{url}/o", process=process, log=log, control_token=token)
    provider.client(settings.PUBLIC_BASE_URL)
    yield provider
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


def _csrf(html: str) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)


def idp_login(authorize_url: str, username: str, password: str = IDP_PASSWORD) -> str:
    """At the IdP: open the authorization URL, sign in, and return where the IdP sends the browser
    back (the gateway's callback with code and state), or "" when the IdP did not send it back."""
    with httpx2.Client(follow_redirects=False, timeout=30) as http:
        response = http.get(authorize_url)
        assert response.status_code == 302, response.text[:500]
        login_url = urljoin(authorize_url, response.headers["location"])
        page = http.get(login_url)
        posted = http.post(
            login_url,
            data={
                "csrfmiddlewaretoken": _csrf(page.text),
                "username": username,
                "password": password,
                "next": re.search(r'name="next" value="([^"]*)"', page.text).group(1).replace("&amp;", "&"),
            },
            headers={"Referer": login_url},
        )
        if posted.status_code != 302:
            return ""  # the IdP refused the person
        back = http.get(urljoin(login_url, posted.headers["location"]))
        assert back.status_code == 302, back.text[:500]
        return back.headers["location"]


def local_path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + ("?" + parts.query if parts.query else "")


def sso_start(client, email: str, next_url: str = "/sessions/"):
    return client.post("/login/", {"username": email, "sso": "1", "next": next_url})


def sso_sign_in(client, email: str, username: str, next_url: str = "/sessions/"):
    """The whole sign-in; returns (the gateway's answer to the callback, the callback URL)."""
    started = sso_start(client, email, next_url)
    assert started.status_code == 302, started.content[:500]
    callback = idp_login(started["Location"], username)
    assert callback, "the IdP did not sign the person in"
    return client.get(local_path(callback)), callback
