"""Another tenant's resources answer 404 for every method, in every state: reads,
downloads, cancels, deletes, events, and use as `model_id`/`dataset_id` in a job."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Service
from tests.e2e.helpers import QUICK_BENCH, wait_for
from tests.security import payloads
from tests.security.helpers import assert_problem, assert_ready, upload

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def alice(service: Service, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Alice's model, dataset and a finished job with artifacts."""
    tmp = tmp_path_factory.mktemp("alice")
    with service.client(service.key_a) as client:
        resp = upload(client, "models", payloads.tiny_onnx(tmp / "tiny.onnx"))
        assert resp.status_code == 201, resp.text
        model = resp.json()
        dataset_path = tmp / "d.npz"
        import numpy as np

        rng = np.random.default_rng(0)
        np.savez(
            dataset_path,
            x=rng.standard_normal((16, 3, 8, 8), dtype=np.float32),
            y=rng.integers(0, 4, 16),
        )
        resp = upload(client, "datasets", dataset_path)
        assert resp.status_code == 201, resp.text
        dataset = resp.json()
        resp = client.post(
            "/v1/jobs",
            json={
                "model_id": model["id"],
                "finetune": None,
                "benchmark": QUICK_BENCH,
                "prune": {"target": {"channel_ratio": 0.5}, "iterative_steps": 1},
            },
        )
        assert resp.status_code == 202, resp.text
        job = wait_for(
            client,
            resp.json()["id"],
            lambda j: j["status"] in ("succeeded", "failed", "cancelled"),
            timeout_s=240,
        )
    assert job["status"] == "succeeded", (job, service.logs())
    return {"model": model, "dataset": dataset, "job": job}


@pytest.fixture
def bob(service: Service) -> Iterator[httpx.Client]:
    with service.client(service.key_b) as client:
        yield client


def _requests(a: dict[str, Any]) -> list[tuple[str, str]]:
    m, d, j = a["model"]["id"], a["dataset"]["id"], a["job"]["id"]
    return [
        ("GET", f"/v1/models/{m}"),
        ("GET", f"/v1/models/{m}/file"),
        ("DELETE", f"/v1/models/{m}"),
        ("GET", f"/v1/datasets/{d}"),
        ("DELETE", f"/v1/datasets/{d}"),
        ("GET", f"/v1/jobs/{j}"),
        ("POST", f"/v1/jobs/{j}/cancel"),
        ("GET", f"/v1/jobs/{j}/report"),
        ("GET", f"/v1/jobs/{j}/artifacts"),
        ("GET", f"/v1/jobs/{j}/artifacts/model.onnx"),
        ("GET", f"/v1/jobs/{j}/artifacts/report.json"),
        ("GET", f"/v1/jobs/{j}/events"),
    ]


@pytest.mark.parametrize("index", range(12))
def test_other_tenants_resources_are_not_found(
    service: Service, alice: dict, bob: httpx.Client, index: int
) -> None:
    method, path = _requests(alice)[index]
    assert_problem(bob.request(method, path), 404, "not_found")
    # Alice still has them all: nothing was deleted, cancelled or moved by bob.
    with service.client(service.key_a) as client:
        assert client.get(f"/v1/models/{alice['model']['id']}").status_code == 200
        assert client.get(f"/v1/datasets/{alice['dataset']['id']}").status_code == 200
        assert client.get(f"/v1/jobs/{alice['job']['id']}").json()["status"] == "succeeded"
        assert client.get(f"/v1/jobs/{alice['job']['id']}/artifacts/model.onnx").status_code == 200
    assert_ready(service)


def test_job_on_another_tenants_model(service: Service, alice: dict, bob: httpx.Client) -> None:
    resp = bob.post("/v1/jobs", json={"model_id": alice["model"]["id"]})
    assert_problem(resp, 404, "not_found")
    assert bob.get("/v1/jobs").json()["items"] == []
    assert_ready(service)


def test_job_on_another_tenants_dataset(
    service: Service, alice: dict, bob: httpx.Client, tmp_path: Path
) -> None:
    resp = upload(bob, "models", payloads.tiny_onnx(tmp_path / "bobs.onnx"))
    assert resp.status_code == 201, resp.text
    resp = bob.post(
        "/v1/jobs", json={"model_id": resp.json()["id"], "dataset_id": alice["dataset"]["id"]}
    )
    assert_problem(resp, 404, "not_found")
    assert bob.get("/v1/jobs").json()["items"] == []
    assert_ready(service)


def test_lists_hold_only_own_resources(service: Service, alice: dict, bob: httpx.Client) -> None:
    for kind in ("models", "datasets", "jobs"):
        ids = {item["id"] for item in bob.get(f"/v1/{kind}").json()["items"]}
        assert alice[kind[:-1] if kind != "datasets" else "dataset"]["id"] not in ids
    assert_ready(service)
