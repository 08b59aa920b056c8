"""A local stand-in for Slack, speaking Slack's real wire formats (nothing here is Portcullis-specific):

* the server side Portcullis calls: an incoming webhook (`POST /webhook`, JSON message), the Web
  API methods `users.info` (form fields, bearer bot token) and `views.open` (JSON), and
  `response_url`s (`POST /actions/...`, JSON);
* the client side Slack plays towards an app's interactivity URL: `block_actions` and
  `view_submission` payloads shaped as Slack sends them, form-encoded as `payload=<JSON>`, signed
  with the app's signing secret (`X-Slack-Signature: v0=HMAC-SHA256("v0:<ts>:<body>")`).

Everything it receives is kept, and `wait_for` waits on a condition (no sleeps).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode


class SlackStandIn:
    def __init__(self, *, signing_secret: str, bot_token: str, team_id: str = "T0PORTCUL"):
        self.signing_secret = signing_secret
        self.bot_token = bot_token
        self.team_id = team_id
        self.members: dict[str, dict] = {}
        self.webhook_messages: list[dict] = []
        self.responses: list[tuple[str, dict]] = []
        self.views: list[dict] = []
        self.api_calls: list[tuple[str, dict]] = []
        self._cond = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._counter = 0

    # --- lifecycle -----------------------------------------------------------------------------
    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        host, port = self._server.server_address
        return f"http://{host}:{port}"

    def add_member(self, slack_id: str, email: str, *, team_id: str | None = None, name: str = "") -> None:
        self.members[slack_id] = {
            "id": slack_id,
            "team_id": team_id or self.team_id,
            "name": name or email.split("@")[0],
            "deleted": False,
            "is_bot": False,
            "profile": {"email": email, "real_name": name or email.split("@")[0].title()},
        }

    def wait_for(self, what: str, count: int = 1, timeout: float = 30) -> list:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(getattr(self, what)) < count:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"the stand-in got {len(getattr(self, what))} {what}, expected {count}"
                self._cond.wait(remaining)
            return list(getattr(self, what))

    # --- the server side ------------------------------------------------------------------------
    def _record(self, name: str, item) -> None:
        with self._cond:
            getattr(self, name).append(item)
            self._cond.notify_all()

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status: int, body, content_type="application/json"):
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/webhook":
                    standin._record("webhook_messages", json.loads(raw))
                    return self._answer(200, "ok", "text/plain")
                if self.path.startswith("/actions/"):
                    standin._record("responses", (self.path, json.loads(raw)))
                    return self._answer(200, {"ok": True})
                if self.path.startswith("/api/"):
                    return self._api(self.path[len("/api/") :], raw)
                return self._answer(404, "not found", "text/plain")

            def _api(self, method: str, raw: bytes):
                if self.headers.get("Authorization") != f"Bearer {standin.bot_token}":
                    return self._answer(200, {"ok": False, "error": "invalid_auth"})
                content_type = self.headers.get("Content-Type", "")
                if method == "users.info":
                    if "application/x-www-form-urlencoded" not in content_type:
                        return self._answer(200, {"ok": False, "error": "invalid_arguments"})
                    args = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
                    standin._record("api_calls", (method, args))
                    member = standin.members.get(args.get("user", ""))
                    if member is None:
                        return self._answer(200, {"ok": False, "error": "user_not_found"})
                    return self._answer(200, {"ok": True, "user": member})
                if method == "views.open":
                    args = json.loads(raw)
                    standin._record("api_calls", (method, args))
                    if not args.get("trigger_id"):
                        return self._answer(200, {"ok": False, "error": "invalid_trigger_id"})
                    standin._record("views", args)
                    return self._answer(200, {"ok": True, "view": {"id": "V0STANDIN", **args["view"]}})
                return self._answer(200, {"ok": False, "error": "unknown_method"})

        return Handler

    # --- the client side: what Slack posts to the app ------------------------------------------
    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def user(self, slack_id: str) -> dict:
        member = self.members.get(slack_id) or {"id": slack_id, "name": "stranger", "team_id": self.team_id}
        return {
            "id": slack_id,
            "username": member["name"],
            "name": member["name"],
            "team_id": member["team_id"],
        }

    def block_actions(
        self, message: dict, *, slack_id: str, action_id: str, team_id: str | None = None
    ) -> dict:
        """The payload Slack sends when `slack_id` clicks the button `action_id` of `message`."""
        n = self._next()
        block, element = next(
            (b, e)
            for b in message["blocks"]
            if b["type"] == "actions"
            for e in b["elements"]
            if e.get("action_id") == action_id
        )
        team = team_id or self.team_id
        return {
            "type": "block_actions",
            "user": self.user(slack_id),
            "api_app_id": "A0PORTCULLIS",
            "token": "deprecated-verification-token",
            "container": {"type": "message", "message_ts": f"1765000000.{n:06d}", "channel_id": "C0REVIEWS"},
            "trigger_id": f"{n}.1765000000.{n:032x}",
            "team": {"id": team, "domain": "acme"},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": "C0REVIEWS", "name": "reviews"},
            "message": {
                "type": "message",
                "ts": f"1765000000.{n:06d}",
                "text": message["text"],
                "blocks": message["blocks"],
            },
            "state": {"values": {}},
            "response_url": f"{self.url}/actions/{team}/{n}/{n:024x}",
            "actions": [
                {
                    "action_id": action_id,
                    "block_id": block.get("block_id", ""),
                    "text": element["text"],
                    "value": element.get("value", ""),
                    "style": element.get("style"),
                    "type": "button",
                    "action_ts": f"1765000001.{n:06d}",
                }
            ],
        }

    def view_submission(self, opened: dict, *, slack_id: str, reason: str) -> dict:
        """The payload Slack sends when `slack_id` submits the modal opened by `views.open`."""
        view = opened["view"]
        return {
            "type": "view_submission",
            "team": {"id": self.team_id, "domain": "acme"},
            "user": self.user(slack_id),
            "api_app_id": "A0PORTCULLIS",
            "token": "deprecated-verification-token",
            "trigger_id": f"{self._next()}.1765000000.submit",
            "view": {
                "id": "V0STANDIN",
                "team_id": self.team_id,
                "type": "modal",
                "callback_id": view["callback_id"],
                "private_metadata": view["private_metadata"],
                "blocks": view["blocks"],
                "state": {"values": {"reason": {"reason": {"type": "plain_text_input", "value": reason}}}},
                "hash": "1765000000.standin",
                "title": view["title"],
            },
            "response_urls": [],
            "is_enterprise_install": False,
            "enterprise": None,
        }

    def signed(
        self, payload: dict, *, secret: str | None = None, timestamp: int | None = None
    ) -> tuple[bytes, dict]:
        """The form body and headers Slack sends for `payload`."""
        body = urlencode({"payload": json.dumps(payload)}).encode()
        ts = str(timestamp if timestamp is not None else int(time.time()))
        digest = hmac.new(
            (secret or self.signing_secret).encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256
        )
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": "v0=" + digest.hexdigest(),
            "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
        }
        return body, headers
