"""One pruning job from model file to verified, benchmarked ONNX and its report.

load → preflight → [regularize] → prune → [finetune] → evaluate → export + verify
→ benchmark → report. Each stage reports progress through one monotone callback and
checks for cancellation before it starts; the stages themselves check between batches.
"""

import copy
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from contract import (
    Fidelity,
    FinetuneSpec,
    HistoryPoint,
    JobSpec,
    PruneSpec,
    Report,
    Target,
    TensorInfo,
)
from contract.artifacts import MODEL_FP32_ONNX, MODEL_ONNX, MODEL_PT2, REPORT_JSON
from contract.report import ReportWarning
from contract.stages import overall_progress
from worker.engine.analyze.blocks import traced_for_blocks
from worker.engine.analyze.preflight import run_preflight
from worker.engine.errors import (
    BenchmarkFailed,
    EngineError,
    ExportFailed,
    JobCancelled,
    PruningFailed,
    TrainingFailed,
    UnsupportedModel,
    VerificationFailed,
    describe_failure,
)
from worker.engine.load.loaders import load_model
from worker.engine.measure import benchmark, report
from worker.engine.measure.evaluate import accuracy, fidelity, is_classification, output_tensors
from worker.engine.measure.latency import LayerLatencyTable
from worker.engine.measure.report_warnings import LATENCY_BAND, latency_warning
from worker.engine.prune.budget import ProbeResult, sampling_warning, search_strength
from worker.engine.prune.by_allocation import sensitivity_weights
from worker.engine.prune.latency_search import LatencyRuntime
from worker.engine.prune.ranking_inputs import LossFn
from worker.engine.prune.to_target import TOLERANCE, PruneResult, choose_strategy, prune_model
from worker.engine.ship import quantize
from worker.engine.ship.export import (
    RELATIVE_TOLERANCE,
    export_onnx,
    join_tail,
    save_pt2,
    verify_onnx,
)
from worker.engine.train.data import DatasetSplits, load_dataset
from worker.engine.train.finetune import finetune
from worker.engine.types import CancelFn, LoadedModel, Preflight, ProgressFn

# Samples on which the pruned model's agreement with the original is measured.
FIDELITY_SAMPLES = 64
# Fewest optimizer steps a budget probe's distillation takes (see probe_epochs).
PROBE_STEPS = 300
# Most optimizer steps of the distillation that judges a latency candidate.
RECOVERY_STEPS = 50
NOTE_DATA_FREE = "no dataset: pruned data-free; fine-tuning and accuracy were skipped"
# A latency target INT8 alone brings within this ratio of the float model's time (the
# latency search's slack) needs no pruning for speed: pruning then aims this far only.
INT8_ALONE = 0.97
# How far (relative) the pruned INT8 model's time may sit from a latency target's before
# pruning is aimed again: half the report's band, so noise does not take it out.
REAIM_BAND = LATENCY_BAND / 2
# Re-aims at most: each is a latency search of its own; the second corrects what the
# first one's narrower layers changed in INT8's gain again.
REAIMS = 2
# A re-aim that moves the float target by less than this would repeat the last pruning.
REAIM_STEP = 0.01


@dataclass
class PipelineResult:
    report: Report
    artifacts: dict[str, Path]
    # Not an artifact: the unpruned export, timed beside the pruned one.
    original_onnx: Path | None = None


class _Tracker:
    """Progress that never goes backwards, cancellation checks and per-stage wall times."""

    def __init__(self, on_progress: ProgressFn | None, should_cancel: CancelFn | None) -> None:
        self._on_progress = on_progress
        self._should_cancel = should_cancel
        self._best = 0.0
        self.timings: dict[str, float] = {}

    def progress(self, stage: str, overall: float) -> None:
        """The callback handed down to the stages: (stage, overall 0..1), kept monotone."""
        self._best = max(self._best, min(1.0, overall))
        if self._on_progress is not None:
            self._on_progress(stage, self._best)

    def within(self, stage: str, fraction: float) -> None:
        self.progress(stage, overall_progress(stage, fraction))

    def fraction(self, stage: str, lo: float = 0.0, hi: float = 1.0) -> Callable[[float], None]:
        """A callback for progress within `stage` (0..1), as the stage modules report it,
        mapped onto the part [lo, hi] of that stage."""
        return lambda fraction: self.within(stage, lo + (hi - lo) * fraction)

    def cancelled(self) -> bool:
        return bool(self._should_cancel and self._should_cancel())

    def check(self) -> None:
        if self.cancelled():
            raise JobCancelled()

    @contextmanager
    def stage(self, name: str, model: nn.Module | None = None) -> Iterator[None]:
        """Time a stage; an unexpected exception in it becomes the stage's typed error,
        naming the layer it was raised in when that is a layer of `model`."""
        self.check()
        self.within(name, 0.0)
        start = time.perf_counter()
        try:
            yield
        except EngineError:
            raise
        except Exception as exc:
            raise stage_failure(name, exc, model) from exc
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
        self.within(name, 1.0)


# What an unexpected exception inside a stage means to the user, by stage: an upload the
# engine cannot convert, a graph pattern the pruning cannot follow, an export that fails,
# training that fails on this model and data, a runtime that cannot time the model.
_STAGE_ERRORS: dict[str, tuple[type[EngineError], str, str]] = {
    "loading": (UnsupportedModel, "unsupported_op", "the model could not be loaded"),
    "analyzing": (
        PruningFailed,
        "pruning_failed",
        "the layer analysis cannot follow this graph pattern",
    ),
    "regularizing": (TrainingFailed, "training_failed", "sparsity training failed"),
    "pruning": (PruningFailed, "pruning_failed", "pruning cannot follow this graph pattern"),
    "finetuning": (TrainingFailed, "training_failed", "fine-tuning failed"),
    "evaluating": (TrainingFailed, "evaluation_failed", "evaluating the pruned model failed"),
    "exporting": (ExportFailed, "export_failed", "exporting the pruned model failed"),
    "quantizing": (EngineError, "quantization_failed", "quantizing the pruned model failed"),
    "benchmarking": (BenchmarkFailed, "benchmark_failed", "timing the models failed"),
}


