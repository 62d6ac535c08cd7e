"""The core scenario on the server-less defaults: SQLite job store, the embedded broker
(Kombu's SQLAlchemy transport on SQLite) and the local artifact store."""

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Service
from tests.e2e.helpers import (
    TERMINAL,
    build_onnx,
    check_onnx_drop_in,
    core_scenario,
    job_body,
    sha256,
    submit,
    upload,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# The worker polls the embedded broker every 0.2 s; the sweeper would only find an
# unpublished job after 3 s or more, so a slower pick-up means the publish was lost.
PICKUP_LIMIT_S = 2.5


@pytest.fixture(scope="module")
def service(embedded_service: Service) -> Service:
    return embedded_service


@pytest.fixture(scope="module")
def core(service: Service, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    with service.client() as client:
        try:
            return core_scenario(client, tmp_path_factory.mktemp("core"))
        except AssertionError:
            print(service.logs())
            raise


def test_core_scenario_on_embedded_defaults(service: Service, core: dict[str, Any]) -> None:
    stored = service.log_dir / "artifacts" / "jobs" / core["job"]["id"] / "model.onnx"
    assert stored.read_bytes() == core["onnx"]


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_idle_worker_picks_a_job_up_through_the_embedded_broker(
    service: Service, core: dict[str, Any]
) -> None:
    time.sleep(5)  # let the fresh pool child finish importing the engine: an idle worker
    with service.client() as client:
        job_id = submit(client, job_body(core["model"]["id"])).json()["id"]
        job = wait_for(
            client, job_id, lambda j: j["status"] != "queued", timeout_s=60, interval_s=0.05
        )
        client.post(f"/v1/jobs/{job_id}/cancel")
    waited = _ts(job["started_at"]) - _ts(job["created_at"])
    assert waited < PICKUP_LIMIT_S, (
        f"picked up after {waited:.1f} s: the API's publish to the embedded broker failed "
        f"and the sweeper found the job\n{service.logs()}"
    )


def test_prune_then_quantize_to_int8(service: Service, tmp_path: Path) -> None:
    """`{"quantize": {"mode": "int8"}}` alone: model.onnx is INT8, model.fp32.onnx the
    pruned float model, both downloadable and drop-in."""
    import onnx

    with service.client() as client:
        model = upload(client, "models", build_onnx(tmp_path / "tiny.onnx"))
        body = {**job_body(model["id"]), "quantize": {"mode": "int8", "samples": 16}}
        job_id = submit(client, body).json()["id"]
        job = wait_for(client, job_id, lambda j: j["status"] in TERMINAL, timeout_s=120)
        assert job["status"] == "succeeded", (job, service.logs())
        report = client.get(f"/v1/jobs/{job_id}/report").json()
        assert report["quantization"]["applied"] is True
        listed = {a["name"]: a for a in client.get(f"/v1/jobs/{job_id}/artifacts").json()}
        assert {"model.onnx", "model.fp32.onnx", "report.json"} <= set(listed)
        files = {}
        for name in ("model.onnx", "model.fp32.onnx"):
            resp = client.get(f"/v1/jobs/{job_id}/artifacts/{name}")
            assert resp.status_code == 200 and sha256(resp.content) == listed[name]["sha256"]
            check_onnx_drop_in(resp.content)
            files[name] = {n.op_type for n in onnx.load_from_string(resp.content).graph.node}
    assert "DequantizeLinear" in files["model.onnx"]
    assert "DequantizeLinear" not in files["model.fp32.onnx"]
