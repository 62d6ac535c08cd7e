"""Prune, then INT8, side by side in one run: quantize-only, prune-only, prune+quantize.

Two parts, each a benchmark that prints figures (not a test):

- torchvision models (random weights), data-free: each pruned to `--macs` fewer MACs (or
  to `--latency` less time, measured by the pipeline on the INT8 model it ships) and
  quantized to INT8 by `run_pipeline`, as a job does. The original, the original
  quantized alone (same calibration), the pruned float model and the pruned INT8 model
  are then timed by the engine's benchmark in alternating turns in one session, and
  compared on the same seeded inputs (top-1 agreement with the original).
- trained models (`--trained digits,seq`): the digits ResNet and the Conv1d sequence net
  of `bench/budget.py`, pruned under a 1-point accuracy budget with INT8 on; accuracy of
  the final INT8 file on held-back and test samples, and its size against the original.
  `keras` adds the Keras CNN of `bench/keras_digits.py` (tf2onnx, NHWC), trained by
  TensorFlow in a virtualenv of its own (`--tf-python`).

    python bench/quantize.py        # resnet18, resnet50, mobilenet_v2, efficientnet_b0
    python bench/quantize.py --models resnet18 --latency 0.8
    python bench/quantize.py --models none --trained digits,seq
    python bench/quantize.py --models none --trained keras --tf-python tfenv/bin/python
"""

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import accuracy_onnx, describe_machine  # noqa: E402

from contract import (  # noqa: E402
    AccuracyBudget,
    BenchmarkSpec,
    FinetuneSpec,
    JobSpec,
    PruneSpec,
    QuantizeSpec,
    Target,
)
from worker.engine.load.loaders import load_model  # noqa: E402
from worker.engine.measure.benchmark import benchmark_onnx, default_threads  # noqa: E402
from worker.engine.pipeline import run_pipeline  # noqa: E402
from worker.engine.ship.quantize import (  # noqa: E402
    agreement,
    quantize_plain,
    run_batches,
    stage_data,
)

DEFAULT_MODELS = "resnet18,resnet50,mobilenet_v2,efficientnet_b0"
# What the issue asks of original ÷ final (prune 0.5 + INT8) on this CPU.
SPEED_UP_GOAL = {"resnet18": 5.0, "resnet50": 5.0, "mobilenet_v2": 2.5}
SIZE_GOAL = 10.0  # trained models: the final file this many times smaller


@dataclass
class Variant:
    label: str
    path: Path