def stage_failure(stage: str, exc: BaseException, model: nn.Module | None = None) -> EngineError:
    """The typed error for an unexpected exception in `stage`: its stage's class and code,
    what failed, the layer it failed in when known, and the exception's own message as
    `describe_failure` cleans it (operators and shapes kept; data and paths removed)."""
    cls, code, what = _STAGE_ERRORS.get(
        stage, (EngineError, "internal_error", f"the {stage} stage failed")
    )
    layer = failing_layer(exc, model)
    where = f" in layer {layer!r}" if layer else ""
    error = cls(f"{stage}: {what}{where}: {type(exc).__name__}: {describe_failure(exc)}", code)
    error.stage = stage  # type: ignore[attr-defined]
    return error


def failing_layer(exc: BaseException, model: nn.Module | None) -> str | None:
    """The name, in `model`, of the innermost layer whose code raised `exc`, if any.

    The traceback's frames hold each running `forward`'s `self`: the deepest one that is a
    named layer of the model (not the model itself) is where the failure happened."""
    if model is None:
        return None
    names = {id(m): n for n, m in model.named_modules() if n}
    found = None
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in names:
            found = names[id(owner)]
        tb = tb.tb_next
    return found


@dataclass
class _Int8Probes:
    """What measures accuracy-budget probes as INT8 when the job quantizes: the
    quantizing stage's calibration and comparison set, the original model's scores on
    that set, a scratch directory; `failed` says why onnxruntime stopped quantizing them."""

    calibration: Sequence[quantize.Feeds]
    evalset: quantize.EvalSet
    original: quantize.Scores
    workdir: Path
    measured: int = 0
    failed: str | None = None


@dataclass
class _State:
    """What the stages hand each other."""

    loaded: LoadedModel
    splits: DatasetSplits | None
    pre: Preflight | None = None
    teacher: nn.Module | None = None
    # What pruning starts from when sparsity training changed it; else the teacher.
    unpruned: nn.Module | None = None
    pruned: PruneResult | None = None
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    fidelity: Fidelity | None = None
    # Accuracy-budget probes, when a budget was set; else the pruning steps are the history.
    probes: list[HistoryPoint] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # What the report must flag beyond what its own figures show (see report_warnings).
    warnings: list[ReportWarning] = field(default_factory=list)
    verification: dict[str, float] = field(default_factory=dict)
    # Latency targets: the runtime to measure on. Sensitivity scope: weights, scanned once.
    latency: LatencyRuntime | None = None
    sensitivity: dict[str, float] | None = None
    target_figures: dict[str, float] = field(default_factory=dict)
    quantized: quantize.QuantizeOutcome | None = None
    int8_probes: _Int8Probes | None = None


def _has_labels(state: _State) -> bool:
    """Accuracy is measured only with labels and a held-back part to measure it on."""
    return state.splits is not None and state.splits.labeled and state.splits.val is not None


def _batch(state: _State, wanted: int) -> int:
    """`wanted`, or the batch size the model's graph fixes (a static batch dim)."""
    sizes = [info.shape[0] for info in state.loaded.inputs if info.shape]
    static = [s for s in sizes if isinstance(s, int) and s > 0]
    return static[0] if static else wanted


def _fidelity_inputs(state: _State) -> tuple[torch.Tensor, ...]:
    """Held-back dataset samples (datasets feed single-input models), else seeded noise;
    at the model's own batch size when its graph fixes one."""
    batch = _batch(state, FIDELITY_SAMPLES)
    if _agreement_on_data(state):
        assert state.splits is not None and state.splits.val is not None
        return (state.splits.val.tensors[0][:batch],)
    return state.loaded.example_inputs(batch=min(batch, 16), seed=1)


def _agreement_on_data(state: _State) -> bool:
    splits = state.splits
    return splits is not None and splits.val is not None and len(state.loaded.inputs) == 1


def _taylor_loss(state: _State, device: str) -> LossFn | None:
    """Loss whose gradients rank channels for `taylor`, on real samples when there are any.

    Labeled data: cross-entropy. Unlabeled data: alignment with the original's outputs
    (a distance to them would be zero, with zero gradient, before anything is pruned).
    Data-free: None, and the pruner uses its own proxy on random inputs.
    """
    if state.splits is None or len(state.loaded.inputs) != 1:
        return None
    assert state.teacher is not None
    train = state.splits.train.tensors
    x = train[0][:FIDELITY_SAMPLES].to(device)
    with torch.no_grad():
        reference = [r.detach() for r in output_tensors(state.teacher.to(device).eval()(x))]
    scores = reference[0] if reference else None
    classes = state.splits.num_classes or 0
    if state.splits.labeled and scores is not None and is_classification(scores):
        if scores.shape[1] >= classes:
            y = train[1][:FIDELITY_SAMPLES].to(device)
            return lambda module: F.cross_entropy(output_tensors(module(x))[0], y)

    def alignment(module: nn.Module) -> torch.Tensor:
        outputs = output_tensors(module(x))
        return torch.stack([(o * r).mean() for o, r in zip(outputs, reference, strict=True)]).sum()

    return alignment


def _load(model_path: Path, dataset_path: Path | None, arch, input_shape, t: _Tracker) -> _State:
    with t.stage("loading"):
        loaded = load_model(model_path, arch=arch, input_shape=input_shape)
        splits = None
        if dataset_path is not None:
            splits = load_dataset(dataset_path, loaded.input_shapes[0])
    return _State(loaded=loaded, splits=splits, notes=list(loaded.notes))


def _analyze(
    state: _State, spec: JobSpec, t: _Tracker, analysis_budget_s: float | None = None
) -> None:
    with t.stage("analyzing", state.loaded.module):
        state.pre = run_preflight(
            state.loaded,
            opset=spec.export.opset,
            budget_s=analysis_budget_s,
            should_cancel=t.cancelled,
        )
        state.notes += state.pre.notes
        state.verification["original_export_max_abs_diff"] = state.pre.onnx_max_abs_diff
        # The teacher for distillation and the reference for every comparison.
        state.teacher = copy.deepcopy(state.loaded.module).eval()


