"""Engine benchmarks, measured side by side in one run (not a test: it prints figures).

1. speed-up efficiency: torchvision models (random weights) pruned data-free to 50% fewer
   MACs; onnxruntime CPU speed-up ÷ MACs ratio, ours beside plain uniform pruning
   (layerwise, round_to=1), all three files timed interleaved.
2. accuracy: a small ResNet trained on scikit-learn's digits, pruned to 75% fewer MACs
   and fine-tuned 5 epochs by the pipeline, beside plain torch-pruning magnitude pruning
   plus 5 epochs of cross-entropy fine-tuning; test-set accuracy.
3. time: resnet50 ONNX, data-free prune + export + verify + benchmark, wall time.

    python bench/engine.py                 # everything
    python bench/engine.py --quick         # resnet18 + mobilenet_v2, fewer iterations
    python bench/engine.py --models resnet50 --sections speedup,time
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    SmallResNet,
    accuracy_onnx,
    accuracy_torch,
    digits,
    export_onnx_file,
    plain_magnitude_prune,
    train,
)

from contract import BenchmarkSpec, FinetuneSpec, JobSpec, PruneSpec, Target  # noqa: E402
from worker.engine.measure import benchmark  # noqa: E402
from worker.engine.pipeline import PipelineResult, run_pipeline  # noqa: E402
from worker.engine.train.data import load_dataset  # noqa: E402

ALL_MODELS = ["resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0"]
QUICK_MODELS = ["resnet18", "mobilenet_v2"]
SHAPE = (1, 3, 224, 224)


def _data_free_spec(macs_reduction: float, *, uniform: bool, iterations: int) -> JobSpec:
    prune = PruneSpec(
        target=Target(macs_reduction=macs_reduction),
        scope="layerwise" if uniform else "global",
        round_to=1 if uniform else None,
    )
    bench = BenchmarkSpec(providers=["cpu"], warmup=3, iterations=iterations)
    return JobSpec(prune=prune, finetune=None, benchmark=bench)


def _pipeline(model: Path, spec: JobSpec, out: Path, **kwargs) -> tuple[PipelineResult, float]:
    start = time.perf_counter()
    result = run_pipeline(model, spec, out, **kwargs)
    return result, time.perf_counter() - start


def speedup(models: list[str], work: Path, iterations: int, threads: int) -> dict[str, float]:
    """Section 1; returns the wall time of each model's pipeline run (for section 3)."""
    print("\n== 1. speed-up efficiency: data-free, 50% fewer MACs, CPU, batch 1 ==")
    print(
        f"{'model':<16}{'variant':<10}{'MACs ratio':>11}{'p50 ms':>10}{'speed-up':>10}"
        f"{'efficiency':>12}"
    )
    efficiency: dict[str, list[float]] = {"ours": [], "uniform": []}
    walls: dict[str, float] = {}
    for name in models:
        src = export_onnx_file(
            getattr(torchvision.models, name)(weights=None), work / f"{name}.onnx", SHAPE
        )
        ours, walls[name] = _pipeline(
            src, _data_free_spec(0.5, uniform=False, iterations=5), work / f"{name}-ours"
        )
        uniform, _ = _pipeline(
            src, _data_free_spec(0.5, uniform=True, iterations=5), work / f"{name}-uniform"
        )
        files = {
            "original": ours.original_onnx,
            "ours": ours.artifacts["model.onnx"],
            "uniform": uniform.artifacts["model.onnx"],
        }
        spec = BenchmarkSpec(providers=["cpu"], warmup=5, iterations=iterations)
        tables = benchmark.benchmark_onnx(files, {"input": SHAPE}, spec, threads=threads)
        p50 = {k: t["CPUExecutionProvider"]["1"].p50 for k, t in tables.items()}
        print(f"{name:<16}{'original':<10}{1.0:>11.2f}{p50['original']:>10.2f}")
        for variant, result in (("ours", ours), ("uniform", uniform)):
            macs_ratio = result.report.ratios.macs
            gain = p50["original"] / p50[variant]
            efficiency[variant].append(gain / macs_ratio)
            print(
                f"{'':<16}{variant:<10}{macs_ratio:>11.2f}{p50[variant]:>10.2f}"
                f"{gain:>10.2f}{gain / macs_ratio:>12.2f}"
            )
    for variant, values in efficiency.items():
        print(
            f"median speed-up ÷ MACs ratio, {variant}: {statistics.median(values):.2f}"
            + ("  (target >= 0.90)" if variant == "ours" else "  (reference)")
        )
    return walls


