"""The artifact stores: local directory and S3 (moto), same behaviour."""

from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from infra.config import Settings
from infra.storage import KeyNotFound, LocalStore, StoreError, make_store
from infra.storage.s3 import S3Store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
        return
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="artifacts")
        yield S3Store("artifacts", prefix="pfx/", client=client)


def test_round_trip(store, tmp_path: Path):
    src = tmp_path / "src.bin"
    data = bytes(range(256)) * 9000  # > one 1 MiB chunk
    src.write_bytes(data)
    store.put_file("jobs/job_1/model.onnx", src)
    assert src.exists()
    assert store.exists("jobs/job_1/model.onnx")
    assert store.size("jobs/job_1/model.onnx") == len(data)
    chunks = list(store.open_stream("jobs/job_1/model.onnx"))
    assert len(chunks) >= 2 and b"".join(chunks) == data
    dest = store.download_to("jobs/job_1/model.onnx", tmp_path / "out" / "m.onnx")
    assert dest.read_bytes() == data
    store.put_file("models/mdl_1", src, move=True)
    assert not src.exists() and store.size("models/mdl_1") == len(data)
    store.delete("models/mdl_1")
    store.delete("models/mdl_1")  # idempotent
    assert not store.exists("models/mdl_1")
    with pytest.raises(KeyNotFound):
        store.open_stream("models/mdl_1")
    with pytest.raises(KeyNotFound):
        store.size("models/mdl_1")
    with pytest.raises(KeyNotFound):
        store.download_to("models/mdl_1", tmp_path / "x")
    store.check()


def test_unsafe_keys_are_refused(store, tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"x")
    for key in ("../escape", "/abs", "a/../../b", "a//b", "", "a/.hidden/..", "a\\b"):
        with pytest.raises(ValueError):
            store.put_file(key, src)
        with pytest.raises(ValueError):
            store.exists(key)


def test_local_store_leaves_no_temp_files(tmp_path):
    store = LocalStore(tmp_path / "root")
    src = tmp_path / "f"
    src.write_bytes(b"abc")
    store.put_file("models/mdl_a", src)
    store.put_file("models/mdl_a", src)  # overwrite is atomic too
    assert sorted(p.name for p in (tmp_path / "root" / "models").iterdir()) == ["mdl_a"]


def test_s3_check_fails_for_a_missing_bucket():
    with mock_aws():
        store = S3Store("nope", client=boto3.client("s3", region_name="us-east-1"))
        with pytest.raises(StoreError):
            store.check()


def test_make_store_picks_the_backend(tmp_path):
    local = make_store(Settings(data_dir=tmp_path))
    assert isinstance(local, LocalStore) and local.root == (tmp_path / "artifacts").resolve()
    s3 = make_store(
        Settings(
            data_dir=tmp_path, s3_bucket="b", s3_prefix="p", s3_endpoint_url="http://127.0.0.1:9"
        )
    )
    assert isinstance(s3, S3Store) and s3.bucket == "b" and s3._key("models/x") == "p/models/x"