def _regularize(state: _State, spec: JobSpec, device: str, t: _Tracker) -> None:
    if spec.regularize is None or state.splits is None:
        return
    # Imported here: only jobs that ask for sparsity training need it.
    from worker.engine.train.regularize import regularize

    with t.stage("regularizing", state.loaded.module):
        module = state.loaded.module.to(device)
        example = tuple(x.to(device) for x in state.loaded.example_inputs())
        regularize(
            module,
            example,
            spec.regularize,
            state.splits,
            device=device,
            on_progress=t.fraction("regularizing"),
            should_cancel=t.cancelled,
        )
        # Fine-tuning matches pruned channels to this model's (by their folded biases),
        # which sparsity training moved away from the teacher's.
        state.unpruned = copy.deepcopy(module).eval()


def _protected_names(state: _State) -> list[str]:
    assert state.pre is not None
    by_id = {id(m): name for name, m in state.loaded.module.named_modules()}
    return [by_id[id(m)] for m in state.pre.protected if id(m) in by_id]


def _prune_copy_or_self(
    state: _State,
    module: nn.Module,
    prune: PruneSpec,
    device: str,
    t: _Tracker,
    span: tuple[float, float],
) -> PruneResult:
    """Prune `module` (the model itself or a deep copy of it) on `device`."""
    assert state.teacher is not None
    modules = dict(module.named_modules())
    protected = [modules[name] for name in _protected_names(state) if name in modules]
    module.to(device).eval()
    example = tuple(x.to(device) for x in state.loaded.example_inputs())
    loss_fn = _taylor_loss(state, device) if prune.method == "taylor" else None
    return prune_model(
        module,
        example,
        prune,
        protected=protected,
        loss_fn=loss_fn,
        on_progress=t.fraction("pruning", *span),
        should_cancel=t.cancelled,
        latency=state.latency,
        sensitivity=state.sensitivity,
        sample_inputs=_sample_inputs(state, device),
    )


def _sample_inputs(state: _State, device: str) -> tuple[torch.Tensor, ...]:
    """Inputs for the sensitivity scan: held-back samples, else seeded noise (at most 16)."""
    return tuple(x[:16].to(device) for x in _fidelity_inputs(state))


def _scan_once(state: _State, spec: JobSpec, device: str, t: _Tracker) -> None:
    """Sensitivity weights of the unpruned model, shared by every probe and the final prune:
    for the sensitivity scope, and for latency targets (whose search also tries them)."""
    if choose_strategy(spec.prune) == "iterative" or state.sensitivity is not None:
        return
    module = state.loaded.module.to(device).eval()
    modules = dict(module.named_modules())
    protected = [modules[name] for name in _protected_names(state) if name in modules]
    ignored = protected + [modules[n] for n in spec.prune.ignored_layers if n in modules]
    example = tuple(x.to(device) for x in state.loaded.example_inputs())
    state.sensitivity = sensitivity_weights(
        module, example, spec.prune, ignored, _sample_inputs(state, device), t.cancelled
    )


def _runtime(spec: JobSpec, device: str) -> tuple[str, int]:
    """The worker's own runtime, for a latency target: its first benchmark provider."""
    provider = benchmark.resolve_providers(spec.benchmark.providers, device)[0]
    return provider, benchmark.default_threads()


def _feeds(state: _State) -> benchmark.FeedsFn:
    """Seeded inputs shaped like the model's at a batch size, by input name: the
    loaded model's own, so an input without a batch dim keeps its shape."""

    def make(batch: int) -> dict[str, np.ndarray]:
        tensors = state.loaded.example_inputs(batch=batch)
        return {i.name: x.numpy() for i, x in zip(state.loaded.inputs, tensors, strict=True)}

    return make


def _timing_feeds(state: _State) -> dict[str, np.ndarray]:
    """Seeded batch-1 inputs shaped like the model's, that latency candidates are timed on."""
    return _feeds(state)(1)


def _latency_runtime(
    state: _State, spec: JobSpec, device: str, workdir: Path, cache_dir: Path | None
) -> LatencyRuntime:
    """The worker's own runtime, for a latency target: its first benchmark provider."""
    assert state.teacher is not None
    provider, threads = _runtime(spec, device)
    table = LayerLatencyTable(provider, device=device, threads=threads, cache_dir=cache_dir)
    original = export_onnx(
        copy.deepcopy(state.teacher).cpu().eval(),
        state.loaded,
        workdir / "original.onnx",
        spec.export,
    )
    feeds = _timing_feeds(state)

    def measure(candidates: dict[str, nn.Module]) -> dict[str, float]:
        paths = {"original": original}
        for i, (name, module) in enumerate(candidates.items()):
            paths[name] = export_onnx(
                copy.deepcopy(module).cpu().eval(),
                state.loaded,
                workdir / f"candidate-{i}.onnx",
                spec.export,
            )
        # A single candidate is being tuned; several are being compared for the final choice.
        seconds = 1.5 if len(candidates) == 1 else 4.0
        return benchmark.median_ms(
            paths, feeds, provider, device=device, threads=threads, seconds=seconds
        )

    return LatencyRuntime(
        table=table, measure=measure, recover=_recovery_judge(state, spec, device)
    )


def pruning_goal(goal_ratio: float, int8_ratio: float) -> float | None:
    """The latency ratio (to the original) the pruned float model must reach for INT8,
    which runs at `int8_ratio` of a float model's time, to land on `goal_ratio`; None
    when INT8 alone comes within INT8_ALONE of it."""
    float_goal = goal_ratio / int8_ratio
    return None if float_goal >= INT8_ALONE else float_goal


def _int8_speed(state: _State, spec: JobSpec, device: str, workdir: Path) -> float:
    """INT8's time as a fraction of the float model's, measured on the original."""
    times = _int8_times(state, spec, device, workdir, pruned=None)
    return times["int8"] / times["original"]


