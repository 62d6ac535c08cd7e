"""`secateurs prune`: one-line errors with a non-zero exit status, a successful run, its
progress without a terminal, its warnings and `--json`."""

from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
import torch
import typer
from typer.testing import CliRunner

from cli.prune import prune
from contract import Environment, Fidelity, Percentiles, Ratios, Report, Summary
from contract.report import ReportWarning
from tests.engine.tiny_nets import TinyResNet, seeded

runner = CliRunner()
# The command as `secateurs` registers it; a group callback keeps `prune` a subcommand
# even though it is the only one here.
app = typer.Typer()
app.callback()(lambda: None)
app.command()(prune)


def _error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def test_missing_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["prune", str(tmp_path / "nope.onnx"), "-o", "x.onnx"])
    assert result.exit_code == 1
    assert _error_lines(result) == [f"error: not_found: no such file: {tmp_path / 'nope.onnx'}"]


def test_bad_model_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf model" * 10)
    result = runner.invoke(app, ["prune", str(bad), "-o", str(tmp_path / "out.onnx")])
    assert result.exit_code == 1
    lines = _error_lines(result)
    assert len(lines) == 1 and lines[0].count(":") >= 2
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "out.onnx").exists()


def test_invalid_target(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    result = runner.invoke(app, ["prune", str(model), "-o", "o.onnx", "--target-macs", "1.5"])
    assert result.exit_code == 1
    assert _error_lines(result)[0].startswith("error: invalid_spec: prune.target.macs_reduction")


@pytest.mark.slow
def test_prunes_tiny_model(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    model = tmp_path / "tiny.onnx"
    torch.onnx.export(
        seeded(TinyResNet, width=8),
        (torch.randn(1, 3, 32, 32),),
        str(model),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
    )
    out, report = tmp_path / "pruned.onnx", tmp_path / "report.json"
    args = ["prune", str(model), "-o", str(out), "--target-macs", "0.5", "--report", str(report)]
    result = runner.invoke(app, [*args, "--iterations", "3"])
    assert result.exit_code == 0, result.stderr
    assert "MACs" in result.stdout and "params" in result.stdout
    progress = [line for line in result.stderr.splitlines() if line.startswith("progress:")]
    assert progress[0] == "progress:   0% loading" and progress[-1].startswith("progress: 100%")
    onnx.checker.check_model(onnx.load(str(out)))
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["logits"]
    assert report.is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_unavailable_device(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    result = runner.invoke(app, ["prune", str(model), "-o", "o.onnx", "--device", "cuda:3"])
    assert result.exit_code == 1
    assert _error_lines(result) == [
        "error: no_device: cuda:3 is not available here (0 CUDA devices)"
    ]


def test_unstructured_cannot_take_a_latency_target(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    result = runner.invoke(
        app,
        [
            "prune",
            str(model),
            "-o",
            str(tmp_path / "o.onnx"),
            "--target-latency",
            "0.5",
            "--method",
            "unstructured_l1",
        ],
    )
    assert result.exit_code == 1
    [line] = _error_lines(result)
    assert line.startswith("error: invalid_spec: prune: ")
    assert "unstructured_l1 removes no channels" in line


def test_quantize_int8(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    model = tmp_path / "tiny.onnx"
    torch.onnx.export(
        seeded(TinyResNet, width=8),
        (torch.randn(1, 3, 32, 32),),
        str(model),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
    )
    out = tmp_path / "small.onnx"
    args = ["prune", str(model), "-o", str(out), "--quantize", "int8", "--iterations", "3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert "INT8 size" in result.stdout
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    float_ops = {n.op_type for n in onnx.load(str(tmp_path / "small.fp32.onnx")).graph.node}
    assert "DequantizeLinear" in ops and "DequantizeLinear" not in float_ops
    bad = runner.invoke(app, ["prune", str(model), "-o", str(out), "--quantize", "int4"])
    assert bad.exit_code == 1
    assert _error_lines(bad)[0].startswith("error: invalid_spec: quantize.mode")


def _fake_report() -> Report:
    p = Percentiles(p50=2.0, p90=2.2, samples=50)
    side = {"params": 100, "macs": 800, "size_bytes": 40, "latency_ms": {"CPU": {"1": p}}}
    return Report(
        original=Summary(**side),
        pruned=Summary(**{**side, "params": 50, "macs": 400}),
        ratios=Ratios(macs=2.0, params=2.0, size=1.0, latency_speedup=0.9),
        fidelity=Fidelity(top1_agreement=0.0, max_abs_diff=3.0, cosine=0.1),
        layers=[],
        history=[],
        environment=Environment(torch="2", onnxruntime="1", device="cpu", providers=["CPU"]),
        notes=["no dataset: pruned data-free"],
        warnings=[
            ReportWarning(code="low_agreement", message="agrees on 80.0% of inputs"),
            ReportWarning(code="slower_than_original", message="1.11x slower", severity="critical"),
        ],
    )


# (stage, overall) as the pipeline reports them; the lines expected for each, without a
# terminal: at each stage change and each tenth of the whole job.
STEPS = [
    ("loading", 0.0, "progress:   0% loading"),
    ("loading", 0.02, None),
    ("analyzing", 0.05, "progress:   5% analyzing"),
    ("pruning", 0.1, "progress:  10% pruning"),
    ("pruning", 0.15, None),
    ("pruning", 0.34, "progress:  34% pruning"),
    ("pruning", 0.38, None),
    ("exporting", 0.8, "progress:  80% exporting"),
    ("benchmarking", 1.0, "progress: 100% benchmarking"),
]


@pytest.fixture
def fake_pipeline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """run_pipeline replaced by one that reports STEPS and returns _fake_report(); the
    path of a model file to prune."""
    from worker.engine import pipeline

    def run(model, spec, out_dir, *, on_progress, **options):
        for stage, overall, _ in STEPS:
            on_progress(stage, overall)
        artifacts = {"model.onnx": out_dir / "model.onnx", "report.json": out_dir / "r.json"}
        for path in artifacts.values():
            path.write_bytes(b"x")
        return SimpleNamespace(report=_fake_report(), artifacts=artifacts)

    monkeypatch.setattr(pipeline, "run_pipeline", run)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    return model


def test_progress_lines_on_stderr_without_a_terminal(fake_pipeline: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["prune", str(fake_pipeline), "-o", str(tmp_path / "o.onnx")])
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("progress:")]
    assert lines == [line for *_, line in STEPS if line]
    assert "progress:" not in result.stdout


def test_summary_shows_warnings_critical_first(fake_pipeline: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["prune", str(fake_pipeline), "-o", str(tmp_path / "o.onnx")])
    assert result.exit_code == 0, result.stderr
    shown = [line for line in result.stdout.splitlines() if line.startswith(("critical", "warn"))]
    assert shown == [
        "critical: 1.11x slower [slower_than_original]",
        "warning: agrees on 80.0% of inputs [low_agreement]",
    ]
    assert "note: no dataset: pruned data-free" in result.stdout


def test_json_prints_the_report_alone_on_stdout(fake_pipeline: Path, tmp_path: Path) -> None:
    args = ["prune", str(fake_pipeline), "-o", str(tmp_path / "o.onnx"), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    report = Report.model_validate_json(result.stdout)
    assert report == _fake_report()
    assert "wrote" in result.stderr and "progress:" in result.stderr
    assert (tmp_path / "o.onnx").is_file()


def test_accuracy_budget_without_data_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    result = runner.invoke(app, ["prune", str(model), "-o", "o.onnx", "--max-drop", "0.01"])
    assert result.exit_code == 1
    [line] = _error_lines(result)
    assert line.startswith("error: invalid_spec: --max-drop: accuracy_budget needs a dataset")
