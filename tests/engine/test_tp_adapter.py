"""The private torch-pruning names the engine uses (worker/engine/tp_adapter.py) still
exist in the installed torch-pruning, with the shapes the engine relies on. A failure
here after bumping the pin names what moved; nothing else in the engine touches them."""

import inspect

import torch
import torch_pruning as tp
from torch import nn

from worker.engine import tp_adapter


class _Scaled(nn.Module):
    """A parameter used outside any layer: torch-pruning records its name."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, 8, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _pruner() -> tp.pruner.BasePruner:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), _Scaled(), nn.ReLU(), nn.Conv2d(8, 4, 3))
    return tp.pruner.BasePruner(
        model,
        torch.randn(1, 3, 8, 8),
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=[model[3]],
    )


def test_the_index_types_and_mappings_exist() -> None:
    assert issubclass(tp_adapter.HybridIndex, object)
    index = tp_adapter.HybridIndex(idx=3, root_idx=5)
    assert tp_adapter.to_plain_idxs([index]) == [3]
    assert tp_adapter.to_root_idxs([index]) == [5]
    for mapping in (tp_adapter.ConcatIndexMapping, tp_adapter.SplitIndexMapping):
        assert {"offset", "reverse"} <= set(inspect.signature(mapping).parameters)
    for name in (
        "update_index_mapping",
        "update_concat_index_mapping",
        "update_split_index_mapping",
        "update_reshape_index_mapping",
    ):
        assert callable(getattr(tp_adapter.INDEX_MAPPING, name)), name
    assert isinstance(tp_adapter.MAX_VALID_DIM, int)
    assert callable(tp_adapter.infer_channels_between)
    assert (
        "recursive_depth" in inspect.signature(tp_adapter.infer_in_channels_recursively).parameters
    )


def test_the_pruners_group_helpers_answer_as_the_engine_reads_them() -> None:
    pruner = _pruner()
    groups = list(pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers))
    assert groups
    assert tp_adapter.is_attention_group(pruner, groups[0]) is False
    assert tp_adapter.channel_groups(pruner, groups[0]) == 1
    pruner.current_step = 1  # as a step sets it before pruning
    planned = list(tp_adapter.planned_groups(pruner))
    assert planned and all(hasattr(g, "prune") for g in planned)


def test_the_rounding_hook_keeps_its_signature() -> None:
    hook = getattr(tp.pruner.BasePruner, tp_adapter.ROUND_HOOK)
    assert list(inspect.signature(hook).parameters) == [
        "self",
        "n_pruned",
        "current_channels",
        "round_to",
    ]


def test_the_graphs_parameter_names_can_be_saved_and_restored() -> None:
    pruner = _pruner()
    names = tp_adapter.param_names(pruner.DG)
    assert names and all(isinstance(n, str) for n in names.values())
    tp_adapter.set_param_names(pruner.DG, {})
    assert tp_adapter.param_names(pruner.DG) == {}
    tp_adapter.set_param_names(pruner.DG, names)
    assert tp_adapter.param_names(pruner.DG) == names


def test_a_group_built_by_hand_is_bound_to_its_graph() -> None:
    pruner = _pruner()
    group = tp.dependency.Group()
    tp_adapter.bind_group(group, pruner.DG)
    assert group._DG is pruner.DG
