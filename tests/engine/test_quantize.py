"""INT8 quantization after pruning: end to end through run_pipeline (data-free and with a
dataset), the drop-in interface of the INT8 file, its scores measured on the file itself,
the float fallback of a layer that INT8 ruins, a budget INT8 cannot meet, a model
onnxruntime cannot quantize, and the default spec leaving the pipeline as it was."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from contract import JobSpec, QuantizeSpec, Report, Target
from contract.stages import STAGES
from tests.engine.tiny_nets import TinyResNet, seeded
from worker.engine import pipeline
from worker.engine.errors import QuantizationFailed
from worker.engine.pipeline import run_pipeline
from worker.engine.ship import quantize

SHAPE = (1, 3, 32, 32)
FAST_BENCH = {"providers": ["cpu"], "batch_sizes": [1], "warmup": 1, "iterations": 5}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    torch.onnx.export(
        seeded(TinyResNet, width=8),
        (torch.randn(*SHAPE),),
        str(path),
        dynamo=False,
        input_names=["image"],
        output_names=["scores"],
        dynamic_axes={"image": {0: "n"}, "scores": {0: "n"}},
        opset_version=17,
    )
    return path


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 labeled samples whose class is set by the mean of one colour channel."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=120)
    x = rng.normal(0, 0.3, size=(120, 3, 32, 32)).astype(np.float32)
    x[np.arange(120), y] += 1.0
    path = tmp_path_factory.mktemp("data") / "train.npz"
    np.savez(path, x=x, y=y.astype(np.int64))
    return path


def _spec(**body: object) -> JobSpec:
    return JobSpec.model_validate(
        {"finetune": None, "benchmark": FAST_BENCH, "quantize": {"mode": "int8"}, **body}
    )


def _io(path: Path) -> list:
    graph = onnx.load(str(path)).graph

    def dims(value: onnx.ValueInfoProto) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return [(v.name, v.type.tensor_type.elem_type, dims(v)) for v in [*graph.input, *graph.output]]


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_the_contract() -> None:
    assert JobSpec().quantize == QuantizeSpec()
    assert QuantizeSpec().mode == "none"
    spec = JobSpec.model_validate({"quantize": {"mode": "int8"}})
    assert spec.quantize.calibration == "minmax" and spec.quantize.samples == 128
    assert spec.quantize.per_channel and spec.quantize.fallback == "auto"
    with pytest.raises(ValueError):
        QuantizeSpec(samples=0)
    with pytest.raises(ValueError):
        JobSpec.model_validate({"quantize": {"mode": "int4"}})
    fields = QuantizeSpec.model_json_schema()["properties"]
    assert all(f.get("description") for f in fields.values())
    assert list(STAGES).index("quantizing") == list(STAGES).index("benchmarking") - 1
    assert sum(STAGES.values()) == pytest.approx(1.0)
    # Reports written before quantization existed still validate.
    old = Report.model_json_schema()
    assert "quantization" not in old.get("required", [])


def test_data_free_int8_end_to_end(tiny_onnx: Path, tmp_path: Path) -> None:
    stages: list[str] = []
    result = run_pipeline(
        tiny_onnx, _spec(), tmp_path / "out", on_progress=lambda s, _: stages.append(s)
    )
    assert list(dict.fromkeys(stages))[-2:] == ["quantizing", "benchmarking"]
    assert set(result.artifacts) == {"model.onnx", "model.fp32.onnx", "model.pt2", "report.json"}
    int8, fp32 = result.artifacts["model.onnx"], result.artifacts["model.fp32.onnx"]
    assert "DequantizeLinear" in _ops(int8) and "DequantizeLinear" not in _ops(fp32)
    # Drop-in: the same input/output names, float32, the same declared dims as the upload.
    assert _io(int8) == _io(fp32) == _io(tiny_onnx)
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(5).standard_normal((3, *SHAPE[1:])).astype(np.float32)
    (out,) = session.run(None, {"image": x})
    assert out.shape == (3, 10) and out.dtype == np.float32

    report = result.report
    q = report.quantization
    assert q is not None and q.applied and q.mode == "int8"
    assert q.calibration_data == "synthetic" and q.samples == 128
    assert q.nodes_quantized > 0 and q.drop is not None and q.drop <= q.tolerance
    assert set(q.size_bytes) == set(q.latency_ms) == {"original", "pruned_fp32", "int8"}
    assert q.size_bytes["int8"] == int8.stat().st_size
    assert q.size_bytes["pruned_fp32"] == fp32.stat().st_size == report.pruned.size_bytes
    assert all("CPUExecutionProvider" in t for t in q.latency_ms.values())
    assert set(q.agreement) == {"pruned_fp32", "int8"} and not q.accuracy
    assert any("not measured on real data" in n for n in report.notes)
    assert "quantizing" in report.timings_s
    assert "achieved_latency_reduction_int8" in report.target
    again = Report.model_validate(json.loads(result.artifacts["report.json"].read_text()))
    assert again == report

    # A latency target is judged on the INT8 model's time, not the pruned float one's.
    latency = _spec(prune={"target": {"latency_reduction": 0.5}})
    tables = {k: q.latency_ms[k] for k in ("original", "int8")}
    cpu = tables["original"]["CPUExecutionProvider"]["1"]
    for int8_ms, missed in ((0.5 * cpu.p50, False), (0.9 * cpu.p50, True)):
        timed = cpu.model_copy(update={"p50": int8_ms, "p90": int8_ms})
        tables["int8"] = {"CPUExecutionProvider": {"1": timed}}
        judged = pipeline._latency_of_int8(report, latency, tables)
        codes = [w.code for w in judged.warnings]
        assert ("latency_target_missed" in codes) is missed
        reached = judged.target["achieved_latency_reduction_int8"]
        assert reached == pytest.approx(1.0 - int8_ms / cpu.p50)


def test_with_a_dataset_accuracy_is_measured_on_the_int8_file(
    tiny_onnx: Path, tiny_npz: Path, tmp_path: Path
) -> None:
    spec = _spec(
        finetune={"epochs": 1, "batch_size": 16},
        quantize={"mode": "int8", "samples": 32, "calibration": "percentile"},
    )
    result = run_pipeline(tiny_onnx, spec, tmp_path / "out", dataset_path=tiny_npz)
    q = result.report.quantization
    assert q is not None and q.applied and q.calibration_data == "dataset" and q.samples == 32
    assert q.measured_on == "held-back accuracy"
    assert set(q.accuracy) == {"original", "pruned_fp32", "int8"}
    # The reported figure is the INT8 file's own accuracy on the held-back split.
    from worker.engine.train.data import load_dataset

    val = load_dataset(tiny_npz, SHAPE).val
    assert val is not None
    session = ort.InferenceSession(str(result.artifacts["model.onnx"]))
    (scores,) = session.run(None, {"image": val.tensors[0].numpy()})
    measured = float((scores.argmax(1) == val.tensors[1].numpy()).mean())
    assert q.accuracy["int8"] == pytest.approx(measured)
    assert q.drop == pytest.approx(q.accuracy["pruned_fp32"] - q.accuracy["int8"])
    assert not any("not measured on real data" in n for n in result.report.notes)


def test_default_spec_leaves_the_pipeline_unchanged(tiny_onnx: Path, tmp_path: Path) -> None:
    stages: list[str] = []
    spec = JobSpec.model_validate({"finetune": None, "benchmark": FAST_BENCH})
    result = run_pipeline(
        tiny_onnx, spec, tmp_path / "out", on_progress=lambda s, _: stages.append(s)
    )
    assert "quantizing" not in stages
    assert set(result.artifacts) == {"model.onnx", "model.pt2", "report.json"}
    assert "DequantizeLinear" not in _ops(result.artifacts["model.onnx"])
    assert result.report.quantization is None
    assert "quantization" not in json.loads(result.artifacts["report.json"].read_text()) or (
        json.loads(result.artifacts["report.json"].read_text())["quantization"] is None
    )


def test_when_onnxruntime_cannot_quantize_the_float_model_ships(
    tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Unsupported op: FancyConv")

    import onnxruntime.quantization

    monkeypatch.setattr(onnxruntime.quantization, "quantize_static", refuse)
    result = run_pipeline(tiny_onnx, _spec(), tmp_path / "out")
    assert set(result.artifacts) == {"model.onnx", "model.pt2", "report.json"}
    assert "DequantizeLinear" not in _ops(result.artifacts["model.onnx"])
    q = result.report.quantization
    assert q is not None and not q.applied and "FancyConv" in (q.reason or "")
    assert set(q.size_bytes) == {"original", "pruned_fp32"}
    assert any("INT8 was not applied" in n for n in result.report.notes)


def test_a_graph_with_nothing_to_quantize_stays_float(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    graph = helper.make_graph([helper.make_node("Exp", ["x"], ["y"], name="exp")], "g", [x], [y])
    path = tmp_path / "exp.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # the newest onnx stamps an IR version onnxruntime may not read yet
    onnx.save(model, str(path))
    feeds = [{"x": np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)}]
    outcome = quantize.quantize_int8(
        path,
        path,
        tmp_path / "int8.onnx",
        QuantizeSpec(mode="int8"),
        calibration=feeds,
        evalset=quantize.EvalSet(batches=feeds),
        synthetic=True,
        max_drop=None,
    )
    assert outcome.path is None and "no node it can quantize" in (outcome.reason or "")
    assert not (tmp_path / "int8.onnx").exists()


class Outlier(nn.Module):
    """conv1's first channel is a thousand times the others: uint8 activations quantized
    over its range round the other channels, which carry the prediction, to zero."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():
            self.conv1.weight[0] *= 1000
            self.conv1.bias[0] = 1000
            self.conv2.weight[:, 0] *= 1e-3
            self.fc.weight *= 50

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def outlier_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(Outlier(), tmp_path_factory.mktemp("outlier") / "outlier.onnx")


