"""`secateurs inspect`: a model's prunability from the command line."""

import json
from pathlib import Path

import torch
import typer
from typer.testing import CliRunner

from cli.inspect_model import inspect
from tests.engine.tiny_nets import TinyResNet, seeded

runner = CliRunner()
# The command as `secateurs` registers it: a group callback keeps it a subcommand.
app = typer.Typer()
app.callback()(lambda: None)
app.command()(inspect)


def _tiny_resnet(path: Path) -> Path:
    torch.onnx.export(
        seeded(TinyResNet),
        (torch.zeros(1, 3, 16, 16),),
        str(path),
        dynamo=False,
        input_names=["image"],
        opset_version=17,
    )
    return path


def test_inspect_lists_the_groups_and_the_reachable_reduction(tmp_path: Path) -> None:
    result = runner.invoke(app, ["inspect", str(_tiny_resnet(tmp_path / "m.onnx")), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["prunability"]
    assert report["prunable_groups"] >= 3
    head = [g for g in report["groups"] if g["reason"] == "reaches_output"]
    assert head and head[0]["channels"] == 10
    assert 0.5 < report["max_macs_reduction"] < 1.0
    table = runner.invoke(app, ["inspect", str(tmp_path / "m.onnx")])
    assert "largest reachable MACs reduction" in table.stdout, table.output


def test_inspect_of_a_missing_file_is_one_error_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["inspect", str(tmp_path / "nope.onnx")])
    assert result.exit_code == 1
    assert "error: not_found" in result.output
