"""`/v1/jobs`: submission (validation, idempotency, caps, enqueue), listing, cancel, report."""

import json

import pytest
from sqlalchemy import select

from contract import DatasetInfo, JobSpec
from infra.db import jobstate
from infra.db.models import Job, JobEvent
from tests.app.helpers import AUTH_A, AUTH_B, assert_problem, upload_dataset, upload_model


@pytest.fixture
def model_id(client):
    return upload_model(client).json()["id"]


def test_create_job_stores_defaulted_spec_and_enqueues(client, app, model_id):
    body = {"model_id": model_id, "prune": {"target": {"macs_reduction": 0.6}}}
    resp = client.post("/v1/jobs", headers=AUTH_A, json=body)
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert resp.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["id"].startswith("job_")
    assert (job["status"], job["stage"], job["progress"], job["attempts"]) == (
        "queued",
        None,
        0.0,
        0,
    )
    assert job["error"] is None and job["started_at"] is None
    assert job["created_at"].endswith("Z")
    expected = JobSpec(prune={"target": {"macs_reduction": 0.6}}).model_dump(mode="json")
    assert job["spec"] == expected
    assert job["spec"]["prune"]["method"] == "l2"
    assert job["spec"]["finetune"]["epochs"] == 5
    assert app.state.queue.sent == [job["id"]]
    with app.state.sessionmaker() as session:
        row = session.get(Job, job["id"])
        assert row.spec == expected and row.tenant == "alice"
        kinds = session.scalars(select(JobEvent.kind).where(JobEvent.job_id == row.id)).all()
        assert kinds == ["status"]


def test_enqueue_failure_still_accepts_the_job(client, app, model_id):
    app.state.queue.fail = True
    resp = client.post("/v1/jobs", headers=AUTH_A, json={"model_id": model_id})
    assert resp.status_code == 202
    assert client.get(f"/v1/jobs/{resp.json()['id']}", headers=AUTH_A).json()["status"] == "queued"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prune": {"target": {"macs_reduction": 1.5}}}, "prune.target.macs_reduction"),
        ({"prune": {"methd": "l1"}}, "prune.methd"),
        ({"colour": "red"}, "colour"),
        ({"finetune": {"epochs": -1}}, "finetune.epochs"),
        ({"prune": {"target": {"macs_reduction": 0.5, "params_reduction": 0.5}}}, "prune.target"),
        ({"prune": {"method": "magic"}}, "prune.method"),
        ({"prune": {"scope": "everywhere"}}, "prune.scope"),
        ({"prune": {"method": "unstructured_l1", "target": {"latency_reduction": 0.5}}}, "prune"),
        ({"accuracy_budget": {"max_drop": 0.01, "probes": 1}}, "accuracy_budget.probes"),
    ],
)
def test_invalid_bodies_name_the_field(client, model_id, body, field):
    resp = client.post("/v1/jobs", headers=AUTH_A, json={"model_id": model_id, **body})
    problem = assert_problem(resp, 422, "validation_error")
    assert problem["detail"].startswith(field + ":"), problem["detail"]
    assert problem["errors"][0]["field"] == field


def test_latency_target_and_sensitivity_scope_are_accepted(client, model_id):
    body = {
        "model_id": model_id,
        "prune": {"target": {"latency_reduction": 0.6}, "scope": "sensitivity"},
    }
    resp = client.post("/v1/jobs", headers=AUTH_A, json=body)
    assert resp.status_code == 202, resp.text
    spec = resp.json()["spec"]
    assert spec["prune"]["target"]["latency_reduction"] == 0.6
    assert spec["prune"]["scope"] == "sensitivity"


def test_an_accuracy_budget_without_a_dataset_is_refused(client, model_id):
    # Without data the budget would be judged on random inputs: refused, not shipped.
    body = {"model_id": model_id, "accuracy_budget": {"max_drop": 0.02, "probes": 8}}
    problem = assert_problem(
        client.post("/v1/jobs", headers=AUTH_A, json=body), 422, "validation_error"
    )
    assert "dataset" in problem["detail"], problem["detail"]


def test_missing_model_id_and_bad_json(client):
    problem = assert_problem(
        client.post("/v1/jobs", headers=AUTH_A, json={}), 422, "validation_error"
    )
    assert problem["detail"].startswith("model_id")
    resp = client.post(
        "/v1/jobs", headers={**AUTH_A, "Content-Type": "application/json"}, content=b"{not json"
    )
    assert assert_problem(resp, 400, "invalid_json")["position"] == 1


