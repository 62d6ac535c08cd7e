"""What each conv and linear layer costs on the runtime the model will be served on.

A latency target is met by choosing per-layer widths, so the planner must know how a
layer's time changes with its input and output widths. MACs are a poor proxy: a
depthwise layer costs far more time per MAC than a dense one, and widths that are not
multiples of 8 or 16 run slowly. So each layer is timed alone in onnxruntime, on the
worker's execution provider, at a small grid of widths; times in between are bilinear
interpolations. Layers of the same shape share measurements, and the measurements are
kept in a JSON file per device, provider, thread count and onnxruntime version, so a
second job on the same machine and input size measures nothing again.
"""

import json
import math
import os
import tempfile
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from worker.engine.measure import benchmark

# Fractions of a layer's full width at which it is timed; widths between are interpolated.
GRID = (0.15, 0.4, 0.7, 1.0)
_WARMUP, _RUNS, _MAX_SECONDS = 3, 15, 0.25


@dataclass(frozen=True)
class LayerShape:
    """A conv or linear layer at its input size, widths aside.

    `spatial` is the input's spatial size for a conv, and the number of rows (positions)
    for a linear layer. `depthwise`: one filter per channel, so a single width matters.
    `groups` of a grouped (not depthwise) conv stays fixed when it is pruned: the
    dependency graph removes the same channels from every group, so its widths are
    multiples of `groups`.
    """

    kind: str  # "conv" or "linear"
    in_full: int
    out_full: int
    spatial: tuple[int, ...] = ()
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    depthwise: bool = False
    groups: int = 1

    def key(self, in_ch: int, out_ch: int) -> str:
        geometry = ",".join(
            "x".join(map(str, part))
            for part in (self.spatial, self.kernel, self.stride, self.padding, self.dilation)
        )
        dw = "dw" if self.depthwise else f"g{self.groups}" if self.groups > 1 else ""
        return f"{self.kind}{dw}|{in_ch}|{out_ch}|{geometry}"


def layer_shape(layer: nn.Module, input_shape: tuple[int, ...]) -> LayerShape | None:
    """The shape of `layer` as it was applied (input shape with batch); None if not timed.

    Transposed convolutions and string paddings are left out: the planner prices them
    by their MACs instead.
    """
    if isinstance(layer, nn.Linear):
        rows = math.prod(input_shape[:-1])
        return LayerShape("linear", layer.in_features, layer.out_features, spatial=(rows,))
    if not isinstance(layer, nn.modules.conv._ConvNd) or layer.transposed:
        return None
    if isinstance(layer.padding, str):
        return None
    depthwise = layer.groups == layer.in_channels == layer.out_channels and layer.groups > 1
    return LayerShape(
        "conv",
        layer.in_channels,
        layer.out_channels,
        spatial=tuple(input_shape[2:]),
        kernel=tuple(layer.kernel_size),
        stride=tuple(layer.stride),
        padding=tuple(layer.padding),
        dilation=tuple(layer.dilation),
        depthwise=depthwise,
        groups=1 if depthwise else layer.groups,
    )


def _grid(full: int, groups: int = 1) -> list[int]:
    """Widths timed for a layer of `full` channels: multiples of 8 where the layer allows,
    and of its `groups` for a grouped conv (the channels per group shrink, not their
    number)."""
    if groups > 1:
        per_group = full // groups
        return sorted({max(1, round(per_group * f)) * groups for f in GRID} | {full})
    multiple = 8 if full >= 16 else 1
    widths = {max(multiple, round(full * f / multiple) * multiple) for f in GRID}
    widths.add(full)
    return sorted(w for w in widths if w <= full)


def _conv_graph(shape: LayerShape, in_ch: int, out_ch: int) -> onnx.ModelProto:
    groups = in_ch if shape.depthwise else shape.groups
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((out_ch, in_ch // groups, *shape.kernel)).astype(np.float32)
    bias = np.zeros(out_ch, dtype=np.float32)
    node = helper.make_node(
        "Conv",
        ["x", "w", "b"],
        ["y"],
        kernel_shape=list(shape.kernel),
        strides=list(shape.stride),
        pads=list(shape.padding) * 2,
        dilations=list(shape.dilation),
        group=groups,
    )
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, in_ch, *shape.spatial])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")]
    return _model(helper.make_graph([node], "layer", [x], [y], inits))


def _linear_graph(shape: LayerShape, in_ch: int, out_ch: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((out_ch, in_ch)).astype(np.float32)
    bias = np.zeros(out_ch, dtype=np.float32)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [shape.spatial[0], in_ch])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")]
    return _model(helper.make_graph([node], "layer", [x], [y], inits))


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


