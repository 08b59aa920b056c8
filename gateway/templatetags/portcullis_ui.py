"""Small display helpers shared by every web page: status and risk badges, durations, bytes."""

from django import template
from django.utils.html import format_html

register = template.Library()

# status -> badge tone (colours live in base.html's CSS)
STATUS_TONES = {
    "done": "ok",
    "blocked": "bad",
    "failed": "hot",
    "cancelled": "",
    "pending_review": "warn",
    "running": "info",
    "open": "info",
    # reviews use the same badges
    "pending": "warn",
    "approved": "ok",
    "rejected": "bad",
    "revoked": "",
    "expired": "",
    "executed": "ok",
    "processing": "info",
}
RISK_TONES = {"low": "ok", "medium": "warn", "high": "hot", "critical": "crit"}


@register.simple_tag
def status_badge(status):
    """A coloured pill for a session (or review) status."""
    status = str(status or "")
    return format_html(
        '<span class="badge {}" data-status="{}">{}</span>',
        STATUS_TONES.get(status.lower(), ""),
        status,
        status.replace("_", " ") or "—",
    )


@register.simple_tag
def risk_badge(level):
    """A coloured pill for an analysis risk level; "pending" while there is none."""
    if not level:
        return format_html('<span class="badge plain">{}</span>', "pending")
    return format_html(
        '<span class="badge {}" data-risk="{}">{}</span>', RISK_TONES.get(level, ""), level, level
    )


@register.filter
def duration_ms(value):
    """87 -> "87 ms", 1234 -> "1.23 s", 75_000 -> "1 min 15 s", 5_400_000 -> "1 h 30 min", days too."""
    if value is None or value == "":
        return "—"
    value = int(value)
    if value < 1000:
        return f"{value} ms"
    if value < 60_000:
        return f"{value / 1000:.2f} s"
    seconds = value // 1000
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


@register.filter
def human_bytes(value):
    """2048 -> "2.0 KiB"."""
    if value is None:
        return "—"
    value = float(value)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


@register.filter
def get_item(mapping, key):
    """mapping[str(key)] in a template, None when absent."""
    return (mapping or {}).get(str(key))
