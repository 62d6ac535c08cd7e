"""Structured pruning to a target: MACs, parameters or a channel ratio.

Everything goes through torch-pruning's dependency graph, so coupled channels (residual
additions, concatenations, depthwise convolutions) are removed together and any
`nn.Module` works, including the FX graphs onnx2torch builds from ONNX files.

Pruning is iterative: step k of n removes channels until the reduction reaches k/n of
the target, re-ranking channels by importance after each step. Each step's channel ratio
is searched over priced plans (see `planner.py`), so the target is met within
`TOLERANCE` without trial copies of the model. Surviving widths are rounded to
hardware-friendly multiples (16 for wide layers, 8 otherwise) because odd widths run
slowly in onnxruntime; when rounding makes the target unreachable, the last step tries
finer multiples.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from contract import HistoryPoint, LayerChange, PruneSpec, Target
from worker.engine.analyze.preflight import PRUNER_KWARGS
from worker.engine.errors import JobCancelled, PruningFailed
from worker.engine.measure.evaluate import is_classification, output_tensors
from worker.engine.measure.stats import MacProfile, count_macs, count_params
from worker.engine.prune.by_allocation import prune_by_cost
from worker.engine.prune.context import PruneContext
from worker.engine.prune.importance import make_importance
from worker.engine.prune.latency_search import LatencyRuntime, prune_to_latency
from worker.engine.prune.planner import (
    Choice,
    WidthMultiple,
    WidthPruner,
    constant_multiple,
    hardware_multiple,
    params_removed,
    removed_channels,
    search_ratio,
)
from worker.engine.prune.ranking_inputs import LossFn, backprop, seeded_samples, taylor_proxy

__all__ = ["PruneResult", "hardware_multiple", "prune_model", "TOLERANCE", "UNSTRUCTURED_NOTE"]

# Accepted distance between the achieved and the requested reduction (fraction points).
TOLERANCE = 0.02
# How close the last step aims; intermediate steps need not be exact.
_AIM_FINAL, _AIM_STEP = 0.005, 0.02
_EVALS_FINAL, _EVALS_STEP = 14, 6
UNSTRUCTURED_NOTE = "unstructured sparsity gives no speed-up in onnxruntime"


@dataclass
class PruneResult:
    """What pruning did to the model (all counts at batch 1)."""

    layers: list[LayerChange]
    history: list[HistoryPoint]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    notes: list[str] = field(default_factory=list)
    # The figures reached: macs_reduction, params_reduction and the channel ratio used.
    achieved: dict[str, float] = field(default_factory=dict)


def _as_inputs(example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


def _prunable_layers(module: nn.Module) -> dict[str, int]:
    """Output widths of the conv and linear layers, by name."""
    widths = {}
    for name, m in module.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            widths[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            widths[name] = m.out_features
    return widths


def _ignored_names(
    module: nn.Module, protected: Sequence[nn.Module], names: list[str]
) -> list[str]:
    """Names of the protected modules plus the spec's ignored layers (which must exist)."""
    by_id = {id(m): name for name, m in module.named_modules()}
    known = set(by_id.values())
    unknown = [n for n in names if n not in known]
    if unknown:
        sample = ", ".join(sorted(n for n in known if n)[:8])
        raise PruningFailed(
            f"prune.ignored_layers names unknown layers {unknown}; layers look like: {sample}",
            code="unknown_layer",
        )
    protected_names = [by_id[id(m)] for m in protected if id(m) in by_id]
    return sorted(set(protected_names) | set(names))


def _resolve(module: nn.Module, names: list[str]) -> list[nn.Module]:
    modules = dict(module.named_modules())
    return [modules[n] for n in names]


def _reduction(before: int, after: int) -> float:
    return 1.0 - after / before if before else 0.0


