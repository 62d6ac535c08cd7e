"""torch-pruning's knowledge of the modules the FX rewrites create (`load/channel_modules.py`)
beyond `ChannelConst` and `ChannelShuffle`: customized pruners, registered with `register`;
and two speed-ups of its channel index mapping: `index_mapping_frozen`, for building many
groups of a model that does not change, and `map_concat_indices`, installed in place of its
own; `map_split_indices`, its split mapping with each consumer given the part it reads; and
`pruning_group`, its group search made to end on every graph, installed in place of
`DependencyGraph.get_pruning_group`.

- `ChannelConv1d` (ECA attention's convolution across channels) passes its channels
  through, like a BatchNorm, and has nothing to prune: its Conv1d's weights do not depend
  on the channel count.
- `ChannelRegroup` (a reshape that splits or merges the channel dim with other dims) is a
  stop: its input and output channels are pruned by different functions, so torch-pruning
  builds no dependency through it, and a group ends at its input. The layers before one
  are tried by `preflight` like any group: where the reshape's sizes are baked into the
  graph the trial fails and they are protected.
"""

from __future__ import annotations

import itertools
from collections import defaultdict, deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch_pruning as tp
from torch import nn
from torch_pruning import ops

from worker.engine.load.channel_modules import (
    ChannelConv1d,
    ChannelRegroup,
    regroups_as_one_node,
)
from worker.engine.tp_adapter import (
    INDEX_MAPPING,
    MAX_VALID_DIM,
    ConcatIndexMapping,
    GroupItem,
    HybridIndex,
    SplitIndexMapping,
    bind_group,
    infer_channels_between,
    infer_in_channels_recursively,
    to_plain_idxs,
    to_root_idxs,
)


class ChannelConv1dPruner(tp.pruner.function.BasePruningFunc):
    """In == out channels; pruning only counts them."""

    TARGET_MODULES = (ChannelConv1d,)

    def prune_out_channels(self, layer: Any, idxs: Sequence[int]) -> nn.Module:
        layer.channels -= len(set(idxs))
        return layer

    prune_in_channels = prune_out_channels  # channels in == channels out, like BatchNorm

    def get_out_channels(self, layer: Any) -> int:
        return int(layer.channels)

    def get_in_channels(self, layer: Any) -> int:
        return int(layer.channels)


class ChannelRegroupPruner(tp.pruner.function.BasePruningFunc):
    """No dependency between input and output channels (two different functions), and no
    channel count for torch-pruning's shape inference to carry across."""

    TARGET_MODULES = (ChannelRegroup,)

    def prune_out_channels(self, layer: Any, idxs: Sequence[int]) -> nn.Module:
        return layer

    def prune_in_channels(self, layer: Any, idxs: Sequence[int]) -> nn.Module:
        return layer

    def get_out_channels(self, layer: Any) -> None:
        return None

    def get_in_channels(self, layer: Any) -> None:
        return None


def custom_pruners() -> dict[type, tp.pruner.function.BasePruningFunc]:
    return {ChannelConv1d: ChannelConv1dPruner(), ChannelRegroup: ChannelRegroupPruner()}


def register(pruners: dict) -> dict:
    """Add this module's pruners to `pruners` (preflight's CUSTOM_PRUNERS); returns it."""
    for layer_type, pruner in custom_pruners().items():
        pruners.setdefault(layer_type, pruner)
    return pruners


@contextmanager
def index_mapping_frozen(graph: tp.DependencyGraph) -> Iterator[None]:
    """torch-pruning recomputes the channel index mapping of every concat, split and
    reshape in the graph each time it builds a group. Where the model does not change
    (listing the groups, planning a step) it is computed once on entry: on a DenseNet
    (hundreds of groups behind long concat chains) the recomputing was 95% of the
    pruning time."""
    update = INDEX_MAPPING.update_index_mapping
    update(graph)
    INDEX_MAPPING.update_index_mapping = lambda _graph: None  # type: ignore[assignment]
    try:
        yield
    finally:
        INDEX_MAPPING.update_index_mapping = update


