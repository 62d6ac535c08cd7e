"""Structured pruning to targets on tiny seeded models."""

import io

import pytest
import torch
from torch import nn

from contract import PruneSpec, Target
from tests.engine.tiny_nets import (
    Conv1dNet,
    ResConcatNet,
    TinyMobileNet,
    TinyResNet,
    TwoOutputNet,
    seeded,
)
from worker.engine.errors import JobCancelled, PruningFailed
from worker.engine.measure.stats import count_macs, count_params
from worker.engine.prune.to_target import UNSTRUCTURED_NOTE, hardware_multiple, prune_model

torch.set_num_threads(1)

IMAGE = (1, 3, 16, 16)
CASES = {
    "resconcat": (ResConcatNet, IMAGE, "head"),
    "conv1d": (Conv1dNet, (1, 4, 64), "head"),
    "mobilenet": (TinyMobileNet, (1, 3, 32, 32), "classifier"),
}


def _model(case: str) -> tuple[nn.Module, torch.Tensor, nn.Module]:
    cls, shape, head = CASES[case]
    model = seeded(cls)
    return (
        model,
        torch.randn(shape, generator=torch.Generator().manual_seed(1)),
        getattr(model, head),
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_macs_target_reached_and_outputs_kept(case: str) -> None:
    model, x, head = _model(case)
    out_shape = model(x).shape
    macs0 = count_macs(model, x)
    result = prune_model(model, x, PruneSpec(target=Target(macs_reduction=0.5)), protected=[head])
    achieved = 1 - count_macs(model, x) / macs0
    assert abs(achieved - 0.5) <= 0.02
    assert result.macs_before == macs0 and result.macs_after == count_macs(model, x)
    assert result.achieved["macs_reduction"] == pytest.approx(achieved)
    assert model(x).shape == out_shape
    assert len(result.history) == 5
    macs = [p.macs for p in result.history]
    assert macs == sorted(macs, reverse=True) and macs[-1] == result.macs_after
    assert any(c.out_channels_after < c.out_channels_before for c in result.layers)


def test_every_step_records_its_agreement_with_the_original() -> None:
    """The report's curve has a point per step: class-score models get each step's top-1
    agreement with the unpruned model; other outputs get none."""
    model, x, head = _model("mobilenet")
    result = prune_model(model, x, PruneSpec(target=Target(macs_reduction=0.5)), protected=[head])
    agreements = [p.agreement for p in result.history]
    assert all(a is not None and 0.0 <= a <= 1.0 for a in agreements), agreements
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 1))
    spec = PruneSpec(target=Target(channel_ratio=0.5))
    result = prune_model(dense, torch.randn(IMAGE), spec, protected=[dense[2]])
    assert result.history and all(p.agreement is None for p in result.history)


def test_params_target_reached() -> None:
    model, x, head = _model("resconcat")
    params0 = count_params(model)
    spec = PruneSpec(target=Target(params_reduction=0.4))
    result = prune_model(model, x, spec, protected=[head])
    assert abs((1 - count_params(model) / params0) - 0.4) <= 0.02
    assert result.params_after == count_params(model)


def test_channel_ratio_prunes_that_fraction() -> None:
    model, x, head = _model("resconcat")
    spec = PruneSpec(target=Target(channel_ratio=0.25), scope="layerwise", round_to=1)
    result = prune_model(model, x, spec, protected=[head])
    convs = [c for c in result.layers if c.name != "head"]
    kept = sum(c.out_channels_after for c in convs) / sum(c.out_channels_before for c in convs)
    assert 0.7 <= kept <= 0.8
    assert result.achieved["channel_ratio"] == 0.25
    assert result.macs_after < 0.65 * result.macs_before


def test_widths_are_hardware_friendly() -> None:
    model, x, head = _model("resconcat")
    result = prune_model(model, x, PruneSpec(target=Target(macs_reduction=0.5)), protected=[head])
    assert not any("rounded" in n for n in result.notes)
    changed = [c for c in result.layers if c.out_channels_after != c.out_channels_before]
    assert changed
    assert all(c.out_channels_after % 8 == 0 for c in changed)


