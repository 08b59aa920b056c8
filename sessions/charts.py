"""Charts for the dashboard, drawn server-side as inline SVG: no JavaScript, no CDN, and they print.

Pure functions from counts (what `session_stats` returns) to markup. Every label that comes from
data (e-mails, connection names) is escaped by `format_html`/`escape`; numbers are formatted here.
Each bar carries a `<title>`, so hovering shows the exact count.
"""

from __future__ import annotations

import math
from datetime import date

from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

STATUS_COLORS = {
    "done": "#22c55e",
    "blocked": "#ef4444",
    "failed": "#f97316",
    "pending_review": "#eab308",
    "running": "#3b82f6",
    "open": "#93c5fd",
    "cancelled": "#94a3b8",
}
STATUS_ORDER = list(STATUS_COLORS)
RISK_COLORS = {
    "low": "#22c55e",
    "medium": "#eab308",
    "high": "#f97316",
    "critical": "#b91c1c",
    None: "#cbd5e1",
}
RISK_ORDER = ["critical", "high", "medium", "low", None]
AXIS, GRID, INK, MUTED = "#cbd5e1", "#eef2f7", "#1b2333", "#5d6b82"
FONT = 'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif"'


# Advance widths in em, at or above those of the common system sans-serifs (Helvetica/Arial, and
# DejaVu Sans, the widest, which headless Linux browsers use), to size the label column to the
# labels instead of cutting them at a character count: the names are what a per-user chart is for.
_NARROW = set("iljtfrI.,:;'!|()[] ")
_WIDE = set("mwMW@%")
LABEL_MAX_PX = 300  # longer labels are shortened to fit (the full name is in the hover title)


def text_width(text: str, size: float) -> float:
    """An upper estimate of the rendered width of `text` at font-size `size`, in px."""
    em = 0.0
    for ch in text:
        if ch in _NARROW:
            em += 0.4
        elif ch in _WIDE:
            em += 1.0
        elif ch.isupper():
            em += 0.76
        elif ch.isdigit():
            em += 0.64
        elif ord(ch) > 0x2E7F:  # CJK and other full-width scripts
            em += 1.0
        else:
            em += 0.63
    return em * size


def fit_label(text: str, size: float, max_px: float) -> str:
    """`text`, or its longest prefix plus "…" that fits in `max_px`."""
    if text_width(text, size) <= max_px:
        return text
    while text and text_width(text + "…", size) > max_px:
        text = text[:-1]
    return text + "…"


def nice_max(value: int) -> tuple[int, int]:
    """A round axis maximum at or above `value` and its tick step (1, 2, 5 x 10^n)."""
    if value <= 0:
        return 4, 1
    raw_step = value / 4
    magnitude = 10 ** math.floor(math.log10(raw_step))
    for factor in (1, 2, 5, 10):
        step = factor * magnitude
        if step >= raw_step:
            break
    step = max(1, int(step))
    return step * math.ceil(value / step), step


def _svg(width: int, height: int, body: list[str], label: str, css: str = "") -> SafeString:
    """The SVG element; `css` classes set a minimum width on phones (the card scrolls instead)."""
    return mark_safe(
        f'<svg class="{css}" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}" {FONT} '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(body)}</svg>'
    )


def legend(items: list[tuple[str, str]]) -> SafeString:
    """An HTML legend: [(label, colour)]."""
    return mark_safe(
        '<div class="legend">'
        + "".join(format_html('<span><i style="background:{}"></i>{}</span>', c, label) for label, c in items)
        + "</div>"
    )


