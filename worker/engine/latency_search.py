"""Pruning to a latency target measured on the runtime the model will be served on.

1. Every layer is priced by a `LatencyTable` timed on the worker's execution provider.
2. The allocator chooses per-group widths by importance per millisecond saved, under a
   budget in table milliseconds.
3. The candidate is exported and timed in onnxruntime, interleaved with the original.
   The table misses what it does not see (element-wise work, memory traffic, layout
   changes), so the budget is corrected by the measured ratio and the allocation redone,
   a few rounds, until the measured reduction is on target.
4. This is done for several width multiples (`round_to` sweep: the hardware rule, 8)
   and, as the simpler reference, for widths priced by MACs instead of milliseconds.
   All finalists are timed once more side by side. The one that meets the target while
   removing the least importance wins; a candidate is never chosen when another one is
   both faster and removes less.
"""

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from contract import HistoryPoint, PruneSpec
from worker.engine.allocate import (
    Allocation,
    LayerCost,
    Slot,
    allocate,
    apply_allocation,
    with_rule,
)
from worker.engine.costs import LatencyCost, MacCost, input_shapes
from worker.engine.errors import JobCancelled
from worker.engine.latency import LatencyTable
from worker.engine.planner import WidthMultiple, constant_multiple, hardware_multiple
from worker.engine.preflight import build_dependency_graph
from worker.engine.prune_alloc import LossFn, score
from worker.engine.stats import count_macs, count_params

# Measured latency may exceed the target latency by this fraction and still meet it.
LATENCY_SLACK = 0.05
# Candidates aim this fraction below the target latency (see prune_to_latency).
AIM_MARGIN = 0.03
# How close (fraction points of reduction) a candidate must come before the search stops.
_AIM = 0.015
_ROUNDS = 3

# Times the given candidate modules and the original side by side: name -> p50 ms, with
# the original under "original".
MeasureFn = Callable[[dict[str, nn.Module]], dict[str, float]]


@dataclass
class LatencyProbe:
    """What a latency target needs from its caller: a table and a way to time models."""

    table: LatencyTable
    measure: MeasureFn


@dataclass
class Candidate:
    label: str
    slots: list[Slot]
    allocation: Allocation
    ratio: float  # measured latency ÷ the original's, in the same timing run
    module: nn.Module


def _variants(spec: PruneSpec) -> list[tuple[str, str, WidthMultiple]]:
    """(label, cost, width rule) of each candidate family, the simplest first."""
    if spec.round_to is not None:
        rule = constant_multiple(spec.round_to)
        return [
            (f"MACs-priced, x{spec.round_to}", "macs", rule),
            (f"latency-priced, x{spec.round_to}", "latency", rule),
        ]
    return [
        ("MACs-priced, x16/x8", "macs", hardware_multiple),
        ("latency-priced, x16/x8", "latency", hardware_multiple),
        ("latency-priced, x8", "latency", constant_multiple(8)),
    ]


def _build(
    module: nn.Module, inputs: tuple[torch.Tensor, ...], slots: list[Slot], keep: dict[str, int]
) -> nn.Module:
    """A pruned copy of `module` under an allocation."""
    candidate = copy.deepcopy(module).eval()
    dg = build_dependency_graph(candidate, inputs)
    apply_allocation(dg, slots, keep, modules=dict(candidate.named_modules()))
    return candidate


def _search_family(
    module,
    inputs,
    slots,
    cost: LayerCost,
    goal_ratio: float,
    label: str,
    probe: LatencyProbe,
    cancel,
    start: float,
) -> tuple[Candidate | None, float]:
    """Correct the budget by measurement until the candidate's latency ratio is on goal.

    Returns the closest candidate and the budget fraction that produced it, from which
    the next family of the same cost starts."""
    full = cost.total()
    fraction, best, best_fraction = start, None, start
    tried: list[tuple[float, float]] = []  # (budget fraction, measured ratio)
    for _ in range(_ROUNDS):
        if cancel():
            raise JobCancelled()
        allocation = allocate(slots, cost, fraction * full)
        candidate = _build(module, inputs, slots, allocation.keep)
        times = probe.measure({label: candidate})
        ratio = times[label] / times["original"]
        found = Candidate(label, slots, allocation, ratio, candidate)
        if best is None or _closer(found, best, goal_ratio):
            best, best_fraction = found, fraction
        if abs(ratio - goal_ratio) <= _AIM or not allocation.reached and ratio > goal_ratio:
            break
        tried.append((fraction, ratio))
        fraction = _next_fraction(tried, goal_ratio)
    return best, best_fraction