def _int8_times(
    state: _State, spec: JobSpec, device: str, workdir: Path, pruned: nn.Module | None
) -> dict[str, float]:
    """Median ms of the original exported by `_latency_runtime` and of `pruned` (the original
    when None) exported and quantized as the job says, timed interleaved as latency
    candidates are (calibration ranges do not change speed: two batches calibrate it)."""
    calibration, _, _ = quantize.stage_data(state.loaded, state.splits, spec.quantize)
    scratch = Path(tempfile.mkdtemp(prefix="int8-speed-", dir=workdir))
    original = workdir / "original.onnx"
    models = {"original": original}
    float_path = original
    if pruned is not None:
        float_path = export_onnx(
            copy.deepcopy(pruned).cpu().eval(), state.loaded, scratch / "pruned.onnx", spec.export
        )
        models["pruned"] = float_path
    models["int8"] = quantize.quantize_plain(float_path, scratch, spec.quantize, calibration[:2])
    provider, threads = _runtime(spec, device)
    return benchmark.median_ms(
        models, _timing_feeds(state), provider, device=device, threads=threads, seconds=4.0
    )


def _aim_before_int8(state: _State, spec: JobSpec, device: str, workdir: Path) -> JobSpec:
    """A latency target with INT8 is met by both: pruning aims at the float latency that
    INT8's own speed-up, measured once on the original, turns into the goal."""
    if spec.quantize.mode != "int8":
        return spec
    goal = 1.0 - spec.prune.target.value
    try:
        int8_ratio = _int8_speed(state, spec, device, workdir)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors are untyped
        state.notes.append(
            f"latency target: INT8's speed-up could not be measured ({type(exc).__name__}: "
            f"{describe_failure(exc)}); pruning aims at the whole target"
        )
        return spec
    float_goal = pruning_goal(goal, int8_ratio)
    state.target_figures["int8_latency_ratio"] = int8_ratio
    if float_goal is None:
        float_goal = INT8_ALONE
        state.notes.append(
            f"latency target: INT8 alone runs at {int8_ratio:.2f}x the float model's time, "
            f"within reach of the goal ({goal:.2f}x the original's): pruned only to "
            f"{float_goal:.2f}x"
        )
    else:
        state.notes.append(
            f"latency target: INT8 runs at {int8_ratio:.2f}x the float model's time "
            f"(measured on the original), so pruning aims at {float_goal:.2f}x the "
            f"original's time for the INT8 model to reach {goal:.2f}x"
        )
    state.target_figures["latency_float_goal_ratio"] = float_goal
    prune = _with_target(spec.prune, 1.0 - float_goal)
    return spec.model_copy(update={"prune": prune})


class _Pristine:
    """The model as it was before pruning, to prune again from: a copy, with the names of
    its protected layers (the analysis knows them as the model's own module objects)."""

    def __init__(self, state: _State) -> None:
        self.module = copy.deepcopy(state.loaded.module)
        self.protected = _protected_names(state)

    def restore(self, state: _State) -> None:
        """`state`'s model becomes a fresh copy of the kept one (it may be restored again)."""
        assert state.pre is not None
        module = copy.deepcopy(self.module)
        modules = dict(module.named_modules())
        state.pre.protected = [modules[name] for name in self.protected]
        state.loaded.module = module


def _reaim_after_int8(
    state: _State, goal: JobSpec, aimed: PruneSpec, device: str, workdir: Path
) -> PruneSpec | None:
    """The pruned model as the INT8 file it will become, timed against the original: a
    pruned model's narrower layers gain less from INT8 than the original's did, so an
    aim through the original's speed-up can land outside the band. When it does, the
    target to prune the original to again, aimed through the pruned model's own INT8
    speed-up; None when the first aim holds (or the INT8 model cannot be timed)."""
    wanted = 1.0 - goal.prune.target.value
    try:
        times = _int8_times(state, goal, device, workdir, state.loaded.module)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors are untyped
        state.notes.append(
            f"latency target: the pruned INT8 model could not be timed before fine-tuning "
            f"({type(exc).__name__}: {describe_failure(exc)}); kept the first aim"
        )
        return None
    reached = times["int8"] / times["original"]
    state.target_figures["latency_int8_first_aim_ratio"] = reached
    if abs(reached / wanted - 1.0) <= REAIM_BAND:
        return None
    own = times["int8"] / times["pruned"]
    float_goal = pruning_goal(wanted, own) or INT8_ALONE
    if abs((1.0 - float_goal) - aimed.target.value) < REAIM_STEP:
        return None  # the same aim again: INT8 alone (or noise) decides, not pruning
    state.notes.append(
        f"latency target: the first aim made an INT8 model at {reached:.3f}x the original's "
        f"time, not {wanted:.3f}x (INT8 runs at {own:.2f}x the pruned float model's time); "
        f"pruned the original again, aiming at {float_goal:.3f}x"
    )
    state.target_figures["latency_float_goal_ratio"] = float_goal
    return _with_target(aimed, 1.0 - float_goal)


def _recovery_judge(
    state: _State, spec: JobSpec, device: str
) -> Callable[[nn.Module], float] | None:
    """A latency candidate's error (1 - held-back accuracy, or agreement) after one short
    distillation epoch of at most RECOVERY_STEPS steps; None when the job fine-tunes on
    no data."""
    ft, splits = spec.finetune, state.splits
    if splits is None or ft is None or ft.epochs == 0 or state.teacher is None:
        return None
    head = TensorDataset(*(t[: RECOVERY_STEPS * ft.batch_size] for t in splits.train.tensors))
    short = replace(splits, train=head)
    brief = ft.model_copy(update={"epochs": 1, "distill": True})

    def judge(candidate: nn.Module) -> float:
        student = copy.deepcopy(candidate)
        finetune(student, state.teacher, short, brief, device=device, unpruned=state.unpruned)
        return 1.0 - _score(*_quality(state, student, device), labeled=_has_labels(state))

    return judge


def _with_target(prune: PruneSpec, value: float) -> PruneSpec:
    return prune.model_copy(update={"target": Target(**{prune.target.kind: value})})


