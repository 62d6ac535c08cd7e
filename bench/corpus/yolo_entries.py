"""YOLO-style graphs (yolo.py) as corpus entries: ONNX at 128x128, v8 also as a .pt2."""

from functools import partial
from pathlib import Path

from corpus import Built, Entry, yolo
from corpus._export import built_from_torch

SIZE = 128
QUICK = {"yolov5", "yolo11"}


def _build(name: str, fmt: str, workdir: Path) -> Built:
    model = yolo.build(name)
    return built_from_torch(
        model, (1, 3, SIZE, SIZE), workdir, name, fmt=fmt, keep=yolo.head_convs(model)
    )


def entries() -> list[Entry]:
    out = [
        Entry(f"yolo/{n}", "yolo", n, partial(_build, n, "onnx"), quick=n in QUICK)
        for n in yolo.BUILDERS
    ]
    out.append(Entry("yolo/yolov8-pt2", "yolo", "yolov8", partial(_build, "yolov8", "pt2")))
    return out
