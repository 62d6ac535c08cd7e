"""The status poll's shortcut answers exactly as the route does, and declines, having sent
nothing, every request it cannot answer alone (the full stack then answers it)."""

from collections.abc import Callable

import pytest

from app.core.errors import ServiceUnavailable
from app.core.ratelimit import TokenBucketLimiter
from tests.app.helpers import AUTH_A, AUTH_B, assert_problem, upload_model


class Recorder:
    """Wraps the app's shortcut and records what each call returned."""

    def __init__(self, app) -> None:
        self.shortcut = app.poll_shortcut
        self.answers: list[bool] = []
        original: Callable = self.shortcut.answer

        async def answer(scope, receive, send) -> bool:
            answered = await original(scope, receive, send)
            self.answers.append(answered)
            return answered

        self.shortcut.answer = answer


@pytest.fixture
def job_id(client) -> str:
    model_id = upload_model(client).json()["id"]
    resp = client.post("/v1/jobs", headers=AUTH_A, json={"model_id": model_id})
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


@pytest.fixture
def recorder(app) -> Recorder:
    return Recorder(app)


def test_the_shortcut_answers_as_the_route_does(app, client, job_id, recorder):
    shortcut = app.poll_shortcut
    app.poll_shortcut = None
    by_route = client.get(f"/v1/jobs/{job_id}", headers=AUTH_A)
    app.poll_shortcut = shortcut
    by_shortcut = client.get(f"/v1/jobs/{job_id}", headers=AUTH_A)
    assert recorder.answers == [True]
    assert by_shortcut.status_code == by_route.status_code == 200
    assert by_shortcut.content == by_route.content
    assert dict(by_shortcut.headers) == dict(by_route.headers)
    assert by_shortcut.json()["id"] == job_id and by_shortcut.json()["status"] == "queued"


def test_a_key_not_yet_validated_takes_the_full_stack_once(app, client, job_id, recorder):
    app.state.key_cache._entries.clear()
    for _ in range(2):
        assert client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).status_code == 200
    # The first request authenticated against the store and cached the key.
    assert recorder.answers == [False, True]


def test_missing_wrong_or_malformed_keys_get_the_routes_401(client, job_id, recorder):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        resp = client.get(f"/v1/jobs/{job_id}", headers=headers)
        assert_problem(resp, 401, "unauthorized")
        assert resp.headers["www-authenticate"] == "Bearer"
    assert recorder.answers == [False, False, False]


def test_unknown_and_other_tenants_jobs_are_404_charged_once(app, client, job_id, recorder):
    assert client.get(f"/v1/jobs/{job_id}", headers=AUTH_B).status_code == 404  # caches bob
    limiter = app.state.limiter = TokenBucketLimiter(2, clock=lambda: 0.0)
    for path in (f"/v1/jobs/{job_id}", "/v1/jobs/job_00000000000000000000"):
        assert_problem(client.get(path, headers=AUTH_B), 404, "not_found")
    # Declined (and refunded) by the shortcut, charged by the route: two tokens, not four.
    assert recorder.answers[-2:] == [False, False]
    assert limiter.acquire("bob") > 0
    assert_problem(client.get("/v1/jobs/not-an-id", headers=AUTH_A), 404, "not_found")


def test_a_throttled_tenant_gets_the_routes_429(app, client, job_id, recorder):
    client.get(f"/v1/jobs/{job_id}", headers=AUTH_A)
    app.state.limiter = TokenBucketLimiter(2, clock=lambda: 0.0)
    statuses = [client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert recorder.answers[-3:] == [True, True, False]
    resp = client.get(f"/v1/jobs/{job_id}", headers=AUTH_A)
    assert_problem(resp, 429, "rate_limited")
    assert int(resp.headers["retry-after"]) == 30


def test_requests_with_a_body_or_another_method_take_the_full_stack(client, job_id, recorder):
    path = f"/v1/jobs/{job_id}"
    assert client.get(path, headers=AUTH_A).status_code == 200
    assert client.request("GET", path, headers=AUTH_A, content=b"{}").status_code == 200
    assert_problem(client.put(path, headers=AUTH_A), 405, "method_not_allowed")
    assert recorder.answers == [True, False, False]


async def unreachable(tenant: str, job_id: str) -> bytes:
    raise ServiceUnavailable("the job store cannot be reached; retry shortly")


def test_a_failing_read_takes_the_full_stack(app, client, job_id, recorder, monkeypatch):
    monkeypatch.setattr(app.state.status_reader, "read", unreachable)
    assert_problem(client.get(f"/v1/jobs/{job_id}", headers=AUTH_A), 503, "not_ready")
    assert recorder.answers == [False]


def test_answered_polls_are_counted_in_the_metrics(app, client, job_id, recorder):
    registry = app.state.metrics.registry
    labels = {"method": "GET", "route": "/v1/jobs/{job_id}"}
    for _ in range(3):
        client.get(f"/v1/jobs/{job_id}", headers=AUTH_A)
    assert recorder.answers == [True, True, True]
    count = registry.get_sample_value("secateurs_http_requests_total", {**labels, "status": "200"})
    timed = registry.get_sample_value("secateurs_http_request_duration_seconds_count", labels)
    assert count == 3 and timed == 3
