"""Pruning by allocation: per-layer widths chosen for the whole model at once.

Used for `prune.scope: "sensitivity"` (MACs, parameter and channel targets: uniform
pruning tilted by each group's measured sensitivity, `allocate.allocate_tilted`) and by
the latency search (`latency_search.py`: widths by importance per millisecond). One
dependency graph is built, every group is scored once (importance, and sensitivity when
asked), the allocation chooses how many units each group keeps, and the groups are
pruned once. `iterative_steps` does not apply.

On a model without BatchNorm (an ONNX export folds it into the convolutions), `l1` and
`l2` rank a group's channels by the weights that read them (`ConsumerMagnitude`) for
these targets: a folded filter carries its norm's scale gamma / sigma, so channels of
small running variance look important whatever the next layers do with them. Pruned
to 30-60x fewer MACs and fine-tuned, the bench's digits ResNet kept 2-13 points more
accuracy this way (about what the same network pruned before folding keeps), its
Conv1d sequence net 1-2 points more at 20-40x; at 15-25x the two rankings tie.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function

from contract import HistoryPoint, PruneSpec
from worker.engine.analyze import sensitivity
from worker.engine.analyze.costs import ChannelCost, MacCost, ParamCost
from worker.engine.analyze.preflight import PRUNER_KWARGS
from worker.engine.errors import PruningFailed
from worker.engine.measure.stats import MacProfile, count_params
from worker.engine.prune.allocate import (
    Allocation,
    LayerCost,
    Slot,
    allocate_tilted,
    apply_allocation,
    collect_slots,
)
from worker.engine.prune.context import PruneContext
from worker.engine.prune.importance import has_batchnorm, make_importance
from worker.engine.prune.planner import (
    WidthMultiple,
    WidthPruner,
    constant_multiple,
    hardware_multiple,
)
from worker.engine.prune.ranking_inputs import backprop, taylor_proxy
from worker.engine.types import CancelFn


def width_rule(spec: PruneSpec) -> WidthMultiple:
    return constant_multiple(spec.round_to) if spec.round_to is not None else hardware_multiple


@dataclass
class Scored:
    """A model's dependency graph with every group scored, ready to allocate."""

    pruner: WidthPruner
    slots: list[Slot]
    profile: MacProfile
    params_before: int


class ConsumerMagnitude(tp.importance.GroupMagnitudeImportance):
    """Lp magnitude of each channel's consumers: the input columns of the convolutions and
    linear layers that read it, summed over the group. Invariant to how a folded norm
    scaled the channel's own filter. A group with no plain consumer (grouped or
    transposed ones only) is ranked by torch-pruning's whole-group magnitude."""

    @torch.no_grad()
    def __call__(self, group):  # noqa: ANN001, ANN204
        imps, roots = [], []
        for i, (dep, idxs) in enumerate(group):
            layer, fn = dep.layer, dep.pruning_fn
            if fn not in (function.prune_conv_in_channels, function.prune_linear_in_channels):
                continue
            if isinstance(layer, nn.modules.conv._ConvNd) and (
                layer.groups != 1 or layer.transposed
            ):
                return super().__call__(group)
            if not isinstance(layer, nn.modules.conv._ConvNd | nn.Linear):
                continue
            columns = layer.weight.data.transpose(0, 1).flatten(1)
            imps.append(columns[idxs].abs().pow(self.p).sum(1))
            roots.append(group[i].root_idxs)
        if not imps:
            return super().__call__(group)
        return self._normalize(self._reduce_to_root(group, imps, roots), self.normalizer)

    def _reduce_to_root(self, group, imps, roots) -> torch.Tensor:  # noqa: ANN001
        """Sum (or mean) of the consumers' importance per root channel.

        torch-pruning's `_reduce` sizes its result like the first importance, which is the
        root's own in its importances; a consumer behind a flatten has one column per
        channel and position, and the result would be ranked in that space (and a conv
        pruned by flattened-feature indices ends with a negative width)."""
        reduced = torch.zeros(len(group[0].idxs), dtype=torch.float32, device=imps[0].device)
        for imp, root_idxs in zip(imps, roots, strict=True):
            index = torch.tensor(root_idxs, device=imp.device)
            reduced.scatter_add_(0, index, imp.to(reduced.dtype))
        return reduced / len(imps) if self.group_reduction == "mean" else reduced


