"""Hostile dataset archives: every one refused with its exact code, before anything is
unpacked, and the service ready afterwards."""

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Service
from tests.security import payloads
from tests.security.helpers import assert_problem, assert_ready, tmp_files, upload

pytestmark = pytest.mark.e2e


def _refused(service: Service, path: Path, code: str) -> dict:
    with service.client() as client:
        body = assert_problem(upload(client, "datasets", path), 422, code)
        names = [d["name"] for d in client.get("/v1/datasets").json()["items"]]
        assert path.name not in names
    assert tmp_files(service) == []
    assert_ready(service)
    return body


CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "symlink": (payloads.zip_symlink, "links"),
    "absolute_path": (payloads.zip_absolute, "unsafe path"),
    "parent_dir": (payloads.zip_parent, "unsafe path"),
    "device": (payloads.zip_device, "special files"),
    "zip_bomb": (payloads.zip_bomb, "compressed more than"),
    "forged_sizes": (payloads.zip_forged_sizes, "unpacks to"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_unsafe_archive(service: Service, tmp_path: Path, name: str) -> None:
    build, phrase = CASES[name]
    body = _refused(service, build(tmp_path / f"{name}.zip"), "unsafe_archive")
    assert phrase in body["detail"]


@pytest.mark.slow
def test_too_many_members(service: Service, tmp_path: Path) -> None:
    body = _refused(service, payloads.zip_many_members(tmp_path / "many.zip"), "unsafe_archive")
    assert "100001 members" in body["detail"]


def test_npz_object_array_samples(service: Service, tmp_path: Path) -> None:
    body = _refused(service, payloads.npz_object_x(tmp_path / "x.npz"), "invalid_dataset")
    assert "pickles are refused" in body["detail"]


def test_npz_object_array_labels(service: Service, tmp_path: Path) -> None:
    body = _refused(service, payloads.npz_object_y(tmp_path / "y.npz"), "invalid_dataset")
    assert "pickles are refused" in body["detail"]


def test_truncated_archive(service: Service, tmp_path: Path) -> None:
    _refused(service, payloads.truncated_zip(tmp_path / "cut.zip"), "invalid_dataset")


def test_oversized_dataset(service: Service, tmp_path: Path) -> None:
    path = tmp_path / "big.npz"
    path.write_bytes(bytes(20 << 20))
    with service.client() as client:
        assert_problem(upload(client, "datasets", path), 413, "payload_too_large")
    assert tmp_files(service) == []
    assert_ready(service)
