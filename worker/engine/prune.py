"""Structured pruning to a target: MACs, parameters or a channel ratio.

Everything goes through torch-pruning's dependency graph, so coupled channels (residual
additions, concatenations, depthwise convolutions) are removed together and any
`nn.Module` works, including the FX graphs onnx2torch builds from ONNX files.

A MACs or parameter target is met by searching the channel pruning ratio: each trial
prunes a deep copy (with the full iterative schedule) and measures the result; the best
trial's exact pruning history is then replayed on the model itself. Surviving widths are
rounded to hardware-friendly multiples (16 for wide layers, 8 otherwise) because odd
widths run slowly in onnxruntime; when rounding makes the target unreachable within
`TOLERANCE`, finer multiples are tried.
"""

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from contract import HistoryPoint, LayerChange, PruneSpec
from worker.engine.errors import JobCancelled, PruningFailed
from worker.engine.evaluate import output_tensors
from worker.engine.importance import make_importance
from worker.engine.stats import count_macs, count_params

# Accepted distance between the achieved and the requested reduction (fraction points).
TOLERANCE = 0.02
# The search stops early once this close, to leave room for rounding on the replay.
_AIM = 0.01
_MAX_TRIALS = 12
UNSTRUCTURED_NOTE = "unstructured sparsity gives no speed-up in onnxruntime"

LossFn = Callable[[nn.Module], torch.Tensor]
WidthMultiple = Callable[[int], int]


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


def hardware_multiple(channels: int) -> int:
    """The width multiple fast kernels like: 16 for layers of 64+ channels, else 8."""
    if channels >= 64:
        return 16
    if channels >= 8:
        return 8
    return 1


def _constant(multiple: int) -> WidthMultiple:
    return lambda _channels: multiple


class _WidthPruner(tp.pruner.BasePruner):
    """BasePruner whose rounding of the surviving width depends on the layer's width."""

    def __init__(self, *args: Any, width_multiple: WidthMultiple, **kwargs: Any) -> None:
        # A truthy round_to switches on torch-pruning's rounding path, which calls _round_to.
        super().__init__(*args, round_to=1, **kwargs)
        self._width_multiple = width_multiple

    def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
        multiple = max(1, self._width_multiple(current_channels))
        keep = current_channels - n_pruned
        keep -= keep % multiple
        # Never round a layer away entirely: keep at least one multiple.
        keep = max(keep, min(multiple, current_channels))
        return max(current_channels - keep, 0)


@dataclass
class _Trial:
    ratio: float
    value: float  # the reduction of the targeted quantity (or the ratio for channel_ratio)
    macs: int
    params: int
    steps: list[tuple[int, int]]  # (macs, params) after each iterative step
    history: list[Any]  # torch-pruning's pruning history, replayable by module name


@dataclass
class _Context:
    """Everything a trial needs besides the ratio and the width rule."""

    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    spec: PruneSpec
    ignored_names: list[str]
    loss_fn: LossFn | None
    macs_before: int
    params_before: int
    notes: list[str]
    tick: Callable[[float], None]
    should_cancel: Callable[[], bool]


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


