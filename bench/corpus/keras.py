"""Keras applications converted with tf2onnx, when TensorFlow can be reached.

TensorFlow is not part of the bench environment (it is large and pins its own protobuf
and numpy). The entries run where it is importable, or with the interpreter of a
virtualenv of its own named by SECATEURS_TF_PYTHON (`bench/coverage.py --tf-python`);
otherwise they are listed as skipped with the line to install it."""

import importlib.util
import os
import subprocess
from functools import partial
from pathlib import Path

from corpus import Built, Entry, SkipEntry

MODELS = {"MobileNetV2": 96, "ResNet50": 96, "EfficientNetB0": 96, "DenseNet121": 96}
INSTALL = "pip install tensorflow tf2onnx, or point --tf-python at a virtualenv that has them"
TF_PYTHON = "SECATEURS_TF_PYTHON"
CONVERTER = Path(__file__).with_name("keras_convert.py")


def _in_process() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("tensorflow", "tf2onnx"))


def _build(name: str, size: int, workdir: Path) -> Built:
    path = workdir / f"{name}.onnx"
    if _in_process():
        from corpus.keras_convert import convert

        try:
            convert(name, size, str(path))
        except Exception as exc:  # noqa: BLE001 - the converter's failure, not the engine's
            raise SkipEntry(f"export: tf2onnx: {exc}") from exc
    else:
        # -P: the script's folder holds this module, which would shadow `keras`.
        cmd = [os.environ[TF_PYTHON], "-P", str(CONVERTER), name, str(size), str(path)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise SkipEntry(f"export: tf2onnx: {last}")
    return Built(model=path, reference=path)


def entries() -> list[Entry]:
    reachable = _in_process() or bool(os.environ.get(TF_PYTHON))
    skip = None if reachable else f"tensorflow not installed: {INSTALL}"
    return [
        Entry(
            f"keras/{n}", "keras", n, partial(_build, n, size), quick=n == "MobileNetV2", skip=skip
        )
        for n, size in MODELS.items()
    ]
