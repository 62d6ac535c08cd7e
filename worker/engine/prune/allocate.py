"""Per-layer channel counts chosen by importance per unit of cost, under a budget.

Global magnitude pruning removes the least important channels wherever they are, which
says nothing about what removing them saves. Here every dependency group of
torch-pruning's graph (the channels that must go together) is a slot; the allocator
removes, one width step at a time, the block of channels that loses the least
importance per unit of cost saved, until the model's cost fits the budget. The cost is
pluggable: measured latency (`latency.py`), MACs, parameters or channels. A width step
is the group's hardware multiple, so every width stays a multiple of 8 or 16.

`apply_allocation` then removes the chosen number of least important channels from each
group through the dependency graph, so coupled layers stay consistent.
"""

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import torch
import torch_pruning as tp
from torch import nn

from worker.engine.prune.planner import WidthMultiple
from worker.engine.tp_adapter import channel_groups, is_attention_group

Side = tuple[nn.Module, str]  # (layer, "out" | "in")
# How strongly sensitivity tilts uniform pruning (allocate_tilted): keep share ~ weight^TILT.
TILT = 0.25


@dataclass
class Slot:
    """One dependency group: what it removes from which layers, and how it is ranked."""

    name: str  # the root layer's name
    root: nn.Module
    handler: Callable  # torch-pruning's pruning function for the root
    units: int  # prunable units (channels, or channel tuples for grouped layers)
    ch_groups: int  # channels per unit
    importance: torch.Tensor  # per unit, as torch-pruning ranks them (unsorted)
    touches: dict[Side, float]  # channels each layer side loses per unit removed
    step: int  # units removed at a time: keeps widths on the group's hardware multiple
    min_keep: int
    weight: float = 1.0  # sensitivity multiplier of the importance

    def damage_curve(self) -> torch.Tensor:
        """Estimated damage after removing the first k least important units, k = 0..units.

        The damage grows with the square of the importance removed, scaled so that
        removing the least important half costs `weight`: one channel more costs more
        the emptier a layer already is, which keeps any layer from being wiped out for
        a small saving, as a linear sum would.
        """
        removed = torch.cat(
            [torch.zeros(1), torch.cumsum(torch.sort(self.importance.float()).values, 0)]
        )
        half = float(removed[max(1, self.units // 2)]) or 1.0
        return self.weight * (removed / half) ** 2


class LayerCost:
    """Cost of a model as a sum over its layers, given the channels each side lost."""

    constant: float = 0.0

    def layers(self) -> Iterable[nn.Module]:
        raise NotImplementedError

    def __call__(self, layer: nn.Module, removed_out: float, removed_in: float) -> float:
        raise NotImplementedError

    def total(self, removed: dict[Side, float] | None = None) -> float:
        removed = removed or {}
        return self.constant + sum(
            self(layer, removed.get((layer, "out"), 0.0), removed.get((layer, "in"), 0.0))
            for layer in self.layers()
        )


@dataclass
class Allocation:
    keep: dict[str, int]  # slot name -> units kept
    cost: float  # the model's cost under this allocation
    removed_importance: float  # estimated damage: weighted importance removed (lower is better)
    reached: bool  # cost <= budget
    units: dict[str, int] = field(default_factory=dict)  # slot name -> units before
    removed: dict[Side, float] = field(default_factory=dict)


def collect_slots(
    pruner: tp.pruner.BasePruner,
    *,
    width_multiple: WidthMultiple,
    max_layer_ratio: float,
    weights: dict[str, float] | None = None,
) -> list[Slot]:
    """The groups `pruner` would prune, with their importance and what they touch.

    Importance is computed now, on the model as it is; attention groups are left out.
    """
    names = {m: n for n, m in pruner.model.named_modules()}
    slots = []
    for group in pruner.DG.get_all_groups(
        ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
    ):
        if is_attention_group(pruner, group):
            continue
        imp = pruner.estimate_importance(group)
        if imp is None:
            continue
        ch_groups = channel_groups(pruner, group)
        units_imp = imp.view(ch_groups, -1).mean(dim=0) if ch_groups > 1 else imp
        root = group[0].dep.target.module
        slot = _slot(
            group,
            names.get(root, ""),
            root,
            units_imp.detach().cpu(),
            ch_groups,
            pruner,
            width_multiple,
            max_layer_ratio,
        )
        if slot is not None:
            slot.weight = (weights or {}).get(slot.name, 1.0)
            slots.append(slot)
    return slots


def _slot(group, name, root, importance, ch_groups, pruner, width_multiple, max_layer_ratio):
    units = len(importance)
    touches: dict[Side, float] = {}
    for dep, idxs in group:
        layer = dep.target.module
        if not isinstance(layer, nn.Module):
            continue
        if pruner.DG.is_out_channel_pruning_fn(dep.handler):
            side = (layer, "out")
        elif pruner.DG.is_in_channel_pruning_fn(dep.handler):
            side = (layer, "in")
        else:
            continue
        touches[side] = max(touches.get(side, 0.0), len(idxs) / units)
    step, min_keep = _steps(units, ch_groups, width_multiple, max_layer_ratio)
    if units <= min_keep:
        return None
    return Slot(
        name, root, group[0].dep.handler, units, ch_groups, importance, touches, step, min_keep
    )


def _steps(
    units: int, ch_groups: int, width_multiple: WidthMultiple, max_layer_ratio: float
) -> tuple[int, int]:
    """(units per width step, fewest units kept) under a width rule and max_layer_ratio.

    The rule sees the group's original width, so a layer of 64+ channels keeps multiples
    of 16 however far it shrinks. A grouped conv (`ch_groups` > 1) keeps its number of
    groups and runs one small product per group, so the rule is applied to the channels
    of one group, and waived when it would leave a group only all or nothing: asking 13
    groups of 8 for a total multiple of 16 would make them unprunable.
    """
    if ch_groups > 1:
        multiple = max(1, width_multiple(units))
        step = multiple if multiple < units else 1
    else:
        step = max(1, width_multiple(units))
    floor = math.ceil(units * (1.0 - max_layer_ratio))
    return step, max(step, math.ceil(floor / step) * step)


def with_rule(
    slots: list[Slot], width_multiple: WidthMultiple, max_layer_ratio: float
) -> list[Slot]:
    """The same slots under another width rule (slots the rule cannot shrink are dropped)."""
    result = []
    for slot in slots:
        step, min_keep = _steps(slot.units, slot.ch_groups, width_multiple, max_layer_ratio)
        if slot.units > min_keep:
            result.append(replace(slot, step=step, min_keep=min_keep))
    return result


def allocate(slots: list[Slot], cost: LayerCost, budget: float) -> Allocation:
    """Remove the cheapest importance per unit of cost saved until the cost fits `budget`."""
    removed: dict[Side, float] = defaultdict(float)
    keep = [s.units for s in slots]
    ascending = [s.damage_curve() for s in slots]
    neighbours = _neighbours(slots)
    priced = set(cost.layers())
    total = cost.total()
    lost = 0.0
    proposals = {
        i: _propose(i, slots, keep, ascending, removed, cost, priced) for i in range(len(slots))
    }
    while total > budget:
        best = min(
            (i for i, p in proposals.items() if p is not None and p[1] > 0),
            key=lambda i: proposals[i][0] / proposals[i][1],  # type: ignore[index]
            default=None,
        )
        if best is None:
            break  # nothing left that saves anything
        value, saved, new_keep = proposals[best]  # type: ignore[misc]
        gone = keep[best] - new_keep
        for side, per_unit in slots[best].touches.items():
            removed[side] += gone * per_unit
        keep[best] = new_keep
        total -= saved
        lost += value
        for i in neighbours[best]:
            proposals[i] = _propose(i, slots, keep, ascending, removed, cost, priced)
    return Allocation(
        keep={s.name: k for s, k in zip(slots, keep, strict=True)},
        cost=total,
        removed_importance=lost,
        reached=total <= budget,
        units={s.name: s.units for s in slots},
        removed=dict(removed),
    )


def allocate_tilted(
    slots: list[Slot], cost: LayerCost, budget: float, *, tilt: float = TILT
) -> Allocation:
    """Uniform pruning tilted by sensitivity: each group keeps `u * weight ** tilt` of its
    units (on its width step, within its bounds), with the one global `u` bisected to the
    largest that fits `budget`. With equal weights this is plain uniform pruning, which
    holds up well at high compression; the weights move channels from robust groups to
    sensitive ones without letting a cost-driven greedy empty any layer."""

    def keeps(u: float) -> dict[str, int]:
        kept = {}
        for slot in slots:
            share = u * slot.weight**tilt
            units = slot.units if share >= 1.0 else int(share * slot.units) // slot.step * slot.step
            kept[slot.name] = min(slot.units, max(slot.min_keep, units))
        return kept

    def total(kept: dict[str, int]) -> float:
        return cost.total(_removed(slots, kept))

    low, high = 0.0, max(s.weight**-tilt for s in slots) if slots else 1.0
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if total(keeps(mid)) <= budget else (low, mid)
    kept = _top_up(slots, cost, budget, keeps(low))
    reached = total(kept) <= budget
    damage = sum(float(s.damage_curve()[s.units - kept[s.name]]) for s in slots)
    return Allocation(
        keep=kept,
        cost=total(kept),
        removed_importance=damage,
        reached=reached,
        units={s.name: s.units for s in slots},
        removed=_removed(slots, kept),
    )


def _top_up(
    slots: list[Slot], cost: LayerCost, budget: float, kept: dict[str, int]
) -> dict[str, int]:
    """Give width steps back while the budget allows, the most damage undone per unit of
    cost first: on coarse steps (a 16-channel layer keeps 8 or 16) a single global share
    would overshoot the target."""
    kept = dict(kept)
    curves = {s.name: s.damage_curve() for s in slots}
    spent = cost.total(_removed(slots, kept))
    while True:
        best, best_score = None, 0.0
        for slot in slots:
            grown = min(slot.units, kept[slot.name] + slot.step)
            if grown == kept[slot.name]:
                continue
            trial = {**kept, slot.name: grown}
            extra = cost.total(_removed(slots, trial)) - spent
            undone = float(
                curves[slot.name][slot.units - kept[slot.name]]
                - curves[slot.name][slot.units - grown]
            )
            if spent + extra <= budget and undone / max(extra, 1e-12) > best_score:
                best, best_score = slot, undone / max(extra, 1e-12)
        if best is None:
            return kept
        kept[best.name] = min(best.units, kept[best.name] + best.step)
        spent = cost.total(_removed(slots, kept))


def _removed(slots: list[Slot], kept: dict[str, int]) -> dict[Side, float]:
    removed: dict[Side, float] = defaultdict(float)
    for slot in slots:
        for side, per_unit in slot.touches.items():
            removed[side] += (slot.units - kept[slot.name]) * per_unit
    return removed


def _neighbours(slots: list[Slot]) -> dict[int, set[int]]:
    """Slots whose proposals change when slot i shrinks: those sharing one of its layers."""
    by_layer: dict[nn.Module, set[int]] = defaultdict(set)
    for i, slot in enumerate(slots):
        for layer, _ in slot.touches:
            by_layer[layer].add(i)
    return {
        i: set().union(*(by_layer[layer] for layer, _ in slot.touches)) | {i}
        for i, slot in enumerate(slots)
    }


def _propose(i, slots, keep, ascending, removed, cost, priced):
    """(importance lost, cost saved, new keep) of shrinking slot i by one width step."""
    slot = slots[i]
    current = keep[i]
    new_keep = (current - 1) // slot.step * slot.step
    if new_keep < slot.min_keep:
        return None
    start, stop = slot.units - current, slot.units - new_keep
    value = float(ascending[i][stop] - ascending[i][start])
    gone = current - new_keep
    saved = 0.0
    for layer in {layer for layer, _ in slot.touches} & priced:
        out_now, in_now = removed[(layer, "out")], removed[(layer, "in")]
        out_new = out_now + gone * slot.touches.get((layer, "out"), 0.0)
        in_new = in_now + gone * slot.touches.get((layer, "in"), 0.0)
        saved += cost(layer, out_now, in_now) - cost(layer, out_new, in_new)
    return value, saved, new_keep


def apply_allocation(
    dg: tp.DependencyGraph,
    slots: list[Slot],
    keep: dict[str, int],
    modules: dict[str, nn.Module] | None = None,
) -> None:
    """Prune each slot's least important units down to `keep[slot.name]`.

    `dg` is a dependency graph of the model to prune: the one the slots came from, or
    one of a copy, whose layers `modules` gives by name.
    """
    for slot in slots:
        n_pruned = slot.units - keep.get(slot.name, slot.units)
        if n_pruned <= 0:
            continue
        order = torch.argsort(slot.importance)[:n_pruned]
        group_size = slot.units
        idxs = torch.cat([order + g * group_size for g in range(slot.ch_groups)])
        root = modules[slot.name] if modules is not None else slot.root
        group = dg.get_pruning_group(root, slot.handler, sorted(idxs.tolist()))
        group.prune()
