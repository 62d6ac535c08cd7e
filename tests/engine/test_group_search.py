"""The group search that replaces torch-pruning's `get_pruning_group`: the same groups
where torch-pruning's own search ends, and an end where it does not."""

import pytest
import timm
import torch
import torch_pruning as tp
import torchvision
from torch import nn

from tests.engine import models
from worker.engine.analyze import tp_extensions
from worker.engine.analyze.preflight import ROOT_MODULE_TYPES, build_dependency_graph
from worker.engine.analyze.tp_extensions import index_mapping_frozen


def _yolo_like() -> nn.Module:
    """A C2f-style block: a split into halves, a chain on one, a concat of all three."""

    class C2f(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.inner = nn.Conv2d(8, 8, 3, padding=1)
            self.out = nn.Conv2d(24, 16, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = self.stem(x).chunk(2, dim=1)
            return self.out(torch.cat([a, b, torch.relu(self.inner(b))], dim=1))

    return C2f()


FAMILIES = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "densenet": lambda: torchvision.models.DenseNet(8, (2, 2), 16, num_classes=10),
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
    "regnet_x_400mf": lambda: torchvision.models.regnet_x_400mf(num_classes=10),
    "googlenet": lambda: torchvision.models.googlenet(
        num_classes=10, aux_logits=False, init_weights=False
    ),
    "c2f": _yolo_like,
    # Ghost modules: a channel reaches the residual's root twice (directly and through the
    # cheap depthwise branch), so which root it is credited to depends on the search order.
    "ghostnet": lambda: timm.create_model("ghostnet_100", num_classes=10),
}


def _groups(graph: tp.DependencyGraph, search) -> dict:
    """The group of each root that `get_all_groups` lists, as a set of (layer, function,
    channel, root channel)."""
    names = {m: n for n, m in graph.model.named_modules()}
    found = {}
    with index_mapping_frozen(graph):
        roots = [
            g[0].dep.target.module
            for g in graph.get_all_groups(root_module_types=ROOT_MODULE_TYPES)
        ]
        for module in roots:
            pruner = graph.get_pruner_of_module(module)
            channels = pruner.get_out_channels(module)
            group = search(graph, module, pruner.prune_out_channels, list(range(channels)))
            found[names[module]] = {
                (str(item.dep.target), getattr(item.dep.handler, "__name__", ""), i, r)
                for item in group
                for i, r in zip(item.idxs, item.root_idxs, strict=True)
            }
    return found


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_groups_are_torch_prunings_own(family: str) -> None:
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    graph = build_dependency_graph(model, (torch.randn(1, 3, 64, 64),))
    ours = _groups(graph, tp_extensions.pruning_group)
    theirs = _groups(graph, tp_extensions.torch_pruning_pruning_group)
    assert ours and ours == theirs


def test_the_same_groups_where_torch_prunings_search_goes_round_in_circles(tmp_path) -> None:
    """A Swin converted from ONNX: torch-pruning reads the strided spatial slices of patch
    merging as channel slices, and its search revisits layers with ever new channel
    lists (this tiny one: 9 s against 0.1 s here; a real Swin-T: over 20,000 additions to
    one group without end). Where it does end, the groups hold the same channels."""
    from worker.engine.load.loaders import load_model

    path = models.swin_onnx(tmp_path / "swin.onnx", dim=16, heads=[2, 2, 2], window=4, size=64)
    loaded = load_model(path)
    graph = build_dependency_graph(loaded.module, loaded.example_inputs(seed=0))
    ours = _groups(graph, tp_extensions.pruning_group)
    theirs = _groups(graph, tp_extensions.torch_pruning_pruning_group)
    # Past its limit the search no longer follows torch-pruning's order, so a channel
    # reached from two roots may be credited to the other one; the channels are the same.
    assert _channels(ours) == _channels(theirs)


def _channels(groups: dict) -> dict:
    return {root: {item[:3] for item in items} for root, items in groups.items()}


class _GatedBlock(nn.Module):
    """MambaOut's gated block: a projection split three ways, one part used twice, then
    a reshape torch-pruning maps by inferring the channels through the split."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(3, 24, 1)
        self.fc2 = nn.Linear(8 * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, i, c = torch.split(self.fc1(x), [8, 8, 8], dim=1)
        y = g * i + g * c
        return self.fc2(y.reshape(y.shape[0], 8, 16).mean(1).repeat(1, 8))


def test_a_split_part_used_twice_before_a_reshape_builds_a_graph() -> None:
    graph = build_dependency_graph(_GatedBlock().eval(), (torch.rand(1, 3, 4, 4),))
    with index_mapping_frozen(graph):
        groups = list(graph.get_all_groups(root_module_types=ROOT_MODULE_TYPES))
    assert groups