def stacked_columns(
    days: list[date], counts: dict[date, dict[str, int]], *, order=STATUS_ORDER, colors=STATUS_COLORS
) -> SafeString:
    """Sessions per day, one column per day stacked by status. Days without sessions stay empty."""
    width, height = 760, 280
    left, right, top, bottom = 44, 12, 14, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((sum(c.values()) for c in counts.values()), default=0)
    ymax, step = nice_max(peak)
    body: list[str] = []
    for tick in range(0, ymax + 1, step):
        y = top + plot_h - plot_h * tick / ymax
        body.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
        body.append(
            f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="{MUTED}">{tick}</text>'
        )
    n = max(1, len(days))
    slot = plot_w / n
    bar = max(2.0, min(36.0, slot * 0.68))
    label_every = max(1, math.ceil(n / 12))
    for i, day in enumerate(days):
        x = left + slot * i + (slot - bar) / 2
        y = top + plot_h
        day_counts = counts.get(day, {})
        for status in order:
            value = day_counts.get(status, 0)
            if not value:
                continue
            h = plot_h * value / ymax
            y -= h
            body.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{colors[status]}">'
                f"<title>{day.isoformat()}: {value} {escape(status.replace('_', ' '))}</title></rect>"
            )
        if i % label_every == 0:
            cx = left + slot * i + slot / 2
            body.append(
                f'<text x="{cx:.1f}" y="{height - 12}" text-anchor="middle" font-size="11" fill="{MUTED}">'
                f"{day.strftime('%b %d').replace(' 0', ' ')}</text>"
            )
    body.append(
        f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="{AXIS}"/>'
    )
    return _svg(width, height, body, "Sessions per day by status", "wide")


def stacked_bars(
    rows: list[tuple[str, dict[str, int]]], *, order=STATUS_ORDER, colors=STATUS_COLORS, label="bars"
) -> SafeString:
    """Horizontal bars, one per row label, stacked by key, with the total at the end."""
    if not rows:
        return mark_safe('<p class="empty">No sessions in this range.</p>')
    row_h, gap, font, plot_w = 22, 10, 13, 320
    widest = max(text_width(name, font) for name, _ in rows)
    label_w = int(min(LABEL_MAX_PX, max(60.0, widest)) + 14)
    width = label_w + plot_w + 56  # room for the total after the longest bar
    top = 6
    height = top + len(rows) * (row_h + gap)
    peak = max(sum(v.values()) for _, v in rows) or 1
    body: list[str] = []
    for i, (name, values) in enumerate(rows):
        y = top + i * (row_h + gap)
        short = fit_label(name, font, LABEL_MAX_PX)
        body.append(
            format_html(
                '<text x="{}" y="{}" text-anchor="end" font-size="{}" fill="{}"><title>{}</title>{}</text>',
                label_w - 10,
                f"{y + row_h / 2 + 4:.1f}",
                font,
                INK,
                name,
                short,
            )
        )
        body.append(f'<rect x="{label_w}" y="{y}" width="{plot_w}" height="{row_h}" rx="4" fill="#f1f5f9"/>')
        x = float(label_w)
        for key in order:
            value = values.get(key, 0)
            if not value:
                continue
            w = plot_w * value / peak
            body.append(
                f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row_h}" fill="{colors[key]}">'
                f"<title>{escape(name)}: {value} {escape(str(key).replace('_', ' '))}</title></rect>"
            )
            x += w
        total = sum(values.values())
        body.append(
            f'<text x="{x + 8:.1f}" y="{y + row_h / 2 + 4:.1f}" font-size="13" font-weight="600" '
            f'fill="{INK}">{total}</text>'
        )
    return _svg(width, height, body, label, "bars")


def donut(parts: list[tuple[str, int, str]], *, center_label: str = "sessions") -> SafeString:
    """A ring of shares: [(label, count, colour)], the total in the middle."""
    total = sum(count for _, count, _ in parts)
    size, r, stroke = 220, 78, 30
    c = size / 2
    body = [f'<circle cx="{c}" cy="{c}" r="{r}" fill="none" stroke="#f1f5f9" stroke-width="{stroke}"/>']
    circumference = 2 * math.pi * r
    offset = 0.0
    for name, count, color in parts:
        if not count:
            continue
        length = circumference * count / total
        body.append(
            f'<circle cx="{c}" cy="{c}" r="{r}" fill="none" stroke="{color}" stroke-width="{stroke}" '
            f'stroke-dasharray="{length:.2f} {circumference - length:.2f}" stroke-dashoffset="{-offset:.2f}" '
            f'transform="rotate(-90 {c} {c})"><title>{escape(name)}: {count} '
            f"({100 * count / total:.0f}%)</title></circle>"
        )
        offset += length
    body.append(
        f'<text x="{c}" y="{c + 4}" text-anchor="middle" font-size="30" font-weight="700" fill="{INK}">{total}</text>'
    )
    body.append(
        f'<text x="{c}" y="{c + 26}" text-anchor="middle" font-size="12" fill="{MUTED}">{escape(center_label)}</text>'
    )
    return _svg(size, size, body, "Risk distribution")