def _width_rules(spec: PruneSpec) -> list[tuple[str, WidthMultiple]]:
    """Width rules to try, coarsest first; an explicit round_to allows no other."""
    if spec.round_to is not None:
        return [(f"multiples of {spec.round_to}", constant_multiple(spec.round_to))]
    return [
        ("multiples of 16 (64+ channels) or 8", hardware_multiple),
        ("multiples of 8", constant_multiple(8)),
        ("multiples of 4", constant_multiple(4)),
        ("any width", constant_multiple(1)),
    ]


@dataclass
class _Run:
    """One in-place iterative pruning run and what it measures."""

    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    spec: PruneSpec
    pruner: WidthPruner
    profile: MacProfile
    macs_before: int
    params_before: int
    notes: list[str]

    def value(self, groups: list) -> float:
        """The reduction of the targeted quantity once `groups` are pruned."""
        removed = removed_channels(self.pruner, groups)
        if self.spec.target.kind == "params_reduction":
            after = count_params(self.module) - params_removed(removed)
            return _reduction(self.params_before, after)
        return _reduction(self.macs_before, self.profile.estimate(removed))

    def evaluate(self, step: int) -> Callable[[float], Choice]:
        def plan(ratio: float) -> Choice:
            groups = self.pruner.plan(step, ratio)
            return Choice(ratio=ratio, groups=groups, value=self.value(groups))

        return plan

    def choose(self, step: int, last: bool, floor: float) -> Choice:
        """The plan for `step`: a fixed ratio, or the one reaching this step's goal."""
        spec, steps = self.spec, self.spec.iterative_steps
        if spec.target.kind == "channel_ratio":
            return self.evaluate(step)(spec.target.value * step / steps)
        goal = spec.target.value * step / steps
        upper = min(spec.max_layer_ratio, 0.999)
        if not last:
            return search_ratio(
                self.evaluate(step), goal, floor, upper, aim=_AIM_STEP, max_evals=_EVALS_STEP
            )
        return self._choose_last(step, goal, floor, upper)

    def _choose_last(self, step: int, goal: float, floor: float, upper: float) -> Choice:
        best: Choice | None = None
        first_rule = self.pruner.width_multiple
        for index, (label, rule) in enumerate(_width_rules(self.spec)):
            if index > 0 and self.spec.round_to is None:
                self.pruner.width_multiple = rule
            # The earlier steps' ratio bounds the search only under their own rounding: a
            # finer one may reach the goal at a lower ratio (DPN-68's grouped convolutions
            # pruned nothing at 0.9 under multiples of 4 and 75% of the MACs at 0.9 under
            # any width). The ratio is cumulative, so a lower one prunes no channel back.
            lowest = floor if index == 0 else 0.0
            choice = search_ratio(
                self.evaluate(step), goal, lowest, upper, aim=_AIM_FINAL, max_evals=_EVALS_FINAL
            )
            if best is None or abs(choice.value - goal) < abs(best.value - goal):
                best = choice
            if abs(choice.value - goal) <= TOLERANCE - _AIM_FINAL:
                if index > 0:
                    self.notes.append(
                        f"last step rounded widths to {label}: coarser rounding could not "
                        "meet the target"
                    )
                return choice
        self.pruner.width_multiple = first_rule
        assert best is not None
        return best


def _apply(run: _Run, choice: Choice) -> None:
    """Prune the planned groups one by one, each rebuilt from its root just before.

    A plan holds every group of the step at once, with the channel offsets of each
    concatenation and split as they were before any of them was pruned; pruning the first
    group moves the offsets the others were built with (a dense block reads every earlier
    feature map through concatenations, a C2f block splits and re-concatenates), and a
    stale group cuts a concatenation on one side only. torch-pruning refreshes its index
    mappings whenever it builds a group, so rebuilding each group from its root's own
    indices (which no other group changes) prunes the right channels everywhere.
    """
    dg = run.pruner.DG
    for group in choice.groups:
        root = group[0]
        dg.get_pruning_group(root.dep.target.module, root.dep.handler, list(root.idxs)).prune()
    run.pruner.forget_importance()


