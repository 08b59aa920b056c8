"""The Django admin as one more surface: scoped by the policy, saving through the services.

Who gets in: the admin site lets in active members of the reserved `admin` and `auditor` groups
of their organization (`PortcullisAdminSite.has_permission`), whatever `is_staff` or
`is_superuser` say; nobody hand-sets `is_staff`. Admins change things, auditors read, standard
members have no admin at all. A Django superuser is still one user of one org: the flag gives
nothing here (permissions below never ask Django's permission tables).

Writing an admin page for a model (`reviews/admin.py` does exactly this)::

    from django.contrib import admin
    from governance.admin_base import GovernedModelAdmin

    @admin.register(Thing)
    class ThingAdmin(GovernedModelAdmin):
        list_display = ("name", ...)

        def save_through_service(self, request, actor, form, formsets, change):
            if change:
                return services.thing_update(actor=actor, ref=str(form.instance.pk), **form.cleaned_data)
            return services.thing_create(actor=actor, **form.cleaned_data)

        def delete_through_service(self, request, actor, obj):
            services.thing_delete(actor=actor, ref=str(obj.pk))

What the base does for every subclass:
* `get_queryset` is `policy.scope(..., "view")`; an object outside it is a 404 whether it is
  missing or belongs to another org (no existence leak, no "doesn't exist" redirect).
* view/add/change/delete permissions come from the policy (`may` for the model, `can` for an
  object): "view" to see, "manage" to change. A model the policy does not know is denied.
* Foreign-key and many-to-many choices are scoped the same way, so a form never offers (or
  accepts) another org's rows.
* Saves and deletes never touch the ORM directly: `save_through_service` and
  `delete_through_service` call the services, which check the actor again, validate and write the
  audit event (surface `admin`) in their transaction. A domain error (`InvalidInput`, `Conflict`,
  `NotFound`, `PolicyDenied`) rolls the request's transaction back and comes back as a form error
  that says what to fix (a message on delete pages and bulk actions), never a 500.
* Without `delete_through_service` (or `save_through_service`) the model cannot be deleted (or
  added/changed) here at all, bulk actions included.
* Django's own `LogEntry` history is not written: the audit log is the one record.

`ReadOnlyModelAdmin` is the base for records (sessions, audit events): scoped, viewable, never
added, changed or deleted by anyone.
"""

from __future__ import annotations

import logging

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.forms import AdminAuthenticationForm, AdminPasswordChangeForm
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import Http404, HttpResponseRedirect
from django.urls import reverse

from governance.auth import admin_login
from governance.errors import PortcullisError
from governance.policy import _SCOPES, ROLE_ADMIN, Actor, can, has_role, may, role_denied_message, scope
from governance.services import user_set_own_password
from governance.sso_views import logout_view
from sessions.audit import Outcome, audit_record

logger = logging.getLogger("portcullis.admin")

ADMIN_SITE_ROLE = "auditor"  # policy.ROLE_AUDITOR: admins and auditors


def admin_actor(request) -> Actor:
    """The actor of an admin request (cached on the request)."""
    actor = getattr(request, "_portcullis_actor", None)
    if actor is None or actor.user.pk != request.user.pk:
        agent = request.headers.get("user-agent", "")
        actor = Actor.for_user(request.user, surface="admin", client=f"admin; {agent}"[:200])
        request._portcullis_actor = actor
    return actor


def may_use_admin(request) -> bool:
    user = request.user
    if not (user.is_authenticated and user.is_active):
        return False
    return has_role(admin_actor(request), ADMIN_SITE_ROLE)


class RoleAuthenticationForm(AdminAuthenticationForm):
    """The admin login lets in admins and auditors of an org, not `is_staff` users."""

    error_messages = {
        **AdminAuthenticationForm.error_messages,
        "invalid_login": "Please enter the e-mail and password of an admin or auditor account. "
        "Both fields may be case-sensitive.",
    }

    def confirm_login_allowed(self, user):
        if not user.is_active:
            raise ValidationError(self.error_messages["inactive"], code="inactive")
        actor = Actor.for_user(user, surface="admin")
        if not has_role(actor, ADMIN_SITE_ROLE):
            raise ValidationError(self.error_messages["invalid_login"], code="invalid_login")


