"""CSV / JSON Lines downloads of sessions and audit events: thin views over `sessions.export`.

Query parameters are the filters of `sessions_list` / `audit_events_list`; unknown ones are
refused (a typo must not silently export everything). Errors are rendered by `gateway.web.web_view`
like on every page (400 bad filter, 403 not allowed). The body is streamed: under ASGI (daphne)
through an async iterator that pulls one chunk at a time from the export on a worker thread, so
the response never holds more than a chunk.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import StreamingHttpResponse
from django.urls import path
from django.views.decorators.http import require_GET

from gateway.web import web_actor, web_view
from governance.errors import InvalidInput
from sessions.export import audit_events_export, sessions_export

SESSION_FILTERS = (
    "user_email",
    "connection",
    "status",
    "verb",
    "surface",
    "risk_level",
    "review_status",
    "start_date",
    "end_date",
)
AUDIT_FILTERS = ("actor_email", "action", "surface", "outcome", "start_date", "end_date")


def _stream(request, chunks):
    if not isinstance(request, ASGIRequest):
        return chunks
    done = object()

    def pull():
        return next(chunks, done)

    async def agen():
        while True:
            chunk = await sync_to_async(pull, thread_sensitive=True)()
            if chunk is done:
                return
            yield chunk

    return agen()


def _download(request, export, names: tuple[str, ...], format: str):
    unknown = sorted(set(request.GET) - set(names))
    if unknown:
        raise InvalidInput(f"unknown filter {unknown[0]!r}; use any of: {', '.join(names)}")
    filters = {name: request.GET.get(name) or None for name in names}
    started = export(actor=web_actor(request), format=format, **filters)  # errors: web_view renders them
    response = StreamingHttpResponse(_stream(request, started.chunks), content_type=started.content_type)
    response["Content-Disposition"] = f'attachment; filename="{started.filename}"'
    response["Cache-Control"] = "no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response


@require_GET
@web_view
def sessions_download(request, format: str):
    return _download(request, sessions_export, SESSION_FILTERS, format)


@require_GET
@web_view
def audit_download(request, format: str):
    return _download(request, audit_events_export, AUDIT_FILTERS, format)


urlpatterns = [
    path("sessions/export.csv", sessions_download, {"format": "csv"}, name="sessions-export-csv"),
    path("sessions/export.jsonl", sessions_download, {"format": "jsonl"}, name="sessions-export-jsonl"),
    path("audit/export.csv", audit_download, {"format": "csv"}, name="audit-export-csv"),
    path("audit/export.jsonl", audit_download, {"format": "jsonl"}, name="audit-export-jsonl"),
]