def _quality(state: _State, module: nn.Module, device: str) -> tuple[float | None, float]:
    """(held-back accuracy or None, agreement with the original) of a candidate."""
    assert state.teacher is not None
    module.to(device).eval()
    acc = None
    if _has_labels(state):
        assert state.splits is not None and state.splits.val is not None
        acc = accuracy(module, state.splits.val, device=device)
    inputs = tuple(x.to(device) for x in _fidelity_inputs(state))
    fid = fidelity(state.teacher.to(device), module.to(device), inputs)
    agreement = fid.top1_agreement if fid.top1_agreement is not None else fid.cosine
    return acc, agreement


def _probe(
    state: _State, spec: JobSpec, value: float, device: str, t: _Tracker, span
) -> ProbeResult:
    """Prune a copy to `value`, distil it briefly (see probe_epochs), measure it."""
    candidate = copy.deepcopy(state.loaded.module)
    lo, hi = span
    result = _prune_copy_or_self(
        state, candidate, _with_target(spec.prune, value), device, t, (lo, lo + 0.7 * (hi - lo))
    )
    ft = spec.finetune
    if _distils_probes(state, spec):
        assert state.teacher is not None and state.splits is not None and ft is not None
        finetune(
            candidate,
            state.teacher,
            state.splits,
            ft.model_copy(
                update={"epochs": probe_epochs(len(state.splits.train), ft), "distill": True}
            ),
            device=device,
            on_progress=t.fraction("pruning", lo + 0.7 * (hi - lo), hi),
            should_cancel=t.cancelled,
            unpruned=state.unpruned,
        )
    acc, agreement = _int8_quality(state, spec, candidate) or _quality(state, candidate, device)
    return ProbeResult(
        strength=value,
        score=_score(acc, agreement, labeled=_has_labels(state)),
        macs=result.macs_after,
        params=result.params_after,
        accuracy=acc,
        agreement=agreement,
        reached=result.achieved.get(spec.prune.target.kind),
    )


def _reachable(probes: list[ProbeResult], chosen: float, kind: str, notes: list[str]) -> float:
    """A budget's target is a ceiling: when the chosen probe removed less than it asked
    for (the model holds layers back), the job prunes to what that probe reached instead
    of being refused as short of a strength the user only allowed."""
    reached = next((p.reached for p in probes if p.strength == chosen), None)
    if reached is None or reached >= chosen - TOLERANCE:
        return chosen
    notes.append(
        f"accuracy budget: the chosen {kind}={chosen:.3f} reaches {reached:.3f} on this model "
        "(layers held back, see the analysis notes); pruned to that"
    )
    return reached


def _start_int8_probes(state: _State, spec: JobSpec, workdir: Path) -> float | None:
    """When the job quantizes, budget probes are measured as INT8 (see `_int8_quality`) so
    that pruning leaves room for quantization's own loss. Returns the original model's
    score on that measure, the search's reference; None when probes stay float."""
    if spec.quantize.mode != "int8":
        return None
    assert state.teacher is not None
    calibration, evalset, _ = quantize.stage_data(state.loaded, state.splits, spec.quantize)
    if (evalset.labels is not None) != _has_labels(state):
        # A multi-input model's labeled data is not fed to onnxruntime: keep one measure.
        state.notes.append("accuracy budget: probes were measured in float (multi-input model)")
        return None
    original = export_onnx(
        copy.deepcopy(state.teacher).cpu().eval(),
        state.loaded,
        workdir / "probe-original.onnx",
        spec.export,
    )
    scores = quantize.run_batches(original, evalset)
    state.int8_probes = _Int8Probes(calibration, evalset, scores, workdir)
    return scores.accuracy if scores.accuracy is not None else 1.0


def _int8_quality(
    state: _State, spec: JobSpec, candidate: nn.Module
) -> tuple[float | None, float] | None:
    """(held-back accuracy or None, agreement with the original) of the candidate quantized
    once as the job says, in onnxruntime on the quantizing stage's samples; None when
    probes are not measured as INT8 or onnxruntime cannot quantize this one (then the
    float score stands, and a note says from which probe on)."""
    probes = state.int8_probes
    if probes is None or probes.failed is not None:
        return None
    with tempfile.TemporaryDirectory(prefix="probe-", dir=probes.workdir) as tmp:
        try:
            float_path = export_onnx(
                copy.deepcopy(candidate).cpu().eval(),
                state.loaded,
                Path(tmp) / "candidate.onnx",
                spec.export,
            )
            int8 = quantize.quantize_plain(float_path, Path(tmp), spec.quantize, probes.calibration)
            scores = quantize.run_batches(int8, probes.evalset)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors are untyped
            probes.failed = f"{type(exc).__name__}: {describe_failure(exc)}"
            state.notes.append(
                f"accuracy budget: onnxruntime could not quantize probe {probes.measured + 1} "
                f"({probes.failed}); it and later probes were measured in float"
            )
            return None
    probes.measured += 1
    return scores.accuracy, quantize.agreement(probes.original, scores)


def _int8_probe_note(state: _State) -> str | None:
    """How many probes were measured as INT8, and how, when any were."""
    probes = state.int8_probes
    if probes is None or probes.measured == 0:
        return None
    return (
        f"accuracy budget: {probes.measured} probe(s) were measured as INT8 in onnxruntime "
        "(each quantized once as the quantize spec says, without the float fallback), "
        "against the original model, so pruning leaves room for quantization's own loss"
    )


def probe_epochs(train_samples: int, ft: FinetuneSpec) -> int:
    """Epochs of a probe's distillation: one, or as many as make PROBE_STEPS optimizer
    steps on a small dataset (never more than the final fine-tune's). One epoch of a few
    hundred samples is a handful of steps: too few to tell a recoverable pruning from a
    broken one, and the search would stop far short of what the final model reaches."""
    steps_per_epoch = max(1, math.ceil(train_samples / ft.batch_size))
    return max(1, min(ft.epochs, math.ceil(PROBE_STEPS / steps_per_epoch)))


def _score(acc: float | None, agreement: float, *, labeled: bool) -> float:
    """What the budget is measured on: held-back accuracy, else agreement with the original."""
    if labeled:
        assert acc is not None
        return acc
    return agreement


