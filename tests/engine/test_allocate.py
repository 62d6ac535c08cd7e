"""Allocation: per-group widths chosen by damage per unit of cost, on tiny networks."""

import pytest
import torch
from torch import nn

from contract import PruneSpec, Target
from tests.engine.tiny_nets import TinyMobileNet, TinyResNet, seeded
from worker.engine.analyze.costs import MacCost
from worker.engine.analyze.preflight import PRUNER_KWARGS
from worker.engine.measure.stats import MacProfile, count_macs
from worker.engine.prune.allocate import (
    LayerCost,
    allocate,
    apply_allocation,
    collect_slots,
    with_rule,
)
from worker.engine.prune.importance import make_importance
from worker.engine.prune.planner import WidthPruner, constant_multiple, hardware_multiple
from worker.engine.prune.to_target import prune_model

X = torch.randn(1, 3, 32, 32)


def _scored(model: nn.Module, rule=hardware_multiple, max_ratio: float = 0.9):
    pruner = WidthPruner(
        model,
        X,
        importance=make_importance("l2"),
        global_pruning=False,
        pruning_ratio=0.0,
        max_pruning_ratio=max_ratio,
        iterative_steps=1,
        ignored_layers=[model.fc],
        width_multiple=rule,
        **PRUNER_KWARGS,
    )
    return pruner, collect_slots(pruner, width_multiple=rule, max_layer_ratio=max_ratio)


def _widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_macs_budget_is_met_and_the_estimate_is_what_the_model_counts() -> None:
    model = seeded(TinyResNet, width=32)
    pruner, slots = _scored(model, rule=constant_multiple(8))
    profile = MacProfile(model, X)
    allocation = allocate(slots, MacCost(profile), 0.5 * profile.total)
    assert allocation.reached
    assert allocation.cost <= 0.5 * profile.total
    apply_allocation(pruner.DG, slots, allocation.keep)
    assert count_macs(model, X) == pytest.approx(allocation.cost, rel=1e-6)
    # One width step more would have been enough: the budget is not overshot by much.
    assert count_macs(model, X) >= 0.4 * profile.total
    assert model(X).shape == (1, 10)


def test_widths_stay_on_the_hardware_multiple_of_the_original_width() -> None:
    model = seeded(TinyResNet, width=64)  # stages of 64, 128, 256 channels
    pruner, slots = _scored(model)
    profile = MacProfile(model, X)
    allocation = allocate(slots, MacCost(profile), 0.3 * profile.total)
    apply_allocation(pruner.DG, slots, allocation.keep)
    widths = _widths(model)
    assert any(w < 64 for w in widths.values())  # something shrank below 64 ...
    assert all(w % 16 == 0 for n, w in widths.items() if n != "stem.0" or w >= 16)


def test_max_layer_ratio_bounds_every_group() -> None:
    model = seeded(TinyResNet, width=32)
    before = _widths(model)
    pruner, slots = _scored(model, rule=constant_multiple(1), max_ratio=0.5)
    profile = MacProfile(model, X)
    allocation = allocate(slots, MacCost(profile), 0.05 * profile.total)
    assert not allocation.reached  # 95% fewer MACs is impossible at 50% per layer
    apply_allocation(pruner.DG, slots, allocation.keep)
    assert all(w >= before[n] // 2 for n, w in _widths(model).items())


def test_a_sensitive_group_keeps_more_channels() -> None:
    plain, weighted = seeded(TinyResNet, width=32), seeded(TinyResNet, width=32)
    results = []
    for model, weight in ((plain, 1.0), (weighted, 50.0)):
        pruner, slots = _scored(model, rule=constant_multiple(8))
        for slot in slots:
            slot.weight = weight if slot.name == "layer3.conv1" else 1.0
        profile = MacProfile(model, X)
        allocate_and_apply = allocate(slots, MacCost(profile), 0.5 * profile.total)
        apply_allocation(pruner.DG, slots, allocate_and_apply.keep)
        results.append(_widths(model)["layer3.conv1"])
    assert results[1] > results[0]


class _OneLayerCostsAll(LayerCost):
    """Only `layer3.conv1` costs anything: time spent anywhere else is free."""

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer

    def layers(self):
        return [self.layer]

    def __call__(self, layer, removed_out, removed_in):
        return float((layer.out_channels - removed_out) * (layer.in_channels - removed_in))


def test_cost_decides_where_channels_go() -> None:
    model = seeded(TinyResNet, width=32)
    before = _widths(model)
    pruner, slots = _scored(model, rule=constant_multiple(8))
    cost = _OneLayerCostsAll(model.layer3.conv1)
    allocation = allocate(slots, cost, 0.5 * cost.total())
    apply_allocation(pruner.DG, slots, allocation.keep)
    after = _widths(model)
    changed = {n for n in before if after[n] != before[n]}
    # Only the groups feeding or leaving the costly layer are worth pruning.
    assert "layer3.conv1" in changed
    assert "layer1.conv1" not in changed


def test_with_rule_changes_steps_not_importance() -> None:
    model = seeded(TinyResNet, width=64)
    _, slots = _scored(model)
    coarse = with_rule(slots, constant_multiple(32), 0.9)
    by_name = {s.name: s for s in slots}
    assert coarse and all(s.step == 32 for s in coarse if s.ch_groups == 1)
    assert all(torch.equal(s.importance, by_name[s.name].importance) for s in coarse)


@pytest.mark.parametrize("net", [TinyResNet, TinyMobileNet])
def test_sensitivity_scope_meets_a_macs_target(net) -> None:
    model = seeded(net)
    head = model.fc if hasattr(model, "fc") else model.classifier
    before = count_macs(model, X)
    result = prune_model(
        model,
        X,
        PruneSpec(target=Target(macs_reduction=0.5), scope="sensitivity"),
        protected=[head],
    )
    assert result.achieved["macs_reduction"] == pytest.approx(0.5, abs=0.05)
    assert count_macs(model, X) == result.macs_after < before
    assert model(X).shape == (1, 10)


def test_tilted_allocation_is_uniform_without_weights_and_leans_with_them() -> None:
    from worker.engine.prune.allocate import allocate_tilted

    model = seeded(TinyResNet, width=64)
    _, slots = _scored(model, rule=constant_multiple(1))
    profile = MacProfile(model, X)
    even = allocate_tilted(slots, MacCost(profile), 0.25 * profile.total)
    assert even.reached and even.cost <= 0.25 * profile.total
    shares = [even.keep[s.name] / s.units for s in slots]
    # One share for every group (uniform), give or take the steps topped up after it.
    assert max(shares) - min(shares) < 0.1
    slots[0].weight = 16.0  # the first group is sensitive ...
    leaning = allocate_tilted(slots, MacCost(profile), 0.25 * profile.total)
    assert leaning.reached
    assert leaning.keep[slots[0].name] > even.keep[slots[0].name]  # ... and keeps more


def test_grouped_layers_follow_the_width_rule_per_group() -> None:
    """13 groups of 8 channels (a RegNet stage) cannot keep a total multiple of 16 short
    of keeping all or nothing, so the rule applies to one group's channels: any count
    of the 8 here, and multiples of 8 for groups of 32. Dense layers keep the rule on
    their whole width."""
    from worker.engine.prune.allocate import _steps

    assert _steps(8, 13, hardware_multiple, 0.9) == (1, 1)
    assert _steps(32, 4, hardware_multiple, 1.0) == (8, 8)
    assert _steps(104, 1, hardware_multiple, 1.0) == (16, 16)
    assert _steps(104, 1, hardware_multiple, 0.5) == (16, 64)
