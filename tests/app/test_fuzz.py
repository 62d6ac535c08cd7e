"""Schema-driven fuzzing: no generated request, valid or not, gets a 5xx or a non-problem
error body."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from tests.app.helpers import AUTH_A

pytestmark = pytest.mark.slow

MODES = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]


def _check(resp, failures: list, label: str) -> None:
    ctype = str(resp.headers.get("content-type", ""))
    if resp.status_code >= 500:
        failures.append((label, resp.status_code, resp.text[:200]))
    elif resp.status_code >= 400 and (
        "application/problem+json" not in ctype or resp.json().get("status") != resp.status_code
    ):
        failures.append((label, resp.status_code, resp.text[:200]))


@pytest.mark.parametrize("mode", MODES, ids=["positive", "negative"])
def test_generated_requests_never_fail_the_server(app, mode):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list = []
    for result in schema.get_all_operations():
        op = result.ok()
        if op.path.endswith("/events"):
            continue  # a stream; its errors are covered in test_events / test_jobs

        @settings(
            max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(case=op.as_strategy(generation_mode=mode))
        def run(case) -> None:
            _check(case.call(headers=AUTH_A), failures, f"{case.method} {case.path}")

        try:
            run()
        except Unsatisfiable:
            continue  # nothing invalid can be generated for this operation (no inputs)
    assert failures == []
