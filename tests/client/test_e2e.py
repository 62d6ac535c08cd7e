"""The Python client against the real service (uvicorn + a Celery worker on the embedded
broker): `Client.prune` takes a tiny ONNX model through upload, job, events and download."""

import hashlib
from pathlib import Path
from typing import Any

import pytest

import secateurs_client as sc
from tests.conftest import Service
from tests.e2e.helpers import QUICK_BENCH, build_onnx, check_onnx_drop_in

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def service(embedded_service: Service) -> Service:
    return embedded_service


def test_prune_through_the_client(service: Service, tmp_path: Path) -> None:
    spec = {
        "prune": {"target": {"macs_reduction": 0.4}, "iterative_steps": 2},
        "finetune": None,
        "benchmark": QUICK_BENCH,
    }
    seen: list[dict[str, Any]] = []
    with sc.Client(service.base_url, service.key_a, retries=2) as client:
        try:
            result = client.prune(
                build_onnx(tmp_path / "tiny.onnx"),
                spec,
                dest_dir=tmp_path / "out",
                timeout=240,
                progress=seen.append,
            )
        except sc.SecateursError:
            print(service.logs())
            raise
        listed = {a["name"]: a["sha256"] for a in client.artifacts(result.job["id"])}

    onnx = result.model_path.read_bytes()
    assert result.model_path == tmp_path / "out" / "model.onnx"
    assert hashlib.sha256(onnx).hexdigest() == listed["model.onnx"]
    stored = service.log_dir / "artifacts" / "jobs" / result.job["id"] / "model.onnx"
    assert stored.read_bytes() == onnx
    check_onnx_drop_in(onnx)
    assert result.job["status"] == "succeeded" and result.model["format"] == "onnx"
    assert result.report["pruned"]["macs"] < result.report["original"]["macs"]
    assert {"model.onnx", "report.json"} <= set(result.artifacts)
    assert seen[-1]["status"] == "succeeded"
    assert "exporting" in {s.get("stage") for s in seen}


def test_typed_errors_from_the_real_service(service: Service) -> None:
    with sc.Client(service.base_url, service.key_a, retries=0) as client:
        with pytest.raises(sc.NotFound) as missing:
            client.get_job("job_doesnotexist")
        assert missing.value.status == 404 and missing.value.code
        with pytest.raises(sc.ValidationError) as invalid:
            client.submit("mdl_x", {"prune": {"target": {"macs_reduction": 2}}})
        assert invalid.value.code == "validation_error"
    with (
        sc.Client(service.base_url, "sk_wrong", retries=0) as client,
        pytest.raises(sc.AuthError) as denied,
    ):
        client.get_job("job_doesnotexist")
    assert denied.value.status == 401
