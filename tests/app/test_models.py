"""`/v1/models`: upload, list with cursor, read, download with ETag, delete, error shapes."""

import hashlib

from tests.app.helpers import (
    AUTH_A,
    AUTH_B,
    assert_problem,
    insert_job,
    model_info,
    rejected,
    upload_model,
)


def test_upload_returns_model_and_stores_file_under_id(client, app):
    data = b"\x08\x07" + b"x" * 5000
    resp = upload_model(client, data, name="tiny", input_shape="1,3,8,8")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["id"].startswith("mdl_") and len(body["id"]) == 24
    assert body["name"] == "tiny"
    assert body["format"] == "onnx"
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["size_bytes"] == 5002
    assert body["inputs"][0]["shape"] == ["N", 3, 8, 8]
    assert body["stats"] == {"params": 220, "macs": 10_000}
    assert body["input_shape"] == [1, 3, 8, 8]
    assert body["created_at"].endswith("Z")
    # The inspector saw the form fields, parsed.
    kind, _, kwargs = app.state.inspector.calls[-1]
    assert kind == "model" and kwargs == {"arch": None, "input_shape": [1, 3, 8, 8]}
    # Stored under an id-built key, byte for byte; nothing left in the upload area.
    assert b"".join(app.state.store.open_stream(f"models/{body['id']}")) == data
    assert list((app.state.settings.data_dir / "tmp").iterdir()) == []


def test_name_defaults_to_the_file_base_name(client):
    resp = client.post(
        "/v1/models",
        headers=AUTH_A,
        files={"file": ("../../etc/evil.onnx", b"abc", "application/x")},
    )
    assert resp.status_code == 201
    assert resp.json()["name"] == "evil.onnx"


def test_inspector_codes_become_422(client, app):
    for code in (
        "invalid_model",
        "unsafe_format",
        "external_data_forbidden",
        "input_shape_required",
        "unknown_arch",
    ):
        app.state.inspector.model_result = rejected(code, f"because {code}")
        body = assert_problem(upload_model(client), 422, code)
        assert body["detail"] == f"because {code}"
    assert list((app.state.settings.data_dir / "tmp").iterdir()) == []
    assert client.get("/v1/models", headers=AUTH_A).json()["items"] == []


def test_bad_form_fields_are_validation_errors(client):
    body = assert_problem(upload_model(client, input_shape="1,three"), 422, "validation_error")
    assert body["detail"].startswith("input_shape")
    body = assert_problem(upload_model(client, arch="no colon"), 422, "validation_error")
    assert body["detail"].startswith("arch")
    body = assert_problem(upload_model(client, colour="red"), 422, "validation_error")
    assert body["detail"].startswith("colour")
    resp = client.post("/v1/models", headers=AUTH_A, files={"name": (None, "x")})
    body = assert_problem(resp, 422, "validation_error")
    assert body["detail"].startswith("file")
    resp = client.post("/v1/models", headers=AUTH_A, json={"file": "x"})
    assert_problem(resp, 415, "unsupported_media_type")


def test_too_large_upload_is_413_and_leaves_nothing(client, app):
    app.state.settings.max_model_bytes = 1000
    assert_problem(upload_model(client, b"y" * 1001), 413, "payload_too_large")
    # Without a Content-Length: chunked body, the cap is enforced while streaming.
    boundary = "b0undary"
    payload = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="m.onnx"\r\n\r\n'
        ).encode()
        + b"z" * 5000
        + f"\r\n--{boundary}--\r\n".encode()
    )

    def chunks():
        for i in range(0, len(payload), 512):
            yield payload[i : i + 512]

    ctype = f"multipart/form-data; boundary={boundary}"
    resp = client.post("/v1/models", content=chunks(), headers={**AUTH_A, "Content-Type": ctype})
    assert "content-length" not in {k.lower() for k in resp.request.headers}
    assert_problem(resp, 413, "payload_too_large")
    assert list((app.state.settings.data_dir / "tmp").iterdir()) == []
    assert client.get("/v1/models", headers=AUTH_A).json()["items"] == []
    # Exactly at the cap is accepted.
    assert upload_model(client, b"y" * 1000).status_code == 201


