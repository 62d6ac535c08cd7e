"""Uploads through the real inspector child process (`python -m worker.engine.inspect`)."""

import importlib.util
import io
import pickle

import numpy as np
import pytest

from app.core.config import Settings
from app.inspector import Inspector
from app.sandbox import Sandbox
from tests.app.helpers import (
    AUTH_A,
    assert_problem,
    tiny_onnx,
    upload_dataset,
    upload_model,
)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("worker.engine.inspect") is None,
                                reason="the engine's inspector module is not present")


@pytest.fixture
def real(app, settings: Settings):
    app.state.inspector = Inspector(sandbox=Sandbox.from_settings(settings),
                                    scratch_root=settings.data_dir / "scratch",
                                    timeout_s=120)
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
    np.savez(buf, x=rng.random((12, 3, 8, 8), dtype=np.float32),
             y=np.arange(12, dtype=np.int64) % 3)
    resp = upload_dataset(client, buf.getvalue())
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert (body["format"], body["num_samples"], body["sample_shape"]) == ("npz", 12, [3, 8, 8])
    assert body["labeled"] is True and body["num_classes"] == 3
