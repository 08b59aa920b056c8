"""Admin pages for users, groups, tokens, attributes, guardrail and masking rules. Every save goes
through `governance.services` or `governance.rules` (see `governance.admin_base`)."""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import JsonResponse
from django.urls import path

from gateway import previews
from gateway.models import Connection
from governance import rules, services
from governance.admin_base import (
    GovernedInline,
    GovernedModelAdmin,
    ReadOnlyModelAdmin,
    SecretField,
    admin_actor,
    inline_values,
)
from governance.admin_editors import (
    GuardrailConditionsWidget,
    MaskingSpecWidget,
    StructuredJSONField,
)
from governance.errors import InvalidInput, PortcullisError
from governance.models import (
    RESERVED_GROUPS,
    ApiToken,
    Attribute,
    GuardrailRule,
    MaskingRule,
    User,
    UserGroup,
)
from governance.policy import scope

Membership = UserGroup.members.through

# Related-object filters list only rows of the (scoped) queryset, never another org's.
RelatedOnly = admin.RelatedOnlyFieldListFilter


class GroupMembersInline(GovernedInline):
    """Members on a group's page."""

    model = Membership
    fk_name = "usergroup"
    fields = ("user",)
    verbose_name = "member"
    verbose_name_plural = "members"


class UserGroupsInline(GovernedInline):
    """Groups on a user's page."""

    model = Membership
    fk_name = "user"
    fields = ("usergroup",)
    verbose_name = "group membership"
    verbose_name_plural = "group memberships (admin and auditor give those roles)"


# --- users -------------------------------------------------------------------------------------


class UserAddForm(forms.ModelForm):
    password = forms.CharField(
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Optional: without one the user cannot log in with a password.",
    )

    class Meta:
        model = User
        fields = ("email", "name")


class UserChangeForm(forms.ModelForm):
    new_password = SecretField(help_text="Write-only: type a new password to replace the current one.")

    class Meta:
        model = User
        fields = ("name", "is_active")


@admin.register(User)
class UserAdmin(GovernedModelAdmin):
    list_display = ("email", "name", "is_active", "group_names", "date_joined", "last_login")
    list_filter = ("is_active", ("user_groups", RelatedOnly))
    search_fields = ("email", "name")
    ordering = ("email",)
    inlines = (UserGroupsInline,)
    actions = ("deactivate_users",)

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("user_groups")

    @admin.display(description="groups")
    def group_names(self, obj):
        return ", ".join(sorted(g.name for g in obj.user_groups.all() if g.org_id == obj.org_id))

    def get_form(self, request, obj=None, change=False, **kwargs):
        kwargs["form"] = UserAddForm if obj is None else UserChangeForm
        return super().get_form(request, obj, change, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("email", "name", "password")
        return ("email", "name", "is_active", "new_password", "date_joined", "last_login")

    def get_readonly_fields(self, request, obj=None):
        return ("email", "date_joined", "last_login") if obj is not None else ()

    def save_through_service(self, request, actor, form, formsets, change):
        groups = inline_values(formsets, Membership, "usergroup")
        names = [g.name for g in groups] if groups is not None else None
        data = form.cleaned_data
        if change:
            return services.user_update(
                actor=actor,
                ref=str(form.instance.pk),
                name=data.get("name", ""),
                is_active=data.get("is_active"),
                groups=names,
                password=data.get("new_password") or None,
            )
        return services.user_create(
            actor=actor,
            email=data["email"],
            name=data.get("name", ""),
            groups=names or [],
            password=data.get("password") or None,
        )

    @admin.action(description="Deactivate the selected users", permissions=["change"])
    def deactivate_users(self, request, queryset):
        self.run_service_action(
            request,
            queryset,
            lambda actor, user: services.user_deactivate(actor=actor, ref=str(user.pk)),
            "Deactivated {count} users.",
        )


# --- groups ------------------------------------------------------------------------------------


@admin.register(UserGroup)
class UserGroupAdmin(GovernedModelAdmin):
    list_display = ("name", "reserved", "member_count", "connection_names")
    search_fields = ("name", "members__email")
    fields = ("name",)
    inlines = (GroupMembersInline,)

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(member_count=Count("members"))
            .prefetch_related("connections")
        )

    @admin.display(boolean=True)
    def reserved(self, obj):
        return obj.name in RESERVED_GROUPS

    @admin.display(description="members", ordering="member_count")
    def member_count(self, obj):
        return obj.member_count

    @admin.display(description="may use connections")
    def connection_names(self, obj):
        return ", ".join(sorted(c.name for c in obj.connections.all())) or "-"

    def get_readonly_fields(self, request, obj=None):
        return ("name",) if obj is not None and obj.name in RESERVED_GROUPS else ()

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.name in RESERVED_GROUPS:
            return False  # the service refuses too; this hides the button
        return super().has_delete_permission(request, obj)

    def save_through_service(self, request, actor, form, formsets, change):
        users = inline_values(formsets, Membership, "user")
        emails = [u.email for u in users] if users is not None else None
        name = form.cleaned_data.get("name")
        if not change:
            return services.usergroup_create(actor=actor, name=name, members=emails)
        group = UserGroup.objects.get(pk=form.instance.pk)
        if name and name != group.name:
            group = services.usergroup_rename(actor=actor, name=group.name, new_name=name)
        if emails is not None:
            current = set(group.members.values_list("email", flat=True))
            if current != set(emails):
                group = services.usergroup_set_members(actor=actor, name=group.name, members=emails)
        return group

    def delete_through_service(self, request, actor, obj):
        services.usergroup_delete(actor=actor, name=obj.name)


