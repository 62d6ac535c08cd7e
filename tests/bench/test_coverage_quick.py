"""The coverage bench's own functions on a few tiny models: a torchvision classifier, a
YOLO-style detector and an entry whose package is missing. Checks the row format, not
the figures (those are the bench's to report)."""

import importlib.util
import json
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torchvision

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from corpus import Entry, yolo  # noqa: E402
from corpus._export import built_from_torch  # noqa: E402

# Loaded by path: the name `coverage` also belongs to coverage.py, which pytest-cov imports.
_spec = importlib.util.spec_from_file_location("coverage_bench", BENCH / "coverage.py")
assert _spec is not None and _spec.loader is not None
coverage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(coverage)

pytestmark = pytest.mark.slow

OPTS = {"seconds": 0.2, "threads": 1, "baseline": True, "timeout": 120}
ROW_KEYS = {"name", "group", "family", "outcome", "format", "total_s", "torch_pruning"}


def _tiny_resnet(workdir: Path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    return built_from_torch(model, (1, 3, 32, 32), workdir, "resnet18")


def _tiny_yolo(workdir: Path):
    model = yolo.build("yolov5", width=8)
    return built_from_torch(model, (1, 3, 64, 64), workdir, "yolov5", keep=yolo.head_convs(model))


@pytest.mark.parametrize(
    "entry",
    [
        Entry("test/resnet18", "torchvision", "resnet", _tiny_resnet),
        Entry("test/yolov5", "yolo", "yolov5", _tiny_yolo),
    ],
    ids=lambda e: e.name,
)
def test_row_of_a_pruned_model(entry: Entry, tmp_path: Path) -> None:
    row = coverage.run_entry(entry, tmp_path, tmp_path / "row.json", OPTS)
    assert ROW_KEYS <= set(row)
    assert row["phase"] == "done"
    assert row["outcome"] in coverage.OUTCOMES
    assert row["format"] == "onnx"
    if row["outcome"] == "succeeded":
        assert 0.0 < row["macs_reduction"] < 1.0
        assert row["speedup"] > 0 and row["efficiency"] > 0
        assert row["batches_run"] == [1, 2]
        assert row["problems"] == []
    else:
        assert row["message"]
    assert row["torch_pruning"]["handled"] in (True, False)
    line = coverage.format_row(row)
    assert line.startswith(entry.name) and row["outcome"] in line


def test_missing_package_is_skipped_without_a_process() -> None:
    entry = Entry(
        "test/missing", "pypi", "OCR", partial(_tiny_resnet), requires="no_such_package_here"
    )
    row = coverage.run_in_child(entry, OPTS)
    assert row["outcome"] == "skipped"
    assert "package not installed" in row["message"]


def test_summary_and_markdown(tmp_path: Path) -> None:
    rows = [
        {"name": "a", "group": "yolo", "family": "f", "outcome": "succeeded",
         "macs_reduction": 0.5, "efficiency": 0.8, "torch_pruning": {"handled": False}},
        {"name": "b", "group": "yolo", "family": "f", "outcome": "internal",
         "code": "KeyError", "message": "x|y", "torch_pruning": {"handled": True}},
        {"name": "c", "group": "pypi", "family": "f", "outcome": "skipped", "message": "m"},
    ]  # fmt: skip
    summary = {s["group"]: s for s in coverage.summarize(rows)}
    assert summary["yolo"]["succeeded_pct"] == 50.0
    assert summary["yolo"]["internal"] == 1 and summary["yolo"]["tp_handled"] == 1
    assert summary["pypi"]["ran"] == 0 and summary["all"]["models"] == 3
    meta = {"command": "c", "machine": "m", "timeout": 600, "wall_s": 60, "date": "d"}
    path = tmp_path / "coverage.md"
    coverage.write_markdown(path, rows, list(summary.values()), meta)
    text = path.read_text()
    assert "| yolo | 2 | 2 | 1 (50%)" in text and "x\\|y" in text
    raw = json.loads((tmp_path / "coverage.json").read_text())
    assert [r["name"] for r in raw["rows"]] == [r["name"] for r in rows]