def test_other_tenants_model_or_dataset_is_404(client, app, model_id):
    theirs = upload_model(client, headers=AUTH_B).json()["id"]
    assert_problem(
        client.post("/v1/jobs", headers=AUTH_A, json={"model_id": theirs}), 404, "not_found"
    )
    their_ds = upload_dataset(client, headers=AUTH_B).json()["id"]
    resp = client.post(
        "/v1/jobs", headers=AUTH_A, json={"model_id": model_id, "dataset_id": their_ds}
    )
    assert_problem(resp, 404, "not_found")
    assert_problem(
        client.post("/v1/jobs", headers=AUTH_A, json={"model_id": "mdl_nope"}), 404, "not_found"
    )
    assert app.state.queue.sent == []


def test_dataset_shape_must_match_model_input(client, app, model_id):
    good = upload_dataset(client).json()["id"]  # samples [3, 8, 8], model [1, 3, 8, 8]
    resp = client.post("/v1/jobs", headers=AUTH_A, json={"model_id": model_id, "dataset_id": good})
    assert resp.status_code == 202
    assert resp.json()["dataset_id"] == good
    app.state.inspector.dataset_result = DatasetInfo(
        format="npz", num_samples=5, sample_shape=[1, 16, 16], num_classes=2, labeled=True
    )
    bad = upload_dataset(client, b"other-dataset-bytes").json()["id"]  # not the same file
    resp = client.post("/v1/jobs", headers=AUTH_A, json={"model_id": model_id, "dataset_id": bad})
    problem = assert_problem(resp, 422, "dataset_shape_mismatch")
    assert "[1, 16, 16]" in problem["detail"] and "[3, 8, 8]" in problem["detail"]


def test_idempotency_key_replays_same_job(client, app, model_id):
    headers = {**AUTH_A, "Idempotency-Key": "abc-123"}
    body = {"model_id": model_id, "prune": {"method": "l1"}}
    first = client.post("/v1/jobs", headers=headers, json=body)
    assert first.status_code == 202
    again = client.post("/v1/jobs", headers=headers, json=body)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    problem = assert_problem(
        client.post("/v1/jobs", headers=headers, json={**body, "prune": {"method": "l2"}}),
        422,
        "idempotency_key_reused",
    )
    assert "Idempotency-Key" in problem["detail"]
    # Another tenant using the same key gets its own namespace.
    theirs = upload_model(client, headers=AUTH_B).json()["id"]
    other = client.post(
        "/v1/jobs", headers={**AUTH_B, "Idempotency-Key": "abc-123"}, json={"model_id": theirs}
    )
    assert other.status_code == 202
    assert app.state.queue.sent == [first.json()["id"], other.json()["id"]]
    with app.state.sessionmaker() as session:
        assert len(session.scalars(select(Job)).all()) == 2


def test_idempotency_key_expires_after_a_day(client, app, model_id):
    from datetime import timedelta

    from infra.db.models import utcnow

    headers = {**AUTH_A, "Idempotency-Key": "old"}
    first = client.post("/v1/jobs", headers=headers, json={"model_id": model_id}).json()
    with app.state.sessionmaker() as session:
        session.get(Job, first["id"]).created_at = utcnow() - timedelta(hours=25)
        session.commit()
    second = client.post("/v1/jobs", headers=headers, json={"model_id": model_id})
    assert second.status_code == 202
    assert second.json()["id"] != first["id"]


def test_concurrent_job_cap_is_429_with_retry_after(client, app, model_id):
    app.state.settings.max_concurrent_jobs_per_tenant = 2
    for _ in range(2):
        assert (
            client.post("/v1/jobs", headers=AUTH_A, json={"model_id": model_id}).status_code == 202
        )
    resp = client.post("/v1/jobs", headers=AUTH_A, json={"model_id": model_id})
    assert_problem(resp, 429, "too_many_jobs")
    assert int(resp.headers["retry-after"]) >= 1
    # Finished jobs free their slot.
    first = client.get("/v1/jobs", headers=AUTH_A).json()["items"][-1]["id"]
    assert client.post(f"/v1/jobs/{first}/cancel", headers=AUTH_A).status_code == 202
    assert client.post("/v1/jobs", headers=AUTH_A, json={"model_id": model_id}).status_code == 202


