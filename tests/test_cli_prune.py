"""`secateurs prune`: one-line errors with a non-zero exit status, and a successful run."""

from pathlib import Path

import onnx
import pytest
import torch
import typer
from typer.testing import CliRunner

from cli.prune import prune
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
        ["prune", str(model), "-o", str(tmp_path / "o.onnx"), "--target-latency", "0.5",
         "--method", "unstructured_l1"],
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
