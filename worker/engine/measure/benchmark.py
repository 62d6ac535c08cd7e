"""Latency of ONNX models with onnxruntime, measured side by side in one process.

Models compared are timed interleaved, in short turns (A A A A B B B B ...) after a
warm-up, so that a noisy, shared machine slows both alike and their ratio holds even when
absolute times drift. Each turn starts with one untimed call: the first call after a
switch finds the caches full of the other model and its threads asleep, which no
deployed model sees, and it costs a small, fast model proportionally more. Timed one call
at a time (A B A B), a pruned mobilenet_v3_small measured 0.57 and 0.48 of its
original's time where back-to-back runs gave 0.48 and 0.43; with the untimed call and
four timed ones per turn, 0.50 and 0.43.
Idle onnxruntime threads are told not to spin: spinning threads of one session steal the
cores from the other and make the comparison meaningless.
"""

import importlib.metadata
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from contract import BenchmarkSpec, Environment, Percentiles
from contract.report import P99_MIN_SAMPLES, LatencyTable
from worker.engine.errors import EngineError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

# batch size -> {input name: array}
FeedsFn = Callable[[int], dict[str, np.ndarray]]
# {input name: concrete shape (batch first)}; the batch dimension is replaced per run.
InputShapes = Mapping[str, Sequence[int]]


def default_threads() -> int:
    """Intra-op threads used when the caller fixes none: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _cuda_device_id(device: str) -> int:
    _, _, index = device.partition(":")
    return int(index) if index.isdigit() else 0


def resolve_providers(requested: Sequence[str], device: str) -> list[str]:
    """onnxruntime providers to time, in order: CUDA first when wanted and usable, CPU always.

    "auto" means CUDA when the job runs on a CUDA device and onnxruntime has the CUDA
    provider; an explicit "cuda" asks for it whatever the job's device.
    """
    available = ort.get_available_providers()
    wants_cuda = any(p in ("cuda", CUDA) for p in requested) or (
        "auto" in requested and device.startswith("cuda")
    )
    providers = [CUDA] if wants_cuda and CUDA in available and _cuda_usable() else []
    return [*providers, CPU]


def _cuda_usable() -> bool:
    # onnxruntime-gpu lists the CUDA provider even on machines without a GPU.
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def session_options(threads: int) -> ort.SessionOptions:
    """Options for a timed session: fixed threads, no spinning, all graph optimisations."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


# Timed calls in one turn of a model, after the untimed call that re-warms it.
CALLS_PER_TURN = 4


def interleaved_timings(
    runners: Mapping[str, Callable[[], object]], *, warmup: int, iterations: int
) -> dict[str, list[float]]:
    """Call the runners in turns (A A A A B B B B ...), warm-up rounds first; each turn
    one untimed call, then up to CALLS_PER_TURN timed ones. Seconds per timed call,
    `iterations` of them per runner."""
    for _ in range(warmup):
        for run in runners.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(math.ceil(iterations / CALLS_PER_TURN)):
        for name, run in runners.items():
            run()  # re-warms what the other models' turns evicted
            for _ in range(min(CALLS_PER_TURN, iterations - len(times[name]))):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    return times