class OwnPasswordChangeForm(AdminPasswordChangeForm):
    """The admin's "change password": Django's checks, then the service saves and audits it."""

    def save(self, commit=True):

        actor = Actor.for_user(self.user, surface="admin", client="admin")
        try:
            self.user = user_set_own_password(
                actor=actor,
                old_password=self.cleaned_data["old_password"],
                new_password=self.cleaned_data["new_password1"],
            )
        except PortcullisError as exc:  # the form checked the same things; keep the request whole
            raise ServiceRejected(exc.message) from exc
        return self.user


class PortcullisAdminSite(admin.AdminSite):
    site_header = "Portcullis administration"
    site_title = "Portcullis admin"
    index_title = "Your organization"
    login_form = RoleAuthenticationForm
    login_template = "admin/portcullis_login.html"

    def login(self, request, extra_context=None):
        """Django's admin login, each attempt audited (surface `admin`) and throttled by axes."""

        return admin_login(super().login, request, extra_context)

    def logout(self, request, extra_context=None):
        """The one logout: audited, and the IdP's session ended too when it offers that."""

        return logout_view(request)

    def password_change(self, request, extra_context=None):
        """Django's view, with a form whose save goes through the service."""
        from django.contrib.auth.views import PasswordChangeView

        defaults = {
            "form_class": OwnPasswordChangeForm,
            "success_url": reverse("admin:password_change_done", current_app=self.name),
            "extra_context": {**self.each_context(request), **(extra_context or {})},
        }
        if self.password_change_template is not None:
            defaults["template_name"] = self.password_change_template
        request.current_app = self.name
        return PasswordChangeView.as_view(**defaults)(request)

    def has_permission(self, request):
        return may_use_admin(request)

    def register(self, model_or_iterable, admin_class=None, **options):
        """Serve only governed pages. Third-party apps (django.contrib.auth's Group,
        django-oauth-toolkit's applications and tokens) register plain `ModelAdmin`s, which
        trust Django's permission flags and see every org: they are left out, fail closed."""
        if admin_class is None or not issubclass(admin_class, GovernedModelAdmin | ReadOnlyModelAdmin):
            logger.debug("admin: not serving %s (not a governed ModelAdmin)", model_or_iterable)
            return
        super().register(model_or_iterable, admin_class, **options)


class ServiceRejected(Exception):
    """A service refused a change made in the admin; carries the service's message."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _scoped_choices(db_field, request):
    """The rows of a related model the actor may see (none for a model the policy does not know)."""
    model = db_field.related_model
    qs = model._default_manager.all()
    if model._meta.label_lower not in _SCOPES:
        return qs.none()
    return scope(qs, admin_actor(request), "view")


def _audited_refusal(request, view, *args, **kwargs):
    """Run an admin view; a refused change (PermissionDenied on a POST) is written to the audit
    log as denied, as REST and MCP record their refusals, then answered 403. Its own transaction:
    the view's has rolled back by now."""
    try:
        return view(request, *args, **kwargs)
    except PermissionDenied:
        if request.method == "POST" and may_use_admin(request):
            actor = admin_actor(request)
            audit_record(
                actor=actor,
                action="admin.request",
                outcome=Outcome.DENIED,
                target_type="admin.page",
                target_repr=f"POST {request.path}"[:200],
                detail={
                    "reason": "read-only here for everyone"
                    if actor.is_admin
                    else role_denied_message(actor, ROLE_ADMIN)
                },
            )
        raise


def _add_service_error(form, message: str) -> None:
    """Attach a service's message to the field it names ("field: problem"), else to the form."""
    field, sep, rest = message.partition(": ")
    if sep and field in form.fields and field not in getattr(form, "_readonly", ()):
        form.add_error(field, rest)
    else:
        form.add_error(None, message)