def map_concat_indices(graph: tp.DependencyGraph, node: Any) -> None:
    """torch-pruning's `update_concat_index_mapping`, computing the same mappings in time
    linear in the concatenation's dependencies.

    Each input of a concatenation gets the channel offsets of its slice of the output:
    on the first not yet mapped dependency from the concatenation to that input (reverse:
    output channels to input channels) and on the first from that input to the
    concatenation (forward). torch-pruning finds those with list scans inside nested
    loops, cubic in the number of inputs; a DenseNet-201 block concatenates up to 48, and
    the mapping is recomputed each time a group is built.
    """
    if node.type != ops.OPTYPE.CONCAT:
        return
    dim = getattr(node.grad_fn, "_saved_dim", 1)
    if dim != 1 and dim < MAX_VALID_DIM:
        return  # concatenated along another dim than the channels
    sizes = node.module.concat_sizes
    if sizes is None:
        sizes = [_channels_between(graph, n, node) for n in node.inputs]
        node.module.concat_sizes = sizes
    if any(size is None for size in sizes):
        return
    total = _channels_into(graph, node)
    if total is not None and total != sum(sizes):
        return
    offsets = list(itertools.accumulate(sizes, initial=0))
    node.module.offsets = offsets
    if not node.enable_index_mapping:
        return
    to_input: dict[int, deque] = defaultdict(deque)
    for dep in node.dependencies:
        to_input[id(dep.target)].append(dep)
    from_input: dict[int, deque] = {}
    for i, source in enumerate(node.inputs):
        if id(source) not in from_input:
            from_input[id(source)] = deque(d for d in source.dependencies if d.target is node)
        span = offsets[i : i + 2]
        if to_input[id(source)]:
            mapping = ConcatIndexMapping(offset=span, reverse=True)
            to_input[id(source)].popleft().index_mapping[1] = mapping
        if from_input[id(source)]:
            mapping = ConcatIndexMapping(offset=span, reverse=False)
            from_input[id(source)].popleft().index_mapping[1] = mapping


def map_split_indices(graph: tp.DependencyGraph, node: Any) -> None:
    """torch-pruning's `update_split_index_mapping`, with each consumer of a split mapped
    to the part it reads (the output number its autograd edge names) instead of the part
    at its position among the split's consumers: where a part is read twice (a box
    decode's xy - wh / 2 and xy + wh / 2) the later consumers got the wrong offsets, and
    the last ran past them."""
    if node.type != ops.OPTYPE.SPLIT or not _splits_channels(node.grad_fn):
        return
    offsets = node.module.offsets
    if offsets is None or not node.enable_index_mapping:
        return
    parts = {id(c): deque(_parts_read(node, c)) for c in node.outputs}
    forward = list(node.dependencies)
    backward = {id(c): [d for d in c.dependencies if d.target is node] for c in node.outputs}
    for position, consumer in enumerate(node.outputs):
        read = parts[id(consumer)]
        part = read.popleft() if read else position
        if part + 1 >= len(offsets):
            continue  # not a part this split has: leave torch-pruning's default
        span = offsets[part : part + 2]
        dep = next((d for d in forward if d.target is consumer), None)
        if dep is not None:
            forward.remove(dep)
            dep.index_mapping[0] = SplitIndexMapping(offset=span, reverse=False)
        if backward[id(consumer)]:
            back = backward[id(consumer)].pop(0)
            back.index_mapping[0] = SplitIndexMapping(offset=span, reverse=True)


def _splits_channels(grad_fn: Any) -> bool:
    """Whether a split's autograd node splits dim 1 (as torch-pruning reads it)."""
    dim = getattr(grad_fn, "_saved_dim", None)
    if dim is None:
        return True
    sizes = getattr(grad_fn, "_saved_self_sym_sizes", None)
    if sizes is not None:
        return not (dim < len(sizes) and dim != 1)
    return not (dim >= 0 and dim != 1)


def _parts_read(split: Any, consumer: Any) -> list[int]:
    """The split's output numbers that `consumer`'s autograd node takes, in order."""
    edges = getattr(getattr(consumer, "grad_fn", None), "next_functions", None) or ()
    return [number for fn, number in edges if fn is not None and fn is split.grad_fn]


# torch-pruning's channel inference indexes a split's recorded sizes by the position of
# a consumer among the split's consumers, which overruns them where a part is used twice
# (a detector's box decode: xy - wh / 2, xy + wh / 2). Unknown (None) leaves the
# concatenation unmapped, as torch-pruning does with any size it cannot infer.
_INFERENCE_ERRORS = (IndexError, KeyError, AttributeError)


def _channels_between(graph: tp.DependencyGraph, source: Any, node: Any) -> int | None:
    try:
        return infer_channels_between(graph, source, node)
    except _INFERENCE_ERRORS:
        return None


def _channels_into(graph: tp.DependencyGraph, node: Any) -> int | None:
    try:
        return infer_in_channels_recursively(graph, node, recursive_depth=[0])
    except _INFERENCE_ERRORS:
        return None


def map_reshape_indices(graph: tp.DependencyGraph, node: Any) -> None:
    """torch-pruning's reshape mapping, with a channel count its inference cannot read
    (see `_INFERENCE_ERRORS`: MambaOut's gated blocks reach a split this way) taken as
    unknown: the reshape is left unmapped, as torch-pruning leaves one whose sizes it
    cannot infer."""
    try:
        torch_pruning_reshape_mapping(graph, node)
    except _INFERENCE_ERRORS:
        return


