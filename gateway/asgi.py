"""The ASGI application: Channels routes /api/mcp to the MCP app and everything else to Django
(including the OAuth metadata documents, which follow the settings in the database). Served by
daphne, or uvicorn (`make run SERVER=uvicorn`; the starter speaks lifespan): docs/operations.md,
"The ASGI server"."""

import gc
import os

from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")
django_asgi_app = get_asgi_application()  # first: sets up Django before models are imported

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

from mcpserver.asgi import MCPStarter  # noqa: E402
from mcpserver.server import build  # noqa: E402

mcp_server, mcp_http_app = build()
mcp_app = MCPStarter(mcp_http_app, mcp_server.session_manager)
mcp_app.install_daphne_shutdown_hook()

# /api/mcp/c/<connection>: an upstream MCP server's tools under their own names (mcpserver.proxy).
from mcpserver.proxy import build as build_proxy  # noqa: E402

proxy_server, proxy_http_app = build_proxy()
proxy_app = MCPStarter(proxy_http_app, proxy_server.session_manager)
proxy_app.install_daphne_shutdown_hook()

# /api/mcp/v/<name>: several upstream connections' tools under one URL (mcpserver.virtual).
from mcpserver.virtual import build as build_virtual  # noqa: E402

virtual_server, virtual_http_app = build_virtual()
virtual_app = MCPStarter(virtual_http_app, virtual_server.session_manager)
virtual_app.install_daphne_shutdown_hook()

from gateway.observe import RequestObserver  # noqa: E402

router = ProtocolTypeRouter(
    {
        # Outermost: request id, log context, request metrics, MCP token limit (gateway/observe.py).
        "http": RequestObserver(
            URLRouter(
                [
                    re_path(r"^api/mcp/c/[^/]+/?$", proxy_app),
                    re_path(r"^api/mcp/v/[^/]+/?$", virtual_app),
                    re_path(r"^api/mcp/?$", mcp_app),
                    re_path(r"", django_asgi_app),
                ]
            )
        ),
        "lifespan": mcp_app,
    }
)


if settings.GC_FREEZE:  # last: everything the process loaded up to here is kept for its life
    gc.collect()
    gc.freeze()


async def application(scope, receive, send):
    """The router, with the MCP starter (and so this process's maintenance sweep) started on the
    first request of any kind: daphne sends no lifespan event."""
    if scope["type"] == "http":
        await mcp_app.ensure_started()
    return await router(scope, receive, send)