def accuracy(work: Path, epochs_original: int) -> None:
    """Section 2."""
    print("\n== 2. accuracy: digits 16x16, 75% fewer MACs, 5 fine-tuning epochs ==")
    torch.manual_seed(0)
    x_tr, y_tr, x_te, y_te = digits(size=16)
    original = train(SmallResNet(width=16), x_tr, y_tr, epochs=epochs_original, seed=0)
    src = export_onnx_file(original, work / "digits.onnx", (1, *x_tr.shape[1:]))
    npz = work / "digits-train.npz"
    np.savez(npz, x=x_tr, y=y_tr)

    spec = JobSpec(
        prune=PruneSpec(target=Target(macs_reduction=0.75)),
        finetune=FinetuneSpec(epochs=5),
        benchmark=BenchmarkSpec(providers=["cpu"], warmup=2, iterations=20),
    )
    ours, wall = _pipeline(src, spec, work / "digits-ours", dataset_path=npz)

    # The baseline fine-tunes on exactly the samples the pipeline trains on (its split
    # holds some back for validation), so only the method differs.
    split = load_dataset(npz, (1, *x_tr.shape[1:])).train.tensors
    torch.manual_seed(0)
    example = torch.from_numpy(x_tr[:1])
    baseline, reached = plain_magnitude_prune(original, example, 0.75)
    train(baseline, split[0].numpy(), split[1].numpy(), epochs=5, lr=0.01, seed=0)

    acc_original = accuracy_torch(original, x_te, y_te)
    acc_ours = accuracy_onnx(ours.artifacts["model.onnx"], x_te, y_te)
    acc_base = accuracy_torch(baseline, x_te, y_te)
    achieved = 1 - ours.report.pruned.macs / ours.report.original.macs
    print(
        f"test samples: {len(y_te)}, training samples: {len(y_tr)} for the original, "
        f"{len(split[0])} for fine-tuning (both methods)"
    )
    print(f"original                         test accuracy {100 * acc_original:6.2f}%")
    print(
        f"ours (pipeline, MACs -{achieved:.1%})     test accuracy {100 * acc_ours:6.2f}%"
        f"   ({wall:.0f} s)"
    )
    print(f"plain magnitude (MACs -{reached:.1%})   test accuracy {100 * acc_base:6.2f}%")
    print(
        f"ours - baseline: {100 * (acc_ours - acc_base):+.2f} points (target >= 0); "
        f"ours - original: {100 * (acc_ours - acc_original):+.2f} points (target >= -1)"
    )


def wall_time(work: Path, walls: dict[str, float]) -> None:
    """Section 3."""
    print("\n== 3. time: resnet50, data-free prune + export + verify + benchmark ==")
    if "resnet50" not in walls:
        src = export_onnx_file(torchvision.models.resnet50(weights=None), work / "r50.onnx", SHAPE)
        _, walls["resnet50"] = _pipeline(
            src, _data_free_spec(0.5, uniform=False, iterations=5), work / "r50"
        )
    print(f"resnet50 pipeline wall time: {walls['resnet50']:.1f} s (target <= 60 s)")


def _machine(threads: int) -> None:
    env = benchmark.environment("cpu", ["CPUExecutionProvider"], threads=threads)
    cores = os.cpu_count()
    print(
        f"machine: {env.cpu}, {cores} cores, provider CPUExecutionProvider, "
        f"{env.threads} intra-op threads"
    )
    print(
        f"versions: torch {env.torch}, onnxruntime {env.onnxruntime}, onnx {env.onnx}, "
        f"torch-pruning {env.torch_pruning}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two models, fewer iterations")
    parser.add_argument("--models", help=f"comma-separated subset of {','.join(ALL_MODELS)}")
    parser.add_argument("--sections", default="speedup,accuracy,time")
    parser.add_argument("--iterations", type=int, default=None, help="timed runs per model")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads")
    args = parser.parse_args()

    models = args.models.split(",") if args.models else QUICK_MODELS if args.quick else ALL_MODELS
    iterations = args.iterations or (20 if args.quick else 50)
    threads = args.threads or benchmark.default_threads()
    sections = set(args.sections.split(","))
    torch.set_num_threads(threads)
    _machine(threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="secateurs-bench-") as tmp:
        work = Path(tmp)
        walls = speedup(models, work, iterations, threads) if "speedup" in sections else {}
        if "accuracy" in sections:
            accuracy(work, epochs_original=8 if args.quick else 12)
        if "time" in sections:
            wall_time(work, walls)
    print(f"\ntotal: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