class _StepAgreement:
    """Top-1 agreement with the unpruned model on seeded noise, measured after each step
    (before any fine-tuning) so that the report's curve has a point per step. None where
    the first output is not class scores, or the model does not run on such a batch."""

    SAMPLES = 8

    def __init__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self.samples = seeded_samples(inputs, self.SAMPLES)
        self.reference: torch.Tensor | None = None
        try:
            first = self._first_output(module)
        except Exception:  # a fixed batch, an input without a batch dim: no curve
            return
        if is_classification(first):
            self.reference = first.argmax(dim=1)

    def _first_output(self, module: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return output_tensors(module(*self.samples))[0]

    def __call__(self, module: nn.Module) -> float | None:
        if self.reference is None:
            return None
        same = self._first_output(module).argmax(dim=1) == self.reference
        return float(same.float().mean())


def _iterate(
    run: _Run,
    loss_fn: LossFn | None,
    on_progress: Callable[[float], None] | None,
    cancel: Callable[[], bool],
) -> tuple[list[HistoryPoint], float]:
    """Prune step by step; returns the history and the last channel ratio used."""
    steps, history, ratio = run.spec.iterative_steps, [], 0.0
    proxy = None
    agreement = _StepAgreement(run.module, run.inputs)
    for step in range(1, steps + 1):
        if cancel():
            raise JobCancelled()
        if run.spec.method == "taylor":
            proxy = loss_fn or proxy or taylor_proxy(run.module, run.inputs)
            backprop(run.module, proxy)
            run.pruner.forget_importance()
        choice = run.choose(step, step == steps, ratio)
        _apply(run, choice)
        ratio = choice.ratio
        history.append(
            HistoryPoint(
                step=step,
                macs=run.profile.estimate(),
                params=count_params(run.module),
                agreement=agreement(run.module),
            )
        )
        if on_progress is not None:
            on_progress(step / steps)
    run.module.zero_grad(set_to_none=True)
    return history, ratio


def _unreachable_note(spec: PruneSpec, achieved: float) -> str | None:
    kind, target = spec.target.kind, spec.target.value
    if kind == "channel_ratio" or abs(achieved - target) <= TOLERANCE:
        return None
    return (
        f"target {kind}={target:.3f} not reachable: achieved {achieved:.3f} (limited by "
        "protected layers, ignored layers, max_layer_ratio or channel granularity)"
    )


def _layer_changes(before: dict[str, int], module: nn.Module) -> list[LayerChange]:
    """Every layer's width before and after; 0 after for a layer removed with its block."""
    after = _prunable_layers(module)
    return [
        LayerChange(name=name, out_channels_before=width, out_channels_after=after.get(name, 0))
        for name, width in before.items()
    ]


def _prune_unstructured(module: nn.Module, spec: PruneSpec, ignored: list[str]) -> float:
    """Zero the smallest-magnitude conv/linear weights; returns the sparsity reached."""
    skip = set(ignored)
    weights = [
        m.weight
        for name, m in module.named_modules()
        if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)
        and not any(name == s or name.startswith(s + ".") for s in skip)
    ]
    if not weights:
        raise PruningFailed("no conv or linear weights left to sparsify", code="nothing_to_prune")
    sparsity = spec.target.value
    with torch.no_grad():
        if spec.scope == "global":
            magnitudes = torch.cat([w.detach().abs().flatten() for w in weights])
            k = max(1, int(sparsity * magnitudes.numel()))
            threshold = magnitudes.kthvalue(k).values
            for w in weights:
                w.mul_((w.abs() > threshold).to(w.dtype))
        else:
            for w in weights:
                k = int(sparsity * w.numel())
                if k > 0:
                    threshold = w.detach().abs().flatten().kthvalue(k).values
                    w.mul_((w.abs() > threshold).to(w.dtype))
        zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)


# How a spec is pruned; `choose_strategy` is the one place that decides.
Strategy = Literal["latency_search", "allocation", "iterative"]


