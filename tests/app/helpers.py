"""Test doubles and small builders for the API tests (no torch)."""

import io
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.core.errors import Unprocessable
from contract import DatasetInfo, JobSpec, ModelInfo
from infra.db.models import Job, utcnow

KEY_A = "key-alice-0123456789"
KEY_B = "key-bob-0123456789"
AUTH_A = {"Authorization": f"Bearer {KEY_A}"}
AUTH_B = {"Authorization": f"Bearer {KEY_B}"}
PROBLEM = "application/problem+json"


class FakeQueue:
    """Records what would have been sent to the broker."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.fail = False

    def enqueue(self, job_id: str) -> bool:
        if self.fail:
            return False
        self.sent.append(job_id)
        return True

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None


def model_info(input_shape: list[int] | None = None) -> ModelInfo:
    shape = input_shape or [1, 3, 8, 8]
    return ModelInfo(
        format="onnx",
        inputs=[{"name": "input", "shape": ["N", *shape[1:]], "dtype": "float32"}],
        outputs=[{"name": "logits", "shape": ["N", 4], "dtype": "float32"}],
        stats={"params": 220, "macs": 10_000},
        input_shape=shape,
    )


class FakeInspector:
    """Stands in for the child-process inspector where the file contents do not matter."""

    def __init__(self) -> None:
        self.model_result: ModelInfo | Exception = model_info()
        self.dataset_result: DatasetInfo | Exception = DatasetInfo(
            format="npz", num_samples=10, sample_shape=[3, 8, 8], num_classes=4, labeled=True
        )
        self.calls: list[tuple[str, Path, dict[str, Any]]] = []

    async def model(self, path: Path, *, tenant: str, **kwargs: Any) -> ModelInfo:
        assert path.is_file()  # the upload is complete on disk when inspected
        self.calls.append(("model", path, kwargs))
        if isinstance(self.model_result, Exception):
            raise self.model_result
        return self.model_result

    async def dataset(self, path: Path, *, tenant: str) -> DatasetInfo:
        assert path.is_file()
        self.calls.append(("dataset", path, {}))
        if isinstance(self.dataset_result, Exception):
            raise self.dataset_result
        return self.dataset_result


def rejected(code: str, message: str = "bad file") -> Unprocessable:
    return Unprocessable(message, code=code)


def tiny_onnx(channels: int = 3, size: int = 8, dynamic_batch: bool = True) -> bytes:
    """Conv(3->4, 3x3) + ReLU + global average pool + flatten: a valid tiny CNN."""
    weight = np.linspace(-1, 1, 4 * channels * 9, dtype=np.float32).reshape(4, channels, 3, 3)
    w = numpy_helper.from_array(weight, "w")
    b = numpy_helper.from_array(np.zeros(4, dtype=np.float32), "b")
    batch: int | str = "N" if dynamic_batch else 1
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["p"]),
            helper.make_node("Flatten", ["p"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 4])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    buf = io.BytesIO()
    onnx.save(model, buf)
    return buf.getvalue()


def upload_model(
    client: Any, data: bytes = b"model-bytes", headers: dict | None = None, **fields: str
) -> Any:
    return client.post(
        "/v1/models",
        headers=headers or AUTH_A,
        files={"file": ("net.onnx", data, "application/octet-stream")},
        data=fields,
    )


def upload_dataset(
    client: Any, data: bytes = b"dataset-bytes", headers: dict | None = None, **fields: str
) -> Any:
    return client.post(
        "/v1/datasets",
        headers=headers or AUTH_A,
        files={"file": ("d.npz", data, "application/octet-stream")},
        data=fields,
    )


def insert_job(
    factory: Any, tenant: str, model_id: str, status: str = "queued", **extra: Any
) -> str:
    """A job row written directly, as the worker side would leave it."""
    from infra.ids import JOB, new_id

    job_id = new_id(JOB)
    with factory() as session:
        session.add(
            Job(
                id=job_id,
                tenant=tenant,
                model_id=model_id,
                spec=JobSpec().model_dump(mode="json"),
                status=status,
                progress=0.0,
                attempts=0,
                stage_times={},
                created_at=utcnow(),
                **extra,
            )
        )
        session.commit()
    return job_id


def assert_problem(resp: Any, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM), resp.headers
    body = resp.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["title"] and body["type"] and isinstance(body["detail"], str)
    assert "Traceback" not in resp.text
    return body
