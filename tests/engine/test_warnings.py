"""The report's warnings: each code raised by the measurement that calls for it, and only
then; slowdowns judged against the timing's own spread; notes that agree with each other."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import TensorDataset

from contract import (
    AccuracyBudget,
    Environment,
    Fidelity,
    JobSpec,
    Percentiles,
    PruneSpec,
    Report,
    Target,
)
from worker.engine import pipeline
from worker.engine.measure import report as rp
from worker.engine.prune.budget import ProbeResult

CPU = "CPUExecutionProvider"
AGREES = Fidelity(top1_agreement=0.97, max_abs_diff=0.1, cosine=0.99)


def _timed(p50: float, p90: float | None = None, samples: int | None = 50) -> dict:
    p = Percentiles(p50=p50, p90=p90 if p90 is not None else p50 * 1.05, samples=samples)
    return {CPU: {"1": p}}


def _report(
    tmp_path: Path,
    spec: JobSpec | None = None,
    *,
    before_ms: dict | None = None,
    after_ms: dict | None = None,
    accuracy: tuple[float | None, float | None] = (None, None),
    fidelity: Fidelity = AGREES,
    data_free: bool = False,
) -> Report:
    args = _report_args(tmp_path)
    return rp.build_report(
        **args
        | {
            "spec": spec or JobSpec(),
            "original": rp.summarize(
                params=100,
                macs=800,
                onnx_path=tmp_path / "o.onnx",
                accuracy=accuracy[0],
                latency=before_ms if before_ms is not None else _timed(10.0),
            ),
            "pruned": rp.summarize(
                params=50,
                macs=400,
                onnx_path=tmp_path / "p.onnx",
                accuracy=accuracy[1],
                latency=after_ms if after_ms is not None else _timed(6.0),
            ),
            "fidelity": fidelity,
            "data_free": data_free,
        }
    )


def _report_args(tmp_path: Path) -> dict:
    """build_report's arguments that no warning depends on, and defaults for the rest."""
    (tmp_path / "o.onnx").write_bytes(b"x" * 40)
    (tmp_path / "p.onnx").write_bytes(b"x" * 10)
    summary = {"params": 100, "macs": 800, "onnx_path": tmp_path / "o.onnx"}
    return {
        "spec": JobSpec(),
        "original": rp.summarize(**summary, latency=_timed(10.0)),
        "pruned": rp.summarize(**summary, latency=_timed(6.0)),
        "fidelity": AGREES,
        "layers": [],
        "history": [],
        "environment": Environment(torch="2", onnxruntime="1", device="cpu", providers=[CPU]),
    }


def _codes(report: Report) -> list[str]:
    return [w.code for w in report.warnings]


def test_a_good_result_has_no_warnings(tmp_path: Path) -> None:
    assert _report(tmp_path, accuracy=(0.95, 0.94)).warnings == []


def test_accuracy_drop_over_the_threshold_or_the_budget(tmp_path: Path) -> None:
    report = _report(tmp_path, accuracy=(0.95, 0.90))
    [warning] = report.warnings
    assert warning.code == "accuracy_drop" and "5.0%" in warning.message
    budget = JobSpec(accuracy_budget=AccuracyBudget(max_drop=0.005))
    assert _codes(_report(tmp_path, budget, accuracy=(0.95, 0.94))) == ["accuracy_drop"]


def test_low_agreement_without_labels(tmp_path: Path) -> None:
    low = Fidelity(top1_agreement=0.8, max_abs_diff=1.0, cosine=0.9)
    [warning] = _report(tmp_path, fidelity=low).warnings
    assert (warning.code, warning.severity) == ("low_agreement", "warning")
    assert "80.0%" in warning.message and "held-back samples" in warning.message
    # Without a classification output, the cosine of the outputs is the agreement.
    no_top1 = Fidelity(top1_agreement=None, max_abs_diff=1.0, cosine=0.5)
    assert _codes(_report(tmp_path, fidelity=no_top1)) == ["low_agreement"]
    # A multi-input model is compared on synthetic inputs even with a dataset.
    args = _report_args(tmp_path) | {"fidelity": low, "synthetic_agreement": True}
    [synthetic] = rp.build_report(**args).warnings
    assert "synthetic inputs" in synthetic.message


def test_data_free_model_that_disagrees_is_critical(tmp_path: Path) -> None:
    """The reported case: a data-free ResNet-18 at 50% MACs agreeing on 0% of inputs."""
    none = Fidelity(top1_agreement=0.0, max_abs_diff=5.0, cosine=0.2)
    [warning] = _report(tmp_path, fidelity=none, data_free=True).warnings
    assert (warning.code, warning.severity) == ("data_free_disagrees", "critical")
    assert "0.0%" in warning.message and "dataset" in warning.message


