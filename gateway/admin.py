"""Connections in the admin: write-only secrets, and CSV import (dry run, preview, all or nothing)
and export, all through `gateway.services` (see `governance.admin_base` for the shared rules)."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from dataclasses import dataclass, field

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse

from gateway import crypto, pipeline, services, virtual_servers
from gateway.admin_editors import SECRET_HELP, ConnectionSettingsWidget, secret_kinds
from gateway.models import Connection, VirtualServer
from governance import access
from governance.admin_base import GovernedModelAdmin, SecretField, admin_actor
from governance.admin_editors import StructuredJSONField
from governance.errors import InvalidInput, PortcullisError

# Every secret setting any kind has (password, env, headers, ...), one write-only input each.
SECRET_KEYS = sorted({k for kind in pipeline.connection_kinds() for k in pipeline.secret_setting_names(kind)})
OPTION_FORM_FIELDS = tuple(f for f in services.OPTION_FIELDS)


def _secret_value(raw: str):
    """Secrets are strings, except object-valued ones (a command's `env`, an MCP server's
    `headers`), which are typed as JSON."""
    if raw.lstrip().startswith("{"):
        try:
            return json.loads(raw)
        except ValueError:
            raise ValidationError("not valid JSON (object-valued secrets are typed as JSON)") from None
    return raw


class ConnectionForm(forms.ModelForm):
    config = StructuredJSONField(
        widget=ConnectionSettingsWidget(),
        label="Settings",
        help_text="The settings of the chosen kind. Secrets go in the write-only fields below, never here.",
    )
    clear_secrets = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Remove secrets",
        help_text="Tick a secret to delete its stored value.",
    )

    class Meta:
        model = Connection
        fields = (
            "name",
            "kind",
            "description",
            "config",
            "access_groups",
            *[f for f in OPTION_FORM_FIELDS if f != "description"],
        )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        stored = set(self.instance.secret_keys or []) if self.instance.pk else set()
        self.fields["clear_secrets"].choices = [(k, k) for k in sorted(stored)]
        if not stored:
            self.fields["clear_secrets"].widget = forms.MultipleHiddenInput()
        if self.instance.pk:  # the kind of a saved connection is fixed: show only its settings
            self.fields["config"].widget.kind = self.instance.kind
        kinds = secret_kinds()
        for key in SECRET_KEYS:
            state = "set - type a new value to replace it" if key in stored else "not set"
            usage = SECRET_HELP.get(key, key)
            self.fields[
                f"secret_{key}"
            ].help_text = f"{usage}. Write-only ({state}). For {', '.join(kinds.get(key, []))} connections."

    def clean(self):
        cleaned = super().clean()
        for key in SECRET_KEYS:
            raw = cleaned.get(f"secret_{key}")
            if raw:
                try:
                    cleaned[f"secret_{key}"] = _secret_value(raw)
                except ValidationError as exc:
                    self.add_error(f"secret_{key}", exc)
        return cleaned

    def secrets(self) -> dict:
        """The secrets typed in (a value) or ticked for removal (None)."""
        given = {
            k: self.cleaned_data[f"secret_{k}"] for k in SECRET_KEYS if self.cleaned_data.get(f"secret_{k}")
        }
        for key in self.cleaned_data.get("clear_secrets") or []:
            given.setdefault(key, None)
        return given


for _key in SECRET_KEYS:
    ConnectionForm.base_fields[f"secret_{_key}"] = SecretField(label=f"Secret: {_key}")
    ConnectionForm.declared_fields[f"secret_{_key}"] = ConnectionForm.base_fields[f"secret_{_key}"]


@admin.register(Connection)
class ConnectionAdmin(GovernedModelAdmin):
    form = ConnectionForm
    list_display = ("name", "kind", "description", "secrets_set", "access", "exec_enabled", "updated_at")
    list_filter = (
        "kind",
        "exec_enabled",
        "schema_enabled",
        ("access_groups", admin.RelatedOnlyFieldListFilter),
    )
    search_fields = ("name", "description")
    actions = ("export_csv",)
    change_list_template = "admin/gateway/connection/change_list.html"

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("access_groups", "attributes")

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        extra = {**(extra_context or {}), "secret_kinds": secret_kinds()}
        return super().changeform_view(request, object_id, form_url, extra)

    def test_view(self, request, object_id):
        """The page's "Test connection" button: `connection_test`, as the MCP tool calls it."""
        if request.method != "POST":
            return JsonResponse({"error": "POST to test"}, status=405)
        connection = self.get_object(request, object_id)  # scoped: another org's is a 404
        if not self.has_view_permission(request, connection):
            raise PermissionDenied
        try:
            return JsonResponse(
                pipeline.connection_test(actor=admin_actor(request), connection_name=connection.name)
            )
        except PortcullisError as exc:
            return JsonResponse({"error": exc.message}, status=400)

    def get_fieldsets(self, request, obj=None):
        return [
            (None, {"fields": ("name", "kind", "description", "config")}),
            (
                "Secrets (write-only: stored encrypted, never shown again)",
                {"fields": (*(f"secret_{k}" for k in SECRET_KEYS), "clear_secrets", "secrets_set")},
            ),
            (
                "Limits and access modes",
                {
                    "fields": (
                        "max_rows",
                        "max_output_bytes",
                        "timeout_seconds",
                        "exec_enabled",
                        "schema_enabled",
                        "runbooks_enabled",
                        "agent_queue",
                    )
                },
            ),
            ("Access control and attributes", {"fields": ("access_groups", "attribute_names")}),
        ]

    def get_readonly_fields(self, request, obj=None):
        fixed = ("secrets_set", "attribute_names")
        if obj is not None and self.has_change_permission(request, obj):
            return ("name", "kind", *fixed)  # the services do not rename or change kinds
        return fixed

    @admin.display(description="secrets set")
    def secrets_set(self, obj):
        return ", ".join(obj.secret_keys or []) or "-"

    @admin.display(description="access groups")
    def access(self, obj):
        if obj.pk is None:
            return "-"
        names = sorted(g.name for g in obj.access_groups.all())
        return ", ".join(names) if names else "everyone in the org (no access groups)"

    @admin.display(description="attributes")
    def attribute_names(self, obj):
        return ", ".join(sorted(a.name for a in obj.attributes.all())) if obj.pk else "-"

    def save_through_service(self, request, actor, form, formsets, change):
        data = form.cleaned_data
        options = {k: data[k] for k in OPTION_FORM_FIELDS if k in data}
        config = data.get("config") or {}
        if not isinstance(config, dict):
            raise InvalidInput("config: must be a JSON object")
        if not change:
            connection = services.connection_create(
                actor=actor,
                name=data["name"],
                kind=data["kind"],
                settings={**config, **{k: v for k, v in form.secrets().items() if v is not None}},
                options=options,
            )
        else:
            old = Connection.objects.get(pk=form.instance.pk)
            settings = {k: v for k, v in config.items() if old.config.get(k, object()) != v}
            settings.update({k: None for k in old.config if k not in config})
            settings.update(form.secrets())
            options = {k: v for k, v in options.items() if getattr(old, k) != v}
            connection = old
            if settings or options:  # an unchanged form writes nothing (and audits nothing)
                connection = services.connection_update(
                    actor=actor, name=old.name, settings=settings or None, options=options or None
                )
        if "access_groups" in data:  # absent when the field is read-only
            groups = sorted(g.name for g in data["access_groups"])
            current = sorted(connection.access_groups.values_list("name", flat=True))
            if groups != current:
                if groups:
                    access.access_control_set(actor=actor, connection_name=connection.name, groups=groups)
                else:
                    access.access_control_unset(actor=actor, connection_name=connection.name)
        return connection

    def delete_through_service(self, request, actor, obj):
        services.connection_delete(actor=actor, name=obj.name)

    # --- CSV export ---------------------------------------------------------------------------
    @admin.action(description="Export the selected connections as CSV (no secrets)", permissions=["view"])
    def export_csv(self, request, queryset):
        return csv_export_response(list(queryset.order_by("name")))

    # --- CSV import ---------------------------------------------------------------------------
    def get_urls(self):
        urls = super().get_urls()
        opts = self.model._meta
        view = self.admin_site.admin_view(self.import_csv_view)
        test = self.admin_site.admin_view(self.test_view)
        return [
            path("import-csv/", view, name=f"{opts.app_label}_{opts.model_name}_import_csv"),
            path("<path:object_id>/test/", test, name=f"{opts.app_label}_{opts.model_name}_test"),
            *urls,
        ]

    def import_csv_view(self, request):
        if not self.has_add_permission(request):
            raise PermissionDenied
        actor = admin_actor(request)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Import connections from CSV",
            "columns_help": csv_columns_help(),
        }
        if request.method != "POST":
            return TemplateResponse(request, "admin/gateway/connection/import_csv.html", context)
        if "payload" in request.POST:  # the confirm step
            try:
                text = _open_payload(request.POST["payload"], actor)
            except ValueError as exc:
                self.message_user(request, str(exc), messages.ERROR)
                return HttpResponseRedirect(request.path)
            commit = True
        else:
            upload = request.FILES.get("file")
            if upload is None:
                context["error"] = "Choose a CSV file to upload."
                return TemplateResponse(request, "admin/gateway/connection/import_csv.html", context)
            if upload.size > MAX_CSV_BYTES:
                context["error"] = f"The file is larger than {MAX_CSV_BYTES // 1024} KiB; split it."
                return TemplateResponse(request, "admin/gateway/connection/import_csv.html", context)
            try:
                text = upload.read().decode("utf-8-sig")
            except UnicodeDecodeError:
                context["error"] = "The file is not UTF-8 text."
                return TemplateResponse(request, "admin/gateway/connection/import_csv.html", context)
            commit = False
        report = csv_import(actor=actor, text=text, commit=commit)
        if commit and report.ok:
            self.message_user(request, f"Imported {len(report.rows)} connections.", messages.SUCCESS)
            return HttpResponseRedirect(reverse(f"{self.admin_site.name}:gateway_connection_changelist"))
        context.update(
            report=report, payload=_seal_payload(text, actor) if report.ok else "", committed=commit
        )
        return TemplateResponse(request, "admin/gateway/connection/import_csv.html", context)


