"""The sensitivity scan: it measures each group without changing the model."""

import copy

import pytest
import torch
import torch_pruning as tp

from contract import PruneSpec, Target
from tests.engine.tiny_nets import TinyMobileNet, TinyResNet, seeded
from worker.engine.analyze import sensitivity
from worker.engine.analyze.preflight import PRUNER_KWARGS
from worker.engine.prune.allocate import collect_slots
from worker.engine.prune.by_allocation import ConsumerMagnitude, ranking
from worker.engine.prune.importance import make_importance
from worker.engine.prune.planner import WidthPruner, hardware_multiple

X = torch.randn(1, 3, 32, 32)


@pytest.mark.parametrize("net", [TinyResNet, TinyMobileNet])
def test_scan_measures_every_group_and_restores_the_model(net) -> None:
    model = seeded(net)
    head = model.fc if hasattr(model, "fc") else model.classifier
    pruner = WidthPruner(
        model,
        X,
        importance=make_importance("l2"),
        global_pruning=False,
        pruning_ratio=0.0,
        iterative_steps=1,
        ignored_layers=[head],
        width_multiple=hardware_multiple,
        **PRUNER_KWARGS,
    )
    slots = collect_slots(pruner, width_multiple=hardware_multiple, max_layer_ratio=0.9)
    before = copy.deepcopy(model.state_dict())
    probes = torch.randn(4, 3, 32, 32)
    reference = model(probes)
    changes = sensitivity.scan(model, pruner.DG, slots, (probes,))
    assert set(changes) == {s.name for s in slots}
    assert all(v > 0 for v in changes.values())  # zeroing half a group moves the outputs
    assert len(set(changes.values())) > 1  # and not every group alike
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(probes), reference)


def test_weights_are_relative_to_the_median_and_clipped() -> None:
    weights = sensitivity.weights({"a": 0.1, "b": 0.2, "c": 0.4, "d": 100.0, "e": 0.0})
    assert weights["c"] == pytest.approx(1.0)  # the median of the positive changes
    assert weights["b"] == pytest.approx(0.5)
    assert weights["d"] == 20.0 and weights["e"] == 0.05


class _Folded(torch.nn.Module):
    """Convolutions with biases and no BatchNorm, as an ONNX export leaves them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def _conv1_importance(importance) -> torch.Tensor:
    model = seeded(_Folded)
    with torch.no_grad():
        # Channel 0: a filter that folding scaled up (small running variance), which the
        # next layer does not read; channel 1: a small filter the next layer reads.
        model.conv1.weight[0] *= 100.0
        model.conv2.weight[:, 0] = 0.0
        model.conv1.weight[1] *= 0.1
        model.conv2.weight[:, 1] *= 10.0
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=X)
    group = dg.get_pruning_group(model.conv1, tp.prune_conv_out_channels, list(range(8)))
    return importance(group)


def test_consumer_magnitude_ranks_channels_by_what_reads_them() -> None:
    plain = _conv1_importance(make_importance("l2"))
    consumer = _conv1_importance(ConsumerMagnitude(p=2))
    assert int(plain.argmax()) == 0  # the folded filter's scale dominates a plain L2 norm
    assert int(consumer.argmin()) == 0  # nothing reads it: the first to go
    assert int(consumer.argmax()) == 1


def test_ranking_uses_consumers_only_for_folded_models_and_non_latency_targets() -> None:
    macs = PruneSpec(method="l2", scope="sensitivity", target=Target(macs_reduction=0.5))
    assert isinstance(ranking(macs, seeded(_Folded), []), ConsumerMagnitude)
    assert ranking(macs, seeded(_Folded), []).p == 2
    l1 = macs.model_copy(update={"method": "l1"})
    assert ranking(l1, seeded(_Folded), []).p == 1
    assert not isinstance(ranking(macs, seeded(TinyResNet), []), ConsumerMagnitude)  # BatchNorm
    latency = macs.model_copy(update={"target": Target(latency_reduction=0.5)})
    assert not isinstance(ranking(latency, seeded(_Folded), []), ConsumerMagnitude)
    fpgm = macs.model_copy(update={"method": "fpgm"})
    assert not isinstance(ranking(fpgm, seeded(_Folded), []), ConsumerMagnitude)