def _export(name: str, path: Path) -> Path:
    torch.manual_seed(0)
    net = getattr(torchvision.models, name)().eval()
    torch.onnx.export(
        net,
        (torch.randn(1, 3, 224, 224),),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    return path


def _target(args: argparse.Namespace) -> Target:
    if args.latency is not None:
        return Target(latency_reduction=args.latency)
    return Target(macs_reduction=args.macs)


def _quantize_only(original: Path, work: Path, spec: QuantizeSpec) -> Path:
    """The original quantized as the stage would, calibrated on the same synthetic inputs."""
    calibration, _, _ = stage_data(load_model(original), None, spec)
    work.mkdir()
    return quantize_plain(original, work, spec, calibration)


def run_torchvision(name: str, args: argparse.Namespace, work: Path) -> None:
    original = _export(name, work / f"{name}.onnx")
    spec = JobSpec(
        prune=PruneSpec(target=_target(args)),
        quantize=QuantizeSpec(mode="int8"),
        benchmark=BenchmarkSpec(providers=["cpu"], warmup=3, iterations=20),
    )
    start = time.perf_counter()
    result = run_pipeline(original, spec, work / "out")
    took = time.perf_counter() - start
    report = result.report
    q = report.quantization
    assert q is not None
    variants = [
        Variant("original", original),
        Variant("INT8 only", _quantize_only(original, work / "q-only", spec.quantize)),
        Variant("pruned", result.artifacts.get("model.fp32.onnx", result.artifacts["model.onnx"])),
    ]
    if q.applied:
        variants.append(Variant("pruned+INT8", result.artifacts["model.onnx"]))
    timed = benchmark_onnx(
        {v.label: v.path for v in variants},
        {"input": [1, 3, 224, 224]},
        BenchmarkSpec(providers=["cpu"], warmup=10, iterations=args.iterations),
    )
    _, evalset, _ = stage_data(load_model(original), None, spec.quantize)
    reference = run_batches(original, evalset)
    print(
        f"\n{name}: {_describe(spec.prune.target)}, then INT8 ({q.calibration}, {q.samples} "
        f"synthetic samples); pipeline {took:.0f} s; MACs {report.ratios.macs:.2f}x fewer; "
        f"INT8 {q.nodes_quantized} nodes quantized, {q.nodes_float} float"
    )
    print(f"  {'model':<12} {'MB':>7} {'p50 ms':>8} {'p90 ms':>8} {'speed-up':>9} {'agree':>6}")
    base = timed["original"]["CPUExecutionProvider"]["1"].p50
    for v in variants:
        cell = timed[v.label]["CPUExecutionProvider"]["1"]
        agree = agreement(reference, run_batches(v.path, evalset))
        print(
            f"  {v.label:<12} {v.path.stat().st_size / 1e6:7.2f} {cell.p50:8.2f} "
            f"{cell.p90:8.2f} {base / cell.p50:8.2f}x {agree:6.3f}"
        )
    for note in report.notes:
        if note.startswith("latency target"):
            print(f"  note: {note}")
    if not q.applied:
        print(f"  the job shipped the pruned float model: {q.reason}")
        return
    final = base / timed["pruned+INT8"]["CPUExecutionProvider"]["1"].p50
    if args.latency is not None:
        reached = 1 - 1 / final
        print(
            f"  latency target {args.latency:.2f}: reached {reached:.3f} "
            f"({final:.2f}x; time {100 * (1 - reached) / (1 - args.latency) - 100:+.1f}% "
            f"against the target's); the pipeline's own reading: {_pipeline_reading(q)}"
        )
    elif name in SPEED_UP_GOAL:
        goal = SPEED_UP_GOAL[name]
        verdict = "met" if final >= goal else "NOT met"
        print(f"  goal original ÷ final >= {goal}x: {final:.2f}x, {verdict}")


def _pipeline_reading(q) -> str:  # noqa: ANN001 - the report's Quantization section
    """1 - INT8 p50 / original p50 as the pipeline's own benchmark timed them."""
    try:
        p50 = {k: q.latency_ms[k]["CPUExecutionProvider"]["1"].p50 for k in ("original", "int8")}
    except KeyError:
        return "not timed"
    return f"{1 - p50['int8'] / p50['original']:.3f}"


def _describe(target: Target) -> str:
    if target.latency_reduction is not None:
        return f"{target.latency_reduction:.0%} less time (measured on the INT8 model)"
    return f"{target.macs_reduction:.0%} fewer MACs, data-free"


def _keras_task(work: Path, args: argparse.Namespace):  # noqa: ANN202 - budget.Task
    """The Keras CNN of bench/keras_digits.py (tf2onnx, NHWC input) as a trained task:
    TensorFlow trains it on the digits' training samples in its own virtualenv."""
    import numpy as np
    from _common import digits
    from budget import Task
    from keras_digits import SIZE, build_keras_onnx

    from worker.engine.train.data import load_dataset

    x_tr, y_tr, x_te, y_te = digits(size=SIZE, seed=0)
    np.savez(work / "digits.npz", x_tr=x_tr, y_tr=y_tr, x_te=x_te, y_te=y_te)
    onnx = build_keras_onnx(work, args.tf_python, epochs=args.epochs_keras, seed=0)
    nhwc = lambda a: np.ascontiguousarray(np.moveaxis(a, 1, -1))  # noqa: E731
    npz = work / "keras-train.npz"
    np.savez(npz, x=nhwc(x_tr), y=y_tr)
    splits = load_dataset(npz, (1, SIZE, SIZE, 1))
    assert splits.val is not None
    train = tuple(t.numpy() for t in splits.train.tensors)
    val = tuple(t.numpy() for t in splits.val.tensors)
    test = (nhwc(x_te), y_te)
    return Task(
        "keras (tf2onnx)", None, onnx, npz, train, val, test,
        reference=accuracy_onnx(onnx, *val), test_reference=accuracy_onnx(onnx, *test),
    )  # fmt: skip


def run_trained(name: str, args: argparse.Namespace, work: Path) -> None:
    """A trained task of bench/budget.py under a 1-point budget with INT8 on."""
    from budget import make_task

    if name == "keras":
        task = _keras_task(work, args)
    else:
        task = make_task(name, work, epochs=args.epochs_original)
    spec = JobSpec(
        prune=PruneSpec(method="l2", scope="sensitivity", target=Target(macs_reduction=0.98)),
        accuracy_budget=AccuracyBudget(max_drop=args.max_drop, probes=6),
        finetune=FinetuneSpec(epochs=8, lr=0.01),
        quantize=QuantizeSpec(mode="int8"),
        benchmark=BenchmarkSpec(providers=["cpu"], warmup=3, iterations=20),
    )
    start = time.perf_counter()
    result = run_pipeline(task.onnx, spec, work / f"{name}-out", dataset_path=task.npz)
    took = time.perf_counter() - start
    q = result.report.quantization
    assert q is not None
    quantize_alone = _quantize_only(task.onnx, work / f"{name}-q-only", spec.quantize)
    rows = [
        ("original", task.onnx),
        ("INT8 only", quantize_alone),
        ("pruned", result.artifacts.get("model.fp32.onnx", result.artifacts["model.onnx"])),
        ("pruned+INT8" if q.applied else "final (float)", result.artifacts["model.onnx"]),
    ]
    size = task.onnx.stat().st_size
    print(
        f"\n{task.name}: budget {args.max_drop:.0%} drop, "
        f"INT8 {'applied' if q.applied else 'not applied: ' + str(q.reason)}; "
        f"pipeline {took:.0f} s; {len(task.val[1])} held-back, {len(task.test[1])} test samples"
    )
    print(f"  {'model':<13} {'KB':>8} {'smaller':>8} {'held %':>7} {'test %':>7}")
    for label, path in rows:
        held = accuracy_onnx(path, *task.val)
        test = accuracy_onnx(path, *task.test)
        print(
            f"  {label:<13} {path.stat().st_size / 1e3:8.1f} {size / path.stat().st_size:7.1f}x "
            f"{100 * held:7.2f} {100 * test:7.2f}"
        )
    final = result.artifacts["model.onnx"]
    drop = task.reference - accuracy_onnx(final, *task.val)
    smaller = size / final.stat().st_size
    print(
        f"  goal: drop <= {100 * args.max_drop:.0f} point(s) on held-back data and >= "
        f"{SIZE_GOAL:.0f}x smaller: drop {100 * drop:+.2f}, {smaller:.1f}x, "
        f"{'met' if drop <= args.max_drop + 1e-9 and smaller >= SIZE_GOAL else 'NOT met'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS, help="torchvision names, or none")
    parser.add_argument("--macs", type=float, default=0.5)
    parser.add_argument("--latency", type=float, help="a latency_reduction target instead")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--trained", default="", help="trained tasks: digits,seq,keras")
    parser.add_argument("--tf-python", help="interpreter with tensorflow and tf2onnx (keras)")
    parser.add_argument("--epochs-keras", type=int, default=40)
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--epochs-original", type=int, default=10)
    args = parser.parse_args()
    print(describe_machine(default_threads()) + "; onnxruntime CPU, batch 1")
    models = [m for m in args.models.split(",") if m and m != "none"]
    trained = [t for t in args.trained.split(",") if t]
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            work = Path(tmp) / name
            work.mkdir()
            run_torchvision(name, args, work)
        for name in trained:
            work = Path(tmp) / f"trained-{name}"
            work.mkdir()
            run_trained(name, args, work)


if __name__ == "__main__":
    main()
