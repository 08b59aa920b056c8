"""Property-based run of the REST API against its own OpenAPI schema (Schemathesis + Hypothesis),
over real HTTP on the live gateway: whatever the schema allows (and what it does not), the API
answers with a status below 500 and, for errors, the one error body.

As an admin, so the admin endpoints are reached too; the data is the test database's cast. A run
makes about 900 requests (measured: positive 528, 400/404/409 for data the services refuse;
negative 352, mostly 400 and 401); none may be a 5xx.
"""

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode

pytestmark = pytest.mark.live

EXAMPLES = {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 8}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_request_gets_a_500(cast, gateway_server, transactional_db, shops, mode):
    schema = schemathesis.openapi.from_url(f"{gateway_server.url}/api/v1/schema/")
    headers = {"Authorization": f"Bearer {cast.alice.token}"}
    failures, calls = [], 0

    for result in schema.get_all_operations():
        operation = result.ok()

        @hypothesis.settings(
            max_examples=EXAMPLES[mode],
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        def run(case):
            nonlocal calls
            response = case.call(base_url=gateway_server.url, headers=headers, timeout=30)
            calls += 1
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}"
                )
            elif response.status_code >= 400:
                body = response.json()
                if set(body) != {"error"} or not body["error"].get("message"):
                    failures.append(f"{case.method} {case.formatted_path}: error body {body}")

        run()
    assert calls > 100
    assert failures == [], "\n".join(failures[:20])
