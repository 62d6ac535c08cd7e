"""Planning a pruning step computes torch-pruning's index mapping once, and plans the same
groups as torch-pruning's own (recomputing) path."""

import torch
import torch_pruning as tp
import torchvision
from torch_pruning.dependency import index_mapping

from worker.engine.analyze.preflight import PRUNER_KWARGS
from worker.engine.prune.planner import WidthPruner, constant_multiple


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


class _TwiceConcat(torch.nn.Module):
    """A concatenation that takes one tensor twice, and a split re-concatenated (C2f)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(16, 8, 3, padding=1)
        self.c = torch.nn.Conv2d(24, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x)
        left, right = torch.split(a, [4, 4], dim=1)
        b = self.b(torch.cat([a, a], dim=1))
        return self.c(torch.cat([left, b, right, a], dim=1))


def _mappings(
    graph: tp.DependencyGraph, kind: type = index_mapping._ConcatIndexMapping, slot: int = 1
) -> list:
    """(dependency, offsets, reverse) of each mapping of `kind` (in index_mapping[slot])."""
    found = []
    for node in graph.module2node.values():
        for dep in node.dependencies:
            mapping = dep.index_mapping[slot]
            if isinstance(mapping, kind):
                found.append((id(dep), tuple(mapping.offset), mapping.reverse))
    return sorted(found)


def _graph(model: torch.nn.Module, x: torch.Tensor) -> tp.DependencyGraph:
    from worker.engine.analyze.preflight import build_dependency_graph

    return build_dependency_graph(model, (x,))


def _remapped_by_torch_pruning(graph: tp.DependencyGraph, monkeypatch, name: str, slot: int):
    """Clear the graph's mappings in `slot` and compute them again with torch-pruning's
    own `update_{name}_index_mapping`."""
    from worker.engine.analyze import tp_extensions

    own = getattr(tp_extensions, f"torch_pruning_{name}_mapping")
    monkeypatch.setattr(index_mapping, f"update_{name}_index_mapping", own)
    for node in graph.module2node.values():
        for dep in node.dependencies:
            dep.index_mapping[slot] = None
    index_mapping.update_index_mapping(graph)
    monkeypatch.undo()


def test_the_concat_mapping_matches_torch_prunings_own(monkeypatch) -> None:
    for model, x in (_dense_net(), (_TwiceConcat().eval(), torch.randn(1, 3, 8, 8))):
        graph = _graph(model, x)
        ours = _mappings(graph)
        _remapped_by_torch_pruning(graph, monkeypatch, "concat", slot=1)
        assert ours and ours == _mappings(graph)


class _BoxDecode(torch.nn.Module):
    """A detector's box decode: a split whose parts are each read twice, concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.box = torch.nn.Conv2d(3, 4, 1)
        self.head = torch.nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xy, wh = self.box(x).split((2, 2), 1)
        return self.head(torch.cat((xy - wh / 2, xy + wh / 2), 1))


def _split_mappings(graph: tp.DependencyGraph) -> list:
    return _mappings(graph, index_mapping._SplitIndexMapping, slot=0)


def test_the_split_mapping_matches_torch_prunings_where_each_part_is_read_once(
    monkeypatch,
) -> None:
    graph = _graph(_TwiceConcat().eval(), torch.randn(1, 3, 8, 8))
    ours = _split_mappings(graph)
    _remapped_by_torch_pruning(graph, monkeypatch, "split", slot=0)
    assert ours and ours == _split_mappings(graph)


def test_a_split_part_read_twice_is_mapped_to_its_own_channels() -> None:
    """torch-pruning gives a split's consumers the parts in the order it meets them, so
    the third and fourth readers of a two-part split ran past the offsets (IndexError
    while the graph was built, a YOLOv10-style head)."""
    from worker.engine.analyze.preflight import ROOT_MODULE_TYPES

    graph = _graph(_BoxDecode().eval(), torch.randn(1, 3, 8, 8))
    spans = {offset for _, offset, _ in _split_mappings(graph)}
    assert spans == {(0, 2), (2, 4)}
    assert list(graph.get_all_groups(root_module_types=ROOT_MODULE_TYPES))