def choose_strategy(spec: PruneSpec) -> Strategy:
    """`latency_search` for a latency target (candidates timed on the runtime,
    `latency_search.py`); `allocation` for the sensitivity scope (widths for the whole
    model at once, `by_allocation.py`); otherwise `iterative` (torch-pruning steps,
    channels re-ranked after each, here)."""
    if spec.target.kind == "latency_reduction":
        return "latency_search"
    if spec.scope == "sensitivity":
        return "allocation"
    return "iterative"


def prune_model(
    module: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    spec: PruneSpec,
    *,
    protected: Sequence[nn.Module] = (),
    loss_fn: LossFn | None = None,
    on_progress: Callable[[float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    latency: LatencyRuntime | None = None,
    sensitivity: dict[str, float] | None = None,
    sample_inputs: Sequence[torch.Tensor] | None = None,
) -> PruneResult:
    """Prune `module` in place to `spec.target`; see the module docstring.

    `protected` layers (and the layers named in `spec.ignored_layers`) keep their output
    channels. `loss_fn(model) -> loss` is used by the `taylor` method to get gradients on
    whichever copy it is given; without it a data-free proxy is used.
    `on_progress(fraction)` reports progress within this stage; `should_cancel()` is
    checked between pruning steps and raises JobCancelled when it returns True.

    A `latency_reduction` target needs `latency` (a latency table and a way to time
    candidates on the runtime). `prune.scope: "sensitivity"` scans the layers on
    `sample_inputs` (seeded noise when None) unless `sensitivity` gives the weights
    already (from `by_allocation.sensitivity_weights`).
    """
    inputs = _as_inputs(example_inputs)
    cancel = should_cancel or (lambda: False)
    ignored = _ignored_names(module, protected, list(spec.ignored_layers))
    was_training = module.training
    module.eval()  # tracing runs forward passes: BatchNorm statistics must not move
    try:
        if choose_strategy(spec) != "iterative":
            allocated = _Allocated(latency, sensitivity, sample_inputs)
            return allocated.prune(module, inputs, spec, ignored, loss_fn, on_progress, cancel)
        return _prune(module, inputs, spec, ignored, loss_fn, on_progress, cancel)
    finally:
        module.train(was_training)


@dataclass
class _Allocated:
    """Pruning by per-layer allocation: latency targets and the sensitivity scope."""

    latency: LatencyRuntime | None
    weights: dict[str, float] | None
    sample_inputs: Sequence[torch.Tensor] | None

    def prune(self, module, inputs, spec, ignored, loss_fn, on_progress, cancel) -> PruneResult:
        macs_before, params_before = count_macs(module, inputs), count_params(module)
        widths_before = _prunable_layers(module)
        ctx = PruneContext(
            loss_fn=loss_fn,
            weights=self.weights,
            sample_inputs=self.sample_inputs,
            on_progress=on_progress,
            should_cancel=cancel,
        )
        layers = _resolve(module, ignored)
        achieved: dict[str, float] = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            if choose_strategy(spec) == "latency_search":
                if self.latency is None:
                    raise PruningFailed(
                        "a latency target needs the runtime to measure on",
                        code="invalid_spec",
                    )
                history, achieved = prune_to_latency(
                    module,
                    inputs,
                    spec,
                    layers,
                    self.latency,
                    _plain_pruning(inputs, spec, ignored, loss_fn, cancel),
                    ctx,
                )
            else:
                history, allocation = prune_by_cost(module, inputs, spec, layers, ctx)
                kept = sum(allocation.keep.values())
                achieved["channel_ratio"] = 1.0 - kept / max(1, _units_before(allocation))
        return _finish(
            module,
            inputs,
            spec,
            widths_before,
            (macs_before, params_before),
            history,
            ctx.notes,
            achieved,
            on_progress,
        )


def _plain_pruning(inputs, spec: PruneSpec, ignored: list[str], loss_fn, cancel):
    """Prunes a module (or a copy) in place the ordinary way: global ranking, iterative
    steps, to a MACs reduction. The latency search's simpler reference."""

    def plain(module: nn.Module, macs_reduction: float) -> None:
        update = {"target": Target(macs_reduction=macs_reduction), "scope": "global"}
        _prune(module, inputs, spec.model_copy(update=update), ignored, loss_fn, None, cancel)

    return plain


def _units_before(allocation) -> int:
    return sum(allocation.units.values())


def _prune(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    spec: PruneSpec,
    ignored: list[str],
    loss_fn: LossFn | None,
    on_progress: Callable[[float], None] | None,
    cancel: Callable[[], bool],
) -> PruneResult:
    profile = MacProfile(module, inputs)
    macs_before, params_before = profile.total, count_params(module)
    widths_before = _prunable_layers(module)
    notes: list[str] = []
    if cancel():
        raise JobCancelled()
    if spec.method == "unstructured_l1":
        return _unstructured_result(module, inputs, spec, ignored, widths_before, on_progress)

    importance = make_importance(spec.method, module=module, notes=notes)
    rules = _width_rules(spec)
    pruner = WidthPruner(
        module,
        inputs,
        importance=importance,
        global_pruning=spec.scope == "global",
        pruning_ratio=0.0,
        max_pruning_ratio=spec.max_layer_ratio,
        iterative_steps=spec.iterative_steps,
        ignored_layers=_resolve(module, ignored),
        width_multiple=rules[0][1],
        # The same view of the model as preflight: pruners for the loader's per-channel
        # constants, and root types without nn.LSTM (torch-pruning's LSTM pruner breaks).
        **PRUNER_KWARGS,
    )
    run = _Run(
        module=module,
        inputs=inputs,
        spec=spec,
        pruner=pruner,
        profile=profile,
        macs_before=macs_before,
        params_before=params_before,
        notes=notes,
    )
    # Seeded so that `random` importance and data-free samples give the same result each run.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        history, ratio = _iterate(run, loss_fn, on_progress, cancel)
    return _finish(
        module,
        inputs,
        spec,
        widths_before,
        (macs_before, params_before),
        history,
        notes,
        {"channel_ratio": ratio},
        on_progress,
    )


def _finish(
    module,
    inputs,
    spec: PruneSpec,
    widths_before: dict[str, int],
    before: tuple[int, int],
    history: list[HistoryPoint],
    notes: list[str],
    achieved: dict[str, float],
    on_progress,
) -> PruneResult:
    """The result of a structured pruning: counts after, reductions reached, and a note
    when a MACs, parameter or channel target could not be reached."""
    (macs_before, params_before) = before
    macs_after, params_after = count_macs(module, inputs), count_params(module)
    achieved["macs_reduction"] = _reduction(macs_before, macs_after)
    achieved["params_reduction"] = _reduction(params_before, params_after)
    if spec.target.kind != "latency_reduction":
        note = _unreachable_note(spec, achieved[spec.target.kind])
        notes += [note] if note else []
    if on_progress is not None:
        on_progress(1.0)
    return PruneResult(
        layers=_layer_changes(widths_before, module),
        history=history,
        macs_before=macs_before,
        macs_after=macs_after,
        params_before=params_before,
        params_after=params_after,
        notes=notes,
        achieved=achieved,
    )


def _unstructured_result(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    spec: PruneSpec,
    ignored: list[str],
    widths_before: dict[str, int],
    on_progress: Callable[[float], None] | None,
) -> PruneResult:
    macs_before, params_before = count_macs(module, inputs), count_params(module)
    sparsity = _prune_unstructured(module, spec, ignored)
    if on_progress is not None:
        on_progress(1.0)
    return PruneResult(
        layers=_layer_changes(widths_before, module),
        history=[HistoryPoint(step=1, macs=macs_before, params=params_before)],
        macs_before=macs_before,
        macs_after=macs_before,
        params_before=params_before,
        params_after=params_before,
        notes=[f"{UNSTRUCTURED_NOTE}: {sparsity:.1%} of the conv/linear weights are zero"],
        achieved={"sparsity": sparsity},
    )