def test_explicit_round_to_is_respected() -> None:
    model, x, head = _model("mobilenet")
    spec = PruneSpec(target=Target(macs_reduction=0.4), round_to=16)
    result = prune_model(model, x, spec, protected=[head])
    changed = [c for c in result.layers if c.out_channels_after != c.out_channels_before]
    assert changed and all(c.out_channels_after % 16 == 0 for c in changed)


def test_hardware_multiple() -> None:
    assert [hardware_multiple(c) for c in (4, 8, 63, 64, 512)] == [1, 8, 8, 16, 16]


@pytest.mark.parametrize("method", ["l1", "l2", "bn_scale", "taylor", "fpgm", "lamp", "random"])
def test_every_method_reaches_the_target(method: str) -> None:
    model = seeded(TinyResNet, width=16)
    x = torch.randn(IMAGE)
    spec = PruneSpec(method=method, target=Target(macs_reduction=0.4), iterative_steps=2)
    result = prune_model(model, x, spec, protected=[model.fc])
    assert abs(result.achieved["macs_reduction"] - 0.4) <= 0.02
    assert model(x).shape == (1, 10)


def test_taylor_uses_the_given_loss() -> None:
    model = seeded(TinyResNet, width=16)
    x = torch.randn(IMAGE)
    calls = []

    def loss_fn(m: nn.Module) -> torch.Tensor:
        calls.append(m)
        return m(torch.ones(2, 3, 16, 16)).pow(2).mean()

    spec = PruneSpec(method="taylor", target=Target(channel_ratio=0.3), iterative_steps=3)
    prune_model(model, x, spec, protected=[model.fc], loss_fn=loss_fn)
    assert len(calls) == 3 and all(m is model for m in calls)  # once per step, in place


def test_ignored_layers_keep_their_channels() -> None:
    model, x, head = _model("resconcat")
    spec = PruneSpec(target=Target(macs_reduction=0.4), ignored_layers=["branch_a.0", "fuse.0"])
    result = prune_model(model, x, spec, protected=[head])
    widths = {c.name: c for c in result.layers}
    for name in ("branch_a.0", "fuse.0"):
        assert widths[name].out_channels_after == widths[name].out_channels_before
    assert widths["branch_b.0"].out_channels_after < widths["branch_b.0"].out_channels_before


def test_unknown_ignored_layer_is_refused() -> None:
    model, x, head = _model("resconcat")
    spec = PruneSpec(ignored_layers=["no.such.layer"])
    with pytest.raises(PruningFailed) as err:
        prune_model(model, x, spec, protected=[head])
    assert err.value.code == "unknown_layer" and "no.such.layer" in err.value.message


def test_two_output_model_keeps_both_outputs() -> None:
    model = seeded(TwoOutputNet)
    x = torch.randn(IMAGE)
    result = prune_model(
        model, x, PruneSpec(target=Target(macs_reduction=0.5)), protected=[model.cls, model.dense]
    )
    cls_out, dense_out = model(x)
    assert cls_out.shape == (1, 4) and dense_out.shape == (1, 2, 16, 16)
    assert abs(result.achieved["macs_reduction"] - 0.5) <= 0.02


def test_unstructured_gives_zeros_and_the_note() -> None:
    model, x, head = _model("resconcat")
    spec = PruneSpec(method="unstructured_l1", target=Target(macs_reduction=0.6))
    result = prune_model(model, x, spec, protected=[head])
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert 0.55 <= zeros <= 0.65
    assert int((model.head.weight == 0).sum()) == 0  # protected
    assert any(UNSTRUCTURED_NOTE in n for n in result.notes)
    assert result.macs_after == result.macs_before


