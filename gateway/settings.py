"""Portcullis settings: one module, every value from the environment.

With no environment at all this is the embedded default: SQLite in `.portcullis/`, an
in-memory channel layer, Celery tasks run in-process, and generated keys kept in git-ignored
files. Production differs only by environment values (`DATABASE_URL`, `REDIS_URL`,
`PORTCULLIS_SECRET_KEY`, `PORTCULLIS_ENCRYPTION_KEYS`, ...); see `docs/configuration.md`.
"""

import ipaddress
import os
import secrets
from pathlib import Path

import dj_database_url
from cryptography.fernet import Fernet

from gateway.configerror import ImproperlyConfiguredEnv

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    """A string from the environment, or from the file named by `<NAME>_FILE` (for secrets)."""
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        return Path(file_name).read_text().strip()
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    """Only `true`/`false` (any case) or `1`/`0`; anything else is a configuration error, not a guess."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise ImproperlyConfiguredEnv(f"{name} must be true or false, not {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfiguredEnv(f"{name} must be an integer, not {raw!r}") from None


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


# Generated development secrets live here; the directory is git-ignored.
DATA_DIR = Path(env_str("PORTCULLIS_DATA_DIR", str(BASE_DIR / ".portcullis")))


def _generated_secret(filename: str, make) -> str:
    """Read a development secret from DATA_DIR, creating it once. Never used when the env sets one."""
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    path = DATA_DIR / filename
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(make())
    return path.read_text().strip()


DEBUG = env_bool("PORTCULLIS_DEBUG", False)
# After the application is loaded, move its objects out of the garbage collector's reach
# (gc.freeze): a collection then walks only what requests created, not the hundreds of thousands of
# objects of Django, the MCP SDK and their imports (docs/operations.md, "The garbage collector").
GC_FREEZE = env_bool("PORTCULLIS_GC_FREEZE", True)
SECRET_KEY = env_str("PORTCULLIS_SECRET_KEY") or _generated_secret(
    "django_secret_key", lambda: secrets.token_urlsafe(50)
)
# Fernet keys for connection secrets, comma-separated, newest first (MultiFernet: rotate by
# prepending a new key, then `manage.py secrets_rotate` re-encrypts every row with it).
ENCRYPTION_KEYS = [k.strip() for k in env_str("PORTCULLIS_ENCRYPTION_KEYS").split(",") if k.strip()] or [
    _generated_secret("encryption_key", lambda: Fernet.generate_key().decode())
]
for _key in ENCRYPTION_KEYS:
    try:
        Fernet(_key.encode())
    except ValueError:
        raise ImproperlyConfiguredEnv(
            "PORTCULLIS_ENCRYPTION_KEYS holds a value that is not a Fernet key (32 url-safe base64-encoded bytes)"
        ) from None

PORT = env_int("PORT", 8000)
# `make run PORT=9000` records the URL it serves in DATA_DIR/run_public_url, so every later
# `manage.py` command of this checkout (mcp_auth status, token links) advertises the same URL as
# the server. PORTCULLIS_PUBLIC_URL wins, then an explicit PORT, then that record, then port 8000.
RUN_PUBLIC_URL_FILE = DATA_DIR / "run_public_url"


def _recorded_run_url() -> str:
    try:
        return RUN_PUBLIC_URL_FILE.read_text().strip()
    except OSError:
        return ""


PUBLIC_BASE_URL = (
    env_str("PORTCULLIS_PUBLIC_URL")
    or (f"http://127.0.0.1:{PORT}" if "PORT" in os.environ else "")
    or _recorded_run_url()
    or f"http://127.0.0.1:{PORT}"
).rstrip("/")
ALLOWED_HOSTS = env_list("PORTCULLIS_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("PORTCULLIS_CSRF_TRUSTED_ORIGINS", [PUBLIC_BASE_URL])
# Cookies of the web app and the admin: Secure whenever the public URL is https; behind a TLS
# proxy, PORTCULLIS_TRUST_PROXY_TLS=true trusts its X-Forwarded-Proto header.
_HTTPS = PUBLIC_BASE_URL.startswith("https://")
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = _HTTPS
SESSION_COOKIE_SAMESITE = CSRF_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = env_int("PORTCULLIS_SESSION_COOKIE_AGE", 12 * 3600)
if env_bool("PORTCULLIS_TRUST_PROXY_TLS", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

INSTALLED_APPS = [
    "daphne",
    "governance.admin_apps.PortcullisAdminConfig",  # django.contrib.admin with our site
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served from here, so the docs page works offline
    "oauth2_provider",  # the built-in OAuth 2.1 authorization server (docs/oauth.md)
    "axes",  # failed-login throttling and lockout (docs/sso.md)
    "governance",
    "gateway",
    "reviews",
    "sessions.apps.SessionRecordsConfig",
    "mcpserver",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "gateway.observe.bind_user_middleware",  # the signed-in user in the log context
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last: answers a locked-out login with governance.auth's page
]

ROOT_URLCONF = "gateway.urls"
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"
ASGI_APPLICATION = "gateway.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database: PostgreSQL when DATABASE_URL is set, else a SQLite file in DATA_DIR.
DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # A process-wide psycopg pool: MCP requests each run their ORM calls on a thread of their
        # own (ThreadSensitiveContext), so per-thread persistent connections would mean a new
        # connection per request. With the pool, "connect" is a checkout.
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": env_int("PORTCULLIS_DB_POOL_MIN", 2),
            "max_size": env_int("PORTCULLIS_DB_POOL_MAX", 40),
            # How long a request waits for a connection before a 503 (gateway.unavailable).
            "timeout": env_int("PORTCULLIS_DB_POOL_TIMEOUT", 5),
        }
        # Server-side binding: statements go to PostgreSQL apart from their parameters, so psycopg
        # does not quote values into the text, and a statement that ran `prepare_threshold` times
        # on a connection is prepared there (parsed and planned once). Django's default is
        # client-side binding and no preparing.
        if env_bool("PORTCULLIS_DB_SERVER_SIDE_BINDING", True):
            DATABASES["default"]["OPTIONS"]["server_side_binding"] = True
            DATABASES["default"]["OPTIONS"]["prepare_threshold"] = 5
        # Behind PgBouncer in transaction mode a connection may change server between
        # transactions: no server-side cursors, no prepared statements (docs/operations.md).
        # Binding stays server-side: an unnamed statement is parsed and run in one go.
        if env_bool("PORTCULLIS_DB_PGBOUNCER", False):
            DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True
            DATABASES["default"]["OPTIONS"]["prepare_threshold"] = None
else:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "portcullis.sqlite3",
            "CONN_MAX_AGE": 60,
            # WAL lets the MCP threads read while an exec thread writes its record; IMMEDIATE
            # transactions take the write lock up front, so the audit chain's head is read and
            # advanced by one writer at a time (SQLite has no SELECT ... FOR UPDATE).
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL;",
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# The sessions' "stats" index INCLUDEs columns for index-only counts on PostgreSQL; SQLite (the
# embedded default) ignores INCLUDE and keeps the index on its key columns, which is fine.
SILENCED_SYSTEM_CHECKS = ["models.W040"]

AUTH_USER_MODEL = "governance.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}
    }
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# Celery: a real broker with REDIS_URL; otherwise tasks run in-process, at once.
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_TASK_ALWAYS_EAGER = not REDIS_URL
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_DEFAULT_QUEUE = "portcullis"
CELERY_BEAT_SCHEDULE = {
    # The backstop of every replica's own sweep (gateway.maintenance): lapsed leases, the outbox.
    "gateway-maintenance": {"task": "gateway.tasks.maintenance_tick", "schedule": 15.0},
}
# Surviving a broker outage: keep retrying the connection forever instead of exiting, and never
# prefetch more than one message per child, so a killed worker strands at most one.
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": 600,
    "socket_timeout": 10,
    "socket_connect_timeout": 5,
}
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
# Static files (the admin's, the API docs') come from the apps directly: no collectstatic step,
# and they are served by the gateway itself under daphne, with or without DEBUG.
WHITENOISE_USE_FINDERS = True
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise also looks here (collectstatic's target)

# The REST API (/api/v1/, gateway/api/): bearer API tokens only, JSON only, one error format.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["gateway.api.auth.TokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["gateway.api.auth.ActorPermission"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "gateway.api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "gateway.api.schema.PortcullisAutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Portcullis REST API",
    "DESCRIPTION": "The same services, policy and audit as the MCP endpoint and the admin. "
    "Authenticate with `Authorization: Bearer pcu_…` (manage.py token_issue).",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Fields named `status` and `kind` take several sets of values, and the risk levels several names:
    # these are named once each.
    "ENUM_NAME_OVERRIDES": {
        "EnvelopeStatusEnum": ["completed", "failed", "blocked", "pending_approval", "running"],
        "ContractStatusEnum": "gateway.models.ContractStatus",
        "ContractKindEnum": "gateway.models.ContractKind",
        "RiskLevelEnum": ["low", "medium", "high", "critical"],
    },
}

# Logs: one line per record on stderr, JSON (python-json-logger) or plain, each with the request
# id, org, user, surface and session id when known (gateway/logs.py).
LOG_FORMAT = env_str("PORTCULLIS_LOG_FORMAT", "plain").strip().lower()
LOGGING_CONFIG = "logging.config.dictConfig"
from gateway.logs import logging_config  # noqa: E402 - needs env_str above, nothing of Django

LOGGING = logging_config(fmt=LOG_FORMAT, level=env_str("PORTCULLIS_LOG_LEVEL").strip() or None)

# --- Portcullis ---------------------------------------------------------------------------
# Command-line connections run programs on the gateway host: off unless an operator says so.
COMMAND_CONNECTIONS_ENABLED = env_bool("PORTCULLIS_COMMAND_CONNECTIONS", False)
# `exec` answers `running` after this many seconds; the work goes on and is recorded.
EXEC_HANDOFF_SECONDS = float(env_int("PORTCULLIS_EXEC_HANDOFF_SECONDS", 50))
# The bounded pool that runs connectors in each gateway process.
EXEC_WORKERS = env_int("PORTCULLIS_EXEC_WORKERS", 16)
# Idle target connections kept per connection and session options (gateway.connectors.pool);
# 0 turns reuse off. An idle connection older than TARGET_POOL_IDLE_SECONDS is closed.
TARGET_POOL_MAX_IDLE = env_int("PORTCULLIS_TARGET_POOL_MAX_IDLE", 4)
TARGET_POOL_IDLE_SECONDS = float(env_int("PORTCULLIS_TARGET_POOL_IDLE_SECONDS", 120))
# Per-connection defaults; each connection may lower or raise its own.
DEFAULT_MAX_ROWS = env_int("PORTCULLIS_DEFAULT_MAX_ROWS", 1000)
DEFAULT_MAX_OUTPUT_BYTES = env_int("PORTCULLIS_DEFAULT_MAX_OUTPUT_BYTES", 1024 * 1024)
DEFAULT_TIMEOUT_SECONDS = env_int("PORTCULLIS_DEFAULT_TIMEOUT_SECONDS", 120)
# Inputs above this are refused (and recorded), before any connector sees them.
MAX_INPUT_BYTES = env_int("PORTCULLIS_MAX_INPUT_BYTES", 1024 * 1024)
# HTTP bodies above this get 413 from the MCP transport itself.
MCP_MAX_REQUEST_BYTES = env_int("PORTCULLIS_MCP_MAX_REQUEST_BYTES", 16 * 1024 * 1024)
# Leases on the database clock (sessions.lifecycle): a running session's runner renews its lease
# every third of this; a session whose lease lapsed is ended (failed, outcome unknown). An open
# session nobody claimed within SESSION_DISPATCH_LEASE_SECONDS is run by another process.
SESSION_LEASE_SECONDS = env_int("PORTCULLIS_SESSION_LEASE_SECONDS", 30)
SESSION_DISPATCH_LEASE_SECONDS = env_int("PORTCULLIS_SESSION_DISPATCH_LEASE_SECONDS", 10)
# Work queued for an agent that no agent took within this many seconds fails with a clear message
# instead of running late.
AGENT_QUEUE_EXPIRY_SECONDS = env_int("PORTCULLIS_AGENT_QUEUE_EXPIRY_SECONDS", 300)
# How often each gateway process sweeps lapsed leases and retries the outbox (gateway.maintenance).
SWEEP_SECONDS = float(env_int("PORTCULLIS_SWEEP_SECONDS", 5))
# Each process relays the outbox rows it wrote right after commit (off only for tests that need
# to watch the rows wait).
OUTBOX_RELAY_IN_PROCESS = env_bool("PORTCULLIS_OUTBOX_RELAY_IN_PROCESS", True)
# A call of an upstream MCP tool that needs approval is held open this long for the decision
# (gateway.upstream_hold); below the 60 s common clients allow a tool call. Each mcp connection may
# set its own (`approval_hold_seconds`, 0-300).
UPSTREAM_APPROVAL_HOLD_SECONDS = float(env_int("PORTCULLIS_UPSTREAM_APPROVAL_HOLD_SECONDS", 45))
# Upstream MCP sessions kept open per connection and process (gateway/connectors/mcp_pool.py): a stdio
# server stays running, an HTTP session is reused; 0 opens a fresh session per call. A session idle
# this long is closed.
UPSTREAM_POOL_SIZE = env_int("PORTCULLIS_UPSTREAM_POOL_SIZE", 2)
UPSTREAM_POOL_IDLE_SECONDS = float(env_int("PORTCULLIS_UPSTREAM_POOL_IDLE_SECONDS", 300))
# An upstream's tool listing is kept between calls (each call checks its tool against the pinned
# contract) only while a pooled session hears the upstream's tools/list_changed announcements, and at
# most this long; 0 lists the tools again before every call (gateway/connectors/mcp.py).
UPSTREAM_LISTING_MAX_AGE_SECONDS = float(env_int("PORTCULLIS_UPSTREAM_LISTING_MAX_AGE_SECONDS", 30))


def _pem_blocks(text: str) -> list[str]:
    marker = "-----END PRIVATE KEY-----"
    blocks = [b.strip() + "\n" + marker for b in text.split(marker) if b.strip()]
    return [b for b in blocks if "-----BEGIN PRIVATE KEY-----" in b]


# Keys that sign the short-lived identity JWTs sent to upstream MCP servers that trust the gateway
# (`gateway_jwt`, gateway/upstream_identity.py): PKCS#8 PEM private keys (EC P-256 or RSA), one after
# the other; the first signs, all are published at /.well-known/jwks.json (rotation: add the new key
# second, wait until upstreams refreshed their JWKS cache, move it first, later drop the old one;
# docs/upstream-mcp.md). Unset: one EC key
# generated once into PORTCULLIS_DATA_DIR when first needed (development; every replica needs the
# same keys).
UPSTREAM_JWT_KEYS = _pem_blocks(env_str("PORTCULLIS_UPSTREAM_JWT_KEYS").replace("\\n", "\n"))
if env_str("PORTCULLIS_UPSTREAM_JWT_KEYS") and not UPSTREAM_JWT_KEYS:
    raise ImproperlyConfiguredEnv(
        "PORTCULLIS_UPSTREAM_JWT_KEYS must hold PKCS#8 PEM private keys (-----BEGIN PRIVATE KEY-----)"
    )
# Lifetime of an identity JWT (seconds): long enough for one upstream exchange, no more.
UPSTREAM_JWT_TTL_SECONDS = env_int("PORTCULLIS_UPSTREAM_JWT_TTL_SECONDS", 120)
# Long waits (exec handoff, sessions_wait) send an MCP progress notification this often.
PROGRESS_INTERVAL_SECONDS = float(env_int("PORTCULLIS_PROGRESS_INTERVAL_SECONDS", 10))
# Key for masking pseudonyms (HMAC), per org derived from it; defaults to one derived from SECRET_KEY.
# Changing it changes every pseudonym.
MASKING_KEY = env_str("PORTCULLIS_MASKING_KEY")

# --- AI risk analysis ----------------------------------------------------------------------
# Every finished session gets an analysis. The built-in analyzer needs no network; set
# PORTCULLIS_ANALYZER_URL (an OpenAI-compatible base URL such as https://api.openai.com/v1, or the
# full .../chat/completions URL) and PORTCULLIS_ANALYZER_MODEL to ask an LLM instead. It receives
# the input (masked with the connection's masking rules) and the masked output summary; on any
# failure the built-in analyzer answers and the analysis says why (`fallback_reason`).
ANALYZER_URL = env_str("PORTCULLIS_ANALYZER_URL").strip()
ANALYZER_MODEL = env_str("PORTCULLIS_ANALYZER_MODEL").strip()
# Sent as a bearer token; PORTCULLIS_ANALYZER_KEY_FILE reads it from a file.
ANALYZER_KEY = env_str("PORTCULLIS_ANALYZER_KEY").strip()
ANALYZER_TIMEOUT_SECONDS = float(env_int("PORTCULLIS_ANALYZER_TIMEOUT_SECONDS", 20))
# With a broker, the Celery worker claims finished sessions to analyse from the outbox in batches
# (sessions/analysis_drain.py). A claimed batch is the worker's for this long (database clock): a
# worker killed mid-batch leaves it to be claimed again once this lapses. After a wake-up the worker
# waits this many milliseconds for more sessions to end, so that one claim takes several.
ANALYSIS_LEASE_SECONDS = env_int("PORTCULLIS_ANALYSIS_LEASE_SECONDS", 120)
ANALYSIS_BATCH_WAIT_MS = env_int("PORTCULLIS_ANALYSIS_BATCH_WAIT_MS", 50)
# With an LLM analyzer, this many sessions of a batch are sent to it at once.
ANALYSIS_LLM_CONCURRENCY = env_int("PORTCULLIS_ANALYSIS_LLM_CONCURRENCY", 4)
# Analyses lost on the way (broker down, worker killed) are made by a periodic sweep instead.
CELERY_BEAT_SCHEDULE["reviews-expire"] = {"task": "reviews.tasks.reviews_expire", "schedule": 30.0}

# Review notifications: e-mail through Django's backend (console unless configured), and an
# optional Slack incoming webhook.
EMAIL_BACKEND = env_str("PORTCULLIS_EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env_str("PORTCULLIS_EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("PORTCULLIS_EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("PORTCULLIS_EMAIL_USER")
EMAIL_HOST_PASSWORD = env_str("PORTCULLIS_EMAIL_PASSWORD")
EMAIL_USE_TLS = env_bool("PORTCULLIS_EMAIL_TLS", False)
DEFAULT_FROM_EMAIL = env_str("PORTCULLIS_EMAIL_FROM", "portcullis@localhost")
SLACK_WEBHOOK_URL = env_str("PORTCULLIS_SLACK_WEBHOOK_URL")
# Approve / Reject buttons in Slack (docs/reviews.md): the app's signing secret verifies each click,
# the bot token (users:read.email) maps the clicker to a user by e-mail. Both or no buttons.
SLACK_SIGNING_SECRET = env_str("PORTCULLIS_SLACK_SIGNING_SECRET")
SLACK_BOT_TOKEN = env_str("PORTCULLIS_SLACK_BOT_TOKEN")
SLACK_TEAM_ID = env_str("PORTCULLIS_SLACK_TEAM_ID")  # only clicks from this workspace (recommended)
SLACK_API_URL = env_str("PORTCULLIS_SLACK_API_URL", "https://slack.com/api")
# response_url must be Slack's (https://hooks.slack.com/); a test stand-in adds its own prefix here.
SLACK_RESPONSE_URL_PREFIX = env_str("PORTCULLIS_SLACK_RESPONSE_URL_PREFIX")

CELERY_BEAT_SCHEDULE["sessions-analyze-missing"] = {
    "task": "sessions.tasks.analysis_sweep_missing",
    "schedule": 60.0,
}

# --- OAuth 2.1 for MCP clients (docs/oauth.md) -----------------------------------------------
# Whether OAuth is on, the resource URI, the external issuer and the groups claim live in the
# database (`manage.py mcp_auth`); these are the built-in authorization server's fixed rules.
OAUTH_ACCESS_TOKEN_SECONDS = env_int("PORTCULLIS_OAUTH_ACCESS_TOKEN_SECONDS", 3600)
OAUTH_REFRESH_TOKEN_SECONDS = env_int("PORTCULLIS_OAUTH_REFRESH_TOKEN_SECONDS", 30 * 24 * 3600)
# Private-use URI schemes (RFC 8252 §7.1) that native clients may register as redirect URIs,
# besides https and http on a loopback address (for example Cursor's `cursor://...`).
OAUTH_REDIRECT_SCHEMES = env_list(
    "PORTCULLIS_OAUTH_REDIRECT_SCHEMES", ["cursor", "vscode", "vscode-insiders"]
)
# Dynamic client registration is open (RFC 7591); this bounds how many clients it creates per hour.
OAUTH_REGISTRATIONS_PER_HOUR = env_int("PORTCULLIS_OAUTH_REGISTRATIONS_PER_HOUR", 200)
OAUTH2_PROVIDER = {
    "SCOPES": {
        "mcp:read": "Read: list and inspect connections, sessions, schemas and rules",
        "mcp:exec": "Execute: run queries and commands on connections (exec)",
        "mcp:admin": "Administer: create, change and delete connections and rules",
    },
    "DEFAULT_SCOPES": ["mcp:read"],
    "PKCE_REQUIRED": True,
    "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,  # S256 only; `plain` (or no method) is refused
    "COMPLIANT_BCP_RFC9700_IMPLICIT_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PASSWORD_GRANT": True,
    "COMPLIANT_BCP_RFC9700_TOKEN_STORAGE": True,  # tokens hashed at rest
    "ROTATE_REFRESH_TOKEN": True,
    "REFRESH_TOKEN_REUSE_PROTECTION": True,  # a replayed refresh token revokes its whole family
    "ACCESS_TOKEN_EXPIRE_SECONDS": OAUTH_ACCESS_TOKEN_SECONDS,
    "REFRESH_TOKEN_EXPIRE_SECONDS": OAUTH_REFRESH_TOKEN_SECONDS,
    "AUTHORIZATION_CODE_EXPIRE_SECONDS": 60,
    "ALLOWED_REDIRECT_URI_SCHEMES": ["http", "https", *OAUTH_REDIRECT_SCHEMES],
    "REQUEST_APPROVAL_PROMPT": "force",  # the consent page every time a client asks
    "OIDC_ISS_ENDPOINT": PUBLIC_BASE_URL,  # the issuer (and the base of every endpoint) in RFC 8414 metadata
    "DCR_ENABLED": True,  # open to anyone while OAuth is on (governance.oauth_views checks that)
    "DCR_REGISTRATION_PERMISSION_CLASSES": ("oauth2_provider.dcr.AllowAllDCRPermission",),
    "OAUTH2_RESPONSE_TYPES_SUPPORTED": ["code"],
    "OAUTH2_GRANT_TYPES_SUPPORTED": ["authorization_code", "refresh_token"],
    "OAUTH2_TOKEN_ENDPOINT_AUTH_METHODS_SUPPORTED": ["none", "client_secret_basic", "client_secret_post"],
}

# --- Outbound events: webhooks, JSON lines, syslog (docs/events-and-export.md) ---------------
# A failed webhook delivery is retried after WEBHOOK_BACKOFF_SECONDS, doubling each time (capped
# at WEBHOOK_BACKOFF_MAX_SECONDS), and is dead after WEBHOOK_MAX_ATTEMPTS attempts.
WEBHOOK_MAX_ATTEMPTS = env_int("PORTCULLIS_WEBHOOK_MAX_ATTEMPTS", 8)
WEBHOOK_BACKOFF_SECONDS = float(env_int("PORTCULLIS_WEBHOOK_BACKOFF_SECONDS", 30))
WEBHOOK_BACKOFF_MAX_SECONDS = float(env_int("PORTCULLIS_WEBHOOK_BACKOFF_MAX_SECONDS", 6 * 3600))
WEBHOOK_TIMEOUT_SECONDS = float(env_int("PORTCULLIS_WEBHOOK_TIMEOUT_SECONDS", 10))
# Delivered webhook records are deleted after this many days (0: kept); failed and dead ones stay.
WEBHOOK_RETENTION_DAYS = env_int("PORTCULLIS_WEBHOOK_RETENTION_DAYS", 30)
# Every event as one JSON line appended to this file (off when empty).
EVENTS_JSONL_PATH = env_str("PORTCULLIS_EVENTS_JSONL_PATH").strip()
# Every event as an RFC 5424 syslog message: "udp://host:514" or "tcp://host:601" (off when empty).
SYSLOG_ADDRESS = env_str("PORTCULLIS_SYSLOG_ADDRESS").strip()
SYSLOG_FACILITY = env_int("PORTCULLIS_SYSLOG_FACILITY", 13)  # 13: log audit
# Each org's audit chain head goes out as an `audit.head` event this often (0: never).
AUDIT_HEADS_INTERVAL_SECONDS = env_int("PORTCULLIS_AUDIT_HEADS_INTERVAL_SECONDS", 3600)
CELERY_BEAT_SCHEDULE["webhooks-retry-due"] = {"task": "sessions.tasks.webhooks_retry_due", "schedule": 60.0}
if AUDIT_HEADS_INTERVAL_SECONDS > 0:
    CELERY_BEAT_SCHEDULE["audit-heads-publish"] = {
        "task": "sessions.tasks.audit_heads_publish",
        "schedule": float(AUDIT_HEADS_INTERVAL_SECONDS),
    }

# --- Sign-in: SSO (OpenID Connect), SCIM, throttling (docs/sso.md) --------------------------
# The axes backend first: it refuses a locked-out username+address before any password is checked.
# SSO sign-ins are logged in through governance.auth.SSOBackend (it never checks a password).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "governance.auth.PasswordBackend",
    "governance.auth.SSOBackend",
]
AXES_ENABLED = env_bool("PORTCULLIS_LOGIN_THROTTLE", True)
AXES_FAILURE_LIMIT = env_int("PORTCULLIS_LOGIN_FAILURE_LIMIT", 5)
# Hours a username+address pair stays locked after the limit (fractions allowed via minutes).
AXES_COOLOFF_TIME = env_int("PORTCULLIS_LOGIN_LOCKOUT_MINUTES", 15) / 60
# Locked per username *and* client address: a guesser is stopped, and nobody can lock a colleague
# out from elsewhere by typing wrong passwords for them.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_USERNAME_CALLABLE = "governance.auth.axes_username"
AXES_CLIENT_IP_CALLABLE = "governance.auth.axes_client_ip"
AXES_LOCKOUT_CALLABLE = "governance.auth.lockout_response"
AXES_VERBOSE = False
# How long the IdP's discovery document and keys are cached by each process (seconds).
SSO_METADATA_CACHE_SECONDS = env_int("PORTCULLIS_SSO_METADATA_CACHE_SECONDS", 300)
SSO_HTTP_TIMEOUT_SECONDS = float(env_int("PORTCULLIS_SSO_HTTP_TIMEOUT_SECONDS", 10))

# --- Operations: metrics, rate limits, beat (docs/operations.md) ----------------------------
# /metrics answers a bearer token equal to PORTCULLIS_METRICS_TOKEN, or any caller whose address is
# in PORTCULLIS_METRICS_ALLOWED_NETWORKS (CIDRs; loopback by default). Anyone else gets 403.
METRICS_TOKEN = env_str("PORTCULLIS_METRICS_TOKEN").strip()
try:
    METRICS_ALLOWED_NETWORKS = [
        ipaddress.ip_network(n, strict=False)
        for n in env_list("PORTCULLIS_METRICS_ALLOWED_NETWORKS", ["127.0.0.0/8", "::1/128"])
    ]
except ValueError as _exc:
    raise ImproperlyConfiguredEnv(f"PORTCULLIS_METRICS_ALLOWED_NETWORKS: {_exc}") from None
# Celery workers serve their own /metrics on this port (0: off); see gateway/celery.py.
WORKER_METRICS_PORT = env_int("PORTCULLIS_WORKER_METRICS_PORT", 0)
# Rate limits ("600/minute", "off"), counted in Redis (gateway/ratelimit.py): the REST API per
# token and per org, /api/mcp per bearer token. Upstream tools have their own, per tool rule.
API_RATE_PER_TOKEN = env_str("PORTCULLIS_API_RATE_PER_TOKEN", "600/minute")
API_RATE_PER_ORG = env_str("PORTCULLIS_API_RATE_PER_ORG", "3000/minute")
MCP_RATE_PER_TOKEN = env_str("PORTCULLIS_MCP_RATE_PER_TOKEN", "600/minute")
MCP_RATE_PER_ORG = env_str("PORTCULLIS_MCP_RATE_PER_ORG", "3000/minute")  # MCP tool calls per org
REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"] = [
    "gateway.api.throttling.ApiTokenThrottle",
    "gateway.api.throttling.ApiOrgThrottle",
]
# Celery beat takes a PostgreSQL advisory lock before it schedules anything; a second beat waits
# for it (standby) and takes over when the first one's connection ends. Seconds between tries:
BEAT_LOCK_RETRY_SECONDS = env_int("PORTCULLIS_BEAT_LOCK_RETRY_SECONDS", 5)
