"""Parameter and MAC counts, as the job contract defines them.

MACs are the multiply-accumulates of convolutions (1d/2d/3d, grouped, transposed),
Linear/Gemm and matrix products at batch 1; normalisation, activations, pooling and
element-wise ops are not counted. They are measured with one forward pass under a
`TorchFunctionMode`, so every call site counts, whether it sits in an `nn.Conv2d`, in an
onnx2torch FX graph (`OnnxMatMul`, `OnnxGemm`) or in a bare `x @ w` in user code.
"""

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode


def count_params(module: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters())


def _conv_macs(args: tuple, kwargs: dict, out: Any) -> int:
    weight = args[1] if len(args) > 1 else kwargs["weight"]
    # weight: (out, in / groups, *kernel): each output element costs in/groups * kernel MACs.
    return out.numel() * weight[0].numel()


def _conv_transpose_macs(args: tuple, kwargs: dict, out: Any) -> int:
    inp = args[0] if args else kwargs["input"]
    weight = args[1] if len(args) > 1 else kwargs["weight"]
    # weight: (in, out / groups, *kernel): each input element is spread over that many outputs.
    return inp.numel() * weight[0].numel()


def _linear_macs(args: tuple, kwargs: dict, out: Any) -> int:
    weight = args[1] if len(args) > 1 else kwargs["weight"]
    return out.numel() * weight.shape[-1]


def _matmul_macs(args: tuple, kwargs: dict, out: Any) -> int:
    left = args[0] if args else kwargs["input"]
    return out.numel() * left.shape[-1]


def _addmm_macs(args: tuple, kwargs: dict, out: Any) -> int:
    # addmm(input, mat1, mat2) / baddbmm(input, batch1, batch2): the product is what costs.
    left = args[1] if len(args) > 1 else kwargs.get("mat1", kwargs.get("batch1"))
    assert left is not None, "addmm/baddbmm without its first factor"
    return out.numel() * left.shape[-1]


def _rmatmul_macs(args: tuple, kwargs: dict, out: Any) -> int:
    # Tensor.__rmatmul__(self, other) computes other @ self.
    return out.numel() * args[1].shape[-1]


def _einsum_macs(args: tuple, kwargs: dict, out: Any) -> int:
    equation = args[0]
    operands = args[1:]
    if len(operands) == 1 and isinstance(operands[0], list | tuple):
        operands = tuple(operands[0])
    if len(operands) < 2 or "..." in equation:
        return 0
    sizes: dict[str, int] = {}
    for letters, tensor in zip(equation.split("->")[0].split(","), operands, strict=False):
        for letter, size in zip(re.sub(r"\s", "", letters), tensor.shape, strict=False):
            sizes[letter] = size
    # A pairwise contraction visits every combination of its indices once.
    return math.prod(sizes.values())


_CountFn = Callable[[tuple, dict, Any], int]

_COUNTERS: dict[Callable, _CountFn] = {
    F.conv1d: _conv_macs,
    F.conv2d: _conv_macs,
    F.conv3d: _conv_macs,
    F.conv_transpose1d: _conv_transpose_macs,
    F.conv_transpose2d: _conv_transpose_macs,
    F.conv_transpose3d: _conv_transpose_macs,
    F.linear: _linear_macs,
    torch.matmul: _matmul_macs,
    torch.mm: _matmul_macs,
    torch.bmm: _matmul_macs,
    torch.Tensor.matmul: _matmul_macs,
    torch.Tensor.mm: _matmul_macs,
    torch.Tensor.bmm: _matmul_macs,
    torch.Tensor.__matmul__: _matmul_macs,
    torch.Tensor.__rmatmul__: _rmatmul_macs,
    torch.addmm: _addmm_macs,
    torch.baddbmm: _addmm_macs,
    torch.Tensor.addmm: _addmm_macs,
    torch.Tensor.baddbmm: _addmm_macs,
    torch.einsum: _einsum_macs,
}


