"""Per-tenant limits and a full disk, on an in-process app with the real queue client
(embedded broker) and real settings: rate (429 + Retry-After), concurrent jobs (429
`too_many_jobs`), and uploads refused with 507 when no byte more can be written."""

import contextlib
import resource
from collections.abc import Iterator
from pathlib import Path

from fastapi.testclient import TestClient

from app.main import create_app
from infra.config import Settings
from infra.db.models import Model, utcnow

KEY_A, KEY_B = "sk_limits_alice", "sk_limits_bob"
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}


def _client(tmp_path: Path, **settings) -> Iterator[TestClient]:
    app = create_app(
        Settings(data_dir=tmp_path / "data", api_keys=f"alice:{KEY_A},bob:{KEY_B}", **settings)
    )
    with TestClient(app) as client:
        yield client
    app.state.engine.dispose()


def _problem(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert (body["status"], body["code"]) == (status, code)
    return body


def _add_model(client: TestClient, tenant: str) -> str:
    row = Model(
        id=f"mdl_limits_{tenant}",
        tenant=tenant,
        name="m",
        format="onnx",
        arch=None,
        sha256="0" * 64,
        size_bytes=1,
        storage_key=f"models/mdl_limits_{tenant}",
        input_shape=[1, 3, 8, 8],
        inputs=[{"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"}],
        outputs=[{"name": "y", "shape": [1, 4], "dtype": "float32"}],
        stats={"params": 1, "macs": 1},
        created_at=utcnow(),
    )
    with client.app.state.sessionmaker() as session:
        session.add(row)
        session.commit()
    return row.id


def test_request_rate_per_tenant(tmp_path: Path) -> None:
    for client in _client(tmp_path, rate_limit_per_minute=5):
        codes = [client.get("/v1/jobs", headers=A).status_code for _ in range(5)]
        assert codes == [200] * 5
        resp = client.get("/v1/jobs", headers=A)
        _problem(resp, 429, "rate_limited")
        # 5 per minute: the next token is 12 s away.
        assert 1 <= int(resp.headers["Retry-After"]) <= 12
        # Another tenant has a bucket of its own.
        assert client.get("/v1/jobs", headers=B).status_code == 200
        assert client.get("/readyz").status_code == 200


def test_concurrent_jobs_per_tenant(tmp_path: Path) -> None:
    for client in _client(tmp_path, max_concurrent_jobs_per_tenant=2):
        model_a, model_b = _add_model(client, "alice"), _add_model(client, "bob")
        ids = []
        for _ in range(2):
            resp = client.post("/v1/jobs", json={"model_id": model_a}, headers=A)
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["id"])
        resp = client.post("/v1/jobs", json={"model_id": model_a}, headers=A)
        body = _problem(resp, 429, "too_many_jobs")
        assert "limit 2" in body["detail"] and int(resp.headers["Retry-After"]) > 0
        assert client.post("/v1/jobs", json={"model_id": model_b}, headers=B).status_code == 202
        # A cancelled job no longer counts.
        assert client.post(f"/v1/jobs/{ids[0]}/cancel", headers=A).status_code == 202
        assert client.post("/v1/jobs", json={"model_id": model_a}, headers=A).status_code == 202
        assert client.get("/readyz").status_code == 200


@contextlib.contextmanager
def small_file_limit() -> Iterator[int]:
    """Cap the size of any file this process writes (Python ignores SIGXFSZ, so a write
    past it fails with EFBIG, as it would with ENOSPC on a full disk)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    limit = 256 << 10
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_disk_full_during_upload(tmp_path: Path) -> None:
    for client in _client(tmp_path):
        tmp = tmp_path / "data" / "tmp"
        with small_file_limit():
            resp = client.post("/v1/models", headers=A, files={"file": ("m.onnx", bytes(1 << 20))})
        body = _problem(resp, 507, "insufficient_storage")
        assert "retry later" in body["detail"]
        assert list(tmp.iterdir()) == []
        assert client.get("/v1/models", headers=A).json()["items"] == []
        assert client.get("/readyz").status_code == 200