def _budget_target(state: _State, spec: JobSpec, device: str, t: _Tracker) -> PruneSpec:
    """The strongest target strength, up to the requested one, whose measured drop after a
    short distillation (and INT8, when the job quantizes) stays within the accuracy
    budget (see `budget.py`)."""
    assert spec.accuracy_budget is not None and state.teacher is not None
    labeled = _has_labels(state)
    budget = spec.accuracy_budget
    share = 1.0 / (budget.probes + 1)  # of the pruning stage, per probe

    def probe(value: float) -> ProbeResult:
        i = len(state.probes)
        found = _probe(state, spec, value, device, t, (i * share, (i + 1) * share))
        state.probes.append(
            HistoryPoint(
                step=i + 1,
                macs=found.macs,
                params=found.params,
                accuracy=found.accuracy,
                agreement=found.agreement,
            )
        )
        return found

    with tempfile.TemporaryDirectory(prefix="probes-") as workdir:
        base = _start_int8_probes(state, spec, Path(workdir))
        if base is None:
            base = _score(*_quality(state, state.teacher, device), labeled=labeled)
        search = search_strength(
            probe,
            reference=base,
            max_drop=budget.max_drop,
            upper=spec.prune.target.value,
            probes=budget.probes,
        )
    if labeled and state.splits is not None and state.splits.val is not None:
        warning = sampling_warning(base, len(state.splits.val), budget.max_drop)
        if warning:
            state.warnings.append(ReportWarning(code="too_little_heldout_data", message=warning))
    chosen = search.chosen
    if chosen is None:
        chosen = min(p.strength for p in search.probes)
        state.notes.append(
            f"accuracy budget: no probed strength kept the drop within {budget.max_drop:.3f}; "
            f"pruned at the mildest probed target {chosen:.3f}"
        )
    chosen = _reachable(search.probes, chosen, spec.prune.target.kind, state.notes)
    drops = ", ".join(
        f"{p.strength:.3f}: {base - p.score:+.3f}"
        + (f" (fitted {f:+.3f})" if abs(f - (base - p.score)) > 1e-9 else "")
        for p, f in zip(search.probes, search.fitted, strict=True)
    )
    state.notes.append(
        f"accuracy budget: {spec.prune.target.kind}={chosen:.3f} chosen from "
        f"{len(search.probes)} probes (max drop {budget.max_drop:.3f} on "
        f"{_budget_measure(state)}; drop per probed strength {_probe_recovery(state, spec)}, "
        f"and where noise was pooled its monotone fit: {drops})"
    )
    if note := _int8_probe_note(state):
        state.notes.append(note)
    return _with_target(spec.prune, chosen)


def _budget_measure(state: _State) -> str:
    """What the budget's drop is measured on, as `_quality` measures it."""
    if _has_labels(state):
        return "held-back accuracy"
    if _agreement_on_data(state):
        return "agreement with the original on held-back samples"
    return "agreement with the original on synthetic inputs"


def _probe_recovery(state: _State, spec: JobSpec) -> str:
    """How each budget probe was measured: after the short distillation `_probe` gives it,
    or as pruned, saying why (the notes must not claim a distillation that never ran)."""
    if _distils_probes(state, spec):
        return "after its short distillation"
    if state.splits is None:
        return "as pruned, without distillation (no dataset)"
    return "as pruned, without distillation (fine-tuning is off)"


def _distils_probes(state: _State, spec: JobSpec) -> bool:
    return state.splits is not None and spec.finetune is not None and spec.finetune.epochs > 0


def _prune(state: _State, spec: JobSpec, device: str, t: _Tracker, cache_dir: Path | None) -> None:
    assert state.pre is not None and state.teacher is not None
    with (
        t.stage("pruning", state.loaded.module),
        tempfile.TemporaryDirectory(prefix="latency-") as workdir,
    ):
        goal = spec
        if choose_strategy(spec.prune) == "latency_search":
            _trace_for_blocks(state, device)
            state.latency = _latency_runtime(state, spec, device, Path(workdir), cache_dir)
            spec = _aim_before_int8(state, spec, device, Path(workdir))
        _scan_once(state, spec, device, t)
        prune = spec.prune
        final_span = (0.0, 1.0)
        if spec.accuracy_budget is not None and prune.method != "unstructured_l1":
            prune = _budget_target(state, spec, device, t)
            final_span = (len(state.probes) / (spec.accuracy_budget.probes + 1), 1.0)
        # Aimed through INT8's speed-up on the original: kept whole for one re-aim.
        pristine = _Pristine(state) if spec is not goal else None
        state.pruned = _prune_copy_or_self(state, state.loaded.module, prune, device, t, final_span)
        for _ in range(REAIMS if pristine is not None else 0):
            again = _reaim_after_int8(state, goal, prune, device, Path(workdir))
            if again is None:
                break
            assert pristine is not None
            pristine.restore(state)
            prune = again
            state.pruned = _prune_copy_or_self(
                state, state.loaded.module, prune, device, t, final_span
            )
        _refuse_short_of_target(prune, state.pruned, state.pre.notes)
        state.notes += state.pruned.notes
        state.target_figures.update(
            {k: v for k, v in state.pruned.achieved.items() if k.startswith("latency_")}
        )


def _refuse_short_of_target(prune: PruneSpec, result: PruneResult, analysis: list[str]) -> None:
    """Two outcomes only: a MACs or parameter target is met within TOLERANCE, or the job is
    refused saying what held the model back and how far it could go, so that the user
    can resubmit with a target this model can reach (or unblock the layers)."""
    kind, target = prune.target.kind, prune.target.value
    if kind not in ("macs_reduction", "params_reduction") or prune.method == "unstructured_l1":
        return
    reached = result.achieved[kind]
    if reached >= target - TOLERANCE:
        return
    held_back = [n for n in analysis if n.startswith(("protected", "the analysis budget"))]
    if prune.ignored_layers:
        held_back.append(f"{len(prune.ignored_layers)} layer(s) ignored by the job")
    held_back.append(
        f"no layer loses more than max_layer_ratio={prune.max_layer_ratio:g} of its channels"
    )
    why = "; ".join(held_back)
    raise PruningFailed(
        f"{kind}={target:.2f} is not reachable on this model: the most reached is "
        f"{reached:.2f} ({why}). Resubmit with a target of at most {reached:.2f}.",
        code="target_unreachable",
    )


