"""Auth, rate limiting and the problem+json shape of every kind of error."""

from fastapi.testclient import TestClient

from app.core.auth import create_api_key
from app.core.ratelimit import TokenBucketLimiter
from tests.app.helpers import AUTH_A, assert_problem


def test_v1_routes_need_a_valid_key(client):
    for method, path in (
        ("GET", "/v1/models"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs/x"),
        ("DELETE", "/v1/datasets/x"),
        ("POST", "/v1/models"),
    ):
        resp = client.request(method, path)
        assert_problem(resp, 401, "unauthorized")
        assert resp.headers["www-authenticate"] == "Bearer"
        resp = client.request(method, path, headers={"Authorization": "Bearer wrong"})
        assert_problem(resp, 401, "unauthorized")
    assert_problem(
        client.get("/v1/models", headers={"Authorization": "Basic abc"}), 401, "unauthorized"
    )


def test_keys_created_in_the_store_work(client, app):
    with app.state.sessionmaker() as session:
        key = create_api_key(session, "carol")
        session.commit()
    assert key.startswith("sk_") and len(key) > 40
    resp = client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 200 and resp.json() == {"items": [], "next_cursor": None}


def test_unknown_route_and_wrong_method(client):
    assert_problem(client.get("/v1/nothing", headers=AUTH_A), 404, "not_found")
    assert_problem(client.put("/v1/models", headers=AUTH_A), 405, "method_not_allowed")


def test_unexpected_errors_are_500_without_a_trace(app):
    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internal detail")

    with TestClient(app, raise_server_exceptions=False) as client:
        resp = client.get("/boom")
    body = assert_problem(resp, 500, "internal_error")
    assert "secret" not in resp.text and body["detail"] == "internal server error"


def test_rate_limit_is_429_with_retry_after(client, app):
    app.state.limiter = TokenBucketLimiter(3)
    for _ in range(3):
        assert client.get("/v1/models", headers=AUTH_A).status_code == 200
    resp = client.get("/v1/models", headers=AUTH_A)
    assert_problem(resp, 429, "rate_limited")
    assert int(resp.headers["retry-after"]) == 20  # 3 per minute: one token every 20 s
    # Per tenant: bob is not affected by alice's burst.
    from tests.app.helpers import AUTH_B

    assert client.get("/v1/models", headers=AUTH_B).status_code == 200


def test_token_bucket_refills_over_time():
    now = [100.0]
    limiter = TokenBucketLimiter(60, clock=lambda: now[0])  # one per second, burst 60
    assert all(limiter.acquire("t") == 0.0 for _ in range(60))
    wait = limiter.acquire("t")
    assert 0.99 < wait <= 1.0
    now[0] += 0.5
    assert 0.49 < limiter.acquire("t") <= 0.5
    now[0] += 0.5
    assert limiter.acquire("t") == 0.0
    assert limiter.acquire("t") > 0.0
    now[0] += 3600  # never more than the burst
    assert sum(limiter.acquire("t") == 0.0 for _ in range(100)) == 60


def test_oversized_json_bodies_are_413(client):
    big = {"model_id": "mdl_x", "prune": {"ignored_layers": ["layer" * 20] * 12_000}}
    assert_problem(client.post("/v1/jobs", headers=AUTH_A, json=big), 413, "payload_too_large")

    def chunks():
        yield b'{"model_id": "mdl_x", "prune": {"ignored_layers": ['
        for _ in range(40_000):  # about 1.2 MiB
            yield b'"layer1.0.conv1.weight.abcdef",'
        yield b'"x"]}}'

    resp = client.post(
        "/v1/jobs", content=chunks(), headers={**AUTH_A, "Content-Type": "application/json"}
    )
    assert_problem(resp, 413, "payload_too_large")