def test_list_filters_by_status_and_paginates(client, app, model_id):
    ids = [
        client.post("/v1/jobs", headers=AUTH_A, json={"model_id": model_id}).json()["id"]
        for _ in range(3)
    ]
    client.post(f"/v1/jobs/{ids[0]}/cancel", headers=AUTH_A)
    queued = client.get("/v1/jobs?status=queued", headers=AUTH_A).json()
    assert [j["id"] for j in queued["items"]] == [ids[2], ids[1]]
    cancelled = client.get("/v1/jobs?status=cancelled", headers=AUTH_A).json()
    assert [j["id"] for j in cancelled["items"]] == [ids[0]]
    page = client.get("/v1/jobs?limit=2", headers=AUTH_A).json()
    rest = client.get(f"/v1/jobs?limit=2&cursor={page['next_cursor']}", headers=AUTH_A).json()
    assert [j["id"] for j in page["items"] + rest["items"]] == ids[::-1]
    assert client.get("/v1/jobs", headers=AUTH_B).json() == {"items": [], "next_cursor": None}
    problem = assert_problem(
        client.get("/v1/jobs?status=done", headers=AUTH_A), 422, "validation_error"
    )
    assert problem["detail"].startswith("status")


def test_list_filters_by_model_and_dataset(client, model_id):
    other_model = upload_model(client, data=b"other-model-bytes").json()["id"]
    dataset_id = upload_dataset(client).json()["id"]
    plain = client.post("/v1/jobs", headers=AUTH_A, json={"model_id": model_id}).json()["id"]
    with_data = client.post(
        "/v1/jobs", headers=AUTH_A, json={"model_id": other_model, "dataset_id": dataset_id}
    ).json()["id"]

    def listed(query: str, headers: dict = AUTH_A) -> list[str]:
        return [j["id"] for j in client.get(f"/v1/jobs?{query}", headers=headers).json()["items"]]

    assert listed(f"model_id={model_id}") == [plain]
    assert listed(f"model_id={other_model}") == [with_data]
    assert listed(f"dataset_id={dataset_id}") == [with_data]
    assert listed(f"model_id={model_id}&dataset_id={dataset_id}") == []
    assert listed(f"model_id={model_id}", AUTH_B) == []


def test_cancel_queued_running_and_finished(client, app, model_id):
    job_id = client.post("/v1/jobs", headers=AUTH_A, json={"model_id": model_id}).json()["id"]
    assert_problem(client.post(f"/v1/jobs/{job_id}/cancel", headers=AUTH_B), 404, "not_found")
    resp = client.post(f"/v1/jobs/{job_id}/cancel", headers=AUTH_A)
    assert resp.status_code == 202
    job = resp.json()
    assert job["status"] == "cancelled" and job["error"]["code"] == "cancelled"
    assert job["finished_at"].endswith("Z")
    assert_problem(client.post(f"/v1/jobs/{job_id}/cancel", headers=AUTH_A), 409, "job_finished")
    running = client.post("/v1/jobs", headers=AUTH_A, json={"model_id": model_id}).json()["id"]
    with app.state.sessionmaker() as session:
        jobstate.set_status(session, session.get(Job, running), "running")
        session.commit()
    job = client.post(f"/v1/jobs/{running}/cancel", headers=AUTH_A).json()
    assert (job["status"], job["cancel_requested"]) == ("running", True)


def test_job_reads_are_tenant_scoped(client, model_id):
    job_id = client.post("/v1/jobs", headers=AUTH_A, json={"model_id": model_id}).json()["id"]
    for path in ("", "/report", "/artifacts", "/artifacts/model.onnx", "/events"):
        assert_problem(client.get(f"/v1/jobs/{job_id}{path}", headers=AUTH_B), 404, "not_found")
    assert client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).json()["id"] == job_id