def _trace_for_blocks(state: _State, device: str) -> None:
    """A model built from its class (a weights upload) is pruned as its FX trace when
    that holds residual blocks: a latency target can then remove them whole, as it can
    in an ONNX or .pt2 upload's graph. The trace shares the model's layers."""
    module = state.loaded.module.to(device)
    example = tuple(x.to(device) for x in state.loaded.example_inputs())
    graph = traced_for_blocks(module, example, _protected_names(state))
    if graph is not None:
        state.loaded.module = graph
        state.notes.append(
            "latency target: the model was traced into an FX graph (torch.fx) so that its "
            "residual blocks can be removed whole"
        )


def _finetune(state: _State, spec: JobSpec, device: str, t: _Tracker) -> None:
    ft = spec.finetune
    if state.splits is None or ft is None or ft.epochs == 0:
        return
    assert state.teacher is not None
    with t.stage("finetuning", state.loaded.module):
        finetune(
            state.loaded.module,
            state.teacher,
            state.splits,
            ft,
            device=device,
            on_progress=t.fraction("finetuning"),
            should_cancel=t.cancelled,
            unpruned=state.unpruned,
        )


def _evaluate(state: _State, device: str, t: _Tracker) -> None:
    assert state.teacher is not None
    with t.stage("evaluating", state.loaded.module):
        student = state.loaded.module.to(device).eval()
        teacher = state.teacher.to(device).eval()
        if _has_labels(state):
            assert state.splits is not None and state.splits.val is not None
            state.accuracy_before = accuracy(teacher, state.splits.val, device=device)
            t.within("evaluating", 0.4)
            state.accuracy_after = accuracy(student, state.splits.val, device=device)
            t.within("evaluating", 0.8)
        # Agreement is measured on the CPU, where the export runs too.
        state.fidelity = fidelity(teacher.cpu(), student.cpu(), _fidelity_inputs(state))


def _check_drop_in(path: Path, state: _State) -> None:
    """The pruned file must take the same inputs and give the same outputs' names and shapes."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want_in = [i.name for i in state.loaded.inputs]
    want_out = [o.name for o in state.loaded.final_outputs or state.loaded.outputs]
    got_in = [i.name for i in session.get_inputs()]
    got_out = [o.name for o in session.get_outputs()]
    if got_in != want_in or got_out != want_out:
        raise VerificationFailed(
            f"input/output names changed: {got_in}->{got_out}, expected {want_in}->{want_out}",
            code="interface_changed",
        )
    feeds = {
        name: x.numpy() for name, x in zip(want_in, state.loaded.example_inputs(), strict=True)
    }
    outputs = session.run(None, feeds)
    if state.loaded.final_outputs is not None:
        _check_ranks(outputs, state.loaded.final_outputs)
        return
    assert state.pre is not None
    want_shapes = [tuple(r.shape) for r in state.pre.reference_outputs]
    got_shapes = [tuple(np.shape(o)) for o in outputs]
    if got_shapes != want_shapes:
        raise VerificationFailed(
            f"output shapes changed: {got_shapes}, expected {want_shapes}",
            code="interface_changed",
        )


def _check_ranks(outputs: Sequence[np.ndarray], declared: Sequence[TensorInfo]) -> None:
    """After a post-processing tail, sizes such as the number of detections depend on the
    weights: each output keeps the rank the upload declares."""
    for value, info in zip(outputs, declared, strict=True):
        if info.shape and np.ndim(value) != len(info.shape):
            raise VerificationFailed(
                f"output {info.name!r} has rank {np.ndim(value)}, the upload's {len(info.shape)}",
                code="interface_changed",
            )


def _export(state: _State, spec: JobSpec, out_dir: Path, t: _Tracker) -> dict[str, Path]:
    assert state.teacher is not None
    with t.stage("exporting", state.loaded.module):
        module = state.loaded.module.cpu().eval()
        model_path = export_onnx(
            module, state.loaded, out_dir / MODEL_ONNX, spec.export, single_file=True
        )
        t.within("exporting", 0.3)
        inputs = state.loaded.example_inputs(batch=_batch(state, 2), seed=2)
        state.verification["onnx_max_abs_diff"] = verify_onnx(model_path, module, inputs)
        state.verification["onnx_relative_tolerance"] = RELATIVE_TOLERANCE
        join_tail(model_path, state.loaded)
        _check_drop_in(model_path, state)
        t.within("exporting", 0.5)
        paths = {MODEL_ONNX: model_path}
        if state.loaded.tail is not None:
            state.notes.append(
                "model.pt2 not written: the model's post-processing exists only as ONNX"
            )
        else:
            try:
                paths[MODEL_PT2] = save_pt2(module, state.loaded, out_dir / MODEL_PT2)
            except ExportFailed as exc:
                # The ONNX file is the product; a model torch.export cannot trace still ships.
                state.notes.append(f"model.pt2 not written: {exc.message}")
        t.within("exporting", 0.7)
        original = out_dir / "original.onnx"
        export_onnx(state.teacher.cpu().eval(), state.loaded, original, spec.export)
        join_tail(original, state.loaded)
        paths["original.onnx"] = original
    return paths


def _quantize(state: _State, spec: JobSpec, paths: dict[str, Path], t: _Tracker) -> None:
    """INT8 when the job asks for it (see quantize.py); model.onnx becomes the INT8 model."""
    if spec.quantize.mode == "none":
        return
    with t.stage("quantizing"):
        budget = spec.accuracy_budget
        state.quantized = quantize.run_stage(
            state.loaded,
            state.splits,
            paths,
            spec.quantize,
            max_drop=budget.max_drop if budget is not None else None,
            on_progress=t.fraction("quantizing"),
            should_cancel=t.cancelled,
        )
        state.notes += state.quantized.notes


def _float_model(paths: dict[str, Path]) -> Path:
    """The pruned float model: model.fp32.onnx once INT8 took model.onnx's place."""
    return paths.get(MODEL_FP32_ONNX, paths[MODEL_ONNX])


