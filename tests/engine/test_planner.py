"""Planning a pruning step computes torch-pruning's index mapping once, and plans the same
groups as torch-pruning's own (recomputing) path."""

import torch
import torch_pruning as tp
import torchvision
from torch_pruning.dependency import index_mapping

from worker.engine.planner import WidthPruner, constant_multiple
from worker.engine.preflight import PRUNER_KWARGS


def _dense_net() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = torchvision.models.DenseNet(
        growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, num_classes=5
    ).eval()
    return model, torch.randn(1, 3, 32, 32)


def _pruner(model: torch.nn.Module, x: torch.Tensor) -> WidthPruner:
    return WidthPruner(
        model,
        x,
        importance=tp.importance.MagnitudeImportance(p=2),
        global_pruning=True,
        pruning_ratio=0.0,
        iterative_steps=2,
        ignored_layers=[model.classifier],
        width_multiple=constant_multiple(1),
        **PRUNER_KWARGS,
    )


def _summary(groups: list) -> list:
    return sorted(
        (id(dep.target.module), dep.handler.__name__, tuple(sorted(idxs)))
        for group in groups
        for dep, idxs in group
    )


def test_a_plan_maps_indices_once_and_matches_the_recomputing_path(monkeypatch) -> None:
    model, x = _dense_net()
    pruner = _pruner(model, x)
    update = index_mapping.update_index_mapping
    calls = []

    def counted(graph: tp.DependencyGraph) -> None:
        calls.append(graph)
        update(graph)

    monkeypatch.setattr(index_mapping, "update_index_mapping", counted)
    planned = pruner.plan(1, 0.4)
    assert len(calls) == 1
    assert planned

    calls.clear()
    pruner.current_step = 1
    pruner.per_step_pruning_ratio = [0.4] * (pruner.iterative_steps + 1)
    recomputed = list(pruner._prune())
    assert len(calls) > 1  # torch-pruning's own path: once per group built
    assert _summary(planned) == _summary(recomputed)
    assert index_mapping.update_index_mapping is counted  # restored after the plan
