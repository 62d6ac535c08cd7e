"""Operations routes, OpenAPI, and what importing the app pulls in."""

import subprocess
import sys

from fastapi.testclient import TestClient

from app.main import create_app
from app.queue import JobQueue
from infra.config import Settings
from tests.app.helpers import AUTH_A, assert_problem, upload_model


def test_healthz(client):
    resp = client.get("/healthz")
    assert resp.status_code == 200 and resp.json() == {"status": "ok"}


def test_readyz_ok_with_the_embedded_broker(settings):
    app = create_app(settings)  # the real queue client on the SQLite broker
    with TestClient(app) as client:
        resp = client.get("/readyz")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"status": "ready"}


def test_readyz_503_when_the_broker_is_unreachable(settings):
    settings.broker_url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    app = create_app(settings)
    app.state.queue = JobQueue(settings.resolved_broker_url, connect_timeout_s=1.0)
    with TestClient(app) as client:
        resp = client.get("/readyz")
    body = assert_problem(resp, 503, "not_ready")
    assert body["checks"] == {"broker": body["checks"]["broker"]}
    assert "broker" in body["detail"]


def test_real_queue_client_enqueue_reports_failure_without_raising():
    queue = JobQueue("redis://127.0.0.1:1/0", connect_timeout_s=0.5)
    assert queue.enqueue("job_x") is False


def test_metrics_count_requests_jobs_and_upload_bytes(client, app):
    # Metrics cover every tenant: they answer only to the operator's key.
    app.state.settings.metrics_key = "operator-key"
    model_id = upload_model(client, b"m" * 1234).json()["id"]
    client.post("/v1/jobs", headers=AUTH_A, json={"model_id": model_id})
    client.get(f"/v1/models/{model_id}", headers=AUTH_A)
    client.get("/v1/models/mdl_missing", headers=AUTH_A)
    resp = client.get("/metrics", headers={"Authorization": "Bearer operator-key"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    assert 'secateurs_jobs{status="queued"} 1.0' in text
    assert 'secateurs_jobs{status="running"} 0.0' in text
    assert 'secateurs_upload_bytes_total{kind="model"} 1234.0' in text
    assert (
        'secateurs_http_requests_total{method="GET",route="/v1/models/{model_id}",status="200"} 1.0'
    ) in text
    assert (
        'secateurs_http_requests_total{method="GET",route="/v1/models/{model_id}",status="404"} 1.0'
    ) in text
    assert (
        'secateurs_http_request_duration_seconds_count{method="POST",route="/v1/jobs"} 1.0' in text
    )


def test_openapi_documents_every_route_with_bearer_and_problems(client):
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    v1 = {path: ops for path, ops in spec["paths"].items() if path.startswith("/v1/")}
    assert set(v1) == {
        "/v1/models",
        "/v1/models/{model_id}",
        "/v1/models/{model_id}/file",
        "/v1/models/{model_id}/prunability",
        "/v1/datasets",
        "/v1/datasets/{dataset_id}",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/report",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/artifacts",
        "/v1/jobs/{job_id}/artifacts/{name}",
        "/v1/jobs/{job_id}/deliveries",
        "/v1/webhooks/secret",
    }
    for path, ops in v1.items():
        for method, op in ops.items():
            assert op["security"] == [{"HTTPBearer": []}], (method, path)
            assert "application/problem+json" in op["responses"]["401"]["content"]
            assert "404" in op["responses"]
    upload = spec["paths"]["/v1/models"]["post"]
    form = upload["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["file"]["format"] == "binary"
    assert "413" in upload["responses"]
    body_ref = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    job_create = spec["components"]["schemas"][body_ref["schema"]["$ref"].split("/")[-1]]
    assert {"model_id", "dataset_id", "prune", "finetune", "export", "benchmark"} <= set(
        job_create["properties"]
    )
    assert job_create["additionalProperties"] is False
    assert client.get("/docs").status_code == 200


def test_importing_the_app_does_not_import_torch():
    code = (
        "import sys, app.main; from app.main import create_app; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_settings_keys_are_stored_hashed(app):
    from sqlalchemy import select

    from app.core.auth import hash_key
    from infra.db.models import ApiKey
    from tests.app.helpers import KEY_A

    with app.state.sessionmaker() as session:
        rows = session.scalars(select(ApiKey)).all()
    assert {r.tenant for r in rows} == {"alice", "bob"}
    assert hash_key(KEY_A) in {r.key_hash for r in rows}
    assert all(KEY_A not in r.key_hash for r in rows)
    # Building the app again on the same store does not duplicate the keys.
    create_app(Settings(data_dir=app.state.settings.data_dir, api_keys=app.state.settings.api_keys))
    with app.state.sessionmaker() as session:
        assert len(session.scalars(select(ApiKey)).all()) == 2
