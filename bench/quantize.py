"""Prune, then INT8: a torchvision model (random weights) pruned data-free to 50% fewer
MACs and quantized to INT8 by `run_pipeline`; prints the report's three models side by
side (original, pruned float, INT8), timed interleaved by the pipeline's benchmark in one
run. Not a test: it prints figures.

    python bench/quantize.py                       # resnet18
    python bench/quantize.py --model mobilenet_v2 --iterations 200
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contract import JobSpec  # noqa: E402
from worker.engine.benchmark import default_threads  # noqa: E402
from worker.engine.pipeline import run_pipeline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--macs", type=float, default=0.5)
    parser.add_argument("--iterations", type=int, default=100)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{args.model}.onnx"
        net = getattr(torchvision.models, args.model)().eval()
        torch.onnx.export(net, (torch.randn(1, 3, 224, 224),), str(path), dynamo=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        spec = JobSpec.model_validate({
            "prune": {"target": {"macs_reduction": args.macs}},
            "quantize": {"mode": "int8"},
            "benchmark": {"providers": ["cpu"], "warmup": 10, "iterations": args.iterations},
        })
        start = time.perf_counter()
        report = run_pipeline(path, spec, Path(tmp) / "out").report
        took = time.perf_counter() - start
    q = report.quantization
    assert q is not None
    print(f"{args.model}: data-free, {args.macs:.0%} fewer MACs, then INT8 "
          f"({q.calibration}, {q.samples} synthetic samples); pipeline {took:.0f} s")
    print(f"onnxruntime CPU, {default_threads()} threads, batch 1, "
          f"{args.iterations} interleaved iterations; cpu: {report.environment.cpu}")
    base = None
    for key in ("original", "pruned_fp32", "int8"):
        if key not in q.latency_ms:
            print(f"  {key:12s} not timed ({q.reason})")
            continue
        p50 = q.latency_ms[key]["CPUExecutionProvider"]["1"].p50
        base = base or p50
        print(f"  {key:12s} {q.size_bytes[key] / 1e6:7.2f} MB  p50 {p50:7.2f} ms  "
              f"speed-up {base / p50:4.2f}x  agreement {q.agreement.get(key, 1.0):.3f}")
    print(f"  INT8: {q.nodes_quantized} nodes quantized, {q.nodes_float} float, "
          f"fallback {q.float_fallback or 'none'}; drop {q.drop}")


if __name__ == "__main__":
    main()
