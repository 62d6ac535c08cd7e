"""The sensitivity scan: it measures each group without changing the model."""

import copy

import pytest
import torch

from tests.engine.tiny_nets import TinyMobileNet, TinyResNet, seeded
from worker.engine import sensitivity
from worker.engine.allocate import collect_slots
from worker.engine.importance import make_importance
from worker.engine.planner import WidthPruner, hardware_multiple
from worker.engine.preflight import PRUNER_KWARGS

X = torch.randn(1, 3, 32, 32)


@pytest.mark.parametrize("net", [TinyResNet, TinyMobileNet])
def test_scan_measures_every_group_and_restores_the_model(net) -> None:
    model = seeded(net)
    head = model.fc if hasattr(model, "fc") else model.classifier
    pruner = WidthPruner(
        model, X, importance=make_importance("l2"), global_pruning=False, pruning_ratio=0.0,
        iterative_steps=1, ignored_layers=[head], width_multiple=hardware_multiple,
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
