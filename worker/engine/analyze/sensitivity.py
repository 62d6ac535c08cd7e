"""Per-layer sensitivity: how much the outputs move when one group loses half its channels.

Magnitude importance ranks channels inside a layer well, but says little about which
layers can lose many channels: a narrow stem or a projection feeding the head breaks
long before a wide middle layer. The scan zeroes the least important half of one
dependency group at a time (the channels torch-pruning would remove: producers' outputs
and consumers' inputs, so the effect equals pruning them), runs the sample inputs and
records the relative change of the outputs. The allocator then weighs each group's
importance by its sensitivity, which gives non-uniform per-layer ratios
(`prune.scope: "sensitivity"`), for MACs, latency and accuracy-budget targets alike.
"""

from collections.abc import Callable, Sequence

import torch
import torch_pruning as tp
from torch import nn

from worker.engine.errors import JobCancelled
from worker.engine.measure.evaluate import output_tensors
from worker.engine.prune.allocate import Slot

# Share of a group's units zeroed by the scan.
SCAN_FRACTION = 0.5
# Weights are sensitivity relative to the median, clipped to this range.
_CLIP = (0.05, 20.0)

_Saved = list[tuple[torch.Tensor, torch.Tensor]]


def _zero(tensor: torch.Tensor, dim: int, idxs: torch.Tensor, saved: _Saved) -> None:
    if tensor.dim() <= dim or int(idxs.max()) >= tensor.shape[dim]:
        return
    saved.append((tensor, tensor.detach().clone()))
    tensor.data.index_fill_(dim, idxs.to(tensor.device), 0.0)


def _zero_layer(layer: nn.Module, idxs: torch.Tensor, out_side: bool, saved: _Saved) -> None:
    """Zero what channels `idxs` contribute through `layer` (its outputs or its inputs)."""
    if isinstance(layer, nn.modules.conv._ConvNd | nn.Linear):
        transposed = getattr(layer, "transposed", False)
        depthwise = isinstance(layer, nn.modules.conv._ConvNd) and layer.groups > 1
        if out_side or depthwise:
            _zero(layer.weight, 1 if transposed else 0, idxs, saved)
            if layer.bias is not None:
                _zero(layer.bias, 0, idxs, saved)
        else:
            _zero(layer.weight, 0 if transposed else 1, idxs, saved)
        return
    # Norms and per-channel constants: a zero scale and shift give a zero channel.
    for name, tensor in [
        *layer.named_parameters(recurse=False),
        *layer.named_buffers(recurse=False),
    ]:
        if tensor.is_floating_point() and "running" not in name:
            _zero(tensor, 0, idxs, saved)


def _zero_group(dg: tp.DependencyGraph, slot: Slot, units: int) -> _Saved:
    order = torch.argsort(slot.importance)[:units]
    idxs = torch.cat([order + g * slot.units for g in range(slot.ch_groups)])
    group = dg.get_pruning_group(slot.root, slot.handler, sorted(idxs.tolist()))
    saved: _Saved = []
    for dep, dep_idxs in group:
        layer = dep.target.module
        if isinstance(layer, nn.Module) and dep_idxs:
            out_side = dg.is_out_channel_pruning_fn(dep.handler)
            _zero_layer(layer, torch.as_tensor(list(dep_idxs), dtype=torch.long), out_side, saved)
    return saved


def _restore(saved: _Saved) -> None:
    for tensor, original in reversed(saved):
        tensor.data.copy_(original)


def relative_change(outputs: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> float:
    num = sum(
        float((o.float() - r.float()).pow(2).sum()) for o, r in zip(outputs, reference, strict=True)
    )
    den = sum(float(r.float().pow(2).sum()) for r in reference)
    return num / max(den, 1e-12)


@torch.no_grad()
def scan(
    module: nn.Module,
    dg: tp.DependencyGraph,
    slots: Sequence[Slot],
    sample_inputs: Sequence[torch.Tensor],
    *,
    on_progress: Callable[[float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> dict[str, float]:
    """Relative output change per slot when its least important half is zeroed."""
    was_training = module.training
    module.eval()
    try:
        reference = [t.detach() for t in output_tensors(module(*sample_inputs))]
        changes: dict[str, float] = {}
        for i, slot in enumerate(slots):
            if should_cancel is not None and should_cancel():
                raise JobCancelled()
            units = min(max(slot.step, round(slot.units * SCAN_FRACTION)), slot.units - 1)
            saved = _zero_group(dg, slot, units)
            try:
                changes[slot.name] = relative_change(
                    output_tensors(module(*sample_inputs)), reference
                )
            finally:
                _restore(saved)
            if on_progress is not None:
                on_progress((i + 1) / len(slots))
        return changes
    finally:
        module.train(was_training)


def weights(changes: dict[str, float]) -> dict[str, float]:
    """Damage multipliers: sensitivity relative to the median, clipped."""
    positive = sorted(v for v in changes.values() if v > 0)
    if not positive:
        return {name: 1.0 for name in changes}
    median = positive[len(positive) // 2]
    low, high = _CLIP
    return {
        name: min(high, max(low, value / median)) if value > 0 else low
        for name, value in changes.items()
    }
