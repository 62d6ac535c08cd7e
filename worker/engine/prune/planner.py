"""Pruning plans: what one torch-pruning step would remove, priced before it is applied.

`WidthPruner.plan(step, ratio)` returns the groups a step at a cumulative channel ratio
would prune, without pruning them; `removed_channels` turns them into per-layer counts
that `MacProfile.estimate` and `params_removed` price. Searching the ratio over plans
needs one dependency graph and no model copies, so a MACs target is met exactly even on
large models.
"""

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from worker.engine.analyze.tp_extensions import index_mapping_frozen
from worker.engine.tp_adapter import planned_groups

WidthMultiple = Callable[[int], int]
Removed = dict[tuple[nn.Module, str], int]


def hardware_multiple(channels: int) -> int:
    """The width multiple fast kernels like: 16 for layers of 64+ channels, else 8."""
    if channels >= 64:
        return 16
    if channels >= 8:
        return 8
    return 1


def constant_multiple(multiple: int) -> WidthMultiple:
    """A width rule rounding every layer to `multiple` (1: any width)."""
    return lambda _channels: multiple


class WidthPruner(tp.pruner.BasePruner):
    """A BasePruner that plans steps at any ratio and rounds surviving widths per layer."""

    def __init__(self, *args: Any, width_multiple: WidthMultiple, **kwargs: Any) -> None:
        # A truthy round_to switches on torch-pruning's rounding path, which calls its
        # rounding hook (tp_adapter.ROUND_HOOK), overridden below.
        super().__init__(*args, round_to=1, **kwargs)
        self.width_multiple = width_multiple
        self._importance: dict[tuple[Any, Any], torch.Tensor] = {}

    def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
        multiple = max(1, self.width_multiple(current_channels))
        keep = current_channels - n_pruned
        keep -= keep % multiple
        # Never round a layer away entirely: keep at least one multiple.
        keep = max(keep, min(multiple, current_channels))
        return max(current_channels - keep, 0)

    def estimate_importance(self, group: Any) -> torch.Tensor:
        # The model does not change while a step is planned: score each group once.
        key = (group[0].dep.target.module, group[0].dep.handler)
        if key not in self._importance:
            self._importance[key] = self.importance(group)
        return self._importance[key]

    def forget_importance(self) -> None:
        """Call after the model changed (a step applied, new gradients)."""
        self._importance.clear()

    def plan(self, step: int, ratio: float) -> list[Any]:
        """The groups step `step` would prune at cumulative channel ratio `ratio`."""
        self.current_step = step
        self.per_step_pruning_ratio = [ratio] * (self.iterative_steps + 1)
        with index_mapping_frozen(self.DG):
            return list(planned_groups(self))


def removed_channels(pruner: tp.pruner.BasePruner, groups: list[Any]) -> Removed:
    """Output and input channels each layer loses under a plan."""
    indices: dict[tuple[nn.Module, str], set[int]] = defaultdict(set)
    for group in groups:
        for dep, idxs in group:
            layer = dep.target.module
            if not isinstance(layer, nn.Module):
                continue
            if pruner.DG.is_out_channel_pruning_fn(dep.handler):
                indices[(layer, "out")].update(idxs)
            elif pruner.DG.is_in_channel_pruning_fn(dep.handler):
                indices[(layer, "in")].update(idxs)
    return {key: len(v) for key, v in indices.items()}


def _params_after(layer: nn.Module, out_removed: int, in_removed: int) -> int:
    own = list(layer.parameters(recurse=False))
    if isinstance(layer, nn.modules.conv._ConvNd | nn.Linear):
        out_ch, in_ch = layer.weight.shape[0], layer.weight.shape[1]
        if isinstance(layer, nn.modules.conv._ConvNd) and layer.transposed:
            out_ch, in_ch = in_ch, out_ch  # transposed weights are (in, out / groups, ...)
            out_removed, in_removed = in_removed, out_removed
        depthwise = (
            isinstance(layer, nn.modules.conv._ConvNd)
            and layer.groups > 1
            and (layer.groups == layer.in_channels == layer.out_channels)
        )
        if depthwise:
            out_removed = max(out_removed, in_removed)
            in_removed = 0
        kernel = math.prod(layer.weight.shape[2:])
        weights = (out_ch - out_removed) * max(in_ch - in_removed, 0) * kernel
        return weights + (out_ch - out_removed if layer.bias is not None else 0)
    removed = max(out_removed, in_removed)  # norms and the like: one value per channel
    return sum(p.numel() * max(p.shape[0] - removed, 0) // p.shape[0] for p in own if p.dim())


def params_removed(removed: Removed) -> int:
    """Parameters a plan removes (norm layers and other per-channel parameters included)."""
    layers = {layer for layer, _ in removed}
    return sum(
        sum(p.numel() for p in layer.parameters(recurse=False))
        - _params_after(layer, removed.get((layer, "out"), 0), removed.get((layer, "in"), 0))
        for layer in layers
    )


@dataclass
class Choice:
    """A planned step: the ratio, its groups and the reduction it reaches."""

    ratio: float
    groups: list[Any]
    value: float


def search_ratio(
    evaluate: Callable[[float], Choice],
    goal: float,
    lo: float,
    hi: float,
    *,
    aim: float,
    max_evals: int,
) -> Choice:
    """The plan whose reduction is closest to `goal`, by regula falsi on the ratio.

    The reduction grows with the ratio in steps (channels are discrete, widths rounded),
    so the search keeps the closest plan seen and stops once within `aim`.
    """
    low, high = evaluate(lo), evaluate(hi)
    best = min((low, high), key=lambda c: abs(c.value - goal))
    if high.value <= goal or low.value >= goal:
        return best
    for _ in range(max_evals):
        if abs(best.value - goal) <= aim or high.ratio - low.ratio < 1e-4:
            break
        width = high.ratio - low.ratio
        guess = low.ratio + (goal - low.value) * width / max(high.value - low.value, 1e-12)
        ratio = min(max(guess, low.ratio + 0.1 * width), high.ratio - 0.1 * width)
        choice = evaluate(ratio)
        if abs(choice.value - goal) < abs(best.value - goal):
            best = choice
        if choice.value < goal:
            low = choice
        else:
            high = choice
    return best