# --- CSV: one row per connection ---------------------------------------------------------------
#
# Columns: `name` and `kind` (required), the options (`description`, `max_rows`, ...), and any
# setting of the kind (`host`, `port`, `database`, `user`, `path`, `argv`, ...), secrets included
# (`password`, `env`, ...). Empty cells are left out. Cells starting with `[` or `{` are JSON;
# in non-secret columns `true`/`false` are booleans and whole numbers are integers. Secrets go in
# but never come out: the export has no secret columns.

MAX_CSV_BYTES = 1024 * 1024
MAX_CSV_ROWS = 1000
PAYLOAD_MAX_AGE = 15 * 60
_INT = re.compile(r"^-?\d+$")


def csv_columns_help() -> str:
    settings_keys = sorted(
        {
            *services.OPTION_FIELDS,
            *(k for kind in pipeline.connection_kinds() for k in pipeline.secret_setting_names(kind)),
        }
    )
    return "name, kind, then any of: " + ", ".join(settings_keys) + " and the settings of each kind"


def _cell(column: str, raw: str):
    raw = raw.strip()
    if raw[:1] == "{" or (raw[:1] == "[" and column not in SECRET_KEYS):
        try:
            return json.loads(raw)
        except ValueError:
            raise InvalidInput(f"column {column}: not valid JSON") from None
    if column in SECRET_KEYS or column in ("description", "agent_queue"):
        return raw
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if _INT.match(raw):
        return int(raw)
    return raw


