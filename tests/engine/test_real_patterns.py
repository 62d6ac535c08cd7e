"""Graph patterns of real architectures, each in a tiny network exported to ONNX as a user
would, pruned data-free to half the MACs by run_pipeline: each must prune to target with
verified outputs, or be refused with a typed error that names the blocked layers."""

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from contract import BenchmarkSpec, FinetuneSpec, JobSpec, PruneSpec, Target
from tests.engine import tiny_nets
from worker.engine.errors import AnalysisTimeout, EngineError, JobCancelled
from worker.engine.load.loaders import load_model
from worker.engine.pipeline import run_pipeline

FAST_BENCH = BenchmarkSpec(providers=["cpu"], batch_sizes=[1], warmup=1, iterations=3)
DATA_FREE = JobSpec(
    prune=PruneSpec(target=Target(macs_reduction=0.5)), finetune=None, benchmark=FAST_BENCH
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _export(model: nn.Module, path: Path, shape: tuple[int, ...]) -> Path:
    """Exported with a dynamic batch, as the README shows."""
    torch.onnx.export(
        model.eval(),
        (torch.randn(*shape),),
        str(path),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return path


def _pruned_or_refused(path: Path, out: Path, spec: JobSpec = DATA_FREE, **kwargs) -> None:
    try:
        result = run_pipeline(path, spec, out, **kwargs)
    except EngineError as exc:  # a refusal must say which layers and why
        assert exc.code != "internal_error"
        assert "layer" in exc.message, exc.message
        return
    report = result.report
    achieved = 1.0 - report.pruned.macs / report.original.macs
    assert abs(achieved - 0.5) <= 0.02, (achieved, report.notes)
    assert "onnx_max_abs_diff" in report.verification
    assert (out / "model.onnx").exists()


PATTERNS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    # C2f: split in two, bottlenecks on one half, concat of every piece; PAN neck, DFL head
    "yolo_c2f": (lambda: tiny_nets.seeded(tiny_nets.YoloStyle, width=16), (1, 3, 64, 64)),
    # every layer reads the concat of all earlier feature maps
    "dense_block": (lambda: tiny_nets.seeded(tiny_nets.TinyDenseNet), (1, 3, 32, 32)),
    # channel split, concat, view -> transpose -> view
    "channel_shuffle": (lambda: tiny_nets.seeded(tiny_nets.TinyShuffleNet), (1, 3, 32, 32)),
    # a reshape to literal sizes after the convolutions
    "baked_reshape": (lambda: tiny_nets.seeded(tiny_nets.BakedReshapeOCR), (1, 3, 8, 96)),
    # conv features, a two-layer bidirectional LSTM (sequence first), per-step linear
    "conv_lstm": (lambda: tiny_nets.seeded(tiny_nets.ConvLSTMOCR), (1, 1, 16, 48)),
}


@pytest.mark.parametrize("name", list(PATTERNS))
def test_pattern_prunes_data_free(name: str, tmp_path: Path) -> None:
    build, shape = PATTERNS[name]
    torch.manual_seed(0)
    path = _export(build(), tmp_path / f"{name}.onnx", shape)
    _pruned_or_refused(path, tmp_path / "out")


def test_sensitivity_scope_with_fine_tuning_on_a_flatten_head(tmp_path: Path) -> None:
    """Conv-BN-ReLU x3, max-pool, flatten, linear: the consumer-based ranking of a folded
    model ranked the last conv in the linear's flattened-feature space."""
    torch.manual_seed(0)
    path = _export(tiny_nets.seeded(tiny_nets.ConvBnMLP), tmp_path / "mlp.onnx", (1, 3, 16, 16))
    rng = np.random.default_rng(0)
    data = tmp_path / "train.npz"
    np.savez(
        data,
        x=rng.normal(size=(64, 3, 16, 16)).astype(np.float32),
        y=rng.integers(0, 3, size=64),
    )
    spec = JobSpec(
        prune=PruneSpec(target=Target(macs_reduction=0.5), scope="sensitivity"),
        finetune=FinetuneSpec(epochs=1, batch_size=16),
        benchmark=FAST_BENCH,
    )
    _pruned_or_refused(path, tmp_path / "out", spec, dataset_path=data)


def test_an_unexpected_failure_is_a_typed_error_naming_the_layer(tmp_path, monkeypatch) -> None:
    """Whatever breaks inside a stage reaches the user as that stage's code and the
    layer it broke in, without server paths."""
    import worker.engine.pipeline as pipeline

    path = _export(tiny_nets.seeded(tiny_nets.ConvBnMLP), tmp_path / "m.onnx", (1, 3, 16, 16))

    def broken(state, device, t):  # noqa: ANN001
        with t.stage("evaluating", state.loaded.module):
            state.loaded.module(torch.randn(1, 5, 16, 16))  # wrong channel count

    monkeypatch.setattr(pipeline, "_evaluate", broken)
    with pytest.raises(EngineError) as caught:
        run_pipeline(path, DATA_FREE, tmp_path / "out")
    assert caught.value.code == "evaluation_failed"
    assert "evaluating" in caught.value.message and "layer 'features" in caught.value.message
    assert str(tmp_path) not in caught.value.message


def _slow_groups(*_args, **_kwargs):  # noqa: ANN002, ANN003, ANN202
    """A group discovery that never returns, like torch-pruning's on chained shuffles."""
    while True:
        time.sleep(0.01)
        yield from ()


def test_group_discovery_is_abandoned_at_the_budget(tmp_path, monkeypatch) -> None:
    import torch_pruning as tp

    path = _export(tiny_nets.seeded(tiny_nets.ConvBnMLP), tmp_path / "m.onnx", (1, 3, 16, 16))
    monkeypatch.setattr(tp.DependencyGraph, "get_all_groups", _slow_groups)
    started = time.monotonic()
    with pytest.raises(AnalysisTimeout) as caught:
        run_pipeline(path, DATA_FREE, tmp_path / "out", analysis_budget_s=1.0)
    assert time.monotonic() - started < 10
    assert "analysis budget" in caught.value.message


def test_slow_trials_protect_what_is_not_analysed(tmp_path, monkeypatch) -> None:
    from worker.engine.analyze import preflight

    path = _export(tiny_nets.seeded(tiny_nets.TinyDenseNet), tmp_path / "d.onnx", (1, 3, 32, 32))
    real_run = preflight._Trials.run

    def slow_run(self, roots):  # noqa: ANN001, ANN202
        if len(roots) > 1:  # trials of several groups at once take too long
            time.sleep(5.0)
        return real_run(self, roots)

    monkeypatch.setattr(preflight._Trials, "run", slow_run)
    started = time.monotonic()
    pre = preflight.run_preflight(load_model(path), budget_s=1.0)
    assert time.monotonic() - started < 4
    notes = " ".join(pre.notes)
    assert "analysis budget of 1 s ran out" in notes
    assert len(pre.protected) > 1  # the head, and every layer no trial showed safe


def test_cancel_stops_a_group_discovery_that_does_not_return(tmp_path, monkeypatch) -> None:
    import torch_pruning as tp

    path = _export(tiny_nets.seeded(tiny_nets.ConvBnMLP), tmp_path / "m.onnx", (1, 3, 16, 16))
    monkeypatch.setattr(tp.DependencyGraph, "get_all_groups", _slow_groups)
    started = time.monotonic()
    with pytest.raises(JobCancelled):
        run_pipeline(
            path,
            DATA_FREE,
            tmp_path / "out",
            analysis_budget_s=60.0,
            should_cancel=lambda: time.monotonic() - started > 2,
        )
    assert time.monotonic() - started < 10


# --- patterns whose group discovery torch-pruning could not finish ---------------------------
# Each net is exported to ONNX and analysed by `find_protected`; the test counts the channel
# indices torch-pruning's group search handles (before the converter's rewrites, these
# multiplied at every reshape: tens of millions here, minutes on the real models).


@pytest.fixture()
def _registered() -> None:
    """The pruners for the modules the FX rewrites create (`load/channel_modules.py`):
    idempotent; preflight's own CUSTOM_PRUNERS registers them too once it calls
    `tp_extensions.register`."""
    from worker.engine.analyze import preflight
    from worker.engine.analyze.tp_extensions import register

    register(preflight.CUSTOM_PRUNERS)


class _Eca(nn.Module):
    """timm's ECA: a Conv1d across the channels of the pooled vector gates the input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3)).view(x.shape[0], 1, -1)
        y = self.conv(y).sigmoid().view(x.shape[0], -1, 1, 1)
        return x * y.expand_as(x)


class _EcaBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            tiny_nets.conv_bn(c, c // 2), nn.Conv2d(c // 2, c, 1), nn.BatchNorm2d(c)
        )
        self.eca = _Eca()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.eca(self.body(x)))


class _TinyEcaNet(nn.Module):
    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.stem = tiny_nets.conv_bn(3, width, stride=2)
        self.blocks = nn.Sequential(*[_EcaBlock(width) for _ in range(4)])
        self.fc = nn.Linear(width, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class _Yolo5Head(nn.Module):
    """Two scales, each a detection conv decoded as YOLOv5 does: view to (N, A, K, H, W),
    permute, sigmoid, split of the last dim, concat, view to (N, -1, K); scales concat."""

    def __init__(self, width: int = 16, anchors: int = 3, outputs: int = 7) -> None:
        super().__init__()
        self.a, self.k = anchors, outputs
        self.c1 = tiny_nets.conv_bn(3, width, 2)
        self.c2 = tiny_nets.conv_bn(width, 2 * width, 2)
        self.det = nn.ModuleList(
            [nn.Conv2d(width, anchors * outputs, 1), nn.Conv2d(2 * width, anchors * outputs, 1)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.c1(x)
        f2 = self.c2(f1)
        out = []
        for f, conv in zip((f1, f2), self.det, strict=True):
            p = conv(f)
            n, _, h, w = p.shape
            p = p.view(n, self.a, self.k, h, w).permute(0, 1, 3, 4, 2).sigmoid()
            xy, wh, conf = p.split((2, 2, self.k - 4), 4)
            out.append(torch.cat((xy * 2, wh * wh * 4, conf), 4).view(n, -1, self.k))
        return torch.cat(out, 1)


class _Mqa(nn.Module):
    """MobileNetV4's multi-query attention: per-head queries, one key and one value."""

    def __init__(self, c: int, heads: int = 4, dim: int = 16) -> None:
        super().__init__()
        self.h, self.d = heads, dim
        self.q = nn.Conv2d(c, heads * dim, 1, bias=False)
        self.k = nn.Conv2d(c, dim, 1, bias=False)
        self.v = nn.Conv2d(c, dim, 1, bias=False)
        self.o = nn.Conv2d(heads * dim, c, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, hh, ww = x.shape
        q = self.q(x).reshape(n, self.h, self.d, -1).transpose(-1, -2)
        k = self.k(x).flatten(2).transpose(1, 2).unsqueeze(1)
        v = self.v(x).flatten(2).transpose(1, 2).unsqueeze(1)
        a = ((q * self.d**-0.5) @ k.transpose(-1, -2)).softmax(-1)
        o = (a @ v).transpose(1, 2).reshape(n, hh, ww, -1).permute(0, 3, 1, 2)
        return x + self.o(o)


class _TinyMqaNet(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            tiny_nets.conv_bn(3, width, 2), tiny_nets.conv_bn(width, width, 2)
        )
        self.attn = nn.Sequential(_Mqa(width), _Mqa(width))
        self.fc = nn.Linear(width, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.attn(self.stem(x)).mean((2, 3)))


SEARCH_PATTERNS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    # (net, input shape, most channel indices the group search may handle)
    "eca": (_TinyEcaNet, (1, 3, 32, 32), 60_000),  # before: 660k
    "yolov5_head": (_Yolo5Head, (1, 3, 64, 64), 20_000),  # before: 8M, 24 s
    "mqa_attention": (_TinyMqaNet, (1, 3, 32, 32), 500_000),  # before: over 66M, > 60 s
}


@pytest.mark.usefixtures("_registered")
@pytest.mark.parametrize("name", list(SEARCH_PATTERNS))
def test_group_discovery_stays_linear(name: str, tmp_path: Path, monkeypatch) -> None:
    from torch_pruning.dependency.group import Group

    from worker.engine.analyze import preflight
    from worker.engine.analyze.deadline import Deadline

    build, shape, most = SEARCH_PATTERNS[name]
    torch.manual_seed(0)
    path = _export(build(), tmp_path / f"{name}.onnx", shape)
    loaded = load_model(path)
    handled = [0]
    real_add_dep = Group.add_dep

    def counting_add_dep(self, dep, idxs):  # noqa: ANN001, ANN202
        handled[0] += len(idxs)
        return real_add_dep(self, dep, idxs)

    monkeypatch.setattr(Group, "add_dep", counting_add_dep)
    started = time.monotonic()
    protected, _ = preflight.find_protected(loaded.module, loaded, Deadline(20.0))
    assert handled[0] <= most, handled[0]
    assert time.monotonic() - started < 10
    names = {m: n for n, m in loaded.module.named_modules()}
    protected_names = [names[m] for m in protected]
    if name == "eca":  # the ECA blocks prune: only the classifier is kept
        assert protected_names == ["fc/Gemm"], protected_names
    if name == "yolov5_head":  # the detection convs keep their channels, the rest prunes
        assert sorted(protected_names) == ["det/0/Conv", "det/1/Conv"], protected_names


@pytest.mark.usefixtures("_registered")
def test_eca_net_prunes_data_free(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = _export(_TinyEcaNet(), tmp_path / "eca.onnx", (1, 3, 32, 32))
    result = run_pipeline(path, DATA_FREE, tmp_path / "out")
    achieved = 1.0 - result.report.pruned.macs / result.report.original.macs
    assert abs(achieved - 0.5) <= 0.02, (achieved, result.report.notes)


def test_the_analysis_budget_grows_with_the_forward_pass() -> None:
    from worker.engine.analyze.deadline import MAX_S, analysis_budget

    small, large = analysis_budget(100, forward_s=0.01), analysis_budget(100, forward_s=0.4)
    assert small < large <= MAX_S
    assert analysis_budget(100, forward_s=5.0) == MAX_S


def test_preflight_budgets_by_the_model_forward_time(tmp_path, monkeypatch) -> None:
    """A model whose forward pass is slow (a large transformer at full resolution) gets
    the time its trials need, not only an allowance per layer."""
    from worker.engine.analyze import preflight
    from worker.engine.analyze.deadline import analysis_budget

    path = _export(tiny_nets.seeded(tiny_nets.ConvBnMLP), tmp_path / "m.onnx", (1, 3, 16, 16))
    loaded = load_model(path)
    budgets = []

    def record(module, loaded, deadline):  # noqa: ANN001, ANN202
        budgets.append(deadline.seconds)
        return [], []

    monkeypatch.setattr(preflight, "find_protected", record)
    preflight.run_preflight(loaded)
    fast = budgets[-1]
    real_forward = preflight.timed_forward
    monkeypatch.setattr(preflight, "timed_forward", lambda m, x: (real_forward(m, x)[0], 0.5))
    preflight.run_preflight(loaded)
    layers = preflight._layer_count(loaded.module)
    assert budgets[-1] == pytest.approx(analysis_budget(layers, 0.5))
    assert budgets[-1] > fast
