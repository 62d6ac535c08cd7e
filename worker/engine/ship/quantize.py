"""Post-training INT8 quantization of the pruned float ONNX model, in onnxruntime.

`quantize_int8` pre-processes the float model (`quant_pre_process`: shape inference and
graph optimisation), calibrates activation ranges once on calibration samples (the
dataset's training part, or seeded synthetic inputs shaped like the model input), and
writes a QDQ model: per-channel int8 weights, uint8 activations. Its inputs and outputs
stay float32 under the same names and declared shapes, which is checked.

The INT8 model is then measured in onnxruntime on the same samples as its reference:
held-back accuracy with labels, else its agreement with the reference. With an accuracy
budget the reference is the original model and the tolerance the budget: one budget
bounds what pruning and INT8 lose together, so the final file is never further from the
upload than `max_drop`. Without one, INT8 is judged against the pruned float model with
a tolerance of one point. When the drop exceeds the tolerance and the fallback is
`auto`, each Conv/Gemm/MatMul is quantized away in turn (with the cached calibration, so
each try costs a graph rewrite and one evaluation) and the costliest are left in float,
fewest first, until the drop fits.

Anything onnxruntime cannot do (an exception while pre-processing or quantizing, no node
it can quantize, an INT8 model it cannot run) leaves the float model as the product and
says why; only a budget that INT8 cannot meet fails the job.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from contract import Quantization, QuantizeSpec
from contract.artifacts import MODEL_FP32_ONNX, MODEL_ONNX
from contract.report import LatencyTable
from worker.engine.errors import EngineError, JobCancelled, QuantizationFailed, describe_failure
from worker.engine.ship.export import onnx_bytes
from worker.engine.train.data import DatasetSplits
from worker.engine.types import LoadedModel

# The drop (accuracy points, or 1 - agreement) allowed without an accuracy budget.
DEFAULT_TOLERANCE = 0.01
# The layers whose float fallback is tried, one at a time, when INT8 costs too much.
FALLBACK_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Most layers scanned for sensitivity (the first ones in graph order beyond this are
# not tried: a scan costs one quantization and one evaluation per layer).
MAX_SCAN = 96
# Rows per onnxruntime call when calibrating and evaluating a dynamic-batch model.
BATCH = 16
# Synthetic samples the models are compared on when there is no held-back data.
EVAL_SAMPLES = 128

Feeds = dict[str, np.ndarray]
# The contract's calibration names (QuantizeSpec.calibration) as onnxruntime names them.
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


@dataclass
class EvalSet:
    """Inputs the models are compared on, in batches; labels when accuracy is measured."""

    batches: list[Feeds]
    labels: np.ndarray | None = None


@dataclass
class Scores:
    """One model measured on an EvalSet: accuracy (with labels) and its first outputs."""

    accuracy: float | None
    outputs: list[list[np.ndarray]]


@dataclass
class QuantizeOutcome:
    """What the stage did. `path` is the INT8 model, or None when the float model stays."""

    path: Path | None
    calibration_data: str
    samples: int
    nodes_quantized: int = 0
    nodes_float: int = 0
    float_fallback: list[str] = field(default_factory=list)
    measured_on: str = ""
    drop: float | None = None
    tolerance: float = DEFAULT_TOLERANCE
    accuracy: dict[str, float] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    notes: list[str] = field(default_factory=list)


def _rows(batches: Sequence[Feeds]) -> int:
    if isinstance(batches, SyntheticFeeds):
        return batches.samples
    return sum(next(iter(b.values())).shape[0] for b in batches)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of feed batches."""

    def __init__(self, batches: Sequence[Feeds]) -> None:
        self._batches = batches
        self._iter: Iterator[Feeds] = iter(self._batches)

    def get_next(self) -> Feeds | None:
        return next(self._iter, None)

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iter = iter(self._batches[start_index:end_index])


def _session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_batches(path: Path, evalset: EvalSet) -> Scores:
    """The model's outputs on every batch, and its top-1 accuracy when there are labels."""
    session = _session(path)
    outputs = [list(session.run(None, feeds)) for feeds in evalset.batches]
    acc = None
    if evalset.labels is not None:
        predicted = np.concatenate([out[0].reshape(out[0].shape[0], -1) for out in outputs])
        acc = float((predicted.argmax(axis=1) == evalset.labels).mean())
    return Scores(accuracy=acc, outputs=outputs)


