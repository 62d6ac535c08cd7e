"""Tiny seeded payloads and HTTP steps shared by the end-to-end tests."""

import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from contract import TERMINAL_STATUSES

TERMINAL = TERMINAL_STATUSES
INPUT_SHAPE = (1, 3, 32, 32)
NUM_CLASSES = 10
# Cheap benchmark settings: the e2e tests check the plumbing, not the speed.
QUICK_BENCH = {"providers": ["cpu"], "batch_sizes": [1], "warmup": 1, "iterations": 3}


def build_onnx(path: Path) -> Path:
    """A seeded 32x32 CNN (two conv blocks, BN, ReLU, pooling, a linear head) as ONNX with
    a dynamic batch dimension; input `image`, output `logits`."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, NUM_CLASSES),
    ).eval()
    torch.onnx.export(
        net,
        (torch.randn(*INPUT_SHAPE),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return path


def build_npz(path: Path, n: int = 64) -> Path:
    """`n` seeded float32 samples of 3x32x32 with labels in 0..9."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, *INPUT_SHAPE[1:]), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, size=n).astype(np.int64)
    np.savez(path, x=x, y=y)
    return path


def upload(client: httpx.Client, kind: str, path: Path) -> dict[str, Any]:
    """POST /v1/models or /v1/datasets; returns the created resource."""
    with path.open("rb") as fh:
        resp = client.post(f"/v1/{kind}", files={"file": (path.name, fh)}, data={"name": path.stem})
    # 200: the tenant had uploaded the same file before, and gets that upload back.
    assert resp.status_code in (200, 201), resp.text
    return resp.json()


def submit(
    client: httpx.Client, body: dict[str, Any], idempotency_key: str | None = None
) -> httpx.Response:
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return client.post("/v1/jobs", json=body, headers=headers)


def job_body(
    model_id: str, dataset_id: str | None = None, *, epochs: int | None = 2, batch_size: int = 16
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model_id": model_id,
        "prune": {"target": {"macs_reduction": 0.4}, "iterative_steps": 2},
        "benchmark": QUICK_BENCH,
    }
    if dataset_id:
        body["dataset_id"] = dataset_id
        body["finetune"] = {"epochs": epochs, "batch_size": batch_size, "lr": 0.01}
    else:
        body["finetune"] = None
    return body


def follow_events(client: httpx.Client, job_id: str, timeout_s: float = 300) -> list[dict]:
    """Read the job's SSE stream to its end; returns [{"event", "id", "data"}, …]."""
    events: list[dict] = []
    current: dict[str, Any] = {}
    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout_s) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if not line:
                if "data" in current:
                    events.append(current)
                current = {}
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                current["data"] = json.loads(value)
            elif field in ("event", "id"):
                current[field] = value
    return events


def wait_for(
    client: httpx.Client, job_id: str, predicate, timeout_s: float = 120, interval_s: float = 0.1
) -> dict[str, Any]:
    """Poll GET /v1/jobs/{id} until `predicate(job)`; returns the job."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if predicate(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting on {job_id}: {job}")
        time.sleep(interval_s)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_onnx_drop_in(data: bytes) -> None:
    """The downloaded model keeps the original's I/O names and output shapes."""
    import onnxruntime as ort

    sess = ort.InferenceSession(io.BytesIO(data).getvalue(), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    for batch in (1, 3):
        x = np.random.default_rng(1).standard_normal((batch, *INPUT_SHAPE[1:]), dtype=np.float32)
        (out,) = sess.run(None, {"image": x})
        assert out.shape == (batch, NUM_CLASSES) and np.isfinite(out).all()


def core_scenario(client: httpx.Client, workdir: Path) -> dict[str, Any]:
    """Upload a model and a dataset, prune with fine-tuning, follow the events to the end,
    check the report and the downloaded model. Returns the job and its artifacts."""
    model = upload(client, "models", build_onnx(workdir / "tiny.onnx"))
    assert model["format"] == "onnx" and model["input_shape"] == list(INPUT_SHAPE)
    dataset = upload(client, "datasets", build_npz(workdir / "tiny.npz"))
    assert dataset["num_samples"] == 64 and dataset["labeled"] is True

    resp = submit(client, job_body(model["id"], dataset["id"]))
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["status"] == "queued" and resp.headers["location"] == f"/v1/jobs/{job['id']}"

    events = follow_events(client, job["id"])
    statuses = [e["data"]["status"] for e in events if e.get("event") == "status"]
    assert statuses[-1] == "succeeded", (statuses, client.get(f"/v1/jobs/{job['id']}").json())
    assert "running" in statuses
    stages = [e["data"]["stage"] for e in events if e.get("event") == "progress"]
    assert "finetuning" in stages and "exporting" in stages
    progress = [e["data"]["progress"] for e in events if e.get("event") == "progress"]
    assert progress == sorted(progress) and progress[-1] <= 1.0

    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert (done["status"], done["progress"], done["attempts"]) == ("succeeded", 1.0, 1)
    report = client.get(f"/v1/jobs/{job['id']}/report").json()
    assert report["pruned"]["macs"] < report["original"]["macs"]
    assert report["ratios"]["macs"] > 1.0
    assert report["original"]["macs"] == model["stats"]["macs"]

    artifacts = {a["name"]: a for a in client.get(f"/v1/jobs/{job['id']}/artifacts").json()}
    assert {"model.onnx", "report.json"} <= set(artifacts)
    resp = client.get(f"/v1/jobs/{job['id']}/artifacts/model.onnx")
    assert resp.status_code == 200
    assert sha256(resp.content) == artifacts["model.onnx"]["sha256"]
    assert len(resp.content) == artifacts["model.onnx"]["size_bytes"]
    check_onnx_drop_in(resp.content)
    return {
        "model": model,
        "dataset": dataset,
        "job": done,
        "artifacts": artifacts,
        "onnx": resp.content,
    }
