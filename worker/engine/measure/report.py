"""The report of a finished job: summaries before and after, ratios, fidelity, provenance."""

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from contract import (
    Environment,
    Fidelity,
    HistoryPoint,
    JobSpec,
    LayerChange,
    Quantization,
    Ratios,
    Report,
    Summary,
)
from contract.report import LatencyTable, ReportWarning
from worker.engine.measure.report_warnings import derive_warnings, timed_pair, unique
from worker.engine.ship.export import onnx_bytes

NOTE_UNSTRUCTURED = (
    "unstructured sparsity gives no speed-up: weights are zeroed, not removed, so the "
    "dense model runs as fast as before"
)


def summarize(
    *,
    params: int,
    macs: int,
    onnx_path: Path,
    accuracy: float | None = None,
    latency: LatencyTable | None = None,
) -> Summary:
    """One side of the comparison; the size is that of the exported ONNX file."""
    return Summary(
        params=params,
        macs=macs,
        size_bytes=onnx_bytes(onnx_path),
        accuracy=accuracy,
        latency_ms=dict(latency or {}),
    )


def _ratio(before: float, after: float) -> float:
    # Counts are integers: a zero after pruning reads as 1, so the ratio stays finite (JSON).
    return float(before) / float(max(after, 1))


def latency_speedup(original: LatencyTable, pruned: LatencyTable) -> float | None:
    """Original p50 ÷ pruned p50 at batch 1 on the CPU provider, else the first one timed."""
    pair = timed_pair(original, pruned)
    if pair is None or not pair[3].p50:
        return None
    return pair[2].p50 / pair[3].p50


def compute_ratios(original: Summary, pruned: Summary) -> Ratios:
    """Original ÷ pruned for MACs, parameters, file size and latency (2.0 = half)."""
    return Ratios(
        macs=_ratio(original.macs, pruned.macs),
        params=_ratio(original.params, pruned.params),
        size=_ratio(original.size_bytes, pruned.size_bytes),
        latency_speedup=latency_speedup(original.latency_ms, pruned.latency_ms),
    )


def target_record(
    spec: JobSpec, original: Summary, pruned: Summary, ratios: Ratios
) -> dict[str, float]:
    """What was asked beside what was reached, as fractions removed."""
    target = spec.prune.target
    record: dict[str, float] = {target.kind: target.value}
    record["achieved_macs_reduction"] = 1.0 - pruned.macs / original.macs if original.macs else 0.0
    if original.params:
        record["achieved_params_reduction"] = 1.0 - pruned.params / original.params
    if ratios.latency_speedup:
        record["achieved_latency_reduction"] = 1.0 - 1.0 / ratios.latency_speedup
    if spec.accuracy_budget is not None:
        record["max_accuracy_drop"] = spec.accuracy_budget.max_drop
    return record


def standard_notes(spec: JobSpec, existing: Sequence[str] = ()) -> list[str]:
    """Notes every reader should see, derived from the spec."""
    notes = []
    if spec.prune.method == "unstructured_l1":
        if not any("unstructured sparsity" in note for note in existing):
            notes.append(NOTE_UNSTRUCTURED)
    return notes


def build_report(
    *,
    spec: JobSpec,
    original: Summary,
    pruned: Summary,
    fidelity: Fidelity,
    layers: Sequence[LayerChange],
    history: Sequence[HistoryPoint],
    environment: Environment,
    verification: Mapping[str, float] | None = None,
    notes: Sequence[str] = (),
    timings_s: Mapping[str, float] | None = None,
    target_figures: Mapping[str, float] | None = None,
    quantization: Quantization | None = None,
    warnings: Sequence[ReportWarning] = (),
    data_free: bool = False,
    synthetic_agreement: bool | None = None,
) -> Report:
    """Assemble and validate the contract's report; ratios, target and the warnings they
    call for come from the summaries (`warnings` adds the pipeline's own)."""
    ratios = compute_ratios(original, pruned)
    all_notes = list(dict.fromkeys([*notes, *standard_notes(spec, notes)]))
    derived = derive_warnings(
        spec,
        original,
        pruned,
        fidelity,
        speedup=ratios.latency_speedup,
        data_free=data_free,
        synthetic=synthetic_agreement,
    )
    return Report(
        original=original,
        pruned=pruned,
        ratios=ratios,
        fidelity=fidelity,
        layers=list(layers),
        history=list(history),
        environment=environment,
        target={**target_record(spec, original, pruned, ratios), **(target_figures or {})},
        verification=dict(verification or {}),
        notes=all_notes,
        warnings=unique([*warnings, *derived]),
        timings_s={k: round(v, 3) for k, v in (timings_s or {}).items()},
        quantization=quantization,
    )


def write_report(report: Report, path: Path) -> Path:
    """Write report.json atomically (temp file, then rename), so no reader sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(report.model_dump_json(indent=2))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