def test_bn_scale_without_batchnorm_falls_back_with_a_note() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 5),
    )
    x = torch.randn(IMAGE)
    spec = PruneSpec(method="bn_scale", target=Target(macs_reduction=0.5))
    result = prune_model(model, x, spec, protected=[model[6]])
    assert any("bn_scale" in n and "L2" in n for n in result.notes)
    assert abs(result.achieved["macs_reduction"] - 0.5) <= 0.02


def test_fx_graph_module_is_pruned() -> None:
    model, x, _ = _model("resconcat")
    reference = model(x)
    traced = torch.fx.symbolic_trace(model)
    result = prune_model(
        traced, x, PruneSpec(target=Target(macs_reduction=0.5)), protected=[traced.head]
    )
    assert abs(result.achieved["macs_reduction"] - 0.5) <= 0.02
    assert traced(x).shape == reference.shape


def test_onnx2torch_model_is_pruned() -> None:
    onnx = pytest.importorskip("onnx")
    onnx2torch = pytest.importorskip("onnx2torch")
    onnxslim = pytest.importorskip("onnxslim")
    model, x, _ = _model("resconcat")
    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17)
    graph = onnx2torch.convert(onnxslim.slim(onnx.load_from_string(buf.getvalue())))
    heads = [m for m in graph.modules() if isinstance(m, nn.Linear)]
    spec = PruneSpec(method="bn_scale", target=Target(macs_reduction=0.5))
    result = prune_model(graph, x, spec, protected=heads)
    assert abs(result.achieved["macs_reduction"] - 0.5) <= 0.02
    assert any("bn_scale" in n for n in result.notes)  # BN was folded into the convs
    assert graph(x).shape == (1, 10)


def test_cancel_raises_and_progress_is_monotone() -> None:
    model, x, head = _model("resconcat")
    seen: list[float] = []
    with pytest.raises(JobCancelled):
        prune_model(
            model,
            x,
            PruneSpec(),
            protected=[head],
            on_progress=seen.append,
            should_cancel=lambda: len(seen) >= 3,
        )
    assert len(seen) == 3

    seen.clear()
    prune_model(model, x, PruneSpec(), protected=[head], on_progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1.0 and all(0 <= f <= 1 for f in seen)


def test_unreachable_target_is_reported() -> None:
    model, x, head = _model("resconcat")
    spec = PruneSpec(target=Target(macs_reduction=0.8), max_layer_ratio=0.3)
    result = prune_model(model, x, spec, protected=[head])
    assert result.achieved["macs_reduction"] < 0.78
    assert any("not reachable" in n for n in result.notes)
    assert model(x).shape == (1, 10)


def test_a_finer_rounding_in_the_last_step_searches_below_the_earlier_ratio(monkeypatch) -> None:
    """DPN-68: under the coarse width rules its grouped convolutions prune nothing, so the
    earlier steps end at the highest ratio; the finest rule prunes 75% of the MACs there.
    The last step must search that rule from ratio 0, not from the earlier steps' ratio."""
    from types import SimpleNamespace

    from worker.engine.prune.planner import Choice
    from worker.engine.prune.to_target import _Run

    class Run(_Run):
        def evaluate(self, step):
            finest = self.pruner.width_multiple == "any width"
            return lambda r: Choice(ratio=r, groups=[], value=0.83 * r if finest else 0.001)

    spec = PruneSpec(target=Target(macs_reduction=0.5))
    run = Run(
        module=nn.Identity(), inputs=(), spec=spec, profile=None, macs_before=1,
        params_before=1, notes=[], pruner=SimpleNamespace(width_multiple="coarse"),
    )  # type: ignore[arg-type]  # fmt: skip
    rules = [("coarse", "coarse"), ("any width", "any width")]
    monkeypatch.setattr("worker.engine.prune.to_target._width_rules", lambda _spec: rules)
    choice = run._choose_last(spec.iterative_steps, 0.5, 0.9, 0.9)
    assert abs(choice.value - 0.5) <= 0.02
