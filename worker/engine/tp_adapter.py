"""Every use of torch-pruning's private API, in one place.

The engine builds on torch-pruning's dependency graph, and in a few places it needs what
the library does not export: its index types and mappings (to map channels through
concatenations, splits and reshapes in linear time), its pruner's per-group helpers (to
price and allocate groups without pruning them) and its graph's parameter names (to
restore a graph after a trial). Those names live here and nowhere else, and
`tests/engine/test_tp_adapter.py` pins each one against the installed version: bumping
the torch-pruning pin fails there, in one place, naming what moved.

`planner.WidthPruner` also overrides `BasePruner._round_to` (torch-pruning's hook for
rounding a layer's width); the test pins that hook's signature too.
"""

from collections.abc import Iterator
from typing import Any

import torch_pruning as tp
from torch_pruning.dependency import constants, index_mapping, shape_infer

# Index types: channel indices carrying their root (the channel of the group's root layer).
HybridIndex = tp._helpers._HybridIndex
GroupItem = tp._helpers.GroupItem
to_plain_idxs = tp._helpers.to_plain_idxs
to_root_idxs = tp._helpers.to_root_idxs

# Channel index mappings across concatenations and splits, and the module whose update
# functions `analyze.tp_extensions` replaces with linear-time ones.
ConcatIndexMapping = index_mapping._ConcatIndexMapping
SplitIndexMapping = index_mapping._SplitIndexMapping
INDEX_MAPPING = index_mapping
MAX_VALID_DIM = constants.MAX_VALID_DIM
infer_channels_between = shape_infer.infer_channels_between
infer_in_channels_recursively = shape_infer.infer_in_channels_recursively

# The pruner's hook that rounds a layer's width (overridden by planner.WidthPruner).
ROUND_HOOK = "_round_to"


def is_attention_group(pruner: tp.pruner.BasePruner, group: Any) -> bool:
    """Whether the pruner treats `group` as attention heads (pruned by its own rules)."""
    return bool(pruner._is_atten_group(group)[0])


def channel_groups(pruner: tp.pruner.BasePruner, group: Any) -> int:
    """How many convolution groups `group`'s channels come in (1 for a plain layer)."""
    return int(pruner._get_channel_groups(group))


def planned_groups(pruner: tp.pruner.BasePruner) -> Iterator[Any]:
    """The groups the pruner's current step would prune, without pruning them."""
    return pruner._prune()


def param_names(graph: tp.DependencyGraph) -> dict[Any, str]:
    """The graph's record of its parameters' names."""
    return dict(graph._param_to_name)


def set_param_names(graph: tp.DependencyGraph, names: dict[Any, str]) -> None:
    graph._param_to_name = dict(names)


def bind_group(group: Any, graph: tp.DependencyGraph) -> None:
    """Attach a group built by hand to its graph, as the graph's own groups are."""
    group._DG = graph
