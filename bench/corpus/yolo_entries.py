"""YOLO-style graphs (yolo.py) as corpus entries: ONNX at 128x128, v8 also as a .pt2 and
with NMS in the graph."""

from functools import partial
from pathlib import Path

import torch

from corpus import Built, Entry, yolo
from corpus._export import built_from_torch, export_onnx

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
    out.append(Entry("yolo/yolov8-nms", "yolo", "yolov8", _build_with_nms))
    return out


def _build_with_nms(workdir: Path) -> Built:
    """v8 with NMS in the graph: batch 1, as such exports are."""
    model = yolo.build("yolov8-nms")
    example = (torch.rand(1, 3, SIZE, SIZE),)
    path = export_onnx(model, example, workdir / "yolov8-nms.onnx", dynamic_batch=False)
    return Built(model=path, reference=path, module=model, example=example, keep=[])
