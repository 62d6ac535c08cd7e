"""ONNX -> torch: the converters onnx2torch lacks, registered on import.

Importing this module registers, with onnx2torch's `add_converter`:
- newer opset versions of ops whose semantics did not change beyond new element types
  (Conv-22, Shape-21, Reshape-19/21, ... aliased to onnx2torch's own converter);
- opset-18 forms whose attributes became inputs (Reduce*, Split, Pad, Resize);
- ops it does not know: LSTM, GRU, Gelu, Mish, GlobalMaxPool, GroupNormalization,
  Upsample, Size;
- HardSigmoid with PyTorch's constants as torch's own `nn.Hardsigmoid` (one node on
  export, not three);
- fixes to its own (a reshape to a computed shape traced so the export keeps the batch
  dynamic; `Clip` with an absent or computed bound; `LayerNormalization` sized by its
  scale; `Squeeze` with constant axes traced; a `Split` into one part is its input).

The graphs it builds are then made prunable by `fx_rewrites.make_prunable`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

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
from torch import nn

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