def _taylor_proxy(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> LossFn:
    """Data-free Taylor loss: alignment with the original outputs on seeded random inputs.

    Its gradient is the sensitivity of the outputs along their original direction, so a
    channel's |weight x gradient| estimates how much removing it changes what the model says.
    """
    gen = torch.Generator().manual_seed(0)
    probes = tuple(
        torch.randn((8, *x.shape[1:]), generator=gen, dtype=x.dtype).to(x.device) for x in inputs
    )
    with torch.no_grad():
        reference = [t.detach() for t in output_tensors(module(*probes))]

    def loss(m: nn.Module) -> torch.Tensor:
        outs = output_tensors(m(*probes))
        return sum((o * r).mean() for o, r in zip(outs, reference, strict=True))  # type: ignore[return-value]

    return loss


def _backprop(model: nn.Module, loss_fn: LossFn) -> None:
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        loss_fn(model).backward()


def _reduction(before: int, after: int) -> float:
    return 1.0 - after / before if before else 0.0


def _trial_value(ctx: _Context, ratio: float, macs: int, params: int) -> float:
    kind = ctx.spec.target.kind
    if kind == "params_reduction":
        return _reduction(ctx.params_before, params)
    if kind == "channel_ratio":
        return ratio
    return _reduction(ctx.macs_before, macs)


def _run_trial(ctx: _Context, ratio: float, width_multiple: WidthMultiple | None) -> _Trial:
    """Prune a deep copy at `ratio` with the full iterative schedule and measure it."""
    spec = ctx.spec
    model = copy.deepcopy(ctx.module)
    importance = make_importance(spec.method, module=model)
    kwargs: dict[str, Any] = dict(
        importance=importance,
        global_pruning=spec.scope == "global",
        pruning_ratio=ratio,
        max_pruning_ratio=spec.max_layer_ratio,
        iterative_steps=spec.iterative_steps,
        ignored_layers=_resolve(model, ctx.ignored_names),
    )
    if width_multiple is None:
        pruner: tp.pruner.BasePruner = tp.pruner.BasePruner(model, ctx.inputs, **kwargs)
    else:
        pruner = _WidthPruner(model, ctx.inputs, width_multiple=width_multiple, **kwargs)
    steps = []
    for _ in range(spec.iterative_steps):
        if ctx.should_cancel():
            raise JobCancelled()
        if spec.method == "taylor":
            _backprop(model, ctx.loss_fn or _taylor_proxy(model, ctx.inputs))
        pruner.step()
        steps.append((count_macs(model, ctx.inputs), count_params(model)))
        ctx.tick(1.0 / spec.iterative_steps)
    model.zero_grad(set_to_none=True)
    macs, params = steps[-1]
    return _Trial(
        ratio=ratio,
        value=_trial_value(ctx, ratio, macs, params),
        macs=macs,
        params=params,
        steps=steps,
        history=list(pruner.pruning_history()),
    )


def _initial_ratio(kind: str, target: float) -> float:
    # Removing a fraction p of every layer's channels scales a conv's cost by (1 - p)^2.
    if kind in ("macs_reduction", "params_reduction", "latency_reduction"):
        return 1.0 - math.sqrt(1.0 - target)
    return target


def _next_ratio(
    lo: tuple[float, float], hi: tuple[float, float] | None, upper: float, target: float
) -> float:
    """Regula falsi inside the bracket, kept away from its ends; bisection towards `upper`."""
    if hi is None:
        return (lo[0] + upper) / 2
    (r0, v0), (r1, v1) = lo, hi
    width = r1 - r0
    guess = r0 + (target - v0) * width / (v1 - v0) if v1 > v0 else (r0 + r1) / 2
    return min(max(guess, r0 + 0.15 * width), r1 - 0.15 * width)


def _search(ctx: _Context, width_multiple: WidthMultiple | None, start: float) -> _Trial:
    """The trial whose reduction is closest to the target."""
    target = ctx.spec.target.value
    upper = min(ctx.spec.max_layer_ratio, 0.99)
    lo: tuple[float, float] = (0.0, 0.0)
    hi: tuple[float, float] | None = None
    ratio = min(max(start, 0.01), upper)
    best: _Trial | None = None
    for _ in range(_MAX_TRIALS):
        trial = _run_trial(ctx, ratio, width_multiple)
        if best is None or abs(trial.value - target) < abs(best.value - target):
            best = trial
        if abs(trial.value - target) <= _AIM:
            break
        if trial.value < target:
            lo = (ratio, trial.value)
            if ratio >= upper:
                break  # the most we may remove is not enough
        else:
            hi = (ratio, trial.value)
        if hi is not None and hi[0] - lo[0] < 1e-3:
            break
        ratio = _next_ratio(lo, hi, upper, target)
    assert best is not None
    return best


def _width_levels(spec: PruneSpec) -> list[tuple[str, WidthMultiple | None]]:
    if spec.round_to is not None:
        rule = None if spec.round_to == 1 else _constant(spec.round_to)
        return [(f"multiples of {spec.round_to}", rule)]
    return [
        ("multiples of 16 (64+ channels) or 8", hardware_multiple),
        ("multiples of 8", _constant(8)),
        ("multiples of 4", _constant(4)),
        ("any width", None),
    ]


def _best_trial(ctx: _Context) -> _Trial:
    """Search each width rule, finest last, until one meets the target within TOLERANCE."""
    spec = ctx.spec
    target = spec.target.value
    levels = _width_levels(spec)
    start = _initial_ratio(spec.target.kind, target)
    best: _Trial | None = None
    for index, (label, rule) in enumerate(levels):
        if spec.target.kind == "channel_ratio":
            trial = _run_trial(ctx, target, rule)
        else:
            trial = _search(ctx, rule, start)
            start = trial.ratio
        if best is None or abs(trial.value - target) < abs(best.value - target) - 1e-9:
            best = trial
        if spec.target.kind == "channel_ratio" or abs(trial.value - target) <= TOLERANCE:
            if index > 0:
                ctx.notes.append(
                    f"widths rounded to {label}: coarser rounding could not meet the target"
                )
            return trial
    assert best is not None
    ctx.notes.append(
        f"target {spec.target.kind}={target:.3f} not reachable: achieved {best.value:.3f} "
        "(limited by protected layers, ignored layers or max_layer_ratio)"
    )
    return best


def _replay(module: nn.Module, inputs: tuple[torch.Tensor, ...], history: list[Any]) -> None:
    """Apply a trial's exact channel removals to the model itself."""
    graph = tp.DependencyGraph().build_dependency(module, example_inputs=inputs)
    graph.load_pruning_history(history)


def _layer_changes(before: dict[str, int], module: nn.Module) -> list[LayerChange]:
    after = _prunable_layers(module)
    return [
        LayerChange(name=name, out_channels_before=width, out_channels_after=after[name])
        for name, width in before.items()
        if name in after
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


def _tracker(on_progress: Callable[[float], None] | None, budget: float) -> Callable[[float], None]:
    """A monotone progress reporter: each tick adds work done, capped below 1 until the end."""
    done = [0.0]

    def tick(amount: float) -> None:
        done[0] += amount
        if on_progress is not None:
            on_progress(min(0.95, done[0] / budget))

    return tick


def prune_model(
    module: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    spec: PruneSpec,
    *,
    protected: Sequence[nn.Module] = (),
    loss_fn: LossFn | None = None,
    on_progress: Callable[[float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> PruneResult:
    """Prune `module` in place to `spec.target`; see the module docstring.

    `protected` layers (and the layers named in `spec.ignored_layers`) keep their output
    channels. `loss_fn(model) -> loss` is used by the `taylor` method to get gradients on
    whichever copy it is given; without it a data-free proxy is used.
    `on_progress(fraction)` reports progress within this stage; `should_cancel()` is
    checked between pruning steps and raises JobCancelled when it returns True.
    """
    inputs = _as_inputs(example_inputs)
    cancel = should_cancel or (lambda: False)
    ignored = _ignored_names(module, protected, list(spec.ignored_layers))
    was_training = module.training
    module.eval()  # tracing runs forward passes: BatchNorm statistics must not move
    try:
        return _prune(module, inputs, spec, ignored, loss_fn, on_progress, cancel)
    finally:
        module.train(was_training)


def _prune(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    spec: PruneSpec,
    ignored: list[str],
    loss_fn: LossFn | None,
    on_progress: Callable[[float], None] | None,
    cancel: Callable[[], bool],
) -> PruneResult:
    macs_before, params_before = count_macs(module, inputs), count_params(module)
    widths_before = _prunable_layers(module)
    notes: list[str] = []
    if cancel():
        raise JobCancelled()

    if spec.method == "unstructured_l1":
        sparsity = _prune_unstructured(module, spec, ignored)
        notes.append(f"{UNSTRUCTURED_NOTE}: {sparsity:.1%} of the conv/linear weights are zero")
        macs, params = count_macs(module, inputs), count_params(module)
        if on_progress is not None:
            on_progress(1.0)
        return PruneResult(
            layers=_layer_changes(widths_before, module),
            history=[HistoryPoint(step=1, macs=macs, params=params)],
            macs_before=macs_before,
            macs_after=macs,
            params_before=params_before,
            params_after=params,
            notes=notes,
            achieved={"sparsity": sparsity},
        )

    make_importance(spec.method, module=module, notes=notes)  # validates, notes fallbacks
    if spec.target.kind == "latency_reduction":
        notes.append("latency target approximated by the same MACs reduction")
    ctx = _Context(
        module=module,
        inputs=inputs,
        spec=spec,
        ignored_names=ignored,
        loss_fn=loss_fn,
        macs_before=macs_before,
        params_before=params_before,
        notes=notes,
        tick=_tracker(on_progress, float(_MAX_TRIALS)),
        should_cancel=cancel,
    )
    # Seeded so that `random` importance and data-free probes give the same result each run.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        best = _best_trial(ctx)
    if cancel():
        raise JobCancelled()
    _replay(module, inputs, best.history)
    macs_after, params_after = count_macs(module, inputs), count_params(module)
    if on_progress is not None:
        on_progress(1.0)
    return PruneResult(
        layers=_layer_changes(widths_before, module),
        history=[HistoryPoint(step=i + 1, macs=m, params=p) for i, (m, p) in enumerate(best.steps)],
        macs_before=macs_before,
        macs_after=macs_after,
        params_before=params_before,
        params_after=params_after,
        notes=notes,
        achieved={
            "macs_reduction": _reduction(macs_before, macs_after),
            "params_reduction": _reduction(params_before, params_after),
            "channel_ratio": best.ratio,
        },
    )
