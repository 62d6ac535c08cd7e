"""The report: ratios, latency speed-up choice, target record, notes, atomic writing."""

import json
from pathlib import Path

import pytest

from contract import (
    Environment,
    Fidelity,
    HistoryPoint,
    JobSpec,
    LayerChange,
    Percentiles,
    PruneSpec,
    Report,
    Target,
)
from worker.engine.measure import report as rp


def _p(ms: float) -> Percentiles:
    return Percentiles(p50=ms, p90=ms * 1.1, p99=ms * 1.2, samples=50)


def _summaries(tmp_path: Path, method: str = "l2"):
    orig_file = tmp_path / "original.onnx"
    orig_file.write_bytes(b"x" * 4000)
    pruned_file = tmp_path / "model.onnx"
    pruned_file.write_bytes(b"x" * 1000)
    original = rp.summarize(
        params=1000,
        macs=8000,
        onnx_path=orig_file,
        accuracy=0.95,
        latency={
            "CUDAExecutionProvider": {"1": _p(1.0)},
            "CPUExecutionProvider": {"1": _p(9.0), "8": _p(50.0)},
        },
    )
    pruned = rp.summarize(
        params=250,
        macs=2000,
        onnx_path=pruned_file,
        accuracy=0.94,
        latency={
            "CUDAExecutionProvider": {"1": _p(0.8)},
            "CPUExecutionProvider": {"1": _p(3.0), "8": _p(20.0)},
        },
    )
    return original, pruned


def _report(tmp_path: Path, spec: JobSpec) -> Report:
    original, pruned = _summaries(tmp_path)
    return rp.build_report(
        spec=spec,
        original=original,
        pruned=pruned,
        fidelity=Fidelity(top1_agreement=0.98, max_abs_diff=0.1, cosine=0.99),
        layers=[LayerChange(name="conv1", out_channels_before=16, out_channels_after=8)],
        history=[HistoryPoint(step=1, macs=2000, accuracy=0.94)],
        environment=Environment(torch="2", onnxruntime="1", device="cpu", providers=["CPU"]),
        verification={"onnx_max_abs_diff": 1e-5},
        notes=["no dataset"],
        timings_s={"pruning": 1.23456},
    )


def test_ratios_and_cpu_speedup(tmp_path: Path) -> None:
    report = _report(tmp_path, JobSpec(prune=PruneSpec(target=Target(macs_reduction=0.75))))
    assert report.ratios.macs == pytest.approx(4.0)
    assert report.ratios.params == pytest.approx(4.0)
    assert report.ratios.size == pytest.approx(4.0)
    # CPU batch 1 p50 is used even though CUDA was timed first.
    assert report.ratios.latency_speedup == pytest.approx(3.0)
    assert report.original.size_bytes == 4000
    assert report.target["macs_reduction"] == pytest.approx(0.75)
    assert report.target["achieved_macs_reduction"] == pytest.approx(0.75)
    assert report.target["achieved_latency_reduction"] == pytest.approx(2 / 3)
    assert report.timings_s == {"pruning": 1.235}
    assert report.notes == ["no dataset"]


def test_first_provider_when_no_cpu() -> None:
    orig = {"CUDAExecutionProvider": {"4": _p(2.0), "1": _p(1.0)}}
    pruned = {"CUDAExecutionProvider": {"4": _p(1.0), "1": _p(0.5)}}
    assert rp.latency_speedup(orig, pruned) == pytest.approx(2.0)
    assert rp.latency_speedup({}, pruned) is None


def test_unstructured_note(tmp_path: Path) -> None:
    report = _report(tmp_path, JobSpec(prune=PruneSpec(method="unstructured_l1")))
    assert rp.NOTE_UNSTRUCTURED in report.notes


def test_write_report_round_trips(tmp_path: Path) -> None:
    report = _report(tmp_path, JobSpec())
    path = rp.write_report(report, tmp_path / "out" / "report.json")
    again = Report.model_validate(json.loads(path.read_text()))
    assert again == report
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]
