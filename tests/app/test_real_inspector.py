"""Uploads through the real inspector child process (`python -m worker.engine.inspect`)."""

import importlib.util
import io
import pickle

import numpy as np
import pytest

from app.inspector import Inspector
from infra.config import Settings
from infra.sandbox import Sandbox
from tests.app.helpers import (
    AUTH_A,
    assert_problem,
    tiny_onnx,
    upload_dataset,
    upload_model,
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("worker.engine.inspect") is None,
    reason="the engine's inspector module is not present",
)


@pytest.fixture
def real(app, settings: Settings):
    app.state.inspector = Inspector(
        sandbox=Sandbox.from_settings(settings),
        scratch_root=settings.data_dir / "scratch",
        timeout_s=120,
    )
    return app


@pytest.mark.slow  # the child imports torch and converts the model: about 10 s here
def test_onnx_upload_is_inspected_for_real(client, real):
    resp = upload_model(client, tiny_onnx())
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["format"] == "onnx"
    assert body["inputs"][0]["name"] == "input"
    assert body["inputs"][0]["shape"][1:] == [3, 8, 8]
    assert body["outputs"][0]["name"] == "logits"
    assert body["input_shape"] == [1, 3, 8, 8]
    assert body["stats"]["params"] == 4 * 3 * 9 + 4
    assert body["stats"]["macs"] == 4 * 3 * 9 * 8 * 8


def test_garbage_and_pickled_code_are_refused(client, real, app):
    assert_problem(upload_model(client, b"this is not a model" * 10), 422, "invalid_model")
    # A pickle that would call os.system when loaded: refused without being unpickled.
    evil = pickle.dumps(Exploit(), protocol=2)
    body = assert_problem(upload_model(client, evil), 422, "unsafe_format")
    assert "pickle" in body["detail"]
    assert client.get("/v1/models", headers=AUTH_A).json()["items"] == []
    assert list((app.state.settings.data_dir / "tmp").iterdir()) == []


class Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_npz_dataset_is_inspected_for_real(client, real):
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(
        buf, x=rng.random((12, 3, 8, 8), dtype=np.float32), y=np.arange(12, dtype=np.int64) % 3
    )
    resp = upload_dataset(client, buf.getvalue())
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert (body["format"], body["num_samples"], body["sample_shape"]) == ("npz", 12, [3, 8, 8])
    assert body["labeled"] is True and body["num_classes"] == 3


def _tiny_resnet_onnx() -> bytes:
    import torch

    from tests.engine.tiny_nets import TinyResNet, seeded

    buf = io.BytesIO()
    torch.onnx.export(
        seeded(TinyResNet),
        (torch.zeros(1, 3, 16, 16),),
        buf,
        dynamo=False,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}},
        opset_version=17,
    )
    return buf.getvalue()


@pytest.mark.slow  # two sandboxed children import torch: about 20 s here
def test_a_models_prunability_is_analysed_on_request(client, real):
    import time

    from tests.app.helpers import AUTH_B

    model_id = upload_model(client, _tiny_resnet_onnx()).json()["id"]
    first = client.get(f"/v1/models/{model_id}/prunability", headers=AUTH_A)
    assert first.status_code == 200, first.text
    assert first.json()["status"] in ("analyzing", "ready")
    assert_problem(
        client.get(f"/v1/models/{model_id}/prunability", headers=AUTH_B), 404, "not_found"
    )
    deadline = time.monotonic() + 120
    body = first.json()
    while body["status"] == "analyzing" and time.monotonic() < deadline:
        time.sleep(0.5)
        body = client.get(f"/v1/models/{model_id}/prunability", headers=AUTH_A).json()
    assert body["status"] == "ready", body
    report = body["prunability"]
    groups = {g["layer"]: g for g in report["groups"]}
    protected = [g for g in groups.values() if not g["prunable"]]
    assert report["prunable_groups"] >= 3 and report["protected_groups"] == len(protected) >= 1
    assert all(g["reason"] and g["why"] for g in protected)
    assert any(g["reason"] == "reaches_output" and g["channels"] == 10 for g in protected)
    assert 0.5 < report["max_macs_reduction"] < 1.0
