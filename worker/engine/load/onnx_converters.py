"""ONNX -> torch: converters onnx2torch lacks, and the rewrites that make its graphs prunable.

Importing this module registers, with onnx2torch's `add_converter`:
- newer opset versions of ops whose semantics did not change beyond new element types
  (Conv-22, Shape-21, Reshape-19/21, ... aliased to onnx2torch's own converter);
- opset-18 forms whose attributes became inputs (Reduce*, Split, Pad, Resize);
- ops it does not know: LSTM, GRU, Gelu, Mish, GlobalMaxPool, GroupNormalization,
  Upsample, Size;
- HardSigmoid with PyTorch's constants as torch's own `nn.Hardsigmoid` (one node on
  export, not three).

`make_prunable(gm, inputs)` then rewrites an onnx2torch GraphModule into
plain torch where torch-pruning needs it:
- per-channel constants (`x * c`, `x + c` with `c` of shape (C,1,1), as tf2onnx leaves
  a BatchNorm) become `ChannelConst` modules, which `preflight.CUSTOM_PRUNERS` teaches
  torch-pruning to prune together with the channels they scale;
- `Reshape` by a constant that only flattens becomes `torch.flatten`, and other constant
  reshapes keep the batch and channel dims symbolic, so pruning channels does not
  break a shape baked into the graph;
- `MatMul` by a constant matrix becomes `nn.Linear`;
- a convolution across the channels of a pooled vector (ECA attention: reshape to
  (N, 1, C), Conv1d, reshape back) becomes one `ChannelConv1d`, and a reshape of a
  rank-4 tensor that splits or merges its channel dim with others (a detection head's
  (N, A*K, H, W) -> (N, A, K, H, W), attention heads) or a MatMul of two computed
  tensors becomes a `ChannelRegroup`, which `tp_extensions` teaches torch-pruning not to
  follow (see there);

`fix_outputs` makes the graph return exactly the ONNX outputs, in order.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import onnx.defs
import onnx2torch.node_converters.pad as _onnx2torch_pad
import torch
import torch.nn.functional as F
from onnx2torch.node_converters.clip import OnnxClip
from onnx2torch.node_converters.pad import OnnxPadStatic
from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes, OnnxReduceSumStaticAxes
from onnx2torch.node_converters.registry import (
    _CONVERTER_REGISTRY,
    OperationDescription,
    add_converter,
)
from onnx2torch.node_converters.reshape import OnnxReshape
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxMapping,
    OperationConverterResult,
    get_const_value,
    onnx_mapping_from_node,
)
from torch import fx, nn

# onnx2torch's custom ONNX export reads the opset from `torch.onnx.symbolic_helper.GLOBALS`,
# which torch 2.9+ only keeps inside its TorchScript exporter package: put it back.
try:
    from torch.onnx import symbolic_helper as _symbolic_helper

    if not hasattr(_symbolic_helper, "GLOBALS"):
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

        _symbolic_helper.GLOBALS = GLOBALS  # type: ignore[attr-defined]
except ImportError:  # an older torch: onnx2torch finds it by itself
    pass

# --- version aliases ---------------------------------------------------------------------

# Ops whose later versions only added element types (bfloat16, int4, float8, ...): the
# converter for the newest version onnx2torch knows is still right for float models.
_TYPE_ONLY_BUMPS = (
    "Acos",
    "Asin",
    "Atan",
    "Cos",
    "Sin",
    "Tan",
    "Cast",
    "Celu",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "ConvTranspose",
    "DepthToSpace",
    "Dropout",
    "Einsum",
    "Elu",
    "Equal",
    "EyeLike",
    "Flatten",
    "GlobalAveragePool",
    "GreaterOrEqual",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "InstanceNormalization",
    "IsInf",
    "IsNaN",
    "LessOrEqual",
    "MaxPool",
    "Mod",
    "Range",
    "Reshape",
    "RoiAlign",
    "Round",
    "ScatterND",
    "Selu",
    "Shape",
    "Softplus",
    "Softsign",
    "Squeeze",
    "TopK",
    "Transpose",
    "Unsqueeze",
)


@functools.cache
def _all_schema_versions() -> dict[str, list[int]]:
    versions: dict[str, set[int]] = {}
    for schema in onnx.defs.get_all_schemas_with_history():
        if schema.domain == "":
            versions.setdefault(schema.name, set()).add(schema.since_version)
    return {name: sorted(v) for name, v in versions.items()}


def _schema_versions(op_type: str) -> list[int]:
    return _all_schema_versions().get(op_type, [])


def _registered_versions(op_type: str) -> list[int]:
    return sorted(
        d.version for d in _CONVERTER_REGISTRY if d.operation_type == op_type and d.domain == ""
    )


def _existing(op_type: str, version: int | None = None) -> Callable[..., OperationConverterResult]:
    """onnx2torch's converter for `op_type` at `version` (default: its newest)."""
    if version is None:
        version = _registered_versions(op_type)[-1]
    return _CONVERTER_REGISTRY[OperationDescription("", op_type, version)]


def _register(op_type: str, versions: Sequence[int], fn: Callable[..., Any]) -> None:
    for version in versions:
        if OperationDescription("", op_type, version) not in _CONVERTER_REGISTRY:
            add_converter(operation_type=op_type, version=version)(fn)


def _newer_than_registered(op_type: str) -> list[int]:
    known = _registered_versions(op_type)
    newest = known[-1] if known else 0
    return [v for v in _schema_versions(op_type) if v > newest]


for _op in _TYPE_ONLY_BUMPS:
    if _registered_versions(_op):
        _register(_op, _newer_than_registered(_op), _existing(_op))


def _attr_is_default(node: OnnxNode, name: str, default: Any) -> bool:
    value = node.attributes.get(name, default)
    if isinstance(value, list | tuple):
        return (
            all(v == default for v in value)
            if not isinstance(default, list)
            else (list(value) == default)
        )
    return value == default


def _average_pool_19(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    dilations = node.attributes.get("dilations")
    if dilations and any(d != 1 for d in dilations):
        raise NotImplementedError("AveragePool with dilations is not implemented")
    return _existing("AveragePool", 11)(node, graph)


_register("AveragePool", [19, 22], _average_pool_19)


def _const_ints(name: str, graph: OnnxGraph) -> list[int] | None:
    """A constant integer input as a Python list, None when absent or computed."""
    if not name:
        return None
    try:
        value = get_const_value(name, graph)
    except KeyError:
        return None
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.flatten().tolist()]
    if isinstance(value, list | tuple):
        return [int(v) for v in value]
    return [int(value)]


def _input(node: OnnxNode, i: int) -> str:
    return node.input_values[i] if len(node.input_values) > i else ""


def _rank(name: str, graph: OnnxGraph) -> int | None:
    info = graph.value_info.get(name)
    if info is None or not info.type.tensor_type.HasField("shape"):
        return None
    return len(info.type.tensor_type.shape.dim)


def _only_first_input(node: OnnxNode) -> OnnxMapping:
    return OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values)


# --- Reduce*, Split, Pad, Resize at opset 18+ (attributes that became inputs) ---------------


class _Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _reduce_18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    keepdims = node.attributes.get("keepdims", 1)
    noop = node.attributes.get("noop_with_empty_axes", 0)
    axes_name = _input(node, 1)
    axes = _const_ints(axes_name, graph)
    if axes_name and axes is None:
        raise NotImplementedError(f"{node.operation_type} with computed axes is not implemented")
    if not axes and noop:
        return OperationConverterResult(_Identity(), _only_first_input(node))
    module: nn.Module
    if node.operation_type == "ReduceSum":
        module = OnnxReduceSumStaticAxes(axes=axes or [], keepdims=keepdims)
    else:
        module = OnnxReduceStaticAxes(node.operation_type, axes=axes or None, keepdims=keepdims)
    return OperationConverterResult(module, _only_first_input(node))


for _op in (
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSumSquare",
):
    _register(_op, [v for v in _newer_than_registered(_op) if v in (18, 20)], _reduce_18)


class Split(nn.Module):
    """ONNX Split with static sizes (or `num_outputs` chunks, the last one smaller)."""

    def __init__(self, axis: int, sizes: list[int] | None, num_outputs: int) -> None:
        super().__init__()
        self.axis, self.sizes, self.num_outputs = axis, sizes, num_outputs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.sizes is not None:
            return torch.split(x, self.sizes, dim=self.axis)
        return torch.split(x, math.ceil(x.shape[self.axis] / self.num_outputs), dim=self.axis)