def _next_fraction(tried: list[tuple[float, float]], goal: float) -> float:
    """The budget to try next: proportional correction first, then the secant through the
    two closest tries. The table's view of the model is proportional to the real one,
    not equal to it, and widths move in steps, so the ratio is not linear in the budget."""
    if len(tried) == 1:
        fraction, ratio = tried[0]
        guess = fraction * goal / ratio
    else:
        (f1, r1), (f2, r2) = sorted(tried, key=lambda p: abs(p[1] - goal))[:2]
        guess = f1 * goal / r1 if abs(r2 - r1) < 1e-6 else f1 + (goal - r1) * (f2 - f1) / (r2 - r1)
    return min(1.0, max(0.02, guess))


def _closer(a: Candidate, b: Candidate, goal: float) -> bool:
    """Prefer meeting the goal, then being close to it."""
    a_meets, b_meets = a.ratio <= goal * (1 + LATENCY_SLACK), b.ratio <= goal * (1 + LATENCY_SLACK)
    if a_meets != b_meets:
        return a_meets
    return abs(a.ratio - goal) < abs(b.ratio - goal)


def _choose(finalists: list[Candidate], goal_ratio: float) -> Candidate:
    """Meets the target, then least importance removed; never one that another candidate
    beats on both speed and importance kept."""
    limit = goal_ratio * (1 + LATENCY_SLACK)
    meeting = [c for c in finalists if c.ratio <= limit]
    pool = meeting or [min(finalists, key=lambda c: c.ratio)]
    best = min(pool, key=lambda c: c.allocation.removed_importance)
    for other in finalists:
        if (
            other.ratio < best.ratio
            and other.allocation.removed_importance <= best.allocation.removed_importance
        ):
            best = other
    return best


def prune_to_latency(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    spec: PruneSpec,
    ignored: Sequence[nn.Module],
    probe: LatencyProbe,
    *,
    notes: list[str],
    loss_fn: LossFn | None = None,
    weights: dict[str, float] | None = None,
    probe_inputs: Sequence[torch.Tensor] | None = None,
    on_progress: Callable[[float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> tuple[list[HistoryPoint], dict[str, float]]:
    """Prune `module` in place to `spec.target.latency_reduction`; returns the history and
    the latency figures reached (ms of the original, the target and the pruned model)."""
    cancel = should_cancel or (lambda: False)
    report = on_progress or (lambda _f: None)
    scored = score(
        module,
        inputs,
        spec,
        ignored,
        rule=hardware_multiple,
        notes=notes,
        loss_fn=loss_fn,
        weights=weights,
        probe_inputs=probe_inputs,
        on_progress=lambda f: report(0.2 * f),
        should_cancel=cancel,
    )
    latency_cost = LatencyCost(probe.table, scored.profile, input_shapes(module, inputs))
    costs = {"latency": latency_cost, "macs": MacCost(scored.profile)}
    goal = 1.0 - spec.target.value
    # Candidates aim a little faster than the target: timings move by a few percent from
    # one run to the next on a shared machine, and the target must hold in the next run.
    aim = goal * (1.0 - AIM_MARGIN)
    families = _variants(spec)
    finalists = []
    starts = {kind: aim for kind in costs}
    for i, (label, kind, rule) in enumerate(families):
        slots = with_rule(scored.slots, rule, spec.max_layer_ratio)
        found, starts[kind] = _search_family(
            module, inputs, slots, costs[kind], aim, label, probe, cancel, starts[kind]
        )
        if found is not None:
            finalists.append(found)
        report(0.2 + 0.7 * (i + 1) / len(families))
    probe.table.save()
    times = probe.measure({c.label: c.module for c in finalists})
    for c in finalists:
        c.ratio = times[c.label] / times["original"]
    chosen = _choose(finalists, goal)
    apply_allocation(scored.pruner.DG, chosen.slots, chosen.allocation.keep)
    notes.append(_summary(finalists, chosen, goal, probe.table))
    original_ms = times["original"]
    figures = {
        "latency_ms_original": original_ms,
        "latency_ms_target": goal * original_ms,
        "latency_ms_measured": chosen.ratio * original_ms,
        "latency_reduction_measured": 1.0 - chosen.ratio,
    }
    report(1.0)
    point = HistoryPoint(step=1, macs=count_macs(module, inputs), params=count_params(module))
    return [point], figures


def _summary(
    finalists: list[Candidate], chosen: Candidate, goal: float, table: LatencyTable
) -> str:
    listed = "; ".join(
        f"{c.label}: {1 - c.ratio:.1%} less time" + (" (chosen)" if c is chosen else "")
        for c in finalists
    )
    return (
        f"latency target {1 - goal:.1%} less time on {table.provider} ({table.threads} "
        f"threads): {listed}; {table.measured} layer shapes timed for the latency table"
    )
