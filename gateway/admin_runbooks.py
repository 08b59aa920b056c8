"""Admin pages for runbooks (the editor of the scripts) and runbook rules, saved through
`gateway.runbooks` like every other surface (validated, audited with surface `admin`)."""

from __future__ import annotations

from django.contrib import admin

from gateway import runbooks
from gateway.models import Runbook, RunbookRule
from governance.admin import RelatedOnly, _RuleAdmin
from governance.admin_base import GovernedModelAdmin


@admin.register(Runbook)
class RunbookAdmin(GovernedModelAdmin):
    list_display = ("name", "connection", "enabled", "updated_at")
    list_filter = ("enabled", ("connection", RelatedOnly))
    search_fields = ("name", "description")
    fields = ("connection", "name", "description", "enabled", "template", "parameters")

    def get_readonly_fields(self, request, obj=None):
        return ("connection",) if obj is not None else ()

    def save_through_service(self, request, actor, form, formsets, change):
        data = form.cleaned_data
        if change:
            original = Runbook.objects.get(pk=form.instance.pk)
            return runbooks.runbook_update(
                actor=actor,
                connection_name=original.connection.name,
                name=original.name,
                new_name=data["name"],
                description=data.get("description", ""),
                enabled=data.get("enabled"),
                template=data["template"],
                parameters=data.get("parameters") or [],
            )
        return runbooks.runbook_create(
            actor=actor,
            connection_name=data["connection"].name,
            name=data["name"],
            template=data["template"],
            parameters=data.get("parameters") or [],
            description=data.get("description", ""),
            enabled=data.get("enabled", True),
        )

    def delete_through_service(self, request, actor, obj):
        runbooks.runbook_delete(actor=actor, connection_name=obj.connection.name, name=obj.name)


@admin.register(RunbookRule)
class RunbookRuleAdmin(_RuleAdmin):
    fields = ("name", "description", "enabled", "groups", "runbooks", "connections", "attributes")
    filter_horizontal = ("connections", "attributes", "groups")
    rule_fields = {"name": "name", "description": "description", "enabled": "enabled", "runbooks": "runbooks"}
    create = staticmethod(runbooks.runbook_rule_create)
    update = staticmethod(runbooks.runbook_rule_update)
    delete = staticmethod(runbooks.runbook_rule_delete)

    def _fields(self, data) -> dict:
        fields = super()._fields(data)
        fields["groups"] = [g.name for g in data.get("groups") or []]
        return fields
