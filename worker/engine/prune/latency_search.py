"""Pruning to a latency target measured on the runtime the model will be served on.

1. Every layer is priced by a `LayerLatencyTable` timed on the worker's execution provider.
2. The allocator chooses per-group widths by importance per millisecond saved, under a
   budget in table milliseconds.
3. The candidate is exported and timed in onnxruntime, interleaved with the original.
   The table misses what it does not see (element-wise work, memory traffic, layout
   changes), so the budget is corrected by the measured ratio and the allocation redone,
   a few rounds, until the measured reduction is on target.
4. This is done for several width multiples (`round_to` sweep: the hardware rule, 8),
   each with the groups weighed by the sensitivity scan as well (unless the scope weighs
   them already), and, as the simpler reference, for plain global pruning to a MACs
   target, whose MACs reduction is searched the same way until its measured latency is
   on target.
5. All finalists are timed once more side by side (their ratio to the original: the
   mean of this run and their search's), and their outputs compared with the
   original's on the runtime inputs. The one that meets the target with the outputs
   closest to the original's wins; a candidate is never chosen when another one is both
   faster and closer.
6. The winner is timed again in fresh runs, and its ratio is theirs alone: the readings
   that chose it lean towards the aim. Its own family is corrected once more when it
   sits more than 1% of the target off the aim: the next run must still find it within
   the band. When it is still off target, the next finalist takes its place.
"""

from collections.abc import Callable, Sequence

import torch
from torch import nn

from contract import HistoryPoint, PruneSpec
from worker.engine.analyze.costs import LatencyCost, input_shapes
from worker.engine.measure.stats import count_macs, count_params
from worker.engine.prune import latency_candidates as choice
from worker.engine.prune import latency_families as families
from worker.engine.prune.by_allocation import score
from worker.engine.prune.context import PruneContext
from worker.engine.prune.latency_candidates import AIM_MARGIN, LatencyRuntime
from worker.engine.prune.planner import hardware_multiple

__all__ = ["LatencyRuntime", "prune_to_latency"]


def prune_to_latency(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    spec: PruneSpec,
    ignored: Sequence[nn.Module],
    runtime: LatencyRuntime,
    plain: Callable[[nn.Module, float], None],
    ctx: PruneContext,
) -> tuple[list[HistoryPoint], dict[str, float]]:
    """Prune `module` in place to `spec.target.latency_reduction`; returns the history and
    the latency figures reached (ms of the original, the target and the pruned model).

    `plain(module, macs_reduction)` prunes a module in place the ordinary way (global
    ranking to a MACs target): the simpler reference every candidate is held against."""
    cancel = ctx.cancelled
    scored = score(module, inputs, spec, ignored, ctx.within(0.0, 0.2), rule=hardware_multiple)
    latency_cost = LatencyCost(runtime.table, scored.profile, input_shapes(module, inputs))
    goal = 1.0 - spec.target.value
    # Candidates aim a little faster than the target: timings move by a few percent from
    # one run to the next on a shared machine, and the target must hold in the next run.
    aim = goal * (1.0 - AIM_MARGIN)
    samples = ctx.samples(inputs)
    weighted = families.sensitivity_weighted(module, scored, spec, ctx.weights, samples, cancel)
    tried = families.candidate_families(spec, scored.slots, latency_cost, inputs, plain, weighted)
    removable = families.removable_blocks(module, inputs, ignored, runtime, samples, cancel)
    tried += families.block_families(
        spec, removable, weighted or scored.slots, latency_cost, inputs, module, aim
    )
    finalists = []
    # Where each family's knob starts: its own (with blocks removed, the share of what
    # remains that keeps the aim), else the last family's of the same kind, else the aim.
    starts: dict[str, float] = {}
    for i, family in enumerate(tried):
        key = family.label if family.kind == "blocks" else family.kind
        start = starts.get(key, family.start if family.start is not None else aim)
        found, starts[key] = choice.search_family(
            module, family.make, aim, family.label, family.kind, runtime, cancel, start
        )
        if found is not None:
            finalists.append(found)
        ctx.report(0.2 + 0.7 * (i + 1) / len(tried))
    runtime.table.save()
    times = runtime.measure({c.label: c.module for c in finalists})
    for c in finalists:
        # Two runs, each interleaved with the original: the family search's and this one.
        # Their mean halves the noise on which a candidate near the target falls.
        c.readings.append(times[c.label] / times["original"])
    choice.measure_errors(module, finalists, samples)
    chosen = choice.choose(finalists, goal)
    finish = choice.Finish(module, finalists, aim, goal, runtime, samples, cancel)
    if overshot := choice.worth_reaiming(finalists, chosen, goal):
        chosen = choice.reaim(finish, overshot, chosen)
    if runtime.recover is not None:
        chosen = choice.recovered_choice(finalists, chosen, goal, runtime.recover, cancel)
    chosen = choice.settle(finish, chosen)
    chosen.apply(module)
    ctx.notes.append(choice.summary(finalists, chosen, goal, runtime.table))
    original_ms = times["original"]
    figures = {
        "latency_ms_original": original_ms,
        "latency_ms_target": goal * original_ms,
        "latency_ms_measured": chosen.ratio * original_ms,
        "latency_reduction_measured": 1.0 - chosen.ratio,
    }
    ctx.report(1.0)
    point = HistoryPoint(step=1, macs=count_macs(module, inputs), params=count_params(module))
    return [point], figures
