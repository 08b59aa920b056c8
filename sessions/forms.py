"""Query-string filters of the web pages (session browser, dashboard, downloads).

The forms only parse: they turn `?user=…&status=…&start_date=…` into the keyword arguments of
`sessions.services.session_list` / `session_stats`, which decide visibility. One parser, so the
session browser, its CSV / JSON Lines download links and the dashboard read the same parameters.

Dates: `start_date` and `end_date` take a day (`2026-11-17`, what `<input type="date">` sends) or
an RFC 3339 time (`2026-11-17T09:00:00Z`). A day as `end_date` includes that whole day (UTC).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from django import forms

from sessions.models import RiskLevel, SessionStatus, Verb
from sessions.services import STATS_MAX_DAYS

SURFACES = ("web", "admin", "api", "mcp", "task", "cli", "slack")
FILTER_PARAMS = (
    "user",
    "connection",
    "status",
    "verb",
    "surface",
    "risk_level",
    "review_status",
    "start_date",
    "end_date",
)
PAGE_SIZE = 25
MAX_PAGE = 10_000 // PAGE_SIZE + 1  # the services page up to offset 10 000


def _choices(values):
    return [("", "Any")] + [(v, v.replace("_", " ")) for v in values]


class DayOrTimeField(forms.Field):
    """A day (YYYY-MM-DD) or an RFC 3339 time with a zone; cleans to an aware datetime (UTC for a
    day). `end_of_day` turns a day into the start of the next one, for an inclusive end."""

    default_error_messages = {
        "invalid": "Enter a date (YYYY-MM-DD) or an RFC 3339 time such as 2026-01-01T00:00:00Z.",
        "naive": "An RFC 3339 time needs a time zone, such as a trailing Z.",
    }

    def __init__(self, *, end_of_day: bool = False, **kwargs):
        self.end_of_day = end_of_day
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def to_python(self, value):
        value = str(value or "").strip()
        if not value:
            return None
        if len(value) > 40:
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid")
        try:
            day = date.fromisoformat(value)
        except ValueError:
            day = None
        if day is not None and len(value) == 10:
            start = datetime.combine(day, time.min, tzinfo=UTC)
            return start + timedelta(days=1) if self.end_of_day else start
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid") from None
        if parsed.tzinfo is None:
            raise forms.ValidationError(self.error_messages["naive"], code="naive")
        return parsed


def _rfc3339(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


class SessionFilterForm(forms.Form):
    """The session browser's filters (and its download links'). All optional."""

    user = forms.EmailField(required=False, max_length=254, label="User e-mail")
    connection = forms.CharField(required=False, max_length=63)
    status = forms.ChoiceField(required=False, choices=_choices(SessionStatus.values))
    verb = forms.ChoiceField(required=False, choices=_choices(Verb.values))
    surface = forms.ChoiceField(required=False, choices=_choices(SURFACES))
    risk_level = forms.ChoiceField(required=False, choices=_choices(RiskLevel.values), label="Risk")
    review_status = forms.ChoiceField(
        required=False,
        label="Review",
        choices=_choices(("PENDING", "APPROVED", "REJECTED", "REVOKED", "EXECUTED", "EXPIRED")),
    )
    start_date = DayOrTimeField(label="From")
    end_date = DayOrTimeField(label="To", end_of_day=True)
    page = forms.IntegerField(required=False, min_value=1, max_value=MAX_PAGE)

    def clean(self):
        data = super().clean()
        start, end = data.get("start_date"), data.get("end_date")
        if start and end and start >= end:
            self.add_error("end_date", "The end must come after the start.")
        return data

    def service_filters(self) -> dict:
        """Keyword arguments for `session_list` (and the export services): only the filters given,
        dates as RFC 3339 as the services expect."""
        data = self.cleaned_data
        filters = {
            "user_email": data.get("user") or None,
            "connection": data.get("connection") or None,
            "status": data.get("status") or None,
            "verb": data.get("verb") or None,
            "surface": data.get("surface") or None,
            "risk_level": data.get("risk_level") or None,
            "review_status": data.get("review_status") or None,
            "start_date": _rfc3339(data.get("start_date")),
            "end_date": _rfc3339(data.get("end_date")),
        }
        return {k: v for k, v in filters.items() if v}

    @property
    def page_number(self) -> int:
        return self.cleaned_data.get("page") or 1

    @property
    def is_filtered(self) -> bool:
        return any(self.data.get(name) for name in FILTER_PARAMS)


class DashboardRangeForm(forms.Form):
    """The dashboard's date range: the last 14 days unless the viewer picks one (at most what
    `session_stats` answers for, STATS_MAX_DAYS, which also keeps the per-day chart readable)."""

    MAX_DAYS = STATS_MAX_DAYS
    DEFAULT_DAYS = 14

    start_date = DayOrTimeField(label="From")
    end_date = DayOrTimeField(label="To", end_of_day=True)
    connection = forms.CharField(required=False, max_length=63)

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        today = datetime.now(UTC).date()
        end = data.get("end_date") or datetime.combine(today + timedelta(days=1), time.min, tzinfo=UTC)
        start = data.get("start_date") or end - timedelta(days=self.DEFAULT_DAYS)
        if start >= end:
            self.add_error("end_date", "The end must come after the start.")
        elif end - start > timedelta(days=self.MAX_DAYS):
            self.add_error("start_date", f"Choose a range of at most {self.MAX_DAYS} days.")
        data["range"] = (start, end)
        return data

    def days(self) -> list[date]:
        start, end = self.cleaned_data["range"]
        first, last = start.astimezone(UTC).date(), (end - timedelta(microseconds=1)).astimezone(UTC).date()
        return [first + timedelta(days=i) for i in range((last - first).days + 1)]

    def service_range(self) -> dict:
        start, end = self.cleaned_data["range"]
        filters = {"start_date": _rfc3339(start), "end_date": _rfc3339(end)}
        if self.cleaned_data.get("connection"):
            filters["connection"] = self.cleaned_data["connection"]
        return filters