class _ScopedRelationsMixin:
    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        kwargs["queryset"] = _scoped_choices(db_field, request)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        kwargs["queryset"] = _scoped_choices(db_field, request)
        return super().formfield_for_manytomany(db_field, request, **kwargs)


class GovernedModelAdmin(_ScopedRelationsMixin, admin.ModelAdmin):
    """Base of every admin page: see the module docstring."""

    # --- hooks for subclasses ---------------------------------------------------------------
    def save_through_service(self, request, actor: Actor, form, formsets, change: bool):
        """Create (change=False) or update the object from `form.cleaned_data` (and the inline
        `formsets`) through a service, and return the saved object."""
        raise NotImplementedError

    def delete_through_service(self, request, actor: Actor, obj) -> None:
        raise NotImplementedError

    def _implements(self, hook: str) -> bool:
        return getattr(type(self), hook) is not getattr(GovernedModelAdmin, hook)

    # --- scoping and permissions ----------------------------------------------------------
    def get_queryset(self, request):
        return scope(super().get_queryset(request), admin_actor(request), "view")

    def get_object(self, request, object_id, from_field=None):
        obj = super().get_object(request, object_id, from_field)
        if obj is None:  # missing, malformed, or another org's: one answer
            raise Http404("not found")
        return obj

    def _allowed(self, request, action: str, obj=None) -> bool:
        if not may_use_admin(request):
            return False
        actor = admin_actor(request)
        if obj is None:
            return may(actor, action, self.model)
        return can(actor, action, obj)

    def has_module_permission(self, request):
        return self._allowed(request, "view")

    def has_view_permission(self, request, obj=None):
        return self._allowed(request, "view", obj)

    def has_add_permission(self, request):
        return self._implements("save_through_service") and self._allowed(request, "manage")

    def has_change_permission(self, request, obj=None):
        return self._implements("save_through_service") and self._allowed(request, "manage", obj)

    def has_delete_permission(self, request, obj=None):
        return self._implements("delete_through_service") and self._allowed(request, "manage", obj)

    # --- saving through services -----------------------------------------------------------
    def save_model(self, request, obj, form, change):
        """Nothing here: the service saves in `save_related`, where the inlines are known too, so
        one change is one service call and one audit event."""

    def save_related(self, request, form, formsets, change):
        try:
            saved = self.save_through_service(request, admin_actor(request), form, formsets, change)
        except PortcullisError as exc:
            raise ServiceRejected(exc.message) from exc
        # The admin's response (redirects, messages) reads the object it built from the form.
        form.instance.pk = saved.pk
        form.instance._state.adding = False
        form.instance._state.db = saved._state.db

    def construct_change_message(self, request, form, formsets, add=False):
        return ""  # the service's audit event is the record

    def log_addition(self, request, obj, message):
        pass

    def log_change(self, request, obj, message):
        pass

    def log_deletion(self, request, obj, object_repr):
        pass

    def log_deletions(self, request, queryset):
        pass

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change, **kwargs)
        error = getattr(request, "_portcullis_service_error", None)
        if error is None:
            return form

        class Rejected(form):
            """Shows the service's refusal as a form error (and saves nothing)."""

            def clean(self):
                cleaned = super().clean()
                _add_service_error(self, error)
                return cleaned

        Rejected.__name__ = form.__name__
        return Rejected

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        view = super().changeform_view
        try:
            return _audited_refusal(request, view, object_id, form_url, extra_context)
        except ServiceRejected as exc:
            # The view's transaction has rolled back; render the same form again with the error.
            request._portcullis_service_error = exc.message
            return view(request, object_id, form_url, extra_context)

    # --- deleting through services ---------------------------------------------------------
    def delete_model(self, request, obj):
        try:
            self.delete_through_service(request, admin_actor(request), obj)
        except PortcullisError as exc:
            raise ServiceRejected(exc.message) from exc

    def delete_queryset(self, request, queryset):
        """Bulk delete: every object through the service, all or nothing."""
        actor = admin_actor(request)
        try:
            with transaction.atomic():
                for obj in queryset:
                    self.delete_through_service(request, actor, obj)
        except PortcullisError as exc:
            raise ServiceRejected(f"{obj}: {exc.message}; nothing was deleted") from exc

    def delete_view(self, request, object_id, extra_context=None):
        try:
            return _audited_refusal(request, super().delete_view, object_id, extra_context)
        except ServiceRejected as exc:
            self.message_user(request, exc.message, messages.ERROR)
            opts = self.model._meta
            url = reverse(
                f"{self.admin_site.name}:{opts.app_label}_{opts.model_name}_change", args=[object_id]
            )
            return HttpResponseRedirect(url)

    def response_action(self, request, queryset):
        def run(request, queryset):
            with transaction.atomic():
                return super(GovernedModelAdmin, self).response_action(request, queryset)

        try:
            return _audited_refusal(request, run, queryset)
        except ServiceRejected as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def run_service_action(self, request, queryset, service, done: str) -> None:
        """For admin actions: call `service(actor, obj)` for each selected object, all or nothing."""
        actor = admin_actor(request)
        with transaction.atomic():
            for obj in queryset:
                try:
                    service(actor, obj)
                except PortcullisError as exc:
                    raise ServiceRejected(f"{obj}: {exc.message}; nothing was changed") from exc
        self.message_user(request, done.format(count=len(queryset)), messages.SUCCESS)