def _outlier_run(path: Path, out: Path, fallback: str, max_drop: float | None):
    rng = np.random.default_rng(0)
    batches = [{"x": rng.standard_normal((16, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    return quantize.quantize_int8(
        path,
        path,
        out,
        QuantizeSpec(mode="int8", fallback=fallback),  # type: ignore[arg-type]
        calibration=batches[:2],
        evalset=quantize.EvalSet(batches=batches[2:]),
        synthetic=True,
        max_drop=max_drop,
    )


def test_fallback_keeps_the_layers_int8_ruins_in_float(outlier_onnx: Path, tmp_path: Path) -> None:
    plain = _outlier_run(outlier_onnx, tmp_path / "plain.onnx", "none", None)
    assert plain.path is not None and plain.drop is not None and plain.drop > 0.5
    assert not plain.float_fallback and any("fallback 'none'" in n for n in plain.notes)

    fixed = _outlier_run(outlier_onnx, tmp_path / "fixed.onnx", "auto", None)
    assert fixed.path is not None and fixed.drop is not None and fixed.drop <= 0.01
    assert fixed.float_fallback and set(fixed.float_fallback) <= {"/conv1/Conv", "/conv2/Conv"}
    assert fixed.agreement["int8"] == pytest.approx(1.0)
    # The fallback layers run in float in the file; the others stay quantized.
    graph = onnx.load(str(fixed.path)).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    by_name = {n.name: n for n in graph.node}
    for name in fixed.float_fallback:
        assert not any(i in dequantized for i in by_name[name].input)
    assert fixed.nodes_quantized >= 1 and fixed.nodes_float >= len(fixed.float_fallback)
    assert any("left in float" in n for n in fixed.notes)


def test_a_budget_int8_cannot_meet_fails_typed(outlier_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(QuantizationFailed) as caught:
        _outlier_run(outlier_onnx, tmp_path / "int8.onnx", "none", 0.01)
    assert caught.value.code == "quantization_budget_unmet"
    # With the fallback, the same budget is met.
    met = _outlier_run(outlier_onnx, tmp_path / "int8.onnx", "auto", 0.01)
    assert met.path is not None and met.drop is not None and met.drop <= 0.01


class Head(nn.Module):
    """Two convolutions and a linear head without biases, so that inputs with different
    channel means get different classes; `noise` perturbs the head like a lossy pruning."""

    def __init__(self, noise: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8, 4, bias=False)
        torch.manual_seed(1)
        with torch.no_grad():
            self.fc.weight.add_(noise * torch.randn_like(self.fc.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(torch.relu(self.conv1(x))).mean(dim=(2, 3)))


def _export(module: nn.Module, path: Path) -> Path:
    torch.onnx.export(
        module.eval(),
        (torch.randn(1, 3, 16, 16),),
        str(path),
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        opset_version=17,
    )
    return path


def _budget_run(tmp_path: Path, noise: float, max_drop: float) -> quantize.QuantizeOutcome:
    """Head() as the original, Head(noise) as the pruned float model, quantized under a
    budget on held-back batches labeled with the original's predictions (accuracy 1)."""
    original = _export(Head(), tmp_path / "original.onnx")
    pruned = _export(Head(noise), tmp_path / "pruned.onnx")
    rng = np.random.default_rng(0)

    def batch() -> dict[str, np.ndarray]:
        x = 0.3 * rng.standard_normal((16, 3, 16, 16)) + rng.standard_normal((16, 3, 1, 1))
        return {"x": x.astype(np.float32)}

    calibration = [batch() for _ in range(2)]
    held_back = quantize.EvalSet(batches=[batch() for _ in range(4)])
    outputs = quantize.run_batches(original, held_back).outputs
    held_back.labels = np.concatenate([o[0].argmax(1) for o in outputs])
    return quantize.quantize_int8(
        pruned,
        original,
        tmp_path / "int8.onnx",
        QuantizeSpec(mode="int8"),
        calibration=calibration,
        evalset=held_back,
        synthetic=False,
        max_drop=max_drop,
    )


def test_with_a_budget_int8_is_judged_against_the_original(tmp_path: Path) -> None:
    outcome = _budget_run(tmp_path, noise=0.1, max_drop=0.3)
    assert outcome.path is not None and outcome.drop is not None
    assert outcome.measured_on == "held-back accuracy, against the original model"
    assert outcome.accuracy["original"] == 1.0 and outcome.accuracy["pruned_fp32"] < 1.0
    # The drop is the whole job's: the original's accuracy to the INT8 file's.
    assert outcome.drop == pytest.approx(outcome.accuracy["original"] - outcome.accuracy["int8"])
    assert outcome.drop <= 0.3
    assert any("one budget for pruning and INT8" in n for n in outcome.notes)


def test_a_budget_the_pruned_float_model_already_spent_fails_typed(tmp_path: Path) -> None:
    with pytest.raises(QuantizationFailed) as caught:
        _budget_run(tmp_path, noise=0.1, max_drop=0.05)
    assert caught.value.code == "quantization_budget_unmet"
    assert "against the original model" in caught.value.message
    assert "pruned float model alone loses" in caught.value.message


def test_budget_probes_are_measured_as_int8(
    tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each probe's history point carries the agreement of its INT8 file with the
    original, as onnxruntime measured them on the quantizing stage's samples."""
    measured: dict[str, list[quantize.Scores]] = {"original": [], "int8": []}
    run_batches = quantize.run_batches

    def spy(path: Path, evalset: quantize.EvalSet) -> quantize.Scores:
        scores = run_batches(path, evalset)
        if path.name == "probe-original.onnx":
            measured["original"].append(scores)
        elif path.parent.name.startswith("probe-"):
            measured["int8"].append(scores)
        return scores

    monkeypatch.setattr(quantize, "run_batches", spy)
    spec = _spec(
        prune={"target": {"macs_reduction": 0.5}},
        accuracy_budget={"max_drop": 0.2, "probes": 2},
    )
    report = run_pipeline(tiny_onnx, spec, tmp_path / "out").report
    (original,) = measured["original"]
    probes = report.history[:-1]
    assert len(probes) == len(measured["int8"]) >= 1
    for point, scores in zip(probes, measured["int8"], strict=True):
        assert point.agreement == pytest.approx(quantize.agreement(original, scores))
    assert any("measured as INT8" in n for n in report.notes)
    q = report.quantization
    assert q is not None and q.measured_on == "agreement with the original model"
    assert q.drop is not None and q.drop <= 0.2


def test_a_probe_onnxruntime_cannot_quantize_is_measured_in_float(
    tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Unsupported op: FancyConv")

    monkeypatch.setattr(quantize, "quantize_plain", refuse)
    spec = _spec(
        prune={"target": {"macs_reduction": 0.5}},
        accuracy_budget={"max_drop": 0.2, "probes": 2},
    )
    report = run_pipeline(tiny_onnx, spec, tmp_path / "out").report
    assert any("could not quantize probe 1" in n and "FancyConv" in n for n in report.notes)
    assert not any("measured as INT8" in n for n in report.notes)
    assert all(p.agreement is not None for p in report.history)


def test_pruning_aims_at_the_float_latency_int8_turns_into_the_goal() -> None:
    # INT8 at half the float time: 80% less time needs the float model at 40% of it.
    assert pipeline.pruning_goal(0.2, 0.5) == pytest.approx(0.4)
    # INT8 alone (or within the search's slack) reaches the goal: nothing to aim at.
    assert pipeline.pruning_goal(0.5, 0.5) is None
    assert pipeline.pruning_goal(0.49, 0.5) is None
    assert pipeline.pruning_goal(0.47, 0.5) == pytest.approx(0.94)
    # INT8 slower than float (a CPU without fast int8 kernels): pruning must do more.
    assert pipeline.pruning_goal(0.5, 1.25) == pytest.approx(0.4)


def _aim(monkeypatch: pytest.MonkeyPatch, speed: object) -> tuple[JobSpec, SimpleNamespace]:
    """`_aim_before_int8` for a 60%-less-time target with INT8 measured at `speed`."""

    def measured(*args: object) -> float:
        if isinstance(speed, Exception):
            raise speed
        return float(speed)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline, "_int8_speed", measured)
    state = SimpleNamespace(notes=[], target_figures={})
    spec = _spec(prune={"target": {"latency_reduction": 0.6}})
    return pipeline._aim_before_int8(state, spec, "cpu", Path()), state  # type: ignore[arg-type]


def test_a_latency_target_with_int8_prunes_for_what_int8_leaves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    aimed, state = _aim(monkeypatch, 0.5)
    assert aimed.prune.target.latency_reduction == pytest.approx(0.2)
    assert state.target_figures == {
        "int8_latency_ratio": 0.5,
        "latency_float_goal_ratio": pytest.approx(0.8),
    }
    assert any("pruning aims at 0.80x" in n for n in state.notes)

    aimed, state = _aim(monkeypatch, 0.4)
    assert aimed.prune.target.latency_reduction == pytest.approx(1.0 - pipeline.INT8_ALONE)
    assert any("INT8 alone" in n for n in state.notes)

    aimed, state = _aim(monkeypatch, RuntimeError("no int8 kernels"))
    assert aimed.prune.target.latency_reduction == pytest.approx(0.6)
    assert any("could not be measured" in n for n in state.notes)


def _reaim(
    monkeypatch: pytest.MonkeyPatch, times: object, first_aim: float = 0.6
) -> tuple[object, SimpleNamespace]:
    """`_reaim_after_int8` for an 80%-less-time goal, first aimed at `first_aim` less time
    in float, with the original, the pruned float model and its INT8 file timed at
    `times` ms."""

    def measured(*args: object) -> dict[str, float]:
        if isinstance(times, Exception):
            raise times
        return times  # type: ignore[return-value]

    monkeypatch.setattr(pipeline, "_int8_times", measured)
    state = SimpleNamespace(notes=[], target_figures={}, loaded=SimpleNamespace(module=None))
    goal = _spec(prune={"target": {"latency_reduction": 0.8}})
    aimed = goal.prune.model_copy(update={"target": Target(latency_reduction=first_aim)})
    again = pipeline._reaim_after_int8(state, goal, aimed, "cpu", Path())  # type: ignore[arg-type]
    return again, state


def test_a_first_aim_int8_misses_is_aimed_again_through_the_pruned_models_int8(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Aimed at 0.4x in float through the original's INT8 factor (0.5); the pruned model
    # gains less from INT8 (0.65x its float time), so the INT8 file lands at 0.26x.
    again, state = _reaim(monkeypatch, {"original": 10.0, "pruned": 4.0, "int8": 2.6})
    assert again is not None
    # Aimed again through the pruned model's own factor: the float model at 0.2 / 0.65.
    assert again.target.latency_reduction == pytest.approx(1 - 0.2 / 0.65)  # type: ignore[attr-defined]
    assert state.target_figures["latency_int8_first_aim_ratio"] == pytest.approx(0.26)
    assert any("again, aiming at 0.308x" in n for n in state.notes), state.notes
    # Within half the report's band of the goal: the first aim stands.
    again, state = _reaim(monkeypatch, {"original": 10.0, "pruned": 4.0, "int8": 2.04})
    assert again is None and not state.notes
    # INT8 alone overshoots: the corrected aim is the mildest pruning, the one just done.
    again, state = _reaim(monkeypatch, {"original": 10.0, "pruned": 5.0, "int8": 1.0}, 0.03)
    assert again is None and not state.notes
    # The INT8 file cannot be timed: the first aim stands, and the note says why.
    again, state = _reaim(monkeypatch, RuntimeError("no int8 kernels"))
    assert again is None
    assert any("could not be timed" in n for n in state.notes)


def test_one_budget_bounds_the_int8_model_against_the_original(
    tiny_onnx: Path, tiny_npz: Path, tmp_path: Path
) -> None:
    spec = _spec(
        prune={"target": {"macs_reduction": 0.5}},
        accuracy_budget={"max_drop": 0.1, "probes": 2},
        quantize={"mode": "int8", "samples": 32},
    )
    result = run_pipeline(tiny_onnx, spec, tmp_path / "out", dataset_path=tiny_npz)
    q = result.report.quantization
    assert q is not None and q.applied and q.drop is not None
    assert q.measured_on == "held-back accuracy, against the original model"
    # The budget's drop is the INT8 file's from the original, not from the pruned float.
    assert q.drop == pytest.approx(q.accuracy["original"] - q.accuracy["int8"])
    assert q.drop <= 0.1
    assert all(p.accuracy is not None for p in result.report.history)
