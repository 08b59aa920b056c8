"""The organization's SSO settings in the admin (docs/sso.md): one page, saved by
`governance.sso.idp_configure` (validated and audited there, surface `admin`). The client secret is
write-only: the form never shows it, and an empty box keeps the stored one."""

from __future__ import annotations

from django import forms
from django.contrib import admin

from governance.admin_base import GovernedModelAdmin, SecretField
from governance.models import IdentityProvider
from governance.sso import callback_url, idp_configure


def _map_text(group_map: dict) -> str:
    return "\n".join(f"{source} = {target}" for source, target in sorted((group_map or {}).items()))


def _parse_map(text: str) -> dict:
    mapping = {}
    for number, line in enumerate((text or "").splitlines(), 1):
        if not line.strip():
            continue
        source, sep, target = line.rpartition("=")
        if not sep or not source.strip() or not target.strip():
            raise forms.ValidationError(f"line {number}: write IDP_GROUP = PORTCULLIS_GROUP")
        mapping[source.strip()] = target.strip()
    return mapping


class IdentityProviderForm(forms.ModelForm):
    client_secret = SecretField(help_text="Write-only. Leave empty to keep the stored secret.")
    group_map_text = forms.CharField(
        label="Group map",
        required=False,
        widget=forms.Textarea(attrs={"rows": 5}),
        help_text="One per line: IdP group = Portcullis group (admin and auditor give those roles).",
    )
    domains_text = forms.CharField(label="Allowed e-mail domains", help_text="Comma-separated, e.g. acme.com")

    class Meta:
        model = IdentityProvider
        fields = (
            "enabled",
            "issuer",
            "client_id",
            "scopes",
            "groups_claim",
            "password_login",
            "break_glass_user",
            "slug",
        )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # A view-only page (auditors) builds the form without these fields.
        if self.instance.pk and "group_map_text" in self.fields:
            self.fields["group_map_text"].initial = _map_text(self.instance.group_map)
            self.fields["domains_text"].initial = ", ".join(self.instance.allowed_domains or [])
        if "slug" in self.fields:
            self.fields["slug"].required = False

    def clean_group_map_text(self):
        return _parse_map(self.cleaned_data.get("group_map_text", ""))

    def clean_domains_text(self):
        return [d.strip() for d in self.cleaned_data.get("domains_text", "").split(",") if d.strip()]


@admin.register(IdentityProvider)
class IdentityProviderAdmin(GovernedModelAdmin):
    form = IdentityProviderForm
    list_display = ("org", "issuer", "client_id", "enabled", "password_login")
    readonly_fields = ("redirect_uri", "scim_secret")
    fieldsets = (
        (None, {"fields": ("enabled", "issuer", "client_id", "client_secret", "scopes", "redirect_uri")}),
        ("Who may sign in", {"fields": ("domains_text", "groups_claim", "group_map_text")}),
        ("Passwords", {"fields": ("password_login", "break_glass_user")}),
        ("URLs and provisioning", {"fields": ("slug", "scim_secret")}),
    )

    @admin.display(description="redirect URI to register at the IdP")
    def redirect_uri(self, obj):
        return callback_url()

    @admin.display(description="SCIM secret")
    def scim_secret(self, obj):
        if obj is None or not obj.scim_token_digest:
            return "not issued (manage.py sso scim-secret ORG)"
        return f"{obj.scim_token_prefix}… (manage.py sso scim-secret ORG replaces it)"

    def has_add_permission(self, request):
        # One per organization: once it exists, it is changed, not added again.
        allowed = super().has_add_permission(request)
        return allowed and not self.get_queryset(request).exists()

    def save_through_service(self, request, actor, form, formsets, change):
        data = form.cleaned_data
        user = data.get("break_glass_user")
        return idp_configure(
            actor=actor,
            issuer=data["issuer"],
            client_id=data["client_id"],
            client_secret=data.get("client_secret") or None,
            scopes=data.get("scopes") or "openid email profile",
            groups_claim=data.get("groups_claim", ""),
            group_map=data.get("group_map_text") or {},
            allowed_domains=data.get("domains_text") or [],
            password_login=data.get("password_login"),
            break_glass_email=user.email if user else "",
            enabled=data.get("enabled"),
            slug=data.get("slug") or None,
        )