class GovernedInline(_ScopedRelationsMixin, admin.TabularInline):
    """An inline on a governed page: editable when the actor may manage the parent model; its
    rows are saved by the parent's `save_through_service`, never by the formset itself."""

    extra = 0

    def _allowed(self, request, action):
        return may_use_admin(request) and may(admin_actor(request), action, self.parent_model)

    def has_view_permission(self, request, obj=None):
        return self._allowed(request, "view")

    def has_add_permission(self, request, obj=None):
        return self._allowed(request, "manage")

    def has_change_permission(self, request, obj=None):
        return self._allowed(request, "manage")

    def has_delete_permission(self, request, obj=None):
        return self._allowed(request, "manage")


def inline_values(formsets, model, field: str) -> list | None:
    """What an inline of `model` says after the edit: the `field` value of every row that is not
    marked for deletion (None when the page had no such inline, e.g. read-only)."""
    for formset in formsets:
        if formset.model is model:
            return [
                form.cleaned_data[field]
                for form in formset.forms
                if form.cleaned_data and not form.cleaned_data.get("DELETE") and form.cleaned_data.get(field)
            ]
    return None


class ReadOnlyModelAdmin(_ScopedRelationsMixin, admin.ModelAdmin):
    """Records: scoped to what the actor may view, never added, changed or deleted (no bulk
    delete either: without delete permission Django offers no delete action)."""

    def get_queryset(self, request):
        return scope(super().get_queryset(request), admin_actor(request), "view")

    def get_object(self, request, object_id, from_field=None):
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            raise Http404("not found")
        return obj

    def has_module_permission(self, request):
        return may_use_admin(request) and may(admin_actor(request), "view", self.model)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return _audited_refusal(request, super().changeform_view, object_id, form_url, extra_context)

    def delete_view(self, request, object_id, extra_context=None):
        return _audited_refusal(request, super().delete_view, object_id, extra_context)

    def has_view_permission(self, request, obj=None):
        if not may_use_admin(request):
            return False
        actor = admin_actor(request)
        return may(actor, "view", self.model) if obj is None else can(actor, "view", obj)

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def log_addition(self, request, obj, message):
        pass

    def log_change(self, request, obj, message):
        pass

    def log_deletions(self, request, queryset):
        pass


class SecretField(forms.CharField):
    """A write-only input: a password box that is never filled in with the stored value."""

    widget = forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"})

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        kwargs.setdefault("strip", False)
        super().__init__(**kwargs)