class _MacCounter(TorchFunctionMode):
    """Adds up the MACs of every counted torch function called while active."""

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        counter = _COUNTERS.get(func)
        if counter is not None and isinstance(out, torch.Tensor):
            self.macs += int(counter(args, kwargs, out))
        return out


def carries_batch(inputs: Sequence[Any]) -> list[bool]:
    """Which inputs hold the batch in their first dim: those whose leading size is the
    first input's. One with another leading size (a recurrent state `[layers, 1, hidden]`
    beside a batch-1 signal) keeps its shape whatever the batch."""
    lead = next((x.shape[0] for x in inputs if isinstance(x, torch.Tensor) and x.dim()), None)
    return [isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == lead for x in inputs]


def _batch_one(inputs: Sequence[Any]) -> tuple[Any, ...]:
    """The contract counts at batch 1: keep the first sample of each batched tensor."""
    batched = carries_batch(inputs)
    return tuple(x[:1] if b else x for x, b in zip(inputs, batched, strict=True))


def count_macs(module: nn.Module, example_inputs: torch.Tensor | Sequence[Any]) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (see the module docstring)."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    inputs = _batch_one(example_inputs)
    was_training = module.training
    module.eval()
    counter = _MacCounter()
    try:
        with torch.no_grad(), counter:
            module(*inputs)
    finally:
        module.train(was_training)
    return counter.macs


_Layer = nn.modules.conv._ConvNd | nn.Linear


class MacProfile:
    """MACs as a function of layer widths, from one measured forward pass.

    Channel pruning changes widths, never spatial sizes, so the MACs of each conv and
    linear layer follow from its current widths and the positions it was applied to;
    everything else (bare matmuls) is kept as measured. `estimate` then prices a pruning
    plan without running the model, which makes searching for a target cheap.
    """

    def __init__(self, module: nn.Module, example_inputs: torch.Tensor | Sequence[Any]) -> None:
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        self.positions: dict[nn.Module, int] = {}
        handles = [
            m.register_forward_hook(self._record)
            for m in module.modules()
            if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)
        ]
        try:
            total = count_macs(module, example_inputs)
        finally:
            for handle in handles:
                handle.remove()
        self.total = total  # as measured, before any pruning
        self.other = max(0, total - sum(self._layer_macs(m) for m in self.positions))

    def _record(self, layer: nn.Module, inputs: tuple, out: Any) -> None:
        # Positions a layer is applied to: output positions, or input ones for transposed convs.
        if isinstance(layer, nn.modules.conv._ConvNd) and layer.transposed:
            count = inputs[0].numel() // layer.in_channels
        elif isinstance(layer, nn.Linear):
            count = out.numel() // layer.out_features
        else:
            count = out.numel() // layer.out_channels
        self.positions[layer] = self.positions.get(layer, 0) + count

    def _layer_macs(self, layer: nn.Module, removed_out: int = 0, removed_in: int = 0) -> int:
        positions = self.positions[layer]
        if isinstance(layer, nn.Linear):
            return positions * (layer.out_features - removed_out) * (layer.in_features - removed_in)
        assert isinstance(layer, nn.modules.conv._ConvNd)
        out_ch = layer.out_channels - removed_out
        in_ch = layer.in_channels - removed_in
        kernel = math.prod(layer.kernel_size)
        depthwise = layer.groups == layer.in_channels == layer.out_channels and layer.groups > 1
        if depthwise:  # pruning a depthwise conv removes whole groups, whichever side names it
            return positions * (layer.out_channels - max(removed_out, removed_in)) * kernel
        if layer.transposed:
            return positions * in_ch * (out_ch // layer.groups) * kernel
        return positions * out_ch * (in_ch // layer.groups) * kernel

    def estimate(self, removed: dict[tuple[nn.Module, str], int] | None = None) -> int:
        """MACs at the current widths less `removed[(layer, "out" | "in")]` channels."""
        removed = removed or {}
        return self.other + sum(
            self._layer_macs(m, removed.get((m, "out"), 0), removed.get((m, "in"), 0))
            for m in self.positions
        )