def pruning_group(
    graph: tp.DependencyGraph, module: nn.Module, pruning_fn: Any, idxs: Sequence[int] | int
) -> Any:
    """torch-pruning's `get_pruning_group`, made to end on every graph.

    Its search follows the dependencies from the root and revisits a layer whenever it
    arrives with a list of channels it has not seen exactly before (checked by scanning
    the whole group: quadratic). Where a channel mapping is not invertible (a Swin's
    patch merging: four strided spatial slices that torch-pruning reads as channel
    slices, concatenated again), every round trip yields a new list and the search never
    ends (Swin-T: over 20,000 additions to one group in 70 s).

    Here the same search runs with the exact-list check in a set, so it visits what
    torch-pruning's visits in the same order, and its groups (which root channel each
    channel is credited to included) are the same. Once it has added more items than
    `_SEARCH_ROUNDS` times the graph's nodes, it goes on following only the channels a
    layer has not yet received through that function: each channel of each layer at most
    once more, so it ends.
    """
    if module not in graph.module2node:
        raise ValueError(f"Module {module} is not in the dependency graph.")
    if (
        isinstance(module, ops.TORCH_CONV)
        and module.groups == module.out_channels
        and module.out_channels > 1
    ):
        pruning_fn = tp.pruner.function.prune_depthwise_conv_out_channels
    roots = [idxs] if isinstance(idxs, int) else list(idxs)
    INDEX_MAPPING.update_index_mapping(graph)
    node = graph.module2node[module]
    root_dep = tp.dependency.Dependency(pruning_fn, pruning_fn, source=node, target=node)
    found: list[tuple[Any, list]] = [(root_dep, [HybridIndex(idx=i, root_idx=i) for i in roots])]
    search = _Search(limit=_SEARCH_ROUNDS * len(graph.module2node))
    search.record(root_dep, found[0][1])
    stack = list(found)
    while stack:
        dep, indices = stack.pop()
        search.visited.add(id(dep.target))
        for next_dep in dep.target.dependencies:
            if not next_dep.is_triggered_by(dep.handler):
                continue
            mapped = indices
            for mapping in next_dep.index_mapping:
                if mapping is not None:
                    mapped = mapping(mapped)
            mapped = search.to_follow(next_dep, mapped)
            if mapped:
                search.record(next_dep, mapped)
                found.append((next_dep, mapped))
                stack.append((next_dep, mapped))
    return _merged_group(graph, found)


# Items a search may add, per node of the graph, before it follows only new channels: real
# families add at most half as many as the graph has nodes (GhostNet 0.52, DenseNet 0.24);
# a Swin went past 50.
_SEARCH_ROUNDS = 4


class _Search:
    """What a group search has seen: the exact channel lists each layer was reached with,
    and, once past `limit` items, each channel each layer has received."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.visited: set[int] = set()  # nodes whose dependencies were followed
        self.lists: set[tuple[int, Any, tuple]] = set()
        self.channels: dict[tuple[int, Any], set[int]] = defaultdict(set)
        self.added = 0

    def to_follow(self, dep: Any, indices: list) -> list:
        """The channels of `indices` to follow into `dep` (none: do not follow)."""
        if not indices:
            return []
        if self.added < self.limit:
            key = (id(dep.target), dep.handler, tuple(indices))
            return [] if id(dep.target) in self.visited and key in self.lists else indices
        seen = self.channels[(id(dep.target), dep.handler)]
        return [index for index in indices if index.idx not in seen]

    def record(self, dep: Any, indices: list) -> None:
        self.added += 1
        self.lists.add((id(dep.target), dep.handler, tuple(indices)))
        self.channels[(id(dep.target), dep.handler)].update(index.idx for index in indices)


def _merged_group(graph: tp.DependencyGraph, found: list[tuple[Any, list]]) -> Any:
    """One item per layer and function, with plain and root channel lists, as
    torch-pruning's groups hold them."""
    merged = tp.dependency.Group()
    for dep, indices in found:
        target = dep.target.module
        if isinstance(target, nn.Parameter) and any(target is p for p in graph.ignored_params):
            continue
        merged.add_and_merge(dep, indices)
    bind_group(merged, graph)
    for i, item in enumerate(merged.items):
        plain = GroupItem(item.dep, to_plain_idxs(item.idxs))
        plain.root_idxs = to_root_idxs(item.idxs)
        merged[i] = plain
    return merged


# torch-pruning's own, kept for the tests that the two agree.
torch_pruning_concat_mapping = INDEX_MAPPING.update_concat_index_mapping
torch_pruning_split_mapping = INDEX_MAPPING.update_split_index_mapping
torch_pruning_reshape_mapping = INDEX_MAPPING.update_reshape_index_mapping
INDEX_MAPPING.update_concat_index_mapping = map_concat_indices
INDEX_MAPPING.update_split_index_mapping = map_split_indices
INDEX_MAPPING.update_reshape_index_mapping = map_reshape_indices
torch_pruning_pruning_group = tp.DependencyGraph.get_pruning_group
tp.DependencyGraph.get_pruning_group = pruning_group  # type: ignore[method-assign]


_build_dependency = tp.DependencyGraph.build_dependency


def build_dependency(self: tp.DependencyGraph, *args: Any, **kwargs: Any) -> Any:
    """torch-pruning's graph building, with every `ChannelRegroup` traced as one node
    (`channel_modules.regroups_as_one_node`)."""
    with regroups_as_one_node():
        return _build_dependency(self, *args, **kwargs)


tp.DependencyGraph.build_dependency = build_dependency  # type: ignore[method-assign]