def test_slower_only_beyond_the_timing_spread(tmp_path: Path) -> None:
    # 11% slower with a tight spread over 50 runs: beyond noise.
    slow = _report(tmp_path, after_ms=_timed(11.1, 11.3))
    [warning] = slow.warnings
    assert (warning.code, warning.severity) == ("slower_than_original", "critical")
    assert "1.11x slower" in warning.message
    # The same medians from 5 runs spread over ±30%: within noise.
    noisy = _report(tmp_path, before_ms=_timed(10.0, 13.0, 5), after_ms=_timed(11.1, 14.4, 5))
    assert noisy.warnings == []
    # 1% slower is never called slower, however tight the timing.
    assert _report(tmp_path, after_ms=_timed(10.1, 10.1, 1000)).warnings == []


def test_slower_warning_advises_round_to(tmp_path: Path) -> None:
    spec = JobSpec(prune=PruneSpec(round_to=1))
    [warning] = _report(tmp_path, spec, after_ms=_timed(12.5, 12.6)).warnings
    assert "1.25x slower" in warning.message and "round_to" in warning.message
    unstructured = JobSpec(prune=PruneSpec(method="unstructured_l1"))
    assert _report(tmp_path, unstructured, after_ms=_timed(12.5, 12.6)).warnings == []


def test_latency_target_outside_its_band(tmp_path: Path) -> None:
    spec = JobSpec(prune=PruneSpec(target=Target(latency_reduction=0.5)))
    # 5.49 ms for a 5 ms target: 9.8% over.
    [warning] = _report(tmp_path, spec, after_ms=_timed(5.49)).warnings
    assert warning.code == "latency_target_missed" and "9.8% over" in warning.message
    assert _report(tmp_path, spec, after_ms=_timed(5.2)).warnings == []
    assert _codes(_report(tmp_path, spec, after_ms=_timed(4.0))) == ["latency_target_missed"]


def test_contract_p99_optional_and_warnings_listed() -> None:
    assert Percentiles(p50=1.0, p90=2.0).p99 is None
    assert "warnings" in Report.model_json_schema()["properties"]


def test_budget_without_dataset_notes_no_distillation_and_no_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Data-free budget probes are measured as pruned, on synthetic inputs: the notes must
    not speak of a distillation beside 'fine-tuning and accuracy were skipped'."""
    state, spec = _budget_state(monkeypatch, splits=None)
    pipeline._budget_target(state, spec, "cpu", pipeline._Tracker(None, None))
    [note] = [n for n in state.notes if "chosen from" in n]
    assert "distillation" in note and "without distillation (no dataset)" in note
    assert "after its short distillation" not in note
    assert "synthetic inputs" in note
    assert state.warnings == []


def test_too_little_heldout_data_is_a_coded_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.zeros(287, 3)
    y = torch.zeros(287, dtype=torch.long)
    splits = SimpleNamespace(
        train=TensorDataset(x, y), val=TensorDataset(x, y), labeled=True, num_classes=2
    )
    state, spec = _budget_state(monkeypatch, splits=splits)
    pipeline._budget_target(state, spec, "cpu", pipeline._Tracker(None, None))
    [warning] = state.warnings
    assert warning.code == "too_little_heldout_data" and "287 held-back samples" in warning.message
    [note] = [n for n in state.notes if "chosen from" in n]
    assert "after its short distillation" in note and "held-back accuracy" in note


def _budget_state(monkeypatch: pytest.MonkeyPatch, splits) -> tuple:
    """A pipeline state whose probes are faked: the score falls from 0.99 with strength."""

    def fake_probe(state, spec, value, device, t, span):
        return ProbeResult(strength=value, score=0.99 - value / 10, macs=100, params=10)

    monkeypatch.setattr(pipeline, "_probe", fake_probe)
    monkeypatch.setattr(pipeline, "_quality", lambda state, module, device: (0.99, 1.0))
    loaded = SimpleNamespace(module=torch.nn.Linear(2, 2), inputs=["x"])
    state = pipeline._State(loaded=loaded, splits=splits)
    state.teacher = torch.nn.Linear(2, 2)
    spec = JobSpec(
        prune=PruneSpec(target=Target(params_reduction=0.5)),
        accuracy_budget=AccuracyBudget(max_drop=0.01, probes=3),
    )
    return state, spec
