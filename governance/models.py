"""Who may act: organizations, users, groups and API tokens.

Every row here belongs to one organization; nothing crosses orgs. Roles are membership of the
reserved groups `admin` and `auditor`; the policy module (`governance.policy`) is the only
place that interprets them.
"""

import hashlib
import uuid

from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

ADMIN_GROUP = "admin"
AUDITOR_GROUP = "auditor"
RESERVED_GROUPS = (ADMIN_GROUP, AUDITOR_GROUP)


class Organization(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    # Bumped by every change to rules, attributes or their bindings, so each process can cache
    # which rules bind a connection and see a change on its very next request.
    rules_version = models.PositiveBigIntegerField(default=0, editable=False)

    def __str__(self):
        return self.name

    @classmethod
    def rules_changed(cls, org_id) -> None:
        """Bump the org's rules version in the caller's transaction: every process's caches of which
        rules bind a connection (guardrails, masking, the review gate) miss on their next request."""
        cls.objects.filter(pk=org_id).update(rules_version=models.F("rules_version") + 1)


class UserManager(BaseUserManager):
    use_in_migrations = True
    superuser_factory = None  # set by governance.services

    def create_user(self, email, password=None, *, org, **extra):
        if not email:
            raise ValueError("email is required")
        user = self.model(email=self.normalize_email(email).lower(), org=org, **extra)
        user.set_password(password) if password else user.set_unusable_password()
        user.save(using=self._db)
        return user

    def create_superuser(self, email, password=None, **extra):
        """`createsuperuser`: an admin (member of the reserved `admin` group) of the first org, or
        of a new org "default" (it has no org prompt); made like any user, with the audit records,
        by `governance.services.superuser_create` (registered in `superuser_factory` when the
        services load, which gateway/wiring.py makes happen at start-up)."""
        if UserManager.superuser_factory is None:
            raise RuntimeError("governance.services is not loaded: it makes superusers")
        return UserManager.superuser_factory(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """A person (or a service identity) of exactly one organization; logs in by email."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="users")
    email = models.EmailField(unique=True)
    name = models.CharField(max_length=150, blank=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False)
    date_joined = models.DateTimeField(default=timezone.now)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS = []

    def __str__(self):
        return self.email


class UserGroup(models.Model):
    """An org-scoped group. `admin` and `auditor` are reserved and give those roles."""

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="groups")
    name = models.CharField(max_length=100)
    members = models.ManyToManyField(User, related_name="user_groups", blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(Lower("name"), "org", name="usergroup_unique_name_ci_per_org")]
        ordering = ["name"]

    def __str__(self):
        return self.name


def token_digest(raw: str) -> str:
    """API tokens carry 256 bits of randomness, so a plain SHA-256 is a sound at-rest hash."""
    return hashlib.sha256(raw.encode()).hexdigest()


class TokenCapability(models.TextChoices):
    """The ceiling a token puts on its user's powers (never a raise above them).

    `read_only`: reads, and exec only of statements that read (checked on the parsed SQL, then run
    in a read-only transaction; no command connections). `read_write`: what the user may do as a
    standard member, no admin or auditor role. `admin`: the user's own roles, uncapped.
    """

    READ_ONLY = "read_only"
    READ_WRITE = "read_write"
    ADMIN = "admin"


class ApiToken(models.Model):
    """A personal API token. Only its SHA-256 is stored; the value is shown once at issue."""

    PREFIX = "pcu_"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="The first characters, to recognise a token.")
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Least privilege by default (and for tokens issued before capabilities existed): an admin's
    # token uses the admin role only when issued with capability "admin".
    capability = models.CharField(
        max_length=16, choices=TokenCapability.choices, default=TokenCapability.READ_WRITE
    )

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    def is_usable(self, now=None) -> bool:
        now = now or timezone.now()
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > now


class Attribute(models.Model):
    """A tag on connections (e.g. `env=prod` as the name `prod`); rules bound to it apply to them all."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="attributes")
    name = models.CharField(max_length=63)
    description = models.CharField(max_length=500, blank=True)
    connections = models.ManyToManyField("gateway.Connection", blank=True, related_name="attributes")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(Lower("name"), "org", name="attribute_unique_name_ci_per_org")]
        ordering = ["name"]

    def __str__(self):
        return self.name


class BoundRule(models.Model):
    """A rule of one org that applies to connections directly or through attributes."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=100)
    description = models.CharField(max_length=500, blank=True)
    enabled = models.BooleanField(default=True)
    connections = models.ManyToManyField("gateway.Connection", blank=True, related_name="+")
    attributes = models.ManyToManyField(Attribute, blank=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True
        ordering = ["name"]

    def __str__(self):
        return self.name


class GuardrailRule(BoundRule):
    """Input and output conditions (see `governance.guardrails`). When one fires, nothing runs (input)
    or the result is withheld (output); the caller sees the rule's name and `message`, never its conditions."""

    message = models.CharField(
        max_length=500, blank=True, help_text="Shown to the caller when this rule blocks."
    )
    input_conditions = models.JSONField(default=dict, blank=True)
    output_conditions = models.JSONField(default=dict, blank=True)

    class Meta(BoundRule.Meta):
        constraints = [models.UniqueConstraint(Lower("name"), "org", name="guardrail_unique_name_ci_per_org")]


class MaskingRule(BoundRule):
    """What to mask in results and how (see `governance.masking.validate_spec` for `spec`)."""

    spec = models.JSONField(default=dict)

    class Meta(BoundRule.Meta):
        constraints = [
            models.UniqueConstraint(Lower("name"), "org", name="maskingrule_unique_name_ci_per_org")
        ]


class MCPAuthSettings(models.Model):
    """How MCP callers may authenticate at /api/mcp besides API tokens (which always work).

    One row (pk 1) for the gateway, since /api/mcp is one endpoint: OAuth on or off, the canonical
    resource URI tokens must be issued for (RFC 8707), and either the built-in authorization server
    (`issuer` empty) or an external issuer whose JWTs are checked against its JWKS. Users an external
    issuer vouches for that the gateway does not know are created in `create_users_org` only.
    Changed only through `governance.oauth` (audited).
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    enabled = models.BooleanField(default=False)
    resource_uri = models.URLField(
        max_length=500, blank=True, help_text="Empty: the public URL followed by /api/mcp."
    )
    issuer = models.URLField(
        max_length=500, blank=True, help_text="Empty: the built-in authorization server."
    )
    jwks_uri = models.URLField(max_length=500, blank=True)
    groups_claim = models.CharField(max_length=100, blank=True)
    create_users_org = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "MCP auth settings"
        verbose_name_plural = "MCP auth settings"

    def __str__(self):
        return "MCP auth settings"


class ExternalIdentity(models.Model):
    """A user as an external issuer knows them: (issuer, subject) -> user, fixed at first sight."""

    issuer = models.CharField(max_length=500)
    subject = models.CharField(max_length=255)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="external_identities")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["issuer", "subject"], name="externalidentity_unique_subject")
        ]

    def __str__(self):
        return f"{self.subject} @ {self.issuer}"


class IdentityProvider(models.Model):
    """An organization's OpenID Connect identity provider (docs/sso.md): who may sign in to the web
    app and the admin, with which groups, and whether local passwords still work.

    One per org. Users are matched by (issuer, subject) through `ExternalIdentity`, never by e-mail
    alone; `allowed_domains` both finds the org from an e-mail address at sign-in and bounds which
    e-mail addresses the IdP may vouch for. `group_map` maps IdP group names onto the org's groups
    (`admin` and `auditor` included); membership of every mapped group is refreshed at each sign-in.
    The client secret is stored encrypted and never shown again. Changed only through
    `governance.sso` (audited).
    """

    org = models.OneToOneField(Organization, on_delete=models.CASCADE, related_name="identity_provider")
    slug = models.SlugField(
        max_length=63,
        unique=True,
        help_text="The org-specific sign-in URL: /login/sso/SLUG/ (this value as SLUG)",
    )
    enabled = models.BooleanField(default=True)
    issuer = models.URLField(max_length=500)
    client_id = models.CharField(max_length=255)
    client_secret_encrypted = models.TextField(blank=True, editable=False)
    scopes = models.CharField(max_length=300, default="openid email profile")
    groups_claim = models.CharField(max_length=100, blank=True, default="groups")
    group_map = models.JSONField(default=dict, blank=True)
    allowed_domains = models.JSONField(default=list, blank=True)
    # Off: only `break_glass_user` may still sign in with a password (each use is audited).
    password_login = models.BooleanField(default=True)
    break_glass_user = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # SCIM 2.0 provisioning: only the SHA-256 of the bearer secret is kept (see token_digest).
    scim_token_digest = models.CharField(max_length=64, blank=True, editable=False)
    scim_token_prefix = models.CharField(max_length=16, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "identity provider"

    def __str__(self):
        return f"SSO sign-in ({self.issuer})"


class ScimResource(models.Model):
    """What a SCIM client calls a user or a group: its `externalId` and the Portcullis row it names.

    SCIM ids of users are the user's UUID; groups get a UUID of their own here, since `UserGroup`
    keys are integers. Kept per org so two orgs' IdPs never see each other's resources.
    """

    class Kind(models.TextChoices):
        USER = "user"
        GROUP = "group"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    user = models.OneToOneField(User, null=True, blank=True, on_delete=models.CASCADE, related_name="scim")
    group = models.OneToOneField(
        UserGroup, null=True, blank=True, on_delete=models.CASCADE, related_name="scim"
    )
    external_id = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"SCIM {self.kind} {self.pk}"