def _report() -> dict:
    summary = {
        "params": 1000,
        "macs": 50_000,
        "size_bytes": 4000,
        "accuracy": None,
        "latency_ms": {"CPUExecutionProvider": {"1": {"p50": 1.0, "p90": 1.2, "p99": 1.5}}},
    }
    return {
        "original": summary,
        "pruned": {**summary, "params": 500, "macs": 25_000, "size_bytes": 2000},
        "ratios": {"macs": 2.0, "params": 2.0, "size": 2.0, "latency_speedup": 1.4},
        "fidelity": {"top1_agreement": 0.98, "max_abs_diff": 0.01, "cosine": 0.999},
        "layers": [{"name": "conv1", "out_channels_before": 8, "out_channels_after": 4}],
        "history": [{"step": 1, "macs": 25_000}],
        "environment": {
            "torch": "2",
            "onnxruntime": "1",
            "device": "cpu",
            "providers": ["CPUExecutionProvider"],
        },
    }


def _succeed_with_artifacts(app, job_id: str, files: dict[str, bytes], report: dict | None):
    import hashlib

    from infra.db.models import Artifact

    store = app.state.store
    tmp = app.state.settings.data_dir / "tmp" / "artifact"
    with app.state.sessionmaker() as session:
        job = session.get(Job, job_id)
        jobstate.set_status(session, job, "running")
        for name, data in files.items():
            tmp.write_bytes(data)
            key = f"jobs/{job_id}/{name}"
            store.put_file(key, tmp)
            session.add(
                Artifact(
                    job_id=job_id,
                    name=name,
                    size_bytes=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                    media_type="application/octet-stream",
                    storage_key=key,
                )
            )
        job.report = report
        jobstate.set_status(session, job, "succeeded")
        session.commit()


def test_report_409_until_succeeded_then_200(client, app, model_id):
    job_id = client.post("/v1/jobs", headers=AUTH_A, json={"model_id": model_id}).json()["id"]
    problem = assert_problem(
        client.get(f"/v1/jobs/{job_id}/report", headers=AUTH_A), 409, "job_not_succeeded"
    )
    assert "queued" in problem["detail"]
    assert client.get(f"/v1/jobs/{job_id}/artifacts", headers=AUTH_A).json() == []
    report = _report()
    _succeed_with_artifacts(
        app,
        job_id,
        {"model.onnx": b"onnx" * 50, "report.json": json.dumps(report).encode()},
        report,
    )
    resp = client.get(f"/v1/jobs/{job_id}/report", headers=AUTH_A)
    assert resp.status_code == 200
    assert resp.json() == report
    job = client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).json()
    assert (job["status"], job["progress"]) == ("succeeded", 1.0)


def test_report_falls_back_to_report_artifact(client, app, model_id):
    job_id = client.post("/v1/jobs", headers=AUTH_A, json={"model_id": model_id}).json()["id"]
    report = _report()
    _succeed_with_artifacts(app, job_id, {"report.json": json.dumps(report).encode()}, None)
    assert client.get(f"/v1/jobs/{job_id}/report", headers=AUTH_A).json() == report


def test_artifacts_list_and_download_with_etag(client, app, model_id):
    import hashlib

    job_id = client.post("/v1/jobs", headers=AUTH_A, json={"model_id": model_id}).json()["id"]
    onnx_bytes = bytes(range(256)) * 40
    _succeed_with_artifacts(
        app, job_id, {"model.onnx": onnx_bytes, "report.json": b"{}"}, _report()
    )
    listing = client.get(f"/v1/jobs/{job_id}/artifacts", headers=AUTH_A).json()
    assert [a["name"] for a in listing] == ["model.onnx", "report.json"]
    assert listing[0]["size_bytes"] == len(onnx_bytes)
    assert listing[0]["sha256"] == hashlib.sha256(onnx_bytes).hexdigest()
    resp = client.get(f"/v1/jobs/{job_id}/artifacts/model.onnx", headers=AUTH_A)
    assert resp.status_code == 200 and resp.content == onnx_bytes
    etag = f'"{hashlib.sha256(onnx_bytes).hexdigest()}"'
    assert resp.headers["etag"] == etag
    assert 'filename="model.onnx"' in resp.headers["content-disposition"]
    cached = client.get(
        f"/v1/jobs/{job_id}/artifacts/model.onnx",
        headers={**AUTH_A, "If-None-Match": f'W/"x", {etag}'},
    )
    assert cached.status_code == 304 and cached.headers["etag"] == etag
    assert_problem(
        client.get(f"/v1/jobs/{job_id}/artifacts/model.pt2", headers=AUTH_A), 404, "not_found"
    )