def percentiles_ms(seconds: Sequence[float]) -> Percentiles:
    """p50/p90 of durations given in seconds, in milliseconds, and p99 from enough runs
    (P99_MIN_SAMPLES), with the number of runs they are of."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return Percentiles(
        p50=float(p50),
        p90=float(p90),
        p99=float(p99) if len(ms) >= P99_MIN_SAMPLES else None,
        samples=len(ms),
    )


def feeds_from_shapes(shapes: InputShapes, seed: int = 0) -> FeedsFn:
    """A feeds function giving seeded standard-normal float32 inputs of the given shapes."""

    def make(batch: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {
            name: rng.standard_normal((batch, *shape[1:])).astype(np.float32)
            for name, shape in shapes.items()
        }

    return make


def _open_session(path: Path, provider: str, device: str, threads: int) -> ort.InferenceSession:
    if provider == CUDA:
        providers: list = [(CUDA, {"device_id": _cuda_device_id(device)}), CPU]
    else:
        providers = [CPU]
    try:
        session = ort.InferenceSession(
            str(path), sess_options=session_options(threads), providers=providers
        )
    except Exception as exc:  # onnxruntime raises its own, untyped, errors
        raise EngineError(
            f"onnxruntime cannot open {path.name}: {exc}", "benchmark_failed"
        ) from exc
    if session.get_providers()[0] != provider:
        raise EngineError(f"{provider} is not usable for {path.name}", "benchmark_failed")
    return session


def _runner(
    session: ort.InferenceSession, feeds: dict[str, np.ndarray], provider: str, device: str
) -> Callable[[], object]:
    if provider != CUDA:
        return lambda: session.run(None, feeds)
    # On the GPU, inputs and outputs stay on the device: the time is the model's, not PCIe's.
    binding = session.io_binding()
    device_id = _cuda_device_id(device)
    for name, array in feeds.items():
        binding.bind_ortvalue_input(
            name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", device_id)
        )
    for out in session.get_outputs():
        binding.bind_output(out.name, "cuda", device_id)
    return lambda: session.run_with_iobinding(binding)


def benchmark_onnx(
    models: Mapping[str, Path],
    input_feeds: FeedsFn | InputShapes,
    spec: BenchmarkSpec,
    *,
    device: str = "cpu",
    threads: int | None = None,
) -> dict[str, LatencyTable]:
    """Time every model on every provider and batch size, interleaved; name -> LatencyTable.

    `input_feeds` is either a function of the batch size returning the feeds, or the
    input shapes (seeded random inputs are made). All models must take the same inputs.
    """
    feeds_fn = input_feeds if callable(input_feeds) else feeds_from_shapes(input_feeds)
    threads = threads or default_threads()
    tables: dict[str, LatencyTable] = {name: {} for name in models}
    for provider in resolve_providers(spec.providers, device):
        for batch in spec.batch_sizes:
            feeds = feeds_fn(batch)
            runners = {
                name: _runner(
                    _open_session(path, provider, device, threads), feeds, provider, device
                )
                for name, path in models.items()
            }
            times = interleaved_timings(runners, warmup=spec.warmup, iterations=spec.iterations)
            for name, seconds in times.items():
                tables[name].setdefault(provider, {})[str(batch)] = percentiles_ms(seconds)
    return tables


def median_ms(
    models: Mapping[str, Path],
    feeds: dict[str, np.ndarray],
    provider: str,
    *,
    device: str = "cpu",
    threads: int | None = None,
    seconds: float = 3.0,
) -> dict[str, float]:
    """Median milliseconds per model on one provider, timed interleaved for about `seconds`."""
    threads = threads or default_threads()
    runners = {
        name: _runner(_open_session(path, provider, device, threads), feeds, provider, device)
        for name, path in models.items()
    }
    start = time.perf_counter()
    for run in runners.values():  # one untimed round sizes the run
        run()
    round_s = max(time.perf_counter() - start, 1e-6)
    # Fast models get as many calls as fit in `seconds`: a cap of a few dozen timed a
    # 2 ms network for a quarter of a second, and its ratio moved by ±5% between runs.
    # Of every CALLS_PER_TURN + 1 calls, one is the untimed re-warming one.
    timed_share = CALLS_PER_TURN / (CALLS_PER_TURN + 1)
    iterations = int(min(5000, max(15, seconds / round_s * timed_share)))
    times = interleaved_timings(runners, warmup=3, iterations=iterations)
    return {name: float(np.median(t) * 1000.0) for name, t in times.items()}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def describe_device(device: str) -> str:
    """ "cpu", or "cuda:N <card name>" so that a GPU time never appears without its card."""
    if not device.startswith("cuda"):
        return "cpu"
    import torch

    index = _cuda_device_id(device)
    if not torch.cuda.is_available():
        return f"cuda:{index}"
    return f"cuda:{index} {torch.cuda.get_device_name(index)}"


def environment(device: str, providers: Sequence[str], threads: int | None = None) -> Environment:
    """Where the figures were measured: versions, device, providers, CPU model, threads."""
    import torch

    return Environment(
        torch=torch.__version__,
        onnxruntime=ort.__version__,
        onnx=_version("onnx"),
        torch_pruning=_version("torch-pruning"),
        device=describe_device(device),
        providers=list(providers),
        cpu=_cpu_model(),
        threads=threads or default_threads(),
    )