def test_list_paginates_newest_first_with_cursor(client):
    ids = [upload_model(client, f"m{i}".encode(), name=f"m{i}").json()["id"] for i in range(5)]
    upload_model(client, b"other", headers=AUTH_B)  # another tenant's: never listed
    page1 = client.get("/v1/models?limit=2", headers=AUTH_A).json()
    assert [m["id"] for m in page1["items"]] == ids[::-1][:2]
    page2 = client.get(f"/v1/models?limit=2&cursor={page1['next_cursor']}", headers=AUTH_A).json()
    assert [m["id"] for m in page2["items"]] == ids[::-1][2:4]
    page3 = client.get(f"/v1/models?limit=2&cursor={page2['next_cursor']}", headers=AUTH_A).json()
    assert [m["id"] for m in page3["items"]] == ids[:1]
    assert page3["next_cursor"] is None
    assert len(client.get("/v1/models", headers=AUTH_A).json()["items"]) == 5
    body = assert_problem(
        client.get("/v1/models?limit=201", headers=AUTH_A), 422, "validation_error"
    )
    assert body["detail"].startswith("limit")
    body = assert_problem(
        client.get("/v1/models?cursor=!!notacursor", headers=AUTH_A), 422, "validation_error"
    )
    assert body["detail"].startswith("cursor")


def test_get_and_download_with_etag(client):
    data = b"onnx-bytes" * 100
    model = upload_model(client, data).json()
    assert client.get(f"/v1/models/{model['id']}", headers=AUTH_A).json() == model
    resp = client.get(f"/v1/models/{model['id']}/file", headers=AUTH_A)
    assert resp.status_code == 200
    assert resp.content == data
    assert resp.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert resp.headers["content-length"] == str(len(data))
    again = client.get(
        f"/v1/models/{model['id']}/file", headers={**AUTH_A, "If-None-Match": resp.headers["etag"]}
    )
    assert again.status_code == 304 and again.content == b""
    other = client.get(
        f"/v1/models/{model['id']}/file", headers={**AUTH_A, "If-None-Match": '"deadbeef"'}
    )
    assert other.status_code == 200 and other.content == data


def test_other_tenant_gets_404_for_every_method(client):
    model_id = upload_model(client).json()["id"]
    for method, path in (("GET", ""), ("GET", "/file"), ("DELETE", "")):
        resp = client.request(method, f"/v1/models/{model_id}{path}", headers=AUTH_B)
        assert_problem(resp, 404, "not_found")
    assert client.get(f"/v1/models/{model_id}", headers=AUTH_A).status_code == 200


def test_delete_refused_while_a_job_uses_the_model(client, app):
    model_id = upload_model(client).json()["id"]
    job_id = insert_job(app.state.sessionmaker, "alice", model_id, status="running")
    assert_problem(client.delete(f"/v1/models/{model_id}", headers=AUTH_A), 409, "model_in_use")
    with app.state.sessionmaker() as session:
        from infra.db.models import Job

        session.get(Job, job_id).status = "succeeded"
        session.commit()
    resp = client.delete(f"/v1/models/{model_id}", headers=AUTH_A)
    assert resp.status_code == 204 and resp.content == b""
    assert_problem(client.get(f"/v1/models/{model_id}", headers=AUTH_A), 404, "not_found")
    assert not app.state.store.exists(f"models/{model_id}")
    # The finished job still reads fine.
    assert client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).json()["model_id"] == model_id


def test_weights_upload_passes_arch(client, app):
    app.state.inspector.model_result = model_info([1, 3, 32, 32])
    resp = upload_model(client, b"weights", arch="torchvision:resnet18")
    assert resp.status_code == 201
    assert app.state.inspector.calls[-1][2]["arch"] == "torchvision:resnet18"
    assert resp.json()["arch"] == "torchvision:resnet18"


def test_stale_partial_uploads_are_swept_at_start(settings):
    import fcntl
    import os
    import time

    from app.main import create_app

    tmp = settings.data_dir / "tmp"
    tmp.mkdir(parents=True)
    dead, live, other = tmp / "mdl_dead.upload", tmp / "mdl_live.upload", tmp / "keep.txt"
    staging_old, staging_new = tmp / "mdl_a.upload.new", tmp / "mdl_b.upload.new"
    for path in (dead, live, other, staging_old, staging_new):
        path.write_bytes(b"partial")
    two_days_ago = time.time() - 2 * 24 * 3600
    for path in (other, staging_old):
        os.utime(path, (two_days_ago, two_days_ago))
    # A live upload holds its file's lock; a dead process's lock is gone with it.
    with live.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        create_app(settings).state.engine.dispose()
    assert sorted(p.name for p in tmp.iterdir()) == [
        "keep.txt",
        "mdl_b.upload.new",
        "mdl_live.upload",
    ]