# --- API tokens (read-only here: people issue and revoke their own on "Connect your agent") -----


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyModelAdmin):
    list_display = (
        "name",
        "user",
        "prefix",
        "capability",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    )
    list_filter = ("capability", ("user", RelatedOnly))
    search_fields = ("name", "prefix", "user__email")
    fields = (
        "name",
        "user",
        "prefix",
        "capability",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    )
    list_select_related = ("user",)


# --- attributes and rules ----------------------------------------------------------------------


def _names(objs) -> list[str]:
    return [o.name for o in objs] if objs is not None else []


@admin.register(Attribute)
class AttributeAdmin(GovernedModelAdmin):
    list_display = ("name", "description", "connection_names")
    search_fields = ("name", "description")
    fields = ("name", "description", "connections")
    filter_horizontal = ("connections",)

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("connections")

    @admin.display(description="connections")
    def connection_names(self, obj):
        return ", ".join(sorted(c.name for c in obj.connections.all())) or "-"

    def get_readonly_fields(self, request, obj=None):
        return ("name",) if obj is not None else ()  # the service has no rename

    def save_through_service(self, request, actor, form, formsets, change):
        data = form.cleaned_data
        if change:
            return rules.attribute_update(
                actor=actor,
                name=str(form.instance.pk),
                description=data.get("description", ""),
                connections=_names(data.get("connections")),
            )
        return rules.attribute_create(
            actor=actor,
            name=data["name"],
            description=data.get("description", ""),
            connections=_names(data.get("connections")),
        )

    def delete_through_service(self, request, actor, obj):
        rules.attribute_delete(actor=actor, name=str(obj.pk))


class _RuleAdmin(GovernedModelAdmin):
    """Guardrail and masking rules: one page shape, saved by `governance.rules` (which validates
    the conditions, audits and bumps the org's rules version, exactly as the MCP tools do)."""

    list_display = ("name", "enabled", "connection_names", "attribute_names", "updated_at")
    list_filter = ("enabled", ("connections", RelatedOnly), ("attributes", RelatedOnly))
    search_fields = ("name", "description")
    filter_horizontal = ("connections", "attributes")
    create = update = delete = None  # the rules services, set by subclasses
    rule_fields: dict[str, str] = {}  # form field -> service keyword

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("connections", "attributes")

    @admin.display(description="connections")
    def connection_names(self, obj):
        return ", ".join(sorted(c.name for c in obj.connections.all())) or "-"

    @admin.display(description="attributes")
    def attribute_names(self, obj):
        return ", ".join(sorted(a.name for a in obj.attributes.all())) or "-"

    def _fields(self, data) -> dict:
        fields = {keyword: data.get(field) for field, keyword in self.rule_fields.items() if field in data}
        fields["connections"] = _names(data.get("connections"))
        fields["attributes"] = _names(data.get("attributes"))
        return fields

    def save_through_service(self, request, actor, form, formsets, change):
        fields = self._fields(form.cleaned_data)
        if change:
            return type(self).update(actor=actor, ref=str(form.instance.pk), **fields)
        name = fields.pop("name")
        return type(self).create(actor=actor, name=name, **fields)

    def delete_through_service(self, request, actor, obj):
        type(self).delete(actor=actor, ref=str(obj.pk))