@dataclass
class ImportRow:
    line: int
    name: str
    kind: str
    error: str = ""
    secret_keys: list[str] = field(default_factory=list)


@dataclass
class ImportReport:
    rows: list[ImportRow]
    error: str = ""  # a problem with the file as a whole

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.rows) and not any(r.error for r in self.rows)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.rows if r.error)


class _Rollback(Exception):
    pass


def csv_import(*, actor, text: str, commit: bool) -> ImportReport:
    """Create a connection per CSV row through `connection_create`, in one transaction: a dry run
    (`commit=False`) or any failing row rolls everything back, so nothing is ever half-imported.
    Each row's problem is reported by line."""
    reader = csv.DictReader(io.StringIO(text))
    try:
        header = [h.strip() for h in reader.fieldnames or []]
    except csv.Error as exc:
        return ImportReport(rows=[], error=f"the file is not valid CSV ({exc})")
    missing = [c for c in ("name", "kind") if c not in header]
    if missing:
        return ImportReport(
            rows=[], error=f"the header must have the columns name and kind (missing: {', '.join(missing)})"
        )
    report = ImportReport(rows=[])
    try:
        with transaction.atomic():
            for row in reader:
                if len(report.rows) >= MAX_CSV_ROWS:
                    report.error = f"more than {MAX_CSV_ROWS} rows; split the file"
                    raise _Rollback
                values = {(k or "").strip(): (v or "") for k, v in row.items() if k is not None}
                if None in row:
                    report.rows.append(
                        ImportRow(reader.line_num, values.get("name", ""), "", "more cells than columns")
                    )
                    continue
                item = ImportRow(
                    reader.line_num, values.get("name", "").strip(), values.get("kind", "").strip()
                )
                report.rows.append(item)
                try:
                    cells = {
                        k: _cell(k, v) for k, v in values.items() if k not in ("name", "kind") and v.strip()
                    }
                    settings, options = services.split_options(cells)
                    with transaction.atomic():
                        connection = services.connection_create(
                            actor=actor, name=item.name, kind=item.kind, settings=settings, options=options
                        )
                    item.secret_keys = list(connection.secret_keys)
                except PortcullisError as exc:
                    item.error = exc.message
            if not report.rows and not report.error:
                report.error = "the file has no rows"
            if not commit or not report.ok:
                raise _Rollback
    except _Rollback:
        pass
    except csv.Error as exc:  # raised while reading a row; the transaction has rolled back
        report.error = f"the file is not valid CSV near line {reader.line_num + 1} ({exc})"
    return report