def ranking(spec: PruneSpec, module: nn.Module, notes: list[str]) -> tp.importance.Importance:
    """The importance that ranks channels for an allocation to a MACs, parameter or channel
    target: `ConsumerMagnitude` for l1/l2 on a model without BatchNorm, else the method's."""
    folded = not has_batchnorm(module)
    if spec.method in ("l1", "l2") and folded and spec.target.kind != "latency_reduction":
        return ConsumerMagnitude(p=1 if spec.method == "l1" else 2)
    return make_importance(spec.method, module=module, notes=notes)


def score(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    spec: PruneSpec,
    ignored: Sequence[nn.Module],
    ctx: PruneContext,
    *,
    rule: WidthMultiple,
    importance: tp.importance.Importance | None = None,
) -> Scored:
    """Build the graph and score every group; sensitivity-weighted when the scope says so.
    `importance` ranks the channels; the method's own when None."""
    if spec.method == "unstructured_l1":
        raise PruningFailed(
            "unstructured_l1 removes no channels: it cannot serve a sensitivity scope or a "
            "latency target",
            code="invalid_spec",
        )
    profile = MacProfile(module, inputs)
    pruner = WidthPruner(
        module,
        inputs,
        importance=(
            importance
            if importance is not None
            else make_importance(spec.method, module=module, notes=ctx.notes)
        ),
        global_pruning=False,
        pruning_ratio=0.0,
        max_pruning_ratio=spec.max_layer_ratio,
        iterative_steps=1,
        ignored_layers=list(ignored),
        width_multiple=rule,
        **PRUNER_KWARGS,
    )
    if spec.method == "taylor":
        backprop(module, ctx.loss_fn or taylor_proxy(module, inputs))
    slots = collect_slots(pruner, width_multiple=rule, max_layer_ratio=spec.max_layer_ratio)
    module.zero_grad(set_to_none=True)
    if not slots:
        raise PruningFailed("no prunable layer groups left", code="nothing_to_prune")
    if spec.scope == "sensitivity":
        weights = ctx.weights
        if weights is None:
            changes = sensitivity.scan(
                module,
                pruner.DG,
                slots,
                ctx.samples(inputs),
                on_progress=ctx.on_progress,
                should_cancel=ctx.should_cancel,
            )
            weights = sensitivity.weights(changes)
        for slot in slots:
            slot.weight = weights.get(slot.name, 1.0)
    return Scored(pruner, slots, profile, count_params(module))


def sensitivity_weights(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    spec: PruneSpec,
    ignored: Sequence[nn.Module],
    sample_inputs: Sequence[torch.Tensor] | None = None,
    should_cancel: CancelFn | None = None,
) -> dict[str, float]:
    """The scan's weights alone, to reuse across several prunings of copies of `module`."""
    ctx = PruneContext(sample_inputs=sample_inputs, should_cancel=should_cancel)
    scored = score(
        module,
        inputs,
        spec.model_copy(update={"scope": "sensitivity"}),
        ignored,
        ctx,
        rule=width_rule(spec),
        importance=ranking(spec, module, ctx.notes),
    )
    return {slot.name: slot.weight for slot in scored.slots}


def target_cost(scored: Scored, spec: PruneSpec, module: nn.Module) -> tuple[LayerCost, float]:
    """The cost the target counts and the budget it allows, for a non-latency target."""
    kind, value = spec.target.kind, spec.target.value
    if kind == "macs_reduction":
        cost: LayerCost = MacCost(scored.profile)
        return cost, (1.0 - value) * scored.profile.total
    if kind == "params_reduction":
        cost = ParamCost(module)
        return cost, (1.0 - value) * cost.total()
    cost = ChannelCost(module)
    return cost, (1.0 - value) * cost.total()


def prune_by_cost(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    spec: PruneSpec,
    ignored: Sequence[nn.Module],
    ctx: PruneContext,
) -> tuple[list[HistoryPoint], Allocation]:
    """Prune `module` in place to a MACs, parameter or channel target by allocation."""
    scored = score(
        module,
        inputs,
        spec,
        ignored,
        ctx.within(0.0, 0.8),
        rule=width_rule(spec),
        importance=ranking(spec, module, ctx.notes),
    )
    ctx.check_cancel()
    cost, budget = target_cost(scored, spec, module)
    allocation = allocate_tilted(scored.slots, cost, budget)
    apply_allocation(scored.pruner.DG, scored.slots, allocation.keep)
    ctx.report(1.0)
    point = HistoryPoint(step=1, macs=scored.profile.estimate(), params=count_params(module))
    return [point], allocation