def agreement(reference: Scores, candidate: Scores) -> float:
    """Top-1 agreement of the first outputs when they are class scores, else the cosine
    similarity of all outputs, flattened."""
    first_ref = np.concatenate([o[0] for o in reference.outputs])
    first_cand = np.concatenate([o[0] for o in candidate.outputs])
    if first_ref.ndim == 2 and first_ref.shape[1] > 1:
        return float((first_ref.argmax(axis=1) == first_cand.argmax(axis=1)).mean())
    ref = np.concatenate([a.astype(np.float64).ravel() for o in reference.outputs for a in o])
    cand = np.concatenate([a.astype(np.float64).ravel() for o in candidate.outputs for a in o])
    denom = float(np.linalg.norm(ref) * np.linalg.norm(cand))
    return float(ref @ cand / denom) if denom > 0 else float(np.allclose(ref, cand))


def _preprocess(src: Path, dst: Path, notes: list[str]) -> Path:
    """`quant_pre_process` (with, then without, symbolic shape inference), else `src`."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    for skip_symbolic in (False, True):
        try:
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=skip_symbolic)
            return dst
        except Exception:  # noqa: BLE001 - onnxruntime's errors are untyped; try the next way
            continue
    notes.append("quantization: pre-processing failed; the model was quantized as exported")
    return src


def _quantize(
    model: Path,
    out: Path,
    spec: QuantizeSpec,
    exclude: Sequence[str],
    reader: _Reader | None,
    cache: Path,
) -> Path:
    """One QDQ quantization; ranges are calibrated on the first call and cached in `cache`."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    # quantize_static logs its advice through the root logger, once per call.
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        quantize_static(
            str(model),
            str(out),
            reader,  # type: ignore[arg-type]  # duck-typed CalibrationDataReader
            quant_format=QuantFormat.QDQ,
            per_channel=spec.per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude),
            calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[spec.calibration]),
            calibration_cache_path=cache,
        )
    finally:
        root.setLevel(level)
    return out


def quantize_plain(
    float_path: Path, workdir: Path, spec: QuantizeSpec, calibration: Sequence[Feeds]
) -> Path:
    """`float_path` quantized once as `spec` says, in `workdir` (fresh: the calibration
    cached there is this model's), without the fallback scan: how an accuracy-budget
    probe is measured. Never better than what the stage ships, whose fallback may keep
    costly layers in float, so a probe that fits leaves the stage room to fit too."""
    model = _preprocess(float_path, workdir / "pre.onnx", [])
    out = workdir / "int8.onnx"
    cache = workdir / "calibration.json"
    return _quantize(model, out, spec, spec.exclude, _Reader(calibration), cache)


def count_nodes(path: Path) -> tuple[int, int, list[str]]:
    """(quantized nodes, float nodes, names of quantized FALLBACK_OPS layers) of a QDQ
    model: a node is quantized when one of its inputs comes out of a DequantizeLinear."""
    graph = onnx.load(str(path), load_external_data=False).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized = floating = 0
    layers = []
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if any(i in dequantized for i in node.input):
            quantized += 1
            if node.op_type in FALLBACK_OPS and node.name:
                layers.append(node.name)
        else:
            floating += 1
    return quantized, floating, layers


def _io(graph: onnx.GraphProto) -> list[tuple[str, int, list]]:
    def dims(v: onnx.ValueInfoProto) -> list:
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    return [(v.name, v.type.tensor_type.elem_type, dims(v)) for v in [*graph.input, *graph.output]]


def keep_interface(float_path: Path, int8_path: Path, feeds: Feeds) -> None:
    """Give the INT8 model the float model's declared inputs and outputs (pre-processing
    may rename dynamic dims), then check it is a drop-in: same names, float32, same
    declared shapes, same output shapes on `feeds`."""
    reference = onnx.load(str(float_path), load_external_data=False).graph
    model = onnx.load(str(int8_path))
    graph = model.graph
    for values, ref_values in ((graph.input, reference.input), (graph.output, reference.output)):
        by_name = {v.name: v for v in ref_values}
        for value in values:
            if value.name in by_name:
                value.type.CopyFrom(by_name[value.name].type)
    onnx.save(model, str(int8_path))
    if _io(graph) != _io(reference):
        raise EngineError(f"inputs/outputs changed: {_io(graph)} vs {_io(reference)}")
    want = [o.shape for o in _session(float_path).run(None, feeds)]
    got = [o.shape for o in _session(int8_path).run(None, feeds)]
    dtypes = {o.type for o in _session(int8_path).get_outputs()}
    if got != want or dtypes - {"tensor(float)"}:
        raise EngineError(f"output shapes changed: {got} vs {want}")


