"""The families the latency search's candidates come from (`latency_search.py`).

A family maps a knob in (0, 1], the share of cost kept, to a way of pruning the model:
plain global pruning to a MACs target (the simpler reference), channels allocated by
the latency table under each width rule (and sensitivity-weighted), and residual blocks
removed whole (the ones that change the outputs least per measured time saved) with
channels allocated for the rest.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import fx, nn

from contract import PruneSpec
from worker.engine.analyze import sensitivity
from worker.engine.analyze.blocks import Block, disjoint, find_blocks, remove_blocks
from worker.engine.analyze.costs import WithoutLayers
from worker.engine.analyze.preflight import build_dependency_graph
from worker.engine.analyze.sensitivity import relative_change
from worker.engine.errors import JobCancelled
from worker.engine.measure.evaluate import output_tensors
from worker.engine.prune.allocate import LayerCost, Slot, allocate, apply_allocation, with_rule
from worker.engine.prune.by_allocation import Scored
from worker.engine.prune.latency_candidates import (
    ApplyFn,
    FamilyFn,
    Kind,
    LatencyRuntime,
    build,
)
from worker.engine.prune.planner import WidthMultiple, constant_multiple, hardware_multiple

# Shares of the time to save that removed residual blocks provide, one candidate family
# each; channel pruning provides the rest (see blocks.py).
BLOCK_SHARES = (1 / 3, 2 / 3, 1.0)
# Blocks removed one at a time and timed side by side in one run.
BLOCKS_PER_RUN = 8


@dataclass
class Family:
    """A family of candidates: its label, its kind, how it prunes for a knob, and the
    knob its search starts from (None: the last family of the same kind's, else the aim)."""

    label: str
    kind: Kind
    make: FamilyFn
    start: float | None = None


def allocation_family(
    slots: list[Slot],
    cost: LayerCost,
    inputs: tuple[torch.Tensor, ...],
    blocks: Sequence[Block] = (),
    layers: dict[str, nn.Module] | None = None,
) -> FamilyFn:
    """Allocation under a budget of `cost`; with `blocks`, those are removed first and the
    channels are allocated over what remains (`layers`: the model's modules by name)."""
    if blocks:
        assert layers is not None
        gone = {name for block in blocks for name in block.layers}
        slots = [s for s in slots if s.name not in gone]
        cost = WithoutLayers(cost, {layers[name] for name in gone if name in layers})
    full = cost.total()

    def make(fraction: float) -> tuple[ApplyFn, bool]:
        allocation = allocate(slots, cost, fraction * full)

        def apply(module: nn.Module) -> None:
            _remover(blocks)(module)
            dg = build_dependency_graph(module, inputs)
            apply_allocation(dg, slots, allocation.keep, modules=dict(module.named_modules()))

        return apply, allocation.reached

    return make


def plain_family(plain: Callable[[nn.Module, float], None]) -> FamilyFn:
    def make(fraction: float) -> tuple[ApplyFn, bool]:
        reduction = min(0.99, max(0.01, 1.0 - fraction))
        return (lambda module: plain(module, reduction)), True

    return make


def candidate_families(
    spec: PruneSpec,
    slots: list[Slot],
    latency: LayerCost,
    inputs: tuple[torch.Tensor, ...],
    plain,
    weighted: list[Slot] | None = None,
) -> list[Family]:
    """Each candidate family, the simplest first; with `weighted` (the same slots weighed
    by sensitivity), the latency-priced families twice."""
    rules: list[tuple[str, WidthMultiple]] = (
        [(f"x{spec.round_to}", constant_multiple(spec.round_to))]
        if spec.round_to is not None
        else [("x16/x8", hardware_multiple), ("x8", constant_multiple(8))]
    )
    kinds = [("latency-priced", slots)]
    if weighted is not None:
        kinds.append(("latency-priced, sensitivity-weighted", weighted))
    families = [Family("global pruning to MACs", "plain", plain_family(plain))]
    for pricing, priced_slots in kinds:
        for label, rule in rules:
            ruled = with_rule(priced_slots, rule, spec.max_layer_ratio)
            make = allocation_family(ruled, latency, inputs)
            families.append(Family(f"{pricing}, {label}", "channels", make))
    return families


@dataclass
class Removable:
    """A residual block measured alone: removed, what it saves and what it changes."""

    block: Block
    saved: float  # share of the original's time, timed interleaved with it
    change: float  # relative output change on the runtime inputs


@torch.no_grad()
def removable_blocks(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    ignored: Sequence[nn.Module],
    runtime: LatencyRuntime,
    samples: Sequence[torch.Tensor],
    cancel: Callable[[], bool],
) -> list[Removable]:
    """The model's removable residual blocks (none unless it is an FX graph), each
    removed alone and timed side by side with the others; least output change per time
    saved first. Timed rather than priced by the table: a block's time is largely what
    the table does not see (activations, gates, memory passes)."""
    names = {id(m): n for n, m in module.named_modules()}
    blocks = find_blocks(module, inputs, [names[id(m)] for m in ignored if id(m) in names])
    if not blocks:
        return []
    reference = output_tensors(module.eval()(*samples))
    found = []
    # A few copies at a time: a deep network has dozens of blocks.
    for start in range(0, len(blocks), BLOCKS_PER_RUN):
        if cancel():
            raise JobCancelled()
        chunk = blocks[start : start + BLOCKS_PER_RUN]
        variants = {b.add: build(module, _remover([b])) for b in chunk}
        times = runtime.measure(variants)
        for b in chunk:
            saved = 1.0 - times[b.add] / times["original"]
            if saved > 0:
                change = relative_change(output_tensors(variants[b.add](*samples)), reference)
                found.append(Removable(b, saved, change))
    return sorted(found, key=lambda r: r.change / r.saved)


def block_families(
    spec: PruneSpec,
    removable: list[Removable],
    slots: list[Slot],
    cost: LayerCost,
    inputs: tuple[torch.Tensor, ...],
    module: nn.Module,
    aim: float,
) -> list[Family]:
    """Families that remove the best blocks until they provide a share (BLOCK_SHARES) of
    the time to save, and prune channels for the rest, each starting from the knob that
    keeps the aim over what remains."""
    rule = constant_multiple(spec.round_to) if spec.round_to is not None else hardware_multiple
    ruled = with_rule(slots, rule, spec.max_layer_ratio)
    layers = dict(module.named_modules())
    families: list[Family] = []
    seen: set[tuple[str, ...]] = set()
    for share in BLOCK_SHARES:
        chosen: list[Block] = []
        saved = 0.0
        for r in removable:
            if saved >= share * (1.0 - aim):
                break
            chosen.append(r.block)
            saved += r.saved
        chosen = disjoint(chosen)
        key = tuple(sorted(b.add for b in chosen))
        if chosen and key not in seen:
            seen.add(key)
            label = f"latency-priced, {len(chosen)} residual blocks removed"
            make = allocation_family(ruled, cost, inputs, chosen, layers)
            start = min(1.0, aim / max(1.0 - saved, aim))
            families.append(Family(label, "blocks", make, start))
    return families


def sensitivity_weighted(
    module: nn.Module,
    scored: Scored,
    spec: PruneSpec,
    weights: dict[str, float] | None,
    samples: Sequence[torch.Tensor],
    cancel: Callable[[], bool],
) -> list[Slot] | None:
    """The slots weighed by sensitivity, for candidates beside the unweighted ones; None
    when the scope weighs them already. Pricing by latency alone treats every group's
    least important half as equally costly to lose, so it cuts the layers that save the
    most time whether the network can spare them or not. Data-free, weighing them cut the
    output change of the latency-priced candidates on mobilenet_v2 (0.98 and 0.87 to 0.77
    and 0.81) and efficientnet_b0 (1.13 and 1.11 to 1.08 and 1.07); mobilenet_v3_small
    was mixed. The choice by output change keeps whichever serves the model better."""
    if spec.scope == "sensitivity":
        return None
    if weights is None:  # not scanned by the caller: scan the graph and groups scored here
        changes = sensitivity.scan(
            module, scored.pruner.DG, scored.slots, samples, should_cancel=cancel
        )
        weights = sensitivity.weights(changes)
    return [replace(slot, weight=weights.get(slot.name, 1.0)) for slot in scored.slots]


def _remover(blocks: Sequence[Block]) -> ApplyFn:
    def apply(module: nn.Module) -> None:
        if blocks:
            assert isinstance(module, fx.GraphModule)
            remove_blocks(module, blocks)

    return apply
