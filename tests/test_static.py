"""The admin's static files are served by the gateway itself under daphne, without DEBUG."""

import httpx2
import pytest

pytestmark = pytest.mark.live


def test_static_files_are_served_without_debug(gateway_server):
    response = httpx2.get(f"{gateway_server.url}/static/admin/css/base.css", timeout=10)
    assert response.status_code == 200 and "text/css" in response.headers["content-type"]
    assert httpx2.get(f"{gateway_server.url}/static/nothing-here.css", timeout=10).status_code == 404
