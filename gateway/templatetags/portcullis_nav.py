"""The top bar's live bits: how many reviews wait for the viewer (the badge on "Reviews")."""

from django import template
from django.utils.html import format_html

from gateway.web import web_actor
from governance.errors import PortcullisError
from reviews.services import review_list

register = template.Library()


@register.simple_tag(takes_context=True)
def inbox_badge(context):
    """A count badge on "Reviews": the reviews waiting for the viewer's decision, asked through
    `review_list(waiting_for_me=True)` exactly as the inbox asks. Nothing when there are none."""
    request = context.get("request")
    if request is None or not request.user.is_authenticated:
        return ""

    try:
        _, count = review_list(actor=web_actor(request), waiting_for_me=True, limit=1)
    except PortcullisError:
        return ""
    if not count:
        return ""
    label = f"{count} review{'s' if count != 1 else ''} waiting for you"
    return format_html(
        '<span class="nav-count" id="nav-inbox-count" title="{}" aria-label="{}">{}</span>',
        label,
        label,
        count if count < 100 else "99+",
    )
