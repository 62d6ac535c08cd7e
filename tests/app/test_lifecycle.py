"""A job's end of life: `DELETE /v1/jobs/{id}`, the artifact retention period, and uploads
of a file the tenant already stored."""

import hashlib
from datetime import timedelta
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from sqlalchemy import func, select

from infra.config import Settings
from infra.db import jobstate
from infra.db.models import Artifact, Job, JobEvent, WebhookAttempt, WebhookEvent, utcnow
from infra.storage import artifact_key
from infra.storage.lifecycle import ArtifactRetention, expire_artifacts
from infra.storage.s3 import S3Store
from tests.app.helpers import (
    AUTH_A,
    AUTH_B,
    FakeInspector,
    assert_problem,
    insert_job,
    upload_dataset,
    upload_model,
)

FILES = {"model.onnx": b"pruned-model", "report.json": b'{"ok": true}'}


@pytest.fixture
def model_id(client):
    return upload_model(client).json()["id"]


@pytest.fixture(params=["local", "s3"])
def any_store(request, app):
    """The app's artifact store: its local directory, or an S3 bucket (moto)."""
    if request.param == "local":
        yield
        return
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="artifacts")
        app.state.store = S3Store("artifacts", prefix="pfx/", client=client)
        yield


def finished_job(
    app, model_id: str, status: str = "succeeded", *, days_ago: float = 0, tenant: str = "alice"
) -> str:
    """A finished job with stored artifacts, events and a webhook delivery, as a worker
    leaves one."""
    job_id = insert_job(
        app.state.sessionmaker,
        tenant,
        model_id,
        status=status,
        finished_at=utcnow() - timedelta(days=days_ago),
    )
    store = app.state.store
    with app.state.sessionmaker() as session:
        for name, data in FILES.items():
            src = Path(app.state.settings.data_dir) / f"{job_id}-{name}"
            src.write_bytes(data)
            store.put_file(artifact_key(job_id, name), src, move=True)
            session.add(
                Artifact(
                    job_id=job_id,
                    name=name,
                    size_bytes=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                    media_type="application/octet-stream",
                    storage_key=artifact_key(job_id, name),
                )
            )
        jobstate.append_event(session, session.get(Job, job_id), "status", {"status": status})
        session.add(
            WebhookEvent(
                id=f"evt_{job_id}",
                job_id=job_id,
                tenant=tenant,
                type=f"job.{status}",
                url="https://example.com/hook",
                body="{}",
                status="delivered",
                attempts=1,
                created_at=utcnow(),
            )
        )
        session.add(
            WebhookAttempt(
                event_id=f"evt_{job_id}",
                attempt=1,
                started_at=utcnow(),
                duration_ms=5,
                status_code=204,
            )
        )
        session.commit()
    return job_id


def count(app, table, job_id: str) -> int:
    column = WebhookAttempt.event_id if table is WebhookAttempt else table.job_id
    value = f"evt_{job_id}" if table is WebhookAttempt else job_id
    with app.state.sessionmaker() as session:
        return session.scalar(select(func.count()).select_from(table).where(column == value))


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_delete_a_finished_job_removes_it_its_files_and_its_events(
    client, app, model_id, any_store, status
):
    job_id = finished_job(app, model_id, status)
    assert (
        client.get(f"/v1/jobs/{job_id}/artifacts/model.onnx", headers=AUTH_A).content
        == FILES["model.onnx"]
    )
    resp = client.delete(f"/v1/jobs/{job_id}", headers=AUTH_A)
    assert resp.status_code == 204, resp.text
    assert_problem(client.get(f"/v1/jobs/{job_id}", headers=AUTH_A), 404, "not_found")
    assert_problem(client.delete(f"/v1/jobs/{job_id}", headers=AUTH_A), 404, "not_found")
    for table in (Artifact, JobEvent, WebhookEvent, WebhookAttempt):
        assert count(app, table, job_id) == 0, table
    assert not any(app.state.store.exists(artifact_key(job_id, name)) for name in FILES)
    # The model it used is untouched.
    assert client.get(f"/v1/models/{model_id}", headers=AUTH_A).status_code == 200


@pytest.mark.parametrize("status", ["queued", "running"])
def test_delete_an_unfinished_job_is_409(client, app, model_id, status):
    job_id = insert_job(app.state.sessionmaker, "alice", model_id, status=status)
    body = assert_problem(
        client.delete(f"/v1/jobs/{job_id}", headers=AUTH_A), 409, "job_not_finished"
    )
    assert "cancel" in body["detail"]
    assert client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).json()["status"] == status