def editor_endpoint(request, admin_page, work):
    """A test/preview endpoint of a rule page: POST only, for whoever may view the page; the
    service's refusal comes back as {"error": message} (400), never a 500."""
    if request.method != "POST":
        return JsonResponse({"error": "POST the form"}, status=405)
    if not admin_page.has_view_permission(request):
        raise PermissionDenied
    try:
        return JsonResponse(work(admin_actor(request)))
    except PortcullisError as exc:
        return JsonResponse({"error": exc.message}, status=400)


def editor_value(form_class, field: str, data) -> dict:
    """What a structured editor on the page says now, as the JSON the save would post."""
    widget = form_class.base_fields[field].widget
    raw = widget.value_from_datadict(data, {}, field)
    if raw is None or not str(raw).strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise InvalidInput(f"{field}: not valid JSON") from None
    return value


class GuardrailRuleForm(forms.ModelForm):
    input_conditions = StructuredJSONField(
        widget=GuardrailConditionsWidget("input"),
        label="Input conditions",
        help_text="Checked before a statement or command runs. Any condition that matches blocks it.",
    )
    output_conditions = StructuredJSONField(
        widget=GuardrailConditionsWidget("output"),
        label="Output conditions",
        help_text="Checked on the result before it reaches the caller; a match withholds the result.",
    )

    class Meta:
        model = GuardrailRule
        fields = ("name", "description", "message", "enabled", "input_conditions", "output_conditions")


class MaskingRuleForm(forms.ModelForm):
    spec = StructuredJSONField(widget=MaskingSpecWidget(), label="Masking")

    class Meta:
        model = MaskingRule
        fields = ("name", "description", "enabled", "spec")


@admin.register(GuardrailRule)
class GuardrailRuleAdmin(_RuleAdmin):
    form = GuardrailRuleForm
    fields = (
        "name",
        "description",
        "message",
        "enabled",
        "input_conditions",
        "output_conditions",
        "connections",
        "attributes",
    )
    rule_fields = {
        "name": "name",
        "description": "description",
        "message": "message",
        "enabled": "enabled",
        "input_conditions": "input",
        "output_conditions": "output",
    }
    create = staticmethod(rules.guardrail_create)
    update = staticmethod(rules.guardrail_update)
    delete = staticmethod(rules.guardrail_delete)

    def get_urls(self):
        view = self.admin_site.admin_view(self.test_view)
        return [path("test/", view, name="governance_guardrailrule_test"), *super().get_urls()]

    def test_view(self, request):
        """The page's "Test" panel: the conditions on the page, unsaved, through `guardrail_test`."""

        def work(actor):
            conditions = {
                "input": editor_value(GuardrailRuleForm, "input_conditions", request.POST),
                "output": editor_value(GuardrailRuleForm, "output_conditions", request.POST),
            }
            return rules.guardrail_test(
                actor=actor,
                input=request.POST.get("sample", ""),
                conditions=conditions,
                direction=request.POST.get("direction") or "input",
                dialect=request.POST.get("dialect") or None,
            )

        return editor_endpoint(request, self, work)


@admin.register(MaskingRule)
class MaskingRuleAdmin(_RuleAdmin):
    form = MaskingRuleForm
    fields = ("name", "description", "enabled", "spec", "connections", "attributes")
    rule_fields = {"name": "name", "description": "description", "enabled": "enabled", "spec": "spec"}
    create = staticmethod(rules.masking_rule_create)
    update = staticmethod(rules.masking_rule_update)
    delete = staticmethod(rules.masking_rule_delete)

    def get_urls(self):
        view = self.admin_site.admin_view(self.preview_view)
        return [path("preview/", view, name="governance_maskingrule_preview"), *super().get_urls()]

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        names = scope(Connection.objects.all(), admin_actor(request), "exec").values_list("name", flat=True)
        extra = {**(extra_context or {}), "preview_connections": sorted(names)}
        return super().changeform_view(request, object_id, form_url, extra)

    def preview_view(self, request):
        """The page's "Preview" panel: the spec on the page, unsaved, through `masking_preview`."""

        def work(actor):
            spec = editor_value(MaskingRuleForm, "spec", request.POST)
            connection = request.POST.get("sample_connection") or None
            if connection:
                return previews.masking_preview(
                    actor=actor,
                    spec=spec,
                    connection_name=connection,
                    input=request.POST.get("sample_query", ""),
                )
            return rules.masking_preview(actor=actor, spec=spec, text=request.POST.get("sample_text", ""))

        return editor_endpoint(request, self, work)


from governance import admin_sso  # noqa: E402,F401  (the SSO settings page; kept in its own module)