def _split_18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    sizes_name = _input(node, 1)
    sizes = _const_ints(sizes_name, graph)
    if sizes_name and sizes is None:
        raise NotImplementedError("Split with computed split sizes is not implemented")
    module = Split(node.attributes.get("axis", 0), sizes, len(node.output_values))
    return OperationConverterResult(module, _only_first_input(node))


_register("Split", [18], _split_18)


def _one_part_split(fallback: Callable[..., OperationConverterResult]) -> Callable[..., Any]:
    """A Split into one part is its input. onnx2torch's returns `torch.split`'s tuple of
    one tensor, and as the node has one output, its users got the tuple (SSD300's head:
    "'tuple' object has no attribute 'dim'")."""

    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        if len(node.output_values) == 1:
            return OperationConverterResult(_Identity(), _only_first_input(node))
        return fallback(node, graph)

    return convert


for _version in _registered_versions("Split"):
    _key = OperationDescription("", "Split", _version)
    _CONVERTER_REGISTRY[_key] = _one_part_split(_CONVERTER_REGISTRY[_key])


def _pad_18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    mode = node.attributes.get("mode", "constant")
    if mode == "wrap":
        mode = "circular"
    pads = _const_ints(_input(node, 1), graph)
    value_name = _input(node, 2)
    axes_name = _input(node, 3)
    axes = _const_ints(axes_name, graph)
    rank = _rank(node.input_values[0], graph)
    if pads is None or (axes_name and axes is None):
        if not axes_name:
            return _existing("Pad", 13)(node, graph)
        raise NotImplementedError("Pad with computed pads or axes is not implemented")
    if axes is not None:
        if rank is None:
            raise NotImplementedError("Pad with axes needs the input rank")
        full = [0] * (2 * rank)
        for i, axis in enumerate(axes):
            axis %= rank
            full[axis], full[rank + axis] = pads[i], pads[len(axes) + i]
        pads = full
    value = 0.0
    if value_name:
        const = get_const_value(value_name, graph)
        value = float(const.item() if isinstance(const, torch.Tensor) else const)
    module = OnnxPadStatic.create_from_onnx_params(
        onnx_pads=pads,
        onnx_mode="constant" if mode == "circular" else mode,
        constant_value=value,
    )
    if mode == "circular":
        module.mode = "circular"
    return OperationConverterResult(module, _only_first_input(node))


_register("Pad", _newer_than_registered("Pad"), _pad_18)


def _inner_pads(pads: list[int], mode: str) -> list[int]:
    """torch's pad list (last dim first) without the trailing unpadded outer dims: torch
    pads at most three inner dims in the non-constant modes. Replaces onnx2torch's
    version, which assumes a rank-3 to rank-5 tensor (a waveform `[N, samples]` padded by
    reflection, as audio models' STFT does, is rank 2)."""
    if mode == "constant":
        return list(pads)
    pads = [int(p) for p in pads]
    while len(pads) > 2 and pads[-2:] == [0, 0]:
        pads = pads[:-2]
    if len(pads) > 6:
        raise NotImplementedError(f"{mode} padding of more than the last 3 dimensions")
    return pads


def _pad_any_rank(x: torch.Tensor, pads: list[int], mode: str, value: Any) -> torch.Tensor:
    """F.pad, for a tensor of any rank: torch's non-constant modes take k padded dims on
    a tensor of rank k+1 or k+2, so other ranks are padded as (1, rest, *padded dims)."""
    padded = len(pads) // 2
    if mode == "constant" or x.dim() in (padded + 1, padded + 2):
        return F.pad(x, pads, mode=mode, value=value if mode == "constant" else None)
    inner = x.shape[x.dim() - padded :]
    out = F.pad(x.reshape(1, -1, *inner), pads, mode=mode)
    return out.reshape(*x.shape[: x.dim() - padded], *out.shape[2:])


def _pad_static_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    return _pad_any_rank(x, list(self.pads), self.mode, self.constant_value)


def _pad_dynamic_forward(
    self: Any, x: torch.Tensor, pads: torch.Tensor, constant_value: float | None = 0.0
) -> torch.Tensor:
    torch_pads = _inner_pads(_onnx2torch_pad._onnx_padding_to_torch(pads.tolist()), self.mode)
    return _pad_any_rank(x, torch_pads, self.mode, constant_value)


_onnx2torch_pad._torch_padding_to_mode_format = _inner_pads
OnnxPadStatic.forward = _pad_static_forward  # type: ignore[method-assign]
_onnx2torch_pad.OnnxPadDynamic.forward = _pad_dynamic_forward  # type: ignore[method-assign]


def _resize_18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    if node.attributes.get("antialias", 0):
        raise NotImplementedError("Resize with antialias is not implemented")
    if node.attributes.get("axes") is not None:
        raise NotImplementedError("Resize with axes is not implemented")
    if node.attributes.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise NotImplementedError("Resize with keep_aspect_ratio_policy is not implemented")
    if node.attributes.get("coordinate_transformation_mode") == "half_pixel_symmetric":
        raise NotImplementedError("Resize with half_pixel_symmetric is not implemented")
    return _existing("Resize", 13)(node, graph)


_register("Resize", [18, 19], _resize_18)


# --- ops onnx2torch does not know ---------------------------------------------------------


def _simple(module_factory: Callable[[OnnxNode], nn.Module]) -> Callable[..., Any]:
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        return OperationConverterResult(module_factory(node), onnx_mapping_from_node(node))

    return convert


_register(
    "Gelu", [20], _simple(lambda n: nn.GELU(approximate=n.attributes.get("approximate", "none")))
)
_register("Mish", [18, 22], _simple(lambda n: nn.Mish()))


def _hard_sigmoid(fallback: Callable[..., OperationConverterResult]) -> Callable[..., Any]:
    """torch's own Hardsigmoid for PyTorch's constants (alpha 1/6, beta 1/2), which exports
    back as one HardSigmoid node; onnx2torch's module exports as Mul, Add and Clip, and
    each squeeze-excite gate of a MobileNetV3 re-exported that way ran slower than the
    upload. Other constants keep onnx2torch's module."""

    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        alpha = node.attributes.get("alpha", 0.2)
        beta = node.attributes.get("beta", 0.5)
        if math.isclose(alpha, 1 / 6, rel_tol=1e-6) and math.isclose(beta, 0.5):
            return OperationConverterResult(nn.Hardsigmoid(), onnx_mapping_from_node(node))
        return fallback(node, graph)

    return convert


for _version in _registered_versions("HardSigmoid"):
    _key = OperationDescription("", "HardSigmoid", _version)
    _CONVERTER_REGISTRY[_key] = _hard_sigmoid(_CONVERTER_REGISTRY[_key])


class Clip(nn.Module):
    """`Clip` whose bounds are computed tensors; absent ones do not bound."""

    def __init__(self, has_min: bool, has_max: bool) -> None:
        super().__init__()
        self.has_min, self.has_max = has_min, has_max

    def forward(self, x: torch.Tensor, *bounds: torch.Tensor) -> torch.Tensor:
        given = iter(bounds)
        low = next(given) if self.has_min else None
        high = next(given) if self.has_max else None
        return torch.clamp(x, low, high)


def _clip(fallback: Callable[..., OperationConverterResult]) -> Callable[..., Any]:
    """onnx2torch reads both bounds as constants and takes an absent one (an empty input
    name: `torch.clamp(x, max=c)` exports as `Clip(x, "", c)`, as SwinV2's logit scale
    does) for a computed one it cannot handle. Constant bounds keep its module; computed
    ones are passed to `Clip` as inputs."""

    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        names = [_input(node, 1), _input(node, 2)]
        constants = [_const_float(n, graph) for n in names]
        if all(c is not None or not n for c, n in zip(constants, names, strict=True)):
            if all(names):
                return fallback(node, graph)  # its ReLU, ReLU6 or clamp
            module: nn.Module = nn.Identity()
            if any(names):
                module = OnnxClip(min_val=constants[0], max_val=constants[1])
            return OperationConverterResult(module, _only_first_input(node))
        bounds = [n for n in names if n]
        mapping = OnnxMapping(inputs=(node.input_values[0], *bounds), outputs=node.output_values)
        return OperationConverterResult(Clip(bool(names[0]), bool(names[1])), mapping)

    return convert


def _const_float(name: str, graph: OnnxGraph) -> float | None:
    if not name:
        return None
    try:
        return float(get_const_value(name, graph))
    except KeyError:
        return None