def test_delete_another_tenants_job_is_404_and_keeps_it(client, app, model_id):
    job_id = finished_job(app, model_id)
    assert_problem(client.delete(f"/v1/jobs/{job_id}", headers=AUTH_B), 404, "not_found")
    assert client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).status_code == 200
    assert app.state.store.exists(artifact_key(job_id, "model.onnx"))


def test_expired_artifacts_answer_410_and_the_job_stays(client, app, model_id, any_store):
    old = finished_job(app, model_id, days_ago=40)
    recent = finished_job(app, model_id, days_ago=1)
    running = insert_job(app.state.sessionmaker, "alice", model_id, status="running")
    expired = expire_artifacts(app.state.sessionmaker, app.state.store, timedelta(days=30))
    assert expired == [old]
    assert expire_artifacts(app.state.sessionmaker, app.state.store, timedelta(days=30)) == []
    assert not app.state.store.exists(artifact_key(old, "model.onnx"))
    for name in FILES:
        assert_problem(
            client.get(f"/v1/jobs/{old}/artifacts/{name}", headers=AUTH_A), 410, "artifacts_expired"
        )
    # The job and what it produced (names, sizes, hashes) are still there to read.
    assert client.get(f"/v1/jobs/{old}", headers=AUTH_A).json()["status"] == "succeeded"
    listed = client.get(f"/v1/jobs/{old}/artifacts", headers=AUTH_A).json()
    assert sorted(a["name"] for a in listed) == sorted(FILES)
    # A report kept only as an artifact is gone too.
    assert_problem(client.get(f"/v1/jobs/{old}/report", headers=AUTH_A), 410, "artifacts_expired")
    assert (
        client.get(f"/v1/jobs/{recent}/artifacts/model.onnx", headers=AUTH_A).content
        == FILES["model.onnx"]
    )
    assert client.get(f"/v1/jobs/{running}", headers=AUTH_A).status_code == 200
    # Deleting a job whose artifacts expired works, with nothing left to remove.
    assert client.delete(f"/v1/jobs/{old}", headers=AUTH_A).status_code == 204


def test_retention_runs_at_most_once_per_period(app, model_id):
    retention = ArtifactRetention(app.state.sessionmaker, app.state.store, days=30, every_s=3600)
    first = finished_job(app, model_id, days_ago=31)
    assert retention.run_if_due() == [first]
    finished_job(app, model_id, days_ago=31)
    assert retention.run_if_due() == []  # not due again for an hour


def test_the_worker_sweeper_expires_artifacts_only_when_a_period_is_set(tmp_path):
    from worker.sweeper import _retention_chores

    def chores(days: float) -> list:
        return _retention_chores(Settings(data_dir=tmp_path, artifact_retention_days=days), None)  # type: ignore[arg-type]

    assert chores(0) == []
    assert len(chores(7)) == 1


def test_uploading_the_same_model_again_answers_the_first_with_200(client, app):
    inspector: FakeInspector = app.state.inspector
    first = upload_model(client, b"same-model")
    assert first.status_code == 201, first.text
    again = upload_model(client, b"same-model", name="another name")
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert len(inspector.calls) == 1  # not inspected, not stored again
    assert len(client.get("/v1/models", headers=AUTH_A).json()["items"]) == 1
    # Once deleted, uploading it again makes a new model.
    assert client.delete(f"/v1/models/{first.json()['id']}", headers=AUTH_A).status_code == 204
    fresh = upload_model(client, b"same-model")
    assert fresh.status_code == 201 and fresh.json()["id"] != first.json()["id"]
    # The same file read another way is another model; another tenant's is its own.
    assert upload_model(client, b"same-model", arch="torchvision:resnet18").status_code == 201
    assert upload_model(client, b"same-model", headers=AUTH_B).status_code == 201


def test_uploading_the_same_dataset_again_answers_the_first_with_200(client):
    first = upload_dataset(client, b"same-dataset")
    assert first.status_code == 201, first.text
    again = upload_dataset(client, b"same-dataset")
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert upload_dataset(client, b"other-dataset").status_code == 201
    assert client.delete(f"/v1/datasets/{first.json()['id']}", headers=AUTH_A).status_code == 204
    assert upload_dataset(client, b"same-dataset").status_code == 201
