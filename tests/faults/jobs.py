"""Tiny inputs and job bodies for the fault tests (8x8 images, a 4-class conv net)."""

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from contract import TERMINAL_STATUSES
from tests.conftest import Service
from tests.e2e.helpers import wait_for
from tests.faults.conftest import job_row
from tests.security import payloads

TERMINAL = TERMINAL_STATUSES


def upload_inputs(client: httpx.Client, tmp: Path) -> tuple[str, str]:
    """Upload the tiny model and a 64-sample labelled dataset; returns their ids."""
    ids = []
    rng = np.random.default_rng(0)
    np.savez(
        tmp / "d.npz",
        x=rng.standard_normal((64, 3, 8, 8), dtype=np.float32),
        y=rng.integers(0, 4, 64),
    )
    for kind, path in (("models", payloads.tiny_onnx(tmp / "m.onnx")), ("datasets", tmp / "d.npz")):
        with path.open("rb") as fh:
            resp = client.post(f"/v1/{kind}", files={"file": (path.name, fh)}, timeout=120)
        # 200: the same file was uploaded before (an earlier test), and comes back.
        assert resp.status_code in (200, 201), resp.text
        ids.append(resp.json()["id"])
    return ids[0], ids[1]


def upload_big_dataset(client: httpx.Client, tmp: Path, n: int = 8192) -> str:
    """`n` labelled samples: enough to make evaluation a stage one can catch."""
    rng = np.random.default_rng(1)
    path = tmp / "big.npz"
    np.savez(path, x=rng.standard_normal((n, 3, 8, 8), dtype=np.float32), y=rng.integers(0, 4, n))
    with path.open("rb") as fh:
        resp = client.post("/v1/datasets", files={"file": (path.name, fh)}, timeout=120)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def body(
    model_id: str,
    dataset_id: str | None = None,
    *,
    epochs: int = 2,
    iterations: int = 3,
    batch_size: int = 8,
    steps: int = 1,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model_id": model_id,
        "prune": {"target": {"channel_ratio": 0.5}, "iterative_steps": steps},
        "benchmark": {
            "providers": ["cpu"],
            "batch_sizes": [1],
            "warmup": 1,
            "iterations": iterations,
        },
        "finetune": None,
    }
    if dataset_id:
        out["dataset_id"] = dataset_id
        out["finetune"] = {"epochs": epochs, "batch_size": batch_size, "lr": 0.01, "distill": False}
    return out


def submit(client: httpx.Client, job: dict[str, Any]) -> str:
    resp = client.post("/v1/jobs", json=job)
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def finish(client: httpx.Client, job_id: str, timeout_s: float = 240) -> dict[str, Any]:
    return wait_for(
        client, job_id, lambda j: j["status"] in TERMINAL, timeout_s=timeout_s, interval_s=0.2
    )


def kill_run(service: Service, job_id: str) -> int:
    """SIGKILL the process running `job_id` now (the worker's pool child); returns its pid."""
    pid = int(job_row(service, job_id)["worker"].rpartition(":")[2])
    os.kill(pid, signal.SIGKILL)
    return pid


def wait_running(service: Service, job_id: str, attempts: int, timeout_s: float = 120) -> None:
    """Until attempt number `attempts` of the job is running."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = job_row(service, job_id)
        if row["status"] == "running" and row["attempts"] == attempts:
            return
        time.sleep(0.05)
    raise AssertionError(f"attempt {attempts} of {job_id} never ran: {job_row(service, job_id)}")