def _seal_payload(text: str, actor) -> str:
    """The previewed file, encrypted for the confirm step: the page carries no secret in clear."""
    return crypto.encrypt_json({"csv": text, "user": str(actor.user.pk), "at": time.time()})


def _open_payload(token: str, actor) -> str:
    try:
        data = crypto.decrypt_json(token)
    except (RuntimeError, ValueError):
        raise ValueError("The import could not be confirmed; upload the file again.") from None
    if data.get("user") != str(actor.user.pk):
        raise ValueError("The import could not be confirmed; upload the file again.")
    if time.time() - float(data.get("at", 0)) > PAYLOAD_MAX_AGE:
        raise ValueError("The preview is older than 15 minutes; upload the file again.")
    return data["csv"]


def csv_export_response(connections: list[Connection]) -> HttpResponse:
    """Connections as CSV in the import's format, without any secret."""
    setting_keys = sorted({k for c in connections for k in c.config})
    columns = ["name", "kind", *services.OPTION_FIELDS, *setting_keys]
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="connections.csv"'
    writer = csv.writer(response)
    writer.writerow(columns)
    for connection in connections:
        row = {"name": connection.name, "kind": connection.kind}
        row.update({k: getattr(connection, k) for k in services.OPTION_FIELDS})
        row.update(connection.config)
        writer.writerow([_export_cell(row.get(c)) for c in columns])
    return response


def _export_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


from gateway import admin_runbooks  # noqa: E402,F401  (runbook pages; kept in their own module)


class VirtualServerForm(forms.ModelForm):
    class Meta:
        model = VirtualServer
        fields = ("name", "description", "connections", "include_portcullis_tools")
        help_texts = {
            "name": "Agents connect to /api/mcp/v/<name>; tools are named <connection>__<tool>.",
        }


@admin.register(VirtualServer)
class VirtualServerAdmin(GovernedModelAdmin):
    """Several upstream mcp connections as one MCP endpoint (gateway/virtual_servers.py)."""

    form = VirtualServerForm
    list_display = ("name", "description", "members", "include_portcullis_tools", "updated_at")
    search_fields = ("name", "description")
    filter_horizontal = ("connections",)

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("connections")

    @admin.display(description="Connections")
    def members(self, obj):
        return ", ".join(c.name for c in obj.connections.all()) or "—"

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        field = super().formfield_for_manytomany(db_field, request, **kwargs)
        if db_field.name == "connections":
            field.queryset = field.queryset.filter(kind="mcp")
        return field

    def save_through_service(self, request, actor, form, formsets, change):
        data = form.cleaned_data
        values = {
            "name": data["name"],
            "description": data.get("description") or "",
            "connections": [c.name for c in data.get("connections") or []],
            "include_portcullis_tools": bool(data.get("include_portcullis_tools")),
        }
        if change:
            return virtual_servers.virtual_server_update(actor=actor, ref=str(form.instance.pk), **values)
        return virtual_servers.virtual_server_create(actor=actor, **values)

    def delete_through_service(self, request, actor, obj):
        virtual_servers.virtual_server_delete(actor=actor, ref=str(obj.pk))
