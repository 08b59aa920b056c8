"""REST views: parse -> one service call with `actor=` -> the service's dict. No permission logic
here: roles and capabilities are declared (`roles`, `capabilities`) and the services decide."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response

from gateway import pipeline, previews, reviewed, runbooks, shapes, upstream, upstream_hold, waits
from gateway import services as connections
from gateway.api import schema  # noqa: F401  (registers the OpenAPI extensions)
from gateway.api import serializers as io
from gateway.api.base import ServiceView, decode_cursor, page_body, parse
from governance import access, rules
from governance import services as directory
from governance.errors import InvalidInput
from governance.models import TokenCapability
from governance.policy import ROLE_ADMIN, ROLE_AUDITOR, capability_explained
from reviews import services as reviews
from sessions import services as records
from sessions import webhooks
from sessions.models import SessionStatus
from sessions.wakeup import wait_for_final

ERRORS = {
    400: OpenApiResponse(description="Invalid input: `{error: {code, message, fields}}`"),
    401: OpenApiResponse(description="Missing or refused token"),
    403: OpenApiResponse(description="Not allowed (role or token capability)"),
    404: OpenApiResponse(description="Not found, or not visible to you (the same answer)"),
}
WRITE_ERRORS = {**ERRORS, 409: OpenApiResponse(description="Conflict (exists, last admin, ...)")}


def _responses(ok, code: int = 200, errors=ERRORS) -> dict:
    return {code: ok, **errors}


def answers(ok, code: int = 200, errors=ERRORS, **described):
    """`extend_schema` whose success answer is `ok`: an output shape (gateway/shapes.py, the model
    MCP answers with) or None. The view's body is checked against that same shape
    (`ServiceView.finalize_response`), so the schema documents exactly what the view answers."""

    def decorate(method):
        method.answers = (code, ok)
        return extend_schema(responses=_responses(ok, code, errors), **described)(method)

    return decorate


def _query_params(serializer) -> list:
    return [serializer]  # drf-spectacular expands a serializer into query parameters


def _listed(request, view: ServiceView, serializer, fetch, render) -> Response:
    """The shape of every list endpoint: strict query, cursor -> offset, page body."""
    query = view.query(serializer)
    offset = decode_cursor(query.pop("cursor", None))
    limit = query.pop("limit")
    items, total = fetch(limit=limit, offset=offset, **query)
    return Response(page_body(request, [render(i) for i in items], total, offset))


# --- me ------------------------------------------------------------------------------------------


class MeView(ServiceView):
    @answers(shapes.MeOut, summary="Who you are: user, groups, roles, token capability")
    def get(self, request):
        actor = self.actor
        return Response(
            {
                "user_id": str(actor.user.pk),
                "user_email": actor.user.email,
                "user_name": actor.user.name,
                "org_id": str(actor.user.org_id),
                "org_name": actor.user.org.name,
                "groups": sorted(actor.groups),
                "is_admin": actor.is_admin,
                "is_auditor": actor.is_auditor,
                "capability": actor.capability,
                "capability_explained": capability_explained(actor),
                "client": actor.client,
            }
        )


# --- connections ---------------------------------------------------------------------------------


def _options(data: dict) -> dict:
    return {k: data[k] for k in connections.OPTION_FIELDS if k in data}


class ConnectionListView(ServiceView):
    roles = {"POST": ROLE_ADMIN}

    @answers(
        io.ConnectionPage,
        parameters=_query_params(io.ConnectionQuery),
        summary="Connections you may see, by name",
    )
    def get(self, request):
        return _listed(
            request,
            self,
            io.ConnectionQuery,
            lambda **q: connections.connection_list(actor=self.actor, **q),
            connections.connection_to_dict,
        )

    @answers(
        shapes.ConnectionOut,
        code=201,
        errors=WRITE_ERRORS,
        request=io.ConnectionCreate,
        summary="Create a connection (admin); secrets are write-only",
    )
    def post(self, request):
        data = parse(io.ConnectionCreate, request.data)
        connection = connections.connection_create(
            actor=self.actor,
            name=data["name"],
            kind=data["kind"],
            settings=data["settings"],
            options=_options(data),
        )
        return Response(connections.connection_to_dict(connection), status=status.HTTP_201_CREATED)


class ConnectionDetailView(ServiceView):
    roles = {"PATCH": ROLE_ADMIN, "DELETE": ROLE_ADMIN}

    @answers(shapes.ConnectionOut, summary="One connection (never a secret value)")
    def get(self, request, name):
        return Response(
            connections.connection_to_dict(connections.connection_get(actor=self.actor, name=name))
        )

    @answers(
        shapes.ConnectionOut,
        errors=WRITE_ERRORS,
        request=io.ConnectionUpdate,
        summary="Change a connection (admin); only the fields sent change",
    )
    def patch(self, request, name):
        data = parse(io.ConnectionUpdate, request.data)
        connection = connections.connection_update(
            actor=self.actor, name=name, settings=data.get("settings"), options=_options(data)
        )
        return Response(connections.connection_to_dict(connection))

    @answers(None, code=204, summary="Delete a connection (admin); its sessions stay")
    def delete(self, request, name):
        connections.connection_delete(actor=self.actor, name=name)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- access control ------------------------------------------------------------------------------

ACCESS_BEHAVIOUR = (
    "A connection with no access groups is usable by every member of the organization; naming groups "
    "restricts that connection only and never hides any other connection."
)


class AccessControlListView(ServiceView):
    roles = {"*": ROLE_AUDITOR}

    @answers(
        io.AccessControlPage,
        parameters=_query_params(io.PageOnly),
        summary="Connections that have access groups (admins, auditors)",
        description=ACCESS_BEHAVIOUR,
    )
    def get(self, request):
        return _listed(
            request,
            self,
            io.PageOnly,
            lambda **q: access.access_control_list(actor=self.actor, **q),
            lambda item: item,
        )


class AccessControlView(ServiceView):
    roles = {"GET": ROLE_AUDITOR, "PUT": ROLE_ADMIN, "DELETE": ROLE_ADMIN}

    @answers(
        shapes.AccessControlOut, summary="Which groups may use a connection", description=ACCESS_BEHAVIOUR
    )
    def get(self, request, name):
        return Response(access.access_control_get(actor=self.actor, connection_name=name))

    @answers(
        shapes.AccessControlOut,
        request=io.AccessControlSet,
        summary="Restrict a connection to these groups (admin)",
        description=ACCESS_BEHAVIOUR,
    )
    def put(self, request, name):
        data = parse(io.AccessControlSet, request.data)
        return Response(
            access.access_control_set(actor=self.actor, connection_name=name, groups=data["groups"])
        )

    @answers(
        shapes.AccessControlOut,
        errors=WRITE_ERRORS,
        summary="Open a connection to every member again (admin)",
        description=ACCESS_BEHAVIOUR,
    )
    def delete(self, request, name):
        return Response(access.access_control_unset(actor=self.actor, connection_name=name))


# --- users and groups ----------------------------------------------------------------------------


class UserListView(ServiceView):
    roles = {"POST": ROLE_ADMIN}

    @answers(io.UserPage, parameters=_query_params(io.UserQuery), summary="Users")
    def get(self, request):
        return _listed(
            request,
            self,
            io.UserQuery,
            lambda **q: directory.user_list(actor=self.actor, **q),
            directory.user_to_dict,
        )

    @answers(
        shapes.UserOut,
        code=201,
        errors=WRITE_ERRORS,
        request=io.UserCreate,
        summary="Create a user (admin); they log in through SSO or a password set by the CLI",
    )
    def post(self, request):
        data = parse(io.UserCreate, request.data)
        user = directory.user_create(
            actor=self.actor, email=data["email"], name=data["name"], groups=data["groups"]
        )
        return Response(directory.user_to_dict(user), status=status.HTTP_201_CREATED)


class UserDetailView(ServiceView):
    roles = {"PATCH": ROLE_ADMIN}

    @answers(shapes.UserOut, summary="One user, by e-mail or id")
    def get(self, request, ref):
        return Response(directory.user_to_dict(directory.user_get(actor=self.actor, ref=ref)))

    @answers(
        shapes.UserOut,
        errors=WRITE_ERRORS,
        request=io.UserUpdate,
        summary="Change a user (admin): name, active, groups",
    )
    def patch(self, request, ref):
        data = parse(io.UserUpdate, request.data)
        user = directory.user_update(actor=self.actor, ref=ref, **data)
        return Response(directory.user_to_dict(directory.user_get(actor=self.actor, ref=str(user.pk))))


class GroupListView(ServiceView):
    roles = {"POST": ROLE_ADMIN}

    @answers(io.GroupPage, parameters=_query_params(io.SearchQuery), summary="Groups")
    def get(self, request):
        return _listed(
            request,
            self,
            io.SearchQuery,
            lambda **q: directory.usergroup_list(actor=self.actor, **q),
            directory.usergroup_to_dict,
        )

    @answers(
        shapes.GroupOut,
        code=201,
        errors=WRITE_ERRORS,
        request=io.GroupCreate,
        summary="Create a group (admin); binding it to connections is access control's job",
    )
    def post(self, request):
        data = parse(io.GroupCreate, request.data)
        group = directory.usergroup_create(actor=self.actor, name=data["name"], members=data.get("members"))
        group = directory.usergroup_get(actor=self.actor, name=group.name)
        return Response(directory.usergroup_to_dict(group), status=status.HTTP_201_CREATED)


class GroupDetailView(ServiceView):
    roles = {"PATCH": ROLE_ADMIN, "DELETE": ROLE_ADMIN}

    @answers(shapes.GroupOut, summary="One group")
    def get(self, request, name):
        return Response(directory.usergroup_to_dict(directory.usergroup_get(actor=self.actor, name=name)))

    @answers(
        shapes.GroupOut,
        errors=WRITE_ERRORS,
        request=io.GroupUpdate,
        summary="Rename a group or change its members (admin)",
    )
    def patch(self, request, name):
        data = parse(io.GroupUpdate, request.data)
        group = directory.usergroup_update(
            actor=self.actor,
            name=name,
            new_name=data.get("name"),
            members=data.get("members"),
            add=data.get("add"),
            remove=data.get("remove"),
        )
        return Response(directory.usergroup_to_dict(group))

    @answers(
        None,
        code=204,
        errors=WRITE_ERRORS,
        summary="Delete a group (admin); not the reserved ones, not a connection's only access group",
    )
    def delete(self, request, name):
        directory.usergroup_delete(actor=self.actor, name=name)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- rules and attributes ------------------------------------------------------------------------


def _rule_views(*, label: str, page, out, create, update, service: dict):
    """List/create and get/update/delete views for one kind of rule, over its services."""

    class ListView(ServiceView):
        roles = {"GET": ROLE_AUDITOR, "POST": ROLE_ADMIN}

        @answers(page, parameters=_query_params(io.PageOnly), summary=f"{label}s")
        def get(self, request):
            return _listed(
                request,
                self,
                io.PageOnly,
                lambda **q: service["list"](actor=self.actor, **q),
                service["dict"],
            )

        @answers(out, code=201, errors=WRITE_ERRORS, request=create, summary=f"Create a {label} (admin)")
        def post(self, request):
            data = dict(parse(create, request.data))
            rule = service["create"](actor=self.actor, **data)
            return Response(service["dict"](service["get"](actor=self.actor, ref=str(rule.pk))), status=201)

    class DetailView(ServiceView):
        roles = {"GET": ROLE_AUDITOR, "PATCH": ROLE_ADMIN, "DELETE": ROLE_ADMIN}

        @answers(out, summary=f"One {label}, by name or id")
        def get(self, request, ref):
            return Response(service["dict"](service["get"](actor=self.actor, ref=ref)))

        @answers(
            out, 200, WRITE_ERRORS, request=update, summary=f"Change a {label} (admin); binding lists replace"
        )
        def patch(self, request, ref):
            data = dict(parse(update, request.data))
            rule = service["update"](actor=self.actor, ref=ref, **data)
            return Response(service["dict"](service["get"](actor=self.actor, ref=str(rule.pk))))

        @answers(None, code=204, errors=WRITE_ERRORS, summary=f"Delete a {label} (admin)")
        def delete(self, request, ref):
            service["delete"](actor=self.actor, ref=ref)
            return Response(status=204)

    name = label.title().replace(" ", "")
    ListView.__name__ = ListView.__qualname__ = f"{name}ListView"
    DetailView.__name__ = DetailView.__qualname__ = f"{name}DetailView"
    return ListView, DetailView


GuardrailListView, GuardrailDetailView = _rule_views(
    label="guardrail rule",
    page=io.GuardrailPage,
    out=shapes.GuardrailOut,
    create=io.GuardrailCreate,
    update=io.GuardrailUpdate,
    service={
        "list": rules.guardrail_list,
        "get": rules.guardrail_get,
        "create": rules.guardrail_create,
        "update": rules.guardrail_update,
        "delete": rules.guardrail_delete,
        "dict": rules.guardrail_to_dict,
    },
)
MaskingRuleListView, MaskingRuleDetailView = _rule_views(
    label="masking rule",
    page=io.MaskingPage,
    out=shapes.MaskingOut,
    create=io.MaskingCreate,
    update=io.MaskingUpdate,
    service={
        "list": rules.masking_rule_list,
        "get": rules.masking_rule_get,
        "create": rules.masking_rule_create,
        "update": rules.masking_rule_update,
        "delete": rules.masking_rule_delete,
        "dict": rules.masking_rule_to_dict,
    },
)


class AttributeListView(ServiceView):
    roles = {"*": ROLE_ADMIN}

    @answers(io.AttributePage, parameters=_query_params(io.PageOnly), summary="Attributes")
    def get(self, request):
        return _listed(
            request,
            self,
            io.PageOnly,
            lambda **q: rules.attribute_list(actor=self.actor, **q),
            rules.attribute_to_dict,
        )

    @answers(
        shapes.AttributeOut,
        code=201,
        errors=WRITE_ERRORS,
        request=io.AttributeCreate,
        summary="Create an attribute (admin)",
    )
    def post(self, request):
        data = parse(io.AttributeCreate, request.data)
        attribute = rules.attribute_create(actor=self.actor, **data)
        return Response(
            rules.attribute_to_dict(rules.attribute_get(actor=self.actor, name=attribute.name)), status=201
        )


class AttributeDetailView(ServiceView):
    roles = {"*": ROLE_ADMIN}

    @answers(shapes.AttributeOut, summary="One attribute")
    def get(self, request, name):
        return Response(rules.attribute_to_dict(rules.attribute_get(actor=self.actor, name=name)))

    @answers(
        shapes.AttributeOut,
        errors=WRITE_ERRORS,
        request=io.AttributeUpdate,
        summary="Change an attribute (admin); `connections` replaces the list",
    )
    def patch(self, request, name):
        data = parse(io.AttributeUpdate, request.data)
        rules.attribute_update(actor=self.actor, name=name, **data)
        return Response(rules.attribute_to_dict(rules.attribute_get(actor=self.actor, name=name)))

    @answers(None, code=204, errors=WRITE_ERRORS, summary="Delete an attribute (admin)")
    def delete(self, request, name):
        rules.attribute_delete(actor=self.actor, name=name)
        return Response(status=204)


# --- sessions, audit, exec -----------------------------------------------------------------------


class SessionListView(ServiceView):
    @answers(
        io.SessionPage,
        parameters=_query_params(io.SessionQuery),
        summary="Sessions: your own; the org's for admins and auditors; newest first",
    )
    def get(self, request):
        return _listed(
            request,
            self,
            io.SessionQuery,
            lambda **q: records.session_list(actor=self.actor, **q),
            lambda session: records.session_to_dict(session, actor=self.actor),
        )


class SessionStatsView(ServiceView):
    @answers(
        shapes.StatsOut,
        parameters=_query_params(io.StatsQuery),
        summary="Count sessions grouped by user, connection, status, review_status, rule, attribute, time",
    )
    def get(self, request):
        query = self.query(io.StatsQuery)
        group_by = [g.strip() for g in query.pop("group_by").split(",") if g.strip()]
        return Response(records.session_stats(actor=self.actor, group_by=group_by, **query))


class SessionDetailView(ServiceView):
    @answers(shapes.SessionOut, summary="One session's record, without content")
    def get(self, request, session_id):
        session = records.session_get(actor=self.actor, session_id=session_id)
        return Response(records.session_to_dict(session, actor=self.actor))


class SessionContentView(ServiceView):
    @answers(
        shapes.ContentOut,
        parameters=_query_params(io.ContentQuery),
        summary="A session's input and (masked) output, the output paged by bytes",
    )
    def get(self, request, session_id):
        query = self.query(io.ContentQuery)
        return Response(records.session_content(actor=self.actor, session_id=session_id, **query))


class SessionCancelView(ServiceView):
    capabilities = {"POST": TokenCapability.READ_ONLY}  # stopping one's own session changes no data

    @answers(shapes.SessionOut, errors=WRITE_ERRORS, request=None, summary="Cancel a session")
    def post(self, request, session_id):
        session = pipeline.exec_cancel(actor=self.actor, session_id=session_id)
        session = records.session_get(actor=self.actor, session_id=session.pk)
        return Response(records.session_to_dict(session, actor=self.actor))


class AuditEventListView(ServiceView):
    roles = {"*": ROLE_AUDITOR}

    @answers(
        io.AuditEventPage,
        parameters=_query_params(io.AuditQuery),
        summary="The audit log, newest first (admins, auditors)",
    )
    def get(self, request):
        return _listed(
            request,
            self,
            io.AuditQuery,
            lambda **q: records.audit_event_list(actor=self.actor, **q),
            records.audit_event_to_dict,
        )


def _exec_answer(session, timeout: float | None) -> dict:
    """The MCP exec envelope for a session, after waiting up to `timeout` for it to finish."""
    timed_out = False
    if session.status in (SessionStatus.OPEN, SessionStatus.RUNNING):
        wait = settings.EXEC_HANDOFF_SECONDS if timeout is None else timeout
        session, timed_out = async_to_sync(wait_for_final)(session.pk, wait)
    envelope = pipeline.exec_envelope(session)
    if envelope["status"] == "running" and timed_out:
        envelope["next_step"] = f"poll GET /api/v1/sessions/{session.pk}/ until its status is final"
    return envelope


class ExecView(ServiceView):
    # The pipeline applies a read-only token's ceiling itself (reads only, in a read-only transaction).
    capabilities = {"POST": TokenCapability.READ_ONLY}

    @answers(
        shapes.ExecOut,
        request=io.ExecIn,
        summary="Run SQL or a command through the gateway (the MCP exec envelope)",
        description="Branch on `status`: completed | failed | blocked | pending_approval | running (then poll "
        "GET /api/v1/sessions/{id}/). The same pipeline as MCP: access control, guardrails, review, masking, audit.",
    )
    def post(self, request):
        data = parse(io.ExecIn, request.data)
        session = pipeline.exec_start(
            actor=self.actor,
            connection_name=data["connection_name"],
            input=data["input"],
            max_rows=data.get("max_rows"),
            metadata=data.get("metadata"),
            idempotency_key=data.get("idempotency_key") or _idempotency_header(request),
        )
        return Response(_exec_answer(session, data.get("timeout_seconds")))


def _idempotency_header(request) -> str | None:
    """The `Idempotency-Key` request header (the IETF HTTP draft's name), if sent."""
    return request.headers.get("Idempotency-Key") or None


# --- reviews -------------------------------------------------------------------------------------


class ReviewListView(ServiceView):
    @answers(
        io.ReviewPage,
        parameters=_query_params(io.ReviewQuery),
        summary="Reviews you may see: your requests, those your groups review (admins, auditors: all)",
    )
    def get(self, request):
        return _listed(
            request,
            self,
            io.ReviewQuery,
            lambda **q: reviews.review_list(actor=self.actor, **q),
            lambda review: reviews.review_to_dict(review, actor=self.actor),
        )


class ReviewDetailView(ServiceView):
    @answers(shapes.ReviewOut, summary="One review, by its id or its session's id")
    def get(self, request, review_id):
        review = reviews.review_get(actor=self.actor, review_id=review_id)
        return Response(reviews.review_to_dict(review, actor=self.actor))

    @answers(
        shapes.ReviewOut,
        errors=WRITE_ERRORS,
        request=io.ReviewDecide,
        summary="Decide a review: APPROVED or REJECTED while pending, REVOKED once approved",
        description="Only eligible reviewers decide and nobody approves their own request (the reviews service).",
    )
    def patch(self, request, review_id):
        data = parse(io.ReviewDecide, request.data)
        review = reviews.review_decide(actor=self.actor, review_id=review_id, **data)
        review = reviews.review_get(actor=self.actor, review_id=review.pk)
        return Response(reviews.review_to_dict(review, actor=self.actor))


class ReviewExecuteView(ServiceView):
    capabilities = {"POST": TokenCapability.READ_ONLY}  # the pipeline applies the token's ceiling

    @answers(
        shapes.ExecOut,
        errors=WRITE_ERRORS,
        request=None,
        summary="Run exactly the input an approved one-time review approved, once (the requester)",
    )
    def post(self, request, review_id):
        session = reviewed.review_execute(
            actor=self.actor, review_id=review_id, idempotency_key=_idempotency_header(request)
        )
        return Response(_exec_answer(session, None))


# --- admin operations that were only in the Django admin ------------------------------------------


class ConnectionImportView(ServiceView):
    roles = {"*": ROLE_ADMIN}

    @answers(
        shapes.ImportOut,
        errors=WRITE_ERRORS,
        request=io.ConnectionImport,
        summary="Create many connections from CSV or rows (admin); per-row results; dry_run creates nothing",
    )
    def post(self, request):
        data = parse(io.ConnectionImport, request.data)
        if ("csv" in data) == ("rows" in data):
            raise InvalidInput("give csv or rows")
        rows = connections.import_rows_from_csv(data["csv"]) if "csv" in data else data["rows"]
        return Response(connections.connection_import(actor=self.actor, rows=rows, dry_run=data["dry_run"]))


class ReviewSettingsView(ServiceView):
    roles = {"GET": ROLE_AUDITOR, "PATCH": ROLE_ADMIN}

    @answers(shapes.ReviewSettingsOut, summary="The org's review settings")
    def get(self, request):
        return Response(reviews.review_settings_get(actor=self.actor))

    @answers(
        shapes.ReviewSettingsOut,
        errors=WRITE_ERRORS,
        request=io.ReviewSettingsIn,
        summary="Change the org's review settings (admin)",
    )
    def patch(self, request):
        data = parse(io.ReviewSettingsIn, request.data)
        return Response(
            reviews.review_settings_to_dict(reviews.review_settings_update(actor=self.actor, **data))
        )


class RunbookListView(ServiceView):
    roles = {"POST": ROLE_ADMIN}

    @answers(io.RunbookList, summary="Runbooks you may run")
    def get(self, request):
        return Response([runbooks.runbook_to_dict(r) for r in runbooks.runbook_list(actor=self.actor)])

    @answers(
        shapes.RunbookOut,
        code=201,
        errors=WRITE_ERRORS,
        request=io.RunbookIn,
        summary="Add a runbook to a connection (admin)",
    )
    def post(self, request):
        data = parse(io.RunbookIn, request.data)
        return Response(
            runbooks.runbook_to_dict(runbooks.runbook_create(actor=self.actor, **data)), status=201
        )


class RunbookDetailView(ServiceView):
    roles = {"*": ROLE_ADMIN}

    @answers(shapes.RunbookOut, summary="One runbook (admin; as config_get)")
    def get(self, request, connection_name, name):
        runbook = runbooks.runbook_get(actor=self.actor, connection_name=connection_name, name=name)
        return Response(runbooks.runbook_to_dict(runbook))

    @answers(
        shapes.RunbookOut, 200, WRITE_ERRORS, request=io.RunbookPatch, summary="Change a runbook (admin)"
    )
    def patch(self, request, connection_name, name):
        data = parse(io.RunbookPatch, request.data)
        if "name" in data:
            data["new_name"] = data.pop("name")
        runbook = runbooks.runbook_update(
            actor=self.actor, connection_name=connection_name, name=name, **data
        )
        return Response(runbooks.runbook_to_dict(runbook))

    @answers(None, code=204, errors=WRITE_ERRORS, summary="Delete a runbook (admin)")
    def delete(self, request, connection_name, name):
        runbooks.runbook_delete(actor=self.actor, connection_name=connection_name, name=name)
        return Response(status=204)


class WebhookListView(ServiceView):
    roles = {"*": ROLE_ADMIN}

    @answers(io.WebhookPage, parameters=_query_params(io.PageOnly), summary="Webhook endpoints")
    def get(self, request):
        return _listed(
            request,
            self,
            io.PageOnly,
            lambda **q: webhooks.webhook_endpoint_list(actor=self.actor, **q),
            webhooks.webhook_endpoint_to_dict,
        )

    @answers(
        shapes.WebhookOut,
        code=201,
        errors=WRITE_ERRORS,
        request=io.WebhookIn,
        summary="Add a webhook endpoint (admin); the secret is write-only",
    )
    def post(self, request):
        data = parse(io.WebhookIn, request.data)
        endpoint = webhooks.webhook_endpoint_create(actor=self.actor, **data)
        return Response(webhooks.webhook_endpoint_to_dict(endpoint), status=201)


class WebhookDetailView(ServiceView):
    roles = {"*": ROLE_ADMIN}

    @answers(shapes.WebhookOut, summary="One webhook endpoint (by id or name)")
    def get(self, request, ref):
        return Response(
            webhooks.webhook_endpoint_to_dict(
                webhooks.webhook_endpoint_get(actor=self.actor, endpoint_id=ref)
            )
        )

    @answers(
        shapes.WebhookOut,
        errors=WRITE_ERRORS,
        request=io.WebhookPatch,
        summary="Change a webhook endpoint (admin); a secret given replaces the old one",
    )
    def patch(self, request, ref):
        data = parse(io.WebhookPatch, request.data)
        secret = data.pop("secret", None)
        endpoint = webhooks.webhook_endpoint_update(actor=self.actor, endpoint_id=ref, secret=secret, **data)
        return Response(webhooks.webhook_endpoint_to_dict(endpoint))

    @answers(None, code=204, errors=WRITE_ERRORS, summary="Delete a webhook endpoint (admin)")
    def delete(self, request, ref):
        webhooks.webhook_endpoint_delete(actor=self.actor, endpoint_id=ref)
        return Response(status=204)


AccessRuleListView, AccessRuleDetailView = _rule_views(
    label="access request rule",
    page=io.AccessRulePage,
    out=shapes.AccessRuleOut,
    create=io.AccessRuleCreate,
    update=io.AccessRuleUpdate,
    service={
        "list": reviews.access_rule_list,
        "get": reviews.access_rule_get,
        "create": reviews.access_rule_create,
        "update": reviews.access_rule_update,
        "delete": reviews.access_rule_delete,
        "dict": reviews.access_rule_to_dict,
    },
)
RunbookRuleListView, RunbookRuleDetailView = _rule_views(
    label="runbook rule",
    page=io.RunbookRulePage,
    out=shapes.RunbookRuleOut,
    create=io.RunbookRuleCreate,
    update=io.RunbookRuleUpdate,
    service={
        "list": runbooks.runbook_rule_list,
        "get": runbooks.runbook_rule_get,
        "create": runbooks.runbook_rule_create,
        "update": runbooks.runbook_rule_update,
        "delete": runbooks.runbook_rule_delete,
        "dict": runbooks.runbook_rule_to_dict,
    },
)


class AccessRequestView(ServiceView):
    capabilities = {"POST": TokenCapability.READ_WRITE}

    @answers(
        shapes.ReviewOut,
        code=201,
        errors=WRITE_ERRORS,
        request=io.AccessRequestIn,
        summary="Ask for just-in-time access to a connection (a review; once approved, exec skips per-command review)",
    )
    def post(self, request):
        data = parse(io.AccessRequestIn, request.data)
        review = reviews.access_request(
            actor=self.actor,
            connection_name=data["connection_name"],
            duration_seconds=data.get("duration_seconds"),
            reason=data["reason"],
        )
        return Response(reviews.review_to_dict(review, actor=self.actor), status=201)


def _schema_view(what: str, shape):
    """GET connections/{name}/<what>/: one listing of the schema, a recorded session."""

    class SchemaView(ServiceView):
        @answers(shape, parameters=_query_params(io.SchemaQuery), summary=f"The {what} of a SQL connection")
        def get(self, request, name):
            query = self.query(io.SchemaQuery)
            items = pipeline.schema_list(actor=self.actor, connection_name=name, what=what, **query)
            return Response({"connection_name": name, "items": items})

    SchemaView.__name__ = SchemaView.__qualname__ = f"Schema{what.title()}View"
    return SchemaView


SchemaDatabasesView = _schema_view("databases", io.DatabasesOut)
SchemaTablesView = _schema_view("tables", io.TablesOut)
SchemaColumnsView = _schema_view("columns", io.ColumnsOut)


class ExplainView(ServiceView):
    capabilities = {"POST": TokenCapability.READ_ONLY}  # a dry run changes nothing

    @answers(
        shapes.ExplainOut,
        request=io.ExplainIn,
        summary="Dry run of exec: guardrails, read-only, masking, review; nothing runs",
    )
    def post(self, request):
        data = parse(io.ExplainIn, request.data)
        return Response(pipeline.exec_explain(actor=self.actor, **data))


class SessionAnalysisView(ServiceView):
    @answers(
        shapes.AnalysisOut,
        parameters=_query_params(io.AnalysisQuery),
        summary="A session's risk analysis, or status pending; timeout_seconds waits for it (as sessions_get_analysis)",
    )
    def get(self, request, session_id):
        timeout = self.query(io.AnalysisQuery)["timeout_seconds"]
        return Response(
            async_to_sync(waits.analysis_wait)(actor=self.actor, session_id=session_id, timeout=timeout)
        )


class GuardrailTestView(ServiceView):
    roles = {"*": ROLE_AUDITOR}
    capabilities = {"POST": TokenCapability.READ_ONLY}  # evaluates text; runs and changes nothing

    @answers(
        shapes.GuardrailTestOut,
        request=io.GuardrailTestIn,
        summary="Evaluate text against a rule or a connection's rules (as guardrails_test); nothing runs",
    )
    def post(self, request):
        data = parse(io.GuardrailTestIn, request.data)
        data["ref"] = data.pop("rule_name", None)
        return Response(rules.guardrail_test(actor=self.actor, **data))


class MaskingPreviewView(ServiceView):
    roles = {"*": ROLE_AUDITOR}
    capabilities = {"POST": TokenCapability.READ_ONLY}

    @answers(
        shapes.MaskingPreviewOut,
        request=io.MaskingPreviewIn,
        summary="Mask a sample with a rule or a draft spec (as datamasking_rules_preview); only masked data",
    )
    def post(self, request):
        data = parse(io.MaskingPreviewIn, request.data)
        data["ref"] = data.pop("rule_name", None)
        return Response(previews.masking_preview(actor=self.actor, **data))


class ConnectionTestView(ServiceView):
    capabilities = {"POST": TokenCapability.READ_ONLY}  # connects, runs nothing

    @answers(
        shapes.ConnectionTestOut,
        request=None,
        summary="Connect to the target and report its version; nothing runs; audited",
    )
    def post(self, request, name):
        return Response(pipeline.connection_test(actor=self.actor, connection_name=name))


class RunbookRunView(ServiceView):
    # Like exec: the pipeline applies a read-only token's ceiling itself.
    capabilities = {"POST": TokenCapability.READ_ONLY}

    @answers(
        shapes.ExecOut,
        request=io.RunbookRunIn,
        summary="Run a runbook with typed parameters (as runbooks_run): the exec envelope",
    )
    def post(self, request, connection_name, name):
        data = parse(io.RunbookRunIn, request.data)
        session = runbooks.runbook_run(
            actor=self.actor,
            connection_name=connection_name,
            name=name,
            parameters=data.get("parameters"),
            idempotency_key=data.get("idempotency_key") or _idempotency_header(request),
        )
        return Response(_exec_answer(session, data.get("timeout_seconds")))


# --- long polls and server facts (the MCP tools' twins) -------------------------------------------


class ServerInfoView(ServiceView):
    @answers(shapes.ServerInfoOut, summary="Gateway facts (as serverinfo_get)")
    def get(self, request):
        return Response(connections.server_info(actor=self.actor))


class SessionWaitView(ServiceView):
    @answers(
        shapes.ExecOut,
        parameters=_query_params(io.WaitQuery),
        summary="Wait until a session ends (as sessions_wait): the exec envelope, or timed_out=true",
    )
    def get(self, request, session_id):
        timeout = self.query(io.WaitQuery)["timeout_seconds"]
        session = records.session_get(actor=self.actor, session_id=session_id, action="view_content")
        session, timed_out = async_to_sync(wait_for_final)(session.pk, timeout)
        return Response({**pipeline.exec_envelope(session), "timed_out": timed_out})


class ReviewWaitView(ServiceView):
    @answers(
        shapes.ReviewOut,
        parameters=_query_params(io.WaitQuery),
        summary="Wait until a review is decided (as reviews_wait), or timed_out=true",
    )
    def get(self, request, review_id):
        timeout = self.query(io.WaitQuery)["timeout_seconds"]
        return Response(
            async_to_sync(waits.review_wait)(actor=self.actor, review_id=review_id, timeout=timeout)
        )


# --- webhook deliveries --------------------------------------------------------------------------


class WebhookDeliveryListView(ServiceView):
    roles = {"*": ROLE_ADMIN}

    @answers(
        io.DeliveryPage,
        parameters=_query_params(io.DeliveryQuery),
        summary="Deliveries of the org's webhooks, newest first (as webhooks_deliveries)",
    )
    def get(self, request):
        query = self.query(io.DeliveryQuery)
        offset = decode_cursor(query.pop("cursor", None))
        items, total = webhooks.webhook_delivery_list(
            actor=self.actor,
            endpoint_id=query.get("webhook_name"),
            status=query.get("status"),
            limit=query["limit"],
            offset=offset,
        )
        return Response(
            page_body(request, [webhooks.webhook_delivery_to_dict(d) for d in items], total, offset)
        )


class WebhookDeliveryRetryView(ServiceView):
    roles = {"*": ROLE_ADMIN}

    @answers(
        io.RetryOut,
        errors=WRITE_ERRORS,
        request=io.RetryIn,
        summary="Send failed or dead deliveries again (as webhooks_deliveries retry); others are ignored",
    )
    def post(self, request):
        data = parse(io.RetryIn, request.data)
        return Response(
            {"retried": webhooks.webhook_delivery_retry(actor=self.actor, delivery_ids=data["delivery_ids"])}
        )


# --- upstream MCP servers: the upstream_* tools' twins -------------------------------------------

UPSTREAM_ERRORS = {**ERRORS, 502: OpenApiResponse(description="The upstream MCP server failed")}


class UpstreamToolsView(ServiceView):
    @answers(
        shapes.UpstreamToolsOut,
        errors=UPSTREAM_ERRORS,
        summary="Tools of an mcp connection you may call, with their pinned schemas (as upstream_tools_list)",
    )
    def get(self, request, name):
        items = async_to_sync(pipeline.upstream_tools_list)(actor=self.actor, connection_name=name)
        return Response({"connection_name": name, "items": items, "total": len(items)})


class UpstreamCallView(ServiceView):
    @answers(
        shapes.UpstreamCallOut,
        errors=UPSTREAM_ERRORS,
        request=io.UpstreamCallIn,
        summary="Call a tool of an mcp connection through the gateway's policy (as upstream_call)",
        description="Tool policy, argument guardrails, the pinned contract, masking and audit apply; a session "
        "per call. A call that needs approval is held up to the connection's approval hold, then answers "
        "`pending_approval` with the `review_id` (wait on reviews/{id}/wait/, then make the same call again).",
    )
    def post(self, request, name):
        data = parse(io.UpstreamCallIn, request.data)
        session = async_to_sync(upstream_hold.tool_call_held)(
            actor=self.actor,
            connection_name=name,
            tool=data["tool"],
            arguments=data["arguments"],
            idempotency_key=data.get("idempotency_key") or _idempotency_header(request),
        )
        return Response(pipeline.tool_envelope(session))


class UpstreamContractsView(ServiceView):
    roles = {"*": ROLE_ADMIN}

    @answers(
        shapes.ContractsOut,
        parameters=_query_params(io.ContractQuery),
        summary="Pinned contracts of an mcp connection, pinned vs observed (as upstream_contracts_list)",
    )
    def get(self, request, name):
        query = self.query(io.ContractQuery)
        rows = upstream.contracts_list(
            actor=self.actor, connection_name=name, status=query.get("status"), kind=query.get("kind")
        )
        items = [upstream.contract_to_dict(r) for r in rows]
        return Response({"items": items, "total": len(items)})


class UpstreamContractsAcceptView(ServiceView):
    roles = {"*": ROLE_ADMIN}

    @answers(
        shapes.ContractsOut,
        errors=WRITE_ERRORS,
        request=io.ContractsAcceptIn,
        summary="Accept the observed contract of changed or added upstream tools (as upstream_contracts_accept)",
    )
    def post(self, request, name):
        data = parse(io.ContractsAcceptIn, request.data)
        rows = upstream.contracts_accept(
            actor=self.actor,
            connection_name=name,
            tools=data["tools"],
            observed_sha256=data.get("observed_sha256"),
            kind=data["kind"],
        )
        items = [upstream.contract_to_dict(r) for r in rows]
        return Response({"items": items, "total": len(items)})
