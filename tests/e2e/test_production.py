"""End to end on the production shape: a real uvicorn process and a real Celery worker
process sharing Redis (broker), PostgreSQL (job store) and S3 (a moto server)."""

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import S3Server, Service, running_service
from tests.e2e.helpers import (
    build_npz,
    build_onnx,
    check_onnx_drop_in,
    core_scenario,
    follow_events,
    job_body,
    sha256,
    submit,
    upload,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, postgres_url: str, s3_server: S3Server
) -> Iterator[Service]:
    with running_service(
        tmp_path_factory.mktemp("production") / "data",
        broker_url=redis_url,
        database_url=postgres_url,
        s3_bucket=s3_server.bucket,
        s3_endpoint_url=s3_server.endpoint_url,
        s3_access_key_id="test",
        s3_secret_access_key="test",
        s3_prefix="e2e",
    ) as svc:
        yield svc


@pytest.fixture(scope="module")
def uploads(service: Service, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    work = tmp_path_factory.mktemp("uploads")
    with service.client() as client:
        return {
            "model": upload(client, "models", build_onnx(work / "m.onnx")),
            "dataset": upload(client, "datasets", build_npz(work / "d.npz", n=64)),
        }


@pytest.fixture(autouse=True)
def _logs_on_failure(service: Service, request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(service.logs())


def test_core_scenario_with_artifacts_in_s3(
    service: Service, s3_server: S3Server, tmp_path: Path
) -> None:
    with service.client() as client:
        result = core_scenario(client, tmp_path)
    job_id = result["job"]["id"]
    s3 = s3_server.client()
    listed = s3.list_objects_v2(Bucket=s3_server.bucket, Prefix=f"e2e/jobs/{job_id}/")
    keys = {obj["Key"].rsplit("/", 1)[1] for obj in listed.get("Contents", [])}
    assert {"model.onnx", "report.json"} <= keys
    body = s3.get_object(Bucket=s3_server.bucket, Key=f"e2e/jobs/{job_id}/model.onnx")
    assert sha256(body["Body"].read()) == result["artifacts"]["model.onnx"]["sha256"]
    # The worker wrote nothing but scratch files locally, and cleaned those.
    assert not any((service.log_dir / "work").glob(f"{job_id}*"))


@pytest.fixture(scope="module")
def data_free_job(service: Service, uploads: dict[str, dict]) -> tuple[str, list[dict]]:
    """A job without a dataset, followed to its end: (job id, its events)."""
    with service.client() as client:
        resp = submit(client, job_body(uploads["model"]["id"]))
        assert resp.status_code == 202, resp.text
        return resp.json()["id"], follow_events(client, resp.json()["id"])


def test_data_free_job(service: Service, data_free_job: tuple[str, list[dict]]) -> None:
    job_id, events = data_free_job
    assert events[-1]["data"]["status"] == "succeeded", events[-1]
    stages = {e["data"]["stage"] for e in events if e.get("event") == "progress"}
    assert "finetuning" not in stages and "pruning" in stages
    with service.client() as client:
        check_onnx_drop_in(client.get(f"/v1/jobs/{job_id}/artifacts/model.onnx").content)


def test_cancel_while_finetuning_then_worker_takes_the_next_job(
    service: Service, uploads: dict[str, dict]
) -> None:
    with service.client() as client:
        body = job_body(uploads["model"]["id"], uploads["dataset"]["id"], epochs=1000, batch_size=4)
        job_id = submit(client, body).json()["id"]
        wait_for(client, job_id, lambda j: j["stage"] == "finetuning", timeout_s=180)
        asked = time.monotonic()
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
        job = wait_for(client, job_id, lambda j: j["status"] != "running", timeout_s=30)
        took = time.monotonic() - asked
        assert job["status"] == "cancelled" and job["error"]["code"] == "cancelled"
        assert took < 6.0, f"cancel took {took:.1f} s"
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409
        assert client.get(f"/v1/jobs/{job_id}/artifacts").json() == []

        nxt = submit(client, job_body(uploads["model"]["id"])).json()["id"]
        done = wait_for(
            client, nxt, lambda j: j["status"] in ("succeeded", "failed"), timeout_s=180
        )
        assert done["status"] == "succeeded", done


def test_same_idempotency_key_gives_one_job(service: Service, uploads: dict[str, dict]) -> None:
    body = job_body(uploads["model"]["id"])
    with service.client() as client:
        first = submit(client, body, idempotency_key="e2e-idem-1")
        second = submit(client, body, idempotency_key="e2e-idem-1")
        assert (first.status_code, second.status_code) == (202, 200)
        assert first.json()["id"] == second.json()["id"]
        ids = [j["id"] for j in client.get("/v1/jobs", params={"limit": 200}).json()["items"]]
        assert ids.count(first.json()["id"]) == 1
        # Free the worker for the next test.
        client.post(f"/v1/jobs/{first.json()['id']}/cancel")
        wait_for(
            client,
            first.json()["id"],
            lambda j: j["status"] in ("succeeded", "failed", "cancelled"),
            timeout_s=60,
        )


def test_other_tenant_gets_404_everywhere(
    service: Service, uploads: dict[str, dict], data_free_job: tuple[str, list[dict]]
) -> None:
    model_id, dataset_id = uploads["model"]["id"], uploads["dataset"]["id"]
    job_id = data_free_job[0]
    with service.client(service.key_b) as bob:
        probes = [
            ("GET", f"/v1/models/{model_id}"),
            ("GET", f"/v1/models/{model_id}/file"),
            ("DELETE", f"/v1/models/{model_id}"),
            ("GET", f"/v1/datasets/{dataset_id}"),
            ("DELETE", f"/v1/datasets/{dataset_id}"),
            ("GET", f"/v1/jobs/{job_id}"),
            ("GET", f"/v1/jobs/{job_id}/report"),
            ("GET", f"/v1/jobs/{job_id}/artifacts"),
            ("GET", f"/v1/jobs/{job_id}/artifacts/model.onnx"),
            ("GET", f"/v1/jobs/{job_id}/events"),
            ("POST", f"/v1/jobs/{job_id}/cancel"),
        ]
        for method, path in probes:
            resp = bob.request(method, path)
            assert resp.status_code == 404, (method, path, resp.status_code)
            assert resp.headers["content-type"].startswith("application/problem+json")
        for body in ({"model_id": model_id}, {"model_id": model_id, "dataset_id": dataset_id}):
            assert submit(bob, body).status_code == 404
        assert bob.get("/v1/jobs").json()["items"] == []
        assert bob.get("/v1/models").json()["items"] == []
    with service.client() as alice:  # still there for its owner
        assert alice.get(f"/v1/models/{model_id}").status_code == 200
