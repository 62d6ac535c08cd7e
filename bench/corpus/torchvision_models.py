"""torchvision: every classification model, every segmentation model, the detectors."""

import re
from functools import partial
from pathlib import Path

import torch
import torchvision
from torch import nn

from corpus import Built, Entry
from corpus._export import Flat, built_from_torch, export_onnx

# Smallest input each family accepts comfortably (AlexNet's 6x6 and VGG's 7x7 adaptive
# pooling export only from an input that pools to it exactly), the rest at 64x64 to keep
# the bench short.
# ViT and MaxViT are built for their input size and fixed at it.
SIZES = {
    "alexnet": 224,
    "vgg": 224,
    "inception_v3": 96,
    "maxvit_t": 224,
    "swin": 224,
    "vit_h_14": 56,
    "vit": 64,
}
# Constructor arguments for models whose input size is a parameter.
KWARGS = {"vit": {"image_size": 64}, "vit_h_14": {"image_size": 56}}
QUICK = {
    "resnet18",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "shufflenet_v2_x0_5",
    "regnet_x_400mf",
}
FAMILIES = (
    "wide_resnet", "resnext", "resnet", "vgg", "densenet", "mobilenet", "efficientnet",
    "regnet", "convnext", "vit", "swin", "maxvit", "squeezenet", "shufflenet", "mnasnet",
    "googlenet", "inception", "alexnet", "fcn", "deeplabv3", "lraspp", "fasterrcnn", "fcos",
    "retinanet", "ssdlite", "ssd", "keypointrcnn", "maskrcnn",
)  # fmt: skip
DETECTORS = (
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fcos_resnet50_fpn",
    "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
    "ssd300_vgg16",
    "ssdlite320_mobilenet_v3_large",
    "keypointrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2",
)


def family(name: str) -> str:
    return next((f for f in FAMILIES if name.startswith(f)), re.sub(r"[\d_].*", "", name))


def _lookup(table: dict, name: str):
    for key in sorted(table, key=len, reverse=True):
        if name.startswith(key):
            return table[key]
    return None


def _classifier(name: str, workdir: Path) -> Built:
    kwargs = _lookup(KWARGS, name) or {}
    if name in ("googlenet", "inception_v3"):
        kwargs = {**kwargs, "aux_logits": False, "init_weights": False}
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    size = _lookup(SIZES, name) or 64
    return built_from_torch(model, (1, 3, size, size), workdir, name)


def _segmenter(name: str, workdir: Path) -> Built:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None)
    wrapped = Flat(model.eval())
    keep = [m for m in (model.classifier, getattr(model, "aux_classifier", None)) if m]
    last_convs = [[c for c in head.modules() if isinstance(c, nn.Conv2d)][-1] for head in keep]
    if name.startswith("lraspp"):
        last_convs = [model.classifier.low_classifier, model.classifier.high_classifier]
    names = ["out", "aux"] if getattr(model, "aux_classifier", None) is not None else ["out"]
    return built_from_torch(
        wrapped, (1, 3, 128, 128), workdir, name, keep=last_convs, output_names=names
    )


class _ImageList(nn.Module):
    """torchvision detectors take a list of CHW images; the export takes one tensor."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.inner([image])[0]
        return tuple(out.values())


def _detector(name: str, workdir: Path) -> Built:
    torch.manual_seed(0)
    kwargs = {"weights": None, "weights_backbone": None}
    size = 320 if "320" in name or "ssd" in name else 256
    if "rcnn" in name or "fcos" in name or "retinanet" in name:
        kwargs.update(min_size=size, max_size=size)
    model = _ImageList(torchvision.models.get_model(name, **kwargs).eval())
    example = (torch.rand(3, size, size),)
    path = export_onnx(model, example, workdir / f"{name}.onnx", dynamic_batch=False)
    return Built(model=path, reference=path, module=model, example=example, keep=[])


def entries() -> list[Entry]:
    classifiers = torchvision.models.list_models(module=torchvision.models)
    segmenters = torchvision.models.list_models(module=torchvision.models.segmentation)
    out = [
        Entry(f"tv/{n}", "torchvision", family(n), partial(_classifier, n), quick=n in QUICK)
        for n in classifiers
    ]
    out += [
        Entry(f"tv/{n}", "torchvision", family(n), partial(_segmenter, n),
              quick=n == "lraspp_mobilenet_v3_large")
        for n in segmenters
    ]  # fmt: skip
    out += [
        Entry(f"tv/{n}", "torchvision", family(n), partial(_detector, n),
              quick=n == "ssdlite320_mobilenet_v3_large")
        for n in DETECTORS
    ]  # fmt: skip
    return out