@dataclass
class _Trial:
    """The quantizations of one job: the pre-processed model, its cached calibration."""

    model: Path
    spec: QuantizeSpec
    reader: _Reader
    workdir: Path
    evalset: EvalSet
    judge: Callable[[Scores], float]
    should_cancel: Callable[[], bool] | None
    tries: int = 0

    def run(self, exclude: Sequence[str]) -> tuple[Path, Scores, float]:
        """Quantize keeping `exclude` in float; the file, its scores and its drop."""
        if self.should_cancel is not None and self.should_cancel():
            raise JobCancelled()
        self.tries += 1
        out = self.workdir / f"int8-{self.tries}.onnx"
        cache = self.workdir / "calibration.json"
        _quantize(self.model, out, self.spec, exclude, self.reader, cache)
        scores = run_batches(out, self.evalset)
        return out, scores, self.judge(scores)


def quantize_int8(
    float_path: Path,
    original_path: Path,
    out_path: Path,
    spec: QuantizeSpec,
    *,
    calibration: Sequence[Feeds],
    evalset: EvalSet,
    synthetic: bool,
    max_drop: float | None,
    on_progress: Callable[[float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> QuantizeOutcome:
    """Quantize `float_path` to INT8 at `out_path` as `spec` says (see the module doc).

    The outcome's `path` is None when the float model stays the product (its `reason`
    says why). Raises QuantizationFailed only when `max_drop` (the job's budget) is set
    and no INT8 model meets it."""
    tolerance = DEFAULT_TOLERANCE if max_drop is None else max_drop
    labeled = evalset.labels is not None
    outcome = QuantizeOutcome(
        path=None,
        calibration_data="synthetic" if synthetic else "dataset",
        samples=_rows(calibration),
        tolerance=tolerance,
        measured_on=measured_on(labeled, against_original=max_drop is not None),
    )
    if synthetic:
        outcome.notes.append(
            "quantization: calibrated on synthetic inputs shaped like the model input; INT8 "
            "accuracy was not measured on real data (its agreement is on synthetic inputs)"
        )
    progress = on_progress or (lambda _: None)
    float_scores = run_batches(float_path, evalset)
    original_scores = run_batches(original_path, evalset)
    _score_table(outcome, "original", original_scores, original_scores)
    _score_table(outcome, "pruned_fp32", float_scores, original_scores)

    # With a budget, the drop is the whole job's: the original model is the reference.
    reference = float_scores if max_drop is None else original_scores

    def judge(scores: Scores) -> float:
        return drop_from(reference, scores, labeled)

    pruned_drop = judge(float_scores)
    if max_drop is not None:
        outcome.notes.append(
            f"quantization: one budget for pruning and INT8, its drop measured on "
            f"{outcome.measured_on}: the pruned float model alone loses "
            f"{pruned_drop:.3f} of the {max_drop:g} allowed"
        )
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        workdir = Path(tmp)
        try:
            model = _preprocess(float_path, workdir / "pre.onnx", outcome.notes)
            trial = _Trial(
                model, spec, _Reader(calibration), workdir, evalset, judge, should_cancel
            )
            best, scores, drop = trial.run(spec.exclude)
            progress(0.3)
            quantized, _, layers = count_nodes(best)
            if quantized == 0:
                raise EngineError("onnxruntime found no node it can quantize in this model")
            fallback: list[str] = []
            # No layer kept in float can bring INT8 below the float model's own drop.
            hopeless = max_drop is not None and pruned_drop > tolerance
            if drop > tolerance and spec.fallback == "auto" and layers and not hopeless:
                best, scores, drop, fallback = _fall_back(trial, layers, drop, tolerance, progress)
            keep_interface(float_path, best, evalset.batches[0])
        except (JobCancelled, QuantizationFailed):
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the runtime keeps the float
            outcome.reason = f"{type(exc).__name__}: {describe_failure(exc)}"
            outcome.notes.append(
                f"quantization: INT8 was not applied, the float model is the product "
                f"(onnxruntime could not quantize it: {outcome.reason})"
            )
            return outcome
        outcome.drop = drop
        outcome.float_fallback = fallback
        if drop > tolerance:
            if max_drop is not None:
                measure = outcome.measured_on
                raise _budget_unmet(measure, pruned_drop, drop, max_drop, spec, fallback)
            if spec.fallback == "auto":
                outcome.reason = (
                    f"INT8 lost {drop:.3f} of {outcome.measured_on} (tolerance {tolerance:g}) "
                    "even with every sensitive layer left in float"
                )
                outcome.notes.append(f"quantization: not applied: {outcome.reason}")
                return outcome
            outcome.notes.append(
                f"quantization: INT8 loses {drop:.3f} of {outcome.measured_on} (over the "
                f"tolerance {tolerance:g}; fallback 'none' kept every layer quantized)"
            )
        shutil.copyfile(best, out_path)
    outcome.path = out_path
    outcome.nodes_quantized, outcome.nodes_float, _ = count_nodes(out_path)
    _score_table(outcome, "int8", scores, original_scores)
    if fallback:
        outcome.notes.append(
            f"quantization: {len(fallback)} layer(s) left in float to keep the drop within "
            f"{tolerance:g}: {', '.join(fallback)}"
        )
    progress(1.0)
    return outcome


def measured_on(labeled: bool, *, against_original: bool) -> str:
    """What a drop is measured on, naming its reference model."""
    if labeled:
        return "held-back accuracy" + (", against the original model" if against_original else "")
    return "agreement with the " + ("original model" if against_original else "pruned float model")


def drop_from(reference: Scores, scores: Scores, labeled: bool) -> float:
    """Accuracy points lost against `reference` with labels, else 1 - agreement with it."""
    if labeled:
        assert scores.accuracy is not None and reference.accuracy is not None
        return reference.accuracy - scores.accuracy
    return 1.0 - agreement(reference, scores)


def _budget_unmet(
    measure: str,
    pruned_drop: float,
    drop: float,
    max_drop: float,
    spec: QuantizeSpec,
    fallback: list[str],
) -> QuantizationFailed:
    """The job's failure when no INT8 model keeps the whole job within its budget."""
    if pruned_drop > max_drop:
        how = " (the pruned float model already spends the whole budget)"
    elif fallback:
        how = f" even with {len(fallback)} layer(s) left in float"
    elif spec.fallback == "none":
        how = " (fallback is 'none': set it to 'auto' to keep layers in float)"
    else:
        how = ""
    return QuantizationFailed(
        f"INT8 loses {drop:.3f} of {measure}, more than "
        f"accuracy_budget.max_drop={max_drop:g}; the pruned float model alone loses "
        f"{pruned_drop:.3f}{how}",
        code="quantization_budget_unmet",
    )


def _score_table(outcome: QuantizeOutcome, key: str, scores: Scores, original: Scores) -> None:
    if scores.accuracy is not None:
        outcome.accuracy[key] = scores.accuracy
    if key != "original":
        outcome.agreement[key] = agreement(original, scores)


def _fall_back(
    trial: _Trial,
    layers: list[str],
    drop: float,
    tolerance: float,
    progress: Callable[[float], None],
) -> tuple[Path, Scores, float, list[str]]:
    """Each layer's cost (how much the drop shrinks with it alone in float), then the
    costliest layers in float, one more at a time, until the drop fits."""
    scanned = layers[:MAX_SCAN]
    gains: dict[str, float] = {}
    for i, name in enumerate(scanned):
        tried, _, alone = trial.run([*trial.spec.exclude, name])
        tried.unlink()  # a large model's tries would fill the scratch directory
        gains[name] = drop - alone
        progress(0.3 + 0.4 * (i + 1) / len(scanned))
    ranked = sorted(scanned, key=lambda n: (-gains[n], scanned.index(n)))
    best: tuple[Path, Scores, float, list[str]] | None = None
    for k in range(1, len(ranked) + 1):
        kept = ranked[:k]
        path, scores, found = trial.run([*trial.spec.exclude, *kept])
        if best is not None:
            best[0].unlink()
        best = (path, scores, found, kept)
        progress(0.7 + 0.3 * k / len(ranked))
        if found <= tolerance:
            break
    assert best is not None
    return best


# --- the stage -------------------------------------------------------------------------------


def _batches(x: np.ndarray, name: str, batch: int, static: bool) -> list[Feeds]:
    """Rows of `x` as feeds of `batch` rows (a static batch drops the incomplete tail)."""
    end = len(x) - len(x) % batch if static else len(x)
    return [
        {name: np.ascontiguousarray(x[i : i + batch], dtype=np.float32)}
        for i in range(0, end, batch)
    ]


class SyntheticFeeds(Sequence[Feeds]):
    """Seeded standard-normal inputs shaped like the model's (the engine's data-free
    inputs), made one batch at a time when read: 4096 samples are never held at once."""

    def __init__(self, loaded: LoadedModel, samples: int, batch: int, seed: int) -> None:
        self._loaded, self.samples, self._batch, self._seed = loaded, samples, batch, seed

    def __len__(self) -> int:
        return -(-self.samples // self._batch)

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not 0 <= index < len(self):
            raise IndexError(index)
        start = index * self._batch
        rows = min(self._batch, self.samples - start)
        tensors = self._loaded.example_inputs(batch=rows, seed=self._seed + index)
        names = [i.name for i in self._loaded.inputs]
        return {n: t.numpy() for n, t in zip(names, tensors, strict=True)}


def stage_data(
    loaded: LoadedModel, splits: DatasetSplits | None, spec: QuantizeSpec
) -> tuple[Sequence[Feeds], EvalSet, bool]:
    """Calibration feeds (the training part, else synthetic), the set the models are
    compared on (the held-back part with its labels, else synthetic) and whether the
    calibration is synthetic. Datasets feed single-input models only."""
    sizes = [info.shape[0] for info in loaded.inputs if info.shape]
    fixed = [s for s in sizes if isinstance(s, int) and s > 0]
    static = bool(fixed)
    batch = fixed[0] if fixed else BATCH
    usable = splits is not None and len(loaded.inputs) == 1
    name = loaded.inputs[0].name
    calibration: Sequence[Feeds] = []
    if usable:
        assert splits is not None
        calibration = _batches(splits.train.tensors[0][: spec.samples].numpy(), name, batch, static)
    synthetic = not calibration
    if synthetic:
        count = max(spec.samples, batch) if static else spec.samples
        calibration = SyntheticFeeds(loaded, count - count % batch if static else count, batch, 100)
    evalset = EvalSet(batches=[])
    if usable and splits is not None and splits.val is not None:
        val = splits.val.tensors
        evalset.batches = _batches(val[0].numpy(), name, batch, static)
        if splits.labeled and evalset.batches:
            rows = sum(len(b[name]) for b in evalset.batches)
            evalset.labels = val[1][:rows].numpy().reshape(-1)
    if not evalset.batches:
        count = max(EVAL_SAMPLES, batch)
        count -= count % batch if static else 0
        evalset = EvalSet(batches=list(SyntheticFeeds(loaded, count, batch, 1000)))
    return calibration, evalset, synthetic


def run_stage(
    loaded: LoadedModel,
    splits: DatasetSplits | None,
    paths: dict[str, Path],
    spec: QuantizeSpec,
    *,
    max_drop: float | None,
    on_progress: Callable[[float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> QuantizeOutcome:
    """Quantize `paths[MODEL_ONNX]`; when INT8 is applied, the float model moves to
    `model.fp32.onnx` beside it and `model.onnx` becomes the INT8 model (`paths` updated)."""
    float_path = paths[MODEL_ONNX]
    calibration, evalset, synthetic = stage_data(loaded, splits, spec)
    staged = float_path.with_name("model.int8.partial.onnx")
    outcome = quantize_int8(
        float_path,
        paths["original.onnx"],
        staged,
        spec,
        calibration=calibration,
        evalset=evalset,
        synthetic=synthetic,
        max_drop=max_drop,
        on_progress=on_progress,
        should_cancel=should_cancel,
    )
    if outcome.path is not None:
        fp32 = float_path.with_name(MODEL_FP32_ONNX)
        os.replace(float_path, fp32)
        os.replace(staged, float_path)
        paths[MODEL_FP32_ONNX] = fp32
        outcome.path = float_path
    return outcome


def report_section(
    outcome: QuantizeOutcome,
    spec: QuantizeSpec,
    paths: dict[str, Path],
    tables: dict[str, LatencyTable],
) -> Quantization:
    """The report's `quantization` section: the three models side by side."""
    applied = outcome.path is not None
    files = {
        "original": paths["original.onnx"],
        "pruned_fp32": paths.get(MODEL_FP32_ONNX, paths[MODEL_ONNX]),
    }
    if applied:
        files["int8"] = paths[MODEL_ONNX]
    names = {"original": "original", "pruned_fp32": "pruned", "int8": "int8"}
    return Quantization(
        mode=spec.mode,
        applied=applied,
        calibration=spec.calibration,
        samples=outcome.samples,
        calibration_data=outcome.calibration_data,
        per_channel=spec.per_channel,
        nodes_quantized=outcome.nodes_quantized,
        nodes_float=outcome.nodes_float,
        float_fallback=outcome.float_fallback,
        excluded=list(spec.exclude),
        measured_on=outcome.measured_on,
        drop=outcome.drop,
        tolerance=outcome.tolerance,
        size_bytes={k: onnx_bytes(p) for k, p in files.items()},
        latency_ms={k: tables[names[k]] for k in files if names[k] in tables},
        accuracy=outcome.accuracy,
        agreement=outcome.agreement,
        reason=outcome.reason,
    )
