"""onnxruntime latency measurement: interleaving, percentiles, session options, environment."""

import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from contract import BenchmarkSpec, Environment
from worker.engine.measure import benchmark as bm


def _conv_model(path: Path, channels: int, seed: int) -> Path:
    """Conv(3->channels, 3x3) -> Relu -> Conv(channels->channels) on a 1x3x32x32 input."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((channels, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((channels, channels, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", channels, 32, 32])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_interleaved_turns_after_warmup_each_rewarmed_by_an_untimed_call() -> None:
    calls: list[str] = []
    runners = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = bm.interleaved_timings(runners, warmup=2, iterations=6)
    # Warm-up rounds; a turn each of one untimed and four timed calls; then the two left.
    assert "".join(calls) == "abab" + "aaaaa" + "bbbbb" + "aaa" + "bbb"
    assert [len(v) for v in times.values()] == [6, 6]
    assert all(t >= 0 for v in times.values() for t in v)


def test_a_switch_between_models_is_not_timed() -> None:
    """A stand-in whose first call after the other model ran is slow (cold caches): the
    slow calls are the untimed ones, so the median is the warm time (1 ms)."""
    last: list[str] = [""]

    def runner(name: str, warm_s: float):
        def run() -> None:
            cold = last[0] != name
            last[0] = name
            time.sleep(warm_s + (0.004 if cold else 0.0))

        return run

    times = bm.interleaved_timings(
        {"big": runner("big", 0.002), "small": runner("small", 0.001)}, warmup=1, iterations=8
    )
    # Timed one call at a time, every call of either model would be a cold one (5 ms).
    assert float(np.median(times["small"])) < 0.0035


def test_percentiles_in_ms() -> None:
    p = bm.percentiles_ms([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert p.p50 == pytest.approx(50.5)
    assert p.p90 == pytest.approx(90.1)
    assert p.samples == 100
    assert p.p99 is None  # a p99 of 100 runs is their slowest one or two
    many = bm.percentiles_ms([i / 10_000 for i in range(1, 1001)])  # 0.1..100 ms
    assert many.p99 == pytest.approx(99.001)


def test_session_options_disable_spinning() -> None:
    opts = bm.session_options(2)
    assert opts.intra_op_num_threads == 2
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.get_session_config_entry("session.inter_op.allow_spinning") == "0"


def test_providers_cpu_always_last() -> None:
    assert bm.resolve_providers(["auto"], "cpu") == ["CPUExecutionProvider"]
    assert bm.resolve_providers(["cpu"], "cuda:0")[-1] == "CPUExecutionProvider"


def test_benchmark_two_models(tmp_path: Path) -> None:
    small = _conv_model(tmp_path / "small.onnx", channels=4, seed=0)
    big = _conv_model(tmp_path / "big.onnx", channels=48, seed=1)
    spec = BenchmarkSpec(providers=["cpu"], batch_sizes=[1, 2], warmup=2, iterations=15)
    tables = bm.benchmark_onnx({"big": big, "small": small}, {"x": [1, 3, 32, 32]}, spec, threads=1)
    assert set(tables) == {"big", "small"}
    for table in tables.values():
        assert set(table) == {"CPUExecutionProvider"}
        assert set(table["CPUExecutionProvider"]) == {"1", "2"}
        for p in table["CPUExecutionProvider"].values():
            assert 0 < p.p50 <= p.p90 and p.samples == 15
    # ~120x the MACs: measured side by side, the big model must be clearly slower.
    big_p50 = tables["big"]["CPUExecutionProvider"]["1"].p50
    small_p50 = tables["small"]["CPUExecutionProvider"]["1"].p50
    assert big_p50 > 3 * small_p50


def test_benchmark_rejects_broken_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    spec = BenchmarkSpec(providers=["cpu"], warmup=0, iterations=1)
    with pytest.raises(bm.EngineError) as info:
        bm.benchmark_onnx({"bad": bad}, {"x": [1, 3, 32, 32]}, spec)
    assert info.value.code == "benchmark_failed"


def test_environment_records_versions() -> None:
    env = bm.environment("cpu", ["CPUExecutionProvider"], threads=3)
    assert isinstance(env, Environment)
    assert env.device == "cpu"
    assert env.threads == 3
    assert env.torch and env.onnxruntime and env.onnx and env.torch_pruning
    assert env.providers == ["CPUExecutionProvider"]