class LayerLatencyTable:
    """Measured milliseconds per layer shape and widths, for one provider and thread count.

    `cache_dir` (optional) keeps measurements between jobs, in a file whose name says
    which device, provider, threads and onnxruntime version they hold.
    """

    def __init__(
        self,
        provider: str = benchmark.CPU,
        *,
        device: str = "cpu",
        threads: int | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.provider = provider
        self.device = device
        self.threads = threads or benchmark.default_threads()
        self._ms: dict[str, float] = {}
        self._lock = threading.Lock()
        self.measured = 0  # layers timed by this table (not read from the cache)
        self._path = self._cache_path(cache_dir) if cache_dir else None
        if self._path is not None and self._path.exists():
            try:
                self._ms = {k: float(v) for k, v in json.loads(self._path.read_text()).items()}
            except (OSError, ValueError, AttributeError):
                self._ms = {}  # a damaged cache is measured again, not trusted

    def _cache_path(self, cache_dir: Path) -> Path:
        where = (
            benchmark.describe_device(self.device)
            if self.provider == benchmark.CUDA
            else (benchmark._cpu_model() or "cpu")
        )
        label = f"{where}-{self.provider}-t{self.threads}-ort{ort.__version__}"
        safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in label)
        return Path(cache_dir) / f"latency-{safe}.json"

    def save(self) -> None:
        """Write the measurements to the cache file (atomically), if there is one."""
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._path.parent, suffix=".partial")
        with os.fdopen(fd, "w") as f:
            json.dump(self._ms, f)
        os.replace(tmp, self._path)

    def point_ms(self, shape: LayerShape, in_ch: int, out_ch: int) -> float:
        """The measured time of `shape` at exactly these widths (timed on first use)."""
        key = shape.key(in_ch, out_ch)
        if key not in self._ms:
            self._ms[key] = self._time(shape, in_ch, out_ch)
            self.measured += 1
        return self._ms[key]

    def layer_ms(self, shape: LayerShape, in_ch: float, out_ch: float) -> float:
        """Milliseconds of `shape` at any widths, interpolated over its grid of timings."""
        if shape.depthwise:
            channels = min(in_ch, out_ch)
            widths = _grid(shape.out_full)
            return _interp1(widths, [self.point_ms(shape, w, w) for w in widths], channels)
        ins, outs = _grid(shape.in_full, shape.groups), _grid(shape.out_full, shape.groups)
        if shape.kind == "conv" and shape.in_full <= 4:
            ins = [shape.in_full]  # the image channels: never pruned
        i0, i1, ti = _bracket(ins, in_ch)
        o0, o1, to = _bracket(outs, out_ch)
        corners = [[self.point_ms(shape, i, o) for o in (o0, o1)] for i in (i0, i1)]
        low = corners[0][0] * (1 - to) + corners[0][1] * to
        high = corners[1][0] * (1 - to) + corners[1][1] * to
        return max(0.0, low * (1 - ti) + high * ti)

    def _time(self, shape: LayerShape, in_ch: int, out_ch: int) -> float:
        build = _conv_graph if shape.kind == "conv" else _linear_graph
        model = build(shape, in_ch, out_ch)
        providers: list = [benchmark.CPU]
        if self.provider == benchmark.CUDA:
            providers = [(benchmark.CUDA, {"device_id": benchmark._cuda_device_id(self.device)})]
        with self._lock:
            session = ort.InferenceSession(
                model.SerializeToString(),
                sess_options=benchmark.session_options(self.threads),
                providers=providers,
            )
        rows = shape.spatial[0] if shape.kind == "linear" else 1
        dims = [rows, in_ch] if shape.kind == "linear" else [1, in_ch, *shape.spatial]
        feeds = {"x": np.random.default_rng(0).standard_normal(dims).astype(np.float32)}
        run = benchmark._runner(session, feeds, self.provider, self.device)
        for _ in range(_WARMUP):
            run()
        times: list[float] = []
        deadline = time.perf_counter() + _MAX_SECONDS
        while len(times) < _RUNS and (len(times) < 5 or time.perf_counter() < deadline):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        # A low percentile: on a shared machine the slow runs are other work, not the layer.
        return float(np.percentile(times, 20) * 1000.0)


def _bracket(widths: list[int], value: float) -> tuple[int, int, float]:
    """Grid points around `value` and its position between them (extrapolates below)."""
    if len(widths) == 1:
        return widths[0], widths[0], 0.0
    value = min(value, widths[-1])
    j = min(max(bisect_left(widths, value), 1), len(widths) - 1)
    lo, hi = widths[j - 1], widths[j]
    return lo, hi, (value - lo) / (hi - lo)


def _interp1(widths: list[int], values: list[float], x: float) -> float:
    lo, hi, t = _bracket(widths, x)
    a, b = values[widths.index(lo)], values[widths.index(hi)]
    return max(0.0, a * (1 - t) + b * t)