for _version in _registered_versions("Clip"):
    if _version >= 11:  # bounds became inputs at opset 11
        _key = OperationDescription("", "Clip", _version)
        _CONVERTER_REGISTRY[_key] = _clip(_CONVERTER_REGISTRY[_key])


class Squeeze(nn.Module):
    """ONNX Squeeze with constant axes, as the torch ops themselves."""

    def __init__(self, axes: Sequence[int]) -> None:
        super().__init__()
        self.axes = [int(a) for a in axes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.axes:
            return torch.squeeze(x)
        for axis in sorted((a % x.dim() for a in self.axes), reverse=True):
            x = torch.squeeze(x, axis)
        return x


def _squeeze(fallback: Callable[..., OperationConverterResult]) -> Callable[..., Any]:
    """onnx2torch's Squeeze with axes as an input (opset 13) exports the ONNX op itself,
    typed with the sizes seen while tracing: the batch dim after it became a constant 1,
    and a reshape that reads it with `Shape` was folded to batch 1 (PP-OCRv5's
    recogniser). Constant axes trace the torch ops, as its older Squeeze does."""

    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        name = _input(node, 1)
        try:
            axes = get_const_value(name, graph).flatten().tolist() if name else []
        except KeyError:
            return fallback(node, graph)  # computed axes
        return OperationConverterResult(Squeeze(axes), _only_first_input(node))

    return convert


for _version in _registered_versions("Squeeze"):
    if _version >= 13:  # axes became an input at opset 13
        _key = OperationDescription("", "Squeeze", _version)
        _CONVERTER_REGISTRY[_key] = _squeeze(_CONVERTER_REGISTRY[_key])


def _layer_norm(fallback: Callable[..., OperationConverterResult]) -> Callable[..., Any]:
    """onnx2torch sizes `nn.LayerNorm` from the input's declared dims, which are 0 where
    they are symbolic (MobileViT's unfolded patches: `normalized_shape = [0]`). The scale
    has the normalized shape by definition: it sizes the layer when it is a constant of
    the right rank; otherwise onnx2torch's converter decides."""

    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        axis = node.attributes.get("axis", -1)
        names = list(node.input_values[1:])
        info = graph.value_info.get(node.input_values[0])
        rank = len(info.type.tensor_type.shape.dim) if info is not None else None
        normalized = -axis if axis < 0 else (rank - axis if rank else None)
        if not names or not all(n in graph.initializers for n in names) or not normalized:
            return fallback(node, graph)
        scale = graph.initializers[names[0]].to_torch()
        if scale.dim() != normalized:
            return fallback(node, graph)
        eps = node.attributes.get("epsilon", 1e-5)
        module = nn.LayerNorm(tuple(scale.shape), eps=eps, bias=len(names) > 1)
        with torch.no_grad():
            module.weight.copy_(scale)
            if len(names) > 1:
                module.bias.copy_(graph.initializers[names[1]].to_torch())
        return OperationConverterResult(module, _only_first_input(node))

    return convert


for _version in _registered_versions("LayerNormalization"):
    _key = OperationDescription("", "LayerNormalization", _version)
    _CONVERTER_REGISTRY[_key] = _layer_norm(_CONVERTER_REGISTRY[_key])


def _traced_reshape(self: OnnxReshape, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    return self._do_reshape(x, shape)


# A reshape to a computed shape (PaddlePaddle's `[0, -1, ...]` from `Shape` slices) goes
# through onnx2torch's custom ONNX export, whose output the TorchScript exporter types
# with the sizes seen while tracing: a dynamic batch becomes 1 there, and later `Shape`
# ops on it are folded to that constant, so the file only runs at batch 1. Tracing the
# reshape itself records its shape arithmetic and keeps the batch symbolic.
OnnxReshape.forward = _traced_reshape  # type: ignore[method-assign]


class GlobalMaxPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.amax(x, dim=tuple(range(2, x.dim())), keepdim=True)


_register("GlobalMaxPool", [1, 22], _simple(lambda n: GlobalMaxPool()))


class Size(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor(x.numel(), dtype=torch.int64)


_register("Size", _schema_versions("Size"), _simple(lambda n: Size()))


def _group_norm(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    groups = int(node.attributes["num_groups"])
    eps = float(node.attributes.get("epsilon", 1e-5))
    scale = get_const_value(node.input_values[1], graph)
    bias = get_const_value(node.input_values[2], graph)
    if not isinstance(scale, torch.Tensor) or not isinstance(bias, torch.Tensor):
        raise NotImplementedError("GroupNormalization with computed scale or bias")
    if scale.numel() == groups:  # opset 18: one scale per group
        rank = _rank(node.input_values[0], graph)
        info = graph.value_info.get(node.input_values[0])
        if rank is None or info is None:
            raise NotImplementedError("GroupNormalization-18 needs the input channel count")
        channels = info.type.tensor_type.shape.dim[1].dim_value
        scale = scale.repeat_interleave(channels // groups)
        bias = bias.repeat_interleave(channels // groups)
    module = nn.GroupNorm(groups, scale.numel(), eps=eps)
    with torch.no_grad():
        module.weight.copy_(scale.float())
        module.bias.copy_(bias.float())
    return OperationConverterResult(module, _only_first_input(node))


_register("GroupNormalization", [18, 21], _group_norm)


class Upsample(nn.Module):
    def __init__(self, mode: str, scales: list[float]) -> None:
        super().__init__()
        self.mode = {"nearest": "nearest", "linear": "bilinear", "bilinear": "bilinear"}[mode]
        self.scales = scales

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        align = False if self.mode != "nearest" else None
        return F.interpolate(x, scale_factor=self.scales[2:], mode=self.mode, align_corners=align)


def _upsample(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    scales = node.attributes.get("scales")
    if scales is None:
        const = get_const_value(node.input_values[1], graph)
        scales = [float(v) for v in const.flatten().tolist()]
    if len(scales) < 3 or scales[0] != 1 or scales[1] != 1:
        raise NotImplementedError("Upsample of the batch or channel dimension")
    module = Upsample(node.attributes.get("mode", "nearest"), list(scales))
    return OperationConverterResult(module, _only_first_input(node))


_register("Upsample", [7, 9], _upsample)


# --- recurrent layers ---------------------------------------------------------------------


class RecurrentLayer(nn.Module):
    """ONNX LSTM/GRU on top of nn.LSTM/nn.GRU: outputs (Y, Y_h[, Y_c]) in ONNX layout."""

    def __init__(self, rnn: nn.LSTM | nn.GRU, reverse: bool, batch_first: bool) -> None:
        super().__init__()
        self.rnn = rnn
        self.reverse = reverse  # direction="reverse": run forward over the flipped sequence
        self.batch_first = batch_first  # ONNX layout=1

    def forward(
        self,
        x: torch.Tensor,
        initial_h: torch.Tensor | None = None,
        initial_c: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        if self.batch_first:
            x = x.transpose(0, 1)
            initial_h = None if initial_h is None else initial_h.transpose(0, 1)
            initial_c = None if initial_c is None else initial_c.transpose(0, 1)
        if self.reverse:
            x = torch.flip(x, dims=(0,))
        state: Any = None
        if isinstance(self.rnn, nn.LSTM):
            if initial_h is not None and initial_c is not None:
                state = (initial_h.contiguous(), initial_c.contiguous())
            elif initial_h is not None or initial_c is not None:
                given = initial_h if initial_h is not None else initial_c
                assert given is not None
                zeros = torch.zeros_like(given)
                h0, c0 = (given, zeros) if initial_h is not None else (zeros, given)
                state = (h0.contiguous(), c0.contiguous())
        elif initial_h is not None:
            state = initial_h.contiguous()
        y, final = self.rnn(x, state)
        if self.reverse:
            y = torch.flip(y, dims=(0,))
        seq, batch = y.shape[0], y.shape[1]
        dirs = 2 if self.rnn.bidirectional else 1
        y = y.reshape(seq, batch, dirs, self.rnn.hidden_size).permute(0, 2, 1, 3)
        states = list(final) if isinstance(final, tuple) else [final]
        if self.batch_first:
            y = y.permute(2, 0, 1, 3)
            states = [s.transpose(0, 1) for s in states]
        return (y, *states)


def _gates(weight: torch.Tensor, order: Sequence[int]) -> torch.Tensor:
    chunks = weight.chunk(len(order), dim=0)
    return torch.cat([chunks[i] for i in order], dim=0)


def _recurrent(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    kind = node.operation_type
    attrs = node.attributes
    for unsupported in ("clip", "activations", "activation_alpha", "activation_beta"):
        if unsupported in attrs:
            raise NotImplementedError(f"{kind} with {unsupported} is not implemented")
    if attrs.get("input_forget", 0):
        raise NotImplementedError(f"{kind} with input_forget is not implemented")
    if kind == "GRU" and attrs.get("linear_before_reset", 0) != 1:
        raise NotImplementedError("GRU with linear_before_reset=0 is not implemented")
    if _input(node, 4):
        raise NotImplementedError(f"{kind} with sequence_lens is not implemented")
    if kind == "LSTM" and _input(node, 7):
        raise NotImplementedError("LSTM with peepholes is not implemented")
    try:
        w = get_const_value(node.input_values[1], graph)
        r = get_const_value(node.input_values[2], graph)
        b = get_const_value(node.input_values[3], graph) if _input(node, 3) else None
    except KeyError as exc:
        raise NotImplementedError(f"{kind} with computed weights is not implemented") from exc
    direction = attrs.get("direction", "forward")
    hidden = int(attrs["hidden_size"])
    dirs, input_size = w.shape[0], w.shape[2]
    gate_count = 4 if kind == "LSTM" else 3
    order = (0, 2, 3, 1) if kind == "LSTM" else (1, 0, 2)  # ONNX iofc -> torch ifco; zrh -> rzh
    cls = nn.LSTM if kind == "LSTM" else nn.GRU
    rnn = cls(input_size, hidden, bidirectional=direction == "bidirectional")
    if b is None:
        b = torch.zeros(dirs, 2 * gate_count * hidden)
    with torch.no_grad():
        for d, suffix in enumerate(["", "_reverse"][:dirs]):
            getattr(rnn, f"weight_ih_l0{suffix}").copy_(_gates(w[d].float(), order))
            getattr(rnn, f"weight_hh_l0{suffix}").copy_(_gates(r[d].float(), order))
            wb, rb = b[d].float().chunk(2)
            getattr(rnn, f"bias_ih_l0{suffix}").copy_(_gates(wb, order))
            getattr(rnn, f"bias_hh_l0{suffix}").copy_(_gates(rb, order))
    module = RecurrentLayer(
        rnn, reverse=direction == "reverse", batch_first=attrs.get("layout", 0) == 1
    )
    inputs = [node.input_values[0], _input(node, 5)]
    if kind == "LSTM":
        inputs.append(_input(node, 6))
    # Zero initial states are the default; dropping them frees the batch size.
    inputs = [
        name if i == 0 or not _is_zero_const(name, graph) else "" for i, name in enumerate(inputs)
    ]
    while inputs and not inputs[-1]:
        inputs.pop()
    return OperationConverterResult(
        module, OnnxMapping(inputs=tuple(inputs), outputs=node.output_values)
    )


def _is_zero_const(name: str, graph: OnnxGraph) -> bool:
    """Whether `name` is all zeros whatever the input: a zero constant, or zeros of a
    computed shape (exporters build zero initial states from the batch size)."""
    if not name:
        return True
    try:
        value = get_const_value(name, graph)
    except KeyError:
        try:
            node, _ = graph.value_as_node_output(name)
        except KeyError:
            return False
        if node.operation_type != "ConstantOfShape":
            return False
        fill = node.attributes.get("value")
        return fill is None or not bool(fill.to_torch().any())
    return isinstance(value, torch.Tensor) and not bool(value.any())


_register("LSTM", [7, 14, 22], _recurrent)
_register("GRU", [7, 14, 22], _recurrent)


# --- per-channel constants, and torch-pruning's knowledge of them ---------------------------

_BINARY_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "div": torch.div,
}


class ChannelConst(nn.Module):
    """`x <op> c` (or `c <op> x`) for a constant `c` with one channel dimension `dim`.

    `c` is a parameter (it is usually a folded BatchNorm's scale or shift), and
    `preflight.ChannelConstPruner` removes its entries together with the channels of `x`.
    """

    def __init__(self, op: str, const: torch.Tensor, dim: int, const_first: bool = False) -> None:
        super().__init__()
        self.op = op
        self.weight = nn.Parameter(const.detach().float().clone())
        self.dim = dim
        self.const_first = const_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fn = _BINARY_OPS[self.op]
        return fn(self.weight, x) if self.const_first else fn(x, self.weight)

    def extra_repr(self) -> str:
        return f"op={self.op}, shape={tuple(self.weight.shape)}, dim={self.dim}"


# --- graph rewrites -------------------------------------------------------------------------


def make_prunable(gm: fx.GraphModule, inputs: Sequence[torch.Tensor]) -> fx.GraphModule:
    """Rewrite an onnx2torch GraphModule in place (see the module docstring); returns it."""
    from torch.fx.passes.shape_prop import ShapeProp

    at_batch_two = _shapes_at_batch_two(gm, inputs)
    with torch.no_grad():
        ShapeProp(gm).propagate(*inputs)
    for node, shape in at_batch_two.items():
        node.meta[_BATCH_TWO] = shape
    fold_group_norms(gm)
    channel_axis = _channel_axes(gm)
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        kind = type(module).__name__
        if kind == "OnnxBinaryMathOperation":
            _rewrite_channel_const(gm, node, module, channel_axis)
        elif kind == "OnnxReshape":
            _rewrite_reshape(gm, node)
        elif kind == "OnnxMatMul":
            _rewrite_matmul(gm, node)
        elif kind == "OnnxResize":
            _rewrite_resize(gm, node, module)
    split_channel_producers(gm)
    fold_channel_shuffles(gm)
    fold_channel_convs(gm)
    fence_channel_regroups(gm)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    _drop_unused_initializers(gm)
    gm.graph.lint()
    gm.recompile()
    return gm


# Node meta key: the node's output shape when the inputs have batch 2 (see symbolic_reshape).
_BATCH_TWO = "secateurs_shape_at_batch_two"


def _shapes_at_batch_two(gm: fx.GraphModule, inputs: Sequence[torch.Tensor]) -> dict:
    """Every node's output shape at batch 2, or nothing when the graph runs at batch 1 only.

    At batch 1 a reshape cannot tell a kept dim from a batch dim of size 1 folded into it:
    (T, 1, H) -> [-1, H] looks like it keeps T, and is (T * B, H) at any other batch."""
    from torch.fx.passes.shape_prop import ShapeProp

    bigger = tuple(torch.cat([x, x]) if x.dim() else x for x in inputs)
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*bigger)
    except Exception:  # a batch baked into the graph: batch 1 is all it runs at
        return {}
    return {n: _meta_shape(n) for n in gm.graph.nodes if _meta_shape(n) is not None}


def fix_outputs(gm: fx.GraphModule, output_names: Sequence[str]) -> fx.GraphModule:
    """Make an onnx2torch graph return exactly the ONNX outputs, in order (it returns a
    multi-output node's whole tuple when several outputs come from one node)."""
    producers: dict[str, fx.Node] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            producers[node.target] = node
        if node.op != "call_module":
            continue
        mapping = getattr(gm.get_submodule(node.target), "onnx_mapping", None)
        if mapping is None:
            continue
        if len(mapping.outputs) == 1:
            producers[mapping.outputs[0]] = node
        else:
            for user in node.users:
                if user.op == "call_function" and user.target is operator.getitem:
                    producers[mapping.outputs[user.args[1]]] = user
            for i, name in enumerate(mapping.outputs):
                if name and name not in producers:
                    with gm.graph.inserting_after(node):
                        producers[name] = gm.graph.call_function(operator.getitem, (node, i))
    missing = [name for name in output_names if name not in producers]
    if missing:
        raise NotImplementedError(f"graph outputs not produced by any node: {missing}")
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    values = [producers[name] for name in output_names]
    out_node.args = (values[0] if len(values) == 1 else tuple(values),)
    gm.recompile()
    return gm


def _meta_shape(node: Any) -> tuple[int, ...] | None:
    meta = getattr(node, "meta", {}).get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


_CHANNELS_FIRST = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.GroupNorm,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
)


def _channel_axes(gm: fx.GraphModule) -> dict[fx.Node, int]:
    """For each node whose output has a known channel axis, that axis.

    Convolutions and norms put channels on axis 1, Linear on the last axis; Transpose moves
    the axis, and ops that keep their input's shape keep it.
    """
    axes: dict[fx.Node, int] = {}
    for node in gm.graph.nodes:
        shape = _meta_shape(node)
        if shape is None or len(shape) < 2:
            continue
        module: Any = gm.get_submodule(str(node.target)) if node.op == "call_module" else None
        kind = type(module).__name__
        if (
            isinstance(module, _CHANNELS_FIRST)
            or kind.startswith("OnnxGlobalAveragePool")
            or (isinstance(module, GlobalMaxPool))
        ):
            axes[node] = 1
        elif isinstance(module, nn.Linear):
            axes[node] = len(shape) - 1
        elif kind == "OnnxTranspose" and node.args and node.args[0] in axes:
            perm = list(module.perm or range(len(shape))[::-1])
            axes[node] = perm.index(axes[node.args[0]])
        else:
            for arg in node.all_input_nodes:
                arg_shape = _meta_shape(arg)
                if arg in axes and arg_shape is not None:
                    if (
                        len(arg_shape) == len(shape)
                        and arg_shape[axes[arg]] == shape[axes[arg]]
                        and (node.op != "call_module" or _keeps_shape(kind))
                    ):
                        axes[node] = axes[arg]
                        break
    return axes


def _keeps_shape(kind: str) -> bool:
    """Module kinds that never move data between axes (so a channel axis survives them)."""
    return not any(
        word in kind
        for word in (
            "Reshape",
            "Transpose",
            "Flatten",
            "Split",
            "Slice",
            "Gather",
            "Squeeze",
            "Unsqueeze",
            "Expand",
            "Tile",
            "DepthToSpace",
            "Resize",
            "Reduce",
            "MatMul",
            "Gemm",
            "Concat",
            "Pad",
            "Softmax",
            "TopK",
            "Einsum",
            "Shape",
            "Range",
            "Constant",
        )
    )


def _constant_of(gm: fx.GraphModule, node: Any) -> torch.Tensor | None:
    """The tensor behind a get_attr node or an argument-less OnnxConstant, else None."""
    if not isinstance(node, fx.Node):
        return None
    if node.op == "get_attr":
        value = _get_attr(gm, str(node.target))
        return value if isinstance(value, torch.Tensor) else None
    if node.op == "call_module" and not node.args:
        module = gm.get_submodule(str(node.target))
        value = getattr(module, "value", None)
        if type(module).__name__ == "OnnxConstant" and isinstance(value, torch.Tensor):
            return value
    return None


def _get_attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _rewrite_channel_const(
    gm: fx.GraphModule, node: fx.Node, module: nn.Module, channel_axis: dict[fx.Node, int]
) -> None:
    if getattr(module, "broadcast", None) == 1 or len(node.args) != 2:
        return  # legacy (opset < 7) broadcasting: leave as it is
    first, second = node.args
    for const_first, act, const_node in ((False, first, second), (True, second, first)):
        const = _constant_of(gm, const_node)
        if const is None or not isinstance(act, fx.Node) or act not in channel_axis:
            continue
        if not const.is_floating_point() or const.numel() < 2:
            return
        act_shape = _meta_shape(act)
        out_shape = _meta_shape(node)
        big = [d for d, size in enumerate(const.shape) if size > 1]
        if (
            act_shape is None
            or out_shape != act_shape
            or len(big) != 1
            or const.dim() > len(act_shape)
        ):
            return
        dim = big[0]
        axis = dim + len(act_shape) - const.dim()
        if axis != channel_axis[act] or const.shape[dim] != act_shape[axis]:
            return
        op = {"add": "add", "sub": "sub", "mul": "mul", "_onnx_div": "div", "div": "div"}.get(
            getattr(module.math_op_function, "__name__", ""), None
        )
        if op is None:
            return
        replacement = ChannelConst(op, const, dim, const_first)
        _swap_module(gm, node, replacement, (act,))
        channel_axis[node] = channel_axis[act]
        return


def _swap_module(gm: fx.GraphModule, node: fx.Node, module: nn.Module, args: tuple) -> None:
    parent, _, name = str(node.target).rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)
    node.args = args
    node.kwargs = {}


def _rewrite_reshape(gm: fx.GraphModule, node: fx.Node) -> None:
    if len(node.args) != 2:
        return
    x, shape_node = node.args
    target = _constant_of(gm, shape_node)
    if target is not None and isinstance(x, fx.Node):
        symbolic_reshape(gm, node, x, [int(v) for v in target.flatten().tolist()], zero_copies=True)


def symbolic_reshape(
    gm: fx.GraphModule,
    node: fx.Node,
    x: Any,
    target: list[Any],
    *,
    zero_copies: bool = False,
) -> bool:
    """Replace a reshape of `x` to the constant `target` by one that survives pruning.

    The leading dims the reshape keeps unchanged (batch, channels) are taken from `x` at
    run time instead of the constant; a reshape that flattens the rest becomes
    `torch.flatten`. `target` items may be ints or graph nodes (symbolic sizes);
    `zero_copies`: a 0 means "copy this dim" (ONNX). Needs ShapeProp metadata.
    """
    in_shape, out_shape = _meta_shape(x), _meta_shape(node)
    if in_shape is None or out_shape is None or len(target) != len(out_shape):
        return False
    copy_values = {-1, 0} if zero_copies else {-1}

    def keeps(j: int) -> bool:
        item = target[j]
        return isinstance(item, fx.Node) or item in copy_values or item == in_shape[j]

    # A dim is kept only when it is kept at batch 2 too (a -1 may absorb the batch).
    in_two, out_two = _shape_at_batch_two(x), _shape_at_batch_two(node)
    prefix = 0
    while (
        prefix < min(len(in_shape), len(out_shape))
        and in_shape[prefix] == out_shape[prefix]
        and keeps(prefix)
        and (in_two is None or out_two is None or in_two[prefix] == out_two[prefix])
    ):
        prefix += 1
    if prefix == 0:
        return False
    graph = gm.graph
    with graph.inserting_before(node):
        if prefix == len(out_shape) == len(in_shape):
            new = x  # reshapes to its own shape
        elif prefix == len(out_shape) - 1 < len(in_shape) and out_shape[-1] == math.prod(
            in_shape[prefix:]
        ):
            new = graph.call_function(torch.flatten, (x, prefix))
        else:
            sizes: list[Any] = [graph.call_method("size", (x, i)) for i in range(prefix)]
            for i, item in enumerate(target[prefix:], start=prefix):
                copy = zero_copies and isinstance(item, int) and item == 0
                sizes.append(graph.call_method("size", (x, i)) if copy else item)
            new = graph.call_function(torch.reshape, (x, tuple(sizes)))
    if new is not x:
        new.meta = dict(node.meta)  # same output: later rewrites read its shape
    node.replace_all_uses_with(new)
    graph.erase_node(node)
    return True


def _shape_at_batch_two(node: Any) -> tuple[int, ...] | None:
    return node.meta.get(_BATCH_TWO) if isinstance(node, fx.Node) else None


def _rewrite_matmul(gm: fx.GraphModule, node: fx.Node) -> None:
    """x @ W for a constant matrix W -> nn.Linear (which torch-pruning understands)."""
    if len(node.args) != 2:
        return
    x, w_node = node.args
    weight = _constant_of(gm, w_node)
    if weight is None or weight.dim() != 2 or not weight.is_floating_point():
        return
    x_shape = _meta_shape(x)
    if x_shape is None or len(x_shape) < 2 or x_shape[-1] != weight.shape[0]:
        return
    bias_node, bias = _following_bias(gm, node, weight.shape[1])
    linear = nn.Linear(weight.shape[0], weight.shape[1], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight.t().float())
        if bias is not None:
            linear.bias.copy_(bias.float())
    _swap_module(gm, node, linear, (x,))
    if bias_node is not None:  # MatMul + Add(bias) -> one Linear
        bias_node.replace_all_uses_with(node)
        gm.graph.erase_node(bias_node)


def _following_bias(gm: fx.GraphModule, node: fx.Node, features: int) -> tuple[Any, Any]:
    """The `Add` of a constant vector that alone consumes `node`, and that vector."""
    users = list(node.users)
    if len(users) != 1 or users[0].op != "call_module" or len(users[0].args) != 2:
        return None, None
    add = users[0]
    module = gm.get_submodule(str(add.target))
    if (
        type(module).__name__ != "OnnxBinaryMathOperation"
        or getattr(module.math_op_function, "__name__", "") != "add"
        or getattr(module, "broadcast", None) == 1
    ):
        return None, None
    other = add.args[1] if add.args[0] is node else add.args[0]
    bias = _constant_of(gm, other)
    if bias is None or not bias.is_floating_point() or tuple(bias.shape) != (features,):
        return None, None
    return add, bias


def _rewrite_resize(gm: fx.GraphModule, node: fx.Node, module: Any) -> None:
    """Resize by constant scales or sizes -> `F.interpolate` with them as Python numbers:
    the same computation, without the check that `sizes` repeats the channel count (which
    pruning changes) and without reading tensors at run time (which torch.export cannot)."""
    from onnx2torch.node_converters.resize import _onnx_mode_to_torch_mode

    names = ("roi", "scales", "sizes")
    given = dict(zip(names, node.args[1:], strict=False)) | dict(node.kwargs)
    roi = _constant_of(gm, given.get("roi"))
    if given.get("roi") is not None and (roi is None or (roi.numel() and not module.ignore_roi)):
        return
    x = node.args[0]
    shape = _meta_shape(x)
    if shape is None or len(shape) < 3:
        return
    kwargs: dict[str, Any] = {
        "mode": _onnx_mode_to_torch_mode(module.onnx_mode, len(shape) - 2),
        "align_corners": module.align_corners,
    }
    sizes, scales = _constant_of(gm, given.get("sizes")), _constant_of(gm, given.get("scales"))
    if sizes is not None and sizes.numel():
        kwargs["size"] = tuple(int(v) for v in sizes.tolist()[2:])
    elif scales is not None and scales.numel() and scales.tolist()[:2] == [1, 1]:
        kwargs["scale_factor"] = tuple(float(v) for v in scales.tolist()[2:])
    else:
        return
    with gm.graph.inserting_before(node):
        new = gm.graph.call_function(F.interpolate, (x,), kwargs)
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def _drop_unused_initializers(gm: fx.GraphModule) -> None:
    container = getattr(gm, "initializers", None)
    if container is None:
        return
    used = {
        str(n.target).split(".", 1)[1]
        for n in gm.graph.nodes
        if n.op == "get_attr" and str(n.target).startswith("initializers.")
    }
    for name in list(container._buffers):
        if name not in used:
            del container._buffers[name]


# --- channel splits -------------------------------------------------------------------------

_SPLIT_MODULES = ("OnnxSplit13", "OnnxSplit", "Split")


def split_channel_producers(gm: fx.GraphModule) -> int:
    """`conv -> (per-channel ops) -> split along channels` becomes one conv (and one copy
    of the per-channel ops) per part; returns how many producers were rewritten.

    torch-pruning cannot follow a channel split whose parts are used more than once (the
    C2f blocks of YOLOv8 split their first conv's output and use one half twice), and it
    cannot move the bounds of a channel slice. Split into separate convolutions, each part
    is an ordinary prunable group, and the model computes exactly the same. A split is an
    ONNX Split, or Slices along the channels. Needs ShapeProp metadata.
    """
    rewritten = 0
    for node in list(gm.graph.nodes):
        parts = _channel_parts(gm, node)
        if parts is None:
            continue
        chain = _per_channel_chain(gm, node)
        if chain is None:
            continue
        _split_chain(gm, chain, parts)
        rewritten += 1
    if rewritten:
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return rewritten


def _module_kind(gm: fx.GraphModule, node: fx.Node) -> str:
    return type(gm.get_submodule(str(node.target))).__name__ if node.op == "call_module" else ""


def _channel_parts(gm: fx.GraphModule, x: fx.Node) -> list[tuple[fx.Node, int, int]] | None:
    """When every use of `x` takes a static channel range (Split outputs, channel
    Slices): (the node that yields the range, first channel, end), else None."""
    shape = _meta_shape(x)
    if shape is None or len(shape) < 3 or not x.users:
        return None
    channels = shape[1]
    parts: list[tuple[fx.Node, int, int]] = []
    for user in x.users:
        kind = _module_kind(gm, user)
        if kind in _SPLIT_MODULES and user.args[0] is x:
            sizes = _split_sizes(user, shape)
            if sizes is None or any(
                u.op != "call_function" or u.target is not operator.getitem for u in user.users
            ):
                return None
            offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
            for getter in user.users:
                index: Any = getter.args[1]
                parts.append((getter, offsets[index], offsets[index + 1]))
        elif kind == "OnnxSlice" and user.args[0] is x:
            bounds = _channel_slice_bounds(gm, user, channels)
            if bounds is None:
                return None
            parts.append((user, *bounds))
        else:
            return None
    if all((start, stop) == (0, channels) for _, start, stop in parts):
        return None
    return parts


def _split_sizes(split: fx.Node, in_shape: tuple[int, ...]) -> list[int] | None:
    """The part sizes of a split along dim 1 (from the traced output shapes)."""
    meta = split.meta.get("tensor_meta")
    if not isinstance(meta, list | tuple):
        return None
    shapes = [tuple(m.shape) for m in meta]
    if any(s[:1] + s[2:] != in_shape[:1] + in_shape[2:] for s in shapes):
        return None  # not a split along the channels
    sizes = [s[1] for s in shapes]
    return sizes if sum(sizes) == in_shape[1] else None


def _channel_slice_bounds(
    gm: fx.GraphModule, node: fx.Node, channels: int
) -> tuple[int, int] | None:
    """(start, stop) of an OnnxSlice taking a static step-1 range of channels only."""
    args = list(node.args) + [None] * 3
    values = [_constant_of(gm, a) if a is not None else None for a in args[1:5]]
    starts, ends, axes, steps = values
    if starts is None or ends is None or starts.numel() != 1 or ends.numel() != 1:
        return None
    if (axes is None and args[3] is not None) or (steps is None and args[4] is not None):
        return None  # computed axes or steps
    rank = len(_meta_shape(node) or ())
    axis = int(axes.item()) if axes is not None else 0
    if axis % max(rank, 1) != 1 or (steps is not None and int(steps.item()) != 1):
        return None
    start, stop, _ = slice(int(starts.item()), int(ends.item())).indices(channels)
    out = _meta_shape(node)
    return (start, stop) if out is not None and out[1] == stop - start > 0 else None


def _per_channel_chain(gm: fx.GraphModule, x: Any) -> list[fx.Node] | None:
    """`x` and the nodes between it and the one convolution it comes from, in graph order,
    when all of them act channel by channel and nothing else uses them; else None."""
    if not isinstance(x, fx.Node):
        return None
    shape = _meta_shape(x)
    seen: set[fx.Node] = set()
    stack = [x]
    conv = None
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        module = gm.get_submodule(str(node.target)) if node.op == "call_module" else None
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d) and module.groups == 1:
            if conv is not None and conv is not node:
                return None
            conv = node
            continue
        if not _acts_per_channel(gm, node, module, shape):
            return None
        stack.extend(a for a in node.all_input_nodes if a.op != "get_attr")
    if conv is None or _meta_shape(conv) != shape:
        return None
    chain = [n for n in gm.graph.nodes if n in seen]
    for n in chain:  # nothing outside the chain may use its intermediate results
        if n is not x and any(u not in seen for u in n.users):
            return None
    return chain


def _acts_per_channel(gm: fx.GraphModule, node: fx.Node, module: Any, shape: Any) -> bool:
    if _meta_shape(node) != shape or node.op not in ("call_module", "call_function"):
        return False
    if isinstance(module, nn.modules.batchnorm._BatchNorm | ChannelConst):
        return True
    if module is not None and (
        any(True for _ in module.parameters()) or any(b.numel() > 1 for b in module.buffers())
    ):
        return False
    if getattr(module, "broadcast", None) == 1:
        return False
    for arg in node.all_input_nodes:
        if arg.op == "get_attr":
            const = _constant_of(gm, arg)
            if const is None or const.numel() > 1:
                return False
        elif _meta_shape(arg) != shape:
            return False
    return True


def _split_chain(
    gm: fx.GraphModule, chain: list[fx.Node], parts: list[tuple[fx.Node, int, int]]
) -> None:
    """Give each channel range its own copy of `chain`, and use it where the range was."""
    graph = gm.graph
    copies: dict[tuple[int, int], fx.Node] = {}
    first_use = min((part for part, _, _ in parts), key=lambda n: list(graph.nodes).index(n))
    for part, start, stop in parts:
        if (start, stop) not in copies:
            copies[(start, stop)] = _copy_chain(
                gm, chain, slice(start, stop), first_use, len(copies)
            )
        part.replace_all_uses_with(copies[(start, stop)])
    for part, _, _ in parts:
        split = part.args[0] if part.op == "call_function" else None
        graph.erase_node(part)
        if isinstance(split, fx.Node) and not split.users:
            graph.erase_node(split)


def _copy_chain(
    gm: fx.GraphModule, chain: list[fx.Node], channels: slice, before: fx.Node, k: int
) -> fx.Node:
    graph = gm.graph
    clones: dict[fx.Node, fx.Node] = {}

    def renamed(arg: fx.Node, clones: dict[fx.Node, fx.Node] = clones) -> fx.Node:
        return clones.get(arg, arg)

    with graph.inserting_before(before):
        for node in chain:
            args = fx.map_arg(node.args, renamed)
            kwargs = fx.map_arg(node.kwargs, renamed)
            if node.op == "call_module":
                name = f"{node.target}__part{k}"
                gm.add_submodule(name, _channel_slice(gm.get_submodule(str(node.target)), channels))
                clones[node] = graph.call_module(name, args, kwargs)
            else:
                clones[node] = graph.call_function(node.target, args, kwargs)  # type: ignore[arg-type]
    return clones[chain[-1]]


def _channel_slice(module: nn.Module, channels: slice) -> nn.Module:
    """A copy of a per-channel module (conv, norm, constant) for some of its channels."""
    import copy

    part = copy.deepcopy(module)
    with torch.no_grad():
        if isinstance(part, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            part.weight = nn.Parameter(part.weight[channels].clone())
            if part.bias is not None:
                part.bias = nn.Parameter(part.bias[channels].clone())
            part.out_channels = part.weight.shape[0]
        elif isinstance(part, nn.modules.batchnorm._BatchNorm):
            for name in ("weight", "bias"):
                if getattr(part, name) is not None:
                    setattr(part, name, nn.Parameter(getattr(part, name)[channels].clone()))
            for name in ("running_mean", "running_var"):
                if getattr(part, name) is not None:
                    setattr(part, name, getattr(part, name)[channels].clone())
            part.num_features = channels.stop - channels.start
        elif isinstance(part, ChannelConst):
            index = [slice(None)] * part.weight.dim()
            index[part.dim] = channels
            part.weight = nn.Parameter(part.weight[tuple(index)].clone())
    return part


# --- channel shuffles -----------------------------------------------------------------------


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle, (N, C, ...) -> view (N, g, C/g, ...) -> swap -> (N, C, ...).

    One module instead of reshape -> transpose -> reshape: torch-pruning follows a channel
    through the first reshape into *both* new dims and back, and on a network of chained
    shuffles the index sets it follows multiply with every unit (a ShuffleNetV2's group
    discovery ran for a quarter of an hour). A permutation of channels is not something
    its index mappings express, so `preflight` protects the groups that reach a shuffle.
    """

    def __init__(self, groups: int, channels: int) -> None:
        super().__init__()
        self.groups, self.channels = groups, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        rest = x.shape[2:]
        return x.reshape(n, self.groups, c // self.groups, *rest).transpose(1, 2).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


def fold_channel_shuffles(gm: fx.GraphModule) -> int:
    """Replace every reshape -> transpose(1, 2) -> reshape that permutes the channels of an
    (N, C, ...) tensor by a `ChannelShuffle`; returns how many. Needs ShapeProp metadata."""
    count = 0
    for node in list(gm.graph.nodes):
        found = _shuffle_at(gm, node)
        if found is None:
            continue
        x, groups = found
        shape = _meta_shape(x)
        assert shape is not None
        _call_instead(gm, node, f"channel_shuffle_{count}", ChannelShuffle(groups, shape[1]), x)
        count += 1
    return _tidied(gm, count)


def _reshape_input(gm: fx.GraphModule, node: Any) -> Any:
    """The tensor a reshape-like node reshapes, or None."""
    if not isinstance(node, fx.Node) or not node.args:
        return None
    if node.op == "call_function" and node.target in (torch.reshape, torch.flatten):
        return node.args[0]
    if node.op == "call_method" and node.target in ("reshape", "view"):
        return node.args[0]
    if _module_kind(gm, node) == "OnnxReshape":
        return node.args[0]
    return None


def _shuffle_at(gm: fx.GraphModule, last: fx.Node) -> tuple[fx.Node, int] | None:
    """(x, groups) when `last` ends a channel shuffle of x, else None."""
    swapped = _reshape_input(gm, last)
    if not isinstance(swapped, fx.Node) or _module_kind(gm, swapped) != "OnnxTranspose":
        return None
    first = swapped.args[0] if swapped.args else None
    x = _reshape_input(gm, first)
    shapes = [_meta_shape(n) for n in (x, first, swapped, last)]
    if not isinstance(x, fx.Node) or any(s is None for s in shapes):
        return None
    x_shape, split, moved, out = shapes
    assert x_shape is not None and split is not None and moved is not None
    perm = list(cast(list[int], gm.get_submodule(str(swapped.target)).perm) or [])
    if (
        len(x_shape) < 2
        or out != x_shape
        or len(split) != len(x_shape) + 1
        or perm != [0, 2, 1, *range(3, len(split))]
        or split[0] != x_shape[0]
        or split[1] * split[2] != x_shape[1]
        or tuple(split[3:]) != tuple(x_shape[2:])
        or split[1] < 2
        or split[2] < 2
    ):
        return None
    return x, split[1]


# --- convolutions across channels, and reshapes that regroup channels -----------------------


class ChannelConv1d(nn.Module):
    """ECA attention's convolution over the channels of a pooled (N, C, 1, ...) vector:
    reshape to (N, 1, C), a same-length Conv1d, and back to the input's shape.

    One module instead of reshape -> Conv1d -> reshape: torch-pruning reads the first
    reshape as folding C channels into the Conv1d's single one and the second as unfolding
    them again, so the index set of every channel it follows through an ECA block grows C
    times over (ecaresnet26t's group discovery did not finish in minutes), and the sizes
    baked into the reshapes break once channels go. As one module it passes its channels
    through (`tp_extensions.ChannelConv1dPruner`): the Conv1d's weights do not depend on C,
    so the block keeps working on whatever channels remain."""

    def __init__(self, conv: nn.Conv1d, channels: int) -> None:
        super().__init__()
        self.conv = conv
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.reshape(x.shape[0], 1, -1)).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


class ChannelRegroup(nn.Module):
    """An op that moves channels between dims: a reshape that splits or merges the
    channel dim of a rank-4 tensor with other dims (a YOLOv5 head's (N, 3*85, H, W) ->
    (N, 3, 85, H, W), attention heads), or a MatMul of two computed tensors (attention).

    torch-pruning maps every rank-4 reshape as a flatten by a stride, which such a
    reshape is not, and follows a channel through a MatMul's inner expand/reshape/bmm the
    same way: the index sets it follows multiply by the stride at each reshape (in
    attention blocks and detection decoders, millions of indices; the group discovery did
    not finish in minutes). `tp_extensions.ChannelRegroupPruner` stops torch-pruning at
    the op instead: the layers before it are tried like any other group by `preflight`
    (where the op's sizes are baked into the graph the trial fails, and they are
    protected)."""

    def __init__(self, inner: nn.Module | None = None) -> None:
        super().__init__()
        self.inner = inner  # the onnx2torch module (OnnxReshape, OnnxMatMul), else None

    def forward(self, x: torch.Tensor, other: Any) -> torch.Tensor:
        if self.inner is not None:
            return self.inner(x, other)
        return torch.reshape(x, other)


def _matches(gm: fx.GraphModule, finder: Callable[[fx.GraphModule, fx.Node], Any]) -> Iterator:
    """What `finder` finds at each node of the graph as it was on entry (the caller may
    rewrite it meanwhile), skipping the nodes where it finds nothing."""
    for node in list(gm.graph.nodes):
        found = finder(gm, node)
        if found is not None:
            yield found


def _call_instead(gm: fx.GraphModule, old: fx.Node, name: str, module: nn.Module, x: Any) -> None:
    """A call of `module` (added as `name`) on `x` takes over `old`'s uses and metadata."""
    gm.add_submodule(name, module)
    with gm.graph.inserting_before(old):
        new = gm.graph.call_module(name, (x,))
    new.meta = dict(old.meta)
    old.replace_all_uses_with(new)


def _tidied(gm: fx.GraphModule, rewrites: int) -> int:
    """After `rewrites` replacements (if any), drop the nodes and modules they left
    unused and recompile; returns `rewrites`."""
    if rewrites:
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return rewrites


def fold_group_norms(gm: fx.GraphModule) -> int:
    """Replace each group norm as torch exports it (reshape (N, C, ...) -> (N, G, -1),
    InstanceNormalization with unit scale and zero shift, reshape back to the input's
    shape) by an `nn.GroupNorm(G, C)` without affine parameters (the per-channel scale
    and shift that follow stay as they are); returns how many. torch-pruning follows a
    channel into the instance norm's own flattening views by index mappings that grow
    with the spatial size (a PoolFormer's group search did not end within its budget),
    and knows a GroupNorm's channels. Needs ShapeProp metadata."""
    count = 0
    for x, groups, eps, last in _matches(gm, _group_norm_at):
        channels = _meta_shape(x)[1]  # type: ignore[index]
        norm = nn.GroupNorm(groups, channels, eps=eps, affine=False)
        _call_instead(gm, last, f"group_norm_{count}", norm, x)
        count += 1
    return _tidied(gm, count)


def _group_norm_at(gm: fx.GraphModule, norm: fx.Node) -> tuple | None:
    """(x, groups, eps, the reshape back) when `norm` is the instance norm of a group norm
    of x, else None."""
    module = gm.get_submodule(str(norm.target)) if norm.op == "call_module" else None
    if not isinstance(module, nn.modules.instancenorm._InstanceNorm) or len(norm.users) != 1:
        return None
    grouped = norm.args[0]
    if not isinstance(grouped, fx.Node):
        return None
    x = _reshape_input(gm, grouped)
    last = next(iter(norm.users))
    x_shape, grouped_shape = _meta_shape(x), _meta_shape(grouped)
    if (
        not isinstance(x, fx.Node)
        or x_shape is None
        or grouped_shape is None
        or len(x_shape) < 3
        or len(grouped_shape) != 3
        or grouped_shape[0] != x_shape[0]
        or x_shape[1] % grouped_shape[1]
        or _reshape_input(gm, last) is not norm
        or _meta_shape(last) != x_shape
        or _shape_at_batch_two(last) != _shape_at_batch_two(x)
        or len(grouped.users) != 1
    ):
        return None
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if (weight is not None and not bool((weight == 1).all())) or (
        bias is not None and not bool((bias == 0).all())
    ):
        return None
    return x, grouped_shape[1], float(module.eps), last


def fold_channel_convs(gm: fx.GraphModule) -> int:
    """Replace each reshape (N, C[, 1...]) -> (N, 1, C), Conv1d(1, 1, same length),
    [unary ops], reshape -> (N, C, 1...) by a `ChannelConv1d` and the unary ops on
    (N, C[, 1...]), and a channel-keeping reshape; returns how many. Needs ShapeProp
    metadata."""
    count = 0
    for x, conv_node, unary, last in _matches(gm, _channel_conv_at):
        x_shape = _meta_shape(x)
        assert x_shape is not None
        name = f"channel_conv_{count}"
        conv = cast(torch.nn.Conv1d, gm.get_submodule(str(conv_node.target)))
        gm.add_submodule(name, ChannelConv1d(conv, x_shape[1]))
        graph = gm.graph
        with graph.inserting_before(last):
            y = graph.call_module(name, (x,))
            for op in unary:
                y = graph.call_module(str(op.target), (y,))
            out_shape = _meta_shape(last)
            assert out_shape is not None
            if tuple(out_shape) != tuple(x_shape):
                sizes = [graph.call_method("size", (y, 0)), graph.call_method("size", (y, 1))]
                y = graph.call_function(torch.reshape, (y, (*sizes, *out_shape[2:])))
        y.meta = dict(last.meta)
        last.replace_all_uses_with(y)
        count += 1
    return _tidied(gm, count)


def _channel_conv_at(gm: fx.GraphModule, first: fx.Node) -> tuple | None:
    """(x, conv, unary ops, last reshape) when `first` starts a convolution across the
    channels of x, else None."""
    x = _reshape_input(gm, first)
    x_shape, shape = _meta_shape(x), _meta_shape(first)
    if (
        not isinstance(x, fx.Node)
        or x_shape is None
        or shape is None
        or len(x_shape) < 2
        or any(d != 1 for d in x_shape[2:])
        or tuple(shape) != (x_shape[0], 1, x_shape[1])
        or len(first.users) != 1
    ):
        return None
    conv_node = next(iter(first.users))
    conv = gm.get_submodule(str(conv_node.target)) if conv_node.op == "call_module" else None
    if (
        not isinstance(conv, nn.Conv1d)
        or (conv.in_channels, conv.out_channels, conv.groups) != (1, 1, 1)
        or _meta_shape(conv_node) != shape
        or conv_node.args[0] is not first
    ):
        return None
    unary: list[fx.Node] = []
    node = conv_node
    while len(users := _users_but_sizes(node)) == 1:
        user = users[0]
        if _reshape_input(gm, user) is node:
            out = _meta_shape(user)
            if (
                out is None
                or len(out) < 2
                or out[:2] != x_shape[:2]
                or any(d != 1 for d in out[2:])
            ):
                return None
            return x, conv_node, unary, user
        module = gm.get_submodule(str(user.target)) if user.op == "call_module" else None
        if (
            module is None
            or len(user.args) != 1
            or user.kwargs
            or any(True for _ in module.parameters())
            or any(True for _ in module.buffers())
            or _meta_shape(user) != shape
            or not _keeps_shape(type(module).__name__)
        ):
            return None
        unary.append(user)
        node = user
    return None


def _users_but_sizes(node: fx.Node) -> list[fx.Node]:
    """The users of `node` other than `.size()` calls (a reshape's symbolic sizes)."""
    return [u for u in node.users if not (u.op == "call_method" and u.target == "size")]


def fence_channel_regroups(gm: fx.GraphModule) -> int:
    """Replace each reshape that splits or merges the channel dim of a rank-4 tensor (its
    output keeps neither the input's batch and channel dims nor flattens everything after
    the batch) by a `ChannelRegroup`; returns how many. Needs ShapeProp metadata."""
    count = 0
    for node in list(gm.graph.nodes):
        if _is_activation_matmul(gm, node):
            _fence(gm, node, f"channel_regroup_{count}")
            count += 1
            continue
        x = _reshape_input(gm, node)
        if not isinstance(x, fx.Node) or len(node.args) != 2:
            continue
        if node.op == "call_function" and node.target is not torch.reshape:
            continue  # torch.flatten
        if node.op == "call_method":
            continue
        in_shape, out_shape = _meta_shape(x), _meta_shape(node)
        if in_shape is None or out_shape is None or len(in_shape) != 4:
            continue
        if tuple(out_shape[:2]) == tuple(in_shape[:2]) and not _splits_heads(in_shape, out_shape):
            continue  # batch and channels kept
        if len(out_shape) == 2 and out_shape[1] == math.prod(in_shape[1:]):
            continue  # a flatten, which torch-pruning maps onto the next Linear
        _fence(gm, node, f"channel_regroup_{count}")
        count += 1
    if count:
        gm.delete_all_unused_submodules()
        gm.recompile()
    return count


def _splits_heads(in_shape: Sequence[int], out_shape: Sequence[int]) -> bool:
    """Whether a rank-4 reshape keeps every dim but the last and splits that one: the
    attention heads of a channels-last tensor (MaxViT's (B, windows, tokens, D) ->
    (..., heads, D / heads)). Its dim 1 is not channels, though torch-pruning reads it so
    and maps the reshape as a flatten (the indices it followed grew threefold at each of
    a hundred such reshapes)."""
    return len(out_shape) > 4 and tuple(out_shape[:3]) == tuple(in_shape[:3])


def _is_activation_matmul(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A MatMul of two computed tensors of rank 3 or more (attention's q @ k^T, a @ v)."""
    if _module_kind(gm, node) != "OnnxMatMul" or len(node.args) != 2 or node.kwargs:
        return False
    shapes = [_meta_shape(a) for a in node.args]
    return all(
        isinstance(a, fx.Node) and _constant_of(gm, a) is None and s is not None and len(s) >= 3
        for a, s in zip(node.args, shapes, strict=True)
    )


def _fence(gm: fx.GraphModule, node: fx.Node, name: str) -> None:
    """Replace `node` (a reshape or an OnnxMatMul) by a `ChannelRegroup` of it."""
    inner = gm.get_submodule(str(node.target)) if node.op == "call_module" else None
    gm.add_submodule(name, ChannelRegroup(inner))
    with gm.graph.inserting_before(node):
        new = gm.graph.call_module(name, tuple(node.args))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
