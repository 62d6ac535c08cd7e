"""Tiny seeded models for the loader, preflight, export and inspector tests, and the
helpers that turn them into upload files (ONNX, a tf2onnx-style graph, .pt2, weights).

The networks themselves come from `tiny_nets` (shared with the pruning tests); this adds
the one with a shape baked into the graph, and the file writers.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from tests.engine.tiny_nets import Conv1dNet, ResConcatNet, TinyResNet, TwoOutputNet, seeded

__all__ = [
    "C2fNet",
    "CRNN",
    "Conv1dNet",
    "ReshapeBakedNet",
    "ResConcatNet",
    "TinyResNet",
    "TwoOutputNet",
    "seeded",
    "save_pt2",
    "tf_style_onnx",
    "to_onnx",
]


class ReshapeBakedNet(nn.Module):
    """`conv1`'s 8 channels are regrouped by a reshape with literal sizes (2 x 4): removing
    any of them breaks the model. `conv2` is freely prunable, `fc` feeds the output."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        n, _, h, w = x.shape
        x = x.reshape(n, 2, 4, h, w).sum(dim=1)
        x = torch.relu(self.conv3(torch.relu(self.conv2(x))))
        return self.fc(x.mean(dim=(2, 3)))


class C2fNet(nn.Module):
    """YOLOv8's C2f block: the first conv's output is split in two along the channels, one
    half feeds a residual bottleneck *and* the concatenation (a split torch-pruning cannot
    follow as it is), then a classifier."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.SiLU())
        self.cv1 = nn.Sequential(nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.SiLU())
        self.m1 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.SiLU())
        self.m2 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.SiLU())
        self.cv2 = nn.Sequential(nn.Conv2d(48, 32, 1), nn.SiLU())
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(self.stem(x)).chunk(2, 1))
        y.append(y[-1] + self.m2(self.m1(y[-1])))
        return self.fc(self.cv2(torch.cat(y, 1)).mean(dim=(2, 3)))


class CRNN(nn.Module):
    """A text-line recogniser: conv features pooled over the height, a bidirectional LSTM
    over the width, per-step class scores (time, batch, classes)."""

    def __init__(self, num_classes: int = 12) -> None:
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv2d(1, 16, 3, 1, 1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, 1, 1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d((2, 1)),
            nn.Conv2d(32, 48, 3, 1, 1),
            nn.BatchNorm2d(48),
            nn.ReLU(),
        )
        self.rnn = nn.LSTM(48, 32, bidirectional=True)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.cnn(x).mean(dim=2).permute(2, 0, 1)  # (width, batch, channels)
        return self.fc(self.rnn(features)[0])


def to_onnx(
    model: nn.Module,
    path: Path,
    input_shape: Sequence[int],
    *,
    input_names: Sequence[str] = ("input",),
    output_names: Sequence[str] = ("output",),
    dynamic: dict[int, str] | None = None,
    opset: int = 17,
) -> Path:
    """Export with torch's TorchScript exporter; `dynamic` maps input dims to names (the
    batch, dim 0, is always dynamic) and outputs get a dynamic batch."""
    dims = {0: "batch", **(dynamic or {})}
    axes = {name: dims for name in input_names}
    axes.update({name: {0: "batch"} for name in output_names})
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(tuple(input_shape), generator=gen)
    torch.onnx.export(
        model.eval(),
        (example,),
        str(path),
        input_names=list(input_names),
        output_names=list(output_names),
        dynamic_axes=axes,
        opset_version=opset,
        dynamo=False,
    )
    return path


def swin_onnx(path: Path, *, dim: int, heads: list[int], window: int, size: int) -> Path:
    """A torchvision Swin of three stages of two blocks, exported for `size`x`size` inputs
    (its window shapes are baked in at that size)."""
    import torchvision

    model = torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=dim, depths=[2, 2, 2], num_heads=heads,
        window_size=[window, window],
    )  # fmt: skip
    return to_onnx(model, path, (1, 3, size, size))


def save_pt2(model: nn.Module, path: Path, input_shape: Sequence[int]) -> Path:
    """A `torch.export` archive with a dynamic batch, as a user would make one."""
    example = torch.randn((2, *input_shape[1:]))
    program = torch.export.export(
        model.eval(), (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, str(path))
    return path


def tf_style_onnx(path: Path, *, nan: bool = False) -> Path:
    """A graph shaped like tf2onnx's output for a small Keras CNN: NHWC input turned NCHW by
    a Transpose, BatchNorms left as per-channel Mul/Add (one pair in NHWC layout after a
    Transpose back, one in NCHW), GlobalAveragePool, Flatten, MatMul + bias Add."""
    rng = np.random.default_rng(0)

    def const(name: str, shape: tuple[int, ...], lo: float = -0.3, hi: float = 0.3) -> TensorProto:
        return numpy_helper.from_array(rng.uniform(lo, hi, shape).astype(np.float32), name)

    inits = [
        const("w1", (8, 3, 3, 3)),
        const("b1", (8,)),
        const("s1", (8,), 0.5, 1.5),
        const("t1", (8,)),
        const("w2", (16, 8, 3, 3)),
        const("b2", (16,)),
        const("s2", (1, 16, 1, 1), 0.5, 1.5),
        const("t2", (1, 16, 1, 1)),
        const("wd", (16, 10)),
        const("bd", (10,)),
    ]
    if nan:  # a BatchNorm scale gone bad
        inits[2] = numpy_helper.from_array(np.full(8, np.nan, np.float32), "s1")
    node = helper.make_node
    nodes = [
        node("Transpose", ["input_1:0"], ["x_nchw"], perm=[0, 3, 1, 2], name="transpose_in"),
        node("Conv", ["x_nchw", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        node("Relu", ["c1"], ["r1"], name="relu1"),
        node("Transpose", ["r1"], ["r1_nhwc"], perm=[0, 2, 3, 1], name="to_nhwc"),
        node("Mul", ["r1_nhwc", "s1"], ["m1"], name="bn1/mul"),
        node("Add", ["m1", "t1"], ["a1"], name="bn1/add"),
        node("Transpose", ["a1"], ["a1_nchw"], perm=[0, 3, 1, 2], name="to_nchw"),
        node(
            "Conv", ["a1_nchw", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv2"
        ),
        node("Relu", ["c2"], ["r2"], name="relu2"),
        node("Mul", ["r2", "s2"], ["m2"], name="bn2/mul"),
        node("Add", ["m2", "t2"], ["a2"], name="bn2/add"),
        node("GlobalAveragePool", ["a2"], ["gap"], name="gap"),
        node("Flatten", ["gap"], ["flat"], name="flatten"),
        node("MatMul", ["flat", "wd"], ["mm"], name="dense/MatMul"),
        node("Add", ["mm", "bd"], ["dense/BiasAdd:0"], name="dense/BiasAdd"),
    ]
    graph = helper.make_graph(
        nodes,
        "tf2onnx",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["unk__0", 16, 16, 3])],
        [helper.make_tensor_value_info("dense/BiasAdd:0", TensorProto.FLOAT, ["unk__0", 10])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="tf2onnx"
    )
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
