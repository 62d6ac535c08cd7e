"""Keras applications converted with tf2onnx, when tensorflow and tf2onnx are installed.

TensorFlow is not part of the bench environment (it is large and pins its own protobuf
and numpy); without it these entries are listed as skipped with the line to install it."""

import importlib.util
from functools import partial
from pathlib import Path

from corpus import Built, Entry, SkipEntry

MODELS = {"MobileNetV2": 96, "ResNet50": 96, "EfficientNetB0": 96, "DenseNet121": 96}
INSTALL = "pip install tensorflow tf2onnx"


def _build(name: str, size: int, workdir: Path) -> Built:
    import tensorflow as tf
    import tf2onnx

    model = getattr(tf.keras.applications, name)(weights=None, input_shape=(size, size, 3))
    spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="input"),)
    path = workdir / f"{name}.onnx"
    try:
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(path))
    except Exception as exc:  # noqa: BLE001 - the converter's failure, not the engine's
        raise SkipEntry(f"export: tf2onnx: {exc}") from exc
    return Built(model=path, reference=path)


def entries() -> list[Entry]:
    missing = [m for m in ("tensorflow", "tf2onnx") if importlib.util.find_spec(m) is None]
    skip = f"tensorflow not installed: {INSTALL}" if missing else None
    return [
        Entry(
            f"keras/{n}", "keras", n, partial(_build, n, size), quick=n == "MobileNetV2", skip=skip
        )
        for n, size in MODELS.items()
    ]