def _benchmark(state: _State, spec: JobSpec, paths: dict[str, Path], device: str, t: _Tracker):
    with t.stage("benchmarking"):
        feeds = _feeds(state)
        threads = benchmark.default_threads()
        models = {"original": paths["original.onnx"], "pruned": _float_model(paths)}
        if MODEL_FP32_ONNX in paths:
            models["int8"] = paths[MODEL_ONNX]
        try:
            tables = benchmark.benchmark_onnx(
                models, feeds, spec.benchmark, device=device, threads=threads
            )
        except EngineError as exc:
            if "int8" not in models:
                raise
            # A provider without INT8 kernels must not cost the job its float figures.
            state.notes.append(f"quantization: the INT8 model was not timed: {exc.message}")
            del models["int8"]
            tables = benchmark.benchmark_onnx(
                models, feeds, spec.benchmark, device=device, threads=threads
            )
        providers = list(tables["original"])
        env = benchmark.environment(device, providers, threads=threads)
    return tables, env


def _history(state: _State) -> list[HistoryPoint]:
    """Budget probes then the final model, or the pruning steps; the last point carries the
    final model's measured accuracy and agreement."""
    assert state.pruned is not None and state.fidelity is not None
    final = {
        "accuracy": state.accuracy_after,
        "agreement": state.fidelity.top1_agreement,
    }
    if state.probes:
        last = HistoryPoint(
            step=len(state.probes) + 1,
            macs=state.pruned.macs_after,
            params=state.pruned.params_after,
            **final,
        )
        return [*state.probes, last]
    steps = list(state.pruned.history)
    if steps:
        steps[-1] = steps[-1].model_copy(update=final)
    return steps


def _report(state: _State, spec: JobSpec, paths, tables, env, timings) -> Report:
    assert state.pruned is not None and state.fidelity is not None
    pruned = state.pruned
    notes = [*state.notes] + ([NOTE_DATA_FREE] if state.splits is None else [])
    built = report.build_report(
        spec=spec,
        original=report.summarize(
            params=pruned.params_before,
            macs=pruned.macs_before,
            onnx_path=paths["original.onnx"],
            accuracy=state.accuracy_before,
            latency=tables["original"],
        ),
        pruned=report.summarize(
            params=pruned.params_after,
            macs=pruned.macs_after,
            onnx_path=_float_model(paths),
            accuracy=state.accuracy_after,
            latency=tables["pruned"],
        ),
        fidelity=state.fidelity,
        layers=pruned.layers,
        history=_history(state),
        environment=env,
        verification=state.verification,
        target_figures=state.target_figures,
        notes=notes,
        timings_s=timings,
        quantization=None
        if state.quantized is None
        else quantize.report_section(state.quantized, spec.quantize, paths, tables),
        warnings=state.warnings,
        data_free=state.splits is None,
        synthetic_agreement=not _agreement_on_data(state),
    )
    return _latency_of_int8(built, spec, tables)


def _latency_of_int8(built: Report, spec: JobSpec, tables) -> Report:
    """With INT8 timed, model.onnx is the INT8 model: its speed-up is what a latency
    target is judged on (the report's own warning reads the pruned float model's)."""
    if "int8" not in tables:
        return built
    speedup = report.latency_speedup(tables["original"], tables["int8"])
    if not speedup:
        return built
    target = {**built.target, "achieved_latency_reduction_int8": 1.0 - 1.0 / speedup}
    if spec.prune.target.kind != "latency_reduction":
        return built.model_copy(update={"target": target})
    kept = [w for w in built.warnings if w.code != "latency_target_missed"]
    warnings = [*kept, *latency_warning(spec, speedup)]
    return built.model_copy(update={"target": target, "warnings": warnings})


def _check_device(device: str) -> None:
    """Fail before any work when the job names a device this process cannot use."""
    if device == "cpu":
        return
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise EngineError(f"device must be cpu, cuda or cuda:N, not {device!r}", "invalid_device")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if int(index or 0) >= count:
        raise EngineError(f"{device} is not available here ({count} CUDA devices)", "no_device")


def run_pipeline(
    model_path: Path,
    spec: JobSpec,
    out_dir: Path,
    *,
    dataset_path: Path | None = None,
    arch: str | None = None,
    input_shape: list[int] | tuple[int, ...] | None = None,
    device: str = "cpu",
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    cache_dir: Path | None = None,
    analysis_budget_s: float | None = None,
) -> PipelineResult:
    """Prune one model as `spec` says; write model.onnx, model.pt2 and report.json to out_dir
    (and, when the spec quantizes, model.onnx is INT8 and model.fp32.onnx the float model).

    `cache_dir` keeps the per-layer latency tables of latency targets between jobs.
    `analysis_budget_s` bounds the layer analysis (default: scaled with the model's layer
    count and forward time, see `deadline.analysis_budget`); what it leaves unanalysed is
    protected.
    """
    _check_device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t = _Tracker(on_progress, should_cancel)
    state = _load(Path(model_path), dataset_path and Path(dataset_path), arch, input_shape, t)
    _analyze(state, spec, t, analysis_budget_s)
    _regularize(state, spec, device, t)
    _prune(state, spec, device, t, cache_dir)
    _finetune(state, spec, device, t)
    _evaluate(state, device, t)
    paths = _export(state, spec, out_dir, t)
    _quantize(state, spec, paths, t)
    tables, env = _benchmark(state, spec, paths, device, t)
    result = _report(state, spec, paths, tables, env, t.timings)
    report_path = report.write_report(result, out_dir / REPORT_JSON)
    t.progress("benchmarking", 1.0)
    return PipelineResult(
        report=result,
        artifacts={
            **{
                name: paths[name]
                for name in (MODEL_ONNX, MODEL_FP32_ONNX, MODEL_PT2)
                if name in paths
            },
            REPORT_JSON: report_path,
        },
        original_onnx=paths["original.onnx"],
    )
