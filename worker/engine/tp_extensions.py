"""torch-pruning's knowledge of the modules `onnx_converters` creates beyond `ChannelConst`
and `ChannelShuffle`: customized pruners, registered with `register`; and two speed-ups
of its channel index mapping: `index_mapping_frozen`, for building many groups of a model
that does not change, and `map_concat_indices`, installed in place of its own.

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
from torch_pruning.dependency import constants, index_mapping, shape_infer

from worker.engine.onnx_converters import ChannelConv1d, ChannelRegroup


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
    update = index_mapping.update_index_mapping
    update(graph)
    index_mapping.update_index_mapping = lambda _graph: None  # type: ignore[assignment]
    try:
        yield
    finally:
        index_mapping.update_index_mapping = update


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
    if dim != 1 and dim < constants.MAX_VALID_DIM:
        return  # concatenated along another dim than the channels
    sizes = node.module.concat_sizes
    if sizes is None:
        sizes = [shape_infer.infer_channels_between(graph, n, node) for n in node.inputs]
        node.module.concat_sizes = sizes
    if any(size is None for size in sizes):
        return
    total = shape_infer.infer_in_channels_recursively(graph, node, recursive_depth=[0])
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
            mapping = index_mapping._ConcatIndexMapping(offset=span, reverse=True)
            to_input[id(source)].popleft().index_mapping[1] = mapping
        if from_input[id(source)]:
            mapping = index_mapping._ConcatIndexMapping(offset=span, reverse=False)
            from_input[id(source)].popleft().index_mapping[1] = mapping


# torch-pruning's own, kept for the test that the two agree.
torch_pruning_concat_mapping = index_mapping.update_concat_index_mapping
index_mapping.update_concat_index_mapping = map_concat_indices
