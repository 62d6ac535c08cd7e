"""`/v1/datasets`: upload, list, read, delete, tenant scoping, size cap."""

import hashlib

from contract import DatasetInfo
from tests.app.helpers import (
    AUTH_A,
    AUTH_B,
    assert_problem,
    insert_job,
    rejected,
    upload_dataset,
    upload_model,
)


def test_upload_and_read(client, app):
    data = b"PK\x03\x04" + b"d" * 300
    resp = upload_dataset(client, data, name="digits")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["id"].startswith("ds_")
    assert body == {
        "id": body["id"],
        "name": "digits",
        "format": "npz",
        "num_samples": 10,
        "sample_shape": [3, 8, 8],
        "num_classes": 4,
        "labeled": True,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": 304,
        "created_at": body["created_at"],
    }
    assert b"".join(app.state.store.open_stream(f"datasets/{body['id']}")) == data
    assert client.get(f"/v1/datasets/{body['id']}", headers=AUTH_A).json() == body
    listing = client.get("/v1/datasets", headers=AUTH_A).json()
    assert listing == {"items": [body], "next_cursor": None}


def test_unlabeled_image_folder(client, app):
    app.state.inspector.dataset_result = DatasetInfo(
        format="imagefolder", num_samples=7, sample_shape=[3, 8, 8], labeled=False
    )
    body = upload_dataset(client).json()
    assert (body["format"], body["labeled"], body["num_classes"]) == ("imagefolder", False, None)


def test_refusals_and_size_cap(client, app):
    app.state.inspector.dataset_result = rejected("unsafe_archive", "member escapes")
    assert_problem(upload_dataset(client), 422, "unsafe_archive")
    app.state.settings.max_dataset_bytes = 10
    assert_problem(upload_dataset(client, b"x" * 11), 413, "payload_too_large")
    assert list((app.state.settings.data_dir / "tmp").iterdir()) == []


def test_tenant_scoping_and_delete(client, app):
    ds_id = upload_dataset(client).json()["id"]
    assert_problem(client.get(f"/v1/datasets/{ds_id}", headers=AUTH_B), 404, "not_found")
    assert_problem(client.delete(f"/v1/datasets/{ds_id}", headers=AUTH_B), 404, "not_found")
    assert client.get("/v1/datasets", headers=AUTH_B).json()["items"] == []
    model_id = upload_model(client).json()["id"]
    insert_job(app.state.sessionmaker, "alice", model_id, dataset_id=ds_id)
    assert_problem(client.delete(f"/v1/datasets/{ds_id}", headers=AUTH_A), 409, "dataset_in_use")
    client.post(
        f"/v1/jobs/{client.get('/v1/jobs', headers=AUTH_A).json()['items'][0]['id']}/cancel",
        headers=AUTH_A,
    )
    assert client.delete(f"/v1/datasets/{ds_id}", headers=AUTH_A).status_code == 204
    assert_problem(client.get(f"/v1/datasets/{ds_id}", headers=AUTH_A), 404, "not_found")
    assert not app.state.store.exists(f"datasets/{ds_id}")
    resp = client.post("/v1/jobs", headers=AUTH_A, json={"model_id": model_id, "dataset_id": ds_id})
    assert_problem(resp, 404, "not_found")
